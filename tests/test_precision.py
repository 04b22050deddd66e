"""train.precision: fp32 master weights under bf16 compute (the default) against AdamW on the bf16 weights (`pure`).

At lr 1e-5 an Adam step (about lr per scalar) is below half a bf16 ulp of every |w| above about 0.003, so stepping
bf16 weights drops most updates; fp32 masters keep them and the saved bf16 model is their rounding."""
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from sft_knowledge.config import ConfigError, validate
from sft_knowledge.data.facts import Fact
from sft_knowledge.fsdp import sft_fsdp
from sft_knowledge.pretrain import train_tokenizer
from sft_knowledge.restore import select_thresholds
from sft_knowledge.structure import model_structure
from sft_knowledge.config import TrainConfig
from sft_knowledge.train import MasterWeights, SFTJob, _batch, cosine_lr, sft, sft_examples

# 32 facts, 2 epochs of batches of 8: 8 optimizer steps.
FACTS = [Fact(f"Person{i}", "P19", f"Town{i % 4}", f"Where was Person{i} born?") for i in range(32)]
LR, CFG = 1e-5, dict(epochs=2, batch_size=8)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([f"{f.question} {f.object}." for f in FACTS], 200)


def _model(tok) -> LlamaForCausalLM:
    """A small Llama, randomly initialised (std 0.02, norms at 1.0) and cast to bf16 as models.load would give it."""
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, pad_token_id=tok.pad_token_id)).to(torch.bfloat16)


class LastMasters:
    """Curve: the trainable parameters as the optimizer left them after the last step (fp32 masters, or bf16)."""

    def __init__(self):
        self.weights = {}

    def __call__(self, model, tokenizer, step, total):
        if step == total:
            self.weights = {n: p.detach().clone() for n, p in model.named_parameters()}


def _fine_tune(tok, precision: str):
    model = _model(tok)
    base = {n: t.clone() for n, t in model.state_dict().items()}
    masters = LastMasters()
    log = sft(model, tok, SFTJob(FACTS, TrainConfig(precision=precision, **CFG), LR, CFG["batch_size"], 0, curve=masters))
    return base, model.state_dict(), masters.weights, log


@pytest.fixture(scope="module")
def runs(tok):
    return {precision: _fine_tune(tok, precision) for precision in ("fp32_master", "pure")}


def _transformer(tok):
    return model_structure(_model(tok)).region("transformer")


def _changed_share(base, ft, names) -> float:
    return sum(int((ft[n] != base[n]).sum()) for n in names) / sum(base[n].numel() for n in names)


def test_fp32_master_changes_far_more_scalars_than_pure(runs, tok):
    base, _, _, _ = runs["pure"]
    matrices = sorted(_transformer(tok).names & base.keys())
    shares = {p: _changed_share(base, ft, matrices) for p, (_, ft, _, _) in runs.items()}
    assert shares["fp32_master"] > 2 * shares["pure"] > 0, shares
    # Pure bf16 moves only the smallest weights. Within 8 steps Adam's |m_hat| / sqrt(v_hat) is at most 1.03
    # (Cauchy-Schwarz: 0.1 / sqrt(0.001) * sqrt(sum_k<8 (0.81 / 0.999)^k) * sqrt(1 - 0.999^8) / (1 - 0.9^8)), so a step is
    # at most 1.03e-5, below half the bf16 ulp (2^-16 = 1.5e-5) of every |w| >= 2^-8 except a step down from 2^-8
    # itself. The fp32 masters also move larger weights, whose summed steps outgrow half an ulp.
    _, pure_ft, _, _ = runs["pure"]
    _, master_ft, _, _ = runs["fp32_master"]
    for n in matrices:
        assert base[n][pure_ft[n] != base[n]].abs().max() <= 2**-8, n
    assert max(base[n][master_ft[n] != base[n]].abs().max() for n in matrices) > 2**-8


def test_norm_weights_move_only_in_the_fp32_masters(runs):
    norms = [n for n in runs["pure"][0] if "norm" in n]
    assert len(norms) == 5  # two per layer and the final one
    for n in norms:
        base, pure_last = runs["pure"][0][n], runs["pure"][2][n]
        master_last = runs["fp32_master"][2][n]
        assert torch.equal(pure_last, base), n  # 1.0 +- 1e-5 rounds back to 1.0 in bf16 at every step
        assert master_last.dtype == torch.float32 and (master_last != base.float()).float().mean() > 0.9, n
        # 8 steps of 1e-5 are below half an ulp of 1.0 in bf16 (2**-8): the saved norms are still 1.0 under both.
        assert torch.equal(runs["fp32_master"][1][n], base), n


def test_saved_weights_are_the_fp32_masters_rounded_to_the_models_dtype(runs):
    _, ft, masters, _ = runs["fp32_master"]
    assert all(m.dtype == torch.float32 for m in masters.values())
    rounded_away = 0
    for n, m in masters.items():
        assert ft[n].dtype == torch.bfloat16 and torch.equal(ft[n], m.to(torch.bfloat16)), n
        rounded_away += int((ft[n].float() != m).sum())
    assert rounded_away > 0  # the masters hold more than the bf16 weights: the comparison is not of equal copies


