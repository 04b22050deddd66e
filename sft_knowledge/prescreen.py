"""Choosing a small probe subset of a large dataset for a small model (before stage 1).

A 135M model knows few EntityQuestions facts: a random subset lands almost entirely in D-0. So draw
`candidates` facts per split (balanced over relations, seeded), estimate their mastery cheaply with the
likelihood estimator (teacher forcing, no sampling), and keep at most `keep_per_level` facts of each
estimated level. The full probe then assigns the real levels to those facts.
"""
from __future__ import annotations

from dataclasses import asdict

from .data.facts import SPLITS, Fact, KnowledgeBase
from .data.sampling import balanced_subset
from .evaluate import level_subsets
from .probe import ProbeConfig, probe


def prescreen(model, tokenizer, kb: KnowledgeBase, candidates: int, keep_per_level: int, n_map: int,
              temperature: float, seed: int) -> tuple[KnowledgeBase, dict[str, list[int]]]:
    """The knowledge base cut to the kept facts (in their original order), and the pre-screen's level counts."""
    drawn = {split: balanced_subset(kb.splits[split], min(candidates, len(kb.splits[split])), seed) for split in SPLITS}
    screen = probe(model, tokenizer, KnowledgeBase(kb.relations, drawn, kb.aliases),
                   ProbeConfig(n_map=n_map, temperature=temperature, estimator="likelihood"))
    kept: dict[str, list[Fact]] = {}
    for split in SPLITS:
        chosen = {f for fs in level_subsets(drawn[split], screen.level[split], keep_per_level, seed) for f in fs}
        kept[split] = [f for f in kb.splits[split] if f in chosen]
    return KnowledgeBase(kb.relations, kept, kb.aliases), {split: screen.counts(split) for split in SPLITS}


def facts_to_json(kb: KnowledgeBase) -> dict:
    return {split: [asdict(f) for f in facts] for split, facts in kb.splits.items()}


def facts_from_json(kb: KnowledgeBase, data: dict) -> KnowledgeBase:
    return KnowledgeBase(kb.relations, {split: [Fact(**f) for f in facts] for split, facts in data.items()}, kb.aliases)
