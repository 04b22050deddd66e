"""The artifact cache: built once, published atomically, damage reported and never overwritten."""
import json
import multiprocessing
import os
import time

import pytest

from sft_knowledge.cache import MARKER, Cache, CacheError


def _writer(calls):
    def build(tmp):
        calls.append(tmp)
        (tmp / "weights.bin").write_bytes(b"x" * 100)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "meta.json").write_text("{}")
    return build


def test_builds_once_then_hits(tmp_path):
    cache, calls = Cache(tmp_path), []
    path, hit = cache.get_or_build("sft", {"a": 1}, _writer(calls))
    assert not hit and (path / "weights.bin").stat().st_size == 100
    assert json.loads((path / MARKER).read_text())["files"] == {"sub/meta.json": 2, "weights.bin": 100}
    again, hit = cache.get_or_build("sft", {"a": 1}, _writer(calls))
    assert hit and again == path and len(calls) == 1
    other, hit = cache.get_or_build("sft", {"a": 2}, _writer(calls))
    assert not hit and other != path


def test_failed_build_leaves_nothing(tmp_path):
    cache = Cache(tmp_path)

    def boom(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cache.get_or_build("sft", {"a": 1}, boom)
    assert not cache.entry("sft", {"a": 1}).exists()
    assert [p.name for p in (tmp_path / "sft").iterdir() if not p.name.endswith(".lock")] == []


def test_partial_entry_is_reported_not_rebuilt(tmp_path):
    cache = Cache(tmp_path)
    path = cache.entry("sft", {"a": 1})
    path.mkdir(parents=True)
    (path / "weights.bin").write_bytes(b"partial")
    with pytest.raises(CacheError, match="incomplete or corrupt.*delete it to recompute"):
        cache.get_or_build("sft", {"a": 1}, _writer([]))
    assert (path / "weights.bin").read_bytes() == b"partial"  # untouched


def test_truncated_file_is_reported(tmp_path):
    cache = Cache(tmp_path)
    path, _ = cache.get_or_build("sft", {"a": 1}, _writer([]))
    (path / "weights.bin").write_bytes(b"x" * 10)
    with pytest.raises(CacheError, match="weights.bin has 10 bytes, expected 100"):
        cache.get_or_build("sft", {"a": 1}, _writer([]))


def _build_in_another_process(root: str, log: str) -> tuple[str, bool, int]:
    def build(tmp):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # long enough for the other processes to arrive while it builds
        (tmp / "weights.bin").write_bytes(b"x" * 1000)

    path, hit = Cache(root).get_or_build("sft", {"a": 1}, build)
    return str(path), hit, (path / "weights.bin").stat().st_size


def test_concurrent_processes_build_an_entry_once(tmp_path):
    """Cells of a job array are separate processes: one builds, the others wait and read the whole entry."""
    log = tmp_path / "builds.log"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.starmap(_build_in_another_process, [(str(tmp_path / "cache"), str(log))] * 4)
    assert len(log.read_text().split()) == 1
    assert len({path for path, _, _ in results}) == 1 and sorted(hit for _, hit, _ in results) == [False, True, True, True]
    assert all(size == 1000 for _, _, size in results)
