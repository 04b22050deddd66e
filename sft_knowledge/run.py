"""Entry point: `python -m sft_knowledge.run [overrides]`, or `-m` for a sweep.

Hydra lives here and nowhere else: compose, validate, turn the config into dataclasses, and hand it
to the pipeline. A run is named by the hash of its semantic config; if that run already has a
`results.json`, nothing is recomputed. A failed run writes no `results.json`: it prints one line
(`error: ...`), records the error in its job directory, and the process exits non-zero.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .cache import Cache, CacheError
from .cache import write_atomic as _write_atomic  # the one atomic writer: no temporary file left, ENOSPC in one line
from .config import NON_SEMANTIC, Config, ConfigError, register, run_key, validate
from .data.sampling import DataError
from .provenance import provenance
from .summary import run_summary, sweep_rows, sweep_summary

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
EXPECTED_ERRORS = (ConfigError, DataError, CacheError)
_failures: list[str] = []

register()


def execute(cfg: Config, job_dir: Path | None = None, hydra_overrides: list[str] | None = None) -> dict:
    """Run one configuration (or return its finished results); the programmatic twin of the CLI."""
    from .pipeline import run_experiment  # imported late: keeps `--help` and config errors fast
    from .tracking import Tracker

    validate(cfg)
    key = run_key(cfg)
    run_dir = Path(cfg.paths.runs_dir) / key
    results_path = run_dir / "results.json"

    def mark(status: str) -> None:  # the job directory points at the run, so sweeps can be summarised
        if job_dir is not None:
            slurm = {"slurm_job_id": os.environ["SLURM_JOB_ID"]} if "SLURM_JOB_ID" in os.environ else {}
            _write_atomic(job_dir / "run.json", json.dumps({"run_key": key, "run_dir": str(run_dir.resolve()), "status": status, **slurm}))

    if results_path.exists():
        print(f"run {key} is already done: {results_path}")
        mark("done")
        return json.loads(results_path.read_text())
    mark("running")
    semantic = {k: v for k, v in asdict(cfg).items() if k not in NON_SEMANTIC}
    tracker = Tracker(cfg.logger.mode, run_dir, key, cfg.logger.project, asdict(cfg), group=cfg.logger.group,
                      tags=list(cfg.logger.tags) + [cfg.model.name, cfg.mastery.bucket, f"size={cfg.data.size}", cfg.restore.strategy],
                      entity=cfg.logger.entity)
    with tracker:
        results = run_experiment(cfg, Cache(cfg.paths.cache_dir), tracker)
        record = {"run_key": key, "config": semantic, "overrides": hydra_overrides or [], "provenance": provenance(run_dir), **results}
        tracker.summary({k: record[k] for k in ("acc_test", "acc_testood", "acc_train", "kl_test4")})
        _write_atomic(results_path, json.dumps(record, indent=1))
        tracker.artifact(results_path, f"results-{key}", "results")
    mark("done")
    return record


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _main(dcfg: DictConfig) -> None:
    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    try:
        cfg: Config = OmegaConf.to_object(dcfg)
        if cfg.logger.group is None and hc.mode == RunMode.MULTIRUN:
            cfg.logger.group = Path(hc.sweep.dir).name  # one W&B group per sweep
        record = execute(cfg, job_dir, list(hc.overrides.task))
    except Exception as err:  # noqa: BLE001 - every failure becomes one line here and a record in the job dir
        expected = isinstance(err, EXPECTED_ERRORS)
        message = str(err).splitlines()[0] if expected and str(err) else f"{type(err).__name__}: {err}".splitlines()[0]
        if not expected:
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        info = json.loads((job_dir / "run.json").read_text()) if (job_dir / "run.json").exists() else {}
        _write_atomic(job_dir / "run.json", json.dumps({**info, "status": "failed", "error": message}))
        _failures.append(message)
        return
    print(run_summary(record))
    print(f"results: {Path(cfg.paths.runs_dir).resolve() / record['run_key'] / 'results.json'}")


class SweepSummary(Callback):
    """Prints one table over every cell when a multirun ends, and writes it into the sweep directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            table = sweep_summary(sweep_dir)
            (sweep_dir / "summary.txt").write_text(table + "\n")
            print(table)
            # The exit code says whether every cell finished, wherever the cells ran (here, or as SLURM jobs).
            failed = [row for row in sweep_rows(sweep_dir) if row["status"] != "done"]
            if failed:
                sys.exit(f"error: {len(failed)} cell(s) failed; see python -m sft_knowledge.status {sweep_dir}")


def _check_group_options(argv: list[str]) -> None:
    """Hydra's own message for an unknown group option spans a dozen lines; say it in one."""
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        key, value = arg.split("=", 1)
        group = key.removeprefix("override ").lstrip("+~")
        if not (CONF_DIR / group).is_dir() or any(ch in value for ch in "()[]{}$"):
            continue
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        for option in value.split(","):
            if option not in options and option != "null":
                sys.exit(f"error: {group}={option} is not an option of '{group}': choose one of {', '.join(options)}")


def main() -> None:
    _check_group_options(sys.argv[1:])
    _main()
    if _failures:
        sys.exit(f"error: {len(_failures)} run(s) failed" if len(_failures) > 1 else 1)


if __name__ == "__main__":
    main()
