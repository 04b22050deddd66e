"""EntityQuestions: the paper's splits and sizes, 21 templates per relation, aliases, and dirty data."""
import json
import socket
import zipfile
from pathlib import Path

import pytest

from sft_knowledge.cache import Cache
from sft_knowledge.config import ARCHIVE_SHA256, EntityQuestionsConfig
from sft_knowledge.data import entityquestions as eq
from sft_knowledge.data.facts import is_correct
from sft_knowledge.errors import DataError

REFERENCE = eq.default_root().parent.parent / "reference"  # ../shared/reference beside the data


def _real_root() -> Path:
    root = eq.default_root()
    if not (root / "train").is_dir():
        pytest.skip(f"EntityQuestions is not at {root} (set {eq.ROOT_ENV} to its folder)")
    return root


def test_paper_filter_gives_the_papers_split_sizes():
    kb = eq.load_entityquestions(EntityQuestionsConfig(root=_real_root()))
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
    kb = eq.load_entityquestions(EntityQuestionsConfig(root=root))
    train = {(f.relation, f.subject): f.object for f in kb.splits["train"]}
    assert train[("P131", "Lyon")] == "France" and ("P276", "Lyon") not in train  # one question under two relations: the first
    assert train[("P131", "Bromseback")] == "Sweden"  # soft hyphens dropped
    assert train[("P276", "Maria Elena")] == "Italy"  # double space collapsed
    assert ("P131", "Two Answers") not in train  # paper: exactly one answer
    assert len(kb.splits["test"]) == 10 and len(kb.splits["testood"]) == 14


def test_the_later_json_array_layout_reads_the_same(tmp_path):
    a = eq.load_entityquestions(EntityQuestionsConfig(root=_mini_root(tmp_path / "a", {})))
    b = eq.load_entityquestions(EntityQuestionsConfig(root=_mini_root(tmp_path / "b", {}, suffix=".json")))
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
        eq.load_entityquestions(EntityQuestionsConfig(root=root))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_an_empty_relation_file_is_an_error_naming_it(tmp_path, suffix):
    """`: > train/P19.train.jsonl` (or an empty `[]` array) would otherwise drop P19 from the train split."""
    root = _mini_root(tmp_path, {("P19", "train"): []}, suffix=suffix)
    assert (root / "train" / f"P19.train{suffix}").read_text().strip() in ("", "[\n\n]")
    with pytest.raises(DataError) as err:
        eq.load_entityquestions(EntityQuestionsConfig(root=root))
    assert str(err.value).startswith(f"{root / 'train' / f'P19.train{suffix}'}: relation P19 has no records (empty file)")
    assert "\n" not in str(err.value)
    (root / "train" / f"P19.train{suffix}").write_text("")  # the shell's `: > file`: zero bytes
    if suffix == ".jsonl":
        with pytest.raises(DataError, match="P19.train.jsonl: relation P19 has no records"):
            eq.load_entityquestions(EntityQuestionsConfig(root=root))


def test_a_relation_left_empty_by_the_one_answer_filter_is_an_error(tmp_path):
    two = json.dumps({"question": "Where was X born?", "answers": ["Rome", "Roma"]})
    root = _mini_root(tmp_path, {("P19", "test"): [two, two]})
    with pytest.raises(DataError) as err:
        eq.load_entityquestions(EntityQuestionsConfig(root=root))
    assert str(err.value).startswith(f"{root / 'test' / 'P19.test.jsonl'}: none of relation P19's 2 records has exactly one answer")


def test_missing_data_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError) as err:
        eq.load_entityquestions(EntityQuestionsConfig(root=tmp_path / "nowhere"))
    assert f"EntityQuestions not found at {tmp_path / 'nowhere'}" in str(err.value) and "data.entityquestions.root" in str(err.value)
    assert "\n" not in str(err.value)
    root = _mini_root(tmp_path / "partial", {})
    (root / "test" / "P800.test.jsonl").unlink()
    with pytest.raises(DataError, match="P800.test.jsonl is missing"):
        eq.load_entityquestions(EntityQuestionsConfig(root=root))


def _zip_of(root: Path, archive: Path) -> str:
    """The upstream archive's layout (dataset/{train,test}/...) with `root`'s files; returns its file:// URL."""
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(root.rglob("*.json*")):
            zf.write(path, f"dataset/{path.relative_to(root)}")
    return archive.as_uri()


@pytest.fixture
def no_local_copy(tmp_path, monkeypatch):
    """Neither data.entityquestions.root, $SFT_KNOWLEDGE_EQ_ROOT nor ../shared holds the data: the run falls back to the archive."""
    monkeypatch.delenv(eq.ROOT_ENV, raising=False)
    monkeypatch.setattr(eq, "DEFAULT_ROOT", tmp_path / "shared" / "entityquestions")


def test_missing_data_is_fetched_once_into_the_cache_and_checked(tmp_path, no_local_copy, monkeypatch):
    source = _mini_root(tmp_path / "upstream", {}, suffix=".json")
    url = _zip_of(source, tmp_path / "dataset.zip")
    cfg = EntityQuestionsConfig(url=url, sha256=eq.content_sha256(source))
    cache = Cache(tmp_path / "cache")
    root = eq.resolve_root(cfg, cache)
    assert root.parent.parent == tmp_path / "cache" / "dataset" and (root.parent / "DONE.json").is_file()
    assert eq.load_entityquestions(cfg, root).splits == eq.load_entityquestions(EntityQuestionsConfig(root=source)).splits
    assert not list(root.parent.rglob("*.zip"))  # the archive is not kept, only its content
    downloads = []
    monkeypatch.setattr(eq.urllib.request, "urlopen", lambda *a, **k: downloads.append(a))
    assert eq.resolve_root(cfg, cache) == root and downloads == []  # the second run reuses the entry
    missing = tmp_path / "not_here"  # a named folder that is missing also falls back to the cached archive
    assert eq.resolve_root(EntityQuestionsConfig(root=missing, url=url, sha256=cfg.sha256), cache) == root
    assert not missing.exists() and downloads == []


