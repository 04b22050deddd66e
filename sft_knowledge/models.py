"""Loading base models and tokenizers, and building the embedded `tiny_world` model through the cache."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .cache import Cache
from .data.synthetic import SyntheticWorld, SyntheticWorldConfig
from .pretrain import PretrainConfig, pretrain


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load(path: str | Path):
    """A causal LM and its tokenizer from a Hugging Face directory, on the best device, in eval mode."""
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device())
    return model.eval(), tokenizer


def tiny_world_spec(pretrain_cfg: PretrainConfig, world_cfg: SyntheticWorldConfig) -> dict:
    return {"source": "tiny_world", "pretrain": asdict(pretrain_cfg), "world": asdict(world_cfg)}


def build_tiny_world(cache: Cache, world: SyntheticWorld, pretrain_cfg: PretrainConfig, world_cfg: SyntheticWorldConfig) -> tuple[Path, bool]:
    """Pretrain the tiny Llama on the world's corpus once; later runs load it from the cache."""

    def build(tmp: Path) -> None:
        stats = pretrain(world.corpus(pretrain_cfg.seed, world_cfg), pretrain_cfg, tmp)
        (tmp / "pretrain_stats.json").write_text(json.dumps(stats, indent=1))

    return cache.get_or_build("base_model", tiny_world_spec(pretrain_cfg, world_cfg), build)
