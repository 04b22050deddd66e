"""Pre-screened probe subsets: the best-ranked facts and a spread over the rest."""

from sft_knowledge.prescreen import spread


def test_spread_keeps_the_best_half_and_spreads_the_rest():
    rates = [0.1, 0.9, 0.5, 0.0, 0.3, 0.2, 0.0, 0.05]
    # ranking: 1 (.9), 2 (.5), 4 (.3), 5 (.2), 0 (.1), 7 (.05), 3 (0), 6 (0)
    assert spread(rates, 4) == [1, 2, 4, 6]
    assert spread(rates, 5) == [1, 2, 4, 0, 6]
    assert sorted(spread(rates, 8)) == list(range(8)) and sorted(spread(rates, 20)) == list(range(8))

