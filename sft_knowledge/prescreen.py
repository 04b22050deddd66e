"""Choosing a small probe subset of a large dataset for a small model (before stage 1).

A 135M model knows few EntityQuestions facts: a random subset lands almost entirely in D-0. So draw
`candidates` facts per split (balanced over relations, seeded), estimate their mastery cheaply with the
likelihood estimator (teacher forcing, no sampling), rank them by it, and keep `keep` facts per split:
half the best-ranked, half evenly spaced over the rest of the ranking. The full probe then assigns the
real levels to those facts; the likelihood of the exact answer tokens is a stricter test than the
probe's substring match, so the ranking matters, not the estimator's own levels.
"""
from __future__ import annotations

from dataclasses import asdict

from .data.facts import SPLITS, Fact, KnowledgeBase
from .data.sampling import balanced_subset
from .config import ProbeConfig
from .probe import probe


def spread(rates: list[float], keep: int) -> list[int]:
    """Indices of `keep` items: the keep//2 highest rates, then the others evenly spaced over the remaining ranking."""
    ranked = sorted(range(len(rates)), key=lambda i: (-rates[i], i))
    if keep >= len(ranked):
        return ranked
    top, rest = ranked[: keep // 2], ranked[keep // 2 :]
    n = keep - len(top)
    return top + [rest[round(j * (len(rest) - 1) / max(1, n - 1))] for j in range(n)]


def prescreen(model, tokenizer, kb: KnowledgeBase, candidates: int, keep: int, n_map: int,
              temperature: float, seed: int) -> tuple[KnowledgeBase, dict[str, list[int]]]:
    """The knowledge base cut to the kept facts (in their original order), and the pre-screen's level counts."""
    drawn = {split: balanced_subset(kb.splits[split], min(candidates, len(kb.splits[split])), seed) for split in SPLITS}
    screen = probe(model, tokenizer, KnowledgeBase(kb.relations, drawn, kb.aliases),
                   ProbeConfig(n_map=n_map, temperature=temperature, estimator="likelihood"))
    kept: dict[str, list[Fact]] = {}
    for split in SPLITS:
        chosen = {drawn[split][i] for i in spread(screen.rate[split], keep)}
        kept[split] = [f for f in kb.splits[split] if f in chosen]
    return KnowledgeBase(kb.relations, kept, kb.aliases), {split: screen.counts(split) for split in SPLITS}


def facts_to_json(kb: KnowledgeBase) -> dict:
    return {split: [asdict(f) for f in facts] for split, facts in kb.splits.items()}


def facts_from_json(kb: KnowledgeBase, data: dict) -> KnowledgeBase:
    return KnowledgeBase(kb.relations, {split: [Fact(**f) for f in facts] for split, facts in data.items()}, kb.aliases)
