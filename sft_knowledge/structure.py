"""What a causal LM is made of, found from the model itself rather than from one family's parameter names: the one
place that knows it. Restoration's regions, FSDP's units and LoRA's targets all come from here.

- Decoder layers: the nn.ModuleList whose blocks are of a class the model names in `_no_split_modules` (transformers
  never splits those across devices: they are its decoder layers), else the ModuleList of identical blocks holding
  the most parameters. Their state-dict prefix (`model.layers.`, `gpt_neox.layers.`) gives each parameter its layer.
- In each layer, the attention and the MLP submodules: a well-known attribute name (self_attn, attn, attention, ...;
  mlp, feed_forward, ...), else the one child whose class name says so. Norms are modules whose class name holds
  "norm" (LlamaRMSNorm, nn.LayerNorm, Qwen3's q_norm inside attention).
- Embeddings: `get_input_embeddings()` and `get_output_embeddings()`. Tied weights (config.tie_word_embeddings, or any
  parameter the model holds under two names) are one parameter: `tied` maps each later name to its first one.

Regions (config.REGIONS), as sets of state-dict names, a tied parameter under all its names: `transformer` is every
parameter of the decoder layers outside their norms (ParamRestore's: matrices, and biases where the model has them,
e.g. Qwen2's q/k/v and GPT-NeoX's); `attention` and `mlp` its parameters under each layer's attention and MLP module;
`embedding` the input and output embeddings; `all` every parameter (persistent buffers, which SFT does not train, are
in none). Computed once from the model, they serve restoration on state dicts (CPU copies included). The decoder
layers' nn.Linear modules are LoRA's `[all-linear]`. A model whose structure is not understood is a one-line ModelError.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .config import REGIONS
from .errors import ModelError

ATTENTION = ("self_attn", "attn", "attention", "self_attention")
MLP = ("mlp", "feed_forward", "ffn", "block_sparse_moe")
ALL_LINEAR = "all-linear"  # train.lora_target_modules=[all-linear]: every linear projection of the decoder layers


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(module name, ModuleList) of the model's decoder layers: FSDP's units, restoration's layers."""
    no_split = set(getattr(model, "_no_split_modules", None) or ())
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    found = [(n, m) for n, m in lists if all(type(block).__name__ in no_split for block in m)]
    found = found or [(n, m) for n, m in lists if len({type(block) for block in m}) == 1]
    if not found:
        raise ModelError(f"{type(model).__name__}: no decoder layers found (no ModuleList of the classes in "
                         f"_no_split_modules, nor of identical blocks); its structure is not understood")
    return max(found, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)) or "norm" in type(module).__name__.lower()


def _submodule(layer: nn.Module, attributes: tuple[str, ...], words: tuple[str, ...], what: str, model: str) -> str:
    """The attribute of `layer` holding its attention (or MLP) module."""
    for name in attributes:
        if isinstance(getattr(layer, name, None), nn.Module):
            return name
    named = [n for n, m in layer.named_children() if any(w in type(m).__name__.lower() for w in words)]
    if len(named) != 1:
        children = ", ".join(f"{n} ({type(m).__name__})" for n, m in layer.named_children())
        raise ModelError(f"{model}: no {what} module found in its decoder layer {type(layer).__name__} "
                         f"(children: {children}); its structure is not understood")
    return named[0]


@dataclass(frozen=True)
class Region:
    """One restoration region: what restore.py needs of the structure, for state dicts of the model's parameters."""
    name: str
    names: frozenset[str]  # its state-dict names, a tied parameter under all of them
    tied: dict[str, str]  # a tied parameter's later name -> its first (both in the region): counted once, under the first
    layer_of: dict[str, int]  # the decoder layer of each of its names that lies in one


