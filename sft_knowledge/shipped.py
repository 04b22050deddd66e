"""The default world's pretrained model, shipped with the package; `make world` rebuilds it.

The paper downloads its base models; this project ships the embedded world's, for the same reasons: pretraining it
takes about 20 minutes on 2 CPU cores, and its floats (so its level counts) differ from CPU to CPU. When a run's
base-model spec equals the shipped spec, its cache entry is filled from the files in `worlds/tiny_world/` after
each is checked against `SHA256SUMS`; any other world, seed or pretraining setting is pretrained as before.
`make world` (sft_knowledge/rebuild_world.py) writes them.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from .errors import ModelError

SHIPPED_DIR = Path(__file__).parent / "worlds" / "tiny_world"
SPEC_FILE, HASHES_FILE = "spec.json", "SHA256SUMS"
REBUILD = "rebuild it with `make world`"


def shipped_spec() -> dict | None:
    """The base-model spec the shipped model was pretrained from, or None if nothing is shipped."""
    path = SHIPPED_DIR / SPEC_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def is_shipped(spec: dict) -> bool:
    return _canonical(spec) == _canonical(shipped_spec())


def _canonical(spec: dict | None) -> str:
    return json.dumps(spec, sort_keys=True)  # a spec read back from JSON compares equal to the one built in memory


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _listed() -> dict[str, str]:
    lines = (SHIPPED_DIR / HASHES_FILE).read_text().splitlines()
    return {name: sha for sha, name in (line.split(maxsplit=1) for line in lines if line.strip())}


def install_shipped(dest: Path) -> None:
    """Copy the shipped model into `dest` (a cache entry being built), each file checked against SHA256SUMS first."""
    for name, sha in _listed().items():
        src = SHIPPED_DIR / name
        if not src.is_file():
            raise ModelError(f"shipped model file {src} is missing; reinstall the package or {REBUILD}")
        if _sha256(src) != sha:
            raise ModelError(f"shipped model file {src} does not match its SHA-256 in {HASHES_FILE}; reinstall the "
                             f"package or {REBUILD}")
        shutil.copyfile(src, dest / name)


def write_shipped(model_dir: Path, spec: dict, out: Path = SHIPPED_DIR) -> None:
    """Make `out` hold the pretrained model in `model_dir` (a cache entry), its spec and SHA256SUMS."""
    names = sorted(p.name for p in model_dir.iterdir() if p.is_file() and p.name not in ("DONE.json", "origin.json"))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in names:
        shutil.copyfile(model_dir / name, out / name)
    (out / SPEC_FILE).write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
    (out / HASHES_FILE).write_text("".join(f"{_sha256(out / n)}  {n}\n" for n in [*names, SPEC_FILE]))
