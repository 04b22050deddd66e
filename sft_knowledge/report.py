"""The paper's figures and tables from one sweep: `python -m sft_knowledge.report [sweep dir]`.

Reads every job of a sweep (`<job>/run.json`, the run's `results.json`, Hydra's `.hydra/config.yaml`)
and writes `<sweep dir>/report/`: `report.md` with every table and figure, one CSV per table, one
PNG per figure:

  figure2_acc_vs_size       accuracy against SFT data size per training bucket, in-domain and OOD (paper Figure 2)
  table2_bucket_x_level     accuracy per test level for each training bucket (paper Table 2)
  figure4_acc_test4         accuracy on D_test-4 per training bucket and size (paper Figure 4)
  figure5_kl                first-token KL to the base model per training bucket and size (paper Figure 5)
  table4_restoration        accuracy against the share of restored parameters (paper Table 4)
  table3_update_share       share of the summed relative change held by the top-x% of parameters (paper Table 3)
  cells                     every job with its status: failed and unfinished cells are listed, never dropped

Runs that differ only in their seeds (`seed`, `data.seed`) form one cell, reported as the mean and
the sample standard deviation over them. Where a cell's setting is one the paper published
(EntityQuestions, one of its models, full fine-tuning; the table's size, restoration strategy and
region), the paper's number and ours minus the paper's stand beside ours.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

from .summary import sweep_rows  # noqa: E402

PAPER_RESULTS = Path(__file__).with_name("paper_results.json")  # a copy of ../shared/reference/paper_results.json
SEED_KEYS = ("seed", "data.seed")  # runs differing only in these are repeats of one cell
GRID_KEYS = ("mastery.bucket", "data.size")  # the axes of every table and figure
SPLITS = {"test": "in-domain", "testood": "out-of-domain"}
LEVELS = [f"D-{lv}" for lv in range(5)]
BUCKET_COLOURS = {"all": "0.4", "d0": "#d62728", "d1": "#ff7f0e", "d2": "#2ca02c", "d3": "#1f77b4", "d4": "#9467bd"}


class ReportError(ValueError):
    """Bad input for a report; its message is one line."""


@dataclass
class Stat:
    mean: float
    std: float | None  # sample standard deviation; None for a single run
    n: int

    @classmethod
    def of(cls, values: list[float | None]) -> Stat | None:
        present = [v for v in values if v is not None]
        if not present:
            return None
        return cls(statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else None, len(present))

    def __str__(self) -> str:
        return f"{self.mean:.2f}" + (f" ± {self.std:.2f}" if self.std is not None else "")

    def csv(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": "" if self.std is None else self.std, "n": self.n}


@dataclass
class Job:
    num: int
    status: str  # done | running | failed | missing | results missing
    config: dict | None  # semantic config (from results.json, else from Hydra's record of the job)
    results: dict | None
    error: str = ""
    overrides: list[str] = field(default_factory=list)


@dataclass
class Cell:
    """One setting of the sweep (variant, bucket, size) over its seeds."""

    variant: str
    bucket: str
    size: Any
    jobs: list[Job]

    @property
    def runs(self) -> list[dict]:
        return [j.results for j in self.jobs if j.results is not None]

    @property
    def config(self) -> dict:
        return self.jobs[0].config

    def stat(self, get: Callable[[dict], float | None]) -> Stat | None:
        return Stat.of([get(r) for r in self.runs])

    def absent(self) -> str:
        """What to show where this cell has no result: the status of its jobs."""
        return ", ".join(f"{j.status} (job {j.num})" for j in self.jobs)

    @property
    def label(self) -> str:
        return bucket_name(self.bucket) + (f" [{self.variant}]" if self.variant else "")


def bucket_name(bucket: str) -> str:
    return f"D-{bucket[1:]}" if bucket.startswith("d") else bucket


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _canonical(value: Any) -> str:
    """A value as JSON with every number a float: Hydra's record of a job says 5 where results.json says 5.0."""
    def canon(v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        return [canon(x) for x in v] if isinstance(v, (list, tuple)) else v
    return json.dumps(canon(value), sort_keys=True)


def _get(config: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        config = config[part]
    return config


# ------------------------------------------------------------------ reading a sweep

def latest_sweep(root: Path) -> Path:
    sweeps = sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []
    if not sweeps:
        raise ReportError(f"no sweep under {root}: run one (python -m sft_knowledge.run -m ...) or name its directory")
    return sweeps[-1]  # names start with the time, so the last is the latest


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{path} is not valid JSON ({err})") from None


def load_jobs(sweep_dir: Path) -> list[Job]:
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir} is not a directory")
    try:
        rows = sweep_rows(sweep_dir)
    except json.JSONDecodeError as err:
        raise ReportError(f"a run.json under {sweep_dir} is not valid JSON ({err})") from None
    if not rows:
        raise ReportError(f"{sweep_dir} is not a sweep directory: it holds no job directories (0/, 1/, ...) such as "
                          "python -m sft_knowledge.run -m writes under outputs/sweeps/")
    semantic = next((set(r["results"]["config"]) for r in rows if "results" in r), set())  # config groups of a run key
    jobs = []
    for row in rows:
        hydra_dir = sweep_dir / str(row["job"]) / ".hydra"
        overrides = yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) if (hydra_dir / "overrides.yaml").exists() else []
        results = row.get("results")
        if results is not None:
            config = results["config"]
        elif (hydra_dir / "config.yaml").exists():  # a job without results: place it by the config Hydra recorded
            config = {k: v for k, v in yaml.safe_load((hydra_dir / "config.yaml").read_text()).items() if k in semantic}
        else:
            config = None
        status = row["status"] if results is not None or row["status"] != "done" else "results missing"
        jobs.append(Job(row["job"], status, config, results, row.get("error", ""), overrides or []))
    if not any(j.results for j in jobs):
        counts = ", ".join(f"{n} {s}" for s, n in sorted(Counter(j.status for j in jobs).items()))
        raise ReportError(f"no finished run in {sweep_dir}: {len(jobs)} jobs ({counts})")
    return jobs


