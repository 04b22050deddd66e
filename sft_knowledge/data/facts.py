"""The fact record, relations with their question and mapping templates, and answer matching.

A fact is (subject, relation, object). The mastery probe completes a relation's *mapping templates*
("{subject} was born in"); SFT and evaluation ask its *question template* ("Where was [X] born?").
A generated text is correct when the gold object, or one of its aliases, is a substring of it
after normalisation (paper App. F.1; normalisation is our choice, see `normalise`).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

LEVELS = (0, 1, 2, 3, 4)  # mastery levels D-0..D-4
SPLITS = ("train", "test", "testood")
EVAL_SPLITS = ("test", "testood")  # what the fine-tuned model is judged on: in-domain and out-of-domain
LEVEL_NAMES = tuple(f"D-{lv}" for lv in LEVELS)
MAPPING_TEMPLATES = 21  # per relation, in both datasets (paper App. F.2); probe.n_map takes the first n
TEMPLATE_SETS = ("all", "paper_only")  # probe.templates: every mapping template, or only the paper's own
# Gekhman et al. (2024)'s SliCK categories (slick.py), least known first: their codes 0..3 order them as D-0..D-4 do
SLICK_CATEGORIES = ("unknown", "weakly_known", "maybe_known", "highly_known")


def category_title(name: str) -> str:
    """A SliCK category as Gekhman et al. write it: maybe_known -> MaybeKnown."""
    return "".join(word.capitalize() for word in name.split("_"))


@dataclass(frozen=True)
class Relation:
    id: str  # Wikidata-style id, e.g. "P19"
    question_template: str  # EntityQuestions style, subject slot "[X]"
    mapping_templates: tuple[str, ...]  # sentence prefixes, subject slot "{subject}"
    in_domain: bool
    n_paper: int = 0  # how many of mapping_templates, the first ones, are the paper's own (EntityQuestions)

    def question(self, subject: str) -> str:
        return self.question_template.replace("[X]", subject)

    def probe_templates(self, n_map: int, which: str = "all") -> tuple[str, ...]:
        """The first n_map mapping templates; `paper_only`: the first n_map of the paper's own (they come first),
        all of them where the relation has fewer."""
        return self.mapping_templates[: min(n_map, self.n_paper) if which == "paper_only" else n_map]

    def mapping_prompts(self, subject: str, n_map: int, which: str = "all") -> list[str]:
        return [t.format(subject=subject) for t in self.probe_templates(n_map, which)]


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    object: str
    question: str


@dataclass
class KnowledgeBase:
    """Everything the stages need to know about a dataset: relations, the three splits, aliases."""

    relations: dict[str, Relation]
    splits: dict[str, list[Fact]]  # "train", "test", "testood"
    aliases: dict[str, list[str]] = field(default_factory=dict)  # gold object -> accepted synonyms

    def answers(self, fact: Fact) -> list[str]:
        return [fact.object, *self.aliases.get(fact.object, [])]


_PUNCT = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower-case, NFKC, drop soft hyphens, punctuation to spaces, collapse white space.

    The paper does not say how it normalises before its substring test; this is the usual
    SQuAD/lm-eval style, applied identically to the gold answer and to the generation.
    """
    text = unicodedata.normalize("NFKC", text).replace("\u00ad", "").lower()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def is_correct(generation: str, answers: list[str]) -> bool:
    """Paper's rule: the gold object or any synonym is a substring of the generated text."""
    gen = normalise(generation)
    return any(a in gen for a in (normalise(x) for x in answers) if a)
