"""What a cell will cost before it runs: the model's shape from its config.json, GPU memory per stage, GPU-hours.

Arithmetic, not measurement: no weights are loaded and no torch is imported, so `sft_knowledge.plan` answers in
seconds. The memory of each stage follows what the recipe holds at that point (recipe.py): the probe and the
evaluation generate with the model's weights plus a KV cache for the batch; SFT holds its optimizer state (16 bytes
per parameter under fp32_master), or frozen weights plus adapters (LoRA), sharded over the GPUs by FSDP or in node
memory with its CPU offload; evaluation and restoration hold the fine-tuned model beside the base and fine-tuned
copies (resources.weight_copies: on the device or in node memory). The GPU-hours are docs/report.md's estimate, FLOP
at a fraction of the GPU's peak and memory traffic at its bandwidth, with every assumption in `Assumptions`.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from .config import Config, effective
from .data.facts import SLICK_CATEGORIES
from .errors import ConfigError
from .sources import source_of

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GB = 1e9
LEVELS = 5  # D-0..D-4: before the probe has run, a level is taken to hold a fifth of a split
EQ_SPLITS = {"train": 75_944, "test": 9_555, "testood": 11_613}  # EntityQuestions, the paper's splits (data/entityquestions.py)
GPU_MEMORY_ENV = "SFT_KNOWLEDGE_GPU_MEMORY_GB"  # the GPUs' memory, where it is not the default 80 GB
# Architectures whose MLP is one up- and one down-projection; every other (LLaMA, Mistral, Qwen, Gemma, Phi-3) is gated.
UNGATED = ("gpt2", "gpt_neox", "opt", "phi", "falcon", "bloom", "gpt_bigcode", "gptj")


@dataclass(frozen=True)
class Assumptions:
    """What the estimate takes for granted (printed with every plan)."""
    gpu_memory_gb: float = 80.0  # per GPU (H100 80 GB); $SFT_KNOWLEDGE_GPU_MEMORY_GB=141 for an H200
    reserve_gb: float = 3.0  # per GPU: CUDA context and allocator slack
    peak_tflops: float = 989.0  # dense bf16 (H100/H200 SXM); float32 compute (TF32) at half of it
    utilisation: float = 0.30  # of the peak, for batched generation and SFT's matrix products
    hbm_tb_s: float = 3.35  # GPU memory bandwidth (H100 SXM)
    host_gb_s: float = 100.0  # node memory bandwidth: AdamW on the CPU (FSDP offload), copies kept there
    pcie_gb_s: float = 25.0  # per GPU, host <-> device (FSDP offload's shards)
    storage_gb_s: float = 1.0  # reading and writing weights and checkpoints on the shared file system
    prompt_tokens: int = 32  # a probe, evaluation or KL prompt
    sft_tokens: int = 32  # an SFT example: question and answer (docs/report.md)
    kl_tokens: int = 20  # a KL prompt read in one forward pass
    restore_s_per_b: float = 8.6  # per run and billion scalars of the region: the selection's torch temporaries
    # (docs/report.md allowed a minute per run for LLaMA-3-8B's 7.0B transformer scalars)
    restore_passes: int = 4  # streaming passes of the selection over both copies, besides one per ratio

    @classmethod
    def default(cls) -> Assumptions:
        value = os.environ.get(GPU_MEMORY_ENV)
        if value is None:
            return cls()
        try:
            return cls(gpu_memory_gb=float(value))
        except ValueError:
            raise ConfigError(f"${GPU_MEMORY_ENV}={value!r}: expected the GPUs' memory in GB, e.g. 80 or 141") from None

    def describe(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name):g}" for f in fields(self))


# --- the model's shape --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer as its config.json describes it."""
    hidden: int
    layers: int
    heads: int
    kv_heads: int  # grouped-query attention: K and V have this many heads
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool  # the output head is the input embedding
    gated: bool = True  # the MLP has a gate projection (SwiGLU/GeGLU)
    qkv_bias: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Shape:
        def first(*keys: str, default: Any = None) -> Any:
            value = next((config[k] for k in keys if config.get(k) is not None), default)
            if value is None:
                raise ConfigError(f"config.json has none of {', '.join(keys)}: cannot size the model")
            return value

        hidden = first("hidden_size", "n_embd", "d_model")
        heads = first("num_attention_heads", "n_head")
        kind = config.get("model_type", "")
        return cls(hidden=hidden, layers=first("num_hidden_layers", "n_layer", "num_layers"), heads=heads,
                   kv_heads=first("num_key_value_heads", default=heads), head_dim=first("head_dim", default=hidden // heads),
                   intermediate=first("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden), vocab=first("vocab_size"),
                   # transformers' PretrainedConfig ties by default; LLaMA's config.json says false
                   tied=bool(config.get("tie_word_embeddings", True)), gated=kind not in UNGATED,
                   qkv_bias=bool(config.get("attention_bias", kind == "qwen2")))

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def attention_params(self) -> int:
        return 2 * self.hidden * self.q_dim + 2 * self.hidden * self.kv_dim + (self.q_dim + 2 * self.kv_dim) * self.qkv_bias

    @property
    def mlp_params(self) -> int:
        return (3 if self.gated else 2) * self.hidden * self.intermediate

    @property
    def layer_params(self) -> int:
        return self.attention_params + self.mlp_params + 2 * self.hidden  # two norms

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        """Embeddings, every decoder layer, the final norm and (untied) the output head."""
        return self.embedding_params * (1 if self.tied else 2) + self.layers * self.layer_params + self.hidden

    @property
    def matmul_params(self) -> int:
        """The weights a token multiplies (2 FLOP each): all but the input embedding, which is a lookup."""
        return self.params - (0 if self.tied else self.embedding_params)

    def region_params(self, region: str) -> int:
        """Scalars restoration selects from (restore.region)."""
        return {"transformer": self.layers * self.layer_params, "attention": self.layers * self.attention_params,
                "mlp": self.layers * self.mlp_params, "embedding": self.embedding_params, "all": self.params}[region]

    def lora_params(self, rank: int, targets: list[str]) -> int:
        """Adapter scalars: rank x (inputs + outputs) of every targeted projection of every layer."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        sides = {"q_proj": h + q, "k_proj": h + kv, "v_proj": h + kv, "o_proj": q + h, "gate_proj": h + i,
                 "up_proj": h + i, "down_proj": i + h}
        return self.layers * rank * sum(sides.get(t, 0) for t in targets)

    def kv_bytes(self, tokens: int, dtype_bytes: int) -> int:
        return tokens * self.layers * 2 * self.kv_dim * dtype_bytes

    def activation_bytes(self, tokens: int, dtype_bytes: int, checkpointing: bool) -> int:
        """What backward keeps for `tokens` tokens: per layer, the tensors its matrices read (norm outputs, q, k, v,
        the attention output, the MLP's inputs and products; flash attention keeps no score matrix), or with
        gradient checkpointing each layer's input and one layer recomputed; plus the float32 logits and their
        gradient."""
        per_layer = 4 * self.hidden + 2 * self.q_dim + 2 * self.kv_dim + (4 if self.gated else 2) * self.intermediate
        kept = self.layers * self.hidden + per_layer if checkpointing else self.layers * per_layer
        return tokens * (kept * dtype_bytes + 2 * self.vocab * 4)


def model_config(cfg: Config) -> tuple[dict | None, str]:
    """The model's config.json as a dict, and where it came from (None and the reason where it cannot be read
    offline): each source reads its own (sources.Source.config_json), no weights."""
    return source_of(cfg).config_json(cfg)


# --- GPU memory per stage -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Memory:
    gpu_gb: float  # at the peak of the stage, on the busiest GPU (0: no GPU)
    node_gb: float  # in node memory
    what: str  # the terms, for the listing


def state_bytes(cfg: Config) -> int:
    """Bytes per trained scalar: its weight, gradient and AdamW's two moments, in float32 under fp32_master (and for
    LoRA's adapters, which peft keeps in float32), else in the model's dtype."""
    wb = BYTES[cfg.model.dtype]
    return 16 if cfg.train.precision == "fp32_master" or cfg.train.method == "lora" else 4 * wb


def _gpus(cfg: Config) -> int:
    return max(cfg.resources.gpus, 1)


def memory(cfg: Config, shape: Shape, a: Assumptions) -> dict[str, Memory]:
    """Per stage (probe, sft, eval, restore): what the busiest GPU and the node hold, under the configured dtype,
    precision, method, strategy, GPUs and weight copies."""
    p, wb = shape.params, BYTES[cfg.model.dtype]
    spread = max(cfg.model.n_gpus, 1)  # probe, evaluation and restoration spread the model's layers over these
    lora, fsdp = cfg.train.method == "lora", cfg.train.strategy == "fsdp"
    tuned_b = 4 if lora else wb  # a LoRA run merges its adapters into float32 weights (recipe.fine_tune)
    on_device = cfg.resources.weight_copies == "device"

    def generation(batch: int, new_tokens: int, compute_b: int) -> float:
        return shape.kv_bytes(batch * (a.prompt_tokens + new_tokens), compute_b) / spread + batch * shape.vocab * 4

    out = {"probe": Memory((p * wb / spread + generation(cfg.probe.batch_size, cfg.probe.max_new_tokens, wb)) / GB, 0,
                           f"weights {_gb(p * wb)} + KV cache of {cfg.probe.batch_size} sequences" + _over(spread))}

    # SFT: the base copy for restoration is taken before it (recipe.fine_tune), beside the model or in node memory
    base_copy = p * wb
    state_b = state_bytes(cfg)
    micro = effective(cfg).micro_batch_size
    acts = shape.activation_bytes(micro * a.sft_tokens, wb, cfg.model.gradient_checkpointing)
    if lora:
        adapters = shape.lora_params(cfg.train.lora_rank, cfg.train.lora_target_modules)
        gpu, node = p * wb / spread + adapters * state_b + acts, 0.0
        what = f"frozen weights {_gb(p * wb)} + {adapters / 1e6:.3g}M adapter scalars x 16 B + activations"
    elif fsdp:
        procs = cfg.train.fsdp_processes or _gpus(cfg)
        gathered = (2 * shape.layer_params + shape.embedding_params * (1 if shape.tied else 2)) * wb  # layers in use, prefetch, root
        if cfg.train.fsdp_cpu_offload:
            gpu, node = gathered + acts, p * (state_b + 4)  # rank 0 also reads the fp32 weights before sharding them
            what = f"{state_b} B/param in node memory ({_gb(p * state_b)}); GPUs: gathered layers + activations"
        else:
            gpu, node = p * state_b / procs + gathered + acts, p * 4
            what = (f"{state_b} B/param sharded over {procs} GPUs ({_gb(p * state_b)}) + gathered layers + activations; "
                    f"node: rank 0's float32 read before sharding")
    else:
        gpu, node = p * state_b / spread + acts, 0.0
        what = f"{state_b} B/param ({_gb(p * state_b)}) + activations" + _over(spread)
    if on_device:
        gpu += base_copy / spread
        what += f" + base copy {_gb(base_copy)}"
    else:
        node += base_copy
    out["sft"] = Memory(gpu / GB, node / GB, what)

    # Evaluation: the fine-tuned model, the base model still loaded (not under FSDP: freed for the workers), the copies
    resident = p * tuned_b + (0 if fsdp else p * wb)
    copies = p * (wb + tuned_b)
    kv = generation(cfg.eval.batch_size, cfg.eval.max_new_tokens, tuned_b)
    where = "on the GPUs" if on_device else "in node memory"
    for stage, extra, label in (("eval", 0, ""), ("restore", 2 * 4 * _largest(shape), " + the selection's float32 temporaries")):
        gpu = (resident + (copies if on_device else 0)) / spread + kv + extra
        out[stage] = Memory(gpu / GB, 0 if on_device else copies / GB,
                            f"fine-tuned {_gb(p * tuned_b)}" + ("" if fsdp else f" + base {_gb(p * wb)}")
                            + f" + copies {_gb(copies)} {where} + KV cache{label}" + _over(spread))
    return out


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / GB:,.0f} GB" if n_bytes >= 100 * GB else f"{n_bytes / GB:.3g} GB"


def _over(spread: int) -> str:
    return f", over {spread} GPUs" if spread > 1 else ""


def _largest(shape: Shape) -> int:
    return max(shape.embedding_params, shape.hidden * shape.intermediate)


def refusals(cfg: Config, shape: Shape, a: Assumptions) -> list[str]:
    """Why this cell cannot run on the GPUs it asks for (resources.gpus), one line per reason; [] when it fits or
    asks for no GPU."""
    gpus = cfg.resources.gpus
    if gpus == 0:
        return []
    out = []
    if cfg.model.n_gpus > gpus:
        out.append(f"model.n_gpus={cfg.model.n_gpus} spreads the model over more GPUs than resources.gpus={gpus}")
    if cfg.train.strategy == "fsdp" and (cfg.train.fsdp_processes or gpus) > gpus:
        out.append(f"train.fsdp_processes={cfg.train.fsdp_processes} is more than resources.gpus={gpus} (one process per GPU)")
    advice = {"probe": "spread the model over more GPUs (model.n_gpus) or lower probe.batch_size",
              "sft": "use train=fsdp over more GPUs, train=fsdp_offload or train=lora",
              "eval": "use resources.weight_copies=cpu, spread the model (model.n_gpus) or lower eval.batch_size",
              "restore": "use resources.weight_copies=cpu or spread the model (model.n_gpus)"}
    for stage, m in memory(cfg, shape, a).items():
        if m.gpu_gb + a.reserve_gb > a.gpu_memory_gb:
            out.append(f"{stage}: {m.gpu_gb + a.reserve_gb:.0f} GB on a GPU of {a.gpu_memory_gb:g} GB ({m.what}, "
                       f"{a.reserve_gb:g} GB reserved): {advice[stage]}")
        if m.node_gb > cfg.resources.mem_gb:
            out.append(f"{stage}: {m.node_gb:.0f} GB of node memory, resources.mem_gb={cfg.resources.mem_gb}: raise it")
    return out


# --- GPU-hours ------------------------------------------------------------------------------------------------------

def split_sizes(cfg: Config) -> dict[str, int]:
    """Facts per split that the probe and the evaluation see: the dataset's splits, or the pre-screened subset."""
    d = cfg.data
    if d.subset.candidates is not None:
        return {split: d.subset.keep for split in EQ_SPLITS}
    if d.name == "entityquestions":
        return dict(EQ_SPLITS)
    return {"train": d.world.n_train, "test": d.world.n_test, "testood": d.world.n_testood}


def sft_examples(cfg: Config, train_levels: list[int] | None = None) -> int:
    """Facts SFT trains on: data.size, or the whole bucket for size=all (a fifth of the train split per level until
    the probe's counts are known; a quarter per SliCK category, whose counts the plan does not read)."""
    train = split_sizes(cfg)["train"]
    levels = train_levels or [train / LEVELS] * LEVELS
    if cfg.mastery.bucket == "all":
        bucket = sum(levels)
    elif cfg.mastery.bucket in SLICK_CATEGORIES:
        bucket = train / len(SLICK_CATEGORIES)
    else:
        bucket = levels[int(cfg.mastery.bucket[1])]
    return round(bucket) if cfg.data.size == "all" else min(cfg.data.size, round(bucket))


def sft_steps(cfg: Config, train_levels: list[int] | None = None) -> int:
    return math.ceil(round(cfg.train.epochs * sft_examples(cfg, train_levels)) / cfg.train.batch_size)


@dataclass(frozen=True)
class Stage:
    gpu_hours: float  # work as docs/report.md counts it: one GPU's hours (FSDP: summed over its GPUs)
    wall_hours: float  # the job's wall time in this stage; held GPU-hours are this x resources.gpus
    how: str  # the arithmetic, for the listing


def gpu_hours(cfg: Config, shape: Shape, a: Assumptions, train_levels: list[int] | None = None) -> dict[str, Stage]:
    """One cell's stages, each computed as if nothing were cached (the plan leaves out what is)."""
    p, wb = shape.params, BYTES[cfg.model.dtype]
    n2 = 2 * shape.matmul_params  # FLOP per token
    flops = a.peak_tflops * 1e12 * a.utilisation
    hbm = a.hbm_tb_s * 1e12
    sizes = split_sizes(cfg)
    lora, fsdp = cfg.train.method == "lora", cfg.train.strategy == "fsdp"
    out = {}

    def generation(name: str, tokens: float, how: str, compute_b: int = wb) -> None:
        seconds = tokens * n2 / (flops if compute_b < 4 else flops / 2)
        out[name] = Stage(seconds / 3600, seconds / 3600, f"{tokens / 1e6:,.1f}M tokens x {n2 / 1e9:.3g} GFLOP{how}")

    probe_facts = sum(sizes.values())
    if cfg.probe.estimator == "sampling":
        generation("probe", probe_facts * cfg.probe.n_map * cfg.probe.n_sample * cfg.probe.max_new_tokens,
                   f" ({probe_facts:,} facts x {cfg.probe.n_map} templates x {cfg.probe.n_sample} samples x "
                   f"{cfg.probe.max_new_tokens} tokens)")
    else:
        generation("probe", probe_facts * cfg.probe.n_map * a.prompt_tokens, f" ({probe_facts:,} facts x {cfg.probe.n_map} templates, one pass)")
    if cfg.probe.with_slick:  # each of n_prompts 4-shot prompts (about 5 questions and 4 answers long) decodes 1 + n_samples answers
        sl = cfg.probe.slick
        answers = probe_facts * sl.n_prompts * (1 + sl.n_samples)
        generation("slick", answers * sl.max_new_tokens + probe_facts * sl.n_prompts * (sl.n_shots + 1) * a.prompt_tokens,
                   f" ({probe_facts:,} facts x {sl.n_prompts} prompts x (1 + {sl.n_samples}) answers x {sl.max_new_tokens} "
                   f"tokens, and the prompts read once)")
    if cfg.data.subset.candidates is not None:
        generation("prescreen", 3 * cfg.data.subset.candidates * cfg.data.subset.n_map * a.prompt_tokens,
                   f" ({3 * cfg.data.subset.candidates:,} candidates x {cfg.data.subset.n_map} templates, one pass)")

    # SFT: per optimizer step, the optimizer's state read and written, the weights read by every forward, recompute
    # and backward of every micro-batch of every process, and the step's FLOP (6N per token, 8N with recompute)
    steps = sft_steps(cfg, train_levels)
    micro = effective(cfg).micro_batch_size
    procs = (cfg.train.fsdp_processes or _gpus(cfg)) if fsdp else 1
    forwards = procs * math.ceil(math.ceil(cfg.train.batch_size / procs) / micro)  # micro-batches of every process
    reads = (3 if cfg.model.gradient_checkpointing else 2) * forwards * p * wb
    trainable = shape.lora_params(cfg.train.lora_rank, cfg.train.lora_target_modules) if lora else p
    state_b = state_bytes(cfg)
    optimizer = 2 * trainable * state_b
    per_token = (2 if lora else 4) + 2 + (2 if cfg.model.gradient_checkpointing else 0)  # backward skips frozen weights' grads
    compute = cfg.train.batch_size * a.sft_tokens * per_token * shape.matmul_params / flops
    if fsdp and cfg.train.fsdp_cpu_offload:  # AdamW on the CPU, every shard to and from the GPUs: the GPUs wait
        wall = optimizer / (a.host_gb_s * GB) + 2 * p * 4 / procs / (a.pcie_gb_s * GB) + (reads / hbm + compute) / procs
        step, busy = f"AdamW on the CPU ({_gb(optimizer)} at {a.host_gb_s:g} GB/s)", wall * procs
    else:
        busy = (optimizer + reads) / hbm + compute
        wall = busy / procs
        step = f"{_gb(optimizer)} optimizer + {_gb(reads)} weight reads at {a.hbm_tb_s:g} TB/s + {compute * 1e3:.3g} ms FLOP"
    out["sft"] = Stage(steps * busy / 3600, steps * wall / 3600, f"{steps:,} steps x {busy:.3g} GPU-s ({step})")
    every = cfg.checkpoint.every
    saves = (steps - 1) // every if every > 0 else 0  # none after the last step: the entry is saved instead
    saved = trainable * state_b * 3 // 4  # weights and AdamW's two moments (no gradients)
    ckpt = saves * saved / (a.storage_gb_s * GB)
    out["checkpoints"] = Stage(ckpt / 3600, ckpt / 3600,  # storage-bound: counted once, like loading
                               f"{saves} saves of {_gb(saved)} at {a.storage_gb_s:g} GB/s (checkpoint.every={every})")

    # Evaluation: after SFT, after each restored ratio above 0, after each restored block of layers; the SFT subset
    # itself (acc_train) after SFT and each ratio
    ratios = len({r for r in cfg.restore.ratios if r > 0})
    blocks = math.ceil(shape.layers / cfg.restore.layer_block_size) if cfg.restore.layer_block_size > 0 else 0
    cap = cfg.eval.max_per_level
    eval_facts = sum(min(sizes[s], LEVELS * cap) if cap else sizes[s] for s in ("test", "testood"))
    answers = (1 + ratios + blocks) * eval_facts + (1 + ratios) * sft_examples(cfg, train_levels)
    generation("eval", answers * cfg.eval.max_new_tokens, f" ({answers:,} answers: {1 + ratios + blocks} evaluation(s) of "
               f"{eval_facts:,} facts, acc_train {1 + ratios} time(s))", 4 if lora else wb)
    kl_facts = min(sizes["test"] / LEVELS, cfg.kl.max_facts or math.inf)
    generation("kl", (cfg.kl.curve_points + 2) * kl_facts * a.kl_tokens,
               f" ({cfg.kl.curve_points + 2} passes over {kl_facts:,.0f} facts of D_test-{cfg.kl.level})")

    # Restoration: streaming passes over the region's base and fine-tuned copies, and a flat allowance per run
    region = shape.region_params(cfg.restore.region)
    bandwidth = hbm if cfg.resources.weight_copies == "device" else a.host_gb_s * GB
    passes = a.restore_passes + ratios + blocks
    temporaries = a.restore_s_per_b * region / 1e9
    restore_s = passes * region * (wb + (4 if lora else wb)) / bandwidth + temporaries
    out["restore"] = Stage(restore_s / 3600, restore_s / 3600,
                           f"{passes} passes over {region / 1e9:.3g}B scalars x 2 copies + {temporaries:.3g} s of temporaries")

    # Loading: the base model (again by the FSDP workers), the fine-tuned weights saved and read back; LoRA saves only
    # its adapters and reads the base again in float32 to merge them
    moved = p * wb * (2 if fsdp else 1) + (p * 4 if lora else 2 * p * wb)
    load_s = moved / (a.storage_gb_s * GB)
    out["loading"] = Stage(load_s / 3600, load_s / 3600, f"{_gb(moved)} at {a.storage_gb_s:g} GB/s")
    return out


def cell_plan(cfg: Config, a: Assumptions | None = None) -> dict[str, Any]:
    """What the plan says of one cell, for its W&B config (`plan`): parameters, GB per GPU per stage, GPU-hours per
    stage; {"unavailable": why} where the model's config.json cannot be read offline."""
    try:
        a = a or Assumptions.default()
        config, source = model_config(cfg)
        shape = Shape.from_config(config) if config is not None else None
    except ConfigError as err:  # the plan is a record: it never stops a run
        config, source = None, str(err)
    if config is None:
        return {"unavailable": source}
    return {"params": shape.params, "gpus": cfg.resources.gpus, "gpu_memory_gb": a.gpu_memory_gb,
            "memory_gb": {k: round(m.gpu_gb, 2) for k, m in memory(cfg, shape, a).items()},
            "node_memory_gb": {k: round(m.node_gb, 2) for k, m in memory(cfg, shape, a).items()},
            "gpu_hours": {k: round(s.gpu_hours, 4) for k, s in gpu_hours(cfg, shape, a).items()},
            "assumptions": asdict(a)}


def check_fits(cfg: Config, a: Assumptions | None = None) -> None:
    """Raise ConfigError (one line) if a cell that asks for GPUs cannot fit in them; a model whose config.json
    cannot be read offline is not checked. `sft_knowledge.plan` lists every reason."""
    if cfg.resources.gpus == 0:
        return
    config, _ = model_config(cfg)
    if config is None:
        return
    reasons = refusals(cfg, Shape.from_config(config), a or Assumptions.default())
    if reasons:
        more = f" (and {len(reasons) - 1} more: see python -m sft_knowledge.plan)" if len(reasons) > 1 else ""
        raise ConfigError(f"model={cfg.model.name} does not fit: {reasons[0]}{more}")
