"""The experiment of Ye et al. (EMNLP 2025), top to bottom, for one configuration.

    world/data -> base model -> mastery probe (levels D-0..D-4) -> SFT subset -> fine-tune
    -> accuracy per level -> token-level KL -> parameter restoration -> results

Heavy products (world, base model, probe levels, fine-tuned weights with their training curves) go
through the content-addressed cache, so cells of a sweep share them and nothing is computed twice.
Evaluation, KL and restoration are cheap next to them and are recomputed from the cached weights.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .cache import Cache
from .config import Config, ConfigError, ModelError, digest
from .data import entityquestions
from .data.facts import SPLITS, Fact, KnowledgeBase, is_correct
from .data.sampling import DataError, balanced_subset, bucket_facts
from .data.synthetic import SyntheticWorld, build_world
from .errors import Interrupted
from .decoding import next_token_logits, qa_prompt
from .evaluate import LevelAccuracy, accuracy, answer_hits, level_subsets
from .fsdp import sft_fsdp
from .kl import early_answers, kl_stats, missing_reason, topk_renormalised_kl
from .models import build_smollm2, build_tiny_world, check_hub_access, hub_source, load, smollm2_spec, tiny_world_spec
from .prescreen import facts_from_json, facts_to_json, prescreen
from .probe import ProbeConfig, ProbeResult, probe
from .restore import restore_into, restore_layers, select_thresholds
from .tracking import Tracker
from .train import attach_lora, merge_lora, sft

UPDATE_SHARE_RATIOS = (1, 3, 5, 10, 20, 40, 60)  # paper Table 3
PREDICTION_COLUMNS = ["split", "level", "relation", "question", "answer", "prediction", "correct"]


@dataclass
class Timer:
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


def weight_copy(model, where: str) -> dict[str, torch.Tensor]:
    """A copy of the weights, beside them (`device`) or in node memory (`cpu`: resources.weight_copies)."""
    return {k: v.detach().to("cpu", copy=True) if where == "cpu" else v.detach().clone() for k, v in model.state_dict().items()}


def probe_config(cfg: Config) -> ProbeConfig:
    return ProbeConfig(**{f.name: getattr(cfg.mastery, f.name) for f in fields(ProbeConfig)})


def load_world(cfg: Config) -> SyntheticWorld:
    """The synthetic world is regenerated from its seed (well under a second), so it needs no cache entry."""
    return build_world(cfg.data.world)


def load_data(cfg: Config, cache: Cache) -> tuple[KnowledgeBase, SyntheticWorld | None, dict | None]:
    """(knowledge base, the synthetic world or None, what identifies a real dataset in cache keys or None).

    A synthetic world is identified by its config, already part of its base model's spec. EntityQuestions
    missing everywhere is fetched into the cache.
    """
    if cfg.data.name == "synthetic":
        world = load_world(cfg)
        return world.kb, world, None
    root = entityquestions.resolve_root(cfg.data, cache)
    kb = entityquestions.load_entityquestions(cfg.data, root)
    spec = {
        "name": cfg.data.name, "root": str(root.resolve()),
        "sizes": {split: len(facts) for split, facts in kb.splits.items()},
        "templates": digest([r.mapping_templates for r in kb.relations.values()]), "aliases": digest(kb.aliases),
    }
    return kb, None, spec


def load_base_model(cfg: Config, cache: Cache, world: SyntheticWorld | None) -> tuple[str | Path, bool, dict]:
    """(weights directory or hub id, cache hit, what identifies the base model in cache keys)."""
    m = cfg.model
    if m.n_gpus > 1 and torch.cuda.device_count() < m.n_gpus:
        raise ModelError(f"model={m.name} needs {m.n_gpus} GPUs in one job (model.n_gpus); this machine has {torch.cuda.device_count()}")
    if m.source == "tiny_world":
        path, hit = build_tiny_world(cache, world, m.pretrain, cfg.data.world)
        return path, hit, tiny_world_spec(m.pretrain, cfg.data.world)
    if m.source == "smollm2_gguf":
        path, hit = build_smollm2(cache)
        return path, hit, smollm2_spec()
    source = hub_source(m.hub_id, m.path)
    check_hub_access(source, m.name)
    return source, True, {"source": "hub", "id": source, "dtype": m.dtype}


def load_subset(cache: Cache, spec: dict, model, tokenizer, kb: KnowledgeBase, cfg: Config) -> tuple[KnowledgeBase, dict, bool]:
    """The pre-screened probe subset (data.subset), through the cache; also the pre-screen's level counts."""
    sub = cfg.data.subset

    def build(tmp: Path) -> None:
        kept, counts = prescreen(model, tokenizer, kb, sub.candidates, sub.keep, sub.n_map, cfg.mastery.temperature, cfg.data.seed)
        (tmp / "subset.json").write_text(json.dumps({"facts": facts_to_json(kept), "prescreen_counts": counts}))

    path, hit = cache.get_or_build("prescreen", spec, build)
    data = json.loads((path / "subset.json").read_text())
    return facts_from_json(kb, data["facts"]), data["prescreen_counts"], hit


