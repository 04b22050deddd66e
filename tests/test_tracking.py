"""The tracking layer: W&B offline runs mirrored in metrics.jsonl, and W&B failures that never stop a run."""
from __future__ import annotations

import json

import pytest

from sft_knowledge.tracking import Tracker


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_offline_run_holds_metrics_tables_line_plot_and_artifact(tmp_path):
    results = tmp_path / "results.json"
    results.write_text('{"acc_test": 12.5}')
    line = {"x": "ratio", "y": "accuracy", "stroke": "split", "title": "accuracy against restoration"}
    with Tracker("offline", tmp_path, "tiny-d4-60-abc", "sft_knowledge", {"seed": 0}, group="sweep", tags=["d4"]) as t:
        t.log({"train/loss": 2.5, "train/lr": 1e-3}, step=1)
        t.log({"eval/acc_test": 12.5}, step=1)
        t.define_axis("restore/*", "restore/ratio")
        t.table("restore/acc_vs_ratio", ["ratio", "split", "accuracy"], [[0, "test", 12.5], [10, "test", 14.0]], line=line)
        t.table("eval/predictions", ["question", "prediction"], [["Where?", "Paris"]])
        t.artifact(results, "results-tiny-d4-60-abc", "results")
    [offline] = list((tmp_path / "wandb").glob("offline-run-*-tiny-d4-60-abc"))
    tables = [p.relative_to(offline / "files" / "media" / "table").as_posix() for p in offline.glob("files/media/table/**/*.table.json")]
    assert any(t.startswith("restore/acc_vs_ratio_table_") for t in tables)  # the line plot's table, stored by W&B
    assert any(t.startswith("eval/predictions_") for t in tables), tables
    assert _records(tmp_path) == [
        {"step": 1, "train/loss": 2.5, "train/lr": 1e-3},
        {"step": 1, "eval/acc_test": 12.5},
        {"table": "restore/acc_vs_ratio", "columns": ["ratio", "split", "accuracy"], "data": [[0, "test", 12.5], [10, "test", 14.0]], "line": line},
        {"table": "eval/predictions", "columns": ["question", "prediction"], "data": [["Where?", "Paris"]]},
        {"artifact": "results-tiny-d4-60-abc", "type": "results", "path": str(results)},
    ]


def test_wandb_failures_warn_and_the_run_goes_on(tmp_path, monkeypatch):
    import wandb

    def no_network(**kwargs):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(wandb, "init", no_network)
    with pytest.warns(UserWarning, match="W&B disabled for this run: ConnectionError: api.wandb.ai unreachable"):
        with Tracker("online", tmp_path / "a", "k", "p", {}) as t:
            t.log({"train/loss": 1.0}, step=1)
            t.table("restore/acc_vs_ratio", ["ratio"], [[0]])
    assert _records(tmp_path / "a")[0] == {"step": 1, "train/loss": 1.0}

    class BrokenRun:  # W&B started, then its calls fail (disk full, service gone)
        def __getattr__(self, name):
            raise OSError(f"wandb service gone ({name})")

    tracker = Tracker("offline", tmp_path / "b", "k", "p", {})
    tracker.mode = "disabled"  # enter without starting W&B, then give it the broken run
    with pytest.warns(UserWarning) as caught:
        with tracker as t:
            t.run = BrokenRun()
            t.log({"train/loss": 1.0}, step=1)
            t.summary({"acc_test": 1.0})
    assert [str(w.message) for w in caught] == [f"W&B {call} failed: OSError: wandb service gone ({attr})" for call, attr in
                                                [("log", "log"), ("summary", "summary"), ("finish", "finish")]]
    assert _records(tmp_path / "b") == [{"step": 1, "train/loss": 1.0}]
