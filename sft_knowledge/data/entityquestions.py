"""EntityQuestions (Sciavolino et al., 2021) as the paper uses it (Ye et al., EMNLP 2025, §3.1).

Reads the upstream layout `<root>/{train,test}/P<id>.<split>.jsonl` (or the later `.json` arrays). The paper does not
use the dev split; SliCK (probe=slick) draws its few-shot exemplars from it (`load_dev`). In-domain: 10 location relations, train and test; out-of-domain:
the other 14, test only. The paper's filter (not stated, inferred from its split sizes): keep records with
exactly one answer, then drop repeated question strings across the pooled relations of a split, keeping
the first, relations in the order below. It gives exactly 75,944 / 9,555 / 11,613 facts.

Quirks (the data's README): soft hyphens are dropped and runs of spaces collapsed in questions and
subjects (after de-duplication, which is on the raw strings); P131 and P276 share one question template,
so a question under both keeps the first relation (P131). A relation file with no records, or none with
exactly one answer, is an error naming the file (a truncated copy would otherwise shrink a split silently).

Where no copy is found, the upstream archive is downloaded once into the cache. It has no published
checksum, so what is checked is its content: the records of the train and test relation files, which
also makes the check blind to the layout (`.json` arrays in the archive, `.jsonl` in older copies).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from ..cache import Cache
from ..config import EntityQuestionsConfig
from ..errors import DataError
from .facts import Fact, KnowledgeBase, Relation

IN_DOMAIN = ("P17", "P19", "P20", "P36", "P69", "P131", "P159", "P276", "P495", "P740")
OUT_OF_DOMAIN = ("P112", "P127", "P170", "P175", "P176", "P26", "P40", "P413", "P50", "P136", "P106", "P264", "P407", "P800")
HERE = Path(__file__).resolve().parent
TEMPLATES_FILE = HERE / "entityquestions_templates.json"  # 21 per relation, the paper's marked
ALIASES_FILE = HERE / "entityquestions_aliases.json"  # the paper's synonym table (App. F.1, Table 12)
DEFAULT_ROOT = HERE.parent.parent.parent / "shared" / "data" / "entityquestions"  # ../shared beside the project
ROOT_ENV = "SFT_KNOWLEDGE_EQ_ROOT"  # overrides DEFAULT_ROOT when data.entityquestions.root is unset
UPSTREAM = "https://github.com/princeton-nlp/EntityQuestions (dataset.zip, or commit 409520a for the .jsonl files)"
_SPACES = re.compile(r"\s+")


def clean(text: str) -> str:
    return _SPACES.sub(" ", text.replace("\u00ad", "")).strip()


def relations() -> dict[str, Relation]:
    table = json.loads(TEMPLATES_FILE.read_text())["relations"]
    return {rid: Relation(rid, r["question_template"], tuple(t["template"] for t in r["mapping_templates"]), rid in IN_DOMAIN,
                          n_paper=sum(t["paper"] for t in r["mapping_templates"]))
            for rid, r in table.items()}


def load_aliases(extra: str | Path | None = None) -> dict[str, list[str]]:
    """The paper's synonym table, plus a user's file of the same form (its entries extend the table's)."""
    aliases = {k: list(v) for k, v in json.loads(ALIASES_FILE.read_text())["aliases"].items()}
    if extra is not None:
        path = Path(extra)
        try:
            user = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataError(f"data.entityquestions.aliases_file={path}: cannot read it as JSON ({str(err).splitlines()[0]})") from None
        user = user.get("aliases", user) if isinstance(user, dict) else user
        if not isinstance(user, dict) or not all(isinstance(v, list) and all(isinstance(s, str) for s in v) for v in user.values()):
            raise DataError(f"data.entityquestions.aliases_file={path}: expected a JSON object {{gold object: [synonym, ...]}}")
        for obj, syns in user.items():
            aliases[obj] = list(dict.fromkeys(aliases.get(obj, []) + syns))
    return aliases


def _records(path: Path) -> list[tuple[int, Any]]:
    """(line or record number, parsed record) of one file; malformed JSON names the file and line."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            return list(enumerate(json.loads(text), start=1))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{n}: malformed JSON ({err.msg})") from None
    return out


def _relation_file(root: Path, rel: str, split: str) -> Path:
    for suffix in (".jsonl", ".json"):
        path = root / split / f"{rel}.{split}{suffix}"
        if path.is_file():
            return path
    raise DataError(f"{root / split / f'{rel}.{split}.jsonl'} is missing: EntityQuestions must hold "
                    f"{split}/P<id>.{split}.jsonl (or .json) for all 24 relations; get them from {UPSTREAM}")


def read_relation(root: Path, rel: Relation, split: str) -> list[tuple[str, str, Path, int]]:
    """(question, single answer, file, line) of the records of one relation file with exactly one answer."""
    path = _relation_file(root, rel.id, split)
    records = _records(path)
    if not records:  # a truncated copy would otherwise drop the relation from its split without a word
        raise DataError(f"{path}: relation {rel.id} has no records (empty file); replace it with the upstream file from {UPSTREAM}")
    out = []
    for n, rec in records:
        where = f"{path}:{n}" if path.suffix == ".jsonl" else f"{path}: record {n}"
        if not isinstance(rec, dict) or not isinstance(rec.get("question"), str) or not isinstance(rec.get("answers"), list):
            raise DataError(f"{where}: expected {{\"question\": str, \"answers\": [str, ...]}}, got {str(rec)[:80]}")
        if not rec["answers"] or not all(isinstance(a, str) and a.strip() for a in rec["answers"]):
            raise DataError(f"{where}: 'answers' must be a non-empty list of non-empty strings")
        if len(rec["answers"]) == 1:  # paper filter (a): exactly one answer
            out.append((rec["question"], rec["answers"][0], path, n))
    if not out:
        raise DataError(f"{path}: none of relation {rel.id}'s {len(records)} records has exactly one answer (the paper's "
                        f"filter), so the relation would be empty")
    return out


def _subject(question: str, template: str, where: str) -> str:
    prefix, suffix = template.split("[X]")
    if not (question.startswith(prefix) and question.endswith(suffix) and len(question) > len(prefix) + len(suffix)):
        raise DataError(f"{where}: question {question!r} does not match its relation's template {template!r}")
    return question[len(prefix) : len(question) - len(suffix)]


def load_split(root: Path, rels: dict[str, Relation], relation_ids: tuple[str, ...], split: str) -> list[Fact]:
    """One pooled split: exactly-one-answer records, repeated question strings dropped (first kept)."""
    seen: set[str] = set()
    facts = []
    for rid in relation_ids:
        rel = rels[rid]
        for question, answer, path, n in read_relation(root, rel, split):
            if question in seen:  # paper filter (b), across the pooled relations (P131 and P276 share a template)
                continue
            seen.add(question)
            subject = clean(_subject(question, rel.question_template, f"{path}:{n}"))
            facts.append(Fact(subject, rid, clean(answer), rel.question(subject)))
    return facts


def content_sha256(root: Path) -> str:
    """SHA-256 over the sorted `<split>/<relation> <sha256 of its records>` lines of the 48 train and test files."""
    lines = []
    for split in ("train", "test"):
        for rid in IN_DOMAIN + OUT_OF_DOMAIN:
            records = json.dumps([rec for _, rec in _records(_relation_file(root, rid, split))], sort_keys=True)
            lines.append(f"{split}/{rid} {hashlib.sha256(records.encode()).hexdigest()}")
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def _has_splits(path: Path) -> bool:
    return (path / "train").is_dir() and (path / "test").is_dir()


def fetch(cache: Cache, url: str, sha256: str, wanted: Path) -> Path:
    """The archive at `url`, downloaded and unpacked once into `<cache>/dataset/<key>/entityquestions`.

    Published only if its content matches `sha256`; a failed download or check leaves nothing behind.
    """
    def build(tmp: Path) -> None:
        archive, unpacked = tmp / "archive.zip", tmp / "unpacked"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
        except (OSError, ValueError) as err:  # URLError and timeouts are OSErrors; ValueError: not a URL
            raise DataError(f"EntityQuestions: cannot download {url} ({getattr(err, 'reason', err)}); put the upstream "
                            f"train/ and test/ folders in {wanted}, or point data.entityquestions.root or ${ROOT_ENV} at them") from None
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(unpacked)  # zipfile drops absolute paths and '..' from member names
        except zipfile.BadZipFile:
            raise DataError(f"{url} is not a zip archive") from None
        archive.unlink()
        # The upstream zip holds dataset/{train,dev,test}/; look for the folder rather than trust one layout.
        root = next((d.parent for d in sorted(unpacked.rglob("train")) if any(d.glob("P17.train.json*")) and _has_splits(d.parent)), None)
        if root is None:
            raise DataError(f"{url}: no train/P17.train.json(l) with a test/ beside it in the archive")
        actual = content_sha256(root)
        if actual != sha256:
            raise DataError(f"{url}: its train and test records have SHA-256 {actual}, expected data.entityquestions.sha256={sha256}; "
                            f"nothing was kept (set data.entityquestions.sha256={actual} to accept this archive)")
        os.replace(root, tmp / "entityquestions")
        shutil.rmtree(unpacked)

    # Keyed by content alone: a mirror with the same records reuses the entry.
    path, _ = cache.get_or_build("dataset", {"name": "entityquestions", "sha256": sha256}, build)
    return path / "entityquestions"


def default_root() -> Path:
    return Path(os.environ.get(ROOT_ENV, DEFAULT_ROOT))


def resolve_root(cfg: EntityQuestionsConfig, cache: Cache | None = None) -> Path:
    """data.entityquestions.root, else $SFT_KNOWLEDGE_EQ_ROOT, else ../shared/data/entityquestions; where that folder is missing
    (and a cache is given), the archive at data.entityquestions.url fetched into the cache. The named folder is never written."""
    path = Path(cfg.root) if cfg.root is not None else default_root()
    if _has_splits(path):
        return path
    if cache is not None:
        return fetch(cache, cfg.url, cfg.sha256, path)
    raise DataError(f"EntityQuestions not found at {path}: put the upstream train/ and test/ folders "
                    f"(P<id>.<split>.jsonl or .json) there, or set data.entityquestions.root; source: {UPSTREAM}")


def load_dev(root: Path) -> list[Fact]:
    """The dev split of all 24 relations, filtered as the paper's splits are: SliCK's held-out exemplars (Gekhman et
    al. draw theirs from it). Only probe.slick.exemplars=dev reads it, so a copy without dev/ serves every other run."""
    if not (root / "dev").is_dir():
        raise DataError(f"EntityQuestions at {root} has no dev/ folder, which probe.slick.exemplars=dev draws SliCK's "
                        f"exemplars from: add the upstream dev/ ({UPSTREAM}), or use probe.slick.exemplars=all_splits")
    return load_split(root, relations(), IN_DOMAIN + OUT_OF_DOMAIN, "dev")


def load_entityquestions(cfg: EntityQuestionsConfig, root: Path | None = None) -> KnowledgeBase:
    """The paper's splits from `root` (None: resolve_root(cfg), which then does not download)."""
    root = resolve_root(cfg) if root is None else root
    rels = relations()
    splits = {
        "train": load_split(root, rels, IN_DOMAIN, "train"),
        "test": load_split(root, rels, IN_DOMAIN, "test"),
        "testood": load_split(root, rels, OUT_OF_DOMAIN, "test"),
    }
    return KnowledgeBase(rels, splits, load_aliases(cfg.aliases_file))
