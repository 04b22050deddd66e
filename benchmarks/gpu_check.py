"""GPU check (issue 31, item 5): the cluster path's own code on one GPU, at a real model's shapes, in under 8 minutes.

    python benchmarks/gpu_check.py [--budget-s 450] [--out FILE] [--tiny]

Model: a randomly initialised LLaMA of TinyLlama's shape (hidden 2048, 22 layers, 32 heads, 4 KV heads, FFN 5632,
vocab 32000: 1.1B parameters) in bf16, built on the GPU from its config and saved with its tokenizer, where
models.load, the FSDP worker and vLLM read it. Data: a small synthetic world (data.synthetic.build_world); its QA
examples tokenised by a BPE trained on them, small enough that an example is about 32 tokens (the vocabulary is
padded with unused tokens to the model's 32000), 48 steps of the paper's batch of 8 at lr 1e-5 (the LLaMA configs').

Stages, each calling the project's functions (a failure is recorded and the next stage runs; no stage starts once
`--budget-s` is spent, and the one running then is interrupted):
  setup    the world, the tokenizer, the model (one forward and backward pass: the warm-up), saved
  sft      train.sft under train.precision=fp32_master and pure: tokens/s, losses, Table 3's update share of the top
           1% and 20% (restore.select_thresholds; the 100% share must be 100) and peak GPU memory against the estimate
  restore  select_thresholds for ratios 1..60 and restore_into for each, on GPU copies of the base and fp32_master
           weights (restore.* defaults, as the recipe runs them): seconds, peak GPU memory above the copies
  fsdp     fsdp.sft_fsdp with one process (NCCL on a GPU, gloo on the CPU): its losses against sft's under fp32_master
  trainer  train.sft (fp32_master) against transformers.Trainer (fp32 weights under bf16 autocast: the same precision)
           on the same model, examples, batch and schedule: tokens/s
  probe    the probe's sampling (probe.hf_sampler, and probe.vllm_sampler if vLLM is installed) on the synthetic facts:
           facts/s of each, and their agreement: the random model knows nothing (every level D-0), so besides the
           levels it compares greedy continuations, which differ only where bf16 kernels break a near-tie
Writes benchmarks/results/gpu.json (--tiny: results/quick/gpu.json): device, versions, every figure, and `rows` for
benchmarks/report.py; prints a short table. Exit status 1 unless every stage finished.
`--tiny`: the same stages at toy shapes in seconds, on the CPU if there is no GPU (what the test runs). Without a GPU
and without --tiny: one error line.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from common import RESULTS, machine, row

import torch

TINYLLAMA = dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                 intermediate_size=5632, vocab_size=32000)
TOY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
           vocab_size=1024)
BPE_VOCAB = 330  # the BPE's own tokens: QA examples of the small world come out at about 32 tokens
LR, BATCH, SEED = 1e-5, 8, 0  # conf/model/llama.yaml's SFT rate, the paper's batch
RATIOS = [1, 3, 5, 10, 20, 40, 60]  # restoration ratios, % (recipe.UPDATE_SHARE_RATIOS)
LOSS_RTOL = 2e-2  # FSDP against one process in bf16: the same sums in another order (tests/test_fsdp.py's tolerance)


@dataclass
class Scale:
    shape: dict
    steps: int  # optimizer steps of every SFT (BATCH facts each)
    probe_facts: int
    n_map: int
    n_sample: int
    max_new_tokens: int


FULL = Scale(TINYLLAMA, steps=48, probe_facts=32, n_map=21, n_sample=10, max_new_tokens=32)  # the probe: paper's 21 x 10
TINY = Scale(TOY, steps=4, probe_facts=4, n_map=2, n_sample=2, max_new_tokens=8)


def sft_memory_estimate_gib(shape: dict, precision: str) -> float:
    """The plan's estimate (sft_knowledge.cost.memory, what `sft_knowledge.plan` prints) of this model's one-process
    full SFT on one GPU at batch BATCH, in GiB: weights, gradients and AdamW's moments (16 bytes per parameter under
    fp32_master, 8 under pure) plus activations; the base copy stays in node memory, as here."""
    from sft_knowledge.config import Config, ModelConfig, ResourcesConfig, TrainConfig
    from sft_knowledge.cost import GB, Assumptions, Shape, memory

    cfg = Config(model=ModelConfig(name="gpu-check", source="hub", path="gpu-check", dtype="bfloat16"),
                 train=TrainConfig(precision=precision, batch_size=BATCH), resources=ResourcesConfig(gpus=1, weight_copies="cpu"))
    config = {"model_type": "llama", **shape, "tie_word_embeddings": False}
    return memory(cfg, Shape.from_config(config), Assumptions.default())["sft"].gpu_gb * GB / 2**30


@dataclass
class Context:
    """What the stages share: the saved base model, its tokenizer and data, and what earlier stages left."""
    scale: Scale
    work: Path
    device: torch.device
    base_dir: Path | None = None
    tokenizer: object = None
    world: object = None
    facts: list = field(default_factory=list)  # the SFT facts
    tokens: int = 0  # their examples' tokens
    n_params: int = 0
    base_state: dict | None = None  # base weights, in node memory
    ft_state: dict | None = None  # sft's fp32_master weights, in node memory (restore)
    sft_loss: list[float] | None = None  # sft's fp32_master losses (fsdp)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


# --- GPU measurements -------------------------------------------------------------------------------------------------

def sync(ctx: Context) -> None:
    if ctx.cuda:
        torch.cuda.synchronize()


def reset_peak(ctx: Context) -> float:
    """Start a peak-memory window; the GiB allocated now."""
    if not ctx.cuda:
        return 0.0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated() / 2**30


def peak_gib(ctx: Context) -> float | None:
    """torch.cuda.max_memory_allocated since reset_peak, in GiB (None on the CPU)."""
    if not ctx.cuda:
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def free_memory(ctx: Context) -> None:
    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()


def require(value, stage: str):
    if value is None:
        raise RuntimeError(f"needs what the {stage} stage leaves, and it did not finish")
    return value


# --- stages -----------------------------------------------------------------------------------------------------------

def setup(ctx: Context) -> dict:
    """The world, the tokenizer and the base model, saved in ctx.work/base."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from sft_knowledge.config import SyntheticWorldConfig, TrainConfig
    from sft_knowledge.data.synthetic import build_world
    from sft_knowledge.decoding import pad_id, qa_prompt, qa_text
    from sft_knowledge.pretrain import train_tokenizer
    from sft_knowledge.train import _batch, sft_examples

    s = ctx.scale
    n_facts = s.steps * BATCH
    ctx.world = build_world(SyntheticWorldConfig(n_train=max(n_facts, s.probe_facts), n_test=16, n_testood=16,
                                                 n_bridge_per_relation=2, n_background_per_ood_relation=4))
    ctx.facts = ctx.world.kb.splits["train"][:n_facts]
    tok = train_tokenizer([qa_text(qa_prompt(f.question), f.object) for f in ctx.world.kb.splits["train"]], BPE_VOCAB)
    # Every id the model can write decodes to a token (vLLM's detokenizer has no answer for ids beyond the vocabulary).
    tok.add_tokens([f"<unused{i}>" for i in range(s.shape["vocab_size"] - len(tok))])
    ctx.tokenizer = tok
    examples = sft_examples(tok, ctx.facts, TrainConfig())
    ctx.tokens = sum(len(p) + len(t) for p, t in examples)
    config = LlamaConfig(**s.shape, tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(SEED)
    with ctx.device:  # initialised where it runs: a 1.1B model's init takes a GPU a moment, a CPU many seconds
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    ctx.n_params = sum(p.numel() for p in model.parameters())
    # Warm-up: the first calls of cuBLAS and of each kernel are slow, and the sft stage's first run would pay for them.
    model(**{k: v.to(ctx.device) for k, v in _batch(examples[:BATCH], pad_id(tok)).items()}).loss.backward()
    model.zero_grad(set_to_none=True)
    ctx.base_dir = ctx.work / "base"
    model.save_pretrained(ctx.base_dir)
    tok.save_pretrained(ctx.base_dir)
    ctx.base_state = {n: t.detach().to("cpu", copy=True) for n, t in model.state_dict().items()}
    return {"n_params": ctx.n_params, "facts": len(ctx.facts), "tokens": ctx.tokens,
            "tokens_per_example": ctx.tokens / len(ctx.facts), "vocab": len(tok), "bpe_tokens": BPE_VOCAB}


def job(ctx: Context, **train):
    from sft_knowledge.config import TrainConfig
    from sft_knowledge.train import SFTJob

    return SFTJob(ctx.facts, TrainConfig(batch_size=BATCH, **train), LR, BATCH, SEED)


def stage_sft(ctx: Context) -> dict:
    """train.sft under both precisions, each from the saved base model, as the recipe loads it."""
    from sft_knowledge.config import PRECISIONS, RestoreConfig
    from sft_knowledge.models import load
    from sft_knowledge.restore import select_thresholds
    from sft_knowledge.structure import model_structure
    from sft_knowledge.train import sft

    r = RestoreConfig()
    base_state = require(ctx.base_state, "setup")
    out = {}
    for precision in PRECISIONS:
        model, _ = load(ctx.base_dir, "bfloat16")
        reset_peak(ctx)
        start = time.perf_counter()
        log = sft(model, ctx.tokenizer, job(ctx, precision=precision))
        sync(ctx)
        seconds = time.perf_counter() - start
        peak = peak_gib(ctx)
        ft = {n: t.detach().clone() for n, t in model.state_dict().items()}  # recipe.weight_copy(model, "device")
        region = model_structure(model).region(r.region)
        del model
        base = {n: t.to(ctx.device) for n, t in base_state.items()}
        shares = select_thresholds(base, ft, [1, 20, 100], region, "top", r.seed, eps=r.eps, zeros=r.zeros)
        estimate = sft_memory_estimate_gib(ctx.scale.shape, precision)
        out[precision] = {
            "seconds": seconds, "tokens_per_s": ctx.tokens / seconds, "steps": log.steps, "loss_first": log.loss[0],
            "loss_last": log.loss[-1], "update_share_pct": {str(k): 100 * s.change_share for k, s in shares.items()},
            "peak_gpu_gib": peak, "estimate_gib": estimate, "peak_over_estimate": peak / estimate if peak else None}
        if precision == "fp32_master":
            ctx.ft_state = {n: t.to("cpu") for n, t in ft.items()}
            ctx.sft_loss = log.loss
        del base, ft
        free_memory(ctx)
    return {"precisions": out, "lr": LR, "batch_size": BATCH, "region": r.region,
            "estimate": "the plan's (sft_knowledge.cost.memory): 16 B/param (fp32_master), 8 (pure), plus activations"}


def stage_restore(ctx: Context) -> dict:
    """All ratios from one selection (two streaming passes), restored one after another into one model, as the
    recipe's restoration sweep does with resources.weight_copies=device."""
    from sft_knowledge.config import RestoreConfig
    from sft_knowledge.models import load
    from sft_knowledge.restore import restore_into, select_thresholds
    from sft_knowledge.structure import model_structure

    r = RestoreConfig()
    ft_state = require(ctx.ft_state, "sft")
    model, _ = load(ctx.base_dir, "bfloat16")
    base = {n: t.to(ctx.device, copy=True) for n, t in require(ctx.base_state, "setup").items()}
    ft = {n: t.to(ctx.device, copy=True) for n, t in ft_state.items()}
    region = model_structure(model).region(r.region)
    start_gib = reset_peak(ctx)
    start = time.perf_counter()
    selections = select_thresholds(base, ft, RATIOS, region, r.strategy, r.seed, scope=r.scope, eps=r.eps, zeros=r.zeros)
    sync(ctx)
    select_s = time.perf_counter() - start
    per_ratio = {}
    in_region = [(p, ft[n]) for n, p in model.named_parameters() if n in region.names]
    changed = sum(int((f != base[n]).sum()) for n, f in ft.items() if n in region.names)
    for ratio in RATIOS:
        sel = selections[ratio]
        start = time.perf_counter()
        restore_into(model, base, ft, sel, region, r.strategy, r.seed)
        sync(ctx)
        seconds = time.perf_counter() - start
        # Scalars now off their fine-tuned value: the k most changed, of which those SFT left alone (change 0) do not
        # show, so min(k, changed) exactly.
        moved = sum(int((p != f).sum()) for p, f in in_region)
        per_ratio[str(ratio)] = {"restore_s": seconds, "k": sel.k, "moved_back": moved, "update_share_pct": 100 * sel.change_share}
    exact = all(p["moved_back"] == min(p["k"], changed) for p in per_ratio.values())
    peak = peak_gib(ctx)
    model_gib = 2 * ctx.n_params / 2**30  # one bf16 copy
    return {"ratios": RATIOS, "select_all_ratios_s": select_s, "passes": selections[RATIOS[0]].passes,
            "restore_s_per_ratio": sum(p["restore_s"] for p in per_ratio.values()) / len(RATIOS),
            "seconds_per_ratio": (select_s + sum(p["restore_s"] for p in per_ratio.values())) / len(RATIOS),
            "per_ratio": per_ratio, "n_region": selections[RATIOS[0]].n_total, "changed": changed, "restored_as_selected": exact,
            "copies_gib": start_gib,
            "peak_gpu_gib": peak, "peak_above_copies_in_models": (peak - start_gib) / model_gib if peak else None}


def stage_fsdp(ctx: Context) -> dict:
    """fsdp.sft_fsdp over one process: the sharding, its mixed precision and the gathered save, on one GPU."""
    from sft_knowledge.fsdp import sft_fsdp

    single = require(ctx.sft_loss, "sft")
    with tempfile.TemporaryDirectory(dir=ctx.work, prefix="fsdp-") as out:
        start = time.perf_counter()
        log = sft_fsdp(job(ctx, strategy="fsdp", fsdp_processes=1), ctx.base_dir, "bfloat16", ctx.tokenizer, Path(out))
        seconds = time.perf_counter() - start
    apart = max(abs(a - b) / abs(b) for a, b in zip(log.loss, single, strict=True))
    return {"processes": 1, "backend": "nccl" if ctx.cuda else "gloo", "seconds_with_start_and_save": seconds,
            "steps": log.steps, "loss_first": log.loss[0], "loss_last": log.loss[-1], "single_loss_first": single[0],
            "single_loss_last": single[-1], "max_rel_loss_diff": apart, "tolerance": LOSS_RTOL, "agrees": apart <= LOSS_RTOL}


def stage_trainer(ctx: Context) -> dict:
    """Ours and a plain Trainer (benchmarks/bench_sft.py's set-up, on the GPU), each from the saved base weights;
    the time includes each one's set-up. Tokens/s counts the examples' tokens."""
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainingArguments

    from sft_knowledge.config import TrainConfig
    from sft_knowledge.models import load
    from sft_knowledge.train import sft, sft_examples

    model, _ = load(ctx.base_dir, "bfloat16")
    start = time.perf_counter()
    sft(model, ctx.tokenizer, job(ctx))
    sync(ctx)
    ours = time.perf_counter() - start
    del model
    free_memory(ctx)

    tok = ctx.tokenizer
    model = AutoModelForCausalLM.from_pretrained(ctx.base_dir, dtype=torch.float32).to(ctx.device)
    start = time.perf_counter()
    data = [{"input_ids": p + t, "attention_mask": [1] * (len(p) + len(t)), "labels": [-100] * len(p) + t}
            for p, t in sft_examples(tok, ctx.facts, TrainConfig())]
    tok.padding_side = "right"  # as our batches; the tokenizer pads prompts on the left for generation
    try:
        args = TrainingArguments(output_dir=str(ctx.work / "trainer"), per_device_train_batch_size=BATCH, learning_rate=LR,
                                 num_train_epochs=1, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0,
                                 max_grad_norm=1.0, optim="adamw_torch", bf16=True, seed=SEED, save_strategy="no",
                                 report_to=[], logging_strategy="no", disable_tqdm=True, use_cpu=not ctx.cuda,
                                 dataloader_num_workers=0, remove_unused_columns=False)
        trainer = Trainer(model=model, args=args, train_dataset=data,
                          data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
        trainer.remove_callback(PrinterCallback)  # its end-of-training metrics line would break into the table
        trainer.train()
    finally:
        tok.padding_side = "left"
    sync(ctx)
    theirs = time.perf_counter() - start
    return {"ours_tokens_per_s": ctx.tokens / ours, "trainer_tokens_per_s": ctx.tokens / theirs, "speedup": theirs / ours,
            "ours_s": ours, "trainer_s": theirs, "precision": "fp32_master / Trainer bf16=True on fp32 weights"}


def stage_probe(ctx: Context) -> dict:
    """The probe's samplers on the base model: hits and levels as probe.probe computes them, facts/s, greedy texts."""
    from sft_knowledge.config import ProbeConfig
    from sft_knowledge.data.facts import KnowledgeBase
    from sft_knowledge.models import load
    from sft_knowledge.probe import _template_hits, hf_sampler, level_of_hits, vllm_sampler

    s = ctx.scale
    model, tok = load(ctx.base_dir, "bfloat16")  # from its directory, which vLLM reads too (model.name_or_path)
    facts = ctx.world.kb.splits["train"][: s.probe_facts]
    kb = KnowledgeBase(ctx.world.kb.relations, {"train": facts, "test": [], "testood": []}, ctx.world.kb.aliases)
    prompts = [kb.relations[f.relation].mapping_prompts(f.subject, 1)[0] for f in facts]
    backends = {"hf": hf_sampler}
    if not ctx.cuda:
        skipped = "vLLM needs a GPU"
    elif importlib.util.find_spec("vllm") is None:
        skipped = "vllm is not installed (pip install vllm)"
    else:
        skipped, backends["vllm"] = None, vllm_sampler
    out: dict = {"facts": len(facts), "n_map": s.n_map, "n_sample": s.n_sample, "max_new_tokens": s.max_new_tokens}
    levels, greedy = {}, {}
    for name, make_sampler in backends.items():
        cfg = ProbeConfig(n_map=s.n_map, n_sample=s.n_sample, max_new_tokens=s.max_new_tokens, backend=name, seed=SEED)
        start = time.perf_counter()
        sample = make_sampler(model, tok, cfg)  # vLLM: its engine starts here
        started = time.perf_counter()
        rates, hits = _template_hits(model, tok, kb, facts, cfg, sample, None)  # None: no progress bar
        sync(ctx)
        seconds = time.perf_counter() - started
        budgets = [len(r) * cfg.n_sample for r in rates]
        levels[name] = [level_of_hits(h, total) for h, total in zip(hits, budgets)]
        # Greedy on the same sampler (and vLLM engine): it reads its config at every call.
        cfg.n_sample, cfg.temperature = 1, 0.0
        greedy[name] = sample(prompts, None)
        out[name] = {"start_s": started - start, "sample_s": seconds, "facts_per_s": len(facts) / seconds,
                     "continuations_per_s": sum(budgets) / seconds, "mean_hit_rate": sum(hits) / sum(budgets),
                     "level_counts": [levels[name].count(lv) for lv in range(5)]}
    if skipped:
        out["vllm"] = {"status": "skipped", "note": skipped}
    else:
        # Compared without whitespace: a detokenizer may space added tokens differently, the tokens are what matters.
        hf, vl = ([''.join(t.split()) for t in greedy[b]] for b in ("hf", "vllm"))
        out["agreement"] = {
            "same_level": sum(a == b for a, b in zip(levels["hf"], levels["vllm"])) / len(facts),
            "greedy_identical": sum(a == b for a, b in zip(hf, vl)) / len(prompts),
            "greedy_common_prefix": sum(common_prefix(a, b) for a, b in zip(hf, vl)) / len(prompts)}
    out["greedy_nonempty"] = sum(bool(t) for t in greedy["hf"]) / len(prompts)
    return out


def common_prefix(a: str, b: str) -> float:
    """The share of the longer text that both begin with."""
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return n / max(len(a), len(b), 1)


# --- the run ------------------------------------------------------------------------------------------------------------

class BudgetSpent(BaseException):
    """Raised by SIGALRM at the budget inside the running stage (a BaseException: no `except Exception` swallows it)."""


def run_stages(ctx: Context, stages: dict[str, Callable[[Context], dict]], budget_s: float) -> dict[str, dict]:
    """Each stage in turn, guarded: a failure is recorded with its traceback and the next one runs; none starts once
    the budget is spent, and SIGALRM interrupts the one running at that moment."""
    def on_alarm(signum, frame):
        raise BudgetSpent

    t0 = time.monotonic()
    results: dict[str, dict] = {}
    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, budget_s)
        for name, stage in stages.items():
            if time.monotonic() - t0 >= budget_s:
                results[name] = {"status": "skipped", "note": f"not started: the budget of {budget_s:g} s was spent"}
                continue
            start = time.monotonic()
            try:
                results[name] = {"status": "ok", **stage(ctx)}
            except BudgetSpent:
                results[name] = {"status": "interrupted", "note": f"still running when the budget of {budget_s:g} s was spent"}
            except Exception as e:  # noqa: BLE001  (a stage's failure is a result; the other stages still run)
                results[name] = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:1000],
                                 "traceback": traceback.format_exc()[-4000:]}
            results[name]["seconds"] = time.monotonic() - start
            free_memory(ctx)
    except BudgetSpent:  # between two stages
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    for name in stages:
        results.setdefault(name, {"status": "skipped", "note": f"not started: the budget of {budget_s:g} s was spent"})
    return results


