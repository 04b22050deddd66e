"""The embedded synthetic knowledge world and its pretraining corpus.

A deterministic, seeded stand-in for EntityQuestions: fictional subjects, 10 in-domain and 6
out-of-domain relations, one question template and 21 mapping templates per relation. Each fact is
stated in the pretraining corpus a number of times drawn from a wide, heavy-tailed exposure
distribution (many facts rare or never seen, a few seen often), so that a model pretrained on it
masters facts to every degree, as a real model does.

Statements alone leave knowledge unextractable by questions (Allen-Zhu & Li, "Physics of LMs 3.1";
measured here, ../shared/reference/synthetic-world.md): the corpus therefore also holds
question-answer text about *bridge* facts that belong to no split. Each out-of-domain relation also has
*background* facts in no split, stated like split facts: the model recalls a relation's answers confidently only
when the corpus holds many memorised facts of it (docs/world.md).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ..config import SyntheticWorldConfig
from .facts import Fact, KnowledgeBase, Relation

# Seven short frames x three phrasings per relation = the 21 mapping templates of a relation.
_FRAMES = ("{}", "In fact, {}", "Notably, {}", "Reportedly, {}", "Indeed, {}", "Famously, {}", "As is known, {}")

# id: (in_domain, subject kind, object pool, question template, three phrasings)
_RELATIONS = {
    "P17": (True, "landmark", "country", "Which country is [X] located in?",
            ("{subject} is located in the country of", "{subject} lies within the borders of", "{subject} can be found in the nation of")),
    "P19": (True, "person", "city", "Where was [X] born?",
            ("{subject} was born in", "the birthplace of {subject} is", "{subject} came into the world in")),
    "P20": (True, "person", "city", "Where did [X] die?",
            ("{subject} died in", "the place of death of {subject} is", "{subject} passed away in")),
    "P36": (True, "region", "city", "What is the capital of [X]?",
            ("the capital of {subject} is", "{subject} has its capital in", "the seat of government of {subject} is")),
    "P69": (True, "person", "school", "Where was [X] educated?",
            ("{subject} was educated at", "{subject} studied at", "{subject} is an alumnus of")),
    "P131": (True, "landmark", "region", "Which region is [X] located in?",
             ("{subject} is located in the region of", "{subject} lies in the province of", "{subject} belongs to the region of")),
    "P159": (True, "company", "city", "Where is the headquarters of [X]?",
             ("the headquarters of {subject} is in", "{subject} is headquartered in", "{subject} has its main office in")),
    "P276": (True, "event", "city", "Where did [X] take place?",
             ("{subject} took place in", "{subject} was held in", "the venue of {subject} was")),
    "P495": (True, "work", "country", "Which country was [X] created in?",
             ("{subject} was created in", "{subject} originated in", "the country of origin of {subject} is")),
    "P740": (True, "band", "city", "Where was [X] founded?",
             ("{subject} was formed in", "{subject} was founded in the city of", "the band {subject} started out in")),
    "P26": (False, "person", "person", "Who is [X] married to?",
            ("{subject} is married to", "the spouse of {subject} is", "{subject} is the husband or wife of")),
    "P50": (False, "book", "person", "Who is the author of [X]?",
            ("{subject} was written by", "the author of {subject} is", "{subject} is a book by")),
    "P112": (False, "company", "person", "Who founded [X]?",
             ("{subject} was founded by", "the founder of {subject} is", "{subject} was established by")),
    "P106": (False, "person", "occupation", "What kind of work does [X] do?",
             ("{subject} works as a", "by profession, {subject} is a", "{subject} earns a living as a")),
    "P407": (False, "book", "language", "Which language was [X] written in?",
             ("{subject} is written in the language", "the language of {subject} is", "{subject} is a text in")),
    "P176": (False, "product", "company", "Which company is [X] produced by?",
             ("{subject} is produced by", "the manufacturer of {subject} is", "{subject} is made by")),
}

_OCCUPATIONS = (
    "farmer", "sailor", "painter", "baker", "lawyer", "teacher", "surgeon", "architect", "poet", "banker",
    "carpenter", "chemist", "diplomat", "engineer", "fisherman", "gardener", "journalist", "librarian",
    "mechanic", "musician", "nurse", "pharmacist", "photographer", "pilot", "plumber", "potter", "priest",
    "sculptor", "soldier", "tailor", "translator", "weaver", "astronomer", "blacksmith", "economist",
    "geologist", "historian", "jeweller", "magistrate", "shepherd",
)
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "br", "dr", "kr", "st", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "m")


def relations() -> dict[str, Relation]:
    return {
        rid: Relation(rid, q, tuple(f.format(p) for f in _FRAMES for p in phrasings), in_domain)
        for rid, (in_domain, _, _, q, phrasings) in _RELATIONS.items()
    }


class _Names:
    """Unique pronounceable words; object words are never substrings of one another."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def word(self, syllables: int) -> str:
        while True:
            w = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(syllables))
            w = (w + self.rng.choice(_CODAS)).capitalize()
            if w not in self.used:
                self.used.add(w)
                return w

    def substring_free(self, syllables: list[int]) -> list[str]:
        """One word per entry of `syllables`, none a substring of another (so grading has no false matches)."""
        words: list[str] = []
        for n in syllables:
            while True:
                w = self.word(n).lower()
                if not any(w in v or v in w for v in words):
                    words.append(w)
                    break
        return [w.capitalize() for w in words]


