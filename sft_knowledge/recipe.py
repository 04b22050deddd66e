"""The experiment of Ye et al. (EMNLP 2025) for one configuration, as a recipe of stage calls.

    data -> base model -> (pre-screened subset) -> mastery levels D-0..D-4 (and SliCK categories) -> SFT subset
    -> fine-tune -> accuracy per level (and per category) -> token-level KL -> parameter restoration -> RunResult

`run_experiment` reads top to bottom; each step below it takes typed inputs and returns a typed output, and the
steps that go through the content-addressed cache build their key in one place (`probe_spec`, `slick_spec`,
`sft_spec`). Heavy products (base model, probe levels, SliCK categories, fine-tuned weights with their training
curves) are cached, so the cells of a sweep share them and nothing is computed twice; evaluation, KL and restoration are cheap next to them and are
recomputed from the cached weights. W&B is written to between steps, never from inside one.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .cache import Cache, digest
from .config import Config, Effective, HarnessConfig, effective, semantic
from .data import entityquestions
from .data.facts import EVAL_SPLITS, SLICK_CATEGORIES, SPLITS, Fact, KnowledgeBase, is_correct
from .data.sampling import balanced_subset, bucket_facts
from .data.synthetic import SyntheticWorld, build_world
from .decoding import next_token_logits, qa_prompt
from .errors import DataError, Interrupted, ModelError
from .evaluate import answer_hits, accuracy, level_subsets
from .export import export_path, export_restored
from .fsdp import sft_fsdp
from .harness import run_harness
from .kl import AnswerFilter, early_answers, kl_stats, missing_reason, topk_renormalised_kl
from .models import load
from .prescreen import facts_from_json, facts_to_json, prescreen
from .probe import ProbeResult, probe, templates_used
from .restore import exact_zeros, restore_into, restore_layers, select_thresholds
from .results import Accuracies, BlockPoint, KLSummary, RestorePoint, RunResult
from .slick import SlickResult, cross_tab, slick_categories
from .sources import source_of
from .structure import Structure, model_structure
from .tracking import Tracker
from .train import SFTJob, TrainLog, attach_lora, float32_compute, load_lora, merge_lora, sft

UPDATE_SHARE_RATIOS = (1, 3, 5, 10, 20, 40, 60)  # paper Table 3
PREDICTION_COLUMNS = ["split", "level", "relation", "question", "answer", "prediction", "correct"]


def run_experiment(cfg: Config, cache: Cache, tracker: Tracker, run_dir: Path) -> RunResult:
    """Run every stage for `cfg`, logging through `tracker`; the result's accuracies are in percent. Restored models
    that `restore.export` asks for are saved into `run_dir`."""
    timer = Timer()
    with timer("world"):
        data = load_data(cfg, cache)
    with timer("base_model"):
        base = load_base_model(cfg, cache, data)
    structure = model_structure(base.model)  # a model it does not understand is one line here, before any stage
    if cfg.train.method == "lora":
        structure.lora_targets(cfg.train.lora_target_modules)  # so are LoRA targets the model lacks
    if data.spec is not None and cfg.data.subset.candidates is not None:
        with timer("prescreen"):
            data = prescreened(cfg, cache, data, base)
    with timer("probe"):
        mastery = mastery_levels(cfg, cache, data, base)
    if cfg.probe.with_slick:
        with timer("slick"):
            mastery.slick = slick_stage(cfg, cache, data, base)
    train_facts = sft_subset(cfg, data.kb, mastery)
    eval_sets = {split: level_subsets(data.kb.splits[split], mastery.levels.level[split], cfg.eval.max_per_level, cfg.eval.seed)
                 for split in EVAL_SPLITS}
    with timer("kl"):  # on the base model, while it is in memory: its kept facts serve the KL curve and the final KL
        kl_ref = kl_reference(cfg, data.kb, mastery.levels, base)
    with timer("sft"):
        tuned = fine_tune(cfg, cache, effective(cfg), base, mastery, train_facts, kl_ref)
    log_training(tracker, tuned.log)
    with timer("evaluate"):
        judged = judge(cfg, data.kb, tuned, eval_sets, train_facts)
        acc_slick = category_accuracy(cfg, data.kb, tuned, mastery.slick.result) if mastery.slick else None
    with timer("kl"):
        kl = kl_stats(kl_ref.kl(tuned.model, tuned.tokenizer))
    log_evaluation(tracker, cfg, data.kb, eval_sets, judged, kl, len(tuned.log.loss), acc_slick)
    harness = GeneralAbility(cfg.eval.harness, tracker, timer)
    harness.score("fine_tuned", tuned)
    with timer("restore"):
        restore, update_share = restoration_sweep(cfg, tracker, tuned, judged, lambda: judge(cfg, data.kb, tuned, eval_sets, train_facts),
                                                  run_dir, harness)
        blocks = layer_blocks(cfg, tuned, lambda: judge(cfg, data.kb, tuned, eval_sets, []).acc)
    return RunResult(
        run_key="", config={}, level_counts=mastery.counts, prescreen_counts=data.prescreen_counts,
        probe_templates={"set": cfg.probe.templates, "per_relation": templates_used(data.kb, cfg.probe)},
        n_train_facts=len(train_facts), acc=judged.acc, acc_train=judged.acc_train, kl_level=cfg.kl.level, kl=kl,
        kl_missing=None if kl is not None else missing_reason(cfg.kl.level, kl_ref.answer_filter),
        kl_filter=kl_ref.answer_filter.record(), kl_curve=tuned.log.events, restore=restore, restore_blocks=blocks,
        update_share=update_share, base_zeros=exact_zeros(tuned.base_state, tuned.state, tuned.structure), train_loss=tuned.log.loss,
        sft_resumed_at=tuned.log.resumed_at, base_model=base.origin, harness=harness.scores,
        cache_hits={"base_model": base.hit, **data.hits, "probe": mastery.hit, **mastery.slick_hits, "sft": tuned.hit},
        timings=timer.seconds, **slick_record(mastery, acc_slick))


@dataclass
class Timer:
    """Seconds per stage (results.json: timings); an interruption names the stage it stopped."""
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, stage: str):
        start = time.time()
        try:
            yield
        except Interrupted as stop:  # Ctrl-C or SIGTERM: the message names the stage it stopped
            stop.stage = stop.stage or stage
            raise
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.time() - start, 2)


# --- data and the base model ---------------------------------------------------------------------------------------

@dataclass
class Data:
    kb: KnowledgeBase
    world: SyntheticWorld | None  # the synthetic world (its corpus pretrains tiny_world), or None for a real dataset
    spec: dict | None  # what identifies a real dataset in cache keys (a synthetic world is in its base model's spec)
    prescreen_counts: dict[str, list[int]] | None = None
    hits: dict[str, bool] = field(default_factory=dict)  # the pre-screen's cache hit
    # Held-out facts of no split, SliCK's exemplars (probe.slick.exemplars=dev): the world's bridge facts, EntityQuestions'
    # dev split (read only when SliCK draws from it); not in `spec`, so no existing key changes (slick_spec holds them)
    dev: list[Fact] | None = None


def load_data(cfg: Config, cache: Cache) -> Data:
    """The synthetic world is regenerated from its seed (well under a second), so it needs no cache entry.
    EntityQuestions missing everywhere is fetched into the cache."""
    if cfg.data.name == "synthetic":
        world = build_world(cfg.data.world)
        return Data(world.kb, world, None, dev=world.bridge)
    root = entityquestions.resolve_root(cfg.data.entityquestions, cache)
    kb = entityquestions.load_entityquestions(cfg.data.entityquestions, root)
    dev = entityquestions.load_dev(root) if cfg.probe.with_slick and cfg.probe.slick.exemplars == "dev" else None
    spec = {
        "name": cfg.data.name, "root": str(root.resolve()),
        "sizes": {split: len(facts) for split, facts in kb.splits.items()},
        "templates": digest([r.mapping_templates for r in kb.relations.values()]), "aliases": digest(kb.aliases),
    }
    return Data(kb, None, spec, dev=dev)


@dataclass
class BaseModel:
    path: str | Path  # weights directory or hub id
    spec: dict  # what identifies it in cache keys
    model: Any
    tokenizer: Any
    hit: bool
    origin: str | None = None  # where the weights came from (sources.Built.origin)
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # its weights as they were, for restoration


def load_base_model(cfg: Config, cache: Cache, data: Data) -> BaseModel:
    m = cfg.model
    if m.n_gpus > 1 and torch.cuda.device_count() < m.n_gpus:
        raise ModelError(f"model={m.name} needs {m.n_gpus} GPUs in one job (model.n_gpus); this machine has {torch.cuda.device_count()}")
    source = source_of(cfg)
    built = source.build(cfg, cache, data.world)
    model, tokenizer = load(built.path, m.dtype, spread=m.n_gpus > 1)
    return BaseModel(built.path, source.spec(cfg), model, tokenizer, built.hit, built.origin)


def prescreen_spec(cfg: Config, data: Data, base: BaseModel) -> dict:
    """The pre-screen's cache key, which is also the pre-screened data's spec in the probe's key."""
    return {**data.spec, "base": base.spec, "subset": asdict(cfg.data.subset), "seed": cfg.data.seed, "temperature": cfg.probe.temperature}


