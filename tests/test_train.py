"""SFT: loss on answer tokens only, the paper's cosine schedule (and pretraining's), and a loss that goes down."""
import math
import os
import random
import signal
from dataclasses import asdict

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader
from transformers import LlamaConfig, LlamaForCausalLM

from sft_knowledge.data.facts import Fact
from sft_knowledge.decoding import encode_examples, qa_prompt
from sft_knowledge.pretrain import train_tokenizer
from sft_knowledge.config import CheckpointConfig, TrainConfig, run_key, semantic
from sft_knowledge.train import IGNORE, LENGTH_WINDOW, SFTJob, _batch, cosine_lr, example_order, latest_checkpoint, sft

FACTS = [Fact(f"Person{i}", "P19", f"Town{i % 4}", f"Where was Person{i} born?") for i in range(32)]


def _tok():
    return train_tokenizer([f"{f.question} {f.object}." for f in FACTS], 200)


def test_labels_cover_answer_and_eos_only():
    tok = _tok()
    [(p, t)] = encode_examples(tok, [qa_prompt(FACTS[0].question)], [FACTS[0].object])
    batch = _batch([(p, t), (p[:3], t)], tok.pad_token_id)
    assert batch["labels"][0].tolist() == [IGNORE] * len(p) + t
    assert t[-1] == tok.eos_token_id
    assert batch["attention_mask"][1].tolist() == [1] * (3 + len(t)) + [0] * (len(p) - 3)
    assert batch["labels"][1, 3 + len(t):].eq(IGNORE).all()


def test_cosine_schedule():
    assert cosine_lr(0, 10, 1.0, 0) == 1.0
    assert math.isclose(cosine_lr(5, 10, 1.0, 0), 0.5)
    assert math.isclose(cosine_lr(1, 10, 1.0, 2), 1.0) and math.isclose(cosine_lr(0, 10, 1.0, 2), 0.5)
    # Pretraining's: the cosine runs from step 0 over all steps and the warm-up ramp scales it.
    assert cosine_lr(0, 10, 1.0, 4, ramp_over_decay=True) == 0.25 and math.isclose(cosine_lr(5, 10, 1.0, 4, ramp_over_decay=True), 0.5)


@pytest.mark.parametrize("steps, warmup", [(1, 1), (7, 3), (100, 100), (330, 100), (1000, 100), (3791, 250)])
def test_pretraining_keeps_its_own_schedule_bit_for_bit(steps, warmup):
    # pretrain.py's schedule as it was written there, before it moved into cosine_lr: the tiny_world model must not change.
    def pretrain_lr(s, lr=6e-3):
        return lr * min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps))

    assert [cosine_lr(s, steps, 6e-3, warmup, ramp_over_decay=True) for s in range(steps)] == [pretrain_lr(s) for s in range(steps)]


def _job(cfg: TrainConfig, micro_batch_size: int | None = None, **kw) -> SFTJob:
    """SFT of FACTS at lr 1e-2, seed 0; the whole batch in one forward pass unless `micro_batch_size` is given."""
    return SFTJob(FACTS, cfg, 1e-2, micro_batch_size or cfg.batch_size, 0, **kw)


def test_sft_lowers_the_loss_and_reports_every_step():
    torch.manual_seed(0)
    tok = _tok()
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=tok.pad_token_id))
    seen = []
    log = sft(model, tok, _job(TrainConfig(epochs=8, batch_size=8), curve=lambda m, t, step, total: seen.append((m, step, total))))
    assert log.steps == 32 and len(log.loss) == 32 and seen == [(model, s, 32) for s in range(1, 33)]
    assert sum(log.loss[-4:]) < 0.5 * sum(log.loss[:4])
    assert log.lr[0] == 1e-2 and log.lr[-1] < 1e-4


def _model(tok, dtype=torch.float32):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, pad_token_id=tok.pad_token_id)).to(dtype)


class Requeued(Exception):
    """Stands for submitit's handler of SIGUSR2, which checkpoints the job, requeues it and exits."""


