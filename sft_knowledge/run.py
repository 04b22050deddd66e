"""Entry point: `python -m sft_knowledge.run [overrides]`, or `-m` for a sweep.

Hydra lives here and nowhere else: compose, validate, turn the config into dataclasses, and hand it
to the recipe. A run is named by the hash of its semantic config; if that run already has a
`results.json`, nothing is recomputed. A failed run writes no `results.json`: it prints one line
(`error: ...`), records the error in its job directory, and the process exits non-zero.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import traceback
from dataclasses import asdict, replace
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .cache import Cache, CacheError, FileLock, check_locks, write_atomic
from .config import Config, register, run_key, semantic, validate
from .cost import cell_plan
from .errors import ConfigError, DataError, Interrupted
from .export import export_path
from .harness import check_data
from .overrides import check_command_line
from .provenance import provenance
from .results import RunResult, load
from .sources import check_source
from .summary import run_summary, sweep_summary
from .sweep import unfinished

EXPECTED_ERRORS = (ConfigError, DataError, CacheError)
_failures: list[str] = []

register()


def execute(cfg: Config, job_dir: Path | None = None, hydra_overrides: list[str] | None = None) -> RunResult:
    """Run one configuration (or return its finished results); the programmatic twin of the CLI."""
    from .recipe import run_experiment  # imported late: keeps `--help` and config errors fast
    from .tracking import Tracker

    validate(cfg)
    check_source(cfg)
    key = run_key(cfg)
    run_dir = Path(cfg.paths.runs_dir) / key
    results_path = run_dir / "results.json"
    job = JobRecord(job_dir, run_key=key, run_dir=str(run_dir.resolve()))

    # A finished result is immutable: reading it takes no lock, so a read-only output directory still answers.
    if results_path.exists():
        return _already_done(key, results_path, job, cfg.restore.export)
    check_locks({"paths.runs_dir": cfg.paths.runs_dir, "paths.cache_dir": cfg.paths.cache_dir})  # before any stage
    if cfg.eval.harness.tasks:  # lm-eval there, every task known, its data readable (seconds: per cell, not per sweep)
        check_data(cfg.eval.harness)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"paths.output_dir={cfg.paths.output_dir}: cannot create {run_dir} ({err.strerror})") from None
    # Two commands on one cell: the second waits, then finds the first's result.
    with FileLock(run_dir / ".lock", waiting=f"run {key} is running in another process; waiting for it to finish"):
        if results_path.exists():
            return _already_done(key, results_path, job, cfg.restore.export)
        job.mark("running")
        use_threads(cfg.resources.threads)  # before torch computes anything
        tracker = Tracker(cfg.logger.mode, run_dir, key, cfg.logger.project, asdict(cfg), group=cfg.logger.group,
                          tags=list(cfg.logger.tags) + [cfg.model.name, cfg.mastery.bucket, f"size={cfg.data.size}", cfg.restore.strategy],
                          entity=cfg.logger.entity, required=cfg.logger.required, init_timeout_s=cfg.logger.init_timeout_s,
                          plan=cell_plan(cfg))
        with tracker:  # W&B starts (or, with logger.required=true, stops the run) before any stage
            result = replace(run_experiment(cfg, Cache(cfg.paths.cache_dir), tracker, run_dir), run_key=key, config=semantic(cfg),
                             overrides=hydra_overrides or [], provenance=provenance(run_dir), tracking=tracker.tracking)
            tracker.summary({"acc_test": result.acc["test"].acc, "acc_testood": result.acc["testood"].acc,
                             "acc_train": result.acc_train, f"kl_test{result.kl_level}": result.kl_mean})  # the KL named by its level
            result.save(results_path)
            tracker.artifact(results_path, f"results-{key}", "results")
    job.mark("done")
    return load(results_path)  # what was written (accuracies rounded to 2 decimals), so a summary shows what is stored


def use_threads(threads: int | None) -> None:
    """Run torch and OpenMP on `threads` threads (resources.threads: this cell's share of the cores, which
    hydra/launcher=local_parallel sets); None leaves torch's default, every core, as the basic launcher's one cell wants.
    Called before torch computes anything: OpenMP reads its variable when its pool starts."""
    if threads is None:
        return
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch  # here, not at the top: `--help` and config errors stay fast

    torch.set_num_threads(threads)


def _already_done(key: str, results_path: Path, job: JobRecord, export: list[float]) -> RunResult:
    print(f"run {key} is already done: {results_path}")
    # restore.export is not in the run key, so a run finished without an export is found done; say so, not nothing.
    if missing := [r for r in export if not export_path(results_path.parent, r).is_dir()]:
        raise ConfigError(f"restore.export={missing[0]:g}: run {key} finished without saving that restored model; delete "
                          f"{results_path} and run again to save it (SFT and the probe come from the cache)")
    job.mark("done")
    return load(results_path)


class JobRecord:
    """A cell's `run.json` in its job directory: which run it is, its state, and who runs it (pid, host, SLURM job),
    so that `status` can tell a cell that is running from one whose process was killed."""

    def __init__(self, job_dir: Path | None, **fields):
        self.path = None if job_dir is None else job_dir / "run.json"
        self.fields = fields

    def mark(self, status: str, **extra) -> None:
        if self.path is None:
            return
        who = {"pid": os.getpid(), "host": socket.gethostname()}
        if "SLURM_JOB_ID" in os.environ:
            who["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
        previous = json.loads(self.path.read_text()) if self.path.exists() else {}
        previous.pop("error", None)  # an error belongs to the attempt that had it
        write_atomic(self.path, json.dumps({**previous, **self.fields, "status": status, **who, **extra}))

    def mark_ended(self, status: str, error: str) -> None:
        """Record a failure or an interruption; a disk too full for run.json must not hide the error line itself."""
        try:
            self.mark(status, error=error)
        except (OSError, CacheError):
            pass


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _main(dcfg: DictConfig) -> None:
    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    job = JobRecord(job_dir)
    try:
        cfg: Config = OmegaConf.to_object(dcfg)
        if cfg.logger.group is None and hc.mode == RunMode.MULTIRUN:
            cfg.logger.group = Path(hc.sweep.dir).name  # one W&B group per sweep
        record = execute(cfg, job_dir, list(hc.overrides.task))
    except Interrupted as stop:  # Ctrl-C or SIGTERM: say what stopped, and stop the whole sweep, not only this cell
        job.mark_ended("interrupted", str(stop))
        print(f"error: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)
    except Exception as err:  # noqa: BLE001 - every failure becomes one line here and a record in the job dir
        expected = isinstance(err, EXPECTED_ERRORS)
        message = str(err).splitlines()[0] if expected and str(err) else f"{type(err).__name__}: {err}".splitlines()[0]
        if not expected:
            traceback.print_exc()
        job.mark_ended("failed", message)
        print(f"error: {message}", file=sys.stderr)
        _failures.append(message)
        return
    print(run_summary(record))
    print(f"results: {Path(cfg.paths.runs_dir).resolve() / record.run_key / 'results.json'}")


class SweepSummary(Callback):
    """Prints one table over every cell when a multirun ends, and writes it into the sweep directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            table = sweep_summary(sweep_dir)
            (sweep_dir / "summary.txt").write_text(table + "\n")
            print(table)
            # The exit code says whether every cell finished, wherever the cells ran (here, or as SLURM jobs).
            failed = unfinished(sweep_dir)
            if failed:
                sys.exit(f"error: {failed} cell(s) failed; see python -m sft_knowledge.status {sweep_dir}")


def _interrupt(signum: int, frame) -> None:
    raise Interrupted(signum)


def main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    try:
        check_command_line(sys.argv[1:])  # every cell, before anything runs
    except ConfigError as err:
        sys.exit(f"error: {err}")
    _main()
    if _failures:
        sys.exit(f"error: {len(_failures)} run(s) failed" if len(_failures) > 1 else 1)


if __name__ == "__main__":
    main()
