"""hydra/launcher=local_parallel: a cap on the cells running at once, and each cell's share of the cores for torch."""
import json
import multiprocessing
import os
from pathlib import Path

import pytest
import torch

from hydra.core.utils import JobStatus

from hydra_plugins.sft_knowledge_local_parallel import LocalParallelLauncher, _receive, cells_at_once, plan, thread_share, with_threads
from sft_knowledge.run import use_threads

CONF = Path(__file__).resolve().parent.parent / "conf"


def launcher_config(*overrides: str) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=local_parallel", *overrides], return_hydra_config=True)
        return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


@pytest.mark.parametrize("cores, cpus, asked, cells", [
    (2, 1, None, 2),  # the project's laptop: two one-core cells
    (2, 4, None, 1),  # a cell wanting more cores than there are still runs, alone
    (64, 8, None, 8),
    (64, 8, 3, 3),  # max_parallel wins over what the cores allow
    (16, None, None, 16),  # cpus_per_task unset: one core per cell
])
def test_cells_at_once_is_what_the_cores_allow_unless_asked(cores, cpus, asked, cells):
    assert cells_at_once(cores, cpus, asked) == cells


def test_max_parallel_must_be_positive():
    with pytest.raises(ValueError, match="hydra.launcher.max_parallel=0 is not allowed"):
        cells_at_once(2, 1, 0)


@pytest.mark.parametrize("cores, cells, threads", [(2, 2, 1), (2, 1, 2), (2, 4, 1), (64, 8, 8), (16, 3, 5)])
def test_each_cell_gets_its_share_of_the_cores(cores, cells, threads):
    assert thread_share(cores, cells) == threads


def test_the_cells_share_the_cores_that_run_at_once():
    four = [[f"seed={i}"] for i in range(4)]
    assert plan(four, cores=2, max_parallel=2, configured=False) == ([[f"seed={i}", "resources.threads=1"] for i in range(4)], 1)
    assert plan(four[:1], cores=2, max_parallel=2, configured=False)[1] == 2  # one cell alone: every core
    assert plan(four, cores=16, max_parallel=3, configured=False)[1] == 5
    assert plan(four, cores=2, max_parallel=2, configured=True) == (four, 1)  # the config's resources.threads stands


def test_a_cell_keeps_the_threads_its_overrides_set():
    assert with_threads(["data.size=20"], 2) == ["data.size=20", "resources.threads=2"]
    assert with_threads(["resources.threads=4", "seed=1"], 2) == ["resources.threads=4", "seed=1"]
    assert with_threads(["+resources.threads=4"], 2) == ["+resources.threads=4"]


def test_composing_local_parallel_gives_the_cap_and_the_cell_resources():
    launcher = launcher_config("resources=gpu1")
    assert launcher["_target_"] == "hydra_plugins.sft_knowledge_local_parallel.LocalParallelLauncher"
    assert launcher["max_parallel"] is None and launcher["cpus_per_task"] == 8  # resources.cpus of the gpu1 preset
    assert launcher_config("hydra.launcher.max_parallel=3")["max_parallel"] == 3
    cores = len(os.sched_getaffinity(0))
    params = {k: v for k, v in launcher_config().items() if k != "_target_"}
    assert LocalParallelLauncher(**params).max_parallel == max(1, cores)  # resources.cpus=1 (the cpu preset)
    assert LocalParallelLauncher(**(params | {"max_parallel": 1})).max_parallel == 1
    assert LocalParallelLauncher(**(params | {"cpus_per_task": 4 * cores})).max_parallel == 1


def test_a_cell_runs_torch_on_its_share():
    before = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    try:
        use_threads(None)  # the basic launcher's one cell: every core, as torch chose
        assert torch.get_num_threads() == before[0]
        use_threads(1)
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before[0])
        if before[1] is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before[1]


def test_a_cell_that_dies_without_its_result_is_a_failed_cell():
    fork = multiprocessing.get_context("fork")
    reader, writer = fork.Pipe(duplex=False)
    process = fork.Process(target=os._exit, args=(9,))  # as a cell killed mid-way: no JobReturn sent
    process.start()
    writer.close()
    ret = _receive(reader, process, ["data.size=20"])
    assert ret.status == JobStatus.FAILED and "exit code 9" in str(ret._return_value) and ret.overrides == ["data.size=20"]


@pytest.mark.slow
def test_local_parallel_runs_the_cells_at_most_max_parallel_at_once_on_their_share(cli, smoke_cache, tmp_path):
    cli("-m", "hydra/launcher=local_parallel", "hydra.launcher.max_parallel=1", "data.size=20,30", "restore.ratios=[0]",
        output_dir=tmp_path, cache_dir=smoke_cache)
    runs = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/results.json")]
    cores = len(os.sched_getaffinity(0))
    assert len(runs) == 2 and all(f"resources.threads={cores}" in r["overrides"] for r in runs)  # one cell: every core
    # Each cell in a process of its own; the second started (Hydra wrote its job config) after the first had finished.
    cells = sorted((tmp_path / "sweeps").glob("*/[0-9]"))
    info = [json.loads((d / "run.json").read_text()) for d in cells]
    assert len(cells) == 2 and len({i["pid"] for i in info}) == 2  # the basic launcher runs both in one process
    first_end = (Path(info[0]["run_dir"]) / "results.json").stat().st_mtime
    assert first_end <= (cells[1] / ".hydra" / "config.yaml").stat().st_mtime


@pytest.mark.slow
def test_a_failing_cell_fails_alone_and_the_sweep_exit_says_so(cli, smoke_cache, tmp_path):
    """One cell asks for more facts than its bucket holds; the other finishes; the driver exits non-zero."""
    proc = cli("-m", "hydra/launcher=local_parallel", "data.size=20,100000", "restore.ratios=[0]",
               output_dir=tmp_path, cache_dir=smoke_cache, check=False)
    assert proc.returncode != 0 and "1 cell(s) failed" in proc.stderr
    assert len(list((tmp_path / "runs").glob("*/results.json"))) == 1
