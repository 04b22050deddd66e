"""Restoration as a product: a restored model saved as an ordinary Hugging Face directory (`restore.export`).

`<run_dir>/restored-<ratio>/` holds what `save_pretrained` writes (config, safetensors shards of at most SHARD_SIZE
with their index; tied weights once, as transformers saves them), the tokenizer, and `restored_tensors.tsv`: per
parameter, how many of its scalars were set back to their base values. It holds exactly the weights the run evaluated
at that ratio, in the model's dtype, and loads with `AutoModelForCausalLM.from_pretrained`. It is written into a
temporary directory beside it and published by one rename, so a killed run never leaves a half model.
"""
from __future__ import annotations

from pathlib import Path

from .cache import publish_dir

SHARD_SIZE = "5GB"  # the hub's customary shard size: an 8B bf16 model is 4 files that load and copy one by one
TENSORS = "restored_tensors.tsv"


def export_path(run_dir: Path, ratio: float) -> Path:
    """Where a run saves its model restored at `ratio` percent."""
    return Path(run_dir) / f"restored-{ratio:g}"


def tensor_table(model, per_tensor: dict[str, int]) -> str:
    """One row per parameter (a tied one once, under its first name, as restoration counts it)."""
    rows = ["tensor\trestored\tscalars"] + [f"{n}\t{per_tensor.get(n, 0)}\t{p.numel()}" for n, p in model.named_parameters()]
    return "\n".join(rows) + "\n"


def export_restored(model, tokenizer, per_tensor: dict[str, int], dest: Path) -> Path:
    """Save `model` as it is now (restored) with its tokenizer into `dest`, whole or not at all. The caller holds the
    run's lock, so no one else writes beside `dest`."""
    if dest.exists():  # published by one rename, so complete: an earlier, killed attempt of this run (same key) wrote it
        return dest

    def build(tmp: Path) -> None:
        model.save_pretrained(tmp, max_shard_size=SHARD_SIZE)
        tokenizer.save_pretrained(tmp)
        (tmp / TENSORS).write_text(tensor_table(model, per_tensor))

    publish_dir(dest, build, lambda tmp, err: f"no space left to save the restored model into {dest}: free space, or "
                                              f"export fewer ratios (restore.export)")
    return dest
