"""The paper's tables, one function each, from the cells of a sweep: each returns its `Section` of the report."""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass

from ..data.facts import EVAL_SPLITS, LEVEL_NAMES, LEVELS, SPLITS as ALL_SPLITS
from ..results import RunResult
from ..sweep import BUCKETS, Cell, Stat, Value, blocks, bucket_name, flatten, get_key
from .layout import RUN, Section, block_title, grid, markdown, missing, row, value_text
from .paper import Paper, range_diff

SPLITS = dict(zip(EVAL_SPLITS, ("in-domain", "out-of-domain")))
MODULE_ORDER = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down")  # Table 10's module types
SHOWN_RATIO = 20  # Tables 9 and 10 show the restoration of 20% (the paper's best, Table 7); the CSVs hold every ratio


# ------------------------------------------------------------------ numbers of one run

def level_value(split: str, level: int | None) -> Value:
    return lambda r: r.accuracy(split, level)


def kl_mean(r: RunResult) -> float | None:
    return r.kl_mean


def restore_value(split: str, ratio: float) -> Value:
    """Accuracy after restoring `ratio`% (split `train`: on the SFT subset, None in older results)."""
    return lambda r: next((p.accuracy(split) for p in r.restore if p.ratio == ratio), None)


def block_name(layers: list[int]) -> str:
    return f"{layers[0]}-{layers[1]}"


def block_value(split: str, block: str) -> Value:
    """Accuracy after restoring one block of layers (`none`: without restoration)."""
    if block == "none":
        return level_value(split, None)
    return lambda r: next((b.accuracy(split) for b in r.restore_blocks if block_name(b.layers) == block), None)


def module_type(name: str) -> str:
    """A tensor's module type as Table 10 names it: model.layers.3.self_attn.q_proj.weight -> attn.q."""
    m = re.search(r"layers\.\d+\.(?:self_)?([^.]+)\.([^.]+?)(?:_proj)?\.(?:weight|bias)$", name)
    return f"{m[1]}.{m[2]}" if m else name


def layer_of(name: str) -> str:
    m = re.search(r"layers\.(\d+)\.", name)
    return m[1] if m else name


GROUP_BY = {"layer": layer_of, "module": module_type}


def restored_shares(per_tensor: dict[str, int], by: str) -> dict[str, float]:
    """Share (%) of the restored scalars in each layer or module type, from the per-tensor counts."""
    counts: Counter = Counter()
    for name, k in per_tensor.items():
        counts[GROUP_BY[by](name)] += k
    total = sum(counts.values())
    return {g: 100 * k / total for g, k in counts.items()} if total else {}


def share_value(ratio: float, by: str, key: str) -> Value:
    def get(r: RunResult) -> float | None:
        point = next((p for p in r.restore if p.ratio == ratio and p.per_tensor), None)
        return None if point is None else restored_shares(point.per_tensor, by).get(key)
    return get


def _restored_ratios(group: list[Cell], split: str = "test") -> list[float]:
    """Restoration ratios of the group's runs whose restoration points hold an accuracy on `split`."""
    return sorted({p.ratio for c in group for r in c.runs for p in r.restore if p.accuracy(split) is not None})


# ------------------------------------------------------------------ Tables 1 and 8

MODEL_SFT_KEYS = ("lr", "micro_batch_size", "gradient_checkpointing", "n_gpus")  # model keys the probe does not read


def probe_setting(config: dict, slick: bool = False) -> dict:
    """What decides a run's level counts: the base model, the probe's settings and the facts probed (the dataset,
    and the pre-screened subset with the seed that drew it where one is probed), not the SFT subset's bucket, size
    or seed. Whether SliCK ran, and its settings, decide only its categories (`slick`: kept)."""
    data = config["data"]
    subset_seed = {"seed": data["seed"]} if (data.get("subset") or {}).get("candidates") is not None else {}
    probe = {k: v for k, v in config.get("probe", {}).items() if slick or k not in ("categories", "slick")}
    return {"model": {k: v for k, v in config["model"].items() if k not in MODEL_SFT_KEYS}, "probe": probe,
            "data": {k: v for k, v in data.items() if k not in ("size", "seed")} | subset_seed}


