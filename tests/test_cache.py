"""The artifact cache: built once, published atomically, damage reported and never overwritten."""
import errno
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from sft_knowledge import cache as cache_mod
from sft_knowledge.cache import MARKER, Cache, CacheError, SaveError, write_atomic

ROOT = Path(__file__).resolve().parent.parent  # the subprocesses import this checkout's sft_knowledge


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


# --- integrity: content hashes in DONE.json, verified on first read ----------------------------------------------

def _new_process():
    """Verification is memoised per process; forgetting it is what the next run (a new process) does."""
    cache_mod._verified.clear()


def _safetensors_entry(cache, spec=None):
    """An entry like an SFT one: a real safetensors file (256 KiB of weights) and a probe.json."""
    def build(tmp):
        save_file({"w": torch.arange(65536, dtype=torch.float32)}, tmp / "model.safetensors")
        (tmp / "probe.json").write_text(json.dumps({"levels": [0, 4, 2], "n_map": 10}))
    path, _ = cache.get_or_build("sft", spec or {"a": 1}, build)
    return path


def _overwrite(file, offset, data):
    with open(file, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_done_json_records_each_files_sha256(tmp_path):
    path, _ = Cache(tmp_path).get_or_build("sft", {"a": 1}, _writer([]))
    marker = json.loads((path / MARKER).read_text())
    assert marker["sha256"] == {"weights.bin": hashlib.sha256(b"x" * 100).hexdigest(),
                                "sub/meta.json": hashlib.sha256(b"{}").hexdigest()}


def test_zeroed_block_of_the_same_size_is_reported(tmp_path):
    """Issue 18: zeroing 64 KiB inside model.safetensors kept its size and changed the run's accuracy and KL."""
    cache = Cache(tmp_path)
    path = _safetensors_entry(cache)
    size = (path / "model.safetensors").stat().st_size
    _overwrite(path / "model.safetensors", size - 65536 - 1000, bytes(65536))
    assert (path / "model.safetensors").stat().st_size == size
    _new_process()
    with pytest.raises(CacheError) as err:
        cache.get_or_build("sft", {"a": 1}, _writer([]))
    assert str(err.value) == f"cache entry {path} is corrupt: model.safetensors does not match its SHA-256 in {MARKER}; delete it to recompute"


@pytest.mark.parametrize("mode", ["full", "size"])
def test_damaged_safetensors_header_or_probe_json_is_one_line_not_a_parser_error(tmp_path, mode):
    cache = Cache(tmp_path, verify=mode)
    path = _safetensors_entry(cache)
    _overwrite(path / "model.safetensors", 8, b"\x00garbage")  # inside the JSON header that follows the 8-byte length
    with pytest.raises(SafetensorError):  # what loading the weights would raise
        safe_open(path / "model.safetensors", "pt")
    _new_process()
    with pytest.raises(CacheError, match=r"is corrupt: model.safetensors does not match its SHA-256.*delete it to recompute$"):
        cache.get_or_build("sft", {"a": 1}, _writer([]))

    other = _safetensors_entry(cache, {"a": 2})
    text = (other / "probe.json").read_text()
    (other / "probe.json").write_text("[" + text[1:])  # same size, no longer JSON
    with pytest.raises(json.JSONDecodeError):
        json.loads((other / "probe.json").read_text())
    _new_process()
    with pytest.raises(CacheError, match=r"is corrupt: probe.json does not match its SHA-256"):
        cache.get_or_build("sft", {"a": 2}, _writer([]))


def test_the_recipe_reads_a_damaged_probe_through_the_check(tmp_path):
    # the code path that parsed probe.json into a JSONDecodeError
    from sft_knowledge.config import Config
    from sft_knowledge.recipe import BaseModel, Data, mastery_levels, probe_spec
    cfg, data, base = Config(), Data(None, None, None), BaseModel("base", {"base": 1}, None, None, True)
    cache = Cache(tmp_path)
    path, _ = cache.get_or_build("probe", probe_spec(cfg, data, base), lambda tmp: (tmp / "probe.json").write_text('{"levels": [1, 2]}'))
    (path / "probe.json").write_text('{"levels": [1, 2}}')
    _new_process()
    with pytest.raises(CacheError, match=f"cache entry {path} is corrupt: probe.json"):
        mastery_levels(cfg, cache, data, base)  # a hit: the probe itself (no model) never runs


def test_size_mode_hashes_small_files_and_checks_big_ones_by_size(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "SMALL_FILE", 4096)  # stands for 64 MiB: the weights are over it, probe.json under
    monkeypatch.setenv(cache_mod.VERIFY_ENV, "size")
    cache = Cache(tmp_path)
    assert cache.verify == "size"
    path = _safetensors_entry(cache)
    size = (path / "model.safetensors").stat().st_size
    _overwrite(path / "model.safetensors", size - 4096, bytes(4096))  # damage in the weights' data: size mode's blind spot
    _new_process()
    assert cache.get_or_build("sft", {"a": 1}, _writer([])) == (path, True)
    _new_process()
    with pytest.raises(CacheError, match="model.safetensors does not match"):  # full mode, the default, sees it
        Cache(tmp_path, verify="full").get_or_build("sft", {"a": 1}, _writer([]))
    (path / "probe.json").write_text("[" + (path / "probe.json").read_text()[1:])
    _new_process()
    with pytest.raises(CacheError, match="probe.json does not match"):
        cache.get_or_build("sft", {"a": 1}, _writer([]))


def test_an_unknown_verify_mode_is_one_line(monkeypatch):
    monkeypatch.setenv(cache_mod.VERIFY_ENV, "sometimes")
    with pytest.raises(CacheError, match=r"^\$SFT_KNOWLEDGE_CACHE_VERIFY='sometimes': expected one of full, size$"):
        Cache("anywhere")
    with pytest.raises(CacheError, match=r"^verify='fast': expected one of full, size$"):
        Cache("anywhere", verify="fast")


def test_entries_written_before_hashes_are_refused_in_full_mode_and_accepted_on_sizes(tmp_path):
    cache = Cache(tmp_path)
    path, _ = cache.get_or_build("sft", {"a": 1}, _writer([]))
    marker = json.loads((path / MARKER).read_text())
    del marker["sha256"]  # DONE.json as written before this change: sizes only
    (path / MARKER).write_text(json.dumps(marker))
    _new_process()
    with pytest.raises(CacheError) as err:
        cache.get_or_build("sft", {"a": 1}, _writer([]))
    assert str(err.value) == (f"cache entry {path} has no content hashes (written before they were recorded); delete it "
                              f"to recompute, or set SFT_KNOWLEDGE_CACHE_VERIFY=size to accept it on file sizes")
    assert Cache(tmp_path, verify="size").get_or_build("sft", {"a": 1}, _writer([])) == (path, True)
    (path / "weights.bin").write_bytes(b"x")
    _new_process()
    with pytest.raises(CacheError, match="weights.bin has 1 bytes, expected 100"):  # sizes still checked
        Cache(tmp_path, verify="size").get_or_build("sft", {"a": 1}, _writer([]))


def test_an_entry_is_hashed_once_per_process(tmp_path, monkeypatch):
    hashed = []
    real = cache_mod._sha256
    monkeypatch.setattr(cache_mod, "_sha256", lambda p: hashed.append(p.name) or real(p))
    cache = Cache(tmp_path)
    path, _ = cache.get_or_build("sft", {"a": 1}, _writer([]))
    assert sorted(hashed) == ["meta.json", "weights.bin"]  # while publishing
    for _ in range(3):
        assert cache.get_or_build("sft", {"a": 1}, _writer([])) == (path, True)
    assert len(hashed) == 2  # the builder's own hashes stand for its reads
    _new_process()
    for _ in range(3):
        Cache(tmp_path).get_or_build("sft", {"a": 1}, _writer([]))
    assert len(hashed) == 4  # one verification in the "new process", then none
    new = path / "new-marker"  # rebuilt by another process: a new DONE.json file, so the entry is verified anew
    new.write_text((path / MARKER).read_text())
    os.replace(new, path / MARKER)
    Cache(tmp_path).get_or_build("sft", {"a": 1}, _writer([]))
    assert len(hashed) == 6


# --- crash leftovers -----------------------------------------------------------------------------------------------

_KILLED_BUILDER = """
import sys, time
from pathlib import Path
from sft_knowledge.cache import Cache
def build(tmp):
    (tmp / "weights.bin").write_bytes(b"x" * 4096)  # a partial SFT entry
    Path(sys.argv[2]).write_text(str(tmp))
    time.sleep(120)
Cache(sys.argv[1]).get_or_build("sft", {"a": 1}, build)
"""


@pytest.mark.slow  # a subprocess or spawned processes
def test_a_builder_removes_the_temporary_directory_of_a_killed_one(tmp_path, capfd):
    root, ready = tmp_path / "cache", tmp_path / "ready"
    other = root / "sft" / ".tmp-0123456789abcdef-deadbeef"  # another entry's leftover: not this builder's to judge
    other.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_BUILDER, str(root), str(ready)], cwd=ROOT)
    deadline = time.time() + 300  # the child imports torch (via config): slow on loaded cores
    while not ready.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ready.exists(), "the builder did not start"
    leftover = Path(ready.read_text())
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    assert (leftover / "weights.bin").stat().st_size == 4096  # what a kill leaves behind
    calls = []
    path, hit = Cache(root).get_or_build("sft", {"a": 1}, _writer(calls))
    assert not hit and len(calls) == 1 and calls[0] != leftover and (path / "weights.bin").stat().st_size == 100
    assert not leftover.exists() and other.exists()
    assert sorted(p.name for p in (root / "sft").glob(".tmp-*")) == [other.name]
    assert f"cache: removed 1 temporary directory of a killed builder of {path} (4.0 KiB)" in capfd.readouterr().err


