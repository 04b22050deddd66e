"""SliCK (slick.py): categories hand-computed from scripted model outputs, the few-shot prompts, the grade, the
cross-tabulation with the paper's levels, and one small real run on the shipped world model."""
import json
from dataclasses import asdict

import pytest

from sft_knowledge import slick as slick_module
from sft_knowledge.data.facts import Fact, KnowledgeBase, Relation, is_correct
from sft_knowledge.config import SlickConfig, check_slick
from sft_knowledge.errors import ConfigError, DataError
from sft_knowledge.probe import ProbeResult
from sft_knowledge.report.crosstab import cross_tab_markdown, cross_tab_section
from sft_knowledge.slick import (CODES, SlickResult, category_of, cross_tab, exact_match, exemplar_pools, extract_answer,
                                 fact_prompts, few_shot_prompt, slick_categories)

BORN = Relation("P19", "Where was [X] born?", ("{subject} was born in",), True)
WED = Relation("P26", "Who is [X] married to?", ("{subject} is married to",), False)
WRONG = " Atlantis\n\nQ: Where was Zed born?\nA: Rome"  # a wrong answer, then the next question as a base model writes it
# split, subject, object, the continuation scripted as its right answer, how many of the 10 greedy answers and of the
# 160 samples are it (the first ones; the others are WRONG or the fact's own wrong text); then by hand: the correct
# greedy answers and samples under exact match, and the category.
FACTS = [
    ("train", "Ann", "Paris", " Paris\n\nQ: Where was Zed born?\nA: Rome", 10, 160, 10, 160, "highly_known"),  # P(T=0) = 1
    ("train", "Bob", "Rome", " Rome", 1, 0, 1, 0, "maybe_known"),  # 1 of 10 greedy answers
    ("train", "Cid", "Oslo", " Oslo.", 9, 100, 9, 100, "maybe_known"),  # 9 of 10 is not HighlyKnown; "." normalised away
    ("train", "Dan", "Lima", " Lima", 0, 3, 0, 3, "weakly_known"),  # only samples
    ("train", "Eve", "Kyiv", "\nKyiv", 10, 160, 0, 0, "unknown"),  # the answer after a line break is no answer
    ("test", "Gus", "Bern", " Berne", 10, 0, 10, 0, "highly_known"),  # the alias, exactly: correct
    ("test", "Hal", "Bonn", " Bonn, Germany", 10, 160, 0, 0, "unknown"),  # contains the answer: substring yes, exact no
    ("test", "Ida", "Riga", " Riga Q: Where was Zed born?", 0, 1, 0, 1, "weakly_known"),  # next question on the same line
    ("testood", "Jo", "Max Born", " max born", 5, 7, 5, 7, "maybe_known"),  # case is normalised
    *[("testood", s, o, f" {o}", 0, 0, 0, 0, "unknown") for s, o in (("Kim", "Lea Ray"), ("Lou", "Ned Ash"), ("Mia", "Ola Fox"),
                                                                      ("Ned", "Pia Roe"))],
]
ALIASES = {"Bern": ["Berne"]}


def _kb(rows=FACTS) -> KnowledgeBase:
    rels = {"P19": BORN, "P26": WED}
    splits = {split: [Fact(s, rel, o, rels[rel].question(s)) for sp, s, o, *_ in rows if sp == split
                      for rel in ["P26" if split == "testood" else "P19"]] for split in ("train", "test", "testood")}
    return KnowledgeBase(rels, splits, ALIASES)


def scripted_generate(calls: list[dict]):
    """decoding.generate's signature; answers each prompt from FACTS by the question it ends with, the i-th prompt
    of a fact being its i-th in the call (slick builds a fact's prompts together, fact-major)."""
    script = {row[1]: row for row in FACTS}

    def generate(model, tokenizer, prompts, max_new_tokens, temperature=0.0, batch_size=256, seed=0, desc=None,
                 n_samples=1, top_p=1.0, top_k=0):
        calls.append({"temperature": temperature, "n_samples": n_samples, "top_k": top_k, "top_p": top_p,
                      "max_new_tokens": max_new_tokens, "prompts": len(prompts)})
        seen: dict[str, int] = {}
        out = []
        for prompt in prompts:
            question = prompt.rsplit("Q: ", 1)[1].removesuffix("\nA:")
            _, subject, _, right, greedy, sampled, *_ = script[question.split(" ")[2].rstrip("?")]
            i = seen[subject] = seen.get(subject, -1) + 1  # this prompt's index among the fact's
            for j in range(n_samples):
                hit = i < greedy if temperature == 0 else i * n_samples + j < sampled
                out.append(right if hit else WRONG)
        return out
    return generate