@dataclass
class ProbeGroup:
    """Runs of one probe (probe_setting), flat setting and all; `differs`: the settings that tell it from the others."""
    setting: dict[str, object]
    differs: str
    runs: list[RunResult]

    @property
    def label(self) -> str:
        return f"{self.setting['model.name']} on {self.setting['data.name']}" + (f" ({self.differs})" if self.differs else "")


def probe_groups(runs: list[RunResult], slick: bool = False) -> list[ProbeGroup]:
    """Runs grouped by probe (probe_setting), each named by its model and data and the settings that differ."""
    groups: dict[str, tuple[dict, list[RunResult]]] = {}
    for r in runs:
        setting = flatten(probe_setting(r.config, slick))
        groups.setdefault(json.dumps(setting, sort_keys=True), (setting, []))[1].append(r)
    keys = sorted({k for setting, _ in groups.values() for k in setting} - {"model.name", "data.name"})
    varying = [k for k in keys if len({json.dumps(s.get(k)) for s, _ in groups.values()}) > 1]
    return [ProbeGroup(setting, ", ".join(f"{k}={setting.get(k)}" for k in varying), group) for setting, group in groups.values()]


def table1(cells: list[Cell], paper: Paper) -> Section:
    """The base model's level counts per split: one row group per probe (model, probe settings and probed data), not
    per bucket or size; a group's runs repeat one probe."""
    body, rows = [], []
    for group in probe_groups([r for c in cells for r in c.runs]):
        model, data, differs, runs, label = group.setting["model.name"], group.setting["data.name"], group.differs, group.runs, group.label
        theirs_of = {split: paper.table1(runs[0].config, split) for split in ALL_SPLITS}
        for split, theirs in theirs_of.items():
            counts = [[r.level_counts[split][lv] for r in runs] for lv in LEVELS]
            counts.append([sum(x) for x in zip(*counts)])
            stats = [Stat.of(x) for x in counts]
            ref = None if theirs is None else [*theirs, sum(theirs)]
            body.append([label, split] + [f"{s.mean:.0f}" if not s.std else f"{s.mean:.1f} ± {s.std:.1f}" for s in stats]
                        + [str(len(runs))])
            if ref is not None:
                body += [["paper", split] + [str(v) for v in ref] + [""],
                         ["ours − paper", split] + [f"{s.mean - v:+.0f}" for s, v in zip(stats, ref)] + [""]]
            for lv, s in enumerate(stats):
                p = None if ref is None else ref[lv]
                rows.append({"model": model, "data": data, "setting": differs, "split": split,
                             "level": LEVEL_NAMES[lv] if lv < len(LEVELS) else "total", **s.csv(),
                             "paper": "" if p is None else p, "diff": "" if p is None else s.mean - p})
    md = markdown(["base model", "split", *LEVEL_NAMES, "total", "runs"], body)
    md += ["The paper's counts (Table 1: LLaMA-3-8B; Table 8: its other four models) apply to EntityQuestions with the "
           "full split; a probe of a subset (`data.subset`) or a smaller budget gives other counts.", ""]
    return Section("Tables 1 and 8: the base model's mastery level counts per split", md, "table1_level_counts.csv", rows)


# ------------------------------------------------------------------ Table 2

