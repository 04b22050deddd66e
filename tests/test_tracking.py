"""The tracking layer: W&B offline runs mirrored in metrics.jsonl; W&B that cannot start is one line, recorded in\nresults.json and the sweep summary, and stops the run before any stage only with logger.required=true."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sft_knowledge.config import run_key, validate
from sft_knowledge.errors import ConfigError, TrackingError
from sft_knowledge.summary import wandb_line
from sft_knowledge.tracking import Tracker

ROOT = Path(__file__).resolve().parent.parent  # the project: subprocesses run from it
NO_SERVER = "http://127.0.0.1:9"  # nothing listens there: a test that asks W&B online reaches no network


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


def test_wandb_failures_warn_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    import wandb

    def no_network(**kwargs):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(wandb, "init", no_network)
    with Tracker("offline", tmp_path / "a", "k", "p", {}) as t:
        t.log({"train/loss": 1.0}, step=1)
        t.table("restore/acc_vs_ratio", ["ratio"], [[0]])
    assert capsys.readouterr().err == "warning: W&B is off for run k: ConnectionError: api.wandb.ai unreachable\n"
    assert t.tracking == {"mode": "offline", "wandb": "off", "reason": "ConnectionError: api.wandb.ai unreachable"}
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


def test_a_wandb_network_error_is_one_line_that_names_the_timeout(tmp_path, monkeypatch, capsys):
    import wandb

    def no_answer(**kwargs):  # W&B's own words on a node without network (docs/wandb.md), after init_timeout
        raise wandb.errors.CommError("Failed to get resume status for run k: context deadline exceeded\nwhile retrying: "
                                     'Post "https://api.wandb.ai/graphql": dial tcp: lookup api.wandb.ai: no such host')

    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)  # credentials are there: only the server is missing
    monkeypatch.setattr(wandb, "init", no_answer)
    reason = ("CommError: Failed to get resume status for run k: context deadline exceeded (W&B server not reached "
              "within logger.init_timeout_s=7? without network, use logger.mode=offline)")
    with Tracker("online", tmp_path / "a", "k", "p", {}, init_timeout_s=7) as t:
        pass
    assert capsys.readouterr().err == f"warning: W&B is off for run k: {reason}\n"
    assert t.tracking == {"mode": "online", "wandb": "off", "reason": reason}
    with pytest.raises(TrackingError, match=r"^W&B could not start for run k and logger.required=true: CommError: "):
        Tracker("online", tmp_path / "b", "k", "p", {}, required=True).__enter__()


def test_the_sweep_line_counts_the_runs_that_asked_for_wandb():
    off = {"mode": "offline", "wandb": "off", "reason": "WANDB_MODE=''"}
    disabled = {"mode": "disabled", "wandb": "off", "reason": "logger.mode=disabled"}  # asked for none: not a failure
    on = {"mode": "online", "wandb": "on", "reason": None}
    assert wandb_line([on, off, disabled, {}]) == "W&B: off in 1 of 2 runs (first reason: WANDB_MODE='')"  # {}: older results
    assert wandb_line([on, disabled, {}]) is None


def test_logger_options_stay_out_of_the_run_key_and_required_needs_a_wandb_run(compose):
    assert run_key(compose("logger.required=true", "logger.init_timeout_s=5")) == run_key(compose())
    with pytest.raises(ConfigError, match=r"^logger.required=true asks for a W&B run that logger.mode=disabled never starts"):
        validate(compose("logger=disabled", "logger.required=true"))
    with pytest.raises(ConfigError, match=r"^logger.init_timeout_s=0 is not allowed"):
        validate(compose("logger.init_timeout_s=0"))


def _no_wandb_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment without W&B credentials or settings (no WANDB_*, no ~/.netrc), pointed at no server."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    return env | {"HOME": str(home), "WANDB_BASE_URL": NO_SERVER} | extra


@pytest.mark.slow  # a subprocess
@pytest.mark.parametrize("env, overrides, reason", [
    ({"WANDB_MODE": ""}, ["logger.mode=offline"], "WANDB_MODE='': Input should be "),  # W&B's settings refuse it
    ({"WANDB_API_KEY": "a" * 40}, ["logger.mode=online", "logger.init_timeout_s=3"], "CommError: "),  # no network
], ids=["empty WANDB_MODE", "online without network"])
def test_logger_required_stops_before_any_stage_when_wandb_cannot_start(tmp_path, env, overrides, reason):
    proc = subprocess.run([sys.executable, "-m", "sft_knowledge.run", "experiment=smoke", f"paths.output_dir={tmp_path}",
                           "logger.required=true", *overrides], cwd=ROOT, env=_no_wandb_env(tmp_path, **env),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    [line] = proc.stderr.splitlines()
    assert proc.returncode == 1 and line.startswith("error: W&B could not start for run tiny_world-all-60-"), proc.stderr
    assert line.split("and logger.required=true: ")[1].startswith(reason), line
    assert not list(tmp_path.glob("runs/*/results.json")) and not (tmp_path / "cache").exists()  # no stage ran


@pytest.mark.slow  # a sweep in subprocesses
def test_a_bad_wandb_setting_is_one_line_and_the_results_and_the_sweep_summary_say_so(cli, smoke_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "")  # W&B's settings refuse it, today in a multi-line pydantic warning
    sweep = tmp_path / "sweep"
    proc = cli("-m", "eval.seed=1,2", "eval.max_per_level=20", "restore.ratios=[0]", "logger.mode=offline",
               f"hydra.sweep.dir={sweep}", output_dir=tmp_path, cache_dir=smoke_cache)
    keys = [json.loads((sweep / job / "run.json").read_text())["run_key"] for job in ("0", "1")]
    reason = json.loads((tmp_path / "runs" / keys[0] / "results.json").read_text())["tracking"]["reason"]
    assert reason.startswith("WANDB_MODE='': Input should be 'online', 'offline'") and "\n" not in reason
    assert [json.loads((tmp_path / "runs" / key / "results.json").read_text())["tracking"] for key in keys] == [
        {"mode": "offline", "wandb": "off", "reason": reason}] * 2
    told = [line for line in proc.stderr.splitlines() if "W&B" in line or "WANDB" in line or "pydantic" in line]
    assert told == [f"warning: W&B is off for run {key}: {reason}" for key in keys], proc.stderr
    assert (sweep / "summary.txt").read_text().splitlines()[-1] == f"W&B: off in 2 of 2 runs (first reason: {reason})"


@pytest.mark.slow  # a run in a subprocess
def test_online_without_credentials_is_one_line_and_never_prompts_even_on_a_terminal(smoke_cache, tmp_path):
    # W&B prompts for an API key, and waits, when stdin and stderr are a terminal and WANDB_SILENT is off.
    terminal, child_end = os.openpty()
    output: list[bytes] = []

    def read_terminal() -> None:  # drained as it comes, so a full terminal buffer never blocks the run
        while True:
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # the run closed its end
                return
            if not chunk:
                return
            output.append(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    proc = subprocess.Popen([sys.executable, "-m", "sft_knowledge.run", "experiment=smoke", f"paths.output_dir={tmp_path}",
                             f"paths.cache_dir={smoke_cache}", "logger.mode=online", "eval.max_per_level=20", "restore.ratios=[0]"],
                            cwd=ROOT, env=_no_wandb_env(tmp_path, WANDB_SILENT="false", TERM="xterm"), stdin=child_end,
                            stderr=child_end, stdout=subprocess.PIPE, text=True)
    os.close(child_end)
    try:
        proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("the run waited at W&B's login prompt: " + b"".join(output).decode(errors="replace")[-300:])
    finally:
        reader.join(timeout=10)
        os.close(terminal)
    stderr = b"".join(output).decode().replace("\r\n", "\n")
    [results] = tmp_path.glob("runs/*/results.json")
    reason = (f"logger.mode=online has no W&B credentials for {NO_SERVER}: run `wandb login` or set WANDB_API_KEY, "
              "or use logger.mode=offline (then `make wandb-sync`)")
    assert proc.returncode == 0 and [line for line in stderr.splitlines() if "W&B" in line or "wandb" in line] == [
        f"warning: W&B is off for run {results.parent.name}: {reason}"], stderr
    assert json.loads(results.read_text())["tracking"] == {"mode": "online", "wandb": "off", "reason": reason}