def load_mastery(cache: Cache, probe_spec: dict, model, tokenizer, kb: KnowledgeBase, pcfg: ProbeConfig) -> tuple[ProbeResult, bool]:
    def build(tmp: Path) -> None:
        (tmp / "probe.json").write_text(json.dumps(asdict(probe(model, tokenizer, kb, pcfg))))

    path, hit = cache.get_or_build("probe", probe_spec, build)
    return ProbeResult(**json.loads((path / "probe.json").read_text())), hit


def kl_prompts(kb: KnowledgeBase, facts: list[Fact], levels: ProbeResult, base_prompt: str) -> tuple[list[str], list[str]]:
    """(fine-tuned prompts, base prompts). The fine-tuned model is asked the question; the base model
    completes its best mapping template per relation (paper §4.1), or the question with `qa`."""
    ft = [qa_prompt(f.question) for f in facts]
    if base_prompt == "qa":
        return ft, ft
    rels = kb.relations
    return ft, [rels[f.relation].mapping_templates[levels.best_template(f.relation)].format(subject=f.subject) for f in facts]


def token_kl(model, tokenizer, ft_prompts: list[str], base_logits: torch.Tensor, top_k: int) -> torch.Tensor:
    if not ft_prompts:
        return torch.empty(0)
    return topk_renormalised_kl(next_token_logits(model, tokenizer, ft_prompts), base_logits, top_k)


@dataclass
class KLCurve:
    """The KL during SFT: after `points` evenly spaced optimizer steps, the mean KL of the model being trained.
    A picklable object rather than a closure, so the FSDP workers run it too."""
    prompts: list[str]
    base_logits: torch.Tensor
    top_k: int
    points: int

    def __call__(self, model, tokenizer, step: int, steps: int) -> dict | None:
        if not (self.prompts and step in curve_steps(steps, self.points)):
            return None
        kl_mean = token_kl(model, tokenizer, self.prompts, self.base_logits, self.top_k).mean().item()
        model.train()
        return {"kl_mean": kl_mean}