def table2(cells: list[Cell], paper: Paper) -> Section:
    md, rows = [], []
    header = ["training bucket", *LEVEL_NAMES, "Acc_test"] + [f"ood {lv}" for lv in LEVEL_NAMES] + ["Acc_testood", "runs"]
    for (variant, size), group in blocks(cells).items():
        body = []
        for c in group:
            ours, theirs, diffs = [], [], []
            for split in SPLITS:
                for level in [*LEVELS, None]:
                    stat, p = c.stat(level_value(split, level)), paper.table2(c, split, level)
                    ours.append(value_text(stat, c))
                    theirs.append("—" if p is None else f"{p:.2f}")
                    diffs.append("—" if p is None or stat is None else f"{stat.mean - p:+.2f}")
                    if stat is not None:
                        rows.append({"variant": variant, "size": size, "bucket": c.bucket, "split": split,
                                     "level": "macro" if level is None else LEVEL_NAMES[level], **stat.csv(),
                                     "paper": "" if p is None else p, "diff": "" if p is None else stat.mean - p})
            body.append(row(c, [c.label], ours) + [str(len(c.runs))])
            if any(t != "—" for t in theirs):
                body += [[f"{c.label} paper"] + theirs + [""], [f"{c.label} ours − paper"] + diffs + [""]]
        md += [block_title(variant, size), ""] + markdown(header, body)
    if not any(c.size == 1920 for c in cells):
        md += missing("the paper's size for Table 2, 1,920 facts per bucket", "experiment=table2")
    return Section("Table 2: accuracy per test level (columns) for each training bucket (rows)", md, "table2_bucket_x_level.csv", rows)


# ------------------------------------------------------------------ Tables 3, 4 and 6: restoration by ratio

def _strategies(group: list[Cell]) -> str:
    return "; ".join(sorted({p.strategy + ", " + p.region for c in group for r in c.runs for p in r.restore}))


def table4(cells: list[Cell], paper: Paper) -> Section:
    md, rows = [], []
    for split, split_name in SPLITS.items():
        split_md, split_rows = grid(
            cells, key_name="ratio", keys=lambda g: _restored_ratios(g), value=lambda ratio, s=split: restore_value(s, ratio),
            paper=lambda c, ratio, s=split: paper.table4(c, s, ratio), baseline=0, extra={"split": split},
            caption=lambda g, s=split, n=split_name: f"Acc_{s} ({n}) against the restored % (restoration {_strategies(g)})")
        md, rows = md + split_md, rows + split_rows
    if not any(p.ratio > 0 for c in cells for r in c.runs for p in r.restore):
        md += missing("restoration above 0%", "experiment=table4")
    md += ["Gain: the value minus the one without restoration (ratio 0), per run and then averaged; the paper's "
           "claim is the gain (restoring 20% improves all of its 1,920-fact models).", ""]
    return Section("Table 4: accuracy after restoring the top-k% most-changed parameters to their base values",
                   md, "table4_restoration.csv", rows)


def table6(cells: list[Cell], paper: Paper) -> Section:
    md, rows = grid(cells, key_name="ratio", keys=lambda g: _restored_ratios(g, "train"),
                    value=lambda ratio: restore_value("train", ratio), paper=paper.table6, baseline=0,
                    caption=lambda g: f"Acc_train (the SFT facts themselves) against the restored % (restoration {_strategies(g)})")
    if not rows:
        md = missing("training-set accuracy at each restoration ratio (`restore[i].acc_train` in results.json)", "experiment=table4")
    elif all(float(r["ratio"]) == 0 for r in rows):
        md += missing("training-set accuracy after restoration above 0%", "experiment=table4")
    return Section("Table 6: training-set accuracy against restoration", md, "table6_train_acc.csv", rows)