def test_scripted_outputs_give_the_hand_computed_categories(monkeypatch):
    calls: list[dict] = []
    monkeypatch.setattr(slick_module, "generate", scripted_generate(calls))
    result = slick_categories(None, None, _kb(), SlickConfig(exemplars="all_splits"))
    for split in ("train", "test", "testood"):
        rows = [r for r in FACTS if r[0] == split]
        assert result.p_greedy[split] == [r[6] / 10 for r in rows], split
        assert result.p_sample[split] == [r[7] / 160 for r in rows], split
        assert result.category[split] == [CODES[r[8]] for r in rows], split
    assert result.counts("train") == [1, 1, 2, 1]  # unknown, weakly, maybe, highly
    assert result.counts("test") == [1, 1, 0, 1] and result.counts("testood") == [4, 0, 1, 0]
    assert result.members("train", "maybe_known") == [False, True, True, False, False]
    # Per split one greedy pass and one sampled pass, SliCK's settings, over 10 prompts per fact.
    greedy = {"temperature": 0.0, "n_samples": 1, "top_k": 0, "top_p": 1.0, "max_new_tokens": 16}
    sampled = {"temperature": 0.5, "n_samples": 16, "top_k": 40, "top_p": 1.0, "max_new_tokens": 16}
    assert calls == [{**greedy, "prompts": 50}, {**sampled, "prompts": 50}, {**greedy, "prompts": 30},
                     {**sampled, "prompts": 30}, {**greedy, "prompts": 50}, {**sampled, "prompts": 50}]
    assert SlickResult(**json.loads(json.dumps(asdict(result)))) == result  # cached as JSON, read back the same


def test_category_boundaries_come_from_integer_counts():
    assert [category_of(g, s, 10) for g, s in ((10, 0), (9, 160), (1, 0), (0, 1), (0, 0))] == \
        [CODES[c] for c in ("highly_known", "maybe_known", "maybe_known", "weakly_known", "unknown")]
    assert list(CODES) == ["unknown", "weakly_known", "maybe_known", "highly_known"] and list(CODES.values()) == [0, 1, 2, 3]


def test_answer_extraction_and_exact_match():
    assert extract_answer(" Paris\n\nQ: Where was Zed born?\nA: Rome") == "Paris"
    assert extract_answer(" Paris Q: Where was Zed born?") == "Paris"
    assert extract_answer("\nParis") == "" and not exact_match("", ["Paris"])
    assert extract_answer(" Sao Paulo") == "Sao Paulo"
    assert exact_match("Paris.", ["Paris"]) and exact_match("PARIS", ["Paris"]) and exact_match("Berne", ["Bern", "Berne"])
    # Where SliCK's grade and the paper's substring rule part: an answer that contains the gold one.
    assert is_correct("Paris, France", ["Paris"]) and not exact_match("Paris, France", ["Paris"])


def test_the_prompt_format():
    exemplars = [Fact("Bob", "P19", "Rome", "Where was Bob born?"), Fact("Cid", "P19", "Oslo", "Where was Cid born? ")]
    assert few_shot_prompt(exemplars, "Where was Ann born?") == \
        "Q: Where was Bob born?\nA: Rome\n\nQ: Where was Cid born?\nA: Oslo\n\nQ: Where was Ann born?\nA:"


