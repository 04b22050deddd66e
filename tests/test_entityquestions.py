"""EntityQuestions: the paper's splits and sizes, 21 templates per relation, aliases, and dirty data."""
import json
from pathlib import Path

import pytest

from sft_knowledge.data import entityquestions as eq
from sft_knowledge.data.facts import is_correct
from sft_knowledge.data.sampling import DataError

REFERENCE = eq.default_root().parent.parent / "reference"  # ../shared/reference beside the data


def _real_root() -> Path:
    root = eq.default_root()
    if not (root / "train").is_dir():
        pytest.skip(f"EntityQuestions is not at {root} (set {eq.ROOT_ENV} to its folder)")
    return root


def test_paper_filter_gives_the_papers_split_sizes():
    kb = eq.load_entityquestions(eq.EntityQuestionsConfig(root=_real_root()))
    assert {s: len(f) for s, f in kb.splits.items()} == {"train": 75_944, "test": 9_555, "testood": 11_613}
    per_rel = {r: sum(f.relation == r for f in kb.splits["train"]) for r in eq.IN_DOMAIN}
    assert per_rel == {"P17": 7953, "P19": 7988, "P20": 7981, "P36": 6642, "P69": 6760, "P131": 7682, "P159": 7949,
                       "P276": 7645, "P495": 7843, "P740": 7501}  # ../shared/reference/paper-method.md
    assert {f.relation for f in kb.splits["testood"]} == set(eq.OUT_OF_DOMAIN)
    for facts in kb.splits.values():
        assert len({f.question for f in facts}) == len(facts)
        assert all("\u00ad" not in f.question and "  " not in f.question for f in facts)


def test_21_templates_per_relation_with_the_papers_marked_and_first():
    table = json.loads(eq.TEMPLATES_FILE.read_text())["relations"]
    assert set(table) == set(eq.IN_DOMAIN) | set(eq.OUT_OF_DOMAIN)
    for rid, r in table.items():
        templates = [t["template"] for t in r["mapping_templates"]]
        assert len(templates) == len(set(templates)) == 21, rid
        assert all(t.count("{subject}") == 1 for t in templates), rid
        flags = [t["paper"] for t in r["mapping_templates"]]
        assert flags == sorted(flags, reverse=True), f"{rid}: the paper's templates come first"
    if (REFERENCE / "mapping_templates.json").is_file():
        ref = json.loads((REFERENCE / "mapping_templates.json").read_text())["relations"]
        for rid, r in table.items():
            assert [t["template"] for t in r["mapping_templates"] if t["paper"]] == ref[rid]["mapping_templates"], rid
    rels = eq.relations()
    assert rels["P19"].mapping_prompts("Ada Lovelace", 2) == ["Ada Lovelace was born in", "The birthplace of Ada Lovelace was"]
    assert rels["P19"].in_domain and not rels["P26"].in_domain


def test_the_papers_aliases_grade_answers_and_users_can_add_their_own(tmp_path):
    aliases = eq.load_aliases()
    assert is_correct("He was born in the USA.", ["United States of America", *aliases["United States of America"]])
    assert not is_correct("He was born in the USA.", ["United States of America"])
    (tmp_path / "mine.json").write_text(json.dumps({"United States of America": ["the States"], "Bombay": ["Mumbai"]}))
    mine = eq.load_aliases(tmp_path / "mine.json")
    assert "the States" in mine["United States of America"] and "USA" in mine["United States of America"]
    assert mine["Bombay"] == ["Mumbai"]
    (tmp_path / "bad.json").write_text('["not", "a", "table"]')
    with pytest.raises(DataError, match="expected a JSON object"):
        eq.load_aliases(tmp_path / "bad.json")


def _mini_root(tmp: Path, lines: dict[tuple[str, str], list[str]], suffix: str = ".jsonl") -> Path:
    """Every relation file of train and test, one ordinary record each, with `lines` replacing some files."""
    rels = eq.relations()
    for split in ("train", "test"):
        (tmp / split).mkdir(parents=True, exist_ok=True)
        for rid, rel in rels.items():
            recs = lines.get((rid, split), [json.dumps({"question": rel.question(f"Subject {rid}"), "answers": ["Paris"]})])
            body = "\n".join(recs) + "\n" if suffix == ".jsonl" else "[\n" + ",\n".join(recs) + "\n]\n"
            (tmp / split / f"{rid}.{split}{suffix}").write_text(body)
    return tmp


def test_quirks_are_handled_as_the_data_readme_says(tmp_path):
    q = lambda question, *answers: json.dumps({"question": question, "answers": list(answers)})  # noqa: E731
    root = _mini_root(tmp_path, {
        ("P131", "train"): [q("Where is Lyon located?", "France"), q("Where is Brom\u00adse\u00adback located?", "Sweden"),
                            q("Where is Two Answers located?", "A", "B")],
        ("P276", "train"): [q("Where is Lyon located?", "Rhone"), q("Where is Maria  Elena located?", "Italy")],
    })
    kb = eq.load_entityquestions(eq.EntityQuestionsConfig(root=root))
    train = {(f.relation, f.subject): f.object for f in kb.splits["train"]}
    assert train[("P131", "Lyon")] == "France" and ("P276", "Lyon") not in train  # one question under two relations: the first
    assert train[("P131", "Bromseback")] == "Sweden"  # soft hyphens dropped
    assert train[("P276", "Maria Elena")] == "Italy"  # double space collapsed
    assert ("P131", "Two Answers") not in train  # paper: exactly one answer
    assert len(kb.splits["test"]) == 10 and len(kb.splits["testood"]) == 14


def test_the_later_json_array_layout_reads_the_same(tmp_path):
    a = eq.load_entityquestions(eq.EntityQuestionsConfig(root=_mini_root(tmp_path / "a", {})))
    b = eq.load_entityquestions(eq.EntityQuestionsConfig(root=_mini_root(tmp_path / "b", {}, suffix=".json")))
    assert a.splits == b.splits and len(a.splits["train"]) == 10


@pytest.mark.parametrize("bad, message", [
    ('{"question": "Where was X born?", "answers": ["Rome"]', "P19.train.jsonl:2: malformed JSON"),
    ('{"question": "Where was X born?"}', "P19.train.jsonl:2: expected {\"question\": str, \"answers\": [str, ...]}"),
    ('{"question": "Where was X born?", "answers": []}', "P19.train.jsonl:2: 'answers' must be a non-empty list"),
    ('{"question": "Who is X?", "answers": ["Rome"]}', "P19.train.jsonl:2: question 'Who is X?' does not match"),
])
def test_dirty_data_names_file_and_line(tmp_path, bad, message):
    good = json.dumps({"question": "Where was Y born?", "answers": ["Oslo"]})
    root = _mini_root(tmp_path, {("P19", "train"): [good, bad]})
    with pytest.raises(DataError) as err:
        eq.load_entityquestions(eq.EntityQuestionsConfig(root=root))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_data_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError) as err:
        eq.load_entityquestions(eq.EntityQuestionsConfig(root=tmp_path / "nowhere"))
    assert f"EntityQuestions not found at {tmp_path / 'nowhere'}" in str(err.value) and "data.root" in str(err.value)
    assert "\n" not in str(err.value)
    root = _mini_root(tmp_path / "partial", {})
    (root / "test" / "P800.test.jsonl").unlink()
    with pytest.raises(DataError, match="P800.test.jsonl is missing"):
        eq.load_entityquestions(eq.EntityQuestionsConfig(root=root))
