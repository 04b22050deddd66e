"""Stage 3: closed-book QA accuracy per mastery level (paper §3.3).

Greedy decoding, up to 16 new tokens, the SFT prompt; correct when the answer or a synonym is a
substring of the output. Acc_test is the unweighted mean of the per-level accuracies (the paper's
macro average); a level with no facts is reported as missing and left out of the mean, and the
result says which levels the mean was taken over. The same code gives the accuracy per SliCK
category (probe=slick), the categories in place of the levels.
"""
from __future__ import annotations

import random

from .config import EvalConfig
from .data.facts import LEVELS, Fact, KnowledgeBase, is_correct
from .decoding import generate, qa_prompt
from .results import LevelAccuracy



def level_subsets(facts: list[Fact], levels: list[int], cap: int | None, seed: int, n_groups: int = len(LEVELS)) -> list[list[Fact]]:
    """Facts of each level D-0..D-4, at most `cap` of each, drawn reproducibly. `levels` may be other group codes
    0..n_groups-1: SliCK's categories are evaluated the same way (`accuracy` then gives one value per category)."""
    by_level: list[list[Fact]] = [[] for _ in range(n_groups)]
    for fact, lv in zip(facts, levels):
        by_level[lv].append(fact)
    if cap is not None:
        by_level = [random.Random(seed + lv).sample(fs, min(cap, len(fs))) for lv, fs in enumerate(by_level)]
    return by_level


def answer(model, tokenizer, facts: list[Fact], cfg: EvalConfig) -> list[str]:
    """The model's greedy answer to each fact's question, without the space before it and the one SFT taught after it
    (App. A's ` {a} {eos}`)."""
    texts = generate(model, tokenizer, [qa_prompt(f.question) for f in facts], cfg.max_new_tokens, 0.0, cfg.batch_size)
    return [t.strip() for t in texts]


def _hits(kb: KnowledgeBase, facts: list[Fact], texts: list[str]) -> list[bool]:
    """Whether each answer contains its fact's object or a synonym."""
    return [is_correct(t, kb.answers(f)) for t, f in zip(texts, facts)]


def answer_hits(model, tokenizer, kb: KnowledgeBase, facts: list[Fact], cfg: EvalConfig) -> list[bool]:
    return _hits(kb, facts, answer(model, tokenizer, facts, cfg))


def accuracy(model, tokenizer, kb: KnowledgeBase, by_level: list[list[Fact]], cfg: EvalConfig) -> LevelAccuracy:
    """One batched decoding pass over all levels, then per-level accuracy."""
    flat = [f for fs in by_level for f in fs]
    texts = answer(model, tokenizer, flat, cfg)
    hits = _hits(kb, flat, texts)
    grouped, start = [], 0
    for fs in by_level:
        grouped.append(hits[start : start + len(fs)])
        start += len(fs)
    return LevelAccuracy.from_hits(grouped, texts)
