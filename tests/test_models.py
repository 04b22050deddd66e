"""Real-model configs: each composes with the paper's per-size defaults; without weights or network, one line says what to set."""
import pytest

from sft_knowledge.config import ModelError, validate
from sft_knowledge.models import check_hub_access, hub_source

# GPUs per job: full SFT with fp32 master weights and AdamW state takes 16 bytes per parameter (7-13B: 4 x 80 GB).
REAL = {"llama2_7b": ("meta-llama/Llama-2-7b-hf", 4), "llama2_13b": ("meta-llama/Llama-2-13b-hf", 4),
        "llama2_70b": ("meta-llama/Llama-2-70b-hf", 8), "llama3_8b": ("meta-llama/Meta-Llama-3-8B", 4),
        "llama3_70b": ("meta-llama/Meta-Llama-3-70B", 8)}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_model_configs_compose_with_per_size_defaults(compose, name):
    cfg = compose(f"model={name}", "data=entityquestions", "train=lora")
    validate(cfg)
    hub_id, gpus = REAL[name]
    m = cfg.model
    assert (m.name, m.source, m.hub_id, m.dtype, m.lr, m.n_gpus, m.gradient_checkpointing) == (name, "hub", hub_id, "bfloat16", 1e-5, gpus, True)
    assert cfg.train.batch_size == 8 and cfg.train.batch_size % m.micro_batch_size == 0  # batch 8 by gradient accumulation


def test_offline_hub_model_fails_in_one_line_saying_what_to_set(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        check_hub_access(hub_source("meta-llama/Llama-2-7b-hf", None), "llama2_7b")
    assert "model.path=" in str(err.value) and "HF_HUB_OFFLINE" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelError, match="model.path=/no/such/dir is not a directory"):
        hub_source("meta-llama/Llama-2-7b-hf", "/no/such/dir")


@pytest.mark.slow  # a subprocess or spawned processes
def test_cli_with_an_unreachable_model_exits_with_one_line(cli, tmp_path):
    # n_gpus=1: the 4 GPUs of its fp32-master FSDP default are checked first, and this machine has none.
    proc = cli("model=llama2_7b", "model.n_gpus=1", output_dir=tmp_path, check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: model=llama2_7b: cannot read meta-llama/Llama-2-7b-hf")
    assert not list(tmp_path.glob("runs/*/results.json"))


@pytest.mark.slow  # a subprocess or spawned processes
def test_tiny_world_model_refuses_real_data(cli, tmp_path):
    proc = cli("data=entityquestions", output_dir=tmp_path, check=False)
    assert proc.returncode != 0 and "error: model=tiny_world is pretrained on the synthetic world" in proc.stderr