def test_pure_is_adamw_on_the_bf16_weights(tok, runs):
    """`pure` is SFT as it was before train.precision: the same loop written out, stepping the bf16 weights."""
    model = _model(tok)
    torch.manual_seed(0)
    examples = sft_examples(tok, FACTS, TrainConfig())
    rng, order = random.Random(0), []
    for _ in range(CFG["epochs"]):
        epoch = list(range(len(examples)))
        rng.shuffle(epoch)
        order += epoch
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    losses, total = [], len(order) // CFG["batch_size"]
    model.train()
    for step in range(total):
        chunk = [examples[i] for i in order[step * CFG["batch_size"] : (step + 1) * CFG["batch_size"]]]
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, total, LR, 0)
        loss = model(**_batch(chunk, tok.pad_token_id)).loss * 1.0
        loss.backward()
        losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    _, pure_ft, _, pure_log = runs["pure"]
    assert pure_log.loss == losses
    for n, t in model.state_dict().items():
        assert t.dtype == torch.bfloat16 and torch.equal(pure_ft[n], t), n


def test_update_share_of_the_top_1_percent_is_lower_under_fp32_master(runs, tok):
    """Table 3's statistic: the share of the summed relative change held by the top 1% (and 20%) of scalars. Pure bf16
    concentrates the update on the few small weights it can move; the paper's 70.6-71.1% needs the masters."""
    shares = {}
    for precision, (base, ft, _, _) in runs.items():
        selections = select_thresholds(base, ft, [1, 20], _transformer(tok))
        shares[precision] = (selections[1].change_share, selections[20].change_share)
    assert shares["fp32_master"][0] < shares["pure"][0] and shares["fp32_master"][1] < shares["pure"][1], shares


def test_master_weights_leave_float32_models_and_lora_adapters_alone(tok):
    model = _model(tok).float()
    master = MasterWeights(model, "fp32_master")
    assert master.params == [] and master.dtype is None
    frozen = _model(tok)
    for n, p in frozen.named_parameters():
        p.requires_grad_("q_proj" in n)  # only q_proj trains, as under LoRA: the frozen bf16 weights stay bf16
    master = MasterWeights(frozen, "fp32_master")
    assert master.dtype == torch.bfloat16 and len(master.params) == 2
    assert {n: p.dtype for n, p in frozen.named_parameters() if p.dtype == torch.float32}.keys() == {
        n for n, p in frozen.named_parameters() if "q_proj" in n}
    assert MasterWeights(_model(tok), "pure").params == []


def test_precision_is_validated_and_llama3_8b_defaults_to_fp32_masters_over_four_gpus(compose):
    cfg = compose("model=llama3_8b")
    validate(cfg)
    assert (cfg.train.precision, cfg.train.strategy, cfg.resources.gpus, cfg.model.n_gpus, cfg.model.dtype) == (
        "fp32_master", "fsdp", 4, 4, "bfloat16")
    assert compose("model=llama3_8b", "train.precision=pure").train.precision == "pure"
    with pytest.raises(ConfigError, match="^train.precision='fp16' is not allowed: expected fp32_master, pure$"):
        validate(compose("train.precision=fp16"))


class ComputeDtypes:
    """Curve stand-in run by every FSDP worker after each step: the dtype of the sharded parameters AdamW steps and the
    dtype the weights have while a forward pass uses them (picklable, for the spawned workers)."""

    def __call__(self, model, tokenizer, step, total):
        seen = []
        proj = model.model.layers[0].self_attn.q_proj
        hook = proj.register_forward_pre_hook(lambda module, args: seen.append(str(module.weight.dtype)))
        with torch.no_grad():
            model(input_ids=torch.tensor([[1, 2, 3]]))
        hook.remove()
        return {"sharded": str(proj.weight.dtype), "compute": seen[0]}


@pytest.mark.slow  # a subprocess or spawned processes
@pytest.mark.skipif(torch.cuda.device_count() > 0, reason="two gloo processes on the CPU")
def test_fsdp_fp32_master_shards_fp32_computes_bf16_and_saves_bf16(tok, runs, tmp_path):
    _model(tok).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    job = SFTJob(FACTS, TrainConfig(strategy="fsdp", fsdp_processes=2, **CFG), LR, CFG["batch_size"], 0, curve=ComputeDtypes())
    log = sft_fsdp(job, tmp_path / "base", "bfloat16", tok, tmp_path / "ft")
    assert {(e["sharded"], e["compute"]) for e in log.events} == {("torch.float32", "torch.bfloat16")}
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "ft", dtype="auto")
    assert tuned.dtype == torch.bfloat16  # config.json says bfloat16 and the tensors are bf16
    base, single_ft, _, single_log = runs["fp32_master"]
    _, pure_ft, _, _ = runs["pure"]
    ft = tuned.state_dict()
    matrices = sorted(_transformer(tok).names & base.keys())
    # Another order of sums and FSDP's bf16 activations in place of autocast's: the same scalars flip, give or take
    # those whose masters end near a bf16 rounding boundary (measured: 99.9% agree, shares 0.04% apart, losses 2e-4).
    sharded, single, pure = (_changed_share(base, w, matrices) for w in (ft, single_ft, pure_ft))
    assert sharded == pytest.approx(single, rel=0.05) and sharded > 2 * pure
    agree = sum(int(((ft[n] != base[n]) == (single_ft[n] != base[n])).sum()) for n in matrices) / sum(base[n].numel() for n in matrices)
    assert agree > 0.98
    assert log.loss == pytest.approx(single_log.loss, rel=2e-3)
