"""`hydra/launcher=local_parallel` (launchers/hydra/launcher/local_parallel.yaml): a sweep's cells in their own
processes on this machine, at most `max_parallel` at once, each with its share of the cores.

Torch processes that together run more threads than there are cores slow each other down many times over (3 cells
on 2 cores: a 2-minute cell took 45 minutes), and hydra-submitit-launcher 1.2.0's `submitit_local` starts every cell
at once, each on every core. This launcher starts a cell when another ends, and gives every cell
`resources.threads=<cores // max_parallel>` (unless the config or command line sets it), which the cell gives torch
and OpenMP before it computes anything (sft_knowledge.run.use_threads).

Each cell is a process forked from the launcher's main thread, after it has imported the `preload` modules (torch,
transformers, the pipeline) but run nothing on them, so no thread pool or lock is copied mid-use: a cell starts in
milliseconds with its imports done, where a fresh interpreter (submitit's `python -m submitit...`) spends about 3 s
importing torch, transformers and the pipeline for every cell, about as much as a smoke cell computes. A cell is still
its own process: its memory goes back when it ends, and a cell that dies (killed, out of memory) fails alone, as a
failed cell of the sweep. The cell's result (Hydra's JobReturn) comes back through a pipe.

Hydra instantiates launchers only from the `hydra_plugins` namespace package; this one needs nothing of sft_knowledge.
No `from __future__ import annotations`: Hydra's plugin scan runs the module before it is in sys.modules, where
dataclasses would look up string annotations.
"""
import importlib
import logging
import multiprocessing
import os
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)
THREADS_KEY = "resources.threads"


@dataclass
class LocalParallelConf:
    _target_: str = "hydra_plugins.sft_knowledge_local_parallel.LocalParallelLauncher"
    max_parallel: Optional[int] = None  # cells running at once; None: the cores / cpus_per_task, at least 1
    cpus_per_task: Optional[int] = None  # cores a cell uses well (resources.cpus)
    preload: List[str] = field(default_factory=list)  # modules imported once here, before the cells are forked


ConfigStore.instance().store(group="hydra/launcher", name="sft_knowledge_local_parallel", node=LocalParallelConf(),
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


class LocalParallelLauncher(Launcher):
    def __init__(self, max_parallel: Optional[int] = None, cpus_per_task: Optional[int] = None, preload: Sequence[str] = ()) -> None:
        self.max_parallel = cells_at_once(available_cores(), cpus_per_task, max_parallel)
        self.preload = list(preload)
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        cores = available_cores()
        configured = OmegaConf.select(self.config, THREADS_KEY) is not None  # a preset or the command line set it
        cells, threads = plan(job_overrides, cores, self.max_parallel, configured)
        log.info(f"local_parallel: {len(cells)} cells on {cores} cores, at most {self.max_parallel} at once"
                 + ("" if configured else f", {threads} thread(s) each"))
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        for module in self.preload:  # imported once, inherited by every cell (importing runs no torch kernel)
            importlib.import_module(module)
        todo = deque(enumerate(cells, start=initial_job_idx))
        running: dict[Any, tuple[int, list[str], Any]] = {}  # the pipe a cell's result comes through -> (job, overrides, process)
        results: dict[int, JobReturn] = {}
        fork = multiprocessing.get_context("fork")
        try:
            while todo or running:
                while todo and len(running) < self.max_parallel:
                    idx, overrides = todo.popleft()
                    log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                    reader, writer = fork.Pipe(duplex=False)
                    process = fork.Process(target=self._cell, args=(overrides, idx, Singleton.get_state(), writer))
                    process.start()
                    writer.close()  # the cell holds the only write end: its death reads as end-of-file here
                    running[reader] = (idx, overrides, process)
                for reader in wait(list(running)):  # a result, or the end of a cell that died without one
                    idx, overrides, process = running.pop(reader)
                    results[idx] = _receive(reader, process, overrides)
        finally:  # stopped (Ctrl-C, an error here): end the cells still running, start no further one
            for _, _, process in running.values():
                process.terminate()
                process.join()
        return [results[idx] for idx in sorted(results)]

    def _cell(self, overrides: list[str], idx: int, singleton_state: dict, conn) -> None:
        """Runs in the forked process: the cell as Hydra's basic launcher runs it, its JobReturn sent back."""
        try:
            Singleton.set_state(singleton_state)
            setup_globals()
            config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            with open_dict(config.hydra.job) as job:
                job.id, job.num = f"{os.getpid()}", idx
            ret = run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=config,
                          job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        except BaseException as err:  # noqa: BLE001 - Hydra's own failure (a bad sweep config), or the cell's exit
            ret = JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=RuntimeError(f"{type(err).__name__}: {err}"))
        try:
            conn.send(ret)
        except Exception:  # noqa: BLE001 - a return value that does not pickle: its status and its text
            failed = ret.status == JobStatus.FAILED
            conn.send(JobReturn(overrides=overrides, status=ret.status,
                                _return_value=RuntimeError(str(ret._return_value)) if failed else None))
        conn.close()


def _receive(reader, process, overrides: list[str]) -> JobReturn:
    """The cell's JobReturn, or a failed one when its process ended without sending it (killed, out of memory)."""
    try:
        ret = reader.recv()
    except EOFError:
        ret = None
    process.join()
    if ret is None:
        ret = JobReturn(overrides=overrides, status=JobStatus.FAILED,
                        _return_value=RuntimeError(f"the cell's process ended with exit code {process.exitcode} before it finished"))
    return ret