def prescreened(cfg: Config, cache: Cache, data: Data, base: BaseModel) -> Data:
    """The pre-screened probe subset (data.subset) of a real dataset, through the cache, with its level counts."""
    sub = cfg.data.subset
    spec = prescreen_spec(cfg, data, base)

    def build(tmp: Path) -> None:
        kept, counts = prescreen(base.model, base.tokenizer, data.kb, sub.candidates, sub.keep, sub.n_map, cfg.probe.temperature, cfg.data.seed)
        (tmp / "subset.json").write_text(json.dumps({"facts": facts_to_json(kept), "prescreen_counts": counts}))

    path, hit = cache.get_or_build("prescreen", spec, build)
    subset = json.loads((path / "subset.json").read_text())
    return Data(facts_from_json(data.kb, subset["facts"]), None, spec, subset["prescreen_counts"], {"prescreen": hit}, data.dev)


# --- stage 1: mastery levels and the SFT subset ----------------------------------------------------------------------

@dataclass
class Categories:
    """SliCK's categories of every fact (probe=slick), beside the levels."""
    result: SlickResult
    spec: dict  # SliCK's cache key: the key of SFT on a SliCK bucket builds on it
    hit: bool


@dataclass
class Mastery:
    levels: ProbeResult
    spec: dict  # the probe's cache key: SFT's key builds on it
    hit: bool
    slick: Categories | None = None  # probe=slick

    @property
    def counts(self) -> dict[str, list[int]]:
        return {split: self.levels.counts(split) for split in SPLITS}

    @property
    def slick_hits(self) -> dict[str, bool]:
        return {"slick": self.slick.hit} if self.slick else {}