def test_an_archive_with_other_content_is_refused_and_nothing_is_cached(tmp_path, no_local_copy):
    source = _mini_root(tmp_path / "upstream", {})
    url = _zip_of(source, tmp_path / "dataset.zip")
    with pytest.raises(DataError) as err:
        eq.resolve_root(EntityQuestionsConfig(url=url), Cache(tmp_path / "cache"))
    actual = eq.content_sha256(source)
    assert str(err.value) == (f"{url}: its train and test records have SHA-256 {actual}, expected data.entityquestions.sha256={ARCHIVE_SHA256}; "
                              f"nothing was kept (set data.entityquestions.sha256={actual} to accept this archive)")
    assert [p.name for p in (tmp_path / "cache" / "dataset").iterdir() if not p.name.endswith(".lock")] == []


def test_no_network_says_where_to_put_the_files(tmp_path, no_local_copy):
    with socket.socket() as closed:  # a port bound but not listening: connection refused, at once and offline
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/dataset.zip"
        with pytest.raises(DataError) as err:
            eq.resolve_root(EntityQuestionsConfig(url=url), Cache(tmp_path / "cache"))
    message = str(err.value)
    assert message.startswith(f"EntityQuestions: cannot download {url} (") and "\n" not in message
    assert message.endswith(f"put the upstream train/ and test/ folders in {eq.DEFAULT_ROOT}, or point data.entityquestions.root or ${eq.ROOT_ENV} at them")
    assert [p.name for p in (tmp_path / "cache" / "dataset").iterdir() if not p.name.endswith(".lock")] == []


def test_the_pinned_checksum_is_that_of_the_full_copy():
    assert eq.content_sha256(_real_root()) == ARCHIVE_SHA256


# The paper's recovered templates per relation (App. F.2 as extracted), counted by hand from the JSON: 401 of 504.
PAPER_TEMPLATES = {"P69": 10, "P176": 11, "P17": 12, "P106": 12, "P800": 13, "P36": 15, "P26": 15, "P40": 15, "P127": 16,
                   "P112": 17, "P175": 17, "P20": 18, "P276": 18, "P495": 18, "P264": 18, "P19": 19, "P159": 19,
                   "P413": 19, "P50": 19, "P407": 19, "P131": 20, "P740": 20, "P170": 20, "P136": 21}


def test_paper_only_probes_each_relations_recovered_templates_at_most_n_map():
    rels = eq.relations()
    table = json.loads(eq.TEMPLATES_FILE.read_text())["relations"]
    assert {rid: r.n_paper for rid, r in rels.items()} == PAPER_TEMPLATES and sum(PAPER_TEMPLATES.values()) == 401
    for rid, r in rels.items():
        paper = tuple(t["template"] for t in table[rid]["mapping_templates"] if t["paper"])
        assert r.probe_templates(21, "paper_only") == paper  # every recovered one, none written anew
        assert r.probe_templates(21) == r.mapping_templates and len(r.probe_templates(21)) == 21
        assert r.probe_templates(4, "paper_only") == r.probe_templates(4) == paper[:4]  # the first 4 are the paper's
    # n_map between the smallest and the largest count: a relation with fewer uses the ones it has
    assert {rid: len(r.probe_templates(15, "paper_only")) for rid, r in rels.items()} == {
        rid: min(15, n) for rid, n in PAPER_TEMPLATES.items()}
    assert len(rels["P69"].probe_templates(15, "paper_only")) == 10 and len(rels["P19"].probe_templates(15, "paper_only")) == 15
    p69 = [t["template"].format(subject="Ada") for t in table["P69"]["mapping_templates"] if t["paper"]]
    assert rels["P69"].mapping_prompts("Ada", 21, "paper_only") == p69 and len(rels["P69"].mapping_prompts("Ada", 21)) == 21


def test_the_dev_split_is_slicks_exemplar_pool_and_a_copy_without_it_says_which_option_to_change(tmp_path):
    root = _mini_root(tmp_path, {})
    with pytest.raises(DataError) as err:
        eq.load_dev(root)
    assert str(err.value) == (f"EntityQuestions at {root} has no dev/ folder, which probe.slick.exemplars=dev draws SliCK's "
                              f"exemplars from: add the upstream dev/ ({eq.UPSTREAM}), or use probe.slick.exemplars=all_splits")
    eq.load_entityquestions(EntityQuestionsConfig(root=root))  # every other run reads the copy as before
    (root / "dev").mkdir()
    for rid, rel in eq.relations().items():  # one record per relation, and one with two answers (filtered out)
        records = [{"question": rel.question(f"Dev {rid}"), "answers": ["Rome"]}, {"question": rel.question("Two"), "answers": ["A", "B"]}]
        (root / "dev" / f"{rid}.dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    dev = eq.load_dev(root)
    assert [f.relation for f in dev] == [*eq.IN_DOMAIN, *eq.OUT_OF_DOMAIN] and all(f.subject.startswith("Dev ") for f in dev)
    real = _real_root()
    if (real / "dev").is_dir():
        assert {f.relation for f in eq.load_dev(real)} == set(eq.IN_DOMAIN + eq.OUT_OF_DOMAIN)
