"""SliCK: Gekhman et al. (2024)'s knowledge categories, a second way to sort facts by what the base model knows (issue 30).

For a fact, `n_prompts` few-shot prompts, each of `n_shots` random exemplars of the fact's relation and then its
question, in the closed-book QA format

    Q: {exemplar question}\\nA: {exemplar answer}\\n\\n ... Q: {question}\\nA:

are each answered once greedily and `n_samples` times at temperature 0.5 from the 40 most likely tokens. The answer
is the continuation up to its first line break (or up to a "Q:" that starts a next question on the same line), and
it is correct when, normalised, it *equals* the gold object or one of its aliases (`exact_match`). P(T=0) is the
share of correct greedy answers, P(T>0) the share of correct samples:

    HighlyKnown  P(T=0) = 1          MaybeKnown  0 < P(T=0) < 1
    WeaklyKnown  P(T=0) = 0 < P(T>0)  Unknown     P(T=0) = P(T>0) = 0

Categories come from the integer counts of correct answers, never from the float shares. Their codes order them by
knowledge, Unknown 0 to HighlyKnown 3, as D-0 to D-4 order the paper's levels. `cross_tab` counts the facts of each
D-level in each category. Where Gekhman et al. leave a choice, or our knowledge base differs from theirs, the choice
is written at the setting it belongs to (config.SlickConfig) and in docs/choices.md (SliCK).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from .config import SlickConfig, check_slick
from .data.facts import LEVEL_NAMES, SLICK_CATEGORIES, SPLITS, Fact, KnowledgeBase, normalise
from .decoding import generate
from .errors import DataError
from .probe import ProbeResult

CATEGORIES = SLICK_CATEGORIES  # the codes 0..3, least known first
CODES = {name: code for code, name in enumerate(CATEGORIES)}


@dataclass
class SlickResult:
    """Per split, in the split's fact order: P(T=0), P(T>0) and the category code. JSON as it is (`asdict`, and back
    with `SlickResult(**json)`), like ProbeResult."""
    p_greedy: dict[str, list[float]]  # split -> P(T=0) per fact: correct greedy answers / n_prompts
    p_sample: dict[str, list[float]]  # split -> P(T>0) per fact: correct samples / (n_prompts x n_samples)
    category: dict[str, list[int]]  # split -> category code per fact (CODES)
    codes: dict[str, int] = field(default_factory=lambda: dict(CODES))  # category -> code, so the JSON says itself

    def counts(self, split: str) -> list[int]:
        """Facts of each category, in code order (Unknown first)."""
        return [self.category[split].count(code) for code in range(len(CATEGORIES))]

    def members(self, split: str, name: str) -> list[bool]:
        """Which facts of `split` are in the category `name` (an SFT bucket such as maybe_known)."""
        return [code == self.codes[name] for code in self.category[split]]


# --- the prompts ---------------------------------------------------------------------------------------------------

def qa_block(question: str, answer: str | None = None) -> str:
    """One exemplar, or with no answer the question to answer: `Q: {question}\\nA:` and ` {answer}`."""
    return f"Q: {question.strip()}\nA:" + (f" {answer.strip()}" if answer is not None else "")


def few_shot_prompt(exemplars: list[Fact], question: str) -> str:
    """The exemplars' blocks then the question's, a blank line between blocks."""
    return "\n\n".join([*(qa_block(e.question, e.object) for e in exemplars), qa_block(question)])


def exemplar_pools(kb: KnowledgeBase, source: str, dev: list[Fact] | None = None) -> dict[str, dict[str, list[Fact]]]:
    """split -> relation -> the facts a question of that split and relation may take exemplars from, one per
    question text (a question asked twice is one exemplar). `dev`: the held-out facts exemplars=dev draws from."""
    def by_relation(facts: list[Fact]) -> dict[str, list[Fact]]:
        pools: dict[str, dict[str, Fact]] = {}
        for f in facts:
            pools.setdefault(f.relation, {}).setdefault(f.question, f)
        return {rel: list(unique.values()) for rel, unique in pools.items()}

    if source == "same_split":
        return {split: by_relation(kb.splits[split]) for split in SPLITS}
    if source == "dev" and dev is None:
        raise DataError("probe.slick.exemplars=dev draws exemplars from held-out facts (EntityQuestions' dev split, the "
                        "embedded world's bridge facts) and none were given; use probe.slick.exemplars=all_splits")
    shared = by_relation(dev if source == "dev" else [f for split in SPLITS for f in kb.splits[split]])
    return {split: shared for split in SPLITS}


def fact_prompts(fact: Fact, pool: list[Fact], cfg: SlickConfig) -> list[str]:
    """The fact's n_prompts few-shot prompts: each n_shots distinct exemplars of `pool`, in random order, never one
    with the fact's own question; drawn independently per prompt (prompts may share exemplars)."""
    rng = random.Random(f"{cfg.seed}|{fact.relation}|{fact.subject}|{fact.object}")  # str seeds: stable across runs
    prompts = []
    for _ in range(cfg.n_prompts):
        # n_shots + 1 draws, then the question's own fact dropped if drawn: a uniform draw of n_shots of the others.
        draws = rng.sample(range(len(pool)), min(len(pool), cfg.n_shots + 1))
        drawn = [pool[i] for i in draws if pool[i].question != fact.question][: cfg.n_shots]
        if len(drawn) < cfg.n_shots:
            hint = ("fewer probe.slick.n_shots" if cfg.exemplars == "all_splits"
                    else "probe.slick.exemplars=all_splits, or fewer probe.slick.n_shots")
            raise DataError(f"SliCK needs {cfg.n_shots} exemplars of relation {fact.relation} besides {fact.question!r}; "
                            f"its exemplar pool ({cfg.exemplars}) holds {len(pool)} facts: use {hint}")
        prompts.append(few_shot_prompt(drawn, fact.question))
    return prompts


