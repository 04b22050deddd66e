"""Real-model configs: each composes with the paper's per-size defaults; without weights or network, one line says what
to set; an option a model's source does not read is refused; model=hf is named after its weights."""
import json

import pytest

from sft_knowledge.config import ConfigError, ModelError, validate
from sft_knowledge.models import check_hub_access
from sft_knowledge.sources import SOURCES, check_source, source_of


def check(cfg):
    """What a run checks before any stage: the values, then the model's source."""
    validate(cfg)
    check_source(cfg)

# GPUs per job: full SFT with fp32 master weights and AdamW state takes 16 bytes per parameter (7-13B: 4 x 80 GB).
REAL = {"llama2_7b": ("meta-llama/Llama-2-7b-hf", 4), "llama2_13b": ("meta-llama/Llama-2-13b-hf", 4),
        "llama2_70b": ("meta-llama/Llama-2-70b-hf", 8), "llama3_8b": ("meta-llama/Meta-Llama-3-8B", 4),
        "llama3_70b": ("meta-llama/Meta-Llama-3-70B", 8)}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_model_configs_compose_with_per_size_defaults(compose, name):
    cfg = compose(f"model={name}", "data=entityquestions", "train=lora")
    check(cfg)
    hub_id, gpus = REAL[name]
    m = cfg.model
    assert (m.name, m.source, m.hub_id, m.dtype, m.lr, m.n_gpus, m.gradient_checkpointing) == (name, "hub", hub_id, "bfloat16", 1e-5, gpus, True)
    assert cfg.train.batch_size == 8 and cfg.train.batch_size % m.micro_batch_size == 0  # batch 8 by gradient accumulation


def test_offline_hub_model_fails_in_one_line_saying_what_to_set(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        check_hub_access("meta-llama/Llama-2-7b-hf", "llama2_7b", revision="v1")
    assert "model.path=" in str(err.value) and "HF_HUB_OFFLINE" in str(err.value) and "\n" not in str(err.value)
    assert "at revision v1" in str(err.value)


def _model_dir(tmp_path, name="my-qwen"):
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (path / "tokenizer.json").write_text("{}")
    return path


def test_hf_is_named_after_its_weights_and_keyed_by_them(compose, tmp_path):
    path = _model_dir(tmp_path)
    by_path = compose("model=hf", f"model.path={path}")
    by_id = compose("model=hf", "model.hub_id=Qwen/Qwen2.5-0.5B", "model.revision=main")
    check(by_path), check(by_id)
    assert (by_path.model.name, by_id.model.name) == ("my-qwen", "Qwen2.5-0.5B")
    assert source_of(by_path).spec(by_path) == {"source": "hub", "id": str(path), "dtype": "bfloat16"}
    assert source_of(by_id).spec(by_id) == {"source": "hub", "id": "Qwen/Qwen2.5-0.5B", "dtype": "bfloat16", "revision": "main"}
    preset = compose("model=llama3_8b", f"model.path={path}")
    assert preset.model.name == "llama3_8b"  # presets keep their names


@pytest.mark.parametrize("model", ["tiny_world", "smollm2_135m"])
@pytest.mark.parametrize("option", ["model.path={path}", "model.hub_id=Qwen/Qwen2.5-0.5B", "model.revision=main"])
def test_options_a_source_does_not_read_are_refused_in_one_line(compose, tmp_path, model, option):
    option = option.format(path=_model_dir(tmp_path))
    cfg = compose(f"model={model}", option, *(["data=entityquestions"] if model != "tiny_world" else []))
    with pytest.raises(ConfigError) as err:
        check(cfg)
    message = str(err.value)
    assert message.startswith(f"{option} is not read by model={model}") and "model=hf" in message and "\n" not in message


def test_pretraining_options_are_refused_on_other_models_and_hf_needs_weights(compose, tmp_path):
    with pytest.raises(ConfigError, match=r"^model.pretrain.\* is not read by model=smollm2_135m .* read by model=tiny_world$"):
        check(compose("model=smollm2_135m", "model.pretrain.epochs=2", "data=entityquestions"))
    with pytest.raises(ConfigError, match="model=hf needs its weights: set model.hub_id"):
        check(compose("model=hf"))
    with pytest.raises(ConfigError, match="model.revision=main selects a commit of model.hub_id"):
        check(compose("model=hf", f"model.path={_model_dir(tmp_path)}", "model.revision=main"))
    with pytest.raises(ConfigError, match="^model=tiny_world is pretrained on the synthetic world"):
        check(compose("data=entityquestions"))


def test_every_source_keys_its_base_model_without_weights(compose):
    """plan and status read a base model's cache key from the config alone: no source's spec loads anything."""
    for name, overrides in {"tiny_world": [], "smollm2_gguf": ["model=smollm2_135m"], "hub": ["model=llama3_8b"]}.items():
        cfg = compose(*overrides)
        assert source_of(cfg) is SOURCES[name] and source_of(cfg).spec(cfg)["source"] == name


@pytest.mark.slow  # a subprocess or spawned processes
def test_cli_with_an_unreachable_model_exits_with_one_line(cli, tmp_path):
    # n_gpus=1: the 4 GPUs of its fp32-master FSDP default are checked first, and this machine has none.
    proc = cli("model=llama2_7b", "model.n_gpus=1", output_dir=tmp_path, check=False, experiment=None)  # smoke's pretraining is tiny_world's
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: model=llama2_7b: cannot read meta-llama/Llama-2-7b-hf")
    assert not list(tmp_path.glob("runs/*/results.json"))


@pytest.mark.slow  # a subprocess or spawned processes
def test_tiny_world_model_refuses_real_data(cli, tmp_path):
    proc = cli("data=entityquestions", output_dir=tmp_path, check=False)
    assert proc.returncode != 0 and "error: model=tiny_world is pretrained on the synthetic world" in proc.stderr


def test_a_revision_is_read_from_its_own_snapshot(compose, monkeypatch, tmp_path):
    """model.revision: every stage reads that commit's files, so the weights come from its local snapshot directory
    (config, safetensors and tokenizer files only: LLaMA-3's original/*.pth would double the download)."""
    import huggingface_hub

    from sft_knowledge import models

    calls = []
    monkeypatch.setattr(models, "check_hub_access", lambda source, name, revision: calls.append(("access", source, revision)))
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, revision, allow_patterns: calls.append(("snapshot", repo, revision, allow_patterns)) or str(tmp_path))
    cfg = compose("model=hf", "model.hub_id=Qwen/Qwen2.5-0.5B", "model.revision=abc123")
    built = source_of(cfg).build(cfg, None, None)
    assert (built.path, built.hit, built.origin) == (str(tmp_path), True, "Qwen/Qwen2.5-0.5B at revision abc123")
    assert calls[0] == ("access", "Qwen/Qwen2.5-0.5B", "abc123") and calls[1][:3] == ("snapshot", "Qwen/Qwen2.5-0.5B", "abc123")
    assert "*.safetensors" in calls[1][3] and not any(p.endswith(".pth") or p == "*" for p in calls[1][3])
    plain = compose("model=hf", "model.hub_id=Qwen/Qwen2.5-0.5B")
    assert source_of(plain).build(plain, None, None).path == "Qwen/Qwen2.5-0.5B"  # no revision: from_pretrained's own
