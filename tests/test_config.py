"""Every config group option composes into a valid typed config; bad values give one-line errors."""
from pathlib import Path

import pytest

from sft_knowledge.config import Config, ConfigError, run_key, semantic, validate

CONF = Path(__file__).resolve().parent.parent / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["model", "data", "probe", "mastery", "train", "eval", "kl", "restore", "logger", "resources", "experiment"])
def test_every_group_option_composes_and_validates(compose, group):
    assert _options(group), f"conf/{group} has no options"
    # model=hf runs on the user's weights; EntityQuestions on a real model (tiny_world knows only the synthetic world)
    needs = {"model=hf": ["model.hub_id=org/name"], "data=entityquestions": ["model=smollm2_135m"],
             **{f"mastery={c}": ["probe=slick"] for c in ("highly_known", "maybe_known", "weakly_known", "unknown")}}
    for option in _options(group):
        cfg = compose(f"{group}={option}", *needs.get(f"{group}={option}", []))
        assert isinstance(cfg, Config)
        validate(cfg)


def test_defaults_are_the_papers(compose):
    cfg = compose()
    assert (cfg.probe.n_map, cfg.probe.n_sample, cfg.probe.temperature, cfg.probe.max_new_tokens) == (21, 10, 0.7, 32)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.eval.max_new_tokens, cfg.kl.top_k, cfg.kl.level) == (1.0, 8, 16, 10, 4)
    assert cfg.restore.ratios == [0, 1, 3, 5, 10, 20, 40, 60] and cfg.restore.region == "transformer"


