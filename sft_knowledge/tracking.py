"""The one place that knows Weights & Biases.

A `Tracker` is a context manager: it starts one W&B run (id = run key, resume allowed, so a re-run
or a requeue never makes a second one), logs namespaced metrics, and always finishes the run, with
a failing exit code on error. Every metric is also written to `<run_dir>/metrics.jsonl`, so what
was logged can be read back without W&B. A W&B failure only warns: tracking never kills a run.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any


class Tracker:
    def __init__(self, mode: str, run_dir: Path, run_id: str, project: str, config: dict, group: str | None = None,
                 tags: list[str] | None = None, entity: str | None = None, job_type: str = "experiment"):
        self.run_dir = Path(run_dir)
        self.mode, self.run = mode, None
        self._init_args = dict(project=project, entity=entity, id=run_id, name=run_id, group=group, tags=tags or None,
                               job_type=job_type, config=config, dir=str(self.run_dir), mode=mode, resume="allow")

    def __enter__(self) -> Tracker:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = open(self.run_dir / "metrics.jsonl", "w")  # the latest attempt of this run
        if self.mode != "disabled":
            try:
                import wandb

                os.environ.setdefault("WANDB_SILENT", "true")
                self.run = wandb.init(**self._init_args, reinit="finish_previous")
            except Exception as exc:  # noqa: BLE001 - W&B must never take the experiment down
                warnings.warn(f"W&B disabled for this run: {type(exc).__name__}: {exc}", stacklevel=2)
        return self

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self._metrics.write(json.dumps({"step": step, **metrics}) + "\n")
        self._metrics.flush()
        if self.run is not None:
            try:
                self.run.log(metrics, step=step)
            except Exception as exc:  # noqa: BLE001
                warnings.warn(f"W&B log failed: {exc}", stacklevel=2)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._metrics.close()
        if self.run is not None:
            try:
                self.run.finish(exit_code=1 if exc_type else 0)
            except Exception as exc_finish:  # noqa: BLE001
                warnings.warn(f"W&B finish failed: {exc_finish}", stacklevel=2)