def group_cells(jobs: list[Job]) -> list[Cell]:
    """Cells of the sweep: jobs grouped by everything but their seeds, in bucket and size order.

    Keys other than bucket and size that differ across the sweep (a learning rate, a restoration
    strategy) name a cell's variant, so every table and figure keeps those settings apart.
    """
    placed = [j for j in jobs if j.config is not None]
    flat = {j.num: _flatten(j.config) for j in placed}
    keys = sorted(set().union(*(f.keys() for f in flat.values())) - set(SEED_KEYS) - set(GRID_KEYS))
    varying = [k for k in keys if len({_canonical(f.get(k)) for f in flat.values()}) > 1]
    cells: dict[tuple, Cell] = {}
    for j in placed:
        variant = ", ".join(f"{k}={flat[j.num].get(k)}" for k in varying)
        bucket, size = (_get(j.config, k) for k in GRID_KEYS)
        cells.setdefault((variant, bucket, str(size)), Cell(variant, bucket, size, [])).jobs.append(j)
    return sorted(cells.values(), key=lambda c: (c.variant, c.bucket, _size_order(c.size)))  # all, d0, .., d4


def _size_order(size: Any) -> tuple:
    return (1, 0) if size == "all" else (0, size)


# ------------------------------------------------------------------ the paper's numbers

