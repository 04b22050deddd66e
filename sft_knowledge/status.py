"""`python -m sft_knowledge.status <sweep dir>`: which cells of a sweep are done, running, failed or missing.

It works while the sweep runs and after its driver has gone: the planned cells come from the sweep's
`multirun.yaml` (expanded as Hydra's basic sweeper expands it), each cell's state from the `run.json` it
writes, and, where SLURM is on the PATH, from the queue: a cell whose job left the queue while its
`run.json` still says running was killed (time, memory, node) and is reported as failed.
Re-running the sweep's command computes only the cells that are not done.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from .overrides import expand

STATES = ("done", "running", "failed", "missing")


def planned_cells(sweep_dir: Path) -> list[list[str]]:
    """The overrides of every cell, in job-number order (the sweeper's params, then the command line's)."""
    cfg = OmegaConf.load(sweep_dir / "multirun.yaml")
    params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.get("params") or {}).items()]
    return expand(params + list(cfg.hydra.overrides.task))


def slurm_queue() -> dict[str, str] | None:
    """State of every queued SLURM job by id (`<array id>_<index>` and the raw id); None without SLURM."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %A %T"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    queue = {}
    for line in out.splitlines():
        array_id, raw_id, state = line.split()
        queue[array_id] = queue[raw_id] = state.lower()
    return queue


def _gone(info: dict) -> bool:
    """A local cell's process (no SLURM job) that no longer exists on this host: it was killed."""
    if info.get("host") != socket.gethostname() or "pid" not in info:
        return False  # another machine's process: cannot tell from here
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def cell_states(sweep_dir: Path) -> list[dict]:
    """One record per planned cell: job number, overrides, state and a detail line."""
    sweep_dir = Path(sweep_dir)
    queue = slurm_queue()
    rows, cells = [], planned_cells(sweep_dir)
    folders = [p.name for p in (sweep_dir / ".submitit").glob("*") if p.is_dir()]
    for job, overrides in enumerate(cells):
        run_json = sweep_dir / str(job) / "run.json"
        info = json.loads(run_json.read_text()) if run_json.exists() else {}
        results = Path(info["run_dir"]) / "results.json" if "run_dir" in info else None
        # submitit's folder of the cell: `<array id>_<job>`, or the plain job id when the sweep has one cell
        submitted = sorted(f for f in folders if f.endswith(f"_{job}") or (f.isdigit() and len(cells) == 1))
        # submitit's log of the job holds its stderr (errors, tracebacks); Hydra's job log otherwise
        log = sweep_dir / ".submitit" / submitted[-1] / f"{submitted[-1]}_0_log.err" if submitted else sweep_dir / str(job) / "run.log"
        if results is not None and results.exists():
            r = json.loads(results.read_text())
            kl = "-" if r["kl_test4"] is None else f"{r['kl_test4']:.4f}"
            state, detail = "done", f"acc_test {r['acc_test']}, kl_test4 {kl}: {results}"
        elif info.get("status") in ("failed", "interrupted"):
            state, detail = "failed", f"error: {info.get('error', '?')} (log: {log})"  # an interruption's says so
        elif info.get("status") == "running":
            job_id = info.get("slurm_job_id")
            if queue is not None and job_id is not None and job_id not in queue:
                state, detail = "failed", f"error: SLURM job {job_id} ended without finishing (killed: time, memory or node?) (log: {log})"
            elif job_id is None and _gone(info):
                state, detail = "failed", (f"interrupted: its process {info['pid']} on {info['host']} ended without finishing "
                                           f"(killed?); re-run the sweep's command to resume")
            else:
                state, detail = "running", f"run {info['run_key']}" + (f", SLURM job {job_id}" if job_id else "")
        elif queue is not None and submitted and submitted[-1] in queue:
            state, detail = "running", f"SLURM job {submitted[-1]} {queue[submitted[-1]]}"
        else:
            state, detail = "missing", "never started, or its job died before starting; re-run the sweep's command"
        rows.append({"job": job, "overrides": overrides, "state": state, "detail": detail})
    return rows


def report(sweep_dir: Path) -> str:
    rows = cell_states(sweep_dir)
    # Show only what differs between cells: the swept keys.
    swept = {o.split("=", 1)[0] for o in rows[0]["overrides"]} if rows else set()
    swept = {k for k in swept if len({next(o for o in r["overrides"] if o.startswith(k + "=")) for r in rows}) > 1}
    counts = ", ".join(f"{sum(r['state'] == s for r in rows)} {s}" for s in STATES)
    lines = [f"sweep {sweep_dir}: {len(rows)} cells: {counts}"]
    for state in STATES:
        for r in (r for r in rows if r["state"] == state):
            cell = " ".join(o for o in r["overrides"] if o.split("=", 1)[0] in swept)
            lines.append(f"  {state:<8}{r['job']:>4}  {cell:<40} {r['detail']}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python -m sft_knowledge.status <sweep dir>")
    sweep_dir = Path(argv[0])
    if not (sweep_dir / "multirun.yaml").exists():
        sys.exit(f"error: {sweep_dir} is not a sweep directory (no multirun.yaml)")
    print(report(sweep_dir))


if __name__ == "__main__":
    main(sys.argv[1:])
