"""Parameter restoration (paper §5): set the fine-tuned scalars that SFT changed most back to their base values.

A scalar's relative change is |ft - base| / (|base| + eps) (float32; eps 1e-8 as ParamRestore). A base scalar of
exactly 0 then scores |ft - base| / eps, about 1e3 for an SFT step where others score about 1e-3: a quantised model's
zeros (SmolLM2's Q4_1) decide the ranking. `zeros="unranked"` scores them 0 instead (their relative change is
undefined); `exact_zeros` counts them per region for results.json. Restoring k% selects the k% of the region's scalars
with the highest change. `scope` says among which scalars: `global` (the paper's and ParamRestore's: the whole
region at once, like torch.topk over the flattened region), `per_tensor` (k% of every matrix) or `per_layer` (k% of
every decoder layer; a tensor outside the layers is a group of its own), as model-merging tools trim. Which tensors
make up a region, and which decoder layer each lies in, the model's structure says (structure.py: `Region`).

A 7B model has billions of scalars, so the thresholds are found without concatenating (or even holding) their
scores: an exact two-pass radix select over the 32-bit ordered keys of the float32 scores, for all ratios and groups
together. Pass 1 counts the scores per value of the key's high 16 bits: that brackets every ratio's threshold in one
of 65536 bins. Pass 2 counts, per tensor, the scores above each bracket and the low 16 bits of those inside it (few,
and kept as per-value counts, so a bracket full of ties costs no memory), which fixes every threshold exactly.
Scores are computed in chunks of CHUNK scalars and dropped at once. Ties at the threshold: all scalars above it, then
the first ones equal to it in flat order, tensor after tensor (`Selection.ties_taken`).

Tied weights (input and output embeddings of SmolLM2-like models) appear twice in a state dict; they are counted,
selected and restored once, under the first name. The model says which they are (`Region.tied`), so copies that lost
the sharing (recipe.weight_copy clones key by key) count them once too.

The "bottom" and "random" baselines reuse the same machinery with another per-scalar score.
"""
from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .config import REGIONS, SCOPES, STRATEGIES, ZEROS
from .structure import Region, Structure

HIGH = 16  # bits of the key resolved by pass 1; pass 2 resolves the other 16
NBINS = 1 << HIGH
CHUNK = 1 << 18  # scalars scored at once on a CPU: the temporaries stay in cache and an embedding needs no GBs


def relative_change(ft: Tensor, base: Tensor, eps: float = 1e-8, zeros: str = "guarded") -> Tensor:
    """|ft - base| / (|base| + eps) in float32 (in place on fresh copies: the same values as the plain expression);
    zeros="unranked": 0 where base is exactly 0."""
    b = base.to(torch.float32, copy=True)
    zero = b == 0 if zeros == "unranked" else None
    r = ft.to(torch.float32, copy=True).sub_(b).abs_().div_(b.abs_().add_(eps))
    return r if zero is None else r.masked_fill_(zero, 0.0)


@dataclass
class Selection:
    ratio: float  # percent of the region's scalars, 0..100 (of every group's, for a scope other than global)
    k: int  # scalars selected: round(ratio / 100 * n) of every group of n scalars, summed
    n_total: int  # scalars in the region (tied tensors once)
    threshold: float  # score of the k-th selected scalar (nan when k == 0, or when the scope is not global)
    per_tensor: dict[str, int]  # scalars selected in each tensor
    ties_taken: dict[str, int]  # scalars with score == threshold selected in each tensor (the first ones, flat order)
    change_share: float  # selected relative change / the region's total relative change (Table 3 "update share")
    passes: int  # streaming passes over the region's tensors that found it (shared by all ratios of one call)
    scope: str = "global"  # global | per_tensor | per_layer
    thresholds: dict[str, float] = field(default_factory=dict)  # each tensor's threshold (its group's; nan if none)
    eps: float = 1e-8  # the relative change's guard and zeros rule it was selected by (restoring scores the same way)
    zeros: str = "guarded"


