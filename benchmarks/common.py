"""What the benchmarks share: this checkout on the path, repeats in alternating order, medians, peak RSS, the machine,
the smoke world's warm cache, and one result format that benchmarks/report.py turns into a table.

A result is `benchmarks/results/<name>.json` (`--quick`: `benchmarks/results/quick/<name>.json`, never mixed with
the real ones): the machine and date, the settings, every repeat, and `rows`, each a metric with ours, the baseline
measured in the same run, `speedup` (how many times better ours is: baseline / ours for times, ours / baseline for
rates) and the target, if the issue sets one.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's sft_knowledge, whatever is installed (children inherit it below)
# Where results and the benchmarks' own outputs go; the tests point both at temporary directories.
RESULTS = Path(os.environ.get("SFT_KNOWLEDGE_BENCH_RESULTS", ROOT / "benchmarks" / "results"))
WORK = Path(os.environ.get("SFT_KNOWLEDGE_BENCH_WORK", ROOT / "outputs" / "bench"))  # git-ignored; `make clean` removes it
SMOKE = ["experiment=smoke", "logger=disabled"]


def child_env() -> dict[str, str]:
    """The environment of a benchmark's child process: this checkout first on the path. Thread variables pass as the
    caller set them: `make bench` sets none, so torch and the launchers under test choose; on cores that other jobs
    share, OMP_NUM_THREADS=1 keeps two torch processes from slowing each other many times over."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def run(cmd: list[str]) -> float:
    """Run cmd in this checkout to completion; its wall seconds. A failure ends the benchmark with the tail of its output."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"error: {' '.join(cmd[:6])} ... failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return seconds


def alternating(repeats: int, methods: dict[str, Callable[[], Any]]) -> dict[str, list[Any]]:
    """Each method once per repeat, the order reversed every other repeat, so neither always runs on a cold or a warm
    machine (caches, CPU clock, a neighbour's load). A method returns what one run measured."""
    out: dict[str, list[Any]] = {name: [] for name in methods}
    names = list(methods)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            out[name].append(methods[name]())
    return out


def median(values: list[float]) -> float:
    return statistics.median(values)


def peak_rss_gib() -> float:
    """This process's peak resident set. VmHWM, not getrusage: ru_maxrss is inherited across fork and exec on Linux,
    so a child would report its parent's peak whenever that is higher."""
    try:
        line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 2**20  # kB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"host": platform.node(), "cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_avg_at_start": os.getloadavg()[0]}


def row(metric: str, ours: float, baseline: float, unit: str, higher_is_better: bool, baseline_label: str = "baseline",
        min_speedup: float | None = None, target: str | None = None, met: bool | None = None) -> dict:
    """One line of the report. The target is a speed-up (`min_speedup`) or, described in words, anything else."""
    speedup = ours / baseline if higher_is_better else baseline / ours
    if min_speedup is not None:
        target, met = f"speed-up >= {min_speedup:g}x", speedup >= min_speedup
    return {"metric": metric, "ours": ours, "baseline": baseline, "baseline_label": baseline_label, "unit": unit,
            "speedup": speedup, "target": target, "met": met}


def save(name: str, summary: dict, quick: bool) -> Path:
    path = RESULTS / ("quick" if quick else "") / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "quick": quick, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), **summary}
    path.write_text(json.dumps(record, indent=1) + "\n")
    for r in summary["rows"]:
        target = f"; target {r['target']}: {'met' if r['met'] else 'NOT met'}" if r["target"] else ""
        print(f"{r['metric']}: ours {r['ours']:.4g} {r['unit']}, {r['baseline_label']} {r['baseline']:.4g} {r['unit']}, "
              f"{r['speedup']:.2f}x{target}")
    print(f"wrote {path}")
    return path


def smoke_cache() -> Path:
    """A cache holding the smoke world's pretrained model and probe, what a cell of experiment=smoke reads before its
    own work: built the first time (about 2 minutes on 2 cores), then found done in a few seconds."""
    out = WORK / "smoke"
    run([sys.executable, "-m", "sft_knowledge.run", *SMOKE, "restore.ratios=[0]", f"paths.output_dir={out}"])
    return out / "cache"


def smoke_model() -> Path:
    """The smoke world's pretrained base model: the newest entry (an older one is an earlier version of the world)."""
    entries = (smoke_cache() / "base_model").glob("*/DONE.json")
    return max(entries, key=lambda p: p.stat().st_mtime).parent
