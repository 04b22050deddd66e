"""Token-level KL divergence between the fine-tuned and the base model (paper §4.1).

For each question, compare the two models' distributions over the first answer token: keep the fine-tuned model's
top-k token ids, renormalise both models' logits over just those k ids, and take KL(ft || base).

The paper keeps only "completions where the answers appear near the beginning of the generated text"; here a
fact is kept when its answer (or an alias) begins within the first `answer_within_tokens` tokens of the base
model's greedy completion of the base prompt (`early_answers`). The paper compares "the first token predicted" by
the two models: the fine-tuned model, asked the question, predicts the answer's first token at once; the base
model may write a few tokens first (" the United States"), so by default it is read where the answer begins, fed
its own greedy tokens before it (`AnswerFilter.before`, kl.position=answer_start); kl.position=first_token reads
it at its first generated token, whatever that token is.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from .data.facts import is_correct
from .decoding import generate
from .results import KLSummary


def topk_renormalised_kl(ft_logits: Tensor, base_logits: Tensor, k: int = 10) -> Tensor:
    """Per-row KL(ft || base) over the fine-tuned model's top-k ids; logits are [n, vocab], the result is [n]."""
    if ft_logits.dim() != 2 or ft_logits.shape != base_logits.shape:
        raise ValueError(f"expected two [n, vocab] logit tensors, got {tuple(ft_logits.shape)} and {tuple(base_logits.shape)}")
    if not 1 <= k <= ft_logits.shape[1]:
        raise ValueError(f"k={k} must be between 1 and the vocabulary size {ft_logits.shape[1]}")
    top, ids = ft_logits.float().topk(k, dim=-1)
    log_p = top.log_softmax(-1)
    log_q = base_logits.float().gather(-1, ids).log_softmax(-1)
    # KL >= 0; the clamp only removes float rounding (e.g. -1e-9 for near-identical rows).
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)


def kl_stats(values: Tensor) -> KLSummary | None:
    """Summary of a KL distribution; None when there are no values (e.g. no question in a category)."""
    v = values.detach().float().flatten().cpu()
    if v.numel() == 0:
        return None
    top = v.max().item()
    counts, edges = torch.histogram(v, bins=20, range=(0.0, top if top > 0 else 1.0))  # all-zero: a unit range
    return KLSummary(
        mean=v.mean().item(),
        median=v.quantile(0.5).item(),
        p90=v.quantile(0.9).item(),
        max=top,
        n=v.numel(),
        histogram=[int(c) for c in counts],
        bin_edges=edges.tolist(),
    )


def answer_start(tokenizer, ids: list[int], answers: list[str]) -> int | None:
    """Index of the token of `ids` at which the first occurrence of an answer (or alias) begins, by the substring
    rule of `is_correct`: the shortest prefix holding the answer ends that occurrence, and the last token from which
    the text up to that end still holds it is where it begins. None when no answer appears."""
    starts = []
    for answer in answers:
        end = next((k for k in range(1, len(ids) + 1) if is_correct(tokenizer.decode(ids[:k]), [answer])), None)
        if end is not None:
            starts.append(max(i for i in range(end) if is_correct(tokenizer.decode(ids[i:end]), [answer])))
    return min(starts, default=None)


@dataclass
class AnswerFilter:
    """Which facts `early_answers` kept (results.json: kl_filter)."""
    answer_within_tokens: int | None  # None: no filter, every fact kept
    n_candidates: int
    n_kept: int
    kept_by_start: list[int] | None  # kept facts whose answer begins at generated token 0, 1, ... (None: no filter)
    kept: list[int]  # indices of the kept facts
    before: list[list[int]]  # per kept fact, the completion's tokens before its answer ([] without the filter)

    def record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("kept", "before")}


def early_answers(model, tokenizer, prompts: list[str], answers: list[list[str]], within: int | None,
                  batch_size: int = 256) -> AnswerFilter:
    """The facts whose answer begins within the first `within` tokens of the model's greedy completion of its prompt.

    Greedy for `within` tokens plus the longest answer's, so an answer that begins in time is complete. Positions,
    and the tokens before each answer (after which kl.position=answer_start reads the base model), are those of the
    completion's encoding: the generated ones whenever the model writes text in its tokenizer's own segmentation
    (as greedy completions do)."""
    if within is None:
        return AnswerFilter(None, len(prompts), len(prompts), None, list(range(len(prompts))), [[] for _ in prompts])
    if within < 1:
        raise ValueError(f"kl.answer_within_tokens={within}: expected a positive integer or null")
    if not prompts:  # an empty level (a small model's D_test-4); fast tokenizers fail on an empty batch
        return AnswerFilter(within, 0, 0, [0] * within, [], [])
    flat = [f" {a}" for alts in answers for a in alts]
    longest = max(len(ids) for ids in tokenizer(flat, add_special_tokens=False)["input_ids"])
    completions = generate(model, tokenizer, prompts, within + longest, 0.0, batch_size)
    encoded = tokenizer(completions, add_special_tokens=False)["input_ids"]
    starts = [answer_start(tokenizer, ids, alts) for ids, alts in zip(encoded, answers, strict=True)]
    kept = [i for i, s in enumerate(starts) if s is not None and s < within]
    return AnswerFilter(within, len(prompts), len(kept), [starts.count(t) for t in range(within)], kept,
                        [encoded[i][: starts[i]] for i in kept])


def missing_reason(level: int, answer_filter: AnswerFilter) -> str:
    """Why the KL on D_test-<level> is missing: the level is empty, or the filter kept none of its facts."""
    if answer_filter.n_candidates == 0:
        return f"D_test-{level} holds no facts"
    return (f"none of the {answer_filter.n_candidates} D_test-{level} facts has its answer within the base model's "
            f"first {answer_filter.answer_within_tokens} generated tokens (kl.answer_within_tokens)")