def probe_spec(cfg: Config, data: Data, base: BaseModel) -> dict:
    # The bucket is not in it: one probe serves all buckets. `levels` names the rule that turns hits into levels,
    # so probes cached under the old float rule (exactly half the hits could land in D-3) are not reused. Probe
    # options added later enter it only away from their old value (config.ADDED_LATER). Whether SliCK runs beside the
    # probe, and its settings, are not in it: probe=paper and probe=slick share one probe.
    probe = {k: v for k, v in semantic(cfg)["probe"].items() if k not in ("categories", "slick")}
    spec = {"base": base.spec, "probe": probe, "levels": "integer hit counts"}
    return spec | ({"data": data.spec} if data.spec is not None else {})


def mastery_levels(cfg: Config, cache: Cache, data: Data, base: BaseModel) -> Mastery:
    def build(tmp: Path) -> None:
        (tmp / "probe.json").write_text(json.dumps(asdict(probe(base.model, base.tokenizer, data.kb, cfg.probe))))

    spec = probe_spec(cfg, data, base)
    path, hit = cache.get_or_build("probe", spec, build)
    return Mastery(ProbeResult(**json.loads((path / "probe.json").read_text())), spec, hit)


def slick_spec(cfg: Config, data: Data, base: BaseModel) -> dict:
    """SliCK's cache key: the base model and the facts as in the probe's, SliCK's settings, and the exemplar pool of
    exemplars=dev, which no data spec holds (EntityQuestions' dev split, the world's bridge facts)."""
    slick = cfg.probe.slick
    pool = digest([asdict(f) for f in data.dev]) if slick.exemplars == "dev" and data.dev is not None else None
    spec = {"base": base.spec, "slick": asdict(slick), "pool": pool}
    return spec | ({"data": data.spec} if data.spec is not None else {})


