"""Readable plain-text tables for the end of a run and of a sweep."""
from __future__ import annotations

from pathlib import Path

from .data.facts import EVAL_SPLITS, LEVEL_NAMES, category_title
from .results import RunResult
from .sweep import read_jobs


def _f(x, width: int = 7, digits: int = 1) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.{digits}f}"


def _level_header(title: str) -> str:
    return f"  {title:<19}" + "".join(f"{n:>8}" for n in LEVEL_NAMES)


def _kl_line(r: RunResult) -> str:
    if r.kl is None:
        return f"  KL: missing ({r.kl_missing})"
    curve = ", ".join(f"{p['step']}:{p['kl_mean']:.3f}" for p in r.kl_curve)
    kept = r.kl_filter
    within = f" of {kept['n_candidates']}, answer within {kept['answer_within_tokens']} tokens" if kept.get("answer_within_tokens") else ""
    return (f"  KL on D_test-{r.kl_level} (n={r.kl.n}{within}): mean {r.kl.mean:.4f}, median {r.kl.median:.4f}, "
            f"p90 {r.kl.p90:.4f}; curve (step:mean) {curve}")


def run_summary(r: RunResult) -> str:
    config = r.config
    lines = [f"run {r.run_key}  (model={config['model']['name']}, bucket={config['mastery']['bucket']}, "
             f"size={config['data']['size']}, {r.n_train_facts} SFT facts)"]
    if r.base_model:
        lines.append(f"  base model: {r.base_model}")
    lines += _level_counts(r.level_counts)
    if r.probe_templates.get("set", "all") != "all":
        n = r.probe_templates["per_relation"].values()
        lines.append(f"  (probed with the paper's recovered mapping templates only: {min(n)}-{max(n)} per relation)")
    if r.prescreen_counts:
        lines.append("  (probed a pre-screened subset; likelihood levels of the candidates: "
                     + "; ".join(f"{s} {'/'.join(map(str, c))}" for s, c in r.prescreen_counts.items()) + ")")
    lines += _slick_lines(r)
    lines.append(_level_header("accuracy (%)") + "   macro")
    for split in EVAL_SPLITS:
        lines.append(f"    {split:<15}" + "".join(_f(a, 8) for a in r.acc[split].acc_level) + _f(r.accuracy(split), 8))
    lines.append(f"    train subset   {_f(r.acc_train, 8)}")
    lines.append(_kl_line(r))
    if r.restore:
        first = r.restore[0]
        lines.append(f"  restoration ({first.strategy}, {first.region})  ratio%   acc_test  acc_testood  change share%")
        for p in r.restore:
            lines.append(f"    {'':<33}{p.ratio:>6g} {_f(p.accuracy('test'), 10)} {_f(p.accuracy('testood'), 12)} {_f(p.change_share, 14)}")
        lines += [f"  restored model saved ({p.ratio:g}%): {p.export_dir}" for p in r.restore if p.export_dir]
    else:
        lines.append("  restoration: skipped on request (restore.ratios=[])")
    zeros = {region: z for region, z in r.base_zeros.items() if z["zeros"]}
    if zeros:
        rule = config.get("restore", {}).get("zeros", "guarded")  # in the semantic config only away from its default
        lines.append(f"  base scalars exactly 0 (restore.zeros={rule}; docs/choices.md): " + ", ".join(
            f"{region} {z['zeros']:,} of {z['scalars']:,}" for region, z in zeros.items()))
    for b in r.restore_blocks:
        lines.append(f"  restore layers {b.layers[0]}-{b.layers[1]}: acc_test {_f(b.accuracy('test'), 0)}, acc_testood {_f(b.accuracy('testood'), 0)}")
    lines.append("  timings (s): " + ", ".join(f"{k} {v:g}" for k, v in r.timings.items()))
    if off := wandb_line([r.tracking]):
        lines.append(f"  {off}")
    return "\n".join(lines)


