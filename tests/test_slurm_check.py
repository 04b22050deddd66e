"""A sweep on hydra/launcher=slurm where SLURM is not there (no commands, a controller that does not answer, an
unknown partition) stops in one `error:` line before any cell is submitted. SLURM is faked by scripts on the PATH
that record every call, so no test needs a cluster (tests/test_slurm.py runs a real one)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # the project: subprocesses run from it

pytestmark = pytest.mark.slow  # the fake SLURM commands are processes

# What each fake does, in bash alone (the PATH may hold nothing else). sbatch and srun record their call in `calls`
# beside them and fail as real ones do when the controller is down.
UNREACHABLE = 'echo "slurm_load_partitions: Unable to contact slurm controller (connect failure)" >&2; exit 1'
SUBMIT = 'echo "${0##*/} $*" >> "${0%/*}/calls"; echo "sbatch: error: Batch job submission failed: ' \
         'Unable to contact slurm controller (connect failure)" >&2; exit 1'
PARTITIONS = 'printf "debug*\\ncpu\\n"'  # sinfo -o %P: the default partition ends in *
NO_DEFAULT = 'printf "cpu\\ngpu\\n"'
HANGS = "exec /bin/sleep 60"
SUBMITTERS = {"sbatch": SUBMIT, "srun": SUBMIT}


def fake_slurm(bin_dir: Path, **scripts: str) -> Path:
    """A directory holding fake SLURM commands (name=bash body); the PATH of a machine with only these."""
    bin_dir.mkdir()
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


CASES = [  # (fake commands, SBATCH_PARTITION, extra overrides, the error line)
    ({}, None, [], "error: hydra/launcher=slurm: `sbatch` is not on the PATH (not a SLURM login node?): run the sweep "
                   "where SLURM is installed, or use hydra/launcher=local_parallel"),
    ({"sbatch": SUBMIT}, None, [], "error: hydra/launcher=slurm: `srun` is not on the PATH (not a SLURM login node?): "
                                   "run the sweep where SLURM is installed, or use hydra/launcher=local_parallel"),
    ({**SUBMITTERS, "sinfo": UNREACHABLE}, None, [], "error: hydra/launcher=slurm: the SLURM controller does not answer: `sinfo` says: "
                                       "slurm_load_partitions: Unable to contact slurm controller (connect failure)"),
    ({**SUBMITTERS, "sinfo": HANGS}, None, [], "error: hydra/launcher=slurm: the SLURM controller did not answer `sinfo --all --noheader "
                                 "--format=%P` within 1 s: is it down or unreachable from here (`scontrol ping`)?"),
    ({**SUBMITTERS, "sinfo": PARTITIONS}, "gpu", [], "error: hydra.launcher.partition=gpu (from SBATCH_PARTITION): SLURM has no "
                                       "partition 'gpu': choose one of cpu, debug"),
    ({**SUBMITTERS, "sinfo": PARTITIONS}, None, ["hydra.launcher.partition='cpu,gpu'"],
     "error: hydra.launcher.partition=cpu,gpu: SLURM has no partition 'gpu': choose one of cpu, debug"),
    ({**SUBMITTERS, "sinfo": NO_DEFAULT}, None, [], "error: hydra/launcher=slurm: no partition is set and SLURM has no default one: "
                                      "set SBATCH_PARTITION or hydra.launcher.partition to one of cpu, gpu"),
]


@pytest.mark.parametrize("fakes, partition, extra, message", CASES, ids=["no sbatch", "no srun", "controller down",
                                                                         "controller silent", "unknown SBATCH_PARTITION",
                                                                         "unknown partition in a list", "no default"])
def test_slurm_that_is_not_there_is_one_line_before_any_cell_is_submitted(fakes, partition, extra, message, tmp_path,
                                                                          monkeypatch, own_signal_handlers):
    from sft_knowledge import run, slurm_check

    bin_dir = fake_slurm(tmp_path / "bin", **fakes)
    monkeypatch.setenv("PATH", str(bin_dir))  # no real SLURM this machine may have
    monkeypatch.delenv("SBATCH_PARTITION", raising=False)
    if partition:
        monkeypatch.setenv("SBATCH_PARTITION", partition)
    monkeypatch.setattr(slurm_check, "TIMEOUT_S", 1)
    monkeypatch.setattr(sys, "argv", ["run", "-m", "hydra/launcher=slurm", "experiment=smoke", "data.size=60,240",
                                      f"paths.output_dir={tmp_path / 'out'}", *extra])
    with pytest.raises(SystemExit) as stop:
        run.main()
    assert stop.value.code == message  # SystemExit(str): Python prints the one line and exits 1, no traceback
    assert not (bin_dir / "calls").exists()  # nothing submitted
    assert not (tmp_path / "out").exists()  # no sweep directory


def test_the_issues_case_sbatch_there_controller_down_in_a_fresh_process(tmp_path):
    bin_dir = fake_slurm(tmp_path / "bin", **SUBMITTERS, sinfo=UNREACHABLE)
    proc = subprocess.run([sys.executable, "-m", "sft_knowledge.run", "-m", "hydra/launcher=slurm", "experiment=smoke",
                           "data.size=60,240", f"paths.output_dir={tmp_path / 'out'}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PATH": str(bin_dir)})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["error: hydra/launcher=slurm: the SLURM controller does not answer: `sinfo` "
                                                "says: slurm_load_partitions: Unable to contact slurm controller (connect failure)"]
    assert not (bin_dir / "calls").exists() and not (tmp_path / "out").exists()


def test_sweep_sh_checks_the_sweep_before_it_submits_its_driver(tmp_path):
    bin_dir = fake_slurm(tmp_path / "bin", **SUBMITTERS, sinfo=UNREACHABLE)
    proc = subprocess.run([str(ROOT / "launchers" / "sweep.sh"), "experiment=smoke", "data.size=60,240",
                           f"paths.output_dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHON": sys.executable,
                               "SWEEP_LOG_DIR": str(tmp_path / "logs")})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["error: hydra/launcher=slurm: the SLURM controller does not answer: `sinfo` "
                                                "says: slurm_load_partitions: Unable to contact slurm controller (connect failure)"]
    assert not (bin_dir / "calls").exists()  # the driver was not submitted


def test_status_says_when_squeue_fails(tmp_path, monkeypatch, capsys):
    from sft_knowledge.status import report

    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / ".submitit" / "5_0").mkdir(parents=True)  # a sweep that submitted a SLURM job: its queue is read
    (sweep / "multirun.yaml").write_text(json.dumps({"hydra": {"sweeper": {"params": None}, "overrides": {"task": ["seed=0"]}}}))
    monkeypatch.setenv("PATH", str(fake_slurm(tmp_path / "bin", squeue=UNREACHABLE.replace("slurm_load_partitions", "squeue"))))
    assert "1 cells: 0 done, 0 running, 0 failed, 1 missing" in report(sweep)
    assert capsys.readouterr().err.splitlines() == [
        "note: squeue failed (squeue: Unable to contact slurm controller (connect failure)): states come from the cells' "
        "run.json only (a SLURM cell that was killed reads as running, one still queued as missing)"]
