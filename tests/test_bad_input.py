"""Every bad input ends in one `error:` line naming the key, value or path, a non-zero exit, no traceback and no
result; a config error stops before any stage (in about a second). Interruptions, concurrent runs and killed
cells neither lose nor overwrite a result."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # the project: subprocesses run from it

# (command-line overrides, what the error line must say). Each is the whole command after `experiment=smoke`, but for
# another model than tiny_world (smoke's pretraining settings are tiny_world's, which another model refuses).
CONFIG_ERRORS = [
    ("+data.szie=240", "error: data.szie is not a config key: did you mean data.size?"),
    ("data.szie=240", "error: data.szie is not a config key: did you mean data.size?"),
    ("+trian.lr=0.5", "error: trian is not a config key: did you mean train.lr?"),
    ("+foo=bar", "error: foo is not a config key"),
    ("restore.ratios=['x']", "error: restore.ratios[0]: Value 'x' of type 'str' could not be converted to Float"),
    ("seed=abc", "error: seed=abc: Value 'abc' of type 'str' could not be converted to Integer"),
    ("foo", "error: 'foo' is not an override: write key=value"),
    ("data.size=240,1920", "error: data.size=240,1920 gives several values: add -m to sweep them"),
    ("-m data.size=60,abc", "error: data.size='abc' is not allowed"),  # a bad value in the second cell of a sweep
    ("mastery=d9", "error: mastery=d9 is not an option of 'mastery'"),
    ("eval.max_new_tokens=0", "error: eval.max_new_tokens=0 is not allowed"),
    ("eval.max_per_level=0", "error: eval.max_per_level=0 is not allowed"),
    ("kl.top_k=0", "error: kl.top_k=0 is not allowed"),
    ("kl.max_facts=0", "error: kl.max_facts=0 is not allowed"),
    ("train.lr=-1", "error: train.lr=-1 is not allowed"),
    ("train.warmup_ratio=1.5", "error: train.warmup_ratio=1.5 is not allowed"),
    ("probe.n_map=22", "error: probe.n_map=22 is not allowed: expected 1..21"),
    ("probe.templates=paper_only", "error: probe.templates=paper_only selects the paper's EntityQuestions templates; "
     "data=synthetic has its own: use probe.templates=all"),
    ("probe.top_p=1.5", "error: probe.top_p=1.5 is not allowed: expected a fraction in (0, 1] (1: plain sampling)"),
    ("restore.ratios=[0,150]", "error: restore.ratios=150 is not allowed: expected percentages in [0, 100]"),
    ("model=llama3_8b model.path={empty}", "error: model.path={empty} holds no config.json"),
    ("model=llama3_8b model.path={broken}", "error: model.path={broken}: config.json cannot be read"),
    ("model=llama3_8b model.path={nowhere}", "error: model.path={nowhere} is not a directory"),
    ("model=hf model.path={broken}", "error: model.path={broken}: config.json cannot be read"),
    ("model.path={empty}", "error: model.path={empty} is not read by model=tiny_world (tiny_world): it is read by model=hf"),
    ("model=llama3_8b experiment=smoke", "error: model.pretrain.* is not read by model=llama3_8b (hub): it is read by model=tiny_world"),
]


@pytest.fixture
def model_dirs(tmp_path) -> dict[str, Path]:
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    return {"empty": tmp_path / "empty", "broken": tmp_path / "broken", "nowhere": tmp_path / "nowhere"}


@pytest.mark.parametrize("overrides, message", CONFIG_ERRORS, ids=[o for o, _ in CONFIG_ERRORS])
def test_a_config_error_is_one_line_before_any_stage(overrides, message, model_dirs, tmp_path, monkeypatch, own_signal_handlers):
    from sft_knowledge import run

    args = overrides.format(**model_dirs).split()
    flags = [a for a in args if a.startswith("-")]  # before the overrides, where Hydra's parser wants them
    preset = [] if any(a.startswith("model=") for a in args) else ["experiment=smoke"]
    monkeypatch.setattr(sys, "argv", ["run", *flags, *preset, f"paths.output_dir={tmp_path / 'out'}",
                                      *(a for a in args if a not in flags)])
    start = time.time()
    with pytest.raises(SystemExit) as stop:
        run.main()
    assert isinstance(stop.value.code, str), stop.value.code  # SystemExit(str): Python prints it and exits 1
    line = stop.value.code
    assert line.startswith(message.format(**model_dirs)) and "\n" not in line, line
    assert time.time() - start < 15  # composed and validated only: no stage ran (about a second on an idle machine)
    assert not (tmp_path / "out").exists()  # nothing written, so no results.json


@pytest.mark.slow
@pytest.mark.parametrize("overrides, message", [
    ("+data.szie=240", "error: data.szie is not a config key: did you mean data.size?"),
    ("paths.output_dir=/sys/sft_knowledge_test", "error: paths.output_dir=/sys/sft_knowledge_test is not writable"),
    ("data.size=100000", "error: data.size=100000 is larger than the bucket, which holds"),
])
def test_the_command_line_shows_one_error_line_and_exits_non_zero(cli, overrides, message, smoke_cache, tmp_path):
    proc = cli(*overrides.split(), output_dir=tmp_path, cache_dir=smoke_cache, check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("runs/*/results.json"))


# Hydra's flags (the command line as given, paths.output_dir appended): what Hydra answers with a traceback, a usage
# text or a config it never validated is one line here.
FLAG_ERRORS = [
    ("-m --cfg job data.size=60,240", "error: --cfg shows one config, not a sweep: drop -m and give each key one value"),
    ("-m --info config data.size=60,240", "error: --info shows one config, not a sweep: drop -m and give each key one value"),
    ("--cfg job data.size=60,240", "error: data.size=60,240 gives several values, and --cfg shows one config: give data.size one value"),
    ("--cfg job data.size=-5", "error: data.size=-5 is not allowed"),
    ("--cfg hydra data.size=-5", "error: data.size=-5 is not allowed"),
    ("--cfg all +data.szie=3", "error: data.szie is not a config key: did you mean data.size?"),
    ("--help mastery=d9", "error: mastery=d9 is not an option of 'mastery'"),
    ("--info defaults mastery=d9", "error: mastery=d9 is not an option of 'mastery'"),
    ("--resolve", "error: --resolve only changes what --cfg (or --help) shows"),
    ("--cfg foo", "error: argument --cfg/-c: invalid choice: 'foo'"),
    ("-m --run data.size=60", "error: --run and -m cannot be given together: choose one"),
    ("data.size=60 -m seed=1,2", "error: unrecognized arguments: seed=1,2 experiment=smoke paths.output_dir={out}: Hydra's flags (-m, --cfg, ...) go before the overrides"),
    ("--info", "error: argument --info/-i: invalid choice: 'experiment=smoke' (choose from 'all', 'config', 'defaults', 'defaults-tree', 'plugins', 'searchpath'): --info takes the next word as what to show: write --info all, or put --info last"),
    ("-m hydra/launcher=slurm hydra.launcher.partition=gpu,cpu",
     "error: hydra.launcher.partition=gpu,cpu: Hydra's own settings cannot be swept: give hydra.launcher.partition one value"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args, message", FLAG_ERRORS, ids=[a for a, _ in FLAG_ERRORS])
def test_hydras_flags_refused_in_one_line(args, message, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "sft_knowledge.run", *args.split(), "experiment=smoke", f"paths.output_dir={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    [line] = proc.stderr.strip().splitlines()  # one line, so no traceback or usage text
    assert line.startswith(message.format(out=out)), line
    assert proc.stdout == "" and not out.exists()  # no config shown, nothing written


@pytest.mark.slow
@pytest.mark.parametrize("args, shown", [("--cfg job", "name: smoke"), ("--cfg hydra", "hydra:"), ("--cfg all", "hydra:"),
                                         ("--info all", "Config search path"), ("--help", "Use --hydra-help")])
def test_hydras_show_flags_still_show(args, shown, tmp_path):
    """A guard for the check above, which now reads Hydra's flags: a valid command line still shows what it asks."""
    proc = subprocess.run([sys.executable, "-m", "sft_knowledge.run", *args.split(), "experiment=smoke"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert shown in proc.stdout


def _start(tmp_path: Path, cache: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sft_knowledge.run", "experiment=smoke", f"paths.output_dir={tmp_path}",
                             f"paths.cache_dir={cache}", *overrides], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _checkpoints(cache: Path) -> set[tuple[str, str]]:
    """The complete SFT checkpoints: what each `latest` pointer names (written once a checkpoint is whole)."""
    found = set()
    for pointer in cache.glob("sft/.work-*/latest"):
        try:
            found.add((str(pointer), pointer.read_text()))
        except FileNotFoundError:  # replaced or removed while we looked
            pass
    return found


@pytest.mark.slow
def test_ctrl_c_and_sigterm_say_what_stopped_and_the_rerun_finishes(cli, smoke_cache, tmp_path):
    # A new SFT (seed 7) that pauses after each periodic checkpoint: a window to interrupt it in.
    args = ("seed=7", "checkpoint.every=2", "checkpoint.debug_pause_s=30", "hydra.run.dir=" + str(tmp_path / "job"))
    for signum, code, name in ((signal.SIGINT, 130, "SIGINT (Ctrl-C)"), (signal.SIGTERM, 143, "SIGTERM")):
        saved = _checkpoints(smoke_cache)
        proc = _start(tmp_path, smoke_cache, *args)
        deadline = time.time() + 600
        while not _checkpoints(smoke_cache) - saved:  # SFT completed a checkpoint and pauses after it
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == code, err[-2000:]
        assert err.strip().splitlines()[-1].startswith(f"error: interrupted by {name} during sft; nothing finished is lost"), err[-2000:]
        assert "Traceback" not in err
        assert json.loads((tmp_path / "job" / "run.json").read_text())["status"] == "interrupted"
        assert not list(tmp_path.glob("runs/*/results.json"))
    done = cli(*args[:2], output_dir=tmp_path, cache_dir=smoke_cache)
    [r] = [json.loads(p.read_text()) for p in tmp_path.glob("runs/*/results.json")]
    assert r["sft_resumed_at"], "the rerun resumed SFT from the interrupted runs' checkpoint"
    assert "results:" in done.stdout


@pytest.mark.slow
def test_two_identical_runs_at_once_evaluate_once(smoke_cache, tmp_path):
    first, second = (_start(tmp_path, smoke_cache, "seed=3") for _ in range(2))
    outs = [p.communicate(timeout=900) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    stdout = [out for out, _ in outs]
    # The second waited for the first, then read its result instead of evaluating (it prints the same summary).
    assert sum("is already done" in s for s in stdout) == 1, stdout
    assert len(list(tmp_path.glob("runs/*/results.json"))) == 1


@pytest.mark.slow  # a subprocess or spawned processes
def test_status_shows_a_killed_local_cell_as_failed(tmp_path):
    import socket

    from sft_knowledge.status import cell_states

    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "1").mkdir()
    (sweep / "multirun.yaml").write_text(json.dumps({"hydra": {"sweeper": {"params": None}, "overrides": {"task": ["seed=0,1"]}}}))
    dead = subprocess.Popen(["true"])
    dead.wait()
    for job, pid in ((0, dead.pid), (1, os.getpid())):
        (sweep / str(job) / "run.json").write_text(json.dumps({"run_key": "k", "run_dir": str(tmp_path / "runs" / "k"), "status": "running",
                                                               "pid": pid, "host": socket.gethostname()}))
    states = cell_states(sweep)
    assert [(s["overrides"], s["state"]) for s in states] == [(["seed=0"], "failed"), (["seed=1"], "running")]
    assert states[0]["detail"].startswith(f"interrupted: its process {dead.pid} on {socket.gethostname()} ended without finishing")


@pytest.mark.slow
def test_an_empty_ratio_list_says_that_restoration_was_skipped(cli, smoke_cache, tmp_path):
    proc = cli("restore.ratios=[]", output_dir=tmp_path, cache_dir=smoke_cache)
    assert "restoration: skipped on request (restore.ratios=[])" in proc.stdout
    [r] = [json.loads(p.read_text()) for p in tmp_path.glob("runs/*/results.json")]
    assert r["restore"] == [] and r["update_share"]  # Table 3's shares are still measured