# --- a complete read-only cache --------------------------------------------------------------------------------------

_READER = """
import json, sys
from sft_knowledge.cache import Cache, CacheError
def build(tmp):
    raise SystemExit("build called")
out = []
for a in (1, 2):
    try:
        path, hit = Cache(sys.argv[1]).get_or_build("sft", {"a": a}, build)
        out.append([str(path), hit, (path / "weights.bin").stat().st_size])
    except CacheError as err:
        out.append(str(err))
print(json.dumps(out))
"""


def _as_another_user(root: Path) -> list[str]:
    """chmod -R a-w, read by a user it binds: nobody when the tests run as root (root ignores file modes).

    Nobody may not be able to enter the checkout (a clone in a 0700 directory, as `mktemp -d` makes) or its
    .venv, so it runs cache.py copied beside the cache, on a Python it can execute: cache.py needs only the
    standard library."""
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    if os.geteuid() != 0:
        return [sys.executable]
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot read as another user")
    lib = root.parent / "lib" / "sft_knowledge"
    lib.mkdir(parents=True)
    for name in ("__init__.py", "cache.py"):
        shutil.copy(ROOT / "sft_knowledge" / name, lib / name)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env", "-i", f"PATH={os.defpath}",
              f"PYTHONPATH={lib.parent}", "PYTHONDONTWRITEBYTECODE=1"]
    tried = []
    for python in dict.fromkeys([os.path.realpath(sys._base_executable), "/usr/bin/python3", shutil.which("python3")]):
        if python is None:
            continue
        proc = subprocess.run([*nobody, python, "-c", "import sft_knowledge.cache"], capture_output=True, text=True,
                              cwd=root.parent, timeout=60)
        if proc.returncode == 0:
            return [*nobody, python]
        tried.append(f"{python}: {(proc.stderr.strip().splitlines() or ['exit ' + str(proc.returncode)])[-1]}")
    pytest.skip(f"no Python that uid 65534 can run with {lib.parent} on its path ({'; '.join(tried)})")


