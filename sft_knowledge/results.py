"""The results schema: what one run records in its `results.json`, as typed records.

The recipe builds a `RunResult`; `to_json` writes it, `load` reads it back; every reader (run and sweep summaries,
status, the report) and the tests go through these classes, so a renamed field fails in one place. The JSON keeps
the flat names readers and W&B know (`acc_test`, `acc_test_level`, `n_test_level`, ...): `LevelAccuracy` is
written as four keys per split. Files written before a field existed load with its default (None or empty).
This module imports nothing heavy: reading results needs no torch.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .data.facts import EVAL_SPLITS, LEVELS


@dataclass
class LevelAccuracy:
    """Accuracy (%) of one split per mastery level, and its macro mean (paper §3.3)."""
    acc_level: list[float | None]  # percent per level D-0..D-4; None where the level is empty
    n_level: list[int]
    acc: float | None  # macro mean over the levels that have facts
    over_levels: list[int]
    generations: list[str] = field(default_factory=list, repr=False)  # every answer, level by level (not saved)

    @classmethod
    def from_hits(cls, hits_by_level: list[list[bool]], generations: list[str] | None = None) -> LevelAccuracy:
        acc_level = [100.0 * sum(h) / len(h) if h else None for h in hits_by_level]
        over = [lv for lv, a in enumerate(acc_level) if a is not None]
        macro = sum(acc_level[lv] for lv in over) / len(over) if over else None
        return cls(acc_level, [len(h) for h in hits_by_level], macro, over, generations or [])


Accuracies = dict[str, LevelAccuracy]  # by evaluation split: test, testood


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def _acc_to_json(acc: Accuracies) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in EVAL_SPLITS:
        a = acc[split]
        out[f"acc_{split}"] = _round(a.acc)
        out[f"acc_{split}_level"] = [_round(x) for x in a.acc_level]
        out[f"n_{split}_level"] = a.n_level
        out[f"acc_{split}_over_levels"] = a.over_levels
    return out


def _acc_from_json(d: dict[str, Any]) -> Accuracies:
    return {split: LevelAccuracy(d[f"acc_{split}_level"], d.get(f"n_{split}_level", [0] * len(LEVELS)), d[f"acc_{split}"],
                                 d.get(f"acc_{split}_over_levels", [])) for split in EVAL_SPLITS}


def _plain(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj) if f.name not in skip}


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass
class RestorePoint:
    """The fine-tuned model with `ratio`% of its region's scalars restored to the base values (paper §5)."""
    ratio: float
    strategy: str  # top | bottom | random
    region: str
    scope: str  # global | per_tensor | per_layer
    n_restored: int
    n_region: int
    change_share: float  # % of the region's total relative change held by the restored scalars
    per_tensor: dict[str, int]  # restored scalars per tensor
    acc: Accuracies
    acc_train: float | None = None  # on the SFT subset (paper Table 6); None in results written before it was kept
    export_dir: str | None = None  # where this restored model was saved (restore.export), else None

    def accuracy(self, split: str) -> float | None:
        """Macro accuracy on an evaluation split, or (split `train`) on the SFT subset."""
        return self.acc_train if split == "train" else self.acc[split].acc

    def to_json(self) -> dict[str, Any]:
        return _plain(self, ("acc", "acc_train")) | _acc_to_json(self.acc) | {"acc_train": self.acc_train}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RestorePoint:
        return cls(**_known(cls, {**d, "scope": d.get("scope", "global")}), acc=_acc_from_json(d))


@dataclass
class BlockPoint:
    """Whole decoder layers `layers[0]..layers[1]` restored (paper Table 11)."""
    layers: list[int]
    n_restored: int
    acc: Accuracies

    def accuracy(self, split: str) -> float | None:
        return self.acc[split].acc

    def to_json(self) -> dict[str, Any]:
        return _plain(self, ("acc",)) | _acc_to_json(self.acc)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BlockPoint:
        return cls(**_known(cls, d), acc=_acc_from_json(d))


@dataclass
class KLSummary:
    """The distribution of the token-level KL over the kept facts of D_test-<kl_level> (paper §4.1)."""
    mean: float
    median: float
    p90: float
    max: float
    n: int
    histogram: list[int]  # counts in 20 equal-width bins from 0 to max
    bin_edges: list[float]  # 21 edges