def device_info(device: torch.device) -> dict:
    import transformers

    info = {"type": device.type, "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "vllm": version("vllm") if importlib.util.find_spec("vllm") else None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"name": props.name, "memory_gib": props.total_memory / 2**30, "capability": f"{props.major}.{props.minor}",
                 "nccl": str(torch.cuda.nccl.version()), "bf16": torch.cuda.is_bf16_supported()}
    else:
        info["name"] = "cpu"
    return info


def fmt(x, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def table(stages: dict[str, dict]) -> list[list[str]]:
    """(stage, figure, value) lines of the printed summary."""
    lines = []
    for name, st in stages.items():
        if st["status"] != "ok":
            lines.append([name, st["status"], st.get("error") or st.get("note", "")])
            continue
        if name == "setup":
            lines.append([name, "parameters, tokens per example", f"{size(st['n_params'])}, {st['tokens_per_example']:.1f}"])
        elif name == "sft":
            for precision, p in st["precisions"].items():
                share = p["update_share_pct"]
                lines.append([name, f"{precision}: tokens/s, loss", f"{p['tokens_per_s']:,.0f}, {p['loss_first']:.3f} -> {p['loss_last']:.3f}"])
                lines.append([name, f"{precision}: update share top 1% / 20% (100%)",
                              f"{share['1']:.1f}% / {share['20']:.1f}% ({share['100']:.2f}%)"])
                lines.append([name, f"{precision}: peak GPU GiB / estimate", f"{fmt(p['peak_gpu_gib'])} / {p['estimate_gib']:.3g} "
                              f"({fmt(p['peak_over_estimate'], '.2f')}x)"])
        elif name == "restore":
            lines.append([name, f"{len(st['ratios'])} ratios: select s, restore s per ratio, as selected",
                          f"{st['select_all_ratios_s']:.3g}, {st['restore_s_per_ratio']:.3g}, "
                          f"{'yes' if st['restored_as_selected'] else 'NO'}"])
            lines.append([name, "peak GPU GiB (above the copies, in models)",
                          f"{fmt(st['peak_gpu_gib'])} ({fmt(st['peak_above_copies_in_models'], '.2f')})"])
        elif name == "fsdp":
            lines.append([name, f"1 process ({st['backend']}): loss vs one process",
                          f"{st['loss_last']:.4f} vs {st['single_loss_last']:.4f}, max rel diff {st['max_rel_loss_diff']:.1e} "
                          f"({'agrees' if st['agrees'] else 'DISAGREES'})"])
        elif name == "trainer":
            lines.append([name, "SFT tokens/s: ours vs HF Trainer",
                          f"{st['ours_tokens_per_s']:,.0f} vs {st['trainer_tokens_per_s']:,.0f} ({st['speedup']:.2f}x)"])
        elif name == "probe":
            for backend in ("hf", "vllm"):
                b = st[backend]
                if "facts_per_s" in b:
                    lines.append([name, f"{backend}: facts/s, continuations/s (start s)",
                                  f"{b['facts_per_s']:.3g}, {b['continuations_per_s']:,.0f} ({b['start_s']:.2g})"])
                else:
                    lines.append([name, backend, b["note"]])
            if "agreement" in st:
                a = st["agreement"]
                lines.append([name, "hf vs vllm: same level, greedy identical (prefix)",
                              f"{a['same_level']:.2f}, {a['greedy_identical']:.2f} ({a['greedy_common_prefix']:.2f})"])
    return lines


def size(n_params: int) -> str:
    return f"{n_params / 1e9:.2f}B" if n_params >= 1e8 else f"{n_params / 1e6:.2f}M"


def rows(stages: dict[str, dict], n_params: int, device: str) -> list[dict]:
    """The lines benchmarks/report.py tables (common.row): what has a baseline measured in the same run."""
    out = []
    if stages["trainer"]["status"] == "ok":
        t = stages["trainer"]
        out.append(row(f"SFT tokens/s, {size(n_params)} LLaMA, bf16, {device}", t["ours_tokens_per_s"], t["trainer_tokens_per_s"],
                       "tokens/s", True, "HF Trainer"))
    if stages["sft"]["status"] == "ok" and stages["sft"]["precisions"]["fp32_master"]["peak_gpu_gib"]:
        p = stages["sft"]["precisions"]["fp32_master"]
        out.append(row(f"SFT peak GPU memory, fp32_master, {size(n_params)} LLaMA, {device}", p["peak_gpu_gib"], p["estimate_gib"],
                       "GiB", False, "estimate"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=450, help="seconds for all stages (default 450)")
    parser.add_argument("--out", type=Path, default=None, help="the result file (default benchmarks/results/gpu.json; "
                                                               "--tiny: benchmarks/results/quick/gpu.json)")
    parser.add_argument("--tiny", action="store_true", help="toy shapes, seconds, CPU allowed: the code paths, not measurements")
    args = parser.parse_args()
    if not args.budget_s > 0:
        sys.exit(f"error: --budget-s={args.budget_s:g} must be positive")
    if not torch.cuda.is_available() and not args.tiny:
        sys.exit("error: gpu_check needs a CUDA GPU and torch sees none (`--tiny` runs its code paths on the CPU at toy shapes)")
    out = args.out or RESULTS / ("quick" if args.tiny else "") / "gpu.json"
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as work:
        ctx = Context(TINY if args.tiny else FULL, Path(work), device)
        stages = run_stages(ctx, {"setup": setup, "sft": stage_sft, "restore": stage_restore, "fsdp": stage_fsdp,
                                  "trainer": stage_trainer, "probe": stage_probe}, args.budget_s)
    info = device_info(device)
    result = {"benchmark": "gpu_check", "tiny": args.tiny, "date": time.strftime("%Y-%m-%d %H:%M"), "device": info,
              "machine": machine(), "budget_s": args.budget_s, "elapsed_s": time.monotonic() - t0,
              "model": {"shape": ctx.scale.shape, "dtype": "bfloat16", "n_params": ctx.n_params},
              "settings": {"steps": ctx.scale.steps, "batch_size": BATCH, "lr": LR, "seed": SEED},
              "stages": stages, "table": table(stages), "rows": rows(stages, ctx.n_params, info["name"])}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    width = max(len(line[1]) for line in result["table"])
    print(f"gpu_check on {result['device']['name']} (torch {torch.__version__}, CUDA {torch.version.cuda}), "
          f"{result['elapsed_s']:.0f} s of {args.budget_s:g}")
    for stage, figure, value in result["table"]:
        print(f"  {stage:8} {figure:{width}}  {value}")
    print(f"wrote {out}")
    if bad := [name for name, st in stages.items() if st["status"] != "ok"]:
        sys.exit(f"error: gpu_check stage(s) {', '.join(bad)} did not finish: see {out}")


if __name__ == "__main__":
    main()