class Paper:
    """The paper's published numbers, looked up for a cell whose setting the paper ran."""

    def __init__(self, path: Path = PAPER_RESULTS):
        self.data = json.loads(path.read_text())
        self._models = {self._norm(k): k for k in self.data["bucket_sizes"] if not k.startswith("_")}

    @staticmethod
    def _norm(name: str) -> str:
        return re.sub(r"[^a-z0-9]", "", name.lower()).removeprefix("meta")

    def model(self, config: dict) -> str | None:
        """The paper's name for this setting's model (e.g. llama3_8b) when the paper ran it, else None."""
        if config["data"]["name"] != "entityquestions" or config["train"]["method"] != "full":
            return None
        return self._models.get(self._norm(config["model"]["name"]))

    def table2(self, cell: Cell, split: str, level: int | None) -> float | None:
        """Table 2: 1,920 facts per bucket; `level` None for the macro mean."""
        rows = self.data["table2_size1920_by_train_bucket"].get(self.model(cell.config) or "", {})
        row = rows.get(bucket_name(cell.bucket)) if cell.size == 1920 else None
        if row is None:
            return None
        return row[f"acc_{split}"] if level is None else row[f"acc_{split}_level"][level]

    def _llama3_8b(self, cell: Cell) -> bool:
        return self.model(cell.config) == "llama3_8b"

    def table4(self, cell: Cell, split: str, ratio: float) -> float | None:
        t = self.data["table4_restoration_llama3_8b"]
        restore = cell.config["restore"]
        if not (self._llama3_8b(cell) and restore["strategy"] == "top" and restore["region"] == "transformer"
                and ratio in t["ratios"]):
            return None
        column = t[f"acc_{split}"].get(str(cell.size), {}).get(bucket_name(cell.bucket))
        return None if column is None else column[t["ratios"].index(ratio)]

    def table3(self, cell: Cell, top_percent: int) -> tuple[float, float] | None:
        """Table 3 gives the range over the 10 LLaMA-3-8B models (5 buckets x 240 and 1,920 facts)."""
        t = self.data["table3_update_concentration_llama3_8b"]
        if not (self._llama3_8b(cell) and cell.size in (240, 1920) and top_percent in t["top_percent"]):
            return None
        i = t["top_percent"].index(top_percent)
        return t["share_min"][i], t["share_max"][i]


def _range_diff(ours: float, lo: float, hi: float) -> float:
    """Ours against a published range: 0 inside it, else the signed distance to its nearer end."""
    return ours - hi if ours > hi else ours - lo if ours < lo else 0.0


# ------------------------------------------------------------------ tables

def _cell_text(stat: Stat | None, cell: Cell, paper: float | None = None) -> str:
    if stat is None:
        return cell.absent() if not cell.runs else "—"
    return str(stat) if paper is None else f"{stat} (paper {paper:.2f}, Δ {stat.mean - paper:+.2f})"


def _row(cell: Cell, head: list[str], values: list[str]) -> list[str]:
    """A table row for a cell; one with no finished run says why once instead of in every column."""
    return head + (values if cell.runs else [cell.absent()] + [""] * (len(values) - 1))


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["empty"])
        writer.writeheader()
        writer.writerows(rows)


def _level_value(split: str, level: int | None) -> Callable[[dict], float | None]:
    return (lambda r: r[f"acc_{split}"]) if level is None else (lambda r: r[f"acc_{split}_level"][level])


def _kl_mean(r: dict) -> float | None:
    return r["kl"].get("mean")


def _restore_value(split: str, ratio: float) -> Callable[[dict], float | None]:
    def get(r: dict) -> float | None:
        return next((x[f"acc_{split}"] for x in r["restore"] if x["ratio"] == ratio), None)
    return get


def _groups(cells: list[Cell]) -> dict[tuple[str, str], list[Cell]]:
    """Cells by (variant, size), for tables with one block per size."""
    out: dict[tuple[str, str], list[Cell]] = {}
    for c in sorted(cells, key=lambda c: (c.variant, _size_order(c.size))):
        out.setdefault((c.variant, str(c.size)), []).append(c)
    return out


def _block_title(variant: str, size: str) -> str:
    return f"### {size} SFT facts" + (f" — {variant}" if variant else "")


