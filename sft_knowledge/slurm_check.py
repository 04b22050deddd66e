"""Is SLURM there? A sweep on `hydra/launcher=slurm` asks before any cell is submitted.

Without this, submitit finds out while it submits: with no `srun` on the PATH it stops in a 25-line traceback, and an
`sbatch` whose controller is down retries for about 10 s and then ends in a 36-line one. Here each case is one line
naming what is missing: a command, the controller, or the partition. One `sinfo` call answers the last two.
"""
from __future__ import annotations

import os
import shutil
import subprocess

from .errors import ConfigError

# submitit submits with sbatch, will not start without srun on the PATH (it runs each cell through srun), and sinfo
# is the question asked here.
COMMANDS = ("sbatch", "srun", "sinfo")
TIMEOUT_S = 10  # a controller answers sinfo in well under a second; one that is down makes the client retry for longer


def check_slurm(partition: str | None) -> None:
    """Raise ConfigError (one line) unless SLURM's commands are on the PATH, its controller answers, and `partition`
    (hydra.launcher.partition: names separated by commas, or None for the cluster's default) exists."""
    for command in COMMANDS:
        if shutil.which(command) is None:
            raise ConfigError(f"hydra/launcher=slurm: `{command}` is not on the PATH (not a SLURM login node?): "
                              f"run the sweep where SLURM is installed, or use hydra/launcher=local_parallel")
    listed = partitions()
    names = sorted(p.rstrip("*") for p in listed)
    if partition is None:
        if not any(p.endswith("*") for p in listed):  # sinfo marks the default partition with a star
            raise ConfigError(f"hydra/launcher=slurm: no partition is set and SLURM has no default one: set "
                              f"SBATCH_PARTITION or hydra.launcher.partition to one of {', '.join(names)}")
        return
    for name in partition.split(","):
        if name not in names:
            source = " (from SBATCH_PARTITION)" if os.environ.get("SBATCH_PARTITION") == partition else ""
            raise ConfigError(f"hydra.launcher.partition={partition}{source}: SLURM has no partition {name!r}: "
                              f"choose one of {', '.join(names)}")


def partitions() -> set[str]:
    """The cluster's partitions as `sinfo` lists them (hidden ones too), the default one ending in `*`."""
    command = ["sinfo", "--all", "--noheader", "--format=%P"]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"hydra/launcher=slurm: the SLURM controller did not answer `{' '.join(command)}` within "
                          f"{TIMEOUT_S} s: is it down or unreachable from here (`scontrol ping`)?") from None
    if proc.returncode != 0:
        said = next((line.strip() for line in proc.stderr.splitlines() if line.strip()), f"exit {proc.returncode}")
        raise ConfigError(f"hydra/launcher=slurm: the SLURM controller does not answer: `sinfo` says: {said}")
    return {line.strip() for line in proc.stdout.splitlines() if line.strip()}
