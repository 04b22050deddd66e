"""What produced a result: code version, packages, machine and scheduler (written into every results.json)."""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("torch", "transformers", "tokenizers", "peft", "accelerate", "hydra-core", "omegaconf", "submitit", "wandb")
SLURM_VARS = ("SLURM_CLUSTER_NAME", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_PARTITION",
              "SLURM_JOB_ACCOUNT", "SLURM_JOB_NODELIST", "SLURMD_NODENAME", "SLURM_RESTART_COUNT", "SLURM_JOB_GPUS")


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def provenance(run_dir: Path) -> dict:
    """The record for results.json; uncommitted changes go to `<run_dir>/git_diff.patch` (its hash in the record)."""
    sha = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    diff = _git("diff", "HEAD") if status else None
    if diff:
        (run_dir / "git_diff.patch").write_text(diff)
    untracked = _git("ls-files", "--others", "--exclude-standard")
    return {
        "git_sha": sha.strip() if sha else None,
        "git_dirty": bool(status.strip()) if status is not None else None,
        "git_diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
        "git_diff_file": "git_diff.patch" if diff else None,
        "git_untracked": untracked.split() if untracked else [],  # not in the diff: new files not yet added
        "packages": {name: _version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "host": platform.node(),
        "slurm": {k: os.environ[k] for k in SLURM_VARS if k in os.environ},
    }
