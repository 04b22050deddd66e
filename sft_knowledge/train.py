"""Stage 2: supervised fine-tuning on closed-book QA (paper §3.3, App. A).

Prompt `{bos}<|question|> {q} <|answer|>`, target ` {a}{eos}`, loss on the target tokens only
(the paper is silent; LLaMA-Factory, which its template matches, masks the prompt). AdamW, cosine
schedule, 1 epoch, batch 8 as in the paper; warm-up and weight decay default to 0 (not stated).
A batch larger than fits in memory is reached by gradient accumulation over micro-batches.
`method="lora"` trains low-rank adapters (peft) instead of every weight; `merge_lora` folds them in,
so the later stages (restoration included) see ordinary merged weights.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .data.facts import Fact
from .decoding import encode_prompts, encode_targets, qa_prompt

IGNORE = -100
METHODS = ("full", "lora")


@dataclass
class TrainConfig:
    method: str = "full"  # full: every parameter (paper) | lora: low-rank adapters through peft
    lr: float | None = None  # None: the model config's lr
    epochs: float = 1.0
    batch_size: int = 8  # examples per optimizer step
    micro_batch_size: int | None = None  # examples per forward pass (None: the model config's, else batch_size)
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


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


def attach_lora(model, cfg: TrainConfig):
    """`model` wrapped with fresh LoRA adapters (only they train); with the adapter disabled it is the base model."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def merge_lora(model):
    """The plain model with the trained adapters folded into its weights."""
    return model.merge_and_unload()


def sft(
    model,
    tokenizer,
    facts: list[Fact],
    cfg: TrainConfig,
    lr: float,
    seed: int,
    on_step: Callable[[int, int, float, float], None] | None = None,
    micro_batch_size: int | None = None,
    gradient_checkpointing: bool = False,
) -> TrainLog:
    """Fine-tune the trainable parameters of `model` in place. `on_step(step, total, loss, lr)` runs after every optimizer step."""
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
    micro = cfg.micro_batch_size or micro_batch_size or cfg.batch_size
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    log = TrainLog([], [], total)
    model.train()
    for step in tqdm(range(total), desc=f"SFT on {len(facts)} facts", mininterval=5, disable=total < 50):
        step_examples = [examples[i] for i in order[step * cfg.batch_size : (step + 1) * cfg.batch_size]]
        step_lr = cosine_lr(step, total, lr, warmup)
        for g in opt.param_groups:
            g["lr"] = step_lr
        # Gradient accumulation: each micro-batch's mean loss weighted by its share of the step's answer tokens,
        # so the gradient equals that of the whole batch at once.
        n_tokens = sum(len(t) for _, t in step_examples)
        loss_sum = 0.0
        for start in range(0, len(step_examples), micro):
            chunk = step_examples[start : start + micro]
            batch = _batch(chunk, pad)
            share = sum(len(t) for _, t in chunk) / n_tokens
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss * share
            loss.backward()
            loss_sum += loss.item()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        log.loss.append(loss_sum)
        log.lr.append(step_lr)
        if on_step is not None:
            on_step(step + 1, total, log.loss[-1], step_lr)
    if gradient_checkpointing:
        model.gradient_checkpointing_disable()
    model.eval()
    return log