def table2(cells: list[Cell], paper: Paper) -> tuple[list[str], list[dict]]:
    md, rows = [], []
    header = ["training bucket"] + [f"{lv}" for lv in LEVELS] + ["Acc_test"] + [f"ood {lv}" for lv in LEVELS] + ["Acc_testood", "runs"]
    for (variant, size), group in _groups(cells).items():
        body = []
        for c in group:
            ours, theirs, diffs = [], [], []
            for split in SPLITS:
                for level in [*range(5), None]:
                    stat, p = c.stat(_level_value(split, level)), paper.table2(c, split, level)
                    ours.append(_cell_text(stat, c))
                    theirs.append("—" if p is None else f"{p:.2f}")
                    diffs.append("—" if p is None or stat is None else f"{stat.mean - p:+.2f}")
                    if stat is not None:
                        rows.append({"variant": variant, "size": size, "bucket": c.bucket, "split": split,
                                     "level": "macro" if level is None else LEVELS[level], **stat.csv(),
                                     "paper": "" if p is None else p, "diff": "" if p is None else stat.mean - p})
            body.append(_row(c, [c.label], ours) + [str(len(c.runs))])
            if any(t != "—" for t in theirs):
                body += [[f"{c.label} paper"] + theirs + [""], [f"{c.label} ours − paper"] + diffs + [""]]
        md += [_block_title(variant, size), ""] + _markdown(header, body)
    return md, rows


def table4(cells: list[Cell], paper: Paper) -> tuple[list[str], list[dict]]:
    md, rows = [], []
    for (variant, size), group in _groups(cells).items():
        ratios = sorted({x["ratio"] for c in group for r in c.runs for x in r["restore"]})
        strategies = sorted({x["strategy"] + ", " + x["region"] for c in group for r in c.runs for x in r["restore"]})
        if not ratios:
            continue
        for split, split_name in SPLITS.items():
            body = []
            for ratio in ratios:
                line = [f"{ratio:g}"]
                for c in group:
                    stat, p = c.stat(_restore_value(split, ratio)), paper.table4(c, split, ratio)
                    line.append(_cell_text(stat, c, p if stat is not None else None))
                    if stat is not None:
                        rows.append({"variant": variant, "size": size, "bucket": c.bucket, "split": split, "ratio": ratio,
                                     **stat.csv(), "paper": "" if p is None else p, "diff": "" if p is None else stat.mean - p})
                body.append(line)
            md += [f"{_block_title(variant, size)}: Acc_{split} ({split_name}; restoration {'; '.join(strategies)})", ""]
            md += _markdown(["restored %"] + [c.label for c in group], body)
    return md, rows


def table3(cells: list[Cell], paper: Paper) -> tuple[list[str], list[dict]]:
    percents = sorted({int(k) for c in cells for r in c.runs for k in r["update_share"]})
    body, rows = [], []
    for c in cells:
        ours, refs = [], []
        for pct in percents:
            stat, p = c.stat(lambda r, pct=pct: r["update_share"].get(str(pct))), paper.table3(c, pct)
            ours.append(_cell_text(stat, c) if p is None or stat is None
                        else f"{stat} (paper {p[0]:.1f}–{p[1]:.1f}, Δ {_range_diff(stat.mean, *p):+.2f})")
            refs.append(p)
            if stat is not None:
                rows.append({"variant": c.variant, "size": c.size, "bucket": c.bucket, "top_percent": pct, **stat.csv(),
                             "paper_min": "" if p is None else p[0], "paper_max": "" if p is None else p[1],
                             "diff": "" if p is None else _range_diff(stat.mean, *p)})
        body.append(_row(c, [c.label, str(c.size)], ours) + [str(len(c.runs))])
    md = _markdown(["training bucket", "SFT facts"] + [f"top {p}%" for p in percents] + ["runs"], body)
    t = paper.data["table3_update_concentration_llama3_8b"]
    md += ["Paper (LLaMA-3-8B, range over its 10 models): " + ", ".join(
        f"top {p}% {lo:.1f}–{hi:.1f}" for p, lo, hi in zip(t["top_percent"], t["share_min"], t["share_max"])) + ".", ""]
    return md, rows