def table3(cells: list[Cell], paper: Paper) -> Section:
    percents = sorted({int(k) for c in cells for r in c.runs for k in r.update_share})
    body, rows = [], []
    for c in cells:
        ours = []
        for pct in percents:
            stat, p = c.stat(lambda r, pct=pct: r.update_share.get(str(pct))), paper.table3(c, pct)
            ours.append(value_text(stat, c) if p is None or stat is None
                        else f"{stat} (paper {p[0]:.1f}–{p[1]:.1f}, Δ {range_diff(stat.mean, *p):+.2f})")
            if stat is not None:
                rows.append({"variant": c.variant, "size": c.size, "bucket": c.bucket, "top_percent": pct, **stat.csv(),
                             "paper_min": "" if p is None else p[0], "paper_max": "" if p is None else p[1],
                             "diff": "" if p is None else range_diff(stat.mean, *p)})
        body.append(row(c, [c.label, str(c.size)], ours) + [str(len(c.runs))])
    md = markdown(["training bucket", "SFT facts"] + [f"top {p}%" for p in percents] + ["runs"], body)
    t = paper.data["table3_update_concentration_llama3_8b"]
    md += ["Paper (LLaMA-3-8B, range over its 10 models): " + ", ".join(
        f"top {p}% {lo:.1f}–{hi:.1f}" for p, lo, hi in zip(t["top_percent"], t["share_min"], t["share_max"])) + ".", ""]
    return Section("Table 3: share (%) of the summed relative change held by the top-x% most-changed parameters",
                   md, "table3_update_share.csv", rows)


# ------------------------------------------------------------------ Table 7: strategies side by side

@dataclass
class Candidate:
    cell: Cell
    setting: str
    value: dict[str, Value]  # split -> the run's accuracy under this strategy

    def stat(self, split: str) -> Stat | None:
        return self.cell.stat(self.value[split])


def _best(candidates: list[Candidate]) -> Candidate | None:
    """The candidate with the highest mean Acc_test (how the paper picks a best size or ratio)."""
    scored = [(s.mean, i) for i, c in enumerate(candidates) if (s := c.stat("test")) is not None]
    return candidates[max(scored)[1]] if scored else None


def _sft(c: Cell) -> Candidate:
    return Candidate(c, f"{c.label}, {c.size} facts", {s: level_value(s, None) for s in SPLITS})


def table7(cells: list[Cell], paper: Paper) -> Section:
    done = [c for c in cells if c.runs]
    full = [c for c in done if c.config["train"]["method"] == "full"]
    per_bucket = {b: [_sft(c) for c in full if c.bucket == b and c.size == 1920] for b in BUCKETS[1:]}
    restored = [Candidate(c, f"{c.label}, {c.size} facts, {ratio:g}% restored", {s: restore_value(s, ratio) for s in SPLITS})
                for c in full if c.config["restore"]["strategy"] == "top" for ratio in _restored_ratios([c]) if ratio > 0]
    strategies = [  # (row, the paper's row, candidates, the command that produces them)
        ("SFT, mixed data (bucket all), best size", "sft_mixed_best_scale", [_sft(c) for c in full if c.bucket == "all"], "experiment=paper"),
        ("SFT, one bucket at 1,920, best bucket", "sft_divided_1920", [x for b in per_bucket.values() for x in b], "experiment=table2"),
        *((f"SFT, {bucket_name(b)} at 1,920", None, xs, "experiment=table2") for b, xs in per_bucket.items()),
        ("LoRA, mixed data, best size", "lora_mixed",
         [_sft(c) for c in done if c.config["train"]["method"] == "lora" and c.bucket == "all"], "experiment=paper_lora"),
        ("Parameter restoration (top-k), best cell and ratio", "restoration_d2_1920_20pct", restored, "experiment=table4"),
    ]
    reference = paper.table7(done[0].config, "llama3_8b_instruct") if done else None
    body = [["LLaMA-3-8B-Instruct (the paper's reference)", "not run here"]
            + ["—" if reference is None else f"paper {v:.2f}" for v in reference or (None, None)] + [""]]
    rows = []
    for name, paper_row, candidates, command in strategies:
        best = _best(candidates)
        if best is None:
            body.append([name, f"not in this sweep: `{RUN} {command}`", "", "", ""])
            continue
        theirs = paper.table7(best.cell.config, paper_row) if paper_row else None
        texts = []
        for i, split in enumerate(SPLITS):
            stat, p = best.stat(split), None if theirs is None else theirs[i]
            texts.append(value_text(stat, best.cell, p if stat is not None else None))
            if stat is not None:
                rows.append({"strategy": name, "setting": best.setting, "variant": best.cell.variant, "bucket": best.cell.bucket,
                             "size": best.cell.size, "split": split, **stat.csv(),
                             "paper": "" if p is None else p, "diff": "" if p is None else stat.mean - p})
        body.append([name, best.setting, *texts, str(len(best.cell.runs))])
    md = markdown(["strategy", "setting (the best by mean Acc_test where a row picks one)", "Acc_test", "Acc_testood", "runs"], body)
    return Section("Table 7: strategies side by side", md, "table7_strategies.csv", rows)


