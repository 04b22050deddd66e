"""Drawing the SFT subset: `size` facts from one mastery bucket, balanced across relations (paper §3.4)."""
from __future__ import annotations

import random

from ..errors import DataError
from .facts import Fact


def bucket_facts(facts: list[Fact], levels: list[int], bucket: str) -> list[Fact]:
    """Facts of bucket "d0".."d4", or all facts for "all" (the paper's "Mixed" baseline)."""
    if bucket == "all":
        return list(facts)
    return [f for f, lv in zip(facts, levels) if lv == int(bucket[1:])]


def balanced_subset(facts: list[Fact], size: int | str, seed: int) -> list[Fact]:
    """`size` facts with an equal share per relation; a relation short of its share leaves the rest to others.

    Shares are filled round-robin over relations in a seeded order, so 60 facts over 10 relations
    are 6 each, and a bucket whose relations are uneven still yields exactly `size` facts.
    """
    rng = random.Random(seed)
    if size == "all":
        subset = list(facts)
        rng.shuffle(subset)
        return subset
    if size > len(facts):
        raise DataError(f"data.size={size} is larger than the bucket, which holds {len(facts)} facts")
    pools: dict[str, list[Fact]] = {}
    for f in facts:
        pools.setdefault(f.relation, []).append(f)
    relations = sorted(pools)
    rng.shuffle(relations)
    for r in relations:
        rng.shuffle(pools[r])
    subset: list[Fact] = []
    while len(subset) < size:
        for r in relations:
            if pools[r] and len(subset) < size:
                subset.append(pools[r].pop())
    rng.shuffle(subset)
    return subset