def slick_stage(cfg: Config, cache: Cache, data: Data, base: BaseModel) -> Categories:
    def build(tmp: Path) -> None:
        result = slick_categories(base.model, base.tokenizer, data.kb, cfg.probe.slick, data.dev)
        (tmp / "slick.json").write_text(json.dumps(asdict(result)))

    spec = slick_spec(cfg, data, base)
    path, hit = cache.get_or_build("slick", spec, build)
    return Categories(SlickResult(**json.loads((path / "slick.json").read_text())), spec, hit)


def sft_subset(cfg: Config, kb: KnowledgeBase, mastery: Mastery) -> list[Fact]:
    """`data.size` train facts of the bucket `mastery.bucket`, a level's or a SliCK category's, balanced over
    relations (paper §3.4)."""
    train, bucket = kb.splits["train"], cfg.mastery.bucket
    if bucket in SLICK_CATEGORIES:
        facts = [f for f, inside in zip(train, mastery.slick.result.members("train", bucket)) if inside]
        counts = ", ".join(f"{c} {n}" for c, n in zip(SLICK_CATEGORIES, mastery.slick.result.counts("train")))
        what = "train SliCK categories"
    else:
        facts = bucket_facts(train, mastery.levels.level["train"], bucket)
        counts = ", ".join(f"D-{lv} {n}" for lv, n in enumerate(mastery.levels.counts("train")))
        what = "train levels"
    try:
        return balanced_subset(facts, cfg.data.size, cfg.data.seed)
    except DataError as err:
        raise DataError(f"{err} (mastery={bucket}; {what}: {counts})") from None


def slick_record(mastery: Mastery, acc_slick: Accuracies | None) -> dict:
    """RunResult's SliCK fields: counts per split, the levels x categories table, accuracy per category; none
    without SliCK."""
    if mastery.slick is None:
        return {}
    result = mastery.slick.result
    return {"slick_counts": {split: dict(zip(SLICK_CATEGORIES, result.counts(split))) for split in SPLITS},
            "cross_tab": cross_tab(mastery.levels, result),
            "acc_slick": {split: {c: {"acc": None if x is None else round(x, 2), "n": n}
                                  for c, x, n in zip(SLICK_CATEGORIES, a.acc_level, a.n_level)} for split, a in acc_slick.items()}}


# --- stage 4's reference: the base model's side of the KL ------------------------------------------------------------