def _region(base: dict[str, Tensor], ft: dict[str, Tensor], region: Region) -> tuple[list[str], dict[str, str]]:
    """(the region's tensors in base's order, tied ones once; alias -> the name it is counted under)."""
    names = [n for n in base if n in region.names]
    extra = [n for n in ft if n not in base and n in region.names]
    if extra:
        raise ValueError(f"tensor {extra[0]!r} is missing from the base weights")
    for n in names:
        if n not in ft:
            raise ValueError(f"tensor {n!r} is missing from the fine-tuned weights")
        if ft[n].shape != base[n].shape:
            raise ValueError(f"tensor {n!r} has shape {tuple(ft[n].shape)} fine-tuned but {tuple(base[n].shape)} base")
    aliases = {a: source for a, source in region.tied.items() if a in base and source in base}
    return [n for n in names if n not in aliases], aliases


def _region_names(base: dict[str, Tensor], ft: dict[str, Tensor], region: Region) -> list[str]:
    return _region(base, ft, region)[0]


def _random_scores(name: str, n: int, seed: int, device: torch.device) -> Tensor:
    # Seeded per tensor (and drawn on the CPU) so every call, on any device, picks the same scalars.
    gen = torch.Generator().manual_seed(seed + zlib.crc32(name.encode()))
    return torch.rand(n, generator=gen).to(device)


def _chunk_size(t: Tensor) -> int:
    return CHUNK if t.device.type == "cpu" else 1 << 26  # a GPU wants few, large kernels


def exact_zeros(base: dict[str, Tensor], ft: dict[str, Tensor], structure: Structure) -> dict[str, dict[str, int]]:
    """Per region: its scalars of exactly 0 in `base` and all its scalars (tied tensors once)."""
    counts = {}
    for n, b in base.items():
        flat, step = b.reshape(-1), _chunk_size(b)
        counts[n] = sum(int((flat[s:s + step] == 0).sum()) for s in range(0, flat.numel(), step))
    return {region: {"zeros": sum(counts[n] for n in names), "scalars": sum(base[n].numel() for n in names)}
            for region in REGIONS for names in [_region_names(base, ft, structure.region(region))]}


