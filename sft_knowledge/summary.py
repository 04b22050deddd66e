"""Readable plain-text tables for the end of a run and of a sweep."""
from __future__ import annotations

import json
from pathlib import Path

LEVEL_NAMES = [f"D-{lv}" for lv in range(5)]


def _f(x, width: int = 7, digits: int = 1) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.{digits}f}"


def run_summary(r: dict) -> str:
    lines = [f"run {r['run_key']}  (model={r['config']['model']['name']}, bucket={r['config']['mastery']['bucket']}, "
             f"size={r['config']['data']['size']}, {r['n_train_facts']} SFT facts)"]
    lines += _level_counts(r["level_counts"])
    if r.get("prescreen_counts"):
        lines.append("  (probed a pre-screened subset; likelihood levels of the candidates: "
                     + "; ".join(f"{s} {'/'.join(map(str, c))}" for s, c in r["prescreen_counts"].items()) + ")")
    lines.append("  accuracy (%)       " + "".join(f"{n:>8}" for n in LEVEL_NAMES) + "   macro")
    for split in ("test", "testood"):
        lines.append(f"    {split:<15}" + "".join(_f(a, 8) for a in r[f"acc_{split}_level"]) + _f(r[f"acc_{split}"], 8))
    lines.append(f"    train subset   {_f(r['acc_train'], 8)}")
    kl = r["kl"]
    if "mean" in kl:
        curve = ", ".join(f"{p['step']}:{p['kl_mean']:.3f}" for p in r["kl_curve"])
        kept = r.get("kl_filter") or {}
        within = f" of {kept['n_candidates']}, answer within {kept['answer_within_tokens']} tokens" if kept.get("answer_within_tokens") else ""
        lines.append(f"  KL on D_test-{r['kl_level']} (n={kl['n']}{within}): mean {kl['mean']:.4f}, median {kl['median']:.4f}, p90 {kl['p90']:.4f}; curve (step:mean) {curve}")
    else:
        lines.append(f"  KL: missing ({kl['missing']})")
    if r["restore"]:
        lines.append(f"  restoration ({r['restore'][0]['strategy']}, {r['restore'][0]['region']})  ratio%   acc_test  acc_testood  change share%")
        for rec in r["restore"]:
            lines.append(f"    {'':<33}{rec['ratio']:>6g} {_f(rec['acc_test'], 10)} {_f(rec['acc_testood'], 12)} {_f(rec['change_share'], 14)}")
    else:
        lines.append("  restoration: skipped on request (restore.ratios=[])")
    for rec in r.get("restore_blocks", []):
        lines.append(f"  restore layers {rec['layers'][0]}-{rec['layers'][1]}: acc_test {_f(rec['acc_test'], 0)}, acc_testood {_f(rec['acc_testood'], 0)}")
    lines.append("  timings (s): " + ", ".join(f"{k} {v:g}" for k, v in r["timings"].items()))
    return "\n".join(lines)


def _level_counts(level_counts: dict[str, list[int]]) -> list[str]:
    """How many facts of each split the probe put in each level of the base model."""
    lines = ["  level counts       " + "".join(f"{n:>8}" for n in LEVEL_NAMES)]
    return lines + [f"    {split:<15}" + "".join(f"{c:>8}" for c in counts) for split, counts in level_counts.items()]


def _world_lines(results: list[dict]) -> list[str]:
    """Level counts of the probed base model, and whether its knowledge is extractable by questions."""
    lines = ["base model:"] + _level_counts(results[0]["level_counts"])
    for r in results:
        if r["config"]["mastery"]["bucket"] == "d4" and r["config"]["data"]["size"] == 240:
            acc4 = r["acc_test_level"][4]
            verdict = "extractable" if acc4 is not None and acc4 >= 50 else "NOT extractable (below 50%)"
            lines.append(f"knowledge check: fine-tuned on 240 D-4 facts, the model answers {_f(acc4, 0)}% of D_test-4 ({verdict})")
    return lines


def sweep_rows(sweep_dir: Path) -> list[dict]:
    """One row per cell of a sweep: its job number, status, and results when it finished."""
    rows = []
    for job in sorted((p for p in Path(sweep_dir).iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        info = json.loads((job / "run.json").read_text()) if (job / "run.json").exists() else {"status": "missing"}
        results = Path(info["run_dir"]) / "results.json" if "run_dir" in info else None
        if results is not None and results.exists():
            info = {**info, "status": "done", "results": json.loads(results.read_text())}
        rows.append({"job": int(job.name), **info})
    return rows


def sweep_summary(sweep_dir: Path) -> str:
    rows = sweep_rows(sweep_dir)
    head = f"{'job':>4}  {'bucket':<6}{'size':>6}  {'acc_test':>8}{'acc_ood':>8}  {'Acc D_test-4':>12}{'KL D_test-4':>12}  {'best restore (ratio: acc_test)':<30}  status"
    lines = [f"sweep {sweep_dir}: {sum(r['status'] == 'done' for r in rows)} of {len(rows)} cells done", head]
    for row in rows:
        r = row.get("results")
        if r is None:
            lines.append(f"{row['job']:>4}  {row.get('error', '')[:100]:<60}  {row['status']}")
            continue
        best = max(r["restore"], key=lambda x: x["acc_test"] or -1) if r["restore"] else None
        best_txt = f"{best['ratio']:g}%: {best['acc_test']:.1f}" if best and best["acc_test"] is not None else "-"
        lines.append(f"{row['job']:>4}  {r['config']['mastery']['bucket']:<6}{str(r['config']['data']['size']):>6}  {_f(r['acc_test'], 8)}{_f(r['acc_testood'], 8)}  "
                     f"{_f(r['acc_test_level'][4], 12)}{_f(r['kl_test4'], 12, 4)}  {best_txt:<30}  done")
    done = [row["results"] for row in rows if "results" in row]
    if done:
        lines += _world_lines(done)
        runs_dir = Path(rows[0]["run_dir"]).parent
        lines.append(f"results: {runs_dir}/<run_key>/results.json for each cell; this table: {Path(sweep_dir) / 'summary.txt'}")
    return "\n".join(lines)
