"""The one place that knows Weights & Biases.

A `Tracker` is a context manager: it starts one W&B run (id = run key, resume allowed, so a re-run
or a requeue never makes a second one), logs namespaced metrics, tables, line plots and artifacts,
and always finishes the run, with a failing exit code on error. Everything logged is also written
to `<run_dir>/metrics.jsonl` (one JSON line per call), so what was logged can be read back without
W&B. A W&B failure only warns: tracking never kills a run, unless `required` asks it to when W&B cannot start.
A run that should reach W&B and does not says so in one line, and `tracking` records it for results.json.
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import TrackingError


class NoCredentials(Exception):
    """logger.mode=online without an API key: W&B would prompt for one (and wait) or fail later."""


class Tracker:
    def __init__(self, mode: str, run_dir: Path, run_id: str, project: str, config: dict, group: str | None = None,
                 tags: list[str] | None = None, entity: str | None = None, job_type: str = "experiment",
                 required: bool = False, init_timeout_s: float = 30.0, plan: dict | None = None):
        self.run_dir = Path(run_dir)
        if plan is not None:  # what sft_knowledge.plan estimated for this cell: parameters, memory, GPU-hours (cost.cell_plan)
            config = {**config, "plan": plan}
        self.mode, self.run, self.required, self.init_timeout_s = mode, None, required, init_timeout_s
        self._init_args = dict(project=project, entity=entity, id=run_id, name=run_id, group=group, tags=tags or None,
                               job_type=job_type, config=config, dir=str(self.run_dir), mode=mode, resume="allow")

    def __enter__(self) -> Tracker:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = open(self.run_dir / "metrics.jsonl", "w")  # the latest attempt of this run
        # What results.json records (`tracking`): whether this run reached W&B, and why not.
        if self.mode == "disabled":
            self.tracking = {"mode": self.mode, "wandb": "off", "reason": "logger.mode=disabled"}
            return self
        try:
            self.run = self._start()
            self.tracking = {"mode": self.mode, "wandb": "on", "reason": None}
        except Exception as exc:  # noqa: BLE001 - W&B takes the experiment down only when logger.required says so
            reason = self._why(exc)
            # W&B keeps what it half-loaded: the next run in this process (a sweep's next cell) would start without
            # reading the environment again. Dropped, that run meets the same cause and says so.
            import wandb

            wandb.teardown()
            self.tracking = {"mode": self.mode, "wandb": "off", "reason": reason}
            run_id = self._init_args["id"]
            if self.required:
                self._metrics.close()
                raise TrackingError(f"W&B could not start for run {run_id} and logger.required=true: {reason}") from None
            print(f"warning: W&B is off for run {run_id}: {reason}", file=sys.stderr)
        return self

    def _start(self):
        import wandb
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth  # wandb==0.31.0 (pinned): how wandb.init itself finds credentials

        os.environ.setdefault("WANDB_SILENT", "true")
        # Look for credentials as wandb.init does, but never prompt: a prompt waits forever on a terminal (with
        # WANDB_SILENT=false), and a job has no one to answer it.
        host = wandb_setup.singleton().settings.base_url  # reads the WANDB_* variables: a bad one fails here
        if self.mode == "online" and not wbauth.authenticate_session(host=host, source="sft_knowledge", prompt=False,
                                                                     update_session=False):
            raise NoCredentials(f"logger.mode=online has no W&B credentials for {host}: run `wandb login` or set "
                                "WANDB_API_KEY, or use logger.mode=offline (then `make wandb-sync`)")
        return wandb.init(**self._init_args, reinit="finish_previous",
                          settings=wandb.Settings(init_timeout=self.init_timeout_s))

    def _why(self, exc: Exception) -> str:
        """Why W&B did not start, in one line (a pydantic error alone takes four, and W&B's network errors two)."""
        from pydantic import ValidationError
        from wandb.errors import CommError

        if isinstance(exc, NoCredentials):
            return str(exc)
        if isinstance(exc, ValidationError):  # a W&B setting, almost always from a WANDB_* variable
            first = exc.errors()[0]
            name = ".".join(map(str, first["loc"]))
            variable = f"WANDB_{name.upper()}"
            where = variable if variable in os.environ else f"W&B setting {name}"
            return f"{where}={first['input']!r}: {first['msg']}"
        lines = [line for line in str(exc).splitlines() if line.strip()]
        reason = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        if isinstance(exc, CommError) and self.mode == "online":
            reason += (f" (W&B server not reached within logger.init_timeout_s={self.init_timeout_s:g}? "
                       f"without network, use logger.mode=offline)")
        return reason

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