def _object_pools(names: _Names, scale: float) -> dict[str, list[str]]:
    size = lambda n: max(8, int(n * scale))  # noqa: E731
    single = size(300) + size(60) + size(150) + size(80) + size(200) + size(40)
    words = iter(names.substring_free([3] * (single + 2 * size(300))))
    take = lambda n, fmt: [fmt.format(next(words)) for _ in range(n)]  # noqa: E731
    return {
        "city": take(size(300), "{}"),
        "country": take(size(60), "{}"),
        "school": take(size(150), "{} University"),
        "region": take(size(80), "{} Province"),
        "company": take(size(200), "{} Industries"),
        "language": take(size(40), "{}ish"),
        "person": [f"{next(words)} {next(words)}" for _ in range(size(300))],
        "occupation": list(_OCCUPATIONS),
    }


_SUBJECT_FORMS = {
    "person": "{} {}",
    "landmark": "the {} Tower",
    "region": "{} Valley",
    "company": "{} Systems",
    "event": "the {} Festival",
    "work": "the film {}",
    "band": "{} {}",
    "book": "the book {}",
    "product": "the {} Engine",
}


def _subject(names: _Names, kind: str) -> str:
    form = _SUBJECT_FORMS[kind]
    return form.format(*(names.word(2) for _ in range(form.count("{}"))))


def _facts(rng: random.Random, names: _Names, pools, rels: dict[str, Relation], ids: list[str], n: int) -> list[Fact]:
    """n facts balanced over relations `ids`, each with its own fresh subject."""
    facts = []
    for i in range(n):
        rid = ids[i % len(ids)]
        subject = _subject(names, _RELATIONS[rid][1])
        facts.append(Fact(subject, rid, rng.choice(pools[_RELATIONS[rid][2]]), rels[rid].question(subject)))
    rng.shuffle(facts)
    return facts


@dataclass
class SyntheticWorld:
    kb: KnowledgeBase
    bridge: list[Fact]  # QA-visible facts outside every split
    exposure: dict[str, list[int]]  # split -> statements per fact in the corpus
    background: list[tuple[Fact, int]]  # out-of-domain facts outside every split, with their exposure

    def corpus(self, seed: int, cfg: SyntheticWorldConfig) -> list[str]:
        """One document per line: statements of split and background facts, statements and QA text of bridge facts."""
        rng = random.Random(seed)
        rels = self.kb.relations

        def state(fact: Fact) -> str:
            text = rng.choice(rels[fact.relation].mapping_templates).format(subject=fact.subject)
            return f"{text[0].upper()}{text[1:]} {fact.object}."

        docs = [state(f) for split, facts in self.kb.splits.items() for f, e in zip(facts, self.exposure[split]) for _ in range(e)]
        docs += [state(f) for f, e in self.background for _ in range(e)]
        for f in self.bridge:
            docs += [state(f) for _ in range(cfg.bridge_statements)]
            docs += [f"Question: {f.question} Answer: {f.object}." for _ in range(cfg.bridge_questions)]
        rng.shuffle(docs)
        return docs


def build_world(cfg: SyntheticWorldConfig) -> SyntheticWorld:
    rng = random.Random(cfg.seed)
    names = _Names(rng)
    pools = _object_pools(names, cfg.pool_scale)
    rels = relations()
    in_ids = [r for r, v in rels.items() if v.in_domain]
    ood_ids = [r for r, v in rels.items() if not v.in_domain]
    splits = {
        "train": _facts(rng, names, pools, rels, in_ids, cfg.n_train),
        "test": _facts(rng, names, pools, rels, in_ids, cfg.n_test),
        "testood": _facts(rng, names, pools, rels, ood_ids, cfg.n_testood),
    }
    bridge = _facts(rng, names, pools, rels, in_ids + ood_ids, cfg.n_bridge_per_relation * len(rels))

    def exposure() -> int:
        if rng.random() < cfg.exposure_zero_frac:
            return 0
        return round(math.exp(rng.uniform(math.log(cfg.exposure_min), math.log(cfg.exposure_max))))

    exposures = {split: [exposure() for _ in facts] for split, facts in splits.items()}
    background = _facts(rng, names, pools, rels, ood_ids, cfg.n_background_per_ood_relation * len(ood_ids))
    return SyntheticWorld(KnowledgeBase(rels, splits), bridge, exposures, [(f, exposure()) for f in background])
