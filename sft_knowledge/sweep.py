"""Reading sweeps: one reader of a sweep directory for `status`, the sweep summary and the report.

A sweep directory holds one job directory per cell (`0/`, `1/`, ...) with the `run.json` the run writes (its state,
who runs it, its run directory) and Hydra's record of the job (`.hydra/`); the run directory holds `results.json`.
`read_jobs` turns them into `Job`s; with `planned`, the cells the sweep's `multirun.yaml` plans come too, those
without a job directory yet included. For the report, runs that differ only in their seeds are repeats of one `Cell`,
summarised as a `Stat`. This module imports nothing heavy (no torch, no stage): `status` stays fast.
"""
from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import results
from .config import semantic_part
from .data.facts import SLICK_CATEGORIES, category_title
from .results import RunResult

SEED_KEYS = ("seed", "data.seed")  # runs differing only in these are repeats of one cell
GRID_KEYS = ("mastery.bucket", "data.size")  # the axes of every table and figure
BUCKETS = ("all", "d0", "d1", "d2", "d3", "d4")

Value = Callable[[RunResult], float | None]  # one number of a run's results


class SweepError(ValueError):
    """Bad input for a sweep reader (the report calls it ReportError); its message is one line."""


@dataclass(frozen=True)
class RunInfo:
    """A job's `run.json` (run.JobRecord writes it): its run, its state, and who runs it."""
    status: str  # running | done | failed | interrupted
    run_key: str | None = None
    run_dir: Path | None = None
    error: str | None = None  # the last line of a failure or interruption
    pid: int | None = None
    host: str | None = None
    slurm_job_id: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunInfo:
        return cls(d.get("status", "missing"), d.get("run_key"), Path(d["run_dir"]) if "run_dir" in d else None,
                   d.get("error"), d.get("pid"), d.get("host"), d.get("slurm_job_id"))


@dataclass
class Job:
    """One cell of a sweep as its job directory records it."""
    number: int
    label: str  # the job's number, prefixed with its sweep's name when a report reads several sweeps
    dir: Path
    info: RunInfo | None  # its run.json; None before the job started
    result: RunResult | None  # its run's results.json; None until the run finished
    overrides: list[str]  # as multirun.yaml plans them where the reader expands the plan, else as Hydra recorded them
    config: dict | None  # semantic config (from the results, else from Hydra's record of the job)

    @property
    def status(self) -> str:
        """done | running | failed | interrupted | missing (no run.json) | results missing (run.json says done)."""
        if self.result is not None:
            return "done"
        status = self.info.status if self.info else "missing"
        return "results missing" if status == "done" else status

    @property
    def error(self) -> str:
        return (self.info.error if self.info else None) or ""

    @property
    def results_path(self) -> Path | None:
        return None if self.info is None or self.info.run_dir is None else self.info.run_dir / "results.json"


def _read_info(run_json: Path, sweep_dir: Path) -> RunInfo | None:
    if not run_json.exists():
        return None
    try:
        return RunInfo.from_json(json.loads(run_json.read_text()))
    except json.JSONDecodeError as err:
        raise SweepError(f"a run.json under {sweep_dir} is not valid JSON ({err})") from None


def _read_result(info: RunInfo | None) -> RunResult | None:
    path = None if info is None or info.run_dir is None else info.run_dir / "results.json"
    if path is None or not path.exists():
        return None
    try:
        return results.load(path)
    except json.JSONDecodeError as err:
        raise SweepError(f"{path} is not valid JSON ({err})") from None
    except (KeyError, TypeError) as err:
        raise SweepError(f"{path} is not a results.json this version reads ({type(err).__name__}: {err})") from None


def _job_dirs(sweep_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())


def planned_cells(sweep_dir: Path) -> list[list[str]]:
    """The overrides of every cell, in job-number order (the sweeper's params, then the command line's)."""
    from omegaconf import OmegaConf

    from .overrides import expand  # Hydra's override parser; only a planned sweep needs it

    cfg = OmegaConf.load(sweep_dir / "multirun.yaml")
    params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.get("params") or {}).items()]
    return expand(params + list(cfg.hydra.overrides.task))


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.exists() else None


