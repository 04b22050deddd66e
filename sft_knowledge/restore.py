"""Parameter restoration (paper §5): set the fine-tuned scalars that SFT changed most back to their base values.

A scalar's relative change is |ft - base| / |base|. Restoring k% selects the k% of the region's scalars with the
highest change globally (not per matrix), like ParamRestore's torch.topk over the flattened region. A 7B model has
billions of scalars, so the threshold is found without ever concatenating them: a radix select over the float32 bit
patterns of the scores, streaming over the tensors one at a time and refining the thresholds of all ratios at once.
The "bottom" and "random" baselines reuse the same machinery with another per-scalar score.
"""
from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

REGIONS = ("transformer", "attention", "mlp", "embedding", "all")
STRATEGIES = ("top", "bottom", "random")


def in_region(name: str, region: str) -> bool:
    # ParamRestore's "transformer": every matrix of the decoder layers; embeddings, lm_head and norms excluded.
    transformer = "layers" in name and "norm" not in name
    match region:
        case "transformer":
            return transformer
        case "attention":
            return transformer and "self_attn" in name
        case "mlp":
            return transformer and ".mlp." in name
        case "embedding":
            return "embed_tokens" in name or "lm_head" in name
        case "all":
            return True
    raise ValueError(f"unknown region {region!r}; expected one of {REGIONS}")


def relative_change(ft: Tensor, base: Tensor) -> Tensor:
    base = base.float()
    return (ft.float() - base).abs() / (base.abs() + 1e-8)


@dataclass
class Selection:
    ratio: float  # percent of the region's scalars, 0..100
    k: int  # scalars selected, round(ratio / 100 * n_total)
    n_total: int  # scalars in the region
    threshold: float  # score of the k-th selected scalar (nan when k == 0)
    per_tensor: dict[str, int]  # scalars selected in each tensor
    ties_taken: dict[str, int]  # scalars with score == threshold selected in each tensor (the first ones, flat order)
    change_share: float  # selected relative change / the region's total relative change (Table 3 "update share")
    passes: int  # streaming passes over the region's tensors that found it (shared by all ratios of one call)


def _region_names(base: dict[str, Tensor], ft: dict[str, Tensor], region: str) -> list[str]:
    names = [n for n in base if in_region(n, region)]
    extra = [n for n in ft if n not in base and in_region(n, region)]
    if extra:
        raise ValueError(f"tensor {extra[0]!r} is missing from the base weights")
    for n in names:
        if n not in ft:
            raise ValueError(f"tensor {n!r} is missing from the fine-tuned weights")
        if ft[n].shape != base[n].shape:
            raise ValueError(f"tensor {n!r} has shape {tuple(ft[n].shape)} fine-tuned but {tuple(base[n].shape)} base")
    return names


def _score(name: str, base: Tensor, ft: Tensor, strategy: str, seed: int) -> tuple[Tensor, Tensor]:
    """Flat float32 (score, relative change) of one tensor; selection takes the highest scores."""
    r = relative_change(ft, base).flatten()
    if strategy == "top":
        score = r
    elif strategy == "bottom":
        score = -r
    elif strategy == "random":
        # Seeded per tensor (and drawn on the CPU) so every call, on any device, picks the same scalars.
        gen = torch.Generator().manual_seed(seed + zlib.crc32(name.encode()))
        score = torch.rand(r.numel(), generator=gen).to(r.device)
    else:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    return score, r


def _ordered_key(score: Tensor) -> Tensor:
    """float32 -> int64 in [0, 2**32) with the same order (for non-NaN): flip all bits of negatives, the sign of positives.

    -0.0 sorts below 0.0 here but equal to it in the comparisons of `_mask`; no strategy's scores mix the two.
    """
    bits = score.view(torch.int32).long() & 0xFFFFFFFF
    return torch.where(bits >= 1 << 31, 0xFFFFFFFF - bits, bits | 1 << 31)


def _key_to_float(key: int) -> float:
    bits = key & 0x7FFFFFFF if key >= 1 << 31 else 0xFFFFFFFF - key
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def _mask(score: Tensor, threshold: float, ties: int) -> Tensor:
    """Everything above the threshold, then the first `ties` scalars equal to it."""
    eq = score == threshold
    return (score > threshold) | (eq & (eq.cumsum(0) <= ties))