def figure_table(cells: list[Cell], metrics: dict[str, Callable[[dict], float | None]]) -> tuple[list[str], list[dict]]:
    """The numbers behind a figure: one row per bucket and size, one column per metric."""
    body, rows = [], []
    for c in cells:
        stats = {name: c.stat(get) for name, get in metrics.items()}
        body.append(_row(c, [c.label, str(c.size)], [_cell_text(s, c) for s in stats.values()]) + [str(len(c.runs))])
        for name, s in stats.items():
            if s is not None:
                rows.append({"variant": c.variant, "bucket": c.bucket, "size": c.size, "metric": name, **s.csv()})
    return _markdown(["training bucket", "SFT facts"] + list(metrics) + ["runs"], body), rows


# ------------------------------------------------------------------ figures

def plot_against_size(path: Path, title: str, cells: list[Cell], panels: list[tuple[str, str, Callable[[dict], float | None]]]) -> None:
    """One panel per (title, y label, value); in each, one line per training bucket against the SFT data size."""
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.5, 5.2 * len(panels)), 4.2), squeeze=False)
    lines: dict[tuple[str, str], list[Cell]] = {}
    for c in cells:
        lines.setdefault((c.variant, c.bucket), []).append(c)
    sizes = sorted({round(statistics.fmean(r["n_train_facts"] for r in c.runs)) for c in cells if c.runs})
    for ax, (panel_title, ylabel, get) in zip(axes[0], panels):
        for (variant, bucket), line in lines.items():
            points = [(statistics.fmean(r["n_train_facts"] for r in c.runs), c.stat(get)) for c in line if c.runs]
            points = sorted((x, s) for x, s in points if s is not None)
            if not points:
                continue
            ax.errorbar([x for x, _ in points], [s.mean for _, s in points], yerr=[s.std or 0 for _, s in points],
                        marker="o", capsize=3, color=BUCKET_COLOURS.get(bucket), label=line[0].label)
        if len(sizes) > 1:
            ax.set_xscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("SFT training facts (count" + (", log scale)" if len(sizes) > 1 else ")"))
        ax.set_ylabel(ylabel)
        if len(panels) > 1:
            ax.set_title(panel_title)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(title="training bucket", fontsize=8, loc="best")
    fig.suptitle(f"{title}\n(mean over seeds; error bars: ±1 sample standard deviation)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------ the report

def write_report(sweep_dir: Path, paper: Paper | None = None) -> Path:
    """Write `<sweep dir>/report/` (replacing an older report as a whole); return its path."""
    sweep_dir = Path(sweep_dir)
    paper = paper or Paper()
    jobs = load_jobs(sweep_dir)
    cells = group_cells(jobs)
    done = [c for c in cells if c.runs]
    out = sweep_dir / f"report.tmp{os.getpid()}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()

    first = next(j.results for j in jobs if j.results)
    models = sorted({_get(c.config, "model.name") for c in cells})
    datasets = sorted({_get(c.config, "data.name") for c in cells})
    matched = sorted({paper.model(c.config) for c in cells} - {None})
    kl_level = first["kl_level"]
    md = [f"# Report: {sweep_dir.name}", "",
          f"Sweep `{sweep_dir.resolve()}`: {sum(j.results is not None for j in jobs)} of {len(jobs)} jobs finished, "
          f"{len(cells)} cells (settings apart from seeds). Model: {', '.join(models)}; data: {', '.join(datasets)}.",
          "Accuracies in percent (macro mean over levels for Acc_test and Acc_testood, as in the paper); "
          "mean ± sample standard deviation over the seeds (`seed`, `data.seed`) where a cell has several runs.", ""]
    if matched:
        md += [f"Paper comparison: cells of model {', '.join(matched)} on EntityQuestions with full fine-tuning show the "
               "paper's number beside ours (Table 2 at 1,920 facts; Tables 3 and 4 for LLaMA-3-8B at 240 and 1,920 facts, "
               "top-k restoration of the transformer region), with Δ = ours − paper.", ""]
    else:
        md += [f"Paper comparison: none. The paper ran EntityQuestions with LLaMA-2/3 models and full fine-tuning; this "
               f"sweep's setting (data {', '.join(datasets)}, model {', '.join(models)}) is not one of them, so no "
               "paper number applies.", ""]
    md += ["Figures 2, 4 and 5 have no paper numbers beside them: the paper publishes them only as plots.", ""]

    md += ["## Cells that did not finish", ""]
    unfinished = [j for j in jobs if j.results is None]
    md += _markdown(["job", "status", "overrides", "error"],
                    [[str(j.num), j.status, " ".join(j.overrides) or "—", j.error or "—"] for j in unfinished]) \
        if unfinished else ["None: every job of the sweep finished.", ""]
    _write_csv(out / "cells.csv", [
        {"job": j.num, "status": j.status, "bucket": _get(j.config, "mastery.bucket") if j.config else "",
         "size": _get(j.config, "data.size") if j.config else "", "seed": _get(j.config, "seed") if j.config else "",
         "data_seed": _get(j.config, "data.seed") if j.config else "",
         "run_key": j.results["run_key"] if j.results else "", "overrides": " ".join(j.overrides), "error": j.error}
        for j in jobs])

    figure2 = {"Acc_test": _level_value("test", None), "Acc_testood": _level_value("testood", None)}
    plot_against_size(out / "figure2_acc_vs_size.png", "Figure 2: accuracy against SFT data size, per training bucket", done, [
        ("In-domain (D_test)", "Acc_test (%)", figure2["Acc_test"]),
        ("Out-of-domain (D_testood)", "Acc_testood (%)", figure2["Acc_testood"])])
    fig2_md, fig2_rows = figure_table(cells, figure2)
    _write_csv(out / "figure2_acc_vs_size.csv", fig2_rows)
    md += ["## Figure 2: accuracy against SFT data size, per training bucket", "",
           "![Figure 2](figure2_acc_vs_size.png)", ""] + fig2_md

    t2_md, t2_rows = table2(cells, paper)
    _write_csv(out / "table2_bucket_x_level.csv", t2_rows)
    md += ["## Table 2: accuracy per test level (columns) for each training bucket (rows)", ""] + t2_md

    acc4 = {"Acc D_test-4": _level_value("test", 4), f"KL on D_test-{kl_level}": _kl_mean}
    plot_against_size(out / "figure4_acc_test4.png", "Figure 4: accuracy on D_test-4 (facts the base model knows best)", done, [("Accuracy on D_test-4", "Acc D_test-4 (%)", acc4["Acc D_test-4"])])
    plot_against_size(out / "figure5_kl.png", "Figure 5: first-token KL divergence from the base model", done, [(
        f"First-token KL(fine-tuned ‖ base) on D_test-{kl_level}", "KL (nats, mean over facts)", _kl_mean)])
    fig45_md, fig45_rows = figure_table(cells, acc4)
    _write_csv(out / "figure4_5_acc_test4_kl.csv", fig45_rows)
    md += ["## Figures 4 and 5: accuracy on D_test-4 and the KL to the base model, per training bucket and size", "",
           "![Figure 4](figure4_acc_test4.png)", "", "![Figure 5](figure5_kl.png)", ""] + fig45_md

    t4_md, t4_rows = table4(cells, paper)
    _write_csv(out / "table4_restoration.csv", t4_rows)
    md += ["## Table 4: accuracy after restoring the top-k% most-changed parameters to their base values", ""] + t4_md

    t3_md, t3_rows = table3(cells, paper)
    _write_csv(out / "table3_update_share.csv", t3_rows)
    md += ["## Table 3: share (%) of the summed relative change held by the top-x% most-changed parameters", ""] + t3_md

    (out / "report.md").write_text("\n".join(md))
    final = sweep_dir / "report"
    shutil.rmtree(final, ignore_errors=True)
    out.rename(final)
    return final


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sft_knowledge.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", nargs="?", help="a sweep directory (default: the latest under outputs/sweeps)")
    args = parser.parse_args(argv)
    try:
        out = write_report(Path(args.sweep_dir) if args.sweep_dir else latest_sweep(Path("outputs/sweeps")))
    except ReportError as err:
        sys.exit(f"error: {err}")
    print(f"report: {out / 'report.md'}")
    for f in sorted(out.iterdir()):
        if f.name != "report.md":
            print(f"  {f}")


if __name__ == "__main__":
    main()
