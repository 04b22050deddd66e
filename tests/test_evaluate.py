"""Per-level accuracy and the paper's macro mean, with empty levels reported as missing."""
from sft_knowledge import evaluate
from sft_knowledge.config import EvalConfig
from sft_knowledge.evaluate import level_subsets
from sft_knowledge.results import LevelAccuracy
from sft_knowledge.data.facts import Fact


def test_macro_mean_is_unweighted_over_levels():
    acc = LevelAccuracy.from_hits([[False] * 10, [True, False], [True] * 3 + [False], [True], [True] * 100])
    assert acc.acc_level == [0.0, 50.0, 75.0, 100.0, 100.0]
    assert acc.acc == 65.0 and acc.over_levels == [0, 1, 2, 3, 4] and acc.n_level == [10, 2, 4, 1, 100]


def test_empty_levels_are_missing_not_zero():
    acc = LevelAccuracy.from_hits([[True, False], [], [], [], [True]])
    assert acc.acc_level == [50.0, None, None, None, 100.0]
    assert acc.acc == 75.0 and acc.over_levels == [0, 4]
    assert LevelAccuracy.from_hits([[], [], [], [], []]).acc is None


def test_level_subsets_cap_and_seed():
    facts = [Fact(str(i), "P1", "o", "q") for i in range(100)]
    levels = [i % 5 for i in range(100)]
    full = level_subsets(facts, levels, None, 0)
    assert [len(x) for x in full] == [20] * 5 and all(levels[int(f.subject)] == lv for lv, fs in enumerate(full) for f in fs)
    capped = level_subsets(facts, levels, 7, 0)
    assert [len(x) for x in capped] == [7] * 5 and capped == level_subsets(facts, levels, 7, 0)
    assert set(capped[2]) <= set(full[2])


def test_answers_are_stripped_of_the_space_sft_taught_before_eos(monkeypatch):
    """SFT teaches ` {a} {eos}` (App. A): a greedy answer decodes as " Paris "; the recorded answer is "Paris"."""
    monkeypatch.setattr(evaluate, "generate", lambda model, tok, prompts, *args: [" Paris "] * len(prompts))
    assert evaluate.answer(None, None, [Fact("Person0", "P19", "Paris", "Where was Person0 born?")], EvalConfig()) == ["Paris"]
