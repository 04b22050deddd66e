"""Stage 1: the mastery probe. How well does the base model know each fact? (paper §3.1, App. F.1)

For a fact, the base model continues each of `n_map` mapping-template prefixes `n_sample` times at
temperature 0.7; R = the fraction of continuations that contain the answer. R sorts facts into
D-0: R = 0, D-1: (0, .25], D-2: (.25, .5], D-3: (.5, .75], D-4: (.75, 1]. The levels come from the integer
hit count out of n_map x n_sample (`level_of_hits`), never from a float R: a float32 mean of per-template
means can put exactly half the hits (105 of 210) above 0.5, in D-3.

`estimator="likelihood"` replaces sampling by its expectation: R = the mean over templates of the
probability of producing the answer at that temperature (teacher forcing, one forward pass per
template). It has no exact zeros, so a fact counts as D-0 below half a hit of the sampling budget.

`templates="paper_only"` probes with only the mapping templates recovered from the paper (App. F.2): a relation
with fewer than n_map of them uses those it has, so its facts have fewer samples (n_templates x n_sample) and
their levels are fractions of that budget.

Sampling runs on one of two backends, which only produce the continuations (same prompt tokens,
`[bos] + encode(prompt)`); hits, R and levels are computed from them here, the same way for both.
`hf` is decoding.generate; `vllm` is vLLM's engine (GPU nodes, `pip install vllm`), much faster at
paper scale. Their random streams differ, so the backend is part of the probe's cache key.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .config import BACKENDS, ESTIMATORS, ProbeConfig
from .data.facts import LEVELS, SPLITS, Fact, KnowledgeBase, is_correct
from .decoding import answer_logprob, encode_prompts, generate

LEVEL_UPPER = (0.0, 0.25, 0.5, 0.75, 1.0)  # upper bound of R for D-0..D-4 (D-0 is exactly 0)
Sampler = Callable[[list[str], str], list[str]]  # (prompts, progress label) -> n_sample texts per prompt, prompt-major


@dataclass
class ProbeResult:
    rate: dict[str, list[float]]  # split -> R per fact
    level: dict[str, list[int]]  # split -> D-level per fact
    template_rate: dict[str, list[float]] = field(default_factory=dict)  # relation -> mean R per template

    def counts(self, split: str) -> list[int]:
        return [self.level[split].count(lv) for lv in LEVELS]

    def best_template(self, relation: str) -> int:
        """Paper §4.1: per topic, the mapping template with the highest success rate."""
        rates = self.template_rate[relation]
        return max(range(len(rates)), key=rates.__getitem__)


def level_of_hits(hits: int, total: int) -> int:
    """The sampling level of `hits` of `total` samples, by exact integer comparisons: D-0 no hit, D-1 <= 25%,
    D-2 <= 50%, D-3 <= 75%, D-4 above."""
    if not 0 <= hits <= total:
        raise ValueError(f"hits={hits} must be between 0 and the {total} samples")
    return 0 if hits == 0 else next((lv for lv in (1, 2, 3) if 4 * hits <= lv * total), 4)


def level_of(rate: float, zero_below: float = 0.0) -> int:
    """The level of a float R: the likelihood estimator's expected hit rate, which has no integer count."""
    if rate <= zero_below:
        return 0
    return next(lv for lv in range(1, 5) if rate <= LEVEL_UPPER[lv])


def templates_used(kb: KnowledgeBase, cfg: ProbeConfig) -> dict[str, int]:
    """Mapping templates each relation is probed with (results.json: probe_templates)."""
    return {rid: len(rel.probe_templates(cfg.n_map, cfg.templates)) for rid, rel in kb.relations.items()}


def hf_sampler(model, tokenizer, cfg: ProbeConfig) -> Sampler:
    def sample(prompts: list[str], desc: str) -> list[str]:
        return generate(model, tokenizer, prompts, cfg.max_new_tokens, cfg.temperature, cfg.batch_size, cfg.seed, desc,
                        cfg.n_sample, cfg.top_p)
    return sample