# ------------------------------------------------------------------ Tables 9 and 10: where the restored scalars sit

def _shown_ratio(ratios: list[float]) -> float:
    below = [r for r in ratios if r <= SHOWN_RATIO]
    return max(below) if below else min(ratios)


def _share_keys(group: list[Cell], ratio: float, by: str) -> list[str]:
    found = {g for c in group for r in c.runs for p in r.restore if p.ratio == ratio and p.per_tensor
             for g in restored_shares(p.per_tensor, by)}
    if by == "layer":
        return sorted(found, key=lambda g: (0, int(g)) if g.isdigit() else (1, g))
    return sorted(found, key=lambda g: (MODULE_ORDER.index(g), "") if g in MODULE_ORDER else (len(MODULE_ORDER), g))


def restored_where(cells: list[Cell], paper: Paper, by: str) -> Section:
    number, what = {"layer": (9, "decoder layer"), "module": (10, "module type")}[by]
    ratios = sorted({p.ratio for c in cells for r in c.runs for p in r.restore if p.ratio > 0 and p.per_tensor})
    heading = f"Table {number}: share (%) of the restored scalars in each {what}"
    csv_name = f"table{number}_restored_by_{by}.csv"
    if not ratios:
        return Section(heading, missing("restoration above 0%", "experiment=table4"), csv_name)
    shown, md, rows = _shown_ratio(ratios), [], []
    for ratio in ratios:
        ratio_md, ratio_rows = grid(
            cells, key_name=by, keys=lambda g, ratio=ratio: _share_keys(g, ratio, by),
            value=lambda key, ratio=ratio: share_value(ratio, by, key), paper=lambda c, key: paper.restored_share(c, by, key),
            extra={"ratio": ratio}, caption=lambda g, ratio=ratio: f"share of the {ratio:g}% restored ({_strategies(g)})")
        rows += ratio_rows
        md += ratio_md if math.isclose(ratio, shown) else []
    md += [f"Shown: {shown:g}% restored; `{csv_name}` holds every ratio ({', '.join(f'{r:g}' for r in ratios)}%). "
           "Each run's shares sum to 100. The paper does not say at which bucket, size and ratio it counted; its numbers "
           "stand beside every LLaMA-3-8B top-k cell" + (" (Table 9 keeps only layers 0 and 31)." if by == "layer" else "."), ""]
    return Section(heading, md, csv_name, rows)


# ------------------------------------------------------------------ Table 11: whole layer blocks

def table11(cells: list[Cell], paper: Paper) -> Section:
    def keys(group: list[Cell]) -> list[str]:
        spans = sorted({tuple(b.layers) for c in group for r in c.runs for b in r.restore_blocks})
        return ["none", *(block_name(list(s)) for s in spans)] if spans else []

    md, rows = [], []
    for split, split_name in SPLITS.items():
        split_md, split_rows = grid(
            cells, key_name="layers", keys=keys, value=lambda block, s=split: block_value(s, block),
            paper=(lambda c, block: paper.table11(c, block)) if split == "test" else (lambda c, block: None),
            baseline="none", extra={"split": split}, caption=lambda g, s=split, n=split_name: f"Acc_{s} ({n}) after restoring one block of layers")
        md, rows = md + split_md, rows + split_rows
    if not rows:
        md = missing("whole layer blocks restored (`restore.layer_block_size`)", "experiment=table11")
    else:
        md += ["Row `none`: no restoration; the gain is against it. The paper gives Table 11 for one split, shown beside Acc_test.", ""]
    return Section("Table 11: accuracy after restoring one whole block of layers to the base model", md, "table11_layer_blocks.csv", rows)


