"""The shipped world: the default world's model comes from the package, checked, and never goes stale."""
import json
import shutil
import subprocess
import sys

import pytest

from sft_knowledge import models, shipped
from sft_knowledge.cache import Cache
from sft_knowledge.data.synthetic import build_world
from sft_knowledge.errors import ModelError
from sft_knowledge.models import build_tiny_world
from sft_knowledge.config import tiny_world_spec

SHIPPED_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "pretrain_stats.json",
                 "spec.json"}


@pytest.mark.parametrize("overrides", [(), ("experiment=toy_grid",), ("mastery=d4", "data.size=1920")])
def test_the_default_world_is_the_shipped_one(compose, overrides):
    cfg = compose(*overrides)
    spec = tiny_world_spec(cfg.model.pretrain, cfg.data.world)
    assert shipped.is_shipped(spec), (
        f"the default world's base-model spec no longer equals the shipped model's ({shipped.SHIPPED_DIR / shipped.SPEC_FILE}); "
        f"run `make world` to pretrain and ship the new default (about 20 min on 2 cores)")


def test_other_worlds_and_pretraining_settings_are_not_the_shipped_one(compose):
    for overrides in [("experiment=smoke",), ("model.pretrain.seed=1",), ("data.world.seed=1",), ("model.pretrain.optimizer=muon",)]:
        cfg = compose(*overrides)
        assert not shipped.is_shipped(tiny_world_spec(cfg.model.pretrain, cfg.data.world)), overrides


def test_the_shipped_files_are_listed_with_their_hashes_and_small():
    listed = shipped._listed()
    assert SHIPPED_FILES <= set(listed) and set(listed) == {p.name for p in shipped.SHIPPED_DIR.iterdir()} - {shipped.HASHES_FILE}
    assert all(shipped._sha256(shipped.SHIPPED_DIR / n) == sha for n, sha in listed.items())
    assert sum(p.stat().st_size for p in shipped.SHIPPED_DIR.iterdir()) < 10e6


def test_the_default_world_is_filled_from_the_shipped_files_without_pretraining(compose, tmp_path, monkeypatch):
    cfg = compose()
    monkeypatch.setattr(models, "pretrain", lambda *a: pytest.fail("pretrained the shipped world"))
    path, hit = build_tiny_world(Cache(tmp_path), build_world(cfg.data.world), cfg.model.pretrain, cfg.data.world)
    assert not hit and models.origin(path) == f"shipped ({shipped.SHIPPED_DIR})"
    for name, sha in shipped._listed().items():
        assert shipped._sha256(path / name) == sha


def test_another_world_is_pretrained_here_and_says_so(compose, tmp_path, monkeypatch):
    cfg = compose("model.pretrain.seed=1")
    calls = []

    def pretrain(docs, pretrain_cfg, out):
        calls.append(pretrain_cfg.seed)
        return {"seconds": 1234.4}

    monkeypatch.setattr(models, "pretrain", pretrain)
    path, _ = build_tiny_world(Cache(tmp_path), build_world(cfg.data.world), cfg.model.pretrain, cfg.data.world)
    assert calls == [1] and models.origin(path) == "pretrained here in 1,234 s"
    assert models.origin(tmp_path) == "pretrained here"  # an entry from before models were shipped


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    copy = tmp_path / "shipped"
    shutil.copytree(shipped.SHIPPED_DIR, copy)
    monkeypatch.setattr(shipped, "SHIPPED_DIR", copy)
    (tmp_path / "entry").mkdir()
    return copy


def test_a_damaged_shipped_file_is_refused_in_one_line(shipped_copy):
    weights = shipped_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError) as err:
        shipped.install_shipped(shipped_copy.parent / "entry")
    assert str(err.value) == (f"shipped model file {weights} does not match its SHA-256 in SHA256SUMS; reinstall the "
                              f"package or rebuild it with `make world`")


def test_a_missing_shipped_file_is_refused_in_one_line(shipped_copy):
    (shipped_copy / "tokenizer.json").unlink()
    with pytest.raises(ModelError) as err:
        shipped.install_shipped(shipped_copy.parent / "entry")
    assert str(err.value) == (f"shipped model file {shipped_copy / 'tokenizer.json'} is missing; reinstall the package "
                              f"or rebuild it with `make world`")


def test_write_shipped_lists_every_file_but_the_cache_records(tmp_path):
    entry, out = tmp_path / "entry", tmp_path / "out"
    entry.mkdir()
    for name, text in [("model.safetensors", "w"), ("config.json", "{}"), ("DONE.json", "{}"), ("origin.json", "{}")]:
        (entry / name).write_text(text)
    shipped.write_shipped(entry, {"source": "tiny_world", "b": 1}, out)
    assert sorted(p.name for p in out.iterdir()) == ["SHA256SUMS", "config.json", "model.safetensors", "spec.json"]
    assert json.loads((out / "spec.json").read_text()) == {"source": "tiny_world", "b": 1}
    assert (out / "SHA256SUMS").read_text().splitlines()[1].endswith("  model.safetensors")


@pytest.mark.slow  # builds a wheel in a subprocess
def test_the_shipped_model_is_package_data(tmp_path):
    """`pip install .` (not only a checkout) has the model: the wheel holds every shipped file."""
    import zipfile

    root, src = shipped.SHIPPED_DIR.parent.parent.parent, tmp_path / "src"  # built from a copy: nothing written here
    for name in ("sft_knowledge", "launchers", "hydra_plugins"):
        shutil.copytree(root / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(root / "pyproject.toml", src)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    [wheel] = tmp_path.glob("sft_knowledge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"sft_knowledge/worlds/tiny_world/{n}" for n in [*SHIPPED_FILES, "SHA256SUMS"]} <= names
