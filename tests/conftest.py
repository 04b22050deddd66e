"""Shared fixtures: offline settings, the command line and composed configs as fixtures (`cli`, `compose`), and one
small pretrained world reused by every end-to-end test. Test modules take these as fixtures; none imports another."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"


def compose_config(*overrides: str):
    """The typed Config that `python -m sft_knowledge.run <overrides>` would run, composed in-process."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sft_knowledge.config import register

    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=list(overrides)))


def run_cli(*overrides: str, output_dir: Path, cache_dir: Path | None = None, check: bool = True,
            experiment: str | None = "smoke", module: str = "sft_knowledge.run") -> subprocess.CompletedProcess:
    """`python -m sft_knowledge.run experiment=smoke ...` in a subprocess, as a user would run it (`module`: another
    command that takes a run's arguments, such as sft_knowledge.plan; experiment=None: none given)."""
    args = [sys.executable, "-m", module, *([f"experiment={experiment}"] if experiment else []), f"paths.output_dir={output_dir}"]
    if cache_dir is not None:
        args.append(f"paths.cache_dir={cache_dir}")
    flags = [o for o in overrides if o.startswith("-")]  # Hydra wants flags such as -m before the overrides
    proc = subprocess.run([*args[:3], *flags, *args[3:], *(o for o in overrides if o not in flags)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def compose():
    """`compose(*overrides)`: the typed Config of a command line (compose_config)."""
    return compose_config


@pytest.fixture(scope="session")
def cli():
    """`cli(*overrides, output_dir=..., ...)`: the command line in a subprocess (run_cli)."""
    return run_cli


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory) -> Path:
    """A cache holding the smoke world's pretrained model and probe, built once per test session."""
    out = tmp_path_factory.mktemp("smoke")
    run_cli(output_dir=out / "warmup", cache_dir=out / "cache")
    return out / "cache"


@pytest.fixture(scope="session")
def smoke_level_counts(smoke_cache) -> dict[str, list[int]]:
    """The smoke world's level counts per split, as this machine's pretraining and probe gave them. Tests derive
    sizes and expected messages from these, never from one machine's numbers: pretraining's floats differ between
    CPU kernels (AVX-512 vs AVX2), so the levels do too."""
    import json

    [results] = (smoke_cache.parent / "warmup" / "runs").glob("*/results.json")
    return json.loads(results.read_text())["level_counts"]


@pytest.fixture
def own_signal_handlers():
    """run.main installs SIGINT/SIGTERM handlers; give pytest its own back."""
    import signal

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.fixture(scope="session")
def local_slurm():
    """A real single-node SLURM for this session (launchers/local_slurm.sh), stopped at the end if this
    session started it. Where it cannot run (not root, not Debian, packages not installable) the tests
    that use it are skipped, with the reason."""
    script = str(ROOT / "launchers" / "local_slurm.sh")
    for step in ("can-run", "install"):
        proc = subprocess.run([script, step], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.skip(f"no local SLURM: {(proc.stdout + proc.stderr).strip().splitlines()[-1]}")
    was_up = subprocess.run([script, "status"], capture_output=True).returncode == 0
    subprocess.run([script, "up"], check=True, timeout=300)
    yield
    if not was_up:
        subprocess.run([script, "down"], check=True, timeout=120)


RANDOM_MODELS = {  # random_model_dir's architectures: transformers config class, options beyond the shared shape
    "llama": ("LlamaConfig", {}), "llama_tied": ("LlamaConfig", {"tie_word_embeddings": True}),  # SmolLM2 ties
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": True}),  # as Qwen2-0.5B; q/k/v have biases
    "qwen3": ("Qwen3Config", {}), "mistral": ("MistralConfig", {}), "gemma2": ("Gemma2Config", {}),  # Gemma ties
    "gemma3": ("Gemma3TextConfig", {}), "phi3": ("Phi3Config", {}), "gpt_neox": ("GPTNeoXConfig", {}),
}


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory):
    """`random_model_dir(arch, dtype="float32") -> Path`: a small randomly initialised causal LM (2 layers, hidden 32,
    seed 0) of an architecture in `random_model_dir.archs`, saved with the shipped world's tokenizer (2050 tokens;
    Qwen2's tokenizer class adds one, and the vocabulary follows) and loadable by AutoModelForCausalLM and
    AutoTokenizer.from_pretrained; built once per session and dtype ("float32", "bfloat16")."""
    import shutil

    import torch
    import transformers

    tokenizer = ROOT / "sft_knowledge" / "worlds" / "tiny_world"
    built: dict[tuple[str, str], Path] = {}

    def build(arch: str, dtype: str = "float32") -> Path:
        if (arch, dtype) not in built:
            name, options = RANDOM_MODELS[arch]
            config = getattr(transformers, name)(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                head_dim=8, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=1, **options)
            out = tmp_path_factory.mktemp(f"{arch}-{dtype}")
            for file in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(tokenizer / file, out)
            config.save_pretrained(out)  # AutoTokenizer's class follows the model type: Qwen2's adds <|endoftext|>
            config.vocab_size = len(transformers.AutoTokenizer.from_pretrained(out))
            torch.manual_seed(0)
            transformers.AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).save_pretrained(out)
            built[arch, dtype] = out
        return built[arch, dtype]

    build.archs = tuple(RANDOM_MODELS)
    return build
