"""SFT throughput: `train.sft` against a plain Hugging Face `Trainer` on the same model, data and schedule, same run.

    python benchmarks/bench_sft.py [--quick] [--facts 1920] [--repeats 5]

Workload: a randomly initialised Llama of tiny_world's shape (config.PretrainConfig: 4 layers, hidden 128) with a BPE
tokenizer trained on the QA texts, fine-tuned for 1 epoch on `--facts` facts of the embedded world (the paper's largest
size, 1,920): prompt `<|question|> q <|answer|>`, target ` answer <eos>` (train.sft_examples, App. A), loss on the target
tokens, batch 8, lr 1e-3 (tiny_world's), cosine schedule without warm-up, AdamW, gradient clipping at 1.0.
Ours: `sft(model, tokenizer, SFTJob(...))`. Baseline: `Trainer` with the same encoded examples, right-padded by
`DataCollatorForSeq2Seq` (labels -100 on the prompt and padding), its cosine schedule, its random order.
Both start from the same initial weights, in this process, in alternating order; the time includes each one's set-up
(the Trainer's construction, our encoding). Tokens/s counts the examples' real (non-padding) tokens.

Padding waste is measured on the batches each method actually builds: padded positions / all positions. The paper
trains in random order (our default), where what bounds the waste is the spread of lengths within 8 random examples;
`train.group_by_length=true` (windows of 50 batches sorted by length, batches shuffled) is measured too, as "ours,
grouped", against the same Trainer in random order. Writes benchmarks/results/sft.json (--quick: results/quick/sft.json).
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time

from common import alternating, median, row, save

import torch
from transformers import DataCollatorForSeq2Seq, LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from sft_knowledge import train
from sft_knowledge.config import PretrainConfig, SyntheticWorldConfig, TrainConfig
from sft_knowledge.data.synthetic import build_world
from sft_knowledge.decoding import qa_prompt, qa_text
from sft_knowledge.pretrain import train_tokenizer

LR, BATCH = 1e-3, 8


def tiny_world_llama(tokenizer) -> LlamaForCausalLM:
    p = PretrainConfig()
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=p.hidden_size, intermediate_size=p.intermediate_size,
        num_hidden_layers=p.num_layers, num_attention_heads=p.num_heads, num_key_value_heads=p.num_heads,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))


class PaddingMeter:
    """Counts the real and all positions of the batches a collate function builds."""

    def __init__(self, collate):
        self.collate, self.real, self.total = collate, 0, 0

    def __call__(self, *args, **kwargs):
        batch = self.collate(*args, **kwargs)
        self.real += int(batch["attention_mask"].sum())
        self.total += batch["attention_mask"].numel()
        return batch

    @property
    def waste(self) -> float:
        return 1 - self.real / self.total


def ours(model, tokenizer, facts, group_by_length: bool = False) -> tuple[float, float]:
    """(seconds, padding waste) of train.sft."""
    meter = PaddingMeter(train._batch)
    train._batch = meter  # sft looks _batch up at each step: every batch it builds passes the meter
    try:
        start = time.perf_counter()
        train.sft(model, tokenizer, train.SFTJob(facts, TrainConfig(batch_size=BATCH, group_by_length=group_by_length), LR, BATCH, seed=0))
        return time.perf_counter() - start, meter.waste
    finally:
        train._batch = meter.collate


def baseline(model, tokenizer, facts, work: str) -> tuple[float, float]:
    """(seconds, padding waste) of a plain Trainer on the same examples and schedule."""
    start = time.perf_counter()
    encoded = train.sft_examples(tokenizer, facts, TrainConfig())
    data = [{"input_ids": p + t, "attention_mask": [1] * (len(p) + len(t)), "labels": [-100] * len(p) + t} for p, t in encoded]
    tokenizer.padding_side = "right"  # as our batches; the tokenizer pads prompts on the left for generation
    meter = PaddingMeter(DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    args = TrainingArguments(output_dir=work, per_device_train_batch_size=BATCH, learning_rate=LR, num_train_epochs=1,
                             lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                             optim="adamw_torch", seed=0, save_strategy="no", report_to=[], logging_strategy="no",
                             disable_tqdm=True, use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False)
    Trainer(model=model, args=args, train_dataset=data, data_collator=meter).train()
    tokenizer.padding_side = "left"
    return time.perf_counter() - start, meter.waste


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="240 facts, 1 repeat (seconds)")
    parser.add_argument("--facts", type=int, default=None, help="facts fine-tuned on (default 1920; --quick 240)")
    parser.add_argument("--repeats", type=int, default=None, help="default 5 (--quick 1)")
    args = parser.parse_args()
    n_facts = args.facts or (240 if args.quick else 1920)
    repeats = args.repeats or (1 if args.quick else 5)
    facts = build_world(SyntheticWorldConfig()).kb.splits["train"][:n_facts]
    tokenizer = train_tokenizer([qa_text(qa_prompt(f.question), f.object) for f in facts], PretrainConfig().vocab_size)
    init = tiny_world_llama(tokenizer)
    tokens = sum(len(p) + len(t) for p, t in train.sft_examples(tokenizer, facts, TrainConfig()))
    waste: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_sft-") as work:
        methods = {"ours": ours, "ours, grouped": lambda model, tok, fs: ours(model, tok, fs, group_by_length=True),
                   "baseline": lambda model, tok, fs: baseline(model, tok, fs, work)}

        def once(name: str) -> float:
            seconds, waste[name] = methods[name](copy.deepcopy(init), tokenizer, facts)
            return seconds

        for name in methods:  # warm-up: the first calls of a kernel are slow
            once(name)
        seconds = alternating(repeats, {name: lambda name=name: once(name) for name in methods})
    rate = {name: tokens / median(s) for name, s in seconds.items()}
    rows = [row("SFT tokens/s", rate["ours"], rate["baseline"], "tokens/s", True, "HF Trainer"),
            row("SFT padding waste", 100 * waste["ours"], 100 * waste["baseline"], "% of positions", False, "HF Trainer",
                target="ours <= 10%", met=100 * waste["ours"] <= 10),
            row("SFT tokens/s, train.group_by_length=true", rate["ours, grouped"], rate["baseline"], "tokens/s", True, "HF Trainer"),
            row("SFT padding waste, train.group_by_length=true", 100 * waste["ours, grouped"], 100 * waste["baseline"],
                "% of positions", False, "HF Trainer", target="ours <= 10%", met=100 * waste["ours, grouped"] <= 10)]
    save("sft", {"rows": rows, "facts": n_facts, "tokens": tokens, "batch_size": BATCH, "lr": LR, "repeats": repeats,
                 "seconds": seconds, "torch_threads": torch.get_num_threads()}, args.quick)


if __name__ == "__main__":
    main()
