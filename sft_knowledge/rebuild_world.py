"""`make world`: pretrain the default world's model from scratch and ship it (sft_knowledge/shipped.py).

    python -m sft_knowledge.rebuild_world

It composes `make run`'s config, pretrains the world in a fresh temporary cache (never copied from the shipped files),
writes the model, its spec and SHA256SUMS into sft_knowledge/worlds/tiny_world/, then probes it as `make run` does
and prints the level counts of all three splits. About 20 minutes on 2 CPU cores.
"""
from __future__ import annotations

import tempfile

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from .cache import Cache
from .config import register, tiny_world_spec
from .models import build_tiny_world
from .overrides import CONF_DIR
from .recipe import load_base_model, load_data, mastery_levels
from .shipped import SHIPPED_DIR, write_shipped

def main() -> None:
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):  # the world and probe `make run` uses
        cfg = OmegaConf.to_object(compose("config", overrides=["experiment=toy_grid"]))
    spec = tiny_world_spec(cfg.model.pretrain, cfg.data.world)
    with tempfile.TemporaryDirectory() as scratch:  # a fresh cache: the world is pretrained, never copied
        cache = Cache(scratch)
        data = load_data(cfg, cache)
        path, _ = build_tiny_world(cache, data.world, cfg.model.pretrain, cfg.data.world, use_shipped=False)
        write_shipped(path, spec)
        print(f"shipped: {SHIPPED_DIR} ({sum(p.stat().st_size for p in SHIPPED_DIR.iterdir()) / 1e6:.1f} MB)")
        base = load_base_model(cfg, cache, data)
        counts = mastery_levels(cfg, cache, data, base).counts
    print("level counts" + "".join(f"{f'D-{lv}':>8}" for lv in range(5)))
    for split, c in counts.items():
        print(f"  {split:<10}" + "".join(f"{n:>8,}" for n in c))

if __name__ == "__main__":
    main()
