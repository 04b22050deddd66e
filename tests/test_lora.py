"""LoRA through peft: only adapters train, drawn from the seed; they are merged into float32 weights, so evaluation, KL
and restoration of a bf16 model see the whole update; with the adapter disabled the model is the base."""
import copy

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from sft_knowledge.cache import Cache
from sft_knowledge.config import Config, TrainConfig, effective
from sft_knowledge.data.facts import KnowledgeBase
from sft_knowledge.decoding import next_token_logits, qa_prompt
from sft_knowledge.models import load
from sft_knowledge.probe import ProbeResult
from sft_knowledge.recipe import BaseModel, KLReference, Mastery, fine_tune, kl_reference
from sft_knowledge.restore import restore_into, select_thresholds
from sft_knowledge.train import SFTJob, attach_lora, float32_compute, merge_lora, sft
from test_train import FACTS, _job, _tok

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _model(tok, hidden: int = 32):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, pad_token_id=tok.pad_token_id))


def test_lora_trains_adapters_only_and_merges_into_q_and_v():
    tok = _tok()
    model = _model(tok)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    prompts = [qa_prompt(f.question) for f in FACTS[:4]]
    base_logits = next_token_logits(model, tok, prompts)
    cfg = TrainConfig(method="lora", epochs=4, lora_rank=4, lora_alpha=8.0)
    tuned = attach_lora(model, cfg, seed=0)
    log = sft(tuned, tok, _job(cfg))
    assert sum(log.loss[-2:]) < sum(log.loss[:2])
    with tuned.disable_adapter():  # the KL base: the same model with its adapter disabled
        assert torch.allclose(next_token_logits(tuned, tok, prompts), base_logits, atol=1e-6)
    adapted = next_token_logits(tuned, tok, prompts)
    merged = merge_lora(tuned)
    assert torch.allclose(next_token_logits(merged, tok, prompts), adapted, atol=1e-4)
    changed = {k for k, v in merged.state_dict().items() if not torch.equal(v, base[k])}
    assert changed == {f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(2) for p in "qv"}


def test_gradient_accumulation_matches_the_whole_batch():
    tok = _tok()
    a, b = _model(tok), _model(tok)
    sft(a, tok, _job(TrainConfig(batch_size=8)))
    sft(b, tok, _job(TrainConfig(batch_size=8), micro_batch_size=2))
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-5), name


def test_the_adapters_initialisation_is_drawn_from_the_seed():
    """The repeats of a cell (seed=0,1,2) start from their own adapters, whatever used the RNG before (loading, probing)."""
    tok = _tok()

    def adapters(seed: int, rng_before: int) -> dict[str, torch.Tensor]:
        model = _model(tok)
        torch.manual_seed(rng_before)
        return {n: p.detach().clone() for n, p in attach_lora(model, TrainConfig(method="lora"), seed).named_parameters() if "lora_" in n}

    first = adapters(seed=0, rng_before=1)
    again, other = adapters(seed=0, rng_before=2), adapters(seed=1, rng_before=1)
    a_names = [n for n in first if "lora_A" in n]
    assert len(a_names) == 4 and all(torch.equal(first[n], again[n]) for n in first)
    assert all(not torch.equal(first[n], other[n]) for n in a_names)
    assert all(not first[n].any() and not other[n].any() for n in first if "lora_B" in n)  # B starts at zero


def test_train_lora_is_the_projects_choice_and_the_dataclass_keeps_the_older_defaults(compose):
    lora = compose("experiment=paper_lora", "model=llama3_8b", "data=entityquestions")
    t = lora.train
    assert (t.method, t.strategy, effective(lora).lr, t.lora_rank, t.lora_alpha, t.lora_dropout) == ("lora", "single", 1e-4, 8, 16.0, 0.0)
    assert t.lora_target_modules == ALL_LINEAR
    assert effective(compose("train=lora", "train.lr=2e-4")).lr == 2e-4
    # The dataclass keeps the older LoRA defaults: they are in every run's key, full fine-tuning's included.
    full = compose("experiment=paper").train
    assert (full.method, full.lr, full.lora_target_modules) == ("full", None, ["q_proj", "v_proj"])


class ComputeDtypes:
    """KL curve stand-in: the dtypes of the model's parameters while the curve measures it."""

    def __call__(self, model, tokenizer, step, total):
        return {"dtypes": sorted({str(p.dtype) for p in model.parameters()})}


def test_a_bf16_lora_is_measured_in_float32_during_sft_and_trains_in_bf16():
    tok = _tok()
    model = _model(tok).to(torch.bfloat16)
    tuned = attach_lora(model, TrainConfig(method="lora"), seed=0)
    log = sft(tuned, tok, _job(TrainConfig(method="lora"), curve=ComputeDtypes()))
    assert {tuple(e["dtypes"]) for e in log.events} == {("torch.float32",)}
    frozen = {p.dtype for n, p in tuned.named_parameters() if "lora_" not in n}
    assert frozen == {torch.bfloat16}  # float32_compute handed the frozen weights back as they were


