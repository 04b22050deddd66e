"""Answer matching and mastery levels: the paper's rules at their boundaries."""
import pytest

from sft_knowledge.data.facts import KnowledgeBase, Fact, is_correct, normalise
from sft_knowledge.probe import level_of, level_of_hits


def test_normalise_folds_case_punctuation_soft_hyphen_and_spaces():
    assert normalise("  St.\u00adPeters\u00adburg,  RUSSIA!  ") == "st petersburg russia"


@pytest.mark.parametrize(
    "generation, answers, expected",
    [
        (" Paris. It is a city", ["Paris"], True),
        ("paris", ["Paris"], True),  # case-insensitive
        (" Lyon", ["Paris"], False),
        (" the USA, of course", ["United States of America", "USA", "United States"], True),  # alias
        (" United  States", ["United States of America", "United States"], True),  # spaces folded
        (" St. Petersburg", ["Saint Petersburg", "St. Petersburg"], True),
        ("", ["Paris"], False),
        (" anything", [""], False),  # an empty alias never matches
    ],
)
def test_is_correct(generation, answers, expected):
    assert is_correct(generation, answers) is expected


def test_knowledge_base_answers_include_aliases():
    kb = KnowledgeBase({}, {}, aliases={"New York City": ["New York", "NYC"]})
    fact = Fact("X", "P19", "New York City", "Where was X born?")
    assert kb.answers(fact) == ["New York City", "New York", "NYC"]
    assert is_correct(" in NYC", kb.answers(fact))


@pytest.mark.parametrize(
    "rate, level",
    [(0.0, 0), (1e-9, 1), (1 / 210, 1), (0.25, 1), (0.2500001, 2), (0.5, 2), (0.5000001, 3), (0.75, 3), (0.7500001, 4), (1.0, 4)],
)
def test_level_thresholds_at_boundaries(rate, level):
    assert level_of(rate) == level


def test_likelihood_zero_threshold():
    # The likelihood estimator has no exact zeros: below half a hit of the sampling budget counts as D-0.
    assert level_of(0.001, zero_below=0.5 / 210) == 0
    assert level_of(0.003, zero_below=0.5 / 210) == 1


@pytest.mark.parametrize("total, hits_and_levels", [
    (210, [(0, 0), (1, 1), (52, 1), (53, 2), (105, 2), (106, 3), (157, 3), (158, 4), (210, 4)]),  # 25% = 52.5, 75% = 157.5
    (16, [(0, 0), (1, 1), (4, 1), (5, 2), (8, 2), (9, 3), (12, 3), (13, 4), (16, 4)]),
    (4, [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]),
])
def test_levels_from_integer_hits_at_the_quarters(total, hits_and_levels):
    assert [level_of_hits(h, total) for h, _ in hits_and_levels] == [lv for _, lv in hits_and_levels]


def test_levels_from_hits_outside_the_budget_raise():
    with pytest.raises(ValueError, match="hits=17 must be between 0 and the 16 samples"):
        level_of_hits(17, 16)