# --- the answers and their grade -------------------------------------------------------------------------------------

def extract_answer(continuation: str) -> str:
    """The answer a few-shot continuation gives: its text before the first line break, and before a "Q:" that opens
    the next question on the same line, stripped. A continuation that breaks the line first gives no answer."""
    return continuation.split("\n", 1)[0].split("Q:", 1)[0].strip()


def exact_match(answer: str, answers: list[str]) -> bool:
    """SliCK's grade: the answer, normalised as evaluation normalises (facts.normalise), equals the gold object or an
    alias. Stricter than the paper's substring test (facts.is_correct): "Paris, France" or "Paris and Lyon" contain
    "Paris" but are not it. Aliases count: they are the same answer written otherwise ("USA", "United States")."""
    got = normalise(answer)
    return bool(got) and any(got == normalise(a) for a in answers)


def category_of(greedy_hits: int, sample_hits: int, n_prompts: int) -> int:
    """The category code of a fact with `greedy_hits` of n_prompts greedy answers and `sample_hits` samples correct."""
    if greedy_hits == n_prompts:
        return CODES["highly_known"]
    if greedy_hits > 0:
        return CODES["maybe_known"]
    return CODES["weakly_known"] if sample_hits > 0 else CODES["unknown"]


def _hits(texts: list[str], answers: list[list[str]], per_fact: int) -> list[int]:
    """Correct answers per fact: `texts` fact-major, `per_fact` of each, `answers[i]` those of the i-th fact."""
    correct = [exact_match(extract_answer(t), answers[i // per_fact]) for i, t in enumerate(texts)]
    return [sum(correct[i : i + per_fact]) for i in range(0, len(correct), per_fact)]


def slick_categories(model, tokenizer, kb: KnowledgeBase, cfg: SlickConfig, dev: list[Fact] | None = None) -> SlickResult:
    """P(T=0), P(T>0) and the SliCK category of every fact of every split, with decoding.generate: per fact,
    n_prompts greedy continuations and n_prompts x n_samples sampled ones. `dev`: the held-out facts of exemplars=dev."""
    check_slick(cfg)
    pools = exemplar_pools(kb, cfg.exemplars, dev)
    # Every prompt is built before any decoding, so a relation too small for n_shots fails at once.
    prompts = {split: [p for f in kb.splits[split] for p in fact_prompts(f, pools[split].get(f.relation, []), cfg)]
               for split in SPLITS}
    result = SlickResult({}, {}, {})
    for split in SPLITS:
        facts = kb.splits[split]
        if not facts:  # the tokenizer refuses an empty batch
            result.p_greedy[split], result.p_sample[split], result.category[split] = [], [], []
            continue
        answers = [kb.answers(f) for f in facts]
        desc = f"slick {split} ({len(facts)} facts)"
        greedy = generate(model, tokenizer, prompts[split], cfg.max_new_tokens, 0.0, cfg.batch_size, cfg.seed, desc)
        sampled = generate(model, tokenizer, prompts[split], cfg.max_new_tokens, cfg.temperature, cfg.batch_size, cfg.seed,
                           desc, cfg.n_samples, top_k=cfg.top_k)
        greedy_hits = _hits(greedy, answers, cfg.n_prompts)
        sample_hits = _hits(sampled, answers, cfg.n_prompts * cfg.n_samples)
        result.p_greedy[split] = [h / cfg.n_prompts for h in greedy_hits]
        result.p_sample[split] = [h / (cfg.n_prompts * cfg.n_samples) for h in sample_hits]
        result.category[split] = [category_of(g, s, cfg.n_prompts) for g, s in zip(greedy_hits, sample_hits)]
    return result


# --- the two schemes side by side ------------------------------------------------------------------------------------

def cross_tab(levels: ProbeResult, slick: SlickResult) -> dict[str, dict[str, dict[str, int]]]:
    """split -> D-level name -> category -> how many facts of that level fall in that category, every level and
    category present, in order (plain JSON for results.json: report/crosstab.py renders it without this module). Both
    results must be of the same knowledge base: the same facts in the same order."""
    table = {}
    for split in SPLITS:
        lv, cat = levels.level.get(split, []), slick.category.get(split, [])
        if len(lv) != len(cat):
            raise ValueError(f"split {split}: {len(lv)} facts have levels and {len(cat)} SliCK categories; "
                             f"the two results are not of the same facts")
        counts = {name: dict.fromkeys(CATEGORIES, 0) for name in LEVEL_NAMES}
        for level, code in zip(lv, cat):
            counts[LEVEL_NAMES[level]][CATEGORIES[code]] += 1
        table[split] = counts
    return table