@dataclass
class KLReference:
    """The facts of D_test-<kl.level> the KL is measured on and the base model's logits for them (paper §4.1).
    Picklable: the FSDP workers measure the KL curve with it."""
    ft_prompts: list[str]  # what the fine-tuned model is asked
    base_prompts: list[str]  # what the base model completes
    base_logits: torch.Tensor
    top_k: int
    curve_points: int
    answer_filter: AnswerFilter
    base_before: list[list[int]] = field(default_factory=list)  # the base model's own tokens read after each base prompt

    def kl(self, model, tokenizer) -> torch.Tensor:
        if not self.ft_prompts:
            return torch.empty(0)
        return topk_renormalised_kl(next_token_logits(model, tokenizer, self.ft_prompts), self.base_logits, self.top_k)

    def curve(self, model, tokenizer, step: int, total: int) -> dict | None:
        """SFTJob.curve: the mean KL after `curve_points` evenly spaced optimizer steps (the KL curve)."""
        if not (self.ft_prompts and step in curve_steps(total, self.curve_points)):
            return None
        kl_mean = self.kl(model, tokenizer).mean().item()
        model.train()
        return {"kl_mean": kl_mean}

    def spec(self) -> dict | None:
        """What the KL curve measured during SFT depends on, for SFT's cache key: the prompts and the tokens the base
        model reads after them (the base logits follow from these and the base model, already in the key), top-k and
        the points. None without a curve. The tokens enter only where there are some, so an entry made before
        kl.position existed (every base prompt read at its first generated token) stays valid wherever every kept
        answer begins at that token."""
        if self.curve_points == 0 or not self.ft_prompts:
            return None
        read = [self.ft_prompts, self.base_prompts] + ([self.base_before] if any(self.base_before) else [])
        return {"prompts": digest(read), "top_k": self.top_k, "points": self.curve_points}


def kl_reference(cfg: Config, kb: KnowledgeBase, levels: ProbeResult, base: BaseModel) -> KLReference:
    """The fine-tuned model is asked the question; the base model completes its best mapping template per relation
    (paper §4.1), or the question with kl.base_prompt=qa. Only facts whose answer the base model writes early count;
    the base model is read at kl.position."""
    facts = level_subsets(kb.splits["test"], levels.level["test"], cfg.kl.max_facts, cfg.eval.seed)[cfg.kl.level]
    ft_prompts = [qa_prompt(f.question) for f in facts]
    if cfg.kl.base_prompt == "qa":
        base_prompts = ft_prompts
    else:
        base_prompts = [kb.relations[f.relation].mapping_templates[levels.best_template(f.relation)].format(subject=f.subject) for f in facts]
    kept = early_answers(base.model, base.tokenizer, base_prompts, [kb.answers(f) for f in facts], cfg.kl.answer_within_tokens)
    ft_prompts, base_prompts = [ft_prompts[i] for i in kept.kept], [base_prompts[i] for i in kept.kept]
    # answer_start: the base model's own tokens before the answer are read after its prompt, so its logits are those
    # of the answer's first token; first_token: right after the prompt
    before = kept.before if cfg.kl.position == "answer_start" else [[] for _ in base_prompts]
    # A LoRA run is evaluated in float32 (train.merge_lora): its base side too, so that its KL is the adapters' alone.
    with float32_compute(base.model) if cfg.train.method == "lora" else nullcontext():
        base_logits = next_token_logits(base.model, base.tokenizer, base_prompts, after=before) if base_prompts else torch.empty(0)
    return KLReference(ft_prompts, base_prompts, base_logits, cfg.kl.top_k, cfg.kl.curve_points, kept, before)


def curve_steps(total: int, points: int) -> set[int]:
    """Optimizer steps after which the KL curve is measured: `points` evenly spaced, the last one included."""
    return {max(1, round(i * total / points)) for i in range(1, points + 1)} if points > 0 else set()


# --- stage 2: fine-tuning --------------------------------------------------------------------------------------------

@dataclass
class FineTuned:
    model: Any
    tokenizer: Any
    log: TrainLog  # loss and lr per step; events: the KL curve
    hit: bool
    base_state: dict[str, torch.Tensor]  # the weights before and after SFT, for restoration
    state: dict[str, torch.Tensor]
    structure: Structure  # what restoration's regions and layers are in these weights