def test_mastery_option_selects_bucket(compose):
    assert [compose(f"mastery={b}").mastery.bucket for b in ("all", "d0", "d4")] == ["all", "d0", "d4"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.size=0", "data.size=0 is not allowed: expected a positive integer"),
        ("data.size=many", "data.size='many' is not allowed"),
        ("restore.ratios=[0,150]", "restore.ratios=150 is not allowed: expected percentages in [0, 100]"),
        ("restore.ratios=[-1]", "restore.ratios=-1 is not allowed"),
        ("restore.strategy=best", "restore.strategy='best' is not allowed: expected top, bottom, random"),
        ("restore.export=[30]", "restore.export=30 is not allowed: expected ratios that restore.ratios also lists (0, 1, 3, 5, 10, 20, 40, 60)"),
        ("restore.ratios=[0,5] restore.export=[5,20]", "restore.export=20 is not allowed: expected ratios that restore.ratios also lists (0, 5)"),
        ("resources.threads=0", "resources.threads=0 is not allowed: expected a positive integer, or null for torch's default"),
        ("probe.estimator=guess", "probe.estimator='guess' is not allowed: expected sampling, likelihood"),
        ("probe.backend=tgi", "probe.backend='tgi' is not allowed: expected hf, vllm"),
        ("resources.weight_copies=disk", "resources.weight_copies='disk' is not allowed: expected device, cpu"),
        ("probe.backend=vllm probe.estimator=likelihood",
         "probe.backend=vllm only samples: use probe.estimator=sampling, or probe.backend=hf for probe.estimator=likelihood"),
        ("kl.level=5", "kl.level=5 is not allowed: expected 0..4"),
        ("kl.answer_within_tokens=0", "kl.answer_within_tokens=0 is not allowed: expected a positive integer or null (no filter)"),
        ("kl.answer_within_tokens=true", "kl.answer_within_tokens=True is not allowed"),
        ("kl.position=last_token", "kl.position='last_token' is not allowed: expected answer_start, first_token"),
        ("kl.answer_within_tokens=null", "kl.position='answer_start' is not allowed: expected first_token with "
                                         "kl.answer_within_tokens=null (the answer's first token is found by that filter)"),
        ("train.micro_batch_size=3", "train.micro_batch_size=3 is not allowed: expected a divisor of train.batch_size=8"),
        ("train.method=adapter", "train.method='adapter' is not allowed: expected full, lora"),
        ("train.strategy=ddp", "train.strategy='ddp' is not allowed: expected single, fsdp"),
        ("train=lora train.strategy=fsdp", "train.strategy='fsdp' is not allowed: expected single with train.method=lora"),
        ("train=fsdp train.fsdp_processes=0", "train.fsdp_processes=0 is not allowed: expected a positive integer or null"),
        ("model.dtype=int4", "model.dtype='int4' is not allowed: expected float32, bfloat16, float16"),
        ("model.pretrain.optimizer=sgd", "model.pretrain.optimizer='sgd' is not allowed: expected adamw, muon"),
        ("model=smollm2_135m data=entityquestions data.subset.candidates=0", "data.subset.candidates=0 is not allowed"),
        ("model=smollm2_135m data=entityquestions probe.templates=paper", "probe.templates='paper' is not allowed: expected all, paper_only"),
        ("probe.templates=paper_only", "probe.templates=paper_only selects the paper's EntityQuestions templates; data=synthetic "
         "has its own: use probe.templates=all"),
        ("probe.top_p=0", "probe.top_p=0 is not allowed: expected a fraction in (0, 1] (1: plain sampling)"),
        ("probe.top_p=1.5", "probe.top_p=1.5 is not allowed: expected a fraction in (0, 1]"),
        ("probe=likelihood probe.top_p=0.9", "probe.top_p=0.9 filters sampling; probe.estimator=likelihood does not sample: "
         "use probe.estimator=sampling, or probe.top_p=1"),
        ("restore.zeros=skip", "restore.zeros='skip' is not allowed: expected guarded, unranked"),
        ("restore.eps=0", "restore.eps=0 is not allowed: expected a number > 0 (0 only with restore.zeros=unranked"),
        ("restore.eps=-1e-8 restore.zeros=unranked", "restore.eps=-1e-08 is not allowed"),
        ("mastery=maybe_known", "mastery=maybe_known trains on a SliCK category, which only probe=slick measures: add "
         "probe=slick (probe.categories=levels_and_slick), or use a level bucket (d0..d4, all)"),
        ("probe.slick.n_prompts=5", "probe.slick.n_prompts=5 is read only by SliCK, which probe.categories=levels does not "
         "run: add probe=slick, or drop the setting"),
        ("probe=likelihood probe.slick.exemplars=all_splits", "probe.slick.exemplars=all_splits is read only by SliCK"),
        ("probe.categories=slick", "probe.categories='slick' is not allowed: expected levels, levels_and_slick"),
        ("probe=slick probe.slick.n_shots=0", "probe.slick.n_shots=0 is not allowed: expected a positive integer"),
        ("probe=slick probe.slick.exemplars=train", "probe.slick.exemplars='train' is not allowed: expected dev, all_splits, same_split"),
    ],
)
def test_bad_values_are_one_line_errors(compose, override, message):
    with pytest.raises(ConfigError) as err:
        validate(compose(*override.split()))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_run_key_is_semantic(compose):
    base = compose()
    assert run_key(base) == run_key(compose("logger=disabled", "paths.output_dir=/elsewhere", "name=other"))
    assert run_key(base) == run_key(compose("restore.export=[20]", "resources.threads=1"))  # files and threads, same results
    assert "export" not in semantic(compose("restore.export=[20]"))["restore"]
    assert run_key(base) != run_key(compose("seed=1"))
    assert run_key(base) != run_key(compose("data.size=60"))
    assert run_key(base).startswith("tiny_world-all-240-")
    # kl.position came later: at its old value it is left out of the key, as runs from before it have it
    assert "position" not in semantic(compose("kl.position=first_token"))["kl"] and semantic(base)["kl"]["position"] == "answer_start"


