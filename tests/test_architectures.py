"""structure.py on small random models of several architectures (conftest's random_model_dir): restoration restores
exactly each region, whole decoder layers one at a time, FSDP shards the decoder layers, LoRA's [all-linear] adapts
every decoder-layer projection, and a model whose structure is not understood is one line."""
import pytest
import torch
import torch.distributed as dist
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from sft_knowledge.config import REGIONS, TrainConfig
from sft_knowledge.errors import ModelError
from sft_knowledge.fsdp import _sharded_model
from sft_knowledge.recipe import weight_copy
from sft_knowledge.restore import restore_into, restore_layers, restored_state, select_thresholds
from sft_knowledge.structure import ALL_LINEAR, decoder_layers, model_structure
from sft_knowledge.train import attach_lora, merge_lora

# Known answers per architecture: the decoder layers' prefix, tensors per layer in the attention and the MLP region
# (norms out: Qwen3's and Gemma3's q_norm/k_norm sit inside attention), the embeddings, and whether they are tied.
EXPECTED = {
    "llama": ("model.layers.", 4, 3, ("model.embed_tokens.weight", "lm_head.weight"), False),
    "llama_tied": ("model.layers.", 4, 3, ("model.embed_tokens.weight", "lm_head.weight"), True),
    "qwen2": ("model.layers.", 7, 3, ("model.embed_tokens.weight", "lm_head.weight"), True),  # q, k, v biases
    "qwen3": ("model.layers.", 4, 3, ("model.embed_tokens.weight", "lm_head.weight"), False),
    "mistral": ("model.layers.", 4, 3, ("model.embed_tokens.weight", "lm_head.weight"), False),
    "gemma2": ("model.layers.", 4, 3, ("model.embed_tokens.weight", "lm_head.weight"), True),
    "gemma3": ("model.layers.", 4, 3, ("model.embed_tokens.weight", "lm_head.weight"), True),
    "phi3": ("model.layers.", 2, 2, ("model.embed_tokens.weight", "lm_head.weight"), False),  # qkv_proj, gate_up_proj
    "gpt_neox": ("gpt_neox.layers.", 4, 4, ("gpt_neox.embed_in.weight", "lm_head.weight"), False),  # with biases
}
ARCHS = sorted(EXPECTED)


def test_every_architecture_of_the_fixture_has_a_known_answer(random_model_dir):
    assert set(random_model_dir.archs) == set(EXPECTED)