def sft_spec(cfg: Config, eff: Effective, mastery: Mastery, kl_ref: KLReference) -> dict:
    """SFT's cache key: what changes the fine-tuned weights, and what the KL curve measured during SFT depends on
    (`KLReference.spec`, nothing without a curve). The rest of `kl` and `eval` is not in it: the final KL and the
    evaluation are recomputed from the cached weights, so sweeping them retrains nothing."""
    spec = {"probe": mastery.spec, "bucket": cfg.mastery.bucket, "size": cfg.data.size, "data_seed": cfg.data.seed,
            "train": semantic(cfg)["train"], "lr": eff.lr, "micro_batch_size": eff.micro_batch_size, "seed": cfg.seed,
            "kl_curve": kl_ref.spec()}
    # A SliCK bucket's facts come from SliCK's categories: their key too (a level bucket's key stays as it was).
    if cfg.mastery.bucket in SLICK_CATEGORIES:
        spec["slick"] = mastery.slick.spec
    # LoRA entries hold the adapters alone, drawn from the seed; older ones held bf16-merged weights from one draw.
    return spec | ({"lora": "adapters drawn from seed"} if cfg.train.method == "lora" else {})


def weight_copy(model, where: str) -> dict[str, torch.Tensor]:
    """A copy of the weights, beside them (`device`) or in node memory (`cpu`: resources.weight_copies)."""
    return {k: v.detach().to("cpu", copy=True) if where == "cpu" else v.detach().clone() for k, v in model.state_dict().items()}


def fine_tune(cfg: Config, cache: Cache, eff: Effective, base: BaseModel, mastery: Mastery, facts: list[Fact],
              kl_ref: KLReference) -> FineTuned:
    base_state = weight_copy(base.model, cfg.resources.weight_copies)
    spec = sft_spec(cfg, eff, mastery, kl_ref)
    job = SFTJob(facts, cfg.train, eff.lr, eff.micro_batch_size, cfg.seed, cfg.model.gradient_checkpointing,
                 checkpoint_dir=cache.work_dir("sft", spec),  # beside the entry: a requeued job resumes this very SFT
                 checkpoint=cfg.checkpoint, curve=kl_ref.curve)
    if cfg.train.strategy == "fsdp":
        base.model = None  # the SFT workers load their own shards: this process's copy would hold GPU memory they need
        torch.cuda.empty_cache()

    def build(tmp: Path) -> None:
        if cfg.train.strategy == "fsdp":  # the workers read the base weights themselves; rank 0 saves into tmp
            log = sft_fsdp(job, base.path, cfg.model.dtype, base.tokenizer, tmp)
        else:
            # LoRA trains adapters on top of the base weights; the KL base (its logits) is that model with its adapter disabled.
            tuned = attach_lora(base.model, cfg.train, cfg.seed) if cfg.train.method == "lora" else base.model
            log = sft(tuned, base.tokenizer, job)
            tuned.save_pretrained(tmp)  # LoRA: the adapters alone (megabytes), merged when loaded
        base.tokenizer.save_pretrained(tmp)
        (tmp / "train_log.json").write_text(json.dumps(asdict(log)))

    path, hit = cache.get_or_build("sft", spec, build)
    if cfg.train.method == "lora":  # the base in float32, the adapters merged: restoration and every later stage see it all
        model, tokenizer = load(base.path, "float32", spread=eff.n_gpus > 1)
        model = merge_lora(load_lora(model, path))
    else:
        model, tokenizer = load(path, cfg.model.dtype, spread=eff.n_gpus > 1)
    log = TrainLog(**json.loads((path / "train_log.json").read_text()))
    return FineTuned(model, tokenizer, log, hit, base_state, weight_copy(model, cfg.resources.weight_copies), model_structure(model))


def log_training(tracker: Tracker, log: TrainLog) -> None:
    kl_at = {point["step"]: point["kl_mean"] for point in log.events}
    for step, (loss, step_lr) in enumerate(zip(log.loss, log.lr), start=1):  # W&B steps only increase
        tracker.log({"train/loss": loss, "train/lr": step_lr} | ({"kl/curve_mean": kl_at[step]} if step in kl_at else {}), step=step)


# --- stage 3: accuracy ----------------------------------------------------------------------------------------------