# bfloat16: under train.precision=fp32_master the checkpoint holds the fp32 masters and their AdamW state, so a
# resumed run continues from exactly those, not from the bf16 weights it would save.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sft_saves_on_signal_and_resumes_to_the_same_result(tmp_path, dtype):
    tok, cfg = _tok(), TrainConfig(epochs=2, batch_size=8)  # 8 steps
    reference_model = _model(tok, dtype)
    reference = sft(reference_model, tok, _job(cfg, curve=lambda model, tok, step, total: {"seen": step}))

    previous = signal.signal(signal.SIGUSR2, lambda *a: (_ for _ in ()).throw(Requeued()))
    try:
        def preempt_at_step_3(model, tok, step, total):
            if step == 3:
                os.kill(os.getpid(), signal.SIGUSR2)  # arrives mid-run; SFT finishes the step, saves, then passes it on
            return {"seen": step}

        with pytest.raises(Requeued):
            sft(_model(tok, dtype), tok, _job(cfg, curve=preempt_at_step_3, checkpoint_dir=tmp_path, checkpoint=CheckpointConfig(every=0)))
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert torch.load(latest_checkpoint(tmp_path) / "state.pt")["step"] == 3
    saved = FileSystemReader(latest_checkpoint(tmp_path)).read_metadata().state_dict_metadata
    assert {m.properties.dtype for k, m in saved.items() if k.startswith("model.") or "exp_avg" in k} == {torch.float32}

    model = _model(tok, dtype)  # the requeued job starts again from the base model
    resumed = sft(model, tok, _job(cfg, curve=lambda model, tok, step, total: {"seen": step}, checkpoint_dir=tmp_path))
    assert resumed.resumed_at == [3] and reference.resumed_at == []
    assert resumed.loss == reference.loss and resumed.lr == reference.lr and resumed.events == reference.events
    for (name, a), b in zip(reference_model.state_dict().items(), model.state_dict().values()):
        assert a.dtype == dtype and torch.equal(a, b), name


def test_sft_checkpoints_periodically(tmp_path):
    tok = _tok()
    sft(_model(tok), tok, _job(TrainConfig(epochs=2, batch_size=8), checkpoint_dir=tmp_path, checkpoint=CheckpointConfig(every=3)))
    assert torch.load(latest_checkpoint(tmp_path) / "state.pt")["step"] == 6  # saved at 3 and 6; the last step (8) needs none
    assert [p.name for p in tmp_path.glob("step-*")] == ["step-000006"]  # step 3's removed once 6 was complete


def test_example_order_is_a_seeded_permutation_per_epoch_as_before():
    lengths = list(range(30))
    order = example_order(lengths, TrainConfig(epochs=2.5, batch_size=8), seed=3)
    rng, expected = random.Random(3), []
    for _ in range(3):
        epoch = list(range(30))
        rng.shuffle(epoch)
        expected += epoch
    assert order == expected[:75]


def test_group_by_length_batches_similar_lengths_and_keeps_the_short_batch_last():
    rng = random.Random(0)
    lengths = [rng.randint(5, 40) for _ in range(LENGTH_WINDOW * 8 + 13)]  # a full window, then 13: one full batch and 5
    cfg = TrainConfig(batch_size=8, group_by_length=True)
    order = example_order(lengths, cfg, seed=1)
    assert sorted(order) == list(range(len(lengths)))
    batches = [order[b : b + 8] for b in range(0, len(order), 8)]
    assert len(batches[-1]) == 5  # the short batch is the last step
    for batch in batches:
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    padded = lambda o: sum(8 * max(lengths[i] for i in o[b : b + 8]) for b in range(0, len(o), 8))  # noqa: E731
    random_order = example_order(lengths, TrainConfig(batch_size=8), seed=1)
    assert padded(order) < 0.8 * padded(random_order)
    # the batches are not in length order: the first window's 50 batches come shuffled
    firsts = [lengths[b[0]] for b in batches[:LENGTH_WINDOW]]
    assert firsts != sorted(firsts, reverse=True)


def test_an_option_added_later_leaves_keys_unchanged_at_its_old_value(compose):
    off, on = compose("experiment=smoke"), compose("experiment=smoke", "train.group_by_length=true")
    assert "group_by_length" not in semantic(off)["train"] and semantic(on)["train"]["group_by_length"] is True
    assert "group_by_length" in asdict(off.train) and run_key(off) != run_key(on)
    # SFT's key takes `train` from semantic(): for a config without the option it is what it was before it existed
    assert semantic(off)["train"] == {k: v for k, v in asdict(off.train).items() if k != "group_by_length"}


def test_app_a_answer_format_is_the_default_and_the_format_before_keeps_its_keys(compose):
    paper, before = compose("experiment=smoke"), compose("experiment=smoke", "train.space_before_eos=false")
    assert paper.train.space_before_eos is True and semantic(paper)["train"]["space_before_eos"] is True
    # SFT entries and runs made before the option existed trained ` {a}{eos}`: under `false` their keys are unchanged
    assert semantic(before)["train"] == {k: v for k, v in asdict(before.train).items() if k not in ("space_before_eos", "group_by_length")}
    assert run_key(paper) != run_key(before)