@pytest.fixture(scope="module")
def bf16_lora(tmp_path_factory):
    """recipe.fine_tune of a bf16 Llama with LoRA on every projection (lr 1e-4, 8 steps), and the KL reference taken
    before it, as run_experiment does: (FineTuned, KLReference, base directory, the adapters' deltas B A alpha / r)."""
    tmp = tmp_path_factory.mktemp("bf16_lora")
    tok = _tok()
    _model(tok).to(torch.bfloat16).save_pretrained(tmp / "base")
    tok.save_pretrained(tmp / "base")
    model, tok = load(tmp / "base", "bfloat16")
    cfg = Config()
    cfg.model.dtype = "bfloat16"
    cfg.train = TrainConfig(method="lora", lr=1e-4, epochs=2, lora_target_modules=ALL_LINEAR)
    cfg.kl.base_prompt, cfg.kl.answer_within_tokens = "qa", None
    base = BaseModel(tmp / "base", {"test": "bf16 llama"}, model, tok, hit=True)
    test_facts = FACTS[:8]
    kb = KnowledgeBase({}, {"train": FACTS, "test": test_facts, "testood": []})
    kl_ref = kl_reference(cfg, kb, ProbeResult(rate={}, level={"test": [4] * len(test_facts)}), base)
    tuned = fine_tune(cfg, Cache(tmp / "cache"), effective(cfg), base, Mastery(None, {"probe": "none"}, True), FACTS,
                      KLReference([], [], torch.empty(0), 10, 0, None))
    [adapter_file] = (tmp / "cache" / "sft").glob("*/adapter_model.safetensors")
    saved = load_file(adapter_file)
    scale = cfg.train.lora_alpha / cfg.train.lora_rank
    deltas = {key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight"):
              (saved[key.replace("lora_A", "lora_B")] @ saved[key]) * scale for key in saved if "lora_A" in key}
    return tuned, kl_ref, tmp / "base", deltas


def test_the_evaluated_bf16_model_holds_the_whole_adapter_update(bf16_lora):
    tuned, _, _, deltas = bf16_lora
    assert len(deltas) == 2 * 7 and all(d.dtype == torch.float32 and d.abs().max() > 0 for d in deltas.values())
    assert tuned.model.dtype == torch.float32
    for name, weight in tuned.state.items():
        base = tuned.base_state[name].float()
        if name not in deltas:
            assert torch.equal(weight, base), name
            continue
        # Up to one float32 rounding of base + delta (half a float32 spacing, at most 2^-24 |w|), and peft's order of
        # the rank-8 sums in B @ A; merged into bf16, most of a delta this size (about 1e-4) was rounded away.
        torch.testing.assert_close(weight - base, deltas[name], rtol=1e-5, atol=2**-24 * weight.abs().max().item())


def test_the_kl_base_of_a_bf16_lora_is_computed_in_float32(bf16_lora):
    """The KL compares the merged float32 model with the base computed in float32: it measures the adapters alone."""
    tuned, kl_ref, base_dir, _ = bf16_lora
    fp32_base, tok = load(base_dir, "float32")
    # the same float32 computation up to the kernels' order of sums; the bf16 base computed in bf16 is 1e-3 away
    torch.testing.assert_close(kl_ref.base_logits, next_token_logits(fp32_base, tok, kl_ref.base_prompts), rtol=0, atol=1e-5)
    assert kl_ref.kl(tuned.model, tok).mean() > 0


def test_restoration_ranks_and_restores_the_float32_merged_weights(bf16_lora):
    tuned, _, base_dir, deltas = bf16_lora
    transformer = tuned.structure.region("transformer")
    region = [n for n in tuned.state if n in transformer.names]
    assert set(region) == set(deltas)  # every projection adapted: the region is the adapted matrices
    base = {n: tuned.base_state[n].float() for n in region}
    n_region = sum(base[n].numel() for n in region)
    changed = sum(int((tuned.state[n] != base[n]).sum()) for n in region)
    assert changed > 0.999 * n_region  # ranked on the whole update (merged into bf16: about 80% of the scalars moved)
    sel = select_thresholds(tuned.base_state, tuned.state, [50, 100], transformer)
    restore_into(tuned.model, tuned.base_state, tuned.state, sel[50], transformer, "top", 0)
    now = {n: tuned.model.get_parameter(n).detach() for n in region}
    assert sum(int(((now[n] == base[n]) & (tuned.state[n] != base[n])).sum()) for n in region) == sel[50].k
    for n in region:  # the rest keep their float32 merged values
        rest = now[n] != base[n]
        assert now[n].dtype == torch.float32 and torch.equal(now[n][rest], tuned.state[n][rest]), n
    restore_into(tuned.model, tuned.base_state, tuned.state, sel[100], transformer, "top", 0)
    fp32_base, _ = load(base_dir, "float32")
    assert all(torch.equal(t, fp32_base.get_parameter(n)) for n, t in tuned.model.named_parameters())