@dataclass
class Judged:
    acc: Accuracies
    acc_train: float | None  # accuracy (%) on the SFT subset itself (paper Table 6); None when not asked


def judge(cfg: Config, kb: KnowledgeBase, tuned: FineTuned, eval_sets: dict[str, list[list[Fact]]], train_facts: list[Fact]) -> Judged:
    acc = {split: accuracy(tuned.model, tuned.tokenizer, kb, eval_sets[split], cfg.eval) for split in EVAL_SPLITS}
    if not train_facts:
        return Judged(acc, None)
    hits = answer_hits(tuned.model, tuned.tokenizer, kb, train_facts, cfg.eval)
    return Judged(acc, round(100 * sum(hits) / len(hits), 2))


def category_accuracy(cfg: Config, kb: KnowledgeBase, tuned: FineTuned, slick: SlickResult) -> Accuracies:
    """Accuracy per SliCK category on each evaluation split, as per level: at most eval.max_per_level facts of each."""
    return {split: accuracy(tuned.model, tuned.tokenizer, kb, level_subsets(kb.splits[split], slick.category[split],
                                                                          cfg.eval.max_per_level, cfg.eval.seed, len(SLICK_CATEGORIES)), cfg.eval)
            for split in EVAL_SPLITS}


def log_evaluation(tracker: Tracker, cfg: Config, kb: KnowledgeBase, eval_sets: dict[str, list[list[Fact]]], judged: Judged,
                   kl: KLSummary | None, step: int, acc_slick: Accuracies | None = None) -> None:
    kl_final = {f"kl/{k}": getattr(kl, k) for k in ("mean", "median", "p90")} if kl is not None else {}
    slick = {f"eval/slick/{c}/acc_{split}": round(x, 2) for split, a in (acc_slick or {}).items()
             for c, x in zip(SLICK_CATEGORIES, a.acc_level) if x is not None}
    tracker.log(level_metrics("eval", judged.acc) | {"eval/acc_train": judged.acc_train} | kl_final | slick, step=step)  # after the last SFT step
    if cfg.logger.log_predictions:
        tracker.table("eval/predictions", PREDICTION_COLUMNS, predictions(kb, eval_sets, judged.acc))


def level_metrics(prefix: str, acc: Accuracies) -> dict[str, float]:
    """Scalars for W&B: `<prefix>/acc_<split>` (macro) and `<prefix>/acc_<split>/D-<level>`; empty levels left out."""
    out: dict[str, float] = {}
    for split, a in acc.items():
        values = {f"{prefix}/acc_{split}": a.acc} | {f"{prefix}/acc_{split}/D-{lv}": x for lv, x in enumerate(a.acc_level)}
        out |= {k: round(v, 2) for k, v in values.items() if v is not None}
    return out


def predictions(kb: KnowledgeBase, eval_sets: dict[str, list[list[Fact]]], acc: Accuracies) -> list[list[Any]]:
    """One row per evaluated fact (PREDICTION_COLUMNS): what the fine-tuned model answered, and whether it counts."""
    rows = []
    for split, by_level in eval_sets.items():
        facts = [(lv, f) for lv, fs in enumerate(by_level) for f in fs]
        for (lv, f), text in zip(facts, acc[split].generations, strict=True):
            rows.append([split, f"D-{lv}", f.relation, f.question, f.object, text, is_correct(text, kb.answers(f))])
    return rows


# --- stage 5: parameter restoration ----------------------------------------------------------------------------------