def select_thresholds(
    base: dict[str, Tensor],
    ft: dict[str, Tensor],
    ratios: list[float],
    region: str = "transformer",
    strategy: str = "top",
    seed: int = 0,
    bins: int = 4096,
) -> dict[float, Selection]:
    names = _region_names(base, ft, region)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if bad := [ratio for ratio in ratios if not 0 <= ratio <= 100]:
        raise ValueError(f"restore ratio {bad[0]} is outside [0, 100] (it is a percentage)")
    if not 2 <= bins <= 1 << 16 or bins & (bins - 1):
        raise ValueError(f"bins={bins} must be a power of two between 2 and 65536")

    def stream() -> Iterator[tuple[str, Tensor, Tensor]]:
        nonlocal passes
        passes += 1
        for n in names:
            yield n, *_score(n, base[n], ft[n], strategy, seed)

    passes = 0
    n_total = sum(base[n].numel() for n in names)
    ks = {ratio: round(ratio / 100 * n_total) for ratio in ratios}
    # Radix select of the k-th largest key, most significant digit first. Per ratio: the high bits fixed so far, and
    # how many of the scalars whose key starts with them are still to be selected (ends as the ties to take).
    prefix, need = dict.fromkeys(ks, 0), dict(ks)
    width, done = bins.bit_length() - 1, 0
    while done < 32 and any(need.values()):
        w = min(width, 32 - done)
        shift = 32 - done - w
        live = torch.tensor(sorted({prefix[ratio] for ratio in ks if need[ratio]}))
        hist = torch.zeros(len(live) << w, dtype=torch.long)
        for _, score, _ in stream():
            key, rows = _ordered_key(score), live.to(score.device)
            hi = key >> (shift + w)
            row = torch.searchsorted(rows, hi).clamp(max=len(rows) - 1)
            hit = rows[row] == hi
            digit = (key >> shift) & ((1 << w) - 1)
            hist += torch.bincount((row[hit] << w) + digit[hit], minlength=len(live) << w).cpu()
        hist = hist.view(len(live), 1 << w)
        for ratio in ks:
            if need[ratio]:
                h = hist[live.tolist().index(prefix[ratio])]
                at_least = h.flip(0).cumsum(0)  # at_least[i]: scalars whose digit >= (2**w - 1 - i)
                i = int(torch.searchsorted(at_least, torch.tensor(need[ratio])))
                d = (1 << w) - 1 - i
                need[ratio] -= int(at_least[i] - h[d])
                prefix[ratio] = prefix[ratio] << w | d
        done += w

    out = {
        ratio: Selection(
            ratio, k, n_total, threshold=_key_to_float(prefix[ratio]) if k else math.nan,
            per_tensor={}, ties_taken={}, change_share=math.nan, passes=0,
        )
        for ratio, k in ks.items()
    }
    # Last pass: split the ties over the tensors in iteration order, and measure the selected share of change.
    total, selected = 0.0, dict.fromkeys(ks, 0.0)
    for n, score, change in stream():
        total += change.sum(dtype=torch.float64).item()
        for ratio, sel in out.items():
            take = min(int((score == sel.threshold).sum()), need[ratio])
            need[ratio] -= take
            mask = _mask(score, sel.threshold, take)
            sel.ties_taken[n], sel.per_tensor[n] = take, int(mask.sum())
            selected[ratio] += change[mask].sum(dtype=torch.float64).item()
    for ratio, sel in out.items():
        sel.change_share = selected[ratio] / total if total > 0 else math.nan
        sel.passes = passes
    return out


def restored_state(
    base: dict[str, Tensor], ft: dict[str, Tensor], selection: Selection, region: str, strategy: str, seed: int
) -> Iterator[tuple[str, Tensor]]:
    """The fine-tuned tensors, one at a time, with the selected scalars set back to their base values."""
    names = set(_region_names(base, ft, region))
    for n, f in ft.items():
        if n not in names:
            yield n, f
            continue
        score, _ = _score(n, base[n], f, strategy, seed)
        mask = _mask(score, selection.threshold, selection.ties_taken.get(n, 0)).view(f.shape)
        yield n, torch.where(mask, base[n].to(f.device, f.dtype), f)


def _copy_into(model: torch.nn.Module, ft: dict[str, Tensor], tensors: Iterable[tuple[str, Tensor]]) -> None:
    params = dict(model.named_parameters())
    if missing := [n for n in params if n not in ft]:
        raise ValueError(f"model parameter {missing[0]!r} is missing from the fine-tuned weights")
    with torch.no_grad():
        for n, t in tensors:
            if n in params:
                params[n].copy_(t)


def restore_into(
    model: torch.nn.Module,
    base: dict[str, Tensor],
    ft: dict[str, Tensor],
    selection: Selection,
    region: str,
    strategy: str,
    seed: int,
) -> None:
    # Always rebuilt from ft, never from the model's current values, so ratios can be swept on one model.
    _copy_into(model, ft, restored_state(base, ft, selection, region, strategy, seed))


def restore_layers(
    model: torch.nn.Module, base: dict[str, Tensor], ft: dict[str, Tensor], layers: set[int], region: str = "transformer"
) -> int:
    """Restore whole decoder layers (Table 11): their region scalars to base, everything else to ft. Returns the count."""
    blocks = tuple(f"layers.{i}." for i in layers)
    chosen = {n for n in _region_names(base, ft, region) if any(b in n for b in blocks)}
    _copy_into(model, ft, ((n, base[n] if n in chosen else f) for n, f in ft.items()))
    return sum(base[n].numel() for n in chosen)
