"""Time and peak memory of `make run` (experiment=toy_grid), cold then warm, against the issue's budget.

    python benchmarks/bench_make_run.py [--output-dir DIR]

Cold: an empty output directory, so the world, the shipped model's copy into the cache (or, for another world,
pretraining), the probe and all 15 cells are computed. Warm: the same command again, which must recompute nothing.
The baseline of the warm run is the cold run of the same invocation; both are compared with issue 29's budget
(360 s cold, 20 s warm, 4 GB peak RSS). The budget's cold time includes a fresh clone's `make install`, which this
script does not time (43 s on the project's machine with pip's download cache warm, 2026-12-06).
Writes benchmarks/results/make_run.json.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sft_knowledge.results import load  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUDGET = {"cold": 360, "warm": 20}
RSS_BUDGET_GB = 4.0


def measure(cmd: list[str]) -> dict:
    """Run cmd in a child that reports the peak RSS of its own children (the run itself)."""
    child = (
        "import json, resource, subprocess, sys, time\n"
        "t = time.time(); rc = subprocess.run(sys.argv[1:]).returncode\n"
        "print(json.dumps({'rc': rc, 'seconds': time.time() - t, 'peak_rss_gb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20}))\n"
    )
    out = subprocess.run([sys.executable, "-c", child, *cmd], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def world_checks(runs: list) -> dict:
    """What the embedded world must show (issue 16): level counts of every split, and the paper's effects that
    `make run` shows: D-0 training worst at every size, 240 D-4 facts answering at least 50% of D_test-4, and
    restoring 10-20% helping the 1,920-fact models."""
    by_cell = {(r.config["mastery"]["bucket"], r.config["data"]["size"]): r for r in runs}
    sizes = sorted({size for _, size in by_cell})
    acc = {f"{bucket}/{size}": r.acc["test"].acc for (bucket, size), r in sorted(by_cell.items())}
    best_restored = {f"{bucket}/1920": max((p.accuracy("test") or 0) for p in r.restore if p.ratio in (10, 20))
                     for (bucket, size), r in by_cell.items() if size == 1920}
    d4 = by_cell.get(("d4", 240))
    return {
        "level_counts": runs[0].level_counts,
        "acc_test": acc,
        "d0_worst_at_every_size": all(acc[f"d0/{size}"] == min(v for k, v in acc.items() if k.endswith(f"/{size}")) for size in sizes),
        "d4_240_acc_on_d_test_4": d4.acc["test"].acc_level[4] if d4 else None,
        "restoring_10_20_pct_at_1920": {cell: {"unrestored": acc[cell], "best_of_10_20": best_restored[cell]} for cell in best_restored},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir", type=Path, default=None, help="where the runs go (default: a fresh temp dir)")
    args = parser.parse_args()
    output_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="bench_make_run_"))
    cmd = [sys.executable, "-m", "sft_knowledge.run", "experiment=toy_grid", f"paths.output_dir={output_dir}"]
    phases = {}
    for phase in ("cold", "warm"):
        print(f"== {phase}: {' '.join(cmd)}", flush=True)
        phases[phase] = measure(cmd)
        if phases[phase]["rc"] != 0:
            sys.exit(f"{phase} run failed with exit code {phases[phase]['rc']}")
    print(f"\n{'phase':<6}{'seconds':>10}{'budget':>9}{'of budget':>11}{'peak RSS GB':>13}")
    for phase, m in phases.items():
        print(f"{phase:<6}{m['seconds']:>10.1f}{BUDGET[phase]:>9}{m['seconds'] / BUDGET[phase]:>10.0%}{m['peak_rss_gb']:>13.2f}")
    print(f"warm / cold time: {phases['warm']['seconds'] / phases['cold']['seconds']:.3f}; RSS budget {RSS_BUDGET_GB} GB")
    cells = list((output_dir / "runs").glob("*/results.json"))
    timings: dict[str, float] = {}
    for path in cells:
        for stage, s in json.loads(path.read_text())["timings"].items():
            timings[stage] = timings.get(stage, 0.0) + s
    print(f"{len(cells)} cells; stage seconds summed over cells (cold run, cached stages count once): "
          + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    result = {"phases": phases, "budget_s": BUDGET, "rss_budget_gb": RSS_BUDGET_GB, "cells": len(cells),
              "stage_seconds": timings, "world": world_checks([load(p) for p in cells]),
              "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "output_dir": str(output_dir)}
    print(json.dumps(result["world"], indent=1))
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "make_run.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
