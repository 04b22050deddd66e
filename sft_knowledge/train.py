"""Stage 2: supervised fine-tuning on closed-book QA (paper §3.3, App. A).

Prompt `{bos}<|question|> {q} <|answer|>`, target ` {a} {eos}` (App. A; `train.space_before_eos=false`:
` {a}{eos}`), loss on the target tokens only
(the paper is silent; LLaMA-Factory, which its template matches, masks the prompt). AdamW, cosine
schedule, 1 epoch, batch 8 as in the paper; warm-up and weight decay default to 0 (not stated).
A batch larger than fits in memory is reached by gradient accumulation over micro-batches.
An `SFTJob` holds all one fine-tune needs (facts, TrainConfig, the effective lr and micro-batch, seed, checkpoints,
the KL curve run after each step); `sft(model, tokenizer, job)` runs it in this process, `fsdp.sft_fsdp(job, ...)`
over several.
`method="lora"` trains low-rank adapters (peft) instead of every weight, their initialisation drawn from the
job's seed; `merge_lora` folds them into float32 weights, so the later stages (restoration included) see ordinary
weights holding the whole update (folded into bf16 weights, most of it rounds away). Run in every process of an FSDP
group (fsdp.py), `sft` trains that rank's share of each global batch; the result is the same.

Precision (`train.precision`): under `fp32_master` (the default) a bf16 or fp16 model's trainable weights become
fp32 for the fine-tune, AdamW steps them and keeps its state in fp32, forward and backward run under autocast in the
model's dtype, and the weights are handed back in that dtype (the fp32 master rounded): at lr 1e-5 a bf16
weight of |w| >= 2^-8 (0.0039) moves by less than half its ulp per step, so stepping the bf16 weights themselves
(`pure`) drops most updates. A float32 model trains in float32 under either.

Given a checkpoint directory, SFT is resumable: model, optimizer, step, RNG, data order and the
training log are saved every `checkpoint.every` steps and when SLURM or submitit signals the job
(SIGTERM, SIGUSR2), and a later call with the same directory continues from there with the same result.
Checkpoints are written with torch.distributed.checkpoint, so under FSDP every rank saves its own shards
(a 70B model's optimizer state is never gathered in one process) and one process reads the same format.
"""
from __future__ import annotations

import math
import os
import random
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from tqdm.auto import tqdm

from .config import PRECISIONS, CheckpointConfig, TrainConfig
from .data.facts import Fact
from .decoding import encode_examples, pad_id, qa_prompt
from .structure import model_structure

IGNORE = -100
HALF = (torch.bfloat16, torch.float16)


@dataclass
class SFTJob:
    """Everything one fine-tune needs, with effective values resolved (config.py resolves lr and micro-batch once)."""
    facts: list[Fact]
    train: TrainConfig
    lr: float  # the effective peak learning rate
    micro_batch_size: int  # examples per forward pass (a divisor of train.batch_size)
    seed: int
    gradient_checkpointing: bool = False
    checkpoint_dir: Path | None = None  # resume from / save checkpoints here (None: no checkpoints)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    curve: Callable | None = None  # curve(model, tokenizer, step, total) -> dict | None after every optimizer step; picklable (FSDP workers run it)


@dataclass
class TrainLog:
    loss: list[float]  # per optimizer step
    lr: list[float]
    steps: int
    events: list[dict] = field(default_factory=list)  # what the job's curve returned, with its step
    resumed_at: list[int] = field(default_factory=list)  # steps this SFT was resumed from a checkpoint at


class DeferredSignals:
    """Holds SIGTERM (SLURM stops the job) and SIGUSR2 (submitit: preemption or time-out) until the current
    step ends, so the checkpoint saved for them is consistent; `forward` then hands them to the handler that
    was there before (submitit's requeues the job and exits; the default one terminates)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR2)

    def __enter__(self) -> DeferredSignals:
        self.caught: list[int] = []
        self.previous = {}
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self.previous = {s: signal.signal(s, lambda signum, frame: self.caught.append(signum)) for s in self.SIGNALS}
        return self

    def forward(self) -> None:
        caught, self.caught = self.caught, []
        for signum in caught:
            handler = self.previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _dcp(operation, state: dict, path: Path) -> None:
    """dcp.save or dcp.load; in one process (no process group) it works as is and need not warn about it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled, unavailable or uninitialized")
        operation(state, checkpoint_id=path)


