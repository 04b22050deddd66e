"""`hydra/launcher=local_parallel` (launchers/hydra/launcher/local_parallel.yaml): a sweep's cells in their own
processes on this machine, at most `max_parallel` at once, each with its share of the cores.

hydra-submitit-launcher 1.2.0's `submitit_local` starts every cell at once: `array_parallelism` is a field of its SLURM
config only, and submitit 1.5.4's LocalExecutor starts one process per job as the jobs are submitted (`map_array`
submits them all). Torch processes that together run more threads than there are cores slow each other down many
times over (3 cells on 2 cores: a 2-minute cell took 45 minutes). This launcher is `submitit_local` with a cap: each
cell is a one-job launch of it, made from one of `max_parallel` threads, so a cell starts when another ends. Every
cell also gets `resources.threads=<cores // max_parallel>` (unless the config or command line sets it), which the
cell gives torch and OpenMP before it computes anything (sft_knowledge.run.use_threads).

Hydra instantiates launchers only from the `hydra_plugins` namespace package; this one needs nothing of sft_knowledge.
No `from __future__ import annotations`: Hydra's plugin scan runs the module before it is in sys.modules, where
dataclasses would look up string annotations.
"""
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)
THREADS_KEY = "resources.threads"


@dataclass
class LocalParallelConf(LocalQueueConf):
    _target_: str = "hydra_plugins.sft_knowledge_local_parallel.LocalParallelLauncher"
    max_parallel: Optional[int] = None  # cells running at once; None: the cores / cpus_per_task, at least 1


ConfigStore.instance().store(group="hydra/launcher", name="submitit_local_parallel", node=LocalParallelConf(),
                             provider="sft_knowledge")


def available_cores() -> int:
    """The cores this process may run on (a SLURM allocation or taskset may hold fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cells_at_once(cores: int, cpus_per_task: Optional[int], max_parallel: Optional[int]) -> int:
    """`max_parallel` if given, else as many cells as the cores hold at `cpus_per_task` each, at least 1."""
    if max_parallel is not None:
        if max_parallel < 1:
            raise ValueError(f"hydra.launcher.max_parallel={max_parallel} is not allowed: expected a positive integer or null")
        return max_parallel
    return max(1, cores // max(1, cpus_per_task or 1))


def thread_share(cores: int, cells: int) -> int:
    """Threads for each of `cells` cells running at once: the cores split evenly, at least 1."""
    return max(1, cores // cells)


def with_threads(overrides: list[str], threads: int) -> list[str]:
    """The cell's overrides with its thread share, unless they set resources.threads themselves."""
    if any(o.lstrip("+~").split("=", 1)[0] == THREADS_KEY for o in overrides):
        return overrides
    return [*overrides, f"{THREADS_KEY}={threads}"]


def plan(job_overrides: Sequence[Sequence[str]], cores: int, max_parallel: int, configured: bool) -> tuple[list[list[str]], int]:
    """Each cell's overrides with its share of the cores, and the share: the cores split among the cells that run at
    once, which are no more than the cells there are. `configured`: the config sets resources.threads; it stands."""
    threads = thread_share(cores, min(max_parallel, len(job_overrides)))
    return [list(o) if configured else with_threads(list(o), threads) for o in job_overrides], threads


class LocalParallelLauncher(LocalLauncher):
    def __init__(self, max_parallel: Optional[int] = None, **params: Any) -> None:
        super().__init__(**params)
        self.max_parallel = cells_at_once(available_cores(), params.get("cpus_per_task"), max_parallel)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        cores = available_cores()
        configured = OmegaConf.select(self.config, THREADS_KEY) is not None  # a preset or the command line set it
        cells, threads = plan(job_overrides, cores, self.max_parallel, configured)
        log.info(f"local_parallel: {len(cells)} cells on {cores} cores, at most {self.max_parallel} at once"
                 + ("" if configured else f", {threads} thread(s) each"))
        pool = ThreadPoolExecutor(self.max_parallel, thread_name_prefix="cell")
        try:
            return list(pool.map(self._launch_one, cells, range(initial_job_idx, initial_job_idx + len(cells))))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # stopped (Ctrl-C, a failed job): start no further cell

    def _launch_one(self, overrides: list[str], job_idx: int) -> JobReturn:
        return super().launch([overrides], job_idx)[0]