def _read_only_mount(root: Path) -> list[str]:
    """A read-only bind mount in a private mount namespace: EROFS, which binds root too."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a private read-only mount needs root and unshare")
    wrap = ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(root)]
    if subprocess.run([*wrap, "true"], capture_output=True).returncode != 0:
        pytest.skip("mount namespaces are not available here")
    return [*wrap, sys.executable]


@pytest.mark.slow  # a subprocess or spawned processes
@pytest.mark.parametrize("read_only, reason", [(_as_another_user, "Permission denied"), (_read_only_mount, "Read-only file system")])
def test_a_complete_read_only_cache_is_usable(read_only, reason):
    with tempfile.TemporaryDirectory() as scratch:  # under /tmp, which the other user can reach (pytest's tmp_path is 0700)
        Path(scratch).chmod(0o755)
        root = Path(scratch) / "cache"
        path, _ = Cache(root).get_or_build("sft", {"a": 1}, _writer([]))
        prefix = read_only(root)
        proc = subprocess.run([*prefix, "-c", _READER, str(root)], capture_output=True, text=True, cwd=scratch,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}, timeout=300)
        assert proc.returncode == 0, proc.stderr
        found, missing = json.loads(proc.stdout)
        assert found == [str(path), True, 100]  # a hit: no lock file opened, nothing written
        wanted = Cache(root).entry("sft", {"a": 2})
        assert missing == (f"cache entry {wanted} is missing and cannot be built: {wanted.parent} is not writable "
                           f"({reason}); point paths.cache_dir at a writable directory")
        for p in [root, *root.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)


# --- a full disk -----------------------------------------------------------------------------------------------------

_FILLER = """
import json, os, sys, torch
from pathlib import Path
from safetensors.torch import save_file
from sft_knowledge.cache import Cache, CacheError, write_atomic
root, out = Path(sys.argv[1]), []
big = {"w": torch.zeros(3 << 20)}  # 12 MiB of weights on an 8 MiB file system
for name, build in [("safetensors", lambda tmp: save_file(big, tmp / "model.safetensors")),
                    ("torch.save", lambda tmp: torch.save(big, tmp / "model.pt")),
                    ("other error", lambda tmp: 1 / 0)]:
    try:
        Cache(root / "cache").get_or_build("sft", {"build": name}, build)
        out.append("built")
    except (CacheError, ZeroDivisionError) as err:
        out.append(f"{type(err).__name__}: {err}")
