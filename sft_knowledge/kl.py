"""Token-level KL divergence between the fine-tuned and the base model (paper §4.1).

For each question, compare the two models' distributions over the first answer token: keep the fine-tuned model's
top-k token ids, renormalise both models' logits over just those k ids, and take KL(ft || base).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


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


@dataclass
class KLStats:
    mean: float
    median: float
    p90: float
    max: float
    n: int
    histogram: list[int]  # counts in 20 equal-width bins from 0 to max
    bin_edges: list[float]  # 21 edges


def kl_stats(values: Tensor) -> KLStats | None:
    """Summary of a KL distribution; None when there are no values (e.g. no question in a category)."""
    v = values.detach().float().flatten().cpu()
    if v.numel() == 0:
        return None
    top = v.max().item()
    counts, edges = torch.histogram(v, bins=20, range=(0.0, top if top > 0 else 1.0))  # all-zero: a unit range
    return KLStats(
        mean=v.mean().item(),
        median=v.quantile(0.5).item(),
        p90=v.quantile(0.9).item(),
        max=top,
        n=v.numel(),
        histogram=[int(c) for c in counts],
        bin_edges=edges.tolist(),
    )
