"""Training subsets: one bucket, `size` facts, balanced across relations, reproducible."""
from collections import Counter

import pytest

from sft_knowledge.data.facts import Fact
from sft_knowledge.errors import DataError
from sft_knowledge.data.sampling import balanced_subset, bucket_facts


def _facts(per_relation: dict[str, int]) -> list[Fact]:
    return [Fact(f"{r}-{i}", r, "o", "q") for r, n in per_relation.items() for i in range(n)]


def test_balanced_equal_share_per_relation():
    facts = _facts({f"P{i}": 50 for i in range(10)})
    subset = balanced_subset(facts, 60, seed=0)
    assert len(subset) == 60 and len(set(subset)) == 60
    assert set(Counter(f.relation for f in subset).values()) == {6}


def test_balanced_fills_from_other_relations_when_one_is_short():
    facts = _facts({"P1": 2, "P2": 100, "P3": 100})
    subset = balanced_subset(facts, 30, seed=1)
    counts = Counter(f.relation for f in subset)
    assert len(subset) == 30 and counts["P1"] == 2 and counts["P2"] == counts["P3"] == 14


def test_balanced_is_seeded():
    facts = _facts({f"P{i}": 30 for i in range(4)})
    assert balanced_subset(facts, 20, seed=3) == balanced_subset(facts, 20, seed=3)
    assert balanced_subset(facts, 20, seed=3) != balanced_subset(facts, 20, seed=4)


def test_size_all_and_too_large():
    facts = _facts({"P1": 5, "P2": 5})
    assert sorted(balanced_subset(facts, "all", seed=0), key=lambda f: f.subject) == sorted(facts, key=lambda f: f.subject)
    with pytest.raises(DataError, match="data.size=11 is larger than the bucket, which holds 10 facts"):
        balanced_subset(facts, 11, seed=0)


def test_bucket_facts():
    facts = _facts({"P1": 4})
    levels = [0, 4, 4, 2]
    assert bucket_facts(facts, levels, "d4") == facts[1:3]
    assert bucket_facts(facts, levels, "d3") == []
    assert bucket_facts(facts, levels, "all") == facts