def vllm_sampler(model, tokenizer, cfg: ProbeConfig) -> Sampler:
    """vLLM's engine on the weights `model` was loaded from, in its dtype, fed the prompt tokens `generate` uses."""
    import vllm  # optional: config validation has checked it is installed

    # vLLM claims a share of the whole GPU up front; the HF model the other stages use already holds some.
    free, total = torch.cuda.mem_get_info() if torch.cuda.is_available() else (1, 1)
    llm = vllm.LLM(model=str(model.name_or_path), dtype=str(model.dtype).removeprefix("torch."), seed=cfg.seed,
                   gpu_memory_utilization=0.9 * free / total)

    def sample(prompts: list[str], desc: str) -> list[str]:
        # vLLM seeds the j-th sample of a request with its seed + j: seeds n_sample apart give every sample its own stream.
        params = [vllm.SamplingParams(n=cfg.n_sample, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens,
                                      seed=cfg.seed + i * cfg.n_sample) for i in range(len(prompts))]
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in encode_prompts(tokenizer, prompts)], params, use_tqdm=bool(desc))
        return [c.text for out in outputs for c in out.outputs]
    return sample


def _template_hits(model, tokenizer, kb: KnowledgeBase, facts: list[Fact], cfg: ProbeConfig, sample: Sampler | None,
                   desc: str) -> tuple[list[torch.Tensor], list[int] | None]:
    """(per fact, the hit rate under each of its templates, float64; per fact, the integer hits out of its
    templates x n_sample, or None for the likelihood estimator, whose rates are expectations)."""
    per_fact = [kb.relations[f.relation].mapping_prompts(f.subject, cfg.n_map, cfg.templates) for f in facts]
    n_templates = [len(p) for p in per_fact]
    prompts = [p for fact_prompts in per_fact for p in fact_prompts]
    if cfg.estimator == "likelihood":
        answers = [f.object for f, n in zip(facts, n_templates) for _ in range(n)]
        logp = answer_logprob(model, tokenizer, prompts, answers, cfg.temperature, cfg.batch_size)
        return list(logp.double().exp().split(n_templates)), None
    texts = sample(prompts, desc)
    answers = [kb.answers(f) for f, n in zip(facts, n_templates) for _ in range(n * cfg.n_sample)]
    hits = torch.tensor([is_correct(t, a) for t, a in zip(texts, answers, strict=True)], dtype=torch.long)
    per_template = hits.view(len(prompts), cfg.n_sample).sum(-1).split(n_templates)
    return [h.double() / cfg.n_sample for h in per_template], [int(h.sum()) for h in per_template]


def probe(model, tokenizer, kb: KnowledgeBase, cfg: ProbeConfig) -> ProbeResult:
    if cfg.estimator not in ESTIMATORS:
        raise ValueError(f"probe.estimator={cfg.estimator!r}: expected one of {', '.join(ESTIMATORS)}")
    if cfg.backend not in BACKENDS:
        raise ValueError(f"probe.backend={cfg.backend!r}: expected one of {', '.join(BACKENDS)}")
    # Built once, before the splits: one vLLM engine serves them all. The likelihood estimator does not sample.
    make_sampler = vllm_sampler if cfg.backend == "vllm" else hf_sampler
    sample = make_sampler(model, tokenizer, cfg) if cfg.estimator == "sampling" else None
    result = ProbeResult({}, {})
    per_relation: dict[str, list[torch.Tensor]] = {}
    for split in SPLITS:
        facts = kb.splits[split]
        if not facts:
            result.rate[split], result.level[split] = [], []
            continue
        rates, hits = _template_hits(model, tokenizer, kb, facts, cfg, sample, desc=f"probe {split} ({len(facts)} facts)")
        budgets = [len(r) * cfg.n_sample for r in rates]  # samples per fact: its templates x n_sample
        if hits is None:
            result.rate[split] = [r.mean().item() for r in rates]
            result.level[split] = [level_of(r, 0.5 / total) for r, total in zip(result.rate[split], budgets)]
        else:
            result.rate[split] = [h / total for h, total in zip(hits, budgets)]
            result.level[split] = [level_of_hits(h, total) for h, total in zip(hits, budgets)]
        for f, row in zip(facts, rates):
            per_relation.setdefault(f.relation, []).append(row)
    result.template_rate = {rel: torch.stack(rows).mean(0).tolist() for rel, rows in per_relation.items()}
    return result
