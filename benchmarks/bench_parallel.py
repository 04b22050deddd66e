"""Cells in parallel on one machine: a 4-cell sweep with the basic launcher against hydra/launcher=local_parallel.

    python benchmarks/bench_parallel.py [--quick] [--repeats 2] [--uncapped]

Workload: experiment=smoke, `-m data.size=100,200 seed=0,1` (4 cells; --quick: data.size=20 seed=0,1, 2 cells), each
cell's SFT, evaluation, KL and restoration; the smoke world's pretrained model and probe come from a warm cache
(common.smoke_cache; each sweep gets a fresh cache holding only those, so every cell fine-tunes).
Launchers, each timed as the whole command (driver, cells, summary):
- sequential: Hydra's basic launcher, the cells one after another in one process on every core (the baseline);
- local_parallel with max_parallel 1, 2 and 4: one process per cell (forked from the driver), at most that many at
  once, each on its share of the cores (resources.threads = cores // max_parallel); target: never slower than sequential;
- with --uncapped, submitit_local: hydra-submitit-launcher's own local launcher, as local_parallel was before the
  cap: every cell at once, each on every core. It thrashes (4 cells on 2 shared cores: 303 s against 25 s), so the
  suite leaves it out. --quick times only sequential and 2 at once.
Run it with no OMP_NUM_THREADS (as `make bench` does), so that each launcher decides the threads. Medians of
--repeats, launchers in alternating order. Writes benchmarks/results/parallel.json (--quick: results/quick/parallel.json).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from common import SMOKE, WORK, alternating, median, row, run, save, smoke_cache

LOCAL_PARALLEL = "hydra/launcher=local_parallel"


def launchers(quick: bool, uncapped: bool) -> dict[str, list[str]]:
    caps = (2,) if quick else (1, 2, 4)
    out = {"sequential": []} | {f"local_parallel, {k} at once": [LOCAL_PARALLEL, f"hydra.launcher.max_parallel={k}"] for k in caps}
    return out | ({"submitit_local, all at once (before the cap)": ["hydra/launcher=submitit_local"]} if uncapped else {})


def sweep(grid: list[str], launcher: list[str], warm: Path) -> float:
    """Wall seconds of the sweep in a fresh output directory whose cache holds only the warm base model and probe."""
    out = Path(tempfile.mkdtemp(dir=WORK, prefix="parallel-"))
    try:
        cache = out / "cache"
        cache.mkdir()
        for kind in ("base_model", "probe"):
            (cache / kind).symlink_to(warm / kind)
        return run([sys.executable, "-m", "sft_knowledge.run", "-m", *SMOKE, *grid, *launcher,
                    f"paths.output_dir={out}", f"paths.cache_dir={cache}"])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 cells, sequential and 2 at once, 1 repeat (about a minute)")
    parser.add_argument("--repeats", type=int, default=None, help="default 2 (--quick 1)")
    parser.add_argument("--uncapped", action="store_true", help="also every cell at once on every core (minutes: it thrashes)")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 2)
    grid = ["data.size=20", "seed=0,1"] if args.quick else ["data.size=100,200", "seed=0,1"]
    warm = smoke_cache()
    modes = launchers(args.quick, args.uncapped)
    seconds = alternating(repeats, {name: lambda launcher=launcher: sweep(grid, launcher, warm) for name, launcher in modes.items()})
    med = {name: median(s) for name, s in seconds.items()}
    rows = [row(f"sweep of {2 if args.quick else 4} cells, {name}", s, med["sequential"], "s", False, "sequential", min_speedup=1.0)
            for name, s in med.items() if name != "sequential"]
    uncapped = next((name for name in med if name.startswith("submitit_local")), None)
    cores = len(os.sched_getaffinity(0))
    default = f"local_parallel, {max(1, cores)} at once"  # the default cap at resources.cpus=1: one cell per core
    if uncapped and default in med:
        rows.append(row("local_parallel at its default cap against all at once", med[default], med[uncapped], "s", False,
                        "submitit_local", min_speedup=1.0))
    save("parallel", {"rows": rows, "grid": grid, "launchers": modes, "repeats": repeats, "seconds": seconds,
                      "default_max_parallel": max(1, cores)}, args.quick)


if __name__ == "__main__":
    main()