out.append(sorted(p.name for p in (root / "cache" / "sft").iterdir()))
(root / "runs").mkdir()
with open(root / "filler", "wb") as f:  # leave about 100 KiB
    f.write(bytes(os.statvfs(root).f_bavail * os.statvfs(root).f_frsize - (100 << 10)))
try:
    write_atomic(root / "runs" / "results.json", json.dumps({"acc_test": [0.5] * (1 << 18)}))
except CacheError as err:
    out.append(f"{type(err).__name__}: {err}")
out.append(sorted(p.name for p in (root / "runs").iterdir()))
print(json.dumps(out))
"""


@pytest.mark.slow  # a subprocess or spawned processes
def test_a_full_disk_is_one_line_naming_the_path_and_leaves_no_temporary_file(tmp_path):
    """A real ENOSPC: an 8 MiB tmpfs in a private mount namespace."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a private tmpfs needs root and unshare")
    disk = tmp_path / "disk"
    disk.mkdir()
    wrap = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=8m tmpfs "$0" && exec "$@"', str(disk)]
    if subprocess.run([*wrap, "true"], capture_output=True).returncode != 0:
        pytest.skip("mount namespaces are not available here")
    proc = subprocess.run([*wrap, sys.executable, "-c", _FILLER, str(disk)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    safetensors_, torch_save, other, cache_listing, results, runs_listing = json.loads(proc.stdout)
    for message, name in [(safetensors_, "safetensors"), (torch_save, "torch.save")]:
        entry = Cache(disk / "cache").entry("sft", {"build": name})
        assert message.startswith(f"SaveError: no space left to build cache entry {entry}: it needs more than the ")
        assert "free; free space or point paths.cache_dir elsewhere, then re-run (" in message and "\n" not in message
    assert other == "ZeroDivisionError: division by zero"  # not every failure is taken for a full disk
    assert all(name.endswith(".lock") for name in cache_listing)  # no .tmp-* left
    assert results.startswith(f"SaveError: no space left to write {disk / 'runs' / 'results.json'}: it needs 1.3 MiB, ")  # 1,310,734 bytes of JSON
    assert results.endswith(" KiB free") and runs_listing == []  # no results.tmp<pid>


def test_write_atomic_removes_its_temporary_file_on_any_failure(tmp_path):
    (tmp_path / "results.json").mkdir()  # os.replace onto a directory fails after the temporary file is written
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path / "results.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    write_atomic(tmp_path / "run.json", '{"status": "done"}')
    assert json.loads((tmp_path / "run.json").read_text()) == {"status": "done"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "run.json"]


def test_a_build_failing_with_enospc_is_one_line(tmp_path):
    def build(tmp):
        (tmp / "model.safetensors").write_bytes(bytes(5000))
        raise OSError(errno.ENOSPC, "No space left on device")  # what save_pretrained raises on a full disk

    cache = Cache(tmp_path)
    with pytest.raises(SaveError) as err:
        cache.get_or_build("sft", {"a": 1}, build)
    entry = cache.entry("sft", {"a": 1})
    assert str(err.value).startswith(f"no space left to build cache entry {entry}: it needs more than the 4.9 KiB written")
    assert [p.name for p in (tmp_path / "sft").iterdir() if not p.name.endswith(".lock")] == []


# --- the reproduction, through the CLI ------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("damage", ["zero 64 KiB of weights", "safetensors header", "probe.json"])
def test_a_run_on_a_damaged_cache_stops_in_one_line(cli, smoke_cache, tmp_path, damage):
    """Issue 18: zeroing 64 KiB inside the SFT weights gave exit 0 with other accuracy and KL; a damaged header or
    probe.json gave a SafetensorError / JSONDecodeError traceback."""

    cache = tmp_path / "cache"
    shutil.copytree(smoke_cache, cache)
    kind, name = ("probe", "probe.json") if damage == "probe.json" else ("sft", "model.safetensors")
    damaged = sorted(cache.glob(f"{kind}/*/{name}"))  # other tests may have added entries: damage all
    assert damaged
    for f in damaged:
        size = f.stat().st_size
        offset, data = {"zero 64 KiB of weights": (size // 2, bytes(65536)), "safetensors header": (8, b"\x00garbage"),
                        "probe.json": (0, b"[")}[damage]
        _overwrite(f, offset, data)
        assert f.stat().st_size == size
    proc = cli(output_dir=tmp_path, cache_dir=cache, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.splitlines()[-1].startswith(f"error: cache entry {cache / kind}/")
    assert proc.stderr.splitlines()[-1].endswith(f"is corrupt: {name} does not match its SHA-256 in {MARKER}; delete it to recompute")
    assert not list(tmp_path.rglob("results.json"))