def test_two_sweeps_started_in_the_same_second_get_different_directories():
    from hydra import compose, initialize_config_dir

    def sweep_dir() -> str:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="config", return_hydra_config=True).hydra.sweep.dir

    for _ in range(5):  # two sweeps within one second (retried if the clock ticked over between them)
        a, b = sweep_dir(), sweep_dir()
        if a[: -len("-123456_run")] == b[: -len("-123456_run")]:
            break
    assert a[: -len("-123456_run")] == b[: -len("-123456_run")] and a != b


def test_slurm_profile_takes_resources_from_the_model_preset(compose):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        launcher = hydra_compose(config_name="config", overrides=["hydra/launcher=slurm", "resources=gpu8"], return_hydra_config=True).hydra.launcher
        launcher = OmegaConf.to_container(launcher, resolve=True)
    assert (launcher["gpus_per_node"], launcher["cpus_per_task"], launcher["mem_gb"], launcher["nodes"]) == (8, 64, 1600, 1)
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["setup"] == ["export OMP_NUM_THREADS=64"]
    assert compose("resources=gpu8").resources.gpus == 8
    assert run_key(compose("resources=gpu8", "checkpoint.every=7")) == run_key(compose())  # not semantic


@pytest.mark.parametrize("model, gpus", [("tiny_world", 0), ("llama3_8b", 4), ("llama2_13b", 4), ("llama3_70b", 8)])
def test_a_model_picks_its_slurm_resources_and_the_command_line_overrides_them(compose, model, gpus):
    assert compose(f"model={model}").resources.gpus == gpus
    assert compose(f"model={model}", "resources=gpu1").resources.gpus == 1