def restoration_sweep(cfg: Config, tracker: Tracker, tuned: FineTuned, judged: Judged, judge_now,
                      run_dir: Path, harness: GeneralAbility) -> tuple[list[RestorePoint], dict[str, float]]:
    """Restore each ratio of restore.ratios and judge the model again (paper §5), saving the restored model of each
    ratio in restore.export into run_dir and scoring its general ability (eval.harness) while it is in memory; also
    the update shares of Table 3, which come from the global top strategy: with it, one streaming selection serves both."""
    r = cfg.restore
    ratios = sorted(set(r.ratios))
    extra = list(UPDATE_SHARE_RATIOS) if r.strategy == "top" and r.scope == "global" else []
    region = tuned.structure.region(r.region)
    selections = select_thresholds(tuned.base_state, tuned.state, sorted(set(ratios + extra)), region, r.strategy, r.seed,
                                   scope=r.scope, eps=r.eps, zeros=r.zeros)
    top = selections if extra else select_thresholds(tuned.base_state, tuned.state, list(UPDATE_SHARE_RATIOS), region, "top",
                                                     r.seed, eps=r.eps, zeros=r.zeros)
    update_share = {str(ratio): round(100 * top[ratio].change_share, 2) for ratio in UPDATE_SHARE_RATIOS}
    tracker.define_axis("restore/*", "restore/ratio")  # W&B charts restoration against the ratio, not the step
    points = []
    for ratio in tqdm(ratios, desc="restoration", disable=len(ratios) < 3):
        sel = selections[ratio]
        if sel.k > 0:
            restore_into(tuned.model, tuned.base_state, tuned.state, sel, region, r.strategy, r.seed)
        restored = judge_now() if sel.k > 0 else judged
        # With k == 0 the model is still the fine-tuned one: ratios run in increasing order, so none was restored yet.
        saved = export_restored(tuned.model, tuned.tokenizer, sel.per_tensor, export_path(run_dir, ratio)) if ratio in r.export else None
        if saved:
            harness.score(f"restored/{ratio:g}", tuned)
        points.append(RestorePoint(ratio, r.strategy, r.region, r.scope, sel.k, sel.n_total, round(100 * sel.change_share, 2),
                                   sel.per_tensor, restored.acc, restored.acc_train, str(saved.resolve()) if saved else None))
        tracker.log(level_metrics("restore", restored.acc) | {"restore/acc_train": restored.acc_train, "restore/ratio": ratio})
    tracker.table("restore/acc_vs_ratio", ["ratio", "split", "accuracy"],
                  [[p.ratio, split, p.to_json()[f"acc_{split}"]] for split in EVAL_SPLITS for p in points],
                  line={"x": "ratio", "y": "accuracy", "stroke": "split", "title": f"Accuracy (%) against restored parameters (%, {r.strategy})"})
    return points, update_share


class GeneralAbility:
    """Table 5: lm-evaluation-harness scores of the fine-tuned model and of each exported restored model, gathered as
    results.json's `harness` ({"fine_tuned": scores, "restored": {"<ratio>": scores}}) and logged to W&B's summary."""

    def __init__(self, cfg: HarnessConfig, tracker: Tracker, timer: Timer):
        self.cfg, self.tracker, self.timer = cfg, tracker, timer
        self.scores: dict[str, Any] = {}

    def score(self, which: str, tuned: FineTuned) -> None:
        if not self.cfg.tasks:
            return
        with self.timer("harness"):
            scores = run_harness(tuned.model, tuned.tokenizer, self.cfg)
        if which == "fine_tuned":
            self.scores["fine_tuned"] = scores
        else:
            self.scores.setdefault("restored", {})[which.removeprefix("restored/")] = scores
        self.tracker.summary({f"harness/{which}/{task}/{metric}": v for task, row in scores.items() for metric, v in row.items()})


def layer_blocks(cfg: Config, tuned: FineTuned, judge_acc) -> list[BlockPoint]:
    """Whole blocks of restore.layer_block_size decoder layers restored, one block at a time (paper Table 11)."""
    n_layers, size, region = tuned.structure.n_layers, cfg.restore.layer_block_size, tuned.structure.region(cfg.restore.region)
    out = []
    for first in range(0, n_layers, size) if size > 0 else []:
        layers = set(range(first, min(first + size, n_layers)))
        n = restore_layers(tuned.model, tuned.base_state, tuned.state, layers, region)
        out.append(BlockPoint([first, max(layers)], n, judge_acc()))
    return out