def _scores(name: str, base: Tensor, ft: Tensor, strategy: str, seed: int, eps: float = 1e-8,
            zeros: str = "guarded") -> Iterator[tuple[int, Tensor, Tensor]]:
    """(offset, float32 score, float32 relative change) of consecutive flat chunks; selection takes the highest scores."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    b, f = base.reshape(-1), ft.reshape(-1)
    rand = _random_scores(name, b.numel(), seed, b.device) if strategy == "random" else None
    step = _chunk_size(b)
    for s in range(0, b.numel(), step):
        r = relative_change(f[s:s + step], b[s:s + step], eps, zeros)
        score = r if strategy == "top" else -r if strategy == "bottom" else rand[s:s + step]
        yield s, score, r


def _ordered_key(score: Tensor) -> Tensor:
    """float32 -> int32 whose bits, read unsigned, order like the floats (non-NaN): flip all bits of negatives, the
    sign bit of positives. -0.0 sorts below 0.0 here but equals it in the comparisons of restoration; no strategy's
    scores mix the two (top's are >= +0.0, bottom's <= -0.0, random's in [0, 1))."""
    bits = score.view(torch.int32)
    return bits ^ ((bits >> 31) | -(1 << 31))


def _high(key: Tensor) -> Tensor:
    return (key >> HIGH) & (NBINS - 1)


def _key_to_float(key: int) -> float:
    bits = key & 0x7FFFFFFF if key >= 1 << 31 else 0xFFFFFFFF - key
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def _kth_bin(hist: Tensor, k: int) -> tuple[int, int]:
    """For 1 <= k <= hist.sum(): the bin of the k-th largest value, and how many of the k lie in that bin."""
    at_least = hist.flip(0).cumsum(0)  # at_least[i]: values in bins >= len - 1 - i
    i = int(torch.searchsorted(at_least, torch.tensor(k)))
    d = len(hist) - 1 - i
    return d, k - int(at_least[i] - hist[d])


def _groups(names: list[str], scope: str, layer_of: dict[str, int]) -> dict[str | int, list[str]]:
    if scope == "global":
        return {"": names}
    if scope == "per_tensor":
        return {n: [n] for n in names}
    if scope == "per_layer":
        groups: dict[str | int, list[str]] = {}
        for n in names:
            groups.setdefault(layer_of.get(n, n), []).append(n)
        return groups
    raise ValueError(f"unknown scope {scope!r}; expected one of {SCOPES}")


@dataclass
class _Bracket:
    """Pass 2's view of one tensor: scalars above each bracket bin, and per low-16-bit value those inside it."""
    above: dict[int, int]  # bracket bin -> scalars of the tensor in higher bins
    low: dict[int, tuple[Tensor, Tensor, Tensor]]  # bracket bin -> (low values, their counts, their change sums)
    members: tuple[Tensor, Tensor] | None  # random only: (bracket code, change) of the members in flat order


def _pass2(name: str, base: Tensor, ft: Tensor, bins: list[int], strategy: str, seed: int, eps: float, zeros: str) -> _Bracket:
    dev = base.device
    slot = torch.full((NBINS,), -1, dtype=torch.int32, device=dev)
    slot[torch.tensor(bins, device=dev)] = torch.arange(len(bins), dtype=torch.int32, device=dev)
    count = torch.zeros(NBINS, dtype=torch.long, device=dev)
    low_count = torch.zeros(len(bins) * NBINS, dtype=torch.long, device=dev)
    low_change = torch.zeros(len(bins) * NBINS, dtype=torch.float64, device=dev)
    codes, changes = [], []
    for _, score, r in _scores(name, base, ft, strategy, seed, eps, zeros):
        key = _ordered_key(score)
        hi = _high(key)
        count += torch.bincount(hi, minlength=NBINS)
        s = slot.index_select(0, hi)
        at = (s >= 0).nonzero().squeeze(1)  # the few members of a bracket: everything below is proportional to them
        code = s.index_select(0, at).long() * NBINS + (key.index_select(0, at) & (NBINS - 1))  # bracket, low bits
        change = r.index_select(0, at)
        low_count.index_add_(0, code, torch.ones_like(code))
        low_change.index_add_(0, code, change.double())
        if strategy == "random":
            codes.append(code)
            changes.append(change)
    higher = count.flip(0).cumsum(0).flip(0).tolist() + [0]  # higher[d]: scalars in bins >= d
    low = {}
    for j, b in enumerate(bins):
        c, w = low_count[j * NBINS:(j + 1) * NBINS], low_change[j * NBINS:(j + 1) * NBINS]
        nz = c.nonzero().squeeze(1)
        low[b] = nz.cpu(), c[nz].cpu(), w[nz].cpu()
    members = (torch.cat(codes).cpu(), torch.cat(changes).cpu()) if strategy == "random" else None
    return _Bracket({b: higher[b + 1] for b in bins}, low, members)


def select_thresholds(
    base: dict[str, Tensor],
    ft: dict[str, Tensor],
    ratios: list[float],
    region: Region,
    strategy: str = "top",
    seed: int = 0,
    *,
    scope: str = "global",
    eps: float = 1e-8,
    zeros: str = "guarded",
) -> dict[float, Selection]:
    names, _ = _region(base, ft, region)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if zeros not in ZEROS:
        raise ValueError(f"unknown zeros rule {zeros!r}; expected one of {ZEROS}")
    groups = _groups(names, scope, region.layer_of)
    if bad := [ratio for ratio in ratios if not 0 <= ratio <= 100]:
        raise ValueError(f"restore ratio {bad[0]} is outside [0, 100] (it is a percentage)")
    ratios = list(dict.fromkeys(ratios))
    if not ratios:
        return {}
    group_of = {n: g for g, members in groups.items() for n in members}
    size = {g: sum(base[n].numel() for n in members) for g, members in groups.items()}
    ks = {ratio: {g: round(ratio / 100 * size[g]) for g in groups} for ratio in ratios}

    # Pass 1: per group, the scores (and their relative change) per value of the key's high bits.
    count = {g: torch.zeros(NBINS, dtype=torch.long) for g in groups}
    change = {g: torch.zeros(NBINS, dtype=torch.float64) for g in groups}
    for n in names:
        c = torch.zeros(NBINS, dtype=torch.long, device=base[n].device)
        w = torch.zeros(NBINS, dtype=torch.float64, device=base[n].device)
        for _, score, r in _scores(n, base[n], ft[n], strategy, seed, eps, zeros):
            hi = _high(_ordered_key(score))
            c += torch.bincount(hi, minlength=NBINS)
            w += torch.bincount(hi, weights=r.double(), minlength=NBINS)
        count[group_of[n]] += c.cpu()
        change[group_of[n]] += w.cpu()
    passes = 1 if names else 0
    total = sum(float(w.sum()) for w in change.values())
    # Each (ratio, group) with k > 0: the bin holding its threshold, and how many of its k lie in that bin.
    bracket = {(ratio, g): _kth_bin(count[g], k) for ratio in ratios for g, k in ks[ratio].items() if k}

    # Pass 2: per tensor, the scalars above every bracket of its group, and the low bits of those inside.
    bins = {g: sorted({bracket[ratio, g][0] for ratio in ratios if (ratio, g) in bracket}) for g in groups}
    seen = {n: _pass2(n, base[n], ft[n], bins[group_of[n]], strategy, seed, eps, zeros) for n in names if bins[group_of[n]]}
    passes += bool(seen)

    out = {}
    for ratio in ratios:
        sel = Selection(ratio, sum(ks[ratio].values()), sum(size.values()), math.nan, dict.fromkeys(names, 0),
                        dict.fromkeys(names, 0), math.nan, passes, scope, dict.fromkeys(names, math.nan), eps, zeros)
        selected = 0.0
        for g, members in groups.items():
            if (ratio, g) in bracket:
                selected += _resolve(sel, members, *bracket[ratio, g], seen, change[g], strategy)
        if scope == "global" and sel.k:
            sel.threshold = sel.thresholds[names[0]]
        sel.change_share = selected / total if total > 0 else math.nan
        out[ratio] = sel
    return out


def _resolve(sel: Selection, members: list[str], b: int, need: int, seen: dict[str, _Bracket], change: Tensor,
             strategy: str) -> float:
    """Fix one group's threshold inside bracket bin b and split its ties; returns the selected relative change."""
    merged = torch.zeros(NBINS, dtype=torch.long)
    for n in members:
        idx, c, _ = seen[n].low[b]
        merged.index_add_(0, idx, c)
    low, need = _kth_bin(merged, need)
    threshold = _key_to_float(b << HIGH | low)
    selected = float(change[b + 1:].sum())
    for n in members:
        idx, c, w = seen[n].low[b]
        above, equal = idx > low, idx == low
        eq = int(c[equal].sum())
        take = min(eq, need)
        need -= take
        sel.per_tensor[n] = seen[n].above[b] + int(c[above].sum()) + take
        sel.ties_taken[n], sel.thresholds[n] = take, threshold
        selected += float(w[above].sum())
        if take == eq:
            selected += float(w[equal].sum())
        elif strategy == "random":  # the first `take` ties of this tensor, each with its own change
            codes, r = seen[n].members
            slot = list(seen[n].low).index(b)  # brackets are kept in the order of their pass-2 slots
            selected += float(r[codes == slot * NBINS + low][:take].double().sum())
        else:  # top and bottom: a tie's change is the threshold's magnitude
            selected += take * abs(threshold)
    return selected


def _restore_tensor(name: str, base: Tensor, ft: Tensor, sel: Selection, strategy: str, seed: int, out: Tensor) -> None:
    """Write ft with the tensor's selected scalars set back to base into `out` (any device, ft's shape)."""
    taken = sel.per_tensor.get(name, 0)
    if taken == 0 or taken == ft.numel():  # nothing or everything: no score needed
        out.copy_(base if taken else ft)
        return
    threshold, ties = sel.thresholds.get(name, sel.threshold), sel.ties_taken.get(name, 0)
    b, f, o = base.reshape(-1).to(ft.dtype), ft.reshape(-1), out.view(-1)
    direct = o.device == f.device and o.dtype == f.dtype  # else each chunk is copied across (weight_copies=cpu)
    equal_seen = 0
    for s, score, _ in _scores(name, base, ft, strategy, seed, sel.eps, sel.zeros):
        mask = score > threshold
        if ties > equal_seen:  # the first `ties` scalars equal to the threshold, counted across chunks
            eq = score == threshold
            order = eq.cumsum(0)
            mask |= eq & (order <= ties - equal_seen)
            equal_seen += int(order[-1])
        e = s + len(score)
        if direct:
            torch.where(mask, b[s:e], f[s:e], out=o[s:e])
        else:
            o[s:e].copy_(torch.where(mask, b[s:e], f[s:e]))


def restored_state(
    base: dict[str, Tensor], ft: dict[str, Tensor], selection: Selection, region: Region, strategy: str, seed: int
) -> Iterator[tuple[str, Tensor]]:
    """The fine-tuned tensors, one at a time, with the selected scalars set back to their base values.

    A tied tensor is restored once and yielded under all its names as the same tensor.
    """
    names, aliases = _region(base, ft, region)
    names, shared = set(names), set(aliases.values())
    done: dict[str, Tensor] = {}  # restored tensors that a tied name still has to yield

    def restored(n: str) -> Tensor:
        if n in done:
            return done[n]
        out = torch.empty_like(ft[n])
        _restore_tensor(n, base[n], ft[n], selection, strategy, seed, out)
        if n in shared:
            done[n] = out
        return out

    for n, f in ft.items():
        source = aliases.get(n, n)
        yield n, restored(source) if source in names else f


def _model_params(model: torch.nn.Module, ft: dict[str, Tensor]) -> dict[str, torch.nn.Parameter]:
    params = dict(model.named_parameters())  # a tied parameter once, under its first name
    if missing := [n for n in params if n not in ft]:
        raise ValueError(f"model parameter {missing[0]!r} is missing from the fine-tuned weights")
    return params


def _copy_into(model: torch.nn.Module, ft: dict[str, Tensor], tensors: Iterable[tuple[str, Tensor]]) -> None:
    params = _model_params(model, ft)
    with torch.no_grad():
        for n, t in tensors:
            if n in params:
                params[n].copy_(t)


def restore_into(
    model: torch.nn.Module,
    base: dict[str, Tensor],
    ft: dict[str, Tensor],
    selection: Selection,
    region: Region,
    strategy: str,
    seed: int,
) -> None:
    # Always rebuilt from ft, never from the model's current values, so ratios can be swept on one model. Written
    # straight into the parameters chunk by chunk; tensors with nothing (or everything) selected need no score.
    names, aliases = _region(base, ft, region)
    names = set(names)
    with torch.no_grad():
        for n, p in _model_params(model, ft).items():
            source = aliases.get(n, n)
            if source in names and p.is_contiguous():
                _restore_tensor(source, base[source], ft[source], selection, strategy, seed, p)
            elif source in names:
                out = torch.empty_like(ft[source])
                _restore_tensor(source, base[source], ft[source], selection, strategy, seed, out)
                p.copy_(out)
            else:
                p.copy_(ft[n])


def restore_layers(
    model: torch.nn.Module, base: dict[str, Tensor], ft: dict[str, Tensor], layers: set[int], region: Region
) -> int:
    """Restore whole decoder layers (Table 11): their region scalars to base, everything else to ft. Returns the count."""
    chosen = {n for n in _region_names(base, ft, region) if region.layer_of.get(n) in layers}
    _copy_into(model, ft, ((n, base[n] if n in chosen else f) for n, f in ft.items()))
    return sum(base[n].numel() for n in chosen)
