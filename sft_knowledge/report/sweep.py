"""Reading sweeps: their jobs (`<job>/run.json`, the run's `results.json`, Hydra's record of the job) and the
cells they form. Runs that differ only in their seeds are repeats of one cell, summarised as a `Stat`."""
from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..summary import sweep_rows

SEED_KEYS = ("seed", "data.seed")  # runs differing only in these are repeats of one cell
GRID_KEYS = ("mastery.bucket", "data.size")  # the axes of every table and figure
BUCKETS = ("all", "d0", "d1", "d2", "d3", "d4")


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
    label: str  # the job's number, prefixed with its sweep's name when a report reads several sweeps
    status: str  # done | running | failed | missing | results missing
    config: dict | None  # semantic config (from results.json, else from Hydra's record of the job)
    results: dict | None
    error: str = ""
    overrides: list[str] = field(default_factory=list)


Value = Callable[[dict], float | None]  # one number of a run's results.json


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

    def stat(self, get: Value) -> Stat | None:
        return Stat.of([get(r) for r in self.runs])

    def absent(self) -> str:
        """What to show where this cell has no result: the status of its jobs."""
        return ", ".join(f"{j.status} (job {j.label})" for j in self.jobs)

    @property
    def label(self) -> str:
        return bucket_name(self.bucket) + (f" [{self.variant}]" if self.variant else "")


def bucket_name(bucket: str) -> str:
    return f"D-{bucket[1:]}" if bucket.startswith("d") else bucket


def get_key(config: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        config = config[part]
    return config


def size_order(size: Any) -> tuple:
    return (1, 0) if size == "all" else (0, size)


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


def latest_sweep(root: Path) -> Path:
    sweeps = sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []
    if not sweeps:
        raise ReportError(f"no sweep under {root}: run one (python -m sft_knowledge.run -m ...) or name its directory")
    return sweeps[-1]  # names start with the time, so the last is the latest


def load_jobs(sweep_dir: Path, prefix: str = "") -> list[Job]:
    """The jobs of one sweep; `prefix` starts their labels (the sweep's name where a report reads several)."""
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
        jobs.append(Job(f"{prefix}{row['job']}", status, config, results, row.get("error", ""), overrides or []))
    if not any(j.results for j in jobs):
        counts = ", ".join(f"{n} {s}" for s, n in sorted(Counter(j.status for j in jobs).items()))
        raise ReportError(f"no finished run in {sweep_dir}: {len(jobs)} jobs ({counts})")
    return jobs


def load_sweeps(sweep_dirs: list[Path]) -> list[Job]:
    """The jobs of one or more sweeps (e.g. experiment=paper and its second command, experiment=paper_lora)."""
    several = len(sweep_dirs) > 1
    return [j for d in sweep_dirs for j in load_jobs(d, f"{d.name}/" if several else "")]


def group_cells(jobs: list[Job]) -> list[Cell]:
    """Cells of the sweep: jobs grouped by everything but their seeds, in bucket and size order.

    Keys other than bucket and size that differ across the sweep (a learning rate, a restoration
    strategy) name a cell's variant, so every table and figure keeps those settings apart.
    """
    placed = [j for j in jobs if j.config is not None]
    flat = {id(j): _flatten(j.config) for j in placed}
    keys = sorted(set().union(*(f.keys() for f in flat.values())) - set(SEED_KEYS) - set(GRID_KEYS))
    varying = [k for k in keys if len({_canonical(f.get(k)) for f in flat.values()}) > 1]
    cells: dict[tuple, Cell] = {}
    for j in placed:
        variant = ", ".join(f"{k}={flat[id(j)].get(k)}" for k in varying)
        bucket, size = (get_key(j.config, k) for k in GRID_KEYS)
        cells.setdefault((variant, bucket, str(size)), Cell(variant, bucket, size, [])).jobs.append(j)
    return sorted(cells.values(), key=lambda c: (c.variant, c.bucket, size_order(c.size)))  # all, d0, .., d4


def blocks(cells: list[Cell]) -> dict[tuple[str, str], list[Cell]]:
    """Cells by (variant, size), for tables and figures with one block per size; buckets in order within each."""
    out: dict[tuple[str, str], list[Cell]] = {}
    for c in sorted(cells, key=lambda c: (c.variant, size_order(c.size))):
        out.setdefault((c.variant, str(c.size)), []).append(c)
    return out
