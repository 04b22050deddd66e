"""train.strategy=fsdp: the same SFT with the model sharded over processes (gloo on the CPU, NCCL on GPUs)."""
import json
import os
import signal

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from sft_knowledge.config import ConfigError
from sft_knowledge.data.facts import Fact
from sft_knowledge.decoding import next_token_logits, qa_prompt
from sft_knowledge.fsdp import sft_fsdp
from sft_knowledge.recipe import KLReference
from sft_knowledge.pretrain import train_tokenizer
from sft_knowledge.config import CheckpointConfig, TrainConfig
from sft_knowledge.train import SFTJob, latest_checkpoint, sft

# 21 facts: global batches of 8, 8 and 5; over two ranks with micro-batches of 2 the last one leaves rank 1 a
# micro-batch short, which it must still run (zero-weighted) for FSDP's collectives.
FACTS = [Fact(f"Person{i}", "P19", f"Town{i % 4}", f"Where was Person{i} born?") for i in range(21)]


def _base(path):
    """A randomly initialised two-layer Llama and its tokenizer, saved where the FSDP workers read them."""
    tok = train_tokenizer([f"{f.question} {f.object}." for f in FACTS], 200)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=tok.pad_token_id))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


def _job(cfg: TrainConfig, micro_batch_size: int | None = None, **kw) -> SFTJob:
    """SFT of FACTS at lr 1e-2, seed 0; the whole batch in one forward pass unless `micro_batch_size` is given."""
    return SFTJob(FACTS, cfg, 1e-2, micro_batch_size or cfg.batch_size, 0, **kw)


@pytest.mark.slow  # a subprocess or spawned processes
@pytest.mark.skipif(0 < torch.cuda.device_count() < 2, reason="two processes need two GPUs on a GPU machine")
def test_two_gloo_processes_give_the_single_process_weights(tmp_path):
    model, tok = _base(tmp_path / "base")
    prompts = [qa_prompt(f.question) for f in FACTS[:6]]
    curve = KLReference(prompts, prompts, next_token_logits(model, tok, prompts), top_k=5, curve_points=3, answer_filter=None).curve
    cfg = TrainConfig(batch_size=8, strategy="fsdp", fsdp_processes=2)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    single = sft(model, tok, _job(cfg, curve=curve))
    # Micro-batches of 2 and gradient checkpointing (the 70B preset's) change how, not what, is computed.
    sharded = sft_fsdp(_job(cfg, micro_batch_size=2, gradient_checkpointing=True, curve=curve), tmp_path / "base", "float32", tok,
                       tmp_path / "ft")
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "ft")

    assert sharded.steps == single.steps == 3 and sharded.lr == single.lr
    assert [e["step"] for e in sharded.events] == [e["step"] for e in single.events] == [1, 2, 3]
    # float32 and the same sums in another order (two ranks, micro-batches, reduce-scatter): measured at most 6e-7
    # apart on the weights, which SFT moved by 2e-2; dropping one example per rank and step moved them 2e-3..4e-2.
    assert sharded.loss == pytest.approx(single.loss, rel=1e-5)
    assert [e["kl_mean"] for e in sharded.events] == pytest.approx([e["kl_mean"] for e in single.events], rel=1e-4, abs=1e-6)
    got = tuned.state_dict()
    for name, want in model.state_dict().items():
        torch.testing.assert_close(got[name], want, atol=1e-5, rtol=1e-4, msg=name)
        assert (want - base[name]).abs().max() > 1e-3, name  # every tensor moved: not two untrained models compared


class SignalAtStep:
    """On one rank, after one step: the signal SLURM or submitit sends before a time-out or preemption, to that
    worker and to the cell's main process (picklable, so the spawned workers can run it)."""

    def __init__(self, step: int, rank: int):
        self.step, self.rank = step, rank

    def __call__(self, model, tokenizer, step, total):
        if step == self.step and torch.distributed.get_rank() == self.rank:
            os.kill(os.getpid(), signal.SIGUSR2)
            os.kill(os.getppid(), signal.SIGUSR2)
        return {"seen": step}


class Requeued(Exception):
    """Stands for submitit's handler of SIGUSR2, which requeues the job and exits."""