def run_experiment(cfg: Config, cache: Cache, tracker: Tracker) -> dict[str, Any]:
    """Run every stage for `cfg`, logging through `tracker`; return the results record (accuracies in percent)."""
    timer = Timer()
    log = tracker.log
    hits: dict[str, bool] = {}

    if cfg.model.source == "tiny_world" and cfg.data.name != "synthetic":
        raise ConfigError(f"model=tiny_world is pretrained on the synthetic world; with data={cfg.data.name} choose a real model, e.g. model=smollm2_135m")
    with timer("world"):
        kb, world, data_spec = load_data(cfg, cache)
    spread = cfg.model.n_gpus > 1  # the model over the job's GPUs (models.load)
    with timer("base_model"):
        base_dir, hits["base_model"], base_spec = load_base_model(cfg, cache, world)
        model, tokenizer = load(base_dir, cfg.model.dtype, spread)
    prescreen_counts = None
    if data_spec is not None and cfg.data.subset.candidates is not None:
        with timer("prescreen"):
            data_spec = {**data_spec, "base": base_spec, "subset": asdict(cfg.data.subset), "seed": cfg.data.seed,
                         "temperature": cfg.mastery.temperature}
            kb, prescreen_counts, hits["prescreen"] = load_subset(cache, data_spec, model, tokenizer, kb, cfg)
    with timer("probe"):
        pcfg = probe_config(cfg)
        # The bucket is not in it: one probe serves all buckets. `levels` names the rule that turns hits into levels,
        # so probes cached under the old float rule (exactly half the hits could land in D-3) are not reused.
        probe_spec = {"base": base_spec, "probe": asdict(pcfg), "levels": "integer hit counts"}
        if data_spec is not None:
            probe_spec["data"] = data_spec
        levels, hits["probe"] = load_mastery(cache, probe_spec, model, tokenizer, kb, pcfg)
    level_counts = {split: levels.counts(split) for split in SPLITS}

    # What the fine-tuned model is trained and judged on.
    bucket = bucket_facts(kb.splits["train"], levels.level["train"], cfg.mastery.bucket)
    try:
        train_facts = balanced_subset(bucket, cfg.data.size, cfg.data.seed)
    except DataError as err:
        counts = ", ".join(f"D-{lv} {n}" for lv, n in enumerate(level_counts["train"]))
        raise DataError(f"{err} (mastery={cfg.mastery.bucket}; train levels: {counts})") from None
    eval_sets = {
        split: level_subsets(kb.splits[split], levels.level[split], cfg.eval.max_per_level, cfg.eval.seed)
        for split in ("test", "testood")
    }
    kl_facts = level_subsets(kb.splits["test"], levels.level["test"], cfg.kl.max_facts, cfg.eval.seed)[cfg.kl.level]
    ft_prompts, base_prompts = kl_prompts(kb, kl_facts, levels, cfg.kl.base_prompt)
    with timer("kl"):  # on the base model, while it is in memory: the kept facts serve the KL curve and the final KL
        kl_filter = early_answers(model, tokenizer, base_prompts, [kb.answers(f) for f in kl_facts], cfg.kl.answer_within_tokens)
        ft_prompts, base_prompts = [ft_prompts[i] for i in kl_filter.kept], [base_prompts[i] for i in kl_filter.kept]
        base_logits = next_token_logits(model, tokenizer, base_prompts) if base_prompts else torch.empty(0)
    base_state = weight_copy(model, cfg.resources.weight_copies)
    if cfg.train.strategy == "fsdp":
        model = None  # the SFT workers load their own shards: this process's copy would hold GPU memory they need
        torch.cuda.empty_cache()

    lr = cfg.train.lr if cfg.train.lr is not None else cfg.model.lr
    sft_spec = {
        "probe": probe_spec,
        "bucket": cfg.mastery.bucket, "size": cfg.data.size, "data_seed": cfg.data.seed,
        "train": asdict(cfg.train), "lr": lr, "seed": cfg.seed, "kl": asdict(cfg.kl), "eval_seed": cfg.eval.seed,
    }

    curve = KLCurve(ft_prompts, base_logits, cfg.kl.top_k, cfg.kl.curve_points)

    def fine_tune(tmp: Path) -> None:
        # Checkpoints live beside the entry, keyed like it: a requeued job resumes this very SFT.
        checkpoint_dir = cache.work_dir("sft", sft_spec)
        if cfg.train.strategy == "fsdp":  # the workers read the base weights themselves; rank 0 saves into tmp
            train_log = asdict(sft_fsdp(base_dir, tokenizer, train_facts, cfg.train, lr, cfg.seed, tmp, cfg.model.dtype,
                                        curve, cfg.model.micro_batch_size, cfg.model.gradient_checkpointing,
                                        checkpoint_dir, cfg.checkpoint))
        else:
            # LoRA trains adapters on top of the base weights; the KL base (base_logits) is that model with its adapter disabled.
            tuned = attach_lora(model, cfg.train) if cfg.train.method == "lora" else model
            train_log = asdict(sft(tuned, tokenizer, train_facts, cfg.train, lr, cfg.seed,
                                   lambda step, steps, *_: curve(tuned, tokenizer, step, steps),
                                   checkpoint_dir, cfg.checkpoint,
                                   cfg.model.micro_batch_size, cfg.model.gradient_checkpointing))
            # Saved merged: restoration and every later stage read ordinary weights.
            (merge_lora(tuned) if cfg.train.method == "lora" else tuned).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        train_log["kl_curve"] = train_log.pop("events")
        (tmp / "train_log.json").write_text(json.dumps(train_log))

    with timer("sft"):
        ft_dir, hits["sft"] = cache.get_or_build("sft", sft_spec, fine_tune)
        model, tokenizer = load(ft_dir, cfg.model.dtype, spread)
        ft_state = weight_copy(model, cfg.resources.weight_copies)
        train_log = json.loads((ft_dir / "train_log.json").read_text())
    kl_at = {point["step"]: point["kl_mean"] for point in train_log["kl_curve"]}
    n_steps = len(train_log["loss"])
    for step, (loss, step_lr) in enumerate(zip(train_log["loss"], train_log["lr"]), start=1):  # W&B steps only increase
        log({"train/loss": loss, "train/lr": step_lr} | ({"kl/curve_mean": kl_at[step]} if step in kl_at else {}), step=step)

    def evaluate_all() -> dict[str, LevelAccuracy]:
        return {split: accuracy(model, tokenizer, kb, eval_sets[split], cfg.eval) for split in ("test", "testood")}

    def train_accuracy() -> float:
        """Accuracy (%) on the SFT subset itself (paper Table 6)."""
        train_hits = answer_hits(model, tokenizer, kb, train_facts, cfg.eval)
        return round(100 * sum(train_hits) / len(train_hits), 2)

    with timer("evaluate"):
        acc = evaluate_all()
        acc_train = train_accuracy()
    with timer("kl"):
        kl_values = token_kl(model, tokenizer, ft_prompts, base_logits, cfg.kl.top_k)
        kl = kl_stats(kl_values)
    kl_final = {f"kl/{k}": getattr(kl, k) for k in ("mean", "median", "p90")} if kl is not None else {}
    log(_level_metrics("eval", acc) | {"eval/acc_train": acc_train} | kl_final, step=n_steps)  # after the last SFT step
    if cfg.logger.log_predictions:
        tracker.table("eval/predictions", PREDICTION_COLUMNS, _predictions(kb, eval_sets, acc))

    restore_records, block_records = [], []
    with timer("restore"):
        region, strategy, seed, scope = cfg.restore.region, cfg.restore.strategy, cfg.restore.seed, cfg.restore.scope
        ratios = sorted(set(cfg.restore.ratios))
        # Table 3's update shares come from the global top strategy; with it, one streaming call serves both.
        extra = list(UPDATE_SHARE_RATIOS) if strategy == "top" and scope == "global" else []
        selections = select_thresholds(base_state, ft_state, sorted(set(ratios + extra)), region, strategy, seed, scope=scope)
        top = selections if extra else select_thresholds(base_state, ft_state, list(UPDATE_SHARE_RATIOS), region, "top", seed)
        update_share = {str(r): round(100 * top[r].change_share, 2) for r in UPDATE_SHARE_RATIOS}
        tracker.define_axis("restore/*", "restore/ratio")  # W&B charts restoration against the ratio, not the step
        for ratio in tqdm(ratios, desc="restoration", disable=len(ratios) < 3):
            sel = selections[ratio]
            if sel.k == 0:
                restored, restored_train = acc, acc_train
            else:
                restore_into(model, base_state, ft_state, sel, region, strategy, seed)
                restored, restored_train = evaluate_all(), train_accuracy()
            restore_records.append({
                "ratio": ratio, "strategy": strategy, "region": region, "scope": scope, "n_restored": sel.k, "n_region": sel.n_total,
                "change_share": round(100 * sel.change_share, 2), "per_tensor": sel.per_tensor,
                **_acc_fields(restored), "acc_train": restored_train,
            })
            log(_level_metrics("restore", restored) | {"restore/acc_train": restored_train, "restore/ratio": ratio})
        tracker.table("restore/acc_vs_ratio", ["ratio", "split", "accuracy"],
                      [[r["ratio"], split, r[f"acc_{split}"]] for split in ("test", "testood") for r in restore_records],
                      line={"x": "ratio", "y": "accuracy", "stroke": "split", "title": f"Accuracy (%) against restored parameters (%, {strategy})"})
        n_layers = model.config.num_hidden_layers
        size = cfg.restore.layer_block_size
        for first in range(0, n_layers, size) if size > 0 else []:
            layers = set(range(first, min(first + size, n_layers)))
            n = restore_layers(model, base_state, ft_state, layers, region)
            block_records.append({"layers": [first, max(layers)], "n_restored": n, **_acc_fields(evaluate_all())})

    results = {
        "level_counts": level_counts,
        "prescreen_counts": prescreen_counts,
        "n_train_facts": len(train_facts),
        **_acc_fields(acc),
        "acc_train": acc_train,
        "kl_test4": kl.mean if kl is not None and cfg.kl.level == 4 else None,
        "kl_level": cfg.kl.level,
        "kl": asdict(kl) if kl is not None else {"missing": missing_reason(cfg.kl.level, kl_filter)},
        "kl_filter": kl_filter.record(),
        "kl_curve": train_log["kl_curve"],
        "restore": restore_records,
        "restore_blocks": block_records,
        "update_share": update_share,
        "train_loss": train_log["loss"],
        "sft_resumed_at": train_log.get("resumed_at", []),  # steps a requeued SFT resumed from a checkpoint at
        "cache_hits": hits,
        "timings": timer.seconds,
    }
    return results