def _sweep_axes(preset: str) -> dict[str, list[str]]:
    """The grid a preset sweeps (hydra.sweeper.params), each axis as its list of values."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        params = compose(config_name="config", overrides=[f"experiment={preset}"], return_hydra_config=True).hydra.sweeper.params
    return {k: str(v).split(",") for k, v in (params or {}).items()}


REPEATS = ["0", "1", "2"]


@pytest.mark.parametrize("preset, axes", [
    ("table2", {"mastery": ["d0", "d1", "d2", "d3", "d4"], "seed": REPEATS}),
    ("figure2", {"data.size": ["60", "120", "240", "480", "960", "1920", "all"], "mastery": ["d0", "d1", "d2", "d3", "d4"], "seed": REPEATS}),
    ("table4", {"data.size": ["240", "1920"], "mastery": ["d0", "d1", "d2", "d3", "d4"], "seed": REPEATS}),
    ("table11", {"mastery": ["d0", "d1", "d2", "d3", "d4"]}),
    ("paper", {"mastery": ["all", "d0", "d1", "d2", "d3", "d4"], "data.size": ["60", "120", "240", "480", "960", "1920", "all"], "seed": REPEATS}),
    ("paper_lora", {"mastery": ["all"], "data.size": ["60", "120", "240", "480", "960", "1920", "all"], "seed": REPEATS}),
])
def test_paper_presets_sweep_the_papers_grid_and_every_point_composes(compose, preset, axes):
    assert _sweep_axes(preset) == axes
    for key, values in axes.items():  # every value of every axis, the other axes at their first value
        for value in values:
            point = {k: v[0] for k, v in axes.items()} | {key: value}
            cfg = compose(f"experiment={preset}", *(f"{k}={v}" for k, v in point.items()))
            validate(cfg)
            if "seed" in axes:  # a repeat re-draws the SFT subset as well as the SFT order
                assert cfg.data.seed == cfg.seed == int(point["seed"])


def test_paper_preset_turns_on_every_measurement_and_its_lora_run_trains_adapters(compose):
    paper, lora = compose("experiment=paper"), compose("experiment=paper_lora")
    assert paper.restore.ratios == [0, 1, 3, 5, 10, 20, 40, 60] and paper.restore.strategy == "top"
    assert paper.restore.layer_block_size == 4 and paper.kl.curve_points == 10 and paper.train.method == "full"
    assert lora.train.method == "lora" and lora.restore.ratios == [0] and lora.restore.layer_block_size == 0
    table11 = compose("experiment=table11", "mastery=d3")
    assert (table11.restore.layer_block_size, table11.data.size, table11.mastery.bucket) == (4, 240, "d3")
    assert compose("experiment=figure2", "data.size=all").data.size == "all"


def test_probe_and_restore_options_added_later_keep_every_key_at_their_old_value(compose):
    """probe.templates, probe.top_p, restore.eps and restore.zeros enter run and probe keys only away from their
    defaults: the keys below are those of the code before the options existed (with the answer format and the KL
    reading of that code, whose new defaults change every run key on purpose)."""
    from sft_knowledge.recipe import BaseModel, Data, probe_spec

    before = ("train.space_before_eos=false", "kl.position=first_token")
    assert run_key(compose("experiment=smoke", *before)) == "tiny_world-all-60-fb7982908aaf"
    assert run_key(compose("experiment=eq_smollm2_small", *before)) == "smollm2_135m-all-40-45833c121859"
    assert run_key(compose("experiment=smoke", *before, "restore.eps=1e-8", "restore.zeros=guarded", "probe.top_p=1.0")) == \
        "tiny_world-all-60-fb7982908aaf"
    eq = compose("experiment=eq_smollm2_small")
    spec = probe_spec(eq, Data(None, None, {"name": "entityquestions"}), BaseModel("", {"source": "smollm2_gguf"}, None, None, True))
    assert spec["probe"] == {"n_map": 4, "n_sample": 4, "temperature": 0.7, "max_new_tokens": 8, "estimator": "sampling",
                             "batch_size": 512, "seed": 0, "backend": "hf"}  # the probe's cache key as it always was
    paper = compose("experiment=eq_smollm2_small", "probe.templates=paper_only")
    validate(paper)
    assert paper.probe.templates == "paper_only" and eq.probe.templates == "all"
    assert probe_spec(paper, Data(None, None, {}), BaseModel("", {}, None, None, True))["probe"]["templates"] == "paper_only"
    for override in ("probe.templates=paper_only", "probe.top_p=0.9", "restore.eps=1e-6", "restore.zeros=unranked", "probe=slick"):
        other = compose("experiment=eq_smollm2_small", override)
        validate(other)
        assert run_key(other) != run_key(eq), override


def test_slick_runs_beside_the_paper_probe_and_shares_its_cache_entry(compose):
    """probe=slick is the paper's probe and SliCK: the probe's cache key is probe=paper's, whatever SliCK's settings;
    SliCK's settings enter the run key only with SliCK and away from their defaults (config.ADDED_LATER)."""
    from sft_knowledge.recipe import BaseModel, Data, probe_spec

    def spec(cfg):
        return probe_spec(cfg, Data(None, None, {"name": "entityquestions"}), BaseModel("", {"source": "smollm2_gguf"}, None, None, True))

    paper, slick = compose("experiment=eq_smollm2_small"), compose("experiment=eq_smollm2_small", "probe=slick", "mastery=maybe_known")
    validate(slick)
    assert slick.probe.with_slick and not paper.probe.with_slick and slick.mastery.bucket == "maybe_known"
    assert spec(slick) == spec(paper) == spec(compose("experiment=eq_smollm2_small", "probe=slick", "probe.slick.n_prompts=3"))
    assert "slick" not in semantic(paper)["probe"] and "categories" not in semantic(paper)["probe"]
    assert semantic(slick)["probe"]["categories"] == "levels_and_slick" and "slick" not in semantic(slick)["probe"]
    fewer = compose("experiment=eq_smollm2_small", "probe=slick", "probe.slick.n_prompts=3")
    assert semantic(fewer)["probe"]["slick"]["n_prompts"] == 3 and run_key(fewer) != run_key(compose("experiment=eq_smollm2_small", "probe=slick"))
    assert run_key(slick).startswith("smollm2_135m-maybe_known-40-")