@pytest.mark.slow  # a subprocess or spawned processes
@pytest.mark.skipif(0 < torch.cuda.device_count() < 2, reason="two processes need two GPUs on a GPU machine")
def test_a_signalled_fsdp_sft_saves_every_shard_and_resumes_to_the_same_weights(tmp_path):
    _, tok = _base(tmp_path / "base")
    cfg = TrainConfig(batch_size=4, strategy="fsdp", fsdp_processes=2)  # 6 steps
    reference = sft_fsdp(_job(cfg, curve=SignalAtStep(0, 0)), tmp_path / "base", "float32", tok, tmp_path / "reference")

    previous = signal.signal(signal.SIGUSR2, lambda *a: (_ for _ in ()).throw(Requeued()))
    try:  # rank 1 alone is signalled after step 2: both ranks must save at step 2, then stop
        with pytest.raises(Requeued):
            sft_fsdp(_job(cfg, curve=SignalAtStep(2, 1), checkpoint_dir=tmp_path / "ckpt", checkpoint=CheckpointConfig(every=0)),
                     tmp_path / "base", "float32", tok, tmp_path / "ft")
    finally:
        signal.signal(signal.SIGUSR2, previous)
    saved = latest_checkpoint(tmp_path / "ckpt")
    assert torch.load(saved / "state.pt")["step"] == 2 and sorted(p.name for p in saved.glob("rng-*")) == ["rng-0.pt", "rng-1.pt"]
    assert not (tmp_path / "ft" / "train_log.json").exists()

    resumed = sft_fsdp(_job(cfg, curve=SignalAtStep(0, 0), checkpoint_dir=tmp_path / "ckpt"), tmp_path / "base", "float32", tok,
                       tmp_path / "ft")
    assert resumed.resumed_at == [2] and reference.resumed_at == []
    assert resumed.loss == reference.loss and resumed.events == reference.events and resumed.steps == 6
    want = AutoModelForCausalLM.from_pretrained(tmp_path / "reference").state_dict()
    for name, got in AutoModelForCausalLM.from_pretrained(tmp_path / "ft").state_dict().items():
        assert torch.equal(got, want[name]), name


def test_the_llama_models_pick_fsdp_the_70b_with_cpu_offload_and_the_command_line_overrides_it(compose):
    # fp32 master weights and AdamW state (16 bytes per parameter) fit no single 80 GB GPU from 7B up, 70B no 8 x 80 GB.
    picked = [(c.train.strategy, c.train.fsdp_cpu_offload, c.train.precision)
              for c in (compose(f"model={m}") for m in ("llama2_7b", "llama3_8b", "llama2_13b", "llama3_70b"))]
    assert picked == [("fsdp", False, "fp32_master")] * 3 + [("fsdp", True, "fp32_master")]
    assert compose("model=llama3_70b", "train=full").train.strategy == "single"


@pytest.mark.skipif(torch.cuda.device_count() > 0, reason="checks the CPU machine's message")
def test_fsdp_without_gpus_or_a_process_count_says_what_to_set(tmp_path):
    with pytest.raises(ConfigError, match="needs train.fsdp_processes"):
        sft_fsdp(_job(TrainConfig(strategy="fsdp")), tmp_path, "float32", None, tmp_path)


@pytest.mark.slow  # a subprocess or spawned processes
@pytest.mark.skipif(torch.cuda.device_count() == 0, reason="NCCL and bf16 FSDP need a GPU (two or more to shard over)")
def test_gpus_bf16_match_one_process(tmp_path):
    model, tok = _base(tmp_path / "base")
    cfg = TrainConfig(batch_size=8, strategy="fsdp", fsdp_processes=min(2, torch.cuda.device_count()))
    model = model.to(torch.bfloat16).cuda()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    single = sft(model, tok, _job(cfg))
    sharded = sft_fsdp(_job(cfg), tmp_path / "base", "bfloat16", tok, tmp_path / "ft")
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "ft", dtype=torch.bfloat16).cuda()
    # bf16 keeps 8 bits of mantissa, so the same sums in another order differ by its ulps, and Adam can turn a
    # near-zero gradient's sign: compare on average, against how far SFT moved the weights, not element by element.
    assert sharded.loss == pytest.approx(single.loss, rel=2e-2)
    got = tuned.state_dict()
    for name, want in model.state_dict().items():
        apart, moved = (got[name] - want).float().abs().mean(), (want - base[name]).float().abs().mean()
        assert apart < 0.1 * moved, name


@pytest.mark.slow
def test_the_pipeline_with_fsdp_in_a_submitit_job_gives_the_single_process_results(cli, smoke_cache, tmp_path):
    # As on SLURM, the cell runs in a submitit job (here a local one: submitit_local) and spawns its SFT processes there.
    cli("-m", "hydra/launcher=submitit_local", "train=fsdp", "train.fsdp_processes=2", output_dir=tmp_path / "fsdp",
            cache_dir=smoke_cache)
    cli(output_dir=tmp_path / "single", cache_dir=smoke_cache)  # the session fixture fine-tuned this one
    [fsdp], [single] = ([json.loads(p.read_text()) for p in (tmp_path / d).glob("runs/*/results.json")] for d in ("fsdp", "single"))
    assert fsdp["cache_hits"]["sft"] is False and fsdp["config"]["train"]["strategy"] == "fsdp"
    assert fsdp["train_loss"] == pytest.approx(single["train_loss"], rel=1e-5)
    assert [p["kl_mean"] for p in fsdp["kl_curve"]] == pytest.approx([p["kl_mean"] for p in single["kl_curve"]], rel=1e-4)
    assert fsdp["kl"]["mean"] == pytest.approx(single["kl"]["mean"], rel=1e-4)
    # Greedy answers of weights 1e-6 apart can still flip on a near-tie: accuracies within a point.
    assert fsdp["acc_test"] == pytest.approx(single["acc_test"], abs=1) and fsdp["acc_testood"] == pytest.approx(single["acc_testood"], abs=1)