def _load(path, dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def expected_regions(model, arch: str) -> dict[str, set[str]]:
    """Each region's state-dict names, from module types: under each decoder layer's *Attention / *MLP module, or
    anywhere in the layer, leaving out the parameters of *Norm modules (RMSNorm, LayerNorm)."""
    prefix = f"{model.base_model_prefix}.layers."

    def params(module, at: str) -> set[str]:
        norms = {f"{at}{m}.{p}" if m else f"{at}{p}" for m, mod in module.named_modules() if type(mod).__name__.endswith("Norm")
                 for p, _ in mod.named_parameters(recurse=False)}
        return {f"{at}{n}" for n, _ in module.named_parameters()} - norms

    regions = {"transformer": set(), "attention": set(), "mlp": set()}
    for i, layer in enumerate(model.base_model.layers):
        regions["transformer"] |= params(layer, f"{prefix}{i}.")
        for region, suffix in (("attention", "Attention"), ("mlp", "MLP")):
            [(name, module)] = [(n, m) for n, m in layer.named_children() if type(m).__name__.endswith(suffix)]
            regions[region] |= params(module, f"{prefix}{i}.{name}.")
    regions["embedding"] = set(EXPECTED[arch][3])
    regions["all"] = set(model.state_dict())
    return regions


def perturbed(path):
    """(model holding the fine-tuned weights, base copy, fine-tuned copy): every parameter moved (a tied one once)."""
    model = _load(path)
    base = weight_copy(model, "cpu")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    return model, base, weight_copy(model, "cpu")


@pytest.mark.parametrize("arch", ARCHS)
def test_the_structure_is_the_known_answer(arch, random_model_dir):
    model = _load(random_model_dir(arch))
    prefix, n_attention, n_mlp, embeddings, tied = EXPECTED[arch]
    s = model_structure(model)
    regions = expected_regions(model, arch)
    assert (s.model_class, s.layers_prefix, s.n_layers, s.embeddings, s.tied_embeddings) == \
        (type(model).__name__, prefix, 2, embeddings, tied)
    assert s.tied == ({embeddings[1]: embeddings[0]} if tied else {})
    for region in REGIONS:
        assert s.regions[region] == regions[region], region
    assert len(regions["attention"]) == 2 * n_attention and len(regions["mlp"]) == 2 * n_mlp
    assert s.regions["transformer"] == s.regions["attention"] | s.regions["mlp"]  # the rest of a layer is norms
    assert decoder_layers(model)[1] is model.base_model.layers
    assert model_structure(_load(random_model_dir(arch, "bfloat16"), torch.bfloat16)) == s
    assert len(AutoTokenizer.from_pretrained(random_model_dir(arch))) == model.config.vocab_size


@pytest.mark.parametrize("arch", ARCHS)
def test_restoring_a_region_restores_exactly_its_parameters(arch, random_model_dir):
    model, base, ft = perturbed(random_model_dir(arch))
    s = model_structure(model)
    expected = expected_regions(model, arch)
    for name in REGIONS:
        region = s.region(name)
        n_total = sum(p.numel() for n, p in model.named_parameters() if n in expected[name])  # a tied matrix once
        sel = select_thresholds(base, ft, [50, 100], region)
        assert sel[100].n_total == sel[100].k == n_total and sel[50].k == round(n_total / 2), name
        restore_into(model, base, ft, sel[100], region, "top", 0)
        for n, p in model.named_parameters(remove_duplicate=False):  # tied: both names are the one restored tensor
            assert torch.equal(p.detach(), base[n] if n in expected[name] else ft[n]), (name, n)
        restored = dict(restored_state(base, ft, sel[100], region, "top", 0))  # the state-dict path, per-key copies
        assert all(torch.equal(t, base[n] if n in expected[name] else ft[n]) for n, t in restored.items()), name
        assert all(restored[a] is restored[src] for a, src in s.tied.items() if a in expected[name]), name
        restore_into(model, base, ft, sel[50], region, "top", 0)
        back = sum(int(((p.detach() == base[n]) & (base[n] != ft[n])).sum()) for n, p in model.named_parameters())
        assert back == sel[50].k, name
        assert all(torch.equal(p.detach(), ft[n]) for n, p in model.named_parameters(remove_duplicate=False)
                   if n not in expected[name]), name


@pytest.mark.parametrize("arch", ARCHS)
def test_restore_layers_touches_only_that_layer(arch, random_model_dir):
    model, base, ft = perturbed(random_model_dir(arch))
    s = model_structure(model)
    prefix = EXPECTED[arch][0]
    layer_1 = {n for n in s.regions["transformer"] if n.startswith(f"{prefix}1.")}
    assert layer_1 and restore_layers(model, base, ft, {1}, s.region("transformer")) == sum(base[n].numel() for n in layer_1)
    for n, p in model.named_parameters(remove_duplicate=False):
        assert torch.equal(p.detach(), base[n] if n in layer_1 else ft[n]), n


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "phi3", "gpt_neox"])
def test_fsdp_shards_each_decoder_layer(arch, random_model_dir, tmp_path):
    path = random_model_dir(arch)
    with torch.device("meta"):  # rank > 0 finds the same units in a model without weights
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    assert decoder_layers(meta)[0] == EXPECTED[arch][0].rstrip(".")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        model = _sharded_model(str(path), "float32", 0, torch.device("cpu"), "fp32_master")
        units = [n for n, m in model.named_modules() if type(m).__name__.startswith("FSDP")]
        assert units == ["", f"{EXPECTED[arch][0]}0", f"{EXPECTED[arch][0]}1"]
        assert model(torch.tensor([[1, 5, 9]])).logits.shape == (1, 3, model.config.vocab_size)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_on_every_projection_attaches_and_merges(arch, random_model_dir):
    model = _load(random_model_dir(arch))
    linear = {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(EXPECTED[arch][0])}
    base = {n: t.clone() for n, t in model.state_dict().items()}
    peft = attach_lora(model, TrainConfig(method="lora", lora_target_modules=[ALL_LINEAR]), seed=0)
    adapted = {n.removeprefix("base_model.model.") for n, m in peft.named_modules() if hasattr(m, "get_delta_weight")}
    assert adapted == linear
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    deltas = {n.removeprefix("base_model.model.") + ".weight": m.get_delta_weight("default").detach()
              for n, m in peft.named_modules() if hasattr(m, "get_delta_weight")}
    merged = merge_lora(peft).state_dict()
    assert merged.keys() == base.keys()
    for n, w in merged.items():
        if n in deltas:
            torch.testing.assert_close(w, base[n] + deltas[n])
        else:
            assert torch.equal(w, base[n]), n