def curve_steps(total: int, points: int) -> set[int]:
    """Optimizer steps after which the KL curve is measured: `points` evenly spaced, the last one included."""
    return {max(1, round(i * total / points)) for i in range(1, points + 1)} if points > 0 else set()


def _level_metrics(prefix: str, acc: dict[str, LevelAccuracy]) -> dict[str, float]:
    """Scalars for W&B: `<prefix>/acc_<split>` (macro) and `<prefix>/acc_<split>/D-<level>`; empty levels left out."""
    out: dict[str, float] = {}
    for split, a in acc.items():
        values = {f"{prefix}/acc_{split}": a.acc} | {f"{prefix}/acc_{split}/D-{lv}": x for lv, x in enumerate(a.acc_level)}
        out |= {k: round(v, 2) for k, v in values.items() if v is not None}
    return out


def _predictions(kb: KnowledgeBase, eval_sets: dict[str, list[list[Fact]]], acc: dict[str, LevelAccuracy]) -> list[list[Any]]:
    """One row per evaluated fact (PREDICTION_COLUMNS): what the fine-tuned model answered, and whether it counts."""
    rows = []
    for split, by_level in eval_sets.items():
        facts = [(lv, f) for lv, fs in enumerate(by_level) for f in fs]
        for (lv, f), text in zip(facts, acc[split].generations, strict=True):
            rows.append([split, f"D-{lv}", f.relation, f.question, f.object, text, is_correct(text, kb.answers(f))])
    return rows


def _acc_fields(acc: dict[str, LevelAccuracy]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in ("test", "testood"):
        a = acc[split]
        out[f"acc_{split}"] = None if a.acc is None else round(a.acc, 2)
        out[f"acc_{split}_level"] = [None if x is None else round(x, 2) for x in a.acc_level]
        out[f"n_{split}_level"] = a.n_level
        out[f"acc_{split}_over_levels"] = a.over_levels
    return out
