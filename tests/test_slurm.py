"""Sweeps on a real single-node SLURM (launchers/local_slurm.sh), submitted as a user would, through
launchers/sweep.sh: one job array, shared stages computed once, requeue mid-SFT, a failing cell, status."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sft_knowledge.train import latest_checkpoint

ROOT = Path(__file__).resolve().parent.parent  # the project: subprocesses run from it

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# The smoke world with small evaluation sets: a cell takes seconds once the base model is cached.
COMMON = ("experiment=smoke", "eval.max_per_level=20", "kl.max_facts=20", "kl.curve_points=1")
TIMEOUT = 900
METRICS = ("acc_test", "acc_testood", "acc_test_level", "acc_testood_level", "acc_train", "kl", "kl_curve", "train_loss", "restore")


def _copy_stages(smoke_cache: Path, dest: Path) -> Path:
    """A cache holding the smoke world's base model and probe, but no fine-tuned weights."""
    for kind in ("base_model", "probe"):
        shutil.copytree(smoke_cache / kind, dest / kind)
    return dest


def _submit(root: Path, name: str, *overrides: str, cache: Path) -> tuple[str, Path]:
    """launchers/sweep.sh, as a user runs it; returns the driver's job id and the sweep directory."""
    sweep = root / name
    proc = subprocess.run([str(ROOT / "launchers" / "sweep.sh"), *COMMON, f"paths.output_dir={root / 'out'}",
                           f"paths.cache_dir={cache}", f"hydra.sweep.dir={sweep}", *overrides],
                          env={**os.environ, "PYTHON": sys.executable, "SWEEP_LOG_DIR": str(root / "logs")},
                          capture_output=True, text=True, timeout=60, check=True)
    return re.search(r"SLURM job (\d+)", proc.stdout).group(1), sweep


def _wait(what: str, condition, timeout: float = TIMEOUT):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _accounting(job: str) -> list[list[str]]:
    """Wait for a job (or every task of an array) to reach a final state in accounting; return its
    rows as [JobID, State, Start, End]. Accounting lags the queue: a task gone from squeue, or whose
    driver has already finished, can still read RUNNING in sacct for a while."""
    def rows() -> list[list[str]]:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State,Start,End"],
                             capture_output=True, text=True).stdout.splitlines()
        found = [line.split("|") for line in out]
        return found if found and not any(row[1] in ("RUNNING", "PENDING", "REQUEUED") for row in found) else []
    return _wait(f"accounting of job {job}", rows)


def _finished(job: str) -> str:
    """Wait for a job to leave the queue; return its final state from accounting."""
    _wait(f"job {job}", lambda: subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip() == "")
    return _accounting(job)[0][1]