# ------------------------------------------------------------------ Figure 2's claims in the paper's text

def _change(drop: float) -> str:
    return f"a drop of {drop:.2f} points" if drop >= 0 else f"a gain of {-drop:.2f} points"


def figure2_claims(cells: list[Cell], paper: Paper) -> list[str]:
    """The paper's text on Figure 2 (LLaMA-3-8B, Acc_test: D-0's drop from 240 to 1,920 facts, the D-0 vs D-2 gap at
    1,920 against the gap at 240, the largest drop) with ours beside it, per variant. These are statements about the
    curves' shape, so they stand beside every setting, named as the paper's LLaMA-3-8B."""
    theirs = paper.figure2()
    md = []
    for variant in sorted({c.variant for c in cells}):
        acc = {(c.bucket, c.size): s.mean for c in cells if c.variant == variant
               and (s := c.stat(level_value("test", None))) is not None}
        drops = {b: acc[(b, 240)] - acc[(b, 1920)] for b in BUCKETS if (b, 240) in acc and (b, 1920) in acc}
        gaps = {size: acc[("d2", size)] - acc[("d0", size)] for size in (240, 1920) if ("d0", size) in acc and ("d2", size) in acc}
        lines = []
        if "d0" in drops:
            lines.append(f"- D-0 from 240 to 1,920 SFT facts: {acc[('d0', 240)]:.2f} → {acc[('d0', 1920)]:.2f}, "
                         f"{_change(drops['d0'])} (paper: a drop of {theirs['d0_drop_240_to_1920']:.2f}).")
        if 1920 in gaps:
            ratio = (f", {gaps[1920] / gaps[240]:.2f} times the gap at 240 facts ({gaps[240]:+.2f})"
                     if gaps.get(240) else "")
            lines.append(f"- D-2 minus D-0 at 1,920 SFT facts: {gaps[1920]:+.2f} points{ratio} (paper: "
                         f"{theirs['d0_d2_gap_1920']:+.2f}, {theirs['d0_d2_gap_ratio_1920_to_240']:.2f} times the gap at 240).")
        if drops:
            largest = max(drops, key=drops.get)
            ours = (f"{bucket_name(largest)}, {_change(drops[largest])}" if drops[largest] >= 0
                    else f"none, every bucket gains (the least: {bucket_name(largest)}, {-drops[largest]:.2f} points)")
            lines.append(f"- The largest drop from 240 to 1,920 SFT facts: {ours} (paper: {theirs['largest_drop_240_to_1920']:.2f}; "
                         "its bucket is garbled in the available text).")
        if lines:
            md += [f"The paper's text on Figure 2 (LLaMA-3-8B on EntityQuestions, Acc_test) and ours"
                   + (f" [{variant}]" if variant else "") + ":", "", *lines, ""]
    return md or missing("Acc_test at both 240 and 1,920 SFT facts, which the paper's text on Figure 2 compares", "experiment=figure2")


# ------------------------------------------------------------------ the numbers behind a figure

def figure_table(cells: list[Cell], metrics: dict[str, Value]) -> tuple[list[str], list[dict]]:
    """One row per bucket and size, one column per metric."""
    body, rows = [], []
    for c in cells:
        stats = {name: c.stat(get) for name, get in metrics.items()}
        body.append(row(c, [c.label, str(c.size)], [value_text(s, c) for s in stats.values()]) + [str(len(c.runs))])
        for name, s in stats.items():
            if s is not None:
                rows.append({"variant": c.variant, "bucket": c.bucket, "size": c.size, "metric": name, **s.csv()})
    return markdown(["training bucket", "SFT facts", *metrics, "runs"], body), rows