def test_prompts_take_4_exemplars_of_the_relation_never_the_question_seeded():
    # Twenty born-in facts in train and test, five married-to facts: the pool of a born-in fact is the 20 (all_splits).
    rows = [("train" if i < 14 else "test", f"S{i}", f"City{i}", "", 0, 0, 0, 0, "") for i in range(20)]
    rows += [("testood", f"T{i}", f"Person{i}", "", 0, 0, 0, 0, "") for i in range(5)]
    kb = _kb(rows)
    pools = exemplar_pools(kb, "all_splits")
    fact = kb.splits["test"][0]
    cfg = SlickConfig(exemplars="all_splits")
    prompts = fact_prompts(fact, pools["test"]["P19"], cfg)
    assert len(prompts) == 10 and len(set(prompts)) > 1  # ten draws, not all the same
    for prompt in prompts:
        blocks = prompt.split("\n\n")
        questions = [b.split("\n")[0].removeprefix("Q: ") for b in blocks]
        assert len(blocks) == 5 and blocks[-1] == f"Q: {fact.question}\nA:"
        assert len(set(questions[:4])) == 4 and fact.question not in questions[:4]  # distinct, never its own
        assert all(q.startswith("Where was S") for q in questions[:4])  # the same relation
        assert all(b.endswith(f"A: City{q.split()[2][1:]}") for b, q in zip(blocks[:4], questions))  # gold answers
    assert fact_prompts(fact, pools["test"]["P19"], cfg) == prompts  # reproducible
    assert fact_prompts(fact, pools["test"]["P19"], SlickConfig(seed=1)) != prompts
    assert len({p for f in kb.splits["train"] for p in fact_prompts(f, pools["train"]["P19"], cfg)}) == 140
    # Over many facts every other fact serves as an exemplar: the draw covers the pool, not a fixed few.
    used = {q for f in kb.splits["train"] for p in fact_prompts(f, pools["train"]["P19"], cfg) for q in p.split("\n\n")[:4]}
    assert len(used) == 20
    # same_split: a test fact's exemplars come from test only, of which there are 6, so 5 besides its own.
    same = exemplar_pools(kb, "same_split")
    assert len(same["test"]["P19"]) == 6 and len(same["train"]["P19"]) == 14
    with pytest.raises(DataError, match="SliCK needs 6 exemplars of relation P19 besides 'Where was S14 born\\?'; "
                                        "its exemplar pool \\(same_split\\) holds 6 facts"):
        fact_prompts(fact, same["test"]["P19"], SlickConfig(n_shots=6, exemplars="same_split"))


def test_dev_exemplars_come_from_the_held_out_facts_only():
    kb = _kb()
    dev = [Fact(f"D{i}", "P19", f"Town{i}", f"Where was D{i} born?") for i in range(5)] + [
        Fact("Ann", "P19", "Paris", "Where was Ann born?")]  # a dev fact with a split fact's question is never its exemplar
    pools = exemplar_pools(kb, "dev", dev)
    assert pools["train"] is pools["testood"] and list(pools["test"]) == ["P19"]
    ann = kb.splits["train"][0]
    for prompt in fact_prompts(ann, pools["train"]["P19"], SlickConfig()):
        exemplars = [b.split("\n")[0] for b in prompt.split("\n\n")[:4]]
        assert all(e.startswith("Q: Where was D") for e in exemplars), exemplars
    with pytest.raises(DataError, match="exemplars=dev draws exemplars from held-out facts .* and none were given"):
        exemplar_pools(kb, "dev")
    with pytest.raises(DataError, match="relation P26 besides 'Who is Jo married to\\?'; its exemplar pool \\(dev\\) holds 0 facts: "
                                        "use probe.slick.exemplars=all_splits, or fewer probe.slick.n_shots"):
        slick_categories(None, None, kb, SlickConfig(), dev)  # dev holds no married-to fact


def test_a_relation_too_small_fails_before_any_decoding(monkeypatch):
    calls: list[dict] = []
    monkeypatch.setattr(slick_module, "generate", scripted_generate(calls))
    with pytest.raises(DataError, match="SliCK needs 8 exemplars of relation P19 besides 'Where was Ann born\\?'; its "
                                        "exemplar pool \\(all_splits\\) holds 8 facts: use fewer probe.slick.n_shots"):
        slick_categories(None, None, _kb(), SlickConfig(n_shots=8, exemplars="all_splits"))
    assert calls == []  # the eight born-in facts of train and test are 7 exemplars for each; nothing was decoded