@dataclass(frozen=True)
class Structure:
    """A model's structure (`model_structure`): plain names and numbers, no modules, so it is cheap to keep and pass."""
    model_class: str
    layers_prefix: str  # state-dict prefix of the decoder layers, e.g. "model.layers."
    n_layers: int
    regions: dict[str, frozenset[str]]  # config.REGIONS -> state-dict names
    tied: dict[str, str]  # every later name of a parameter held under several -> its first name
    layer_of: dict[str, int]  # every parameter name inside the decoder layers -> its layer
    projections: tuple[str, ...]  # the linear modules of the decoder layers, relative to a layer (self_attn.q_proj, ...)
    embeddings: tuple[str, ...]  # the input, then the output embedding's parameters (tied: the same one, both names)
    tied_embeddings: bool  # the output embedding is the input one

    def region(self, name: str) -> Region:
        if name not in self.regions:
            raise ValueError(f"unknown region {name!r}; expected one of {REGIONS}")
        names = self.regions[name]
        return Region(name, names, {a: s for a, s in self.tied.items() if a in names},
                      {n: i for n, i in self.layer_of.items() if n in names})

    def lora_targets(self, requested: list[str]) -> list[str]:
        """peft's target_modules for train.lora_target_modules: `[all-linear]` is every linear projection of the decoder
        layers; named modules must be some of them (a name, or a dotted tail of one, as peft matches)."""
        if list(requested) == [ALL_LINEAR]:
            return list(self.projections)
        if missing := [t for t in requested if not any(p == t or p.endswith("." + t) for p in self.projections)]:
            leaves = list(dict.fromkeys(p.rsplit(".", 1)[-1] for p in self.projections))
            raise ModelError(f"train.lora_target_modules {missing} are not linear projections of {self.model_class}'s "
                             f"decoder layers; it has {leaves} (or [{ALL_LINEAR}]: all of them)")
        return list(requested)


def model_structure(model: nn.Module) -> Structure:
    """The structure of `model` (a causal LM, on any device, meta included)."""
    cls = type(model).__name__
    where, layers = decoder_layers(model)
    first: dict[int, str] = {}  # parameter -> its first name
    tied = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(p), n) != n:
            tied[n] = first[id(p)]

    def outside_norms(module: nn.Module) -> set[str]:
        norms = {id(p) for m in module.modules() if _is_norm(m) for p in m.parameters()}
        return {first[id(p)] for p in module.parameters() if id(p) not in norms}

    regions: dict[str, set[str]] = {"transformer": set(), "attention": set(), "mlp": set()}
    layer_of, projections = {}, {}
    for i, layer in enumerate(layers):
        attention = _submodule(layer, ATTENTION, ("attention",), "attention", cls)
        mlp = _submodule(layer, MLP, ("mlp", "feedforward", "moe"), "MLP", cls)
        regions["transformer"] |= outside_norms(layer)
        regions["attention"] |= outside_norms(getattr(layer, attention))
        regions["mlp"] |= outside_norms(getattr(layer, mlp))
        layer_of |= {f"{where}.{i}.{n}": i for n, _ in layer.named_parameters(remove_duplicate=False)}
        projections |= dict.fromkeys(n for n, m in layer.named_modules() if isinstance(m, nn.Linear))
    try:
        inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        inp = None
    if inp is None:
        raise ModelError(f"{cls}: no input embeddings found (get_input_embeddings); its structure is not understood")
    at = {id(m): n for n, m in model.named_modules()}
    emb = tuple(f"{at[id(m)]}.{n}" for m in (inp, out) if m is not None for n, _ in m.named_parameters())
    regions["embedding"] = {first[id(p)] for m in (inp, out) if m is not None for p in m.parameters()}
    regions["all"] = set(first.values())
    with_aliases = {r: frozenset(names | {a for a, s in tied.items() if s in names}) for r, names in regions.items()}
    return Structure(cls, f"{where}.", len(layers), {r: with_aliases[r] for r in REGIONS}, tied, layer_of,
                     tuple(projections), emb, out is not None and out.weight is inp.weight)
