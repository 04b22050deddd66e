"""The plan before the work (sft_knowledge/plan.py, cost.py): model sizes from config.json files of real models
written here (no weights), memory per stage against the GPUs a cell asks for, GPU-hours, cache state, and the
refusal of a cell that cannot fit."""
from __future__ import annotations

import io
import json
import struct
from dataclasses import asdict
from pathlib import Path

import pytest

from sft_knowledge.cache import MARKER, Cache
from sft_knowledge.config import ConfigError
from sft_knowledge.cost import Assumptions, Shape, cell_plan, gpu_hours, memory, model_config, refusals, sft_examples
from sft_knowledge.overrides import check_command_line, compose_cells
from sft_knowledge.plan import cache_state, plan
from sft_knowledge.sources import source_of
from sft_knowledge.shipped import SHIPPED_DIR
from sft_knowledge.tracking import Tracker

LLAMA3_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
             "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
LLAMA3_70B = LLAMA3_8B | {"hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64, "intermediate_size": 28672}
PAPER = ("experiment=paper", "model=llama3_8b", "data=entityquestions")


def model_dir(root: Path, config: dict) -> Path:
    """A model directory as the plan reads it: config.json and a tokenizer file, no weights."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    (root / "tokenizer.json").write_text("{}")
    return root


def cfg_of(compose, config: dict, tmp_path: Path, *overrides: str):
    return compose(f"model.path={model_dir(tmp_path / 'model', config)}", f"paths.output_dir={tmp_path / 'out'}", *overrides)


def safetensors_params(path: Path) -> int:
    """Scalars in a safetensors file, from its JSON header alone."""
    with open(path, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    total = 0
    for name, info in header.items():
        if name != "__metadata__":
            n = 1
            for d in info["shape"]:
                n *= d
            total += n
    return total


def test_parameter_counts_from_config_json_match_the_published_models():
    assert Shape.from_config(LLAMA3_8B).params == 8_030_261_248  # Meta-Llama-3-8B
    assert Shape.from_config(LLAMA3_70B).params == 70_553_706_496  # Meta-Llama-3-70B
    smollm2 = {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
               "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True}
    assert Shape.from_config(smollm2).params == 134_515_008  # SmolLM2-135M: tied head counted once
    # LoRA on every projection, rank 8: 8 x (in + out) per matrix, 32 layers
    assert Shape.from_config(LLAMA3_8B).lora_params(8, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                          "down_proj"]) == 20_971_520


def test_tiny_worlds_shape_is_the_shipped_models(compose):
    config, _ = model_config(compose())
    assert Shape.from_config(config).params == safetensors_params(SHIPPED_DIR / "model.safetensors")
    assert Shape.from_config(json.loads((SHIPPED_DIR / "config.json").read_text())).params == Shape.from_config(config).params


def test_llama3_8b_preset_fits_four_gpus_with_fsdp(compose, tmp_path):
    cfg = cfg_of(compose, LLAMA3_8B, tmp_path, "model=llama3_8b", "data=entityquestions")
    a = Assumptions()
    sft = memory(cfg, Shape.from_config(LLAMA3_8B), a)["sft"]
    assert 128.4 / 4 < sft.gpu_gb < 40  # 16 B x 8.03e9 over 4 GPUs, plus gathered layers and activations
    assert refusals(cfg, Shape.from_config(LLAMA3_8B), a) == []


def test_full_sft_of_8b_on_one_gpu_is_refused_in_one_line(compose, tmp_path):
    cfg = cfg_of(compose, LLAMA3_8B, tmp_path, "model=llama3_8b", "data=entityquestions", "train=full", "resources=gpu1",
                 "model.n_gpus=1")
    [reason] = refusals(cfg, Shape.from_config(LLAMA3_8B), Assumptions())
    assert reason.startswith("sft: ") and "128 GB" in reason and "train=lora" in reason  # 16 B x 8.03e9
    with pytest.raises(ConfigError, match="does not fit: sft: "):  # the run's own check, before anything is submitted
        check_command_line(["model=llama3_8b", "data=entityquestions", "train=full", "resources=gpu1", "model.n_gpus=1",
                            f"model.path={tmp_path / 'model'}", f"paths.output_dir={tmp_path / 'out'}"])
    # an H200's 141 GB holds it, the base copy for restoration kept in node memory
    cpu_copies = cfg_of(compose, LLAMA3_8B, tmp_path, "model=llama3_8b", "data=entityquestions", "train=full",
                        "resources=gpu1", "model.n_gpus=1", "resources.weight_copies=cpu")
    assert refusals(cpu_copies, Shape.from_config(LLAMA3_8B), Assumptions(gpu_memory_gb=141)) == []


def test_lora_of_8b_fits_one_gpu_with_the_copies_in_node_memory(compose, tmp_path):
    cfg = cfg_of(compose, LLAMA3_8B, tmp_path, "model=llama3_8b", "data=entityquestions", "train=lora", "resources=gpu1",
                 "model.n_gpus=1", "resources.weight_copies=cpu")
    shape, a = Shape.from_config(LLAMA3_8B), Assumptions()
    assert memory(cfg, shape, a)["sft"].gpu_gb < 20  # frozen bf16 weights (16 GB) + 21M adapters
    assert refusals(cfg, shape, a) == []
    # beside the model, the copies of a LoRA run (base bf16 + merged float32) and the loaded base exceed 80 GB
    on_device = cfg_of(compose, LLAMA3_8B, tmp_path, "model=llama3_8b", "data=entityquestions", "train=lora",
                       "resources=gpu1", "model.n_gpus=1")
    assert [r.split(":")[0] for r in refusals(on_device, shape, a)] == ["eval", "restore"]


def test_pure_bf16_sft_of_8b_takes_8_bytes_per_parameter(compose, tmp_path):
    cfg = cfg_of(compose, LLAMA3_8B, tmp_path, "model=llama3_8b", "data=entityquestions", "train=full", "resources=gpu1",
                 "model.n_gpus=1", "resources.weight_copies=cpu", "train.precision=pure")
    sft = memory(cfg, Shape.from_config(LLAMA3_8B), Assumptions())["sft"]
    assert 8 * 8.03 < sft.gpu_gb < 8 * 8.03 + 2 and sft.node_gb == pytest.approx(2 * 8.03, abs=0.01)  # the base copy
    assert refusals(cfg, Shape.from_config(LLAMA3_8B), Assumptions()) == []


def test_a_hub_models_config_is_read_from_the_hugging_face_cache_only(compose, tmp_path, monkeypatch):
    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--meta-llama--Meta-Llama-3-8B" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(LLAMA3_8B))
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    cfg = compose("model=llama3_8b", "data=entityquestions")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    published, source = model_config(cfg)  # a gated repository: the plan answers without a login
    assert Shape.from_config(published).params == 8_030_261_248 and source == "meta-llama/Meta-Llama-3-8B's published shape"
    other = compose("model=hf", "model.hub_id=Qwen/Qwen2.5-7B", "data=entityquestions")
    assert "not in the local Hugging Face cache" in model_config(other)[1]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    config, source = model_config(cfg)
    assert Shape.from_config(config).params == 8_030_261_248 and source == str(snapshot / "config.json")


def test_70b_fits_eight_gpus_only_with_cpu_offload(compose, tmp_path):
    shape, a = Shape.from_config(LLAMA3_70B), Assumptions()
    offload = cfg_of(compose, LLAMA3_70B, tmp_path, "model=llama3_70b", "data=entityquestions")
    assert offload.train.fsdp_cpu_offload and offload.resources.gpus == 8
    sft = memory(offload, shape, a)["sft"]
    assert sft.gpu_gb < 20 and sft.node_gb > 16 * 70.5  # the 1.1 TB of fp32 state in node memory
    assert refusals(offload, shape, a) == []
    sharded = cfg_of(compose, LLAMA3_70B, tmp_path, "model=llama3_70b", "data=entityquestions", "train=fsdp")
    [reason] = refusals(sharded, shape, a)
    assert reason.startswith("sft: ")  # 1,129 GB over 8 GPUs: 141 GB each


def test_gpu_hours_of_the_paper_sweep_agree_with_the_report(compose, tmp_path):
    """docs/report.md: about 10 h of probe, 2-3 of SFT, 11 of evaluation; 28-29 in all, before checkpoint writes."""
    model_dir(tmp_path / "model", LLAMA3_8B)
    out = io.StringIO()
    assert plan([*PAPER, f"model.path={tmp_path / 'model'}", f"paths.output_dir={tmp_path / 'out'}"], out) == 0
    text = out.getvalue()
    assert text.startswith("126 cells: mastery (6) x data.size (7) x seed (3)")
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("  ")}
    assert 8 < float(rows["probe"][1]) < 11 and 2 < float(rows["sft"][1]) < 4 and 9 < float(rows["eval"][1]) < 12
    assert 26 < float(rows["without"][-1]) < 31
    assert "probe 0 of 126; SFT 0 of 126; runs done 0 of 126" in text and "8.03B parameters" in text
    assert not (tmp_path / "out").exists()  # the plan writes nothing


def test_slick_adds_its_own_stage_and_its_buckets_plan(compose, tmp_path):
    """probe=slick: 10 prompts x (1 + 16) answers x 16 tokens per fact beside the probe; a SliCK bucket's SFT is planned
    at a quarter of the train split until SliCK has counted it."""
    model_dir(tmp_path / "model", LLAMA3_8B)
    base = ("model=llama3_8b", "data=entityquestions", f"model.path={tmp_path / 'model'}")
    a, shape = Assumptions(), Shape.from_config(LLAMA3_8B)
    assert "slick" not in gpu_hours(compose(*base), shape, a)
    slick = compose(*base, "probe=slick", "mastery=maybe_known", "data.size=all")
    stage = gpu_hours(slick, shape, a)["slick"]
    assert stage.how.startswith(f"{97_112 * 10 * 17 * 16 / 1e6 + 97_112 * 10 * 5 * 32 / 1e6:,.1f}M tokens")
    assert sft_examples(slick) == round(75_944 / 4)


def test_the_fast_composition_is_hydras(compose, tmp_path):
    cells = [["experiment=paper", "mastery=d3", "data.size=all", "seed=2", f"paths.output_dir={tmp_path}"],
             ["train=lora", "train.lr=3e-4", "mastery=d0", "logger.tags=[a,b]", "kl.max_facts=7"]]
    assert [asdict(c) for c in compose_cells(cells)] == [asdict(compose(*cell)) for cell in cells]


def test_cache_state_finds_the_entries_a_run_would_read(compose, tmp_path):
    """tiny_world: base model and probe by their keys; SFT by every part of its key but the KL curve's prompts."""
    from sft_knowledge.recipe import BaseModel, Data, Mastery, probe_spec, sft_spec
    from sft_knowledge.config import effective

    cfg = compose(f"paths.output_dir={tmp_path}")
    cache = Cache(cfg.paths.cache_dir)
    assert cache_state(cfg, cache, [], {}).probe is False

    def publish(kind: str, spec: dict, files: dict[str, str]) -> None:
        entry = cache.entry(kind, spec)
        entry.mkdir(parents=True)
        for name, text in files.items():
            (entry / name).write_text(text)
        (entry / MARKER).write_text(json.dumps({"kind": kind, "spec": spec}, default=str))

    base = BaseModel("", source_of(cfg).spec(cfg), None, None, False)
    probe = probe_spec(cfg, Data(None, None, None), base)
    publish("base_model", base.spec, {})
    publish("probe", probe, {"probe.json": json.dumps({"level": {"train": [0] * 7 + [4] * 3}})})

    class Curve:
        def spec(self):
            return {"prompts": "from the base model's answers", "top_k": cfg.kl.top_k, "points": cfg.kl.curve_points}

    state = cache_state(cfg, cache, [], {})
    assert (state.base, state.probe, state.sft, state.train_levels) == (True, True, False, [7, 0, 0, 0, 3])
    publish("sft", sft_spec(cfg, effective(cfg), Mastery(None, probe, True), Curve()), {})
    assert cache_state(cfg, cache, cache.specs("sft"), {}).sft is True
    other_seed = compose(f"paths.output_dir={tmp_path}", "seed=1")
    assert cache_state(other_seed, cache, cache.specs("sft"), {}).sft is False


def test_the_wandb_config_holds_the_plan(compose, tmp_path, monkeypatch):
    import huggingface_hub.constants

    cfg = cfg_of(compose, LLAMA3_8B, tmp_path, "model=llama3_8b", "data=entityquestions", "data.size=60", "mastery=d0")
    record = cell_plan(cfg)
    assert record["params"] == 8_030_261_248 and set(record["memory_gb"]) == {"probe", "sft", "eval", "restore"}
    assert record["gpu_hours"]["probe"] == pytest.approx(gpu_hours(cfg, Shape.from_config(LLAMA3_8B), Assumptions())["probe"].gpu_hours, rel=1e-3)
    tracker = Tracker("disabled", tmp_path / "run", "k", "p", {"seed": 0}, plan=record)
    assert tracker._init_args["config"] == {"seed": 0, "plan": record}
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    hub = compose("model=hf", "model.hub_id=Qwen/Qwen2.5-7B", "data=entityquestions")  # in no local cache here
    assert "not in the local Hugging Face cache" in cell_plan(hub)["unavailable"]


@pytest.mark.slow  # a subprocess
def test_the_plan_command_refuses_a_cell_that_cannot_fit(cli, tmp_path):
    model_dir(tmp_path / "model", LLAMA3_8B)
    fits = cli(*PAPER[1:], f"model.path={tmp_path / 'model'}", output_dir=tmp_path / "out", experiment="paper",
               module="sft_knowledge.plan", check=False)
    assert fits.returncode == 0 and fits.stdout.startswith("126 cells") and fits.stderr == ""
    refused = cli("model=llama3_8b", "data=entityquestions", f"model.path={tmp_path / 'model'}", "train=full", "resources=gpu1",
                  "model.n_gpus=1", output_dir=tmp_path / "out", experiment=None, module="sft_knowledge.plan", check=False)
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [next(line for line in refused.stderr.splitlines() if line.startswith("error: cell 0: sft: "))]
    tiny = cli(output_dir=tmp_path / "out", experiment=None, module="sft_knowledge.plan", check=False)
    assert tiny.returncode == 0 and tiny.stdout.startswith("1 cell\n") and "model=tiny_world (model.pretrain): 1.57M parameters" in tiny.stdout