def latest_checkpoint(root: Path) -> Path | None:
    """The last complete checkpoint under `root` (`latest` names it), or None. Its `state.pt` holds step and log."""
    pointer = Path(root) / "latest"
    return Path(root) / pointer.read_text() if pointer.exists() else None


def _save_checkpoint(root: Path, model, opt, state: dict[str, Any]) -> None:
    """Every rank writes its shards of model and optimizer and its RNG state into `step-N/`; once all have, rank 0
    points `latest` at it (an atomic rename) and removes older ones: a job killed mid-save keeps the previous one."""
    rank, target = _rank(), Path(root) / f"step-{state['step']:06d}"
    model_state, optim_state = get_state_dict(model, opt)
    _dcp(dcp.save, {"model": model_state, "optimizer": optim_state}, target)
    torch.save({"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
               target / f"rng-{rank}.pt")
    if rank == 0:
        torch.save(state, target / "state.pt")
    _barrier()
    if rank == 0:
        tmp = Path(root) / f"latest.tmp{os.getpid()}"
        tmp.write_text(target.name)
        os.replace(tmp, Path(root) / "latest")
        for old in Path(root).glob("step-*"):
            if old != target:
                shutil.rmtree(old)
    _barrier()


def _load_checkpoint(path: Path, model, opt) -> dict[str, Any]:
    """Load `path` into model and optimizer (each rank its shards) and this rank's RNG; return its `state.pt`."""
    model_state, optim_state = get_state_dict(model, opt)
    loaded = {"model": model_state, "optimizer": optim_state}
    _dcp(dcp.load, loaded, path)
    set_state_dict(model, opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optimizer"])
    rng = torch.load(path / f"rng-{_rank()}.pt")
    torch.set_rng_state(rng["cpu"])
    if rng["cuda"] is not None:
        torch.cuda.set_rng_state_all(rng["cuda"])
    return torch.load(path / "state.pt")


class MasterWeights:
    """`fp32_master` on one process: the trainable bf16/fp16 parameters of `model` are made fp32 in place (the same
    Parameter objects, so optimizer, checkpoints and tied weights see the masters); `autocast` runs the forward and
    backward in their former dtype; `round` hands them back in it, round-to-nearest like any cast. Nothing to do under
    `pure`, for float32 weights, or where the trainable parameters are fp32 already (peft's LoRA adapters, FSDP's
    sharded masters, whose MixedPrecisionPolicy does the casting)."""

    def __init__(self, model, precision: str):
        if precision not in PRECISIONS:
            raise ValueError(f"train.precision={precision!r} is not allowed: expected {', '.join(PRECISIONS)}")
        self.params = [p for p in model.parameters() if precision == "fp32_master" and p.requires_grad and p.dtype in HALF]
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) > 1:
            raise ValueError(f"fp32_master needs one half-precision dtype among the trainable weights, found {sorted(map(str, dtypes))}")
        self.dtype = dtypes.pop() if dtypes else None
        self.device_type = next(model.parameters()).device.type
        for p in self.params:
            p.data = p.data.float()

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def round(self) -> None:
        for p in self.params:
            p.data = p.data.to(self.dtype)


def _batch(examples: list[tuple[list[int], list[int]]], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (prompt and padding masked out)."""
    width = max(len(p) + len(t) for p, t in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (p, t) in enumerate(examples):
        n = len(p) + len(t)
        ids[row, :n] = torch.tensor(p + t)
        labels[row, len(p) : n] = torch.tensor(t)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def cosine_lr(step: int, total: int, peak: float, warmup: int, ramp_over_decay: bool = False) -> float:
    """The learning rate of step `step` (from 0) of `total`: a linear warm-up to `peak` over the first `warmup` steps,
    then a cosine decay towards 0 over the rest (SFT). With `ramp_over_decay` (pretrain.py) the cosine spans all
    `total` steps from the first and the warm-up ramp scales it. Each is computed as it always was, to the last bit:
    the pretrained tiny_world model and resumed SFT runs depend on it."""
    if ramp_over_decay:
        return peak * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def attach_lora(model, cfg: TrainConfig, seed: int):
    """`model` wrapped with fresh LoRA adapters (only they train): A drawn from `seed` (peft's Kaiming-uniform), B zero,
    so each repeat of a cell starts from its own adapters; with the adapter disabled it is the base model. The targets
    are the model's decoder-layer projections that `cfg.lora_target_modules` names ([all-linear]: every one of them)."""
    from peft import LoraConfig, get_peft_model

    targets = model_structure(model).lora_targets(cfg.lora_target_modules)
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    torch.manual_seed(seed)
    return get_peft_model(model, lora)


def load_lora(model, adapter_dir: Path):
    """`model` (the base) with the adapters that a LoRA model's `save_pretrained` wrote into `adapter_dir`."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter_dir)


def merge_lora(model):
    """The plain model, in float32, with the trained adapters folded into its weights. The weights are upcast first
    (exactly, from bf16 or fp16), so the merged update B A alpha / r is kept whole: folded into bf16 weights around
    0.02, spaced 2^-13 (1.2e-4) apart, an update of 1e-5 rounds away (docs/paper-setting.md, LoRA)."""
    return model.float().merge_and_unload()


@contextmanager
def float32_compute(model):
    """Within the block, `model`'s half-precision parameters are float32, so it computes in float32; after it they are
    what they were (upcast and downcast are both exact). A LoRA run is evaluated in float32 (merge_lora): its KL base
    and its KL curve are measured so too."""
    half = [(p, p.dtype) for p in model.parameters() if p.dtype in HALF]
    for p, _ in half:
        p.data = p.data.float()
    try:
        yield model
    finally:
        for p, dtype in half:
            p.data = p.data.to(dtype)


def sft_examples(tokenizer, facts: list[Fact], cfg: TrainConfig) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target ids) of each fact: the QA prompt, then the answer and EOS, with App. A's space between them
    under `cfg.space_before_eos`."""
    return encode_examples(tokenizer, [qa_prompt(f.question) for f in facts], [f.object for f in facts],
                           suffix=" " if cfg.space_before_eos else "")


LENGTH_WINDOW = 50  # group_by_length: batches per window sorted by length (Hugging Face's megabatch)


def example_order(lengths: list[int], cfg: TrainConfig, seed: int) -> list[int]:
    """The order SFT takes the examples in, `cfg.epochs` epochs of it: each epoch a random permutation; with
    `cfg.group_by_length`, each window of LENGTH_WINDOW batches of it sorted by length (longest first), cut into batches,
    and the full batches shuffled, the one short batch, if any, kept last so that every step is one of these batches."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(math.ceil(cfg.epochs)):
        epoch = list(range(len(lengths)))
        rng.shuffle(epoch)
        if cfg.group_by_length and epoch:
            window = LENGTH_WINDOW * cfg.batch_size
            ranked = [i for w in range(0, len(epoch), window) for i in sorted(epoch[w : w + window], key=lambda i: -lengths[i])]
            batches = [ranked[b : b + cfg.batch_size] for b in range(0, len(ranked), cfg.batch_size)]
            short = [batches.pop()] if len(batches[-1]) < cfg.batch_size else []
            rng.shuffle(batches)
            epoch = [i for batch in batches + short for i in batch]
        order += epoch
    return order[: round(cfg.epochs * len(lengths))]


def sft(model, tokenizer, job: SFTJob) -> TrainLog:
    """Fine-tune the trainable parameters of `model` in place on `job.facts`. `job.curve(model, tokenizer, step, total)`
    runs after every optimizer step; a dict it returns is kept in the log's `events`. With `job.checkpoint_dir`, resume
    from its checkpoint if any."""
    cfg, micro = job.train, job.micro_batch_size
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    torch.manual_seed(job.seed)
    device = next(model.parameters()).device
    examples = sft_examples(tokenizer, job.facts, cfg)
    order = example_order([len(p) + len(t) for p, t in examples], cfg, job.seed)
    total = math.ceil(len(order) / cfg.batch_size)
    warmup = round(cfg.warmup_ratio * total)
    master = MasterWeights(model, cfg.precision)  # before the optimizer: its state takes the masters' dtype
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=job.lr, weight_decay=cfg.weight_decay)
    if job.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    pad = pad_id(tokenizer)
    log, start = TrainLog([], [], total), 0
    resume_from = latest_checkpoint(job.checkpoint_dir) if job.checkpoint_dir is not None else None
    if resume_from is not None:
        state = _load_checkpoint(resume_from, model, opt)
        order, start, log = state["order"], state["step"], TrainLog(**state["log"])
        log.resumed_at.append(start)
    model.train()
    with DeferredSignals() as signals:
        for step in tqdm(range(start, total), desc=f"SFT on {len(job.facts)} facts", mininterval=5, disable=total < 50 or rank > 0):
            step_examples = [examples[i] for i in order[step * cfg.batch_size : (step + 1) * cfg.batch_size]]
            step_lr = cosine_lr(step, total, job.lr, warmup)
            for g in opt.param_groups:
                g["lr"] = step_lr
            # Gradient accumulation: each micro-batch's mean loss weighted by its share of the step's answer
            # tokens, so the gradient equals that of the whole batch at once. Under FSDP each rank takes every
            # world-th example and the ranks' gradients are summed; every rank runs the same number of passes
            # (FSDP's collectives pair them up), a rank out of examples a zero-weighted one.
            n_tokens = sum(len(t) for _, t in step_examples)
            mine = step_examples[rank::world]
            passes = math.ceil(math.ceil(len(step_examples) / world) / micro)
            loss_sum = 0.0
            for first in range(0, passes * micro, micro):
                chunk = mine[first : first + micro]
                share = sum(len(t) for _, t in chunk) / n_tokens
                with master.autocast():
                    loss = model(**{k: v.to(device) for k, v in _batch(chunk or step_examples[:1], pad).items()}).loss * share
                loss.backward()
                loss_sum += loss.item()
            if world > 1:  # the step's loss is the sum of the ranks' shares
                total_loss = torch.tensor(loss_sum, dtype=torch.float64, device=device)
                dist.all_reduce(total_loss)
                loss_sum = total_loss.item()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            log.loss.append(loss_sum)
            log.lr.append(step_lr)
            # The KL curve sees the model computing as it is evaluated: LoRA in float32 (merge_lora), full SFT as it trains.
            with float32_compute(model) if cfg.method == "lora" else master.autocast():
                event = job.curve(model, tokenizer, step + 1, total) if job.curve is not None else None
            if event is not None:
                log.events.append({"step": step + 1, **event})
            periodic = job.checkpoint.every > 0 and (step + 1) % job.checkpoint.every == 0 and step + 1 < total
            stopping = bool(signals.caught)
            if world > 1:  # a signal seen by any rank stops them all at this step: the save is collective
                flag = torch.tensor(int(stopping), device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stopping = bool(flag.item())
            if job.checkpoint_dir is not None and (periodic or stopping):
                _save_checkpoint(job.checkpoint_dir, model, opt, {"order": order, "step": step + 1, "log": asdict(log)})
                deadline = time.time() + (job.checkpoint.debug_pause_s if periodic else 0)
                while time.time() < deadline and not signals.caught:
                    time.sleep(0.1)
            signals.forward()
            if stopping and world > 1:  # a rank that was not signalled itself ends too (fsdp.py passes the signal on)
                raise SystemExit(f"rank {rank}: SFT stopped by a signal after step {step + 1}")
    if job.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    master.round()
    model.eval()
    return log