@dataclass
class RunResult:
    """Everything one run measured; `results.json` is `to_json()` of it."""
    run_key: str
    config: dict[str, Any]  # the semantic config (what the run key hashes)
    level_counts: dict[str, list[int]]  # facts per level D-0..D-4 in each split, by the base model's probe
    n_train_facts: int
    acc: Accuracies  # the fine-tuned model
    acc_train: float | None  # on its SFT subset
    kl_level: int  # the KL is measured on D_test-<kl_level>
    kl: KLSummary | None
    kl_missing: str | None  # why `kl` is None: an empty level, or no fact kept by the answer filter
    kl_filter: dict[str, Any]  # how many facts the answer filter kept (kl.AnswerFilter.record)
    kl_curve: list[dict[str, Any]]  # {"step", "kl_mean"} during SFT
    restore: list[RestorePoint]
    restore_blocks: list[BlockPoint]
    update_share: dict[str, float]  # % of the total change held by the top r% scalars (paper Table 3), by r
    train_loss: list[float]  # per optimizer step
    sft_resumed_at: list[int]  # steps a requeued SFT resumed from a checkpoint at
    cache_hits: dict[str, bool]
    timings: dict[str, float]  # seconds per stage
    prescreen_counts: dict[str, list[int]] | None = None  # a pre-screened subset's likelihood levels (data.subset)
    base_model: str | None = None  # where tiny_world's model came from: shipped, or pretrained here (and how long)
    # The probe's mapping templates: {"set": all | paper_only, "per_relation": templates probed per relation};
    # empty in results written before it was recorded (they all used "all")
    probe_templates: dict[str, Any] = field(default_factory=dict)
    # Per restoration region, its base scalars of exactly 0 and all its scalars ({"zeros", "scalars"}): each such
    # scalar that SFT moves scores |change| / restore.eps, so a few of them can fill the top of the ranking
    base_zeros: dict[str, dict[str, int]] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)  # the command line's overrides
    provenance: dict[str, Any] = field(default_factory=dict)  # code version, packages, machine
    # Whether the run reached W&B: {"mode": logger.mode, "wandb": "on" | "off", "reason": why off} (tracking.Tracker);
    # empty in results written before it was kept
    tracking: dict[str, Any] = field(default_factory=dict)
    # eval.harness (Table 5): {"fine_tuned": scores, "restored": {"<ratio>": scores}} for the ratios restore.export
    # saved, scores being task -> metric -> value (harness.run_harness); empty where the harness was not run
    harness: dict[str, Any] = field(default_factory=dict)
    # SliCK (probe=slick; None, and absent from results.json, without it): facts per category in each split
    # ({split: {category: n}}), the facts of each D-level in each category per split (slick.cross_tab), and the
    # fine-tuned model's accuracy (%) per category on the evaluation splits ({split: {category: {"acc", "n"}}}, acc
    # None for a category without facts)
    slick_counts: dict[str, dict[str, int]] | None = None
    cross_tab: dict[str, dict[str, dict[str, int]]] | None = None
    acc_slick: dict[str, dict[str, dict[str, Any]]] | None = None

    @property
    def kl_mean(self) -> float | None:
        return None if self.kl is None else self.kl.mean

    def accuracy(self, split: str, level: int | None = None) -> float | None:
        """Accuracy on an evaluation split: its macro mean, or that of one level; split `train`: on the SFT subset."""
        if split == "train":
            return self.acc_train
        return self.acc[split].acc if level is None else self.acc[split].acc_level[level]

    def slick_accuracy(self, split: str, category: str) -> float | None:
        """Accuracy on the facts of one SliCK category of an evaluation split; None without SliCK or such facts."""
        return None if self.acc_slick is None else self.acc_slick[split][category]["acc"]

    def to_json(self) -> dict[str, Any]:
        kl = asdict(self.kl) if self.kl is not None else {"missing": self.kl_missing}
        head = {k: getattr(self, k) for k in ("run_key", "config", "overrides", "provenance", "tracking", "base_model",
                                               "level_counts", "probe_templates", "prescreen_counts", "n_train_facts")}
        return head | _acc_to_json(self.acc) | {
            "acc_train": self.acc_train, "kl_level": self.kl_level, "kl": kl, "kl_filter": self.kl_filter,
            "kl_curve": self.kl_curve, "restore": [p.to_json() for p in self.restore],
            "restore_blocks": [b.to_json() for b in self.restore_blocks], "update_share": self.update_share,
            "base_zeros": self.base_zeros,
            "train_loss": self.train_loss, "sft_resumed_at": self.sft_resumed_at, "cache_hits": self.cache_hits,
            "timings": self.timings, "harness": self.harness,
        } | {k: getattr(self, k) for k in ("slick_counts", "cross_tab", "acc_slick") if getattr(self, k) is not None}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunResult:
        kl = d.get("kl") or {}
        nested = {
            "acc": _acc_from_json(d),
            "kl": KLSummary(**kl) if "mean" in kl else None,
            "kl_missing": kl.get("missing"),
            "restore": [RestorePoint.from_json(p) for p in d.get("restore", [])],
            "restore_blocks": [BlockPoint.from_json(b) for b in d.get("restore_blocks", [])],
        }
        optional = {"acc_train": None, "kl_level": 4, "kl_filter": {}, "update_share": {}, "sft_resumed_at": [],
                    "cache_hits": {}, "timings": {}}  # fields that results written by earlier versions may lack
        return cls(**(optional | _known(cls, d) | nested))

    def save(self, path: Path) -> None:
        from .cache import write_atomic  # the one atomic writer: no temporary file left, a full disk in one line

        write_atomic(path, json.dumps(self.to_json(), indent=1))


def load(path: str | Path) -> RunResult:
    """A run's `results.json`."""
    return RunResult.from_json(json.loads(Path(path).read_text()))