def _slick_lines(r: RunResult) -> list[str]:
    """SliCK's counts per split, the levels x categories counts, and the accuracy per category (probe=slick)."""
    if r.slick_counts is None:
        return []
    titles = [category_title(c) for c in next(iter(r.slick_counts.values()))]
    lines = [f"  {'SliCK counts':<17}" + "".join(f"{t:>13}" for t in titles)]
    lines += [f"    {split:<15}" + "".join(f"{n:>13}" for n in counts.values()) for split, counts in r.slick_counts.items()]
    lines.append(f"  levels x SliCK (facts per level: {'/'.join(titles)})")
    lines += [f"    {split:<15}" + ", ".join(f"{lv} {'/'.join(map(str, row.values()))}" for lv, row in table.items())
              for split, table in (r.cross_tab or {}).items()]
    lines += [f"  accuracy (%) on {split}'s SliCK categories: " + ", ".join(
        f"{category_title(c)} {_f(a['acc'], 0)} (n={a['n']})" for c, a in by_category.items())
        for split, by_category in (r.acc_slick or {}).items()]
    return lines


def wandb_line(tracking: list[dict]) -> str | None:
    """`W&B: off in n of m runs (first reason: ...)` over the runs that asked for W&B (not logger.mode=disabled), or
    None when each of them reached it. Results written before `tracking` was kept ({}) are not counted."""
    asked = [t for t in tracking if t.get("mode", "disabled") != "disabled"]
    off = [t for t in asked if t["wandb"] == "off"]
    return f"W&B: off in {len(off)} of {len(asked)} runs (first reason: {off[0]['reason']})" if off else None


def _level_counts(level_counts: dict[str, list[int]]) -> list[str]:
    """How many facts of each split the probe put in each level of the base model."""
    lines = [_level_header("level counts")]
    return lines + [f"    {split:<15}" + "".join(f"{c:>8}" for c in counts) for split, counts in level_counts.items()]


def _world_lines(done: list[RunResult]) -> list[str]:
    """Level counts of the probed base model, and whether its knowledge is extractable by questions."""
    origin = f" {done[0].base_model}" if done[0].base_model else ""
    lines = [f"base model:{origin}"] + _level_counts(done[0].level_counts)
    for r in done:
        if r.config["mastery"]["bucket"] == "d4" and r.config["data"]["size"] == 240:
            acc4 = r.accuracy("test", 4)
            verdict = "extractable" if acc4 is not None and acc4 >= 50 else "NOT extractable (below 50%)"
            lines.append(f"knowledge check: fine-tuned on 240 D-4 facts, the model answers {_f(acc4, 0)}% of D_test-4 ({verdict})")
    return lines


def _best_restore(r: RunResult) -> str:
    """The restoration ratio with the highest Acc_test, as `ratio%: acc`."""
    best = max(r.restore, key=lambda p: p.accuracy("test") or -1) if r.restore else None
    return f"{best.ratio:g}%: {best.accuracy('test'):.1f}" if best and best.accuracy("test") is not None else "-"


def sweep_summary(sweep_dir: Path) -> str:
    """One line per cell of a sweep (as its multirun.yaml plans them, where it has one), then the base model's levels."""
    jobs = read_jobs(sweep_dir, planned=True)
    done = [j.result for j in jobs if j.result is not None]
    kl_levels = "/".join(str(lv) for lv in sorted({r.kl_level for r in done})) or "4"
    kl_head = f"KL D_test-{kl_levels}"
    head = (f"{'job':>4}  {'bucket':<6}{'size':>6}  {'acc_test':>8}{'acc_ood':>8}  {'Acc D_test-4':>12}{kl_head:>12}  "
            f"{'best restore (ratio: acc_test)':<30}  status")
    lines = [f"sweep {sweep_dir}: {len(done)} of {len(jobs)} cells done", head]
    for job in jobs:
        r = job.result
        if r is None:
            lines.append(f"{job.number:>4}  {job.error[:100]:<60}  {job.status}")
            continue
        config = r.config
        lines.append(f"{job.number:>4}  {config['mastery']['bucket']:<6}{str(config['data']['size']):>6}  "
                     f"{_f(r.accuracy('test'), 8)}{_f(r.accuracy('testood'), 8)}  "
                     f"{_f(r.accuracy('test', 4), 12)}{_f(r.kl_mean, 12, 4)}  {_best_restore(r):<30}  done")
    if done:
        lines += _world_lines(done)
        runs_dir = next(j.info.run_dir for j in jobs if j.result is not None).parent
        lines.append(f"results: {runs_dir}/<run_key>/results.json for each cell; this table: {Path(sweep_dir) / 'summary.txt'}")
        if off := wandb_line([r.tracking for r in done]):  # a sweep without dashboards says so where it ends
            lines.append(off)
    return "\n".join(lines)