def _status(sweep: Path) -> str:
    return subprocess.run([sys.executable, "-m", "sft_knowledge.status", str(sweep)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True).stdout


def _results(sweep: Path, job: int) -> dict:
    info = json.loads((sweep / str(job) / "run.json").read_text())
    return json.loads((Path(info["run_dir"]) / "results.json").read_text())


@pytest.fixture(scope="module")
def sweep_2x2(local_slurm, smoke_cache, tmp_path_factory):
    """SFT sizes 24, 32 x restoration ratios [0], [0,10]: two cells share each fine-tuned model, and the
    array runs two cells at a time, so the two that need the same weights run together."""
    root = tmp_path_factory.mktemp("slurm")
    cache = _copy_stages(smoke_cache, root / "cache")
    driver, sweep = _submit(root, "sweep_2x2", "data.size=24,32", "restore.ratios=[0],[0,10]",
                            "hydra.launcher.array_parallelism=2", cache=cache)
    return {"root": root, "cache": cache, "sweep": sweep, "driver_state": _finished(driver)}


def test_sweep_runs_as_one_job_array_and_computes_shared_stages_once(sweep_2x2):
    sweep, cache = sweep_2x2["sweep"], sweep_2x2["cache"]
    assert sweep_2x2["driver_state"] == "COMPLETED"
    runs = [_results(sweep, job) for job in range(4)]
    assert sorted((r["config"]["data"]["size"], len(r["restore"])) for r in runs) == [(24, 1), (24, 2), (32, 1), (32, 2)]
    slurm = [r["provenance"]["slurm"] for r in runs]
    assert len({s["SLURM_ARRAY_JOB_ID"] for s in slurm}) == 1 and [s["SLURM_ARRAY_TASK_ID"] for s in slurm] == ["0", "1", "2", "3"]
    array = slurm[0]["SLURM_ARRAY_JOB_ID"]
    times = {}
    for job_id, state, start, end in _accounting(array):
        times[job_id] = (start, end)
        assert state == "COMPLETED", (job_id, state)
    assert sorted(times) == [f"{array}_{i}" for i in range(4)]
    (start0, end0), (start1, end1) = times[f"{array}_0"], times[f"{array}_1"]
    assert start0 < end1 and start1 < end0  # the two cells of size 24 ran at the same time

    # Shared stages: base model and probe came from the cache; each fine-tuned model was built by one cell.
    assert all(r["cache_hits"]["base_model"] and r["cache_hits"]["probe"] for r in runs)
    for size in (24, 32):
        assert sorted(r["cache_hits"]["sft"] for r in runs if r["config"]["data"]["size"] == size) == [False, True]
    assert len([p for p in (cache / "sft").iterdir() if not p.name.startswith(".")]) == 2
    assert not [p for p in (cache / "sft").iterdir() if p.name.startswith((".tmp", ".work"))]
    same = [r for r in runs if r["config"]["data"]["size"] == 24]
    assert same[0]["train_loss"] == same[1]["train_loss"] and same[0]["acc_test"] == same[1]["acc_test"]

    assert "4 cells: 4 done, 0 running, 0 failed, 0 missing" in _status(sweep)
    # A cell whose record is gone (never started, or its job died first) is reported missing.
    damaged = sweep_2x2["root"] / "damaged"
    shutil.copytree(sweep, damaged)
    (damaged / "3" / "run.json").unlink()
    assert re.search(r"missing\s+3\s+data.size=32 restore.ratios=\[0,10\]", _status(damaged))


def test_failing_cell_is_reported_and_a_rerun_computes_only_missing_cells(sweep_2x2):
    root, cache = sweep_2x2["root"], sweep_2x2["cache"]
    done = Path(json.loads((sweep_2x2["sweep"] / "0" / "run.json").read_text())["run_dir"]) / "results.json"
    stamp = done.stat().st_mtime_ns
    # Cell 0 is a cell of the 2x2 sweep (already done); cell 1 asks for more facts than the bucket holds.
    driver, sweep = _submit(root, "sweep_failing", "data.size=24,100000", "restore.ratios=[0]", cache=cache)
    assert _finished(driver) == "FAILED"  # the driver's exit code says a cell failed
    assert done.stat().st_mtime_ns == stamp  # not recomputed, not overwritten
    status = _status(sweep)
    assert "2 cells: 1 done, 0 running, 1 failed, 0 missing" in status
    assert re.search(r"failed\s+1\s+data.size=100000\s+error: data.size=100000 is larger than the bucket", status), status
    assert re.search(r"done\s+0\s+data.size=24\s+acc_test", status), status


def _checkpoint(cache: Path) -> dict | None:
    """The cell's SFT checkpoint, if there is one now (it goes once the fine-tuned weights are published)."""
    for work in (cache / "sft").glob(".work-*"):
        try:
            path = latest_checkpoint(work)
            return torch.load(path / "state.pt") if path is not None else None
        except FileNotFoundError:  # replaced by the next one while read
            return None
    return None


def test_requeue_in_the_middle_of_sft_finishes_with_the_same_metrics(sweep_2x2, smoke_cache, tmp_path):
    """The cell (4 SFT steps) checkpoints after every step and then pauses (checkpoint.debug_pause_s) until
    signalled: first `scontrol requeue` (SIGTERM, then SIGKILL), then submitit's preemption/time-out signal
    (SIGUSR2: checkpoint, requeue)."""
    cache = _copy_stages(smoke_cache, tmp_path / "cache")
    driver, sweep = _submit(tmp_path, "sweep", "data.size=32", "restore.ratios=[0]", "checkpoint.every=1",
                            "checkpoint.debug_pause_s=600", cache=cache)
    _wait("the first checkpoint", lambda: (c := _checkpoint(cache)) and c["step"] == 1 and c["log"]["resumed_at"] == [])
    job = json.loads((sweep / "0" / "run.json").read_text())["slurm_job_id"]
    subprocess.run(["scontrol", "requeue", job], check=True)
    _wait("SFT resumed and at its next checkpoint", lambda: (c := _checkpoint(cache)) and len(c["log"]["resumed_at"]) == 1)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    assert _finished(driver) == "COMPLETED"

    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_0_log.*"))
    assert len(re.findall(r"submitit INFO .* - Starting with", logs)) == 3  # the first start and two requeues
    r = _results(sweep, 0)
    assert len(r["sft_resumed_at"]) == 2 and r["sft_resumed_at"][0] < r["sft_resumed_at"][1] < 4
    reference = _results(sweep_2x2["sweep"], 2)  # the same cell (data.size=32, restore.ratios=[0]), never interrupted
    assert r["run_key"] == reference["run_key"]
    for key in METRICS:
        assert r[key] == reference[key], key
