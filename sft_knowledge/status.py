"""`python -m sft_knowledge.status <sweep dir>`: which cells of a sweep are done, running, failed or missing.

It works while the sweep runs and after its driver has gone: the planned cells come from the sweep's
`multirun.yaml` (expanded as Hydra's basic sweeper expands it), each cell's state from the `run.json` it
writes, and, where SLURM is on the PATH, from the queue: a cell whose job left the queue while its
`run.json` still says running was killed (time, memory, node) and is reported as failed.
Re-running the sweep's command computes only the cells that are not done.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from .sweep import Job, SweepError, read_jobs

STATES = ("done", "running", "failed", "missing")


def slurm_queue() -> dict[str, str] | None:
    """State of every queued SLURM job by id (`<array id>_<index>` and the raw id); None without SLURM."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %A %T"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as err:
        said = (f"no answer within {err.timeout:g} s" if isinstance(err, subprocess.TimeoutExpired)
                else (getattr(err, "stderr", None) or str(err)).strip().splitlines()[0])
        print(f"note: squeue failed ({said}): states come from the cells' run.json only (a SLURM cell that was killed "
              f"reads as running, one still queued as missing)", file=sys.stderr)
        return None
    queue = {}
    for line in out.splitlines():
        array_id, raw_id, state = line.split()
        queue[array_id] = queue[raw_id] = state.lower()
    return queue


def _gone(job: Job) -> bool:
    """A local cell's process (no SLURM job) that no longer exists on this host: it was killed."""
    if job.info.host != socket.gethostname() or job.info.pid is None:
        return False  # another machine's process: cannot tell from here
    try:
        os.kill(job.info.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _state(job: Job, queue: dict[str, str] | None, submitted: list[str], log: Path) -> tuple[str, str]:
    """A cell's state and its detail line."""
    info = job.info
    if job.result is not None:
        r = job.result
        kl = "-" if r.kl_mean is None else f"{r.kl_mean:.4f}"
        return "done", f"acc_test {r.accuracy('test')}, KL D_test-{r.kl_level} {kl}: {job.results_path}"
    if info is not None and info.status in ("failed", "interrupted"):
        return "failed", f"error: {info.error or '?'} (log: {log})"  # an interruption's says so
    if info is not None and info.status == "running":
        job_id = info.slurm_job_id
        if queue is not None and job_id is not None and job_id not in queue:
            return "failed", f"error: SLURM job {job_id} ended without finishing (killed: time, memory or node?) (log: {log})"
        if job_id is None and _gone(job):
            return "failed", (f"interrupted: its process {info.pid} on {info.host} ended without finishing "
                              f"(killed?); re-run the sweep's command to resume")
        return "running", f"run {info.run_key}" + (f", SLURM job {job_id}" if job_id else "")
    if queue is not None and submitted and submitted[-1] in queue:
        return "running", f"SLURM job {submitted[-1]} {queue[submitted[-1]]}"
    return "missing", "never started, or its job died before starting; re-run the sweep's command"


def cell_states(sweep_dir: Path) -> list[dict]:
    """One record per planned cell: job number, overrides, state and a detail line."""
    sweep_dir = Path(sweep_dir)
    jobs = read_jobs(sweep_dir, planned=True)
    folders = [p.name for p in (sweep_dir / ".submitit").glob("*") if p.is_dir()]
    # SLURM's queue only for a sweep that submitted jobs: a local sweep on a machine with a stopped SLURM says nothing
    submitted_any = folders or any(j.info is not None and j.info.slurm_job_id for j in jobs)
    queue = slurm_queue() if submitted_any else None
    rows = []
    for job in jobs:
        # submitit's folder of the cell: `<array id>_<job>`, or the plain job id when the sweep has one cell
        submitted = sorted(f for f in folders if f.endswith(f"_{job.number}") or (f.isdigit() and len(jobs) == 1))
        # submitit's log of the job holds its stderr (errors, tracebacks); Hydra's job log otherwise
        log = sweep_dir / ".submitit" / submitted[-1] / f"{submitted[-1]}_0_log.err" if submitted else job.dir / "run.log"
        state, detail = _state(job, queue, submitted, log)
        rows.append({"job": job.number, "overrides": job.overrides, "state": state, "detail": detail})
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
    try:
        print(report(sweep_dir))
    except SweepError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main(sys.argv[1:])