@pytest.mark.parametrize("override, message", [
    ({"n_prompts": 0}, "probe.slick.n_prompts=0 is not allowed: expected a positive integer"),
    ({"temperature": 0.0}, "probe.slick.temperature=0 is not allowed: expected a positive temperature"),
    ({"top_k": -1}, "probe.slick.top_k=-1 is not allowed: expected an integer >= 0 (0: no top-k)"),
    ({"exemplars": "train"}, "probe.slick.exemplars='train' is not allowed: expected dev, all_splits, same_split"),
])
def test_bad_settings_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", "\\(").replace(")", "\\)")):
        check_slick(SlickConfig(**override))


def test_cross_tab_counts_levels_by_category_and_renders():
    levels = ProbeResult({}, {"train": [0, 0, 4, 4, 2, 0], "test": [4], "testood": []})
    cats = SlickResult({}, {}, {"train": [0, 1, 3, 2, 0, 0], "test": [3], "testood": []})
    table = cross_tab(levels, cats)
    assert table["train"]["D-0"] == {"unknown": 2, "weakly_known": 1, "maybe_known": 0, "highly_known": 0}
    assert table["train"]["D-4"] == {"unknown": 0, "weakly_known": 0, "maybe_known": 1, "highly_known": 1}
    assert table["train"]["D-2"]["unknown"] == 1 and sum(sum(r.values()) for r in table["train"].values()) == 6
    assert list(table["testood"]) == ["D-0", "D-1", "D-2", "D-3", "D-4"] and not any(
        n for r in table["testood"].values() for n in r.values())
    assert cross_tab_markdown(json.loads(json.dumps(table))["train"]) == [
        "| level | Unknown | WeaklyKnown | MaybeKnown | HighlyKnown | all |",
        "|---|---|---|---|---|---|",
        "| D-0 | 2 | 1 | 0 | 0 | 3 |",
        "| D-1 | 0 | 0 | 0 | 0 | 0 |",
        "| D-2 | 1 | 0 | 0 | 0 | 1 |",
        "| D-3 | 0 | 0 | 0 | 0 | 0 |",
        "| D-4 | 0 | 0 | 1 | 1 | 2 |",
        "| all | 3 | 1 | 1 | 1 | 6 |",
        "",
    ]
    assert cross_tab_section(table)[:2] == ["D_train:", ""] and "D_testood:" in cross_tab_section(table)
    with pytest.raises(ValueError, match="split test: 2 facts have levels and 1 SliCK categories"):
        cross_tab(ProbeResult({}, {"train": [0] * 6, "test": [4, 4], "testood": []}), cats)


def test_a_real_run_on_the_shipped_world_model_categorises_every_fact():
    from sft_knowledge.config import SyntheticWorldConfig
    from sft_knowledge.data.synthetic import build_world
    from sft_knowledge.models import load
    from sft_knowledge.shipped import SHIPPED_DIR

    built = build_world(SyntheticWorldConfig())
    world = built.kb
    pick = lambda split, rel, n: [f for f in world.splits[split] if f.relation == rel][:n]  # noqa: E731
    kb = KnowledgeBase(world.relations, {"train": pick("train", "P19", 5) + pick("train", "P36", 5), "test": [],
                                         "testood": pick("testood", "P50", 5)})
    model, tokenizer = load(SHIPPED_DIR)
    cfg = SlickConfig(n_prompts=2, n_samples=3, max_new_tokens=8)
    result = slick_categories(model, tokenizer, kb, cfg, dev=built.bridge)  # the world's facts outside every split
    for split, n in (("train", 10), ("test", 0), ("testood", 5)):  # an empty split is no batch to decode
        assert len(result.category[split]) == len(result.p_greedy[split]) == len(result.p_sample[split]) == n
        assert sum(result.counts(split)) == n
        for g, s, c in zip(result.p_greedy[split], result.p_sample[split], result.category[split]):
            assert c == category_of(round(g * cfg.n_prompts), round(s * cfg.n_prompts * cfg.n_samples), cfg.n_prompts)
