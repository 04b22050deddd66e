"""Content-addressed artifact cache: `<root>/<kind>/<key>/`, key = hash of what produced it.

An entry is built in a temporary directory and published by one atomic rename; its `DONE.json`
(the producing config and the size of every file) is written last. A directory without a valid
`DONE.json`, or whose files do not match it, is reported, never silently rebuilt over or used.
A file lock (flock, which also holds across the nodes of an NFS file system) makes concurrent builders
of one entry, such as the cells of a job array, wait for the first; a builder killed mid-way (a
requeued job) releases it, and its successor can resume from `work_dir`.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import digest

MARKER = "DONE.json"


class CacheError(RuntimeError):
    """A damaged cache entry; the message is one line and says what to delete."""


def _manifest(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file() and p.name != MARKER}


def check(path: Path) -> None:
    """Raise CacheError unless `path` is a complete entry whose files match its marker."""
    marker = path / MARKER
    try:
        files = json.loads(marker.read_text())["files"]
    except (OSError, ValueError, KeyError):
        raise CacheError(f"cache entry {path} is incomplete or corrupt (no valid {MARKER}); delete it to recompute") from None
    for name, size in files.items():
        actual = (path / name).stat().st_size if (path / name).is_file() else None
        if actual != size:
            raise CacheError(f"cache entry {path} is corrupt: {name} has {actual} bytes, expected {size}; delete it to recompute")


class Cache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def entry(self, kind: str, spec: Any) -> Path:
        return self.root / kind / digest(spec, 16)

    def work_dir(self, kind: str, spec: Any) -> Path:
        """Scratch space that outlives a killed builder (SFT checkpoints); removed once the entry is published."""
        return self.root / kind / f".work-{digest(spec, 16)}"

    def get_or_build(self, kind: str, spec: Any, build: Callable[[Path], None]) -> tuple[Path, bool]:
        """Path of the entry for `spec`, building it with `build(tmp_dir)` if missing. Returns (path, hit)."""
        path = self.entry(kind, spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / f".{path.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per entry; the others wait, then hit
            if path.exists():
                check(path)
                return path, True
            tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            try:
                build(tmp)
                marker = {"kind": kind, "spec": spec if not hasattr(spec, "__dataclass_fields__") else repr(spec), "files": _manifest(tmp)}
                (tmp / MARKER).write_text(json.dumps(marker, indent=1, default=str))
                os.replace(tmp, path)
                shutil.rmtree(self.work_dir(kind, spec), ignore_errors=True)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return path, False
