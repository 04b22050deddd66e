"""The one place that knows Weights & Biases.

A `Tracker` is a context manager: it starts one W&B run (id = run key, resume allowed, so a re-run
or a requeue never makes a second one), logs namespaced metrics, tables, line plots and artifacts,
and always finishes the run, with a failing exit code on error. Everything logged is also written
to `<run_dir>/metrics.jsonl` (one JSON line per call), so what was logged can be read back without
W&B. A W&B failure only warns: tracking never kills a run.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
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

    def _wandb(self, what: str, call: Callable[[], Any]) -> None:
        """Run one W&B call, if W&B is on; a failure warns and the run goes on."""
        if self.run is None:
            return
        try:
            call()
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"W&B {what} failed: {type(exc).__name__}: {exc}", stacklevel=3)

    def _record(self, entry: dict[str, Any]) -> None:
        self._metrics.write(json.dumps(entry) + "\n")
        self._metrics.flush()

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self._record({"step": step, **metrics})
        self._wandb("log", lambda: self.run.log(metrics, step=step))

    def define_axis(self, metrics: str, step_metric: str) -> None:
        """Chart `metrics` (a glob such as "restore/*") against `step_metric` instead of the step."""
        self._wandb("define_metric", lambda: self.run.define_metric(metrics, step_metric=step_metric))

    def table(self, key: str, columns: list[str], rows: list[list[Any]], line: dict[str, str] | None = None) -> None:
        """Log a table; with `line` (x, y, stroke, title) as a W&B line plot drawn from it."""
        self._record({"table": key, "columns": columns, "data": rows, **({"line": line} if line else {})})

        def call() -> None:
            import wandb

            data = wandb.Table(columns=columns, data=rows)
            self.run.log({key: wandb.plot.line(data, **line) if line else data})

        self._wandb("table", call)

    def artifact(self, path: Path, name: str, kind: str) -> None:
        """Log one file as a versioned W&B artifact (`results.json` as `results-<run key>`)."""
        self._record({"artifact": name, "type": kind, "path": str(path)})

        def call() -> None:
            import wandb

            art = wandb.Artifact(name, type=kind)
            art.add_file(str(path))
            self.run.log_artifact(art)

        self._wandb("artifact", call)

    def summary(self, values: dict[str, Any]) -> None:
        self._wandb("summary", lambda: self.run.summary.update(values))

    def __exit__(self, exc_type, exc, tb) -> None:
        self._metrics.close()
        self._wandb("finish", lambda: self.run.finish(exit_code=1 if exc_type else 0))
