"""Stage 2: supervised fine-tuning on closed-book QA (paper §3.3, App. A).

Prompt `{bos}<|question|> {q} <|answer|>`, target ` {a}{eos}`, loss on the target tokens only
(the paper is silent; LLaMA-Factory, which its template matches, masks the prompt). AdamW, cosine
schedule, 1 epoch, batch 8 as in the paper; warm-up and weight decay default to 0 (not stated).
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .data.facts import Fact
from .decoding import encode_prompts, encode_targets, qa_prompt

IGNORE = -100


@dataclass
class TrainConfig:
    method: str = "full"  # full-parameter fine-tuning (paper)
    lr: float | None = None  # None: the model config's lr
    epochs: float = 1.0
    batch_size: int = 8
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0


@dataclass
class TrainLog:
    loss: list[float]  # per optimizer step
    lr: list[float]
    steps: int


def _batch(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (prompt and padding masked out)."""
    width = max(len(p) + len(t) for p, t in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (p, t) in enumerate(examples):
        n = len(p) + len(t)
        ids[row, :n] = torch.tensor(p + t)
        labels[row, len(p) : n] = torch.tensor(t)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def sft(
    model,
    tokenizer,
    facts: list[Fact],
    cfg: TrainConfig,
    lr: float,
    seed: int,
    on_step: Callable[[int, int, float, float], None] | None = None,
) -> TrainLog:
    """Fine-tune `model` in place. `on_step(step, total, loss, lr)` runs after every optimizer step."""
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    prompts = encode_prompts(tokenizer, [qa_prompt(f.question) for f in facts])
    targets = encode_targets(tokenizer, [f.object for f in facts])
    examples = list(zip(prompts, targets))
    order: list[int] = []
    rng = random.Random(seed)
    for _ in range(math.ceil(cfg.epochs)):
        epoch = list(range(len(examples)))
        rng.shuffle(epoch)
        order += epoch
    order = order[: round(cfg.epochs * len(examples))]
    total = math.ceil(len(order) / cfg.batch_size)
    warmup = round(cfg.warmup_ratio * total)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    log = TrainLog([], [], total)
    model.train()
    for step in tqdm(range(total), desc=f"SFT on {len(facts)} facts", mininterval=5, disable=total < 50):
        batch = _batch([examples[i] for i in order[step * cfg.batch_size : (step + 1) * cfg.batch_size]], pad)
        step_lr = cosine_lr(step, total, lr, warmup)
        for g in opt.param_groups:
            g["lr"] = step_lr
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        log.loss.append(loss.item())
        log.lr.append(step_lr)
        if on_step is not None:
            on_step(step + 1, total, log.loss[-1], step_lr)
    model.eval()
    return log