def read_jobs(sweep_dir: Path, prefix: str = "", planned: bool = False) -> list[Job]:
    """The jobs of one sweep, in job-number order; `prefix` starts their labels.

    Without `planned`, the job directories there are. With it, where the sweep has a `multirun.yaml`, its planned
    cells: those without a job directory yet included, every cell's overrides as planned.
    """
    sweep_dir = Path(sweep_dir)
    plan = planned_cells(sweep_dir) if planned and (sweep_dir / "multirun.yaml").exists() else None
    numbers = range(len(plan)) if plan is not None else _job_dirs(sweep_dir)
    read = []
    for number in numbers:
        info = _read_info(sweep_dir / str(number) / "run.json", sweep_dir)
        read.append((number, info, _read_result(info)))
    semantic = next((set(r.config) for _, _, r in read if r is not None), set())  # the config groups of a run key
    jobs = []
    for number, info, result in read:
        hydra_dir = sweep_dir / str(number) / ".hydra"
        if result is not None:
            config = result.config
        elif (recorded := _yaml(hydra_dir / "config.yaml")) is not None:  # place a job without results by Hydra's record
            # the same part of it that a run's results record (config.semantic), so the two compare key by key
            config = {k: v for k, v in semantic_part(recorded).items() if k in semantic}
        else:
            config = None
        overrides = plan[number] if plan is not None else _yaml(hydra_dir / "overrides.yaml") or []
        jobs.append(Job(number, f"{prefix}{number}", sweep_dir / str(number), info, result, overrides, config))
    return jobs


def unfinished(sweep_dir: Path) -> int:
    """How many cells of a sweep (as its multirun.yaml plans them, where it has one) have no results."""
    return sum(j.result is None for j in read_jobs(sweep_dir, planned=True))


def latest_sweep(root: Path) -> Path:
    sweeps = sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []
    if not sweeps:
        raise SweepError(f"no sweep under {root}: run one (python -m sft_knowledge.run -m ...) or name its directory")
    return sweeps[-1]  # names start with the time, so the last is the latest


def load_jobs(sweep_dir: Path, prefix: str = "") -> list[Job]:
    """The jobs of one sweep for a report: SweepError unless it is a sweep directory with a finished run."""
    if not sweep_dir.is_dir():
        raise SweepError(f"{sweep_dir} is not a directory")
    jobs = read_jobs(sweep_dir, prefix)
    if not jobs:
        raise SweepError(f"{sweep_dir} is not a sweep directory: it holds no job directories (0/, 1/, ...) such as "
                         "python -m sft_knowledge.run -m writes under outputs/sweeps/")
    if not any(j.result for j in jobs):
        counts = ", ".join(f"{n} {s}" for s, n in sorted(Counter(j.status for j in jobs).items()))
        raise SweepError(f"no finished run in {sweep_dir}: {len(jobs)} jobs ({counts})")
    return jobs


def load_sweeps(sweep_dirs: list[Path]) -> list[Job]:
    """The jobs of one or more sweeps (e.g. experiment=paper and its second command, experiment=paper_lora)."""
    several = len(sweep_dirs) > 1
    return [j for d in sweep_dirs for j in load_jobs(d, f"{d.name}/" if several else "")]


# ------------------------------------------------------------------ cells: jobs over their seeds

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
class Cell:
    """One setting of the sweep (variant, bucket, size) over its seeds."""

    variant: str
    bucket: str
    size: Any
    jobs: list[Job]

    @property
    def runs(self) -> list[RunResult]:
        return [j.result for j in self.jobs if j.result is not None]

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
    """d2 -> D-2, maybe_known -> MaybeKnown (a SliCK category), all -> all."""
    if bucket in SLICK_CATEGORIES:
        return category_title(bucket)
    return f"D-{bucket[1:]}" if bucket.startswith("d") else bucket


def get_key(config: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        config = config[part]
    return config


def size_order(size: Any) -> tuple:
    return (1, 0) if size == "all" else (0, size)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= flatten(v, f"{prefix}{k}.")
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


def group_cells(jobs: list[Job]) -> list[Cell]:
    """Cells of the sweep: jobs grouped by everything but their seeds, in bucket and size order.

    Keys other than bucket and size that differ across the sweep (a learning rate, a restoration
    strategy) name a cell's variant, so every table and figure keeps those settings apart.
    """
    placed = [j for j in jobs if j.config is not None]
    flat = {id(j): flatten(j.config) for j in placed}
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