def test_lora_targets_the_model_lacks_are_one_line_naming_what_it_has(random_model_dir):
    phi3 = model_structure(_load(random_model_dir("phi3")))
    llama_list = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # conf/train/lora.yaml
    with pytest.raises(ModelError, match=r"\['q_proj', 'k_proj', 'v_proj', 'gate_proj', 'up_proj'\] are not linear "
                                         r"projections of Phi3ForCausalLM's.*\['o_proj', 'qkv_proj', 'gate_up_proj', "
                                         r"'down_proj'\] \(or \[all-linear\]") as err:
        phi3.lora_targets(llama_list)
    assert "\n" not in str(err.value)
    assert phi3.lora_targets(["qkv_proj", "mlp.down_proj"]) == ["qkv_proj", "mlp.down_proj"]
    neox = model_structure(_load(random_model_dir("gpt_neox")))
    assert neox.lora_targets([ALL_LINEAR]) == ["attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h",
                                               "mlp.dense_4h_to_h"]


def test_all_linear_is_a_command_line_value(compose):
    assert compose("train=lora", "train.lora_target_modules=[all-linear]").train.lora_target_modules == [ALL_LINEAR]


class Toy(PreTrainedModel):
    """A PreTrainedModel with an embedding and a ModuleList of blocks that are not decoder layers (or none)."""
    config_class = PretrainedConfig

    def __init__(self, config, blocks: int):
        super().__init__(config)
        self.embed = nn.Embedding(10, 4)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(4, 4)) for _ in range(blocks))

    def get_input_embeddings(self):
        return self.embed


def test_a_model_whose_structure_is_not_understood_is_one_line():
    with pytest.raises(ModelError, match="^Toy: no decoder layers found") as err:
        model_structure(Toy(PretrainedConfig(), blocks=0))
    with pytest.raises(ModelError, match=r"^Toy: no attention module found in its decoder layer Sequential") as err2:
        model_structure(Toy(PretrainedConfig(), blocks=2))
    assert "\n" not in str(err.value) + str(err2.value)


# The smoke world's size without its pretraining settings (tiny_world's, which model=hf refuses)
SMALL_WORLD = ["data.size=60", "data.world.n_train=500", "data.world.n_test=200", "data.world.n_testood=200",
               "data.world.n_bridge_per_relation=10", "data.world.n_background_per_ood_relation=30", "data.world.pool_scale=0.3",
               "probe.n_map=3", "probe.n_sample=4", "probe.max_new_tokens=12", "kl.curve_points=3", "restore.ratios=[0,5,100]",
               "restore.region=all", "logger.mode=disabled",
               # a random model masters nothing: the KL is read on D_test-0, every fact, at the first generated token
               "kl.level=0", "kl.base_prompt=qa", "kl.answer_within_tokens=null", "kl.position=first_token"]


@pytest.mark.slow
@pytest.mark.parametrize("arch, dtype, train", [("qwen2", "float32", "full"), ("phi3", "bfloat16", "lora"),
                                                ("gemma3", "bfloat16", "full"), ("gpt_neox", "float32", "full")])
def test_model_hf_runs_the_whole_pipeline(arch, dtype, train, random_model_dir, compose, tmp_path):
    """model=hf model.path=<a saved model>: probe, SFT (full or LoRA on every projection), evaluation, KL and
    restoration run, and the run is named after the model's directory."""
    from sft_knowledge.run import execute

    path = random_model_dir(arch, dtype)
    lora = ["train=lora", "train.lora_target_modules=[all-linear]"] if train == "lora" else []
    cfg = compose("model=hf", f"model.path={path}", f"model.dtype={dtype}", *SMALL_WORLD, *lora,
                  f"paths.output_dir={tmp_path}")
    result = execute(cfg)
    assert cfg.model.name == path.name and result.run_key.startswith(f"{path.name}-all-60-") and result.base_model == str(path)
    assert {split: sum(c) for split, c in result.level_counts.items()} == {"train": 500, "test": 200, "testood": 200}
    assert result.n_train_facts == 60 and len(result.train_loss) == 8  # 60 facts in batches of 8
    assert result.kl is not None and result.kl.n == result.level_counts["test"][0] > 0 and result.kl.mean > 0
    points = {p.ratio: p for p in result.restore}
    assert sorted(points) == [0, 5, 100] and points[0].acc == result.acc and points[0].n_restored == 0
    assert points[100].n_restored == points[100].n_region and points[100].change_share == pytest.approx(100.0)
    assert 0 < points[5].n_restored < points[100].n_restored