def _update_kept(tok, hidden: int, lr: float, targets: list[str]) -> dict[str, float]:
    """A bf16 Llama (std 0.02) after 8 LoRA steps on FACTS: how much of the adapters' update delta = B A alpha / r each
    way of evaluating it keeps. Merged into bf16 weights (the earlier way) or into float32 ones (merge_lora): the share
    of delta's scalars that move the merged weight and || W_merged - W_base - delta || / || delta ||. Every way, merged
    or unmerged in bf16 compute: the error of the change of the next-token logits relative to the exact change (the
    unmerged adapters and the base, both computed in float32)."""
    model = _model(tok, hidden).to(torch.bfloat16)
    base = {n: t.float() for n, t in model.state_dict().items()}
    cfg = TrainConfig(method="lora", epochs=2, lora_target_modules=targets)
    peft = attach_lora(model, cfg, seed=0)
    sft(peft, tok, SFTJob(FACTS, cfg, lr, 8, 0))
    deltas = {n.removeprefix("base_model.model.") + ".weight": m.get_delta_weight("default").detach().float()
              for n, m in peft.named_modules() if hasattr(m, "get_delta_weight")}
    prompts = [qa_prompt(f.question) for f in FACTS]
    logits = {"unmerged, bf16": next_token_logits(peft, tok, prompts)}
    with peft.disable_adapter():
        base_logits = {"bf16": next_token_logits(peft, tok, prompts)}
    with float32_compute(peft):
        exact = next_token_logits(peft, tok, prompts)
        with peft.disable_adapter():
            base_logits["fp32"] = next_token_logits(peft, tok, prompts)
    exact -= base_logits["fp32"]
    merged = {"bf16 merge": copy.deepcopy(peft).merge_and_unload()}
    merged["fp32 merge"] = merge_lora(peft)
    out = {"median |delta|": float(torch.cat([d.abs().flatten() for d in deltas.values()]).median())}
    for way, m in merged.items():
        weights = {n: t.float() for n, t in m.state_dict().items()}
        out[f"{way}: moved"] = sum(int((weights[n] != base[n]).sum()) for n in deltas) / sum(d.numel() for d in deltas.values())
        error = sum(float((weights[n] - base[n] - d).square().sum()) for n, d in deltas.items())
        out[f"{way}: weight error"] = (error / sum(float(d.square().sum()) for d in deltas.values())) ** 0.5
        logits[way] = next_token_logits(m, tok, prompts)
    for way, lg in logits.items():  # against the base computed in the way's precision
        shift = lg - base_logits["fp32" if way == "fp32 merge" else "bf16"]
        out[f"{way}: logit error"] = float((shift - exact).norm() / exact.norm())
    return out


@pytest.mark.parametrize("hidden", [64, pytest.param(512, marks=pytest.mark.slow)])
@pytest.mark.parametrize("lr, targets", [(1e-5, ["q_proj", "v_proj"]), (1e-4, ALL_LINEAR)], ids=["before", "train=lora"])
def test_merging_into_bf16_drops_much_of_the_update_and_float32_keeps_it(hidden, lr, targets):
    """The figures of docs/paper-setting.md (LoRA), printed (pytest -s)."""
    kept = _update_kept(_tok(), hidden, lr, targets)
    print(f"\nhidden {hidden}, lr {lr:g}, {len(targets)} targets: " + ", ".join(f"{k} {v:.4g}" for k, v in kept.items()))
    assert kept["fp32 merge: moved"] > 0.999 and kept["fp32 merge: weight error"] < 1e-3 and kept["fp32 merge: logit error"] < 1e-2
    assert kept["bf16 merge: weight error"] > 0.1 and kept["unmerged, bf16: logit error"] > 0.05


@pytest.mark.slow
def test_lora_end_to_end_restores_merged_weights(cli, smoke_cache, tmp_path):
    import json

    cli("train=lora", "train.lr=5e-3", "train.lora_target_modules=[q_proj,v_proj]", output_dir=tmp_path, cache_dir=smoke_cache)
    [r] = [json.loads(p.read_text()) for p in tmp_path.glob("runs/*/results.json")]
    assert r["config"]["train"]["method"] == "lora" and r["cache_hits"]["probe"] is True
    assert [x["ratio"] for x in r["restore"]] == [0, 5, 20, 60]
    # Only the adapted matrices (q_proj, v_proj) changed: 12.5% of the region. Restoring 5% touches only them;
    # 20% holds every changed scalar (the rest of the 20% are unchanged ties, restored to what they already are).
    restored = {name.split(".")[-2] for name, n in r["restore"][1]["per_tensor"].items() if n}
    assert restored == {"q_proj", "v_proj"}
    assert r["update_share"]["20"] == 100.0
    assert r["kl_level"] == 4 and r["kl"]["mean"] > 0
