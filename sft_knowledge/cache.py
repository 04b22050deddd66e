"""Content-addressed artifact cache: `<root>/<kind>/<key>/`, key = hash of what produced it.

An entry is built in a temporary directory and published by one atomic rename; its `DONE.json`
(the producing config, and the size and SHA-256 of every file, hashed right after the build) is
written last. A directory without a valid `DONE.json`, or whose files do not match it, is reported
with one line (`cache entry <dir> is ...; delete it to recompute`), never silently rebuilt over or used.

Reading: a published entry is immutable, so it is read without a lock (a complete cache on a read-only
file system works). Each process verifies an entry the first time it reads it, then trusts it
(memoised per entry), in one of two modes, `Cache(root, verify=...)` or `$SFT_KNOWLEDGE_CACHE_VERIFY`:
- `full` (default): every file's size and SHA-256, before anything parses the files, so a damaged
  safetensors header or `probe.json` is this one line and not a parser's traceback. An entry written
  before hashes were recorded is refused (delete it to recompute, or read it in `size` mode).
- `size`: every file's size, and the SHA-256 of the files up to 64 MiB (JSON, tokenizer, configs); weight
  files over that are checked by size only, for entries too big to hash on every start (a 70B model).
  Entries without hashes are accepted on their sizes.

Building: a file lock (a POSIX lock, which holds across the nodes of NFS, GPFS, Lustre -o flock and BeeGFS with global
locks; see Locks below) makes concurrent builders of one entry, such as the cells of a job array, wait for the first;
where locks would not hold across nodes, a run stops before any stage (check_locks); a builder killed mid-way
(a requeued job) releases it, its successor removes the dead builder's `.tmp-*` directory and can resume
from `work_dir`. A full disk is one line naming the path and the space used. `write_atomic` is the one
writer of result files (results.json, run.json): a temporary file, fsync, rename; nothing left on failure.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any


MARKER = "DONE.json"
VERIFY_ENV = "SFT_KNOWLEDGE_CACHE_VERIFY"
VERIFY_MODES = ("full", "size")
SMALL_FILE = 64 << 20  # hashed even in `size` mode: every JSON, tokenizer and config file is far below it
FULL_DISK = 1 << 20  # under this many free bytes, a failed save is taken for a full disk
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_verified: dict[tuple[str, int, int], str] = {}  # (entry, DONE.json inode, mtime) -> strongest mode verified


class CacheError(RuntimeError):
    """A damaged, unreadable or unwritable cache entry or result file; the message is one line and says what to do."""


class SaveError(CacheError):
    """A file that could not be saved (full disk, read-only directory)."""


def digest(obj: Any, n: int = 12) -> str:
    """Stable short hash of a JSON-able object (dataclasses are turned into dicts): the key of runs and entries."""
    if is_dataclass(obj):
        obj = asdict(obj)
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _hashes(root: Path, names: Iterable[str]) -> dict[str, str]:
    """SHA-256 of each file; hashlib releases the GIL, so the shards of a big model hash in parallel."""
    names = list(names)
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1, len(names)))) as pool:
        return dict(zip(names, pool.map(lambda n: _sha256(root / n), names)))


def _manifest(path: Path) -> dict[str, Any]:
    files = {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file() and p.name != MARKER}
    return {"files": files, "sha256": _hashes(path, files)}


def _size(n: float) -> str:
    if n < 1024:
        return f"{int(n)} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"


def _free_bytes(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def is_no_space(err: BaseException | None, where: Path | None = None) -> bool:
    """ENOSPC anywhere in the chain (safetensors wraps it, keeping the OS's text); or, since torch.save's
    message loses the cause ("unexpected pos"), any failure while `where`'s file system is full."""
    first = err
    while err is not None:
        if isinstance(err, OSError) and err.errno in _NO_SPACE:
            return True
        if any(text in str(err) for text in ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")):
            return True
        err = err.__cause__ or err.__context__
    return first is not None and where is not None and _free_bytes(where) < FULL_DISK


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write `path` whole or not at all: a temporary file beside it, fsync, rename. On any failure the
    temporary file is removed; a full disk or unwritable directory is a one-line SaveError naming the path."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())  # a full disk on NFS or with delayed allocation shows here, before the rename
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if is_no_space(err):
            raise SaveError(f"no space left to write {path}: it needs {_size(len(payload))}, {_size(_free_bytes(path.parent))} free") from None
        if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise SaveError(f"cannot write {path}: {err.strerror}") from None
        raise


def _corrupt(path: Path, what: str) -> CacheError:
    return CacheError(f"cache entry {path} is corrupt: {what}; delete it to recompute")


def check(path: Path, verify: str = "full", hash_files: bool = True) -> None:
    """Raise CacheError unless `path` is a complete entry whose files match its marker (see the module docstring);
    `hash_files=False`: sizes only (an entry whose hashes this process has already verified)."""
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        marker = None
    files = marker.get("files") if isinstance(marker, dict) else None
    hashes = marker.get("sha256") if isinstance(marker, dict) else None
    if not isinstance(files, dict) or not isinstance(hashes, (dict, type(None))):
        raise CacheError(f"cache entry {path} is incomplete or corrupt (no valid {MARKER}); delete it to recompute")
    for name, size in files.items():
        actual = (path / name).stat().st_size if (path / name).is_file() else None
        if actual != size:
            raise _corrupt(path, f"{name} has {actual} bytes, expected {size}")
    if not hash_files:
        return
    if hashes is None:
        if verify == "full":
            raise CacheError(f"cache entry {path} has no content hashes (written before they were recorded); delete it to "
                             f"recompute, or set {VERIFY_ENV}=size to accept it on file sizes")
        return
    names = sorted(n for n in files if verify == "full" or files[n] <= SMALL_FILE)
    try:
        actual = _hashes(path, names)
    except OSError as err:
        raise CacheError(f"cache entry {path}: cannot read {err.filename} ({err.strerror})") from None
    for name in names:
        if actual[name] != hashes.get(name):
            raise _corrupt(path, f"{name} does not match its SHA-256 in {MARKER}")


def _remove_stale(path: Path) -> None:
    """Temporary directories of `path`'s dead builders: the caller holds its lock, so no live builder owns them."""
    stale = sorted(path.parent.glob(f".tmp-{path.name}-*"))
    if stale:
        size = sum(_written(d) for d in stale)
        for d in stale:
            shutil.rmtree(d, ignore_errors=True)
        print(f"cache: removed {len(stale)} temporary director{'y' if len(stale) == 1 else 'ies'} of a killed "
              f"builder of {path} ({_size(size)})", file=sys.stderr)


def _written(path: Path) -> int:
    """Bytes of the files under `path` (0 if it is gone)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def publish_dir(dest: Path, build: Callable[[Path], None], full_disk: Callable[[Path, Exception], str]) -> None:
    """Build a directory with `build(tmp)` in a temporary sibling and publish it as `dest` by one rename, so `dest`
    exists whole or not at all. The caller holds `dest`'s lock, so temporary siblings left by a killed builder are
    stale and removed first. A full disk is a one-line SaveError: `full_disk(tmp, err)` says what was being built."""
    _remove_stale(dest)
    tmp = dest.parent / f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        build(tmp)
        os.replace(tmp, dest)
    except Exception as err:
        if not is_no_space(err, dest.parent):
            raise
        raise SaveError(full_disk(tmp, err)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# Locks. The cache's builders and the per-run lock take a POSIX record lock (fcntl.lockf), not flock: on GPFS (IBM
# Storage Scale) flock holds on one node only while POSIX locks hold across the cluster, and on NFS, Lustre, BeeGFS and
# local disks POSIX locks hold wherever flock does (docs/guarantees.md#file-systems-and-locks: the table and sources).
# POSIX locks belong to the process and any close of the file releases them, so a process must never open a lock file
# it already holds: FileLock refuses that (`_held`), and nothing else opens lock files. Where locks hold on one node
# only (a mount option), or not at all, the run stops before any stage with one line naming the mount option.
MOUNTINFO = Path("/proc/self/mountinfo")
NODE_LOCAL_ENV = "SFT_KNOWLEDGE_NODE_LOCAL_LOCKS"  # =1: accept locks that hold on this node only (single-node use)
BEEGFS_CONFIG = "/etc/beegfs/beegfs-client.conf"  # the client's config when its mount names none (cfgFile=)
_NO_LOCKS = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK)  # the file system refuses locks, or its lock service failed
_held: set[str] = set()  # the lock files this process holds


def _mount(path: str | Path) -> tuple[str, str, list[str]] | None:
    """(mount point, file system type, its options) of the mount holding `path`, from /proc/self/mountinfo: the
    longest mount point above it, the later line on a tie (mounted over the earlier). None where mountinfo is missing."""
    try:
        lines = MOUNTINFO.read_text().splitlines()
    except OSError:
        return None
    path, found = os.path.realpath(path), None
    for line in lines:  # "36 35 98:0 /root /mount/point rw,noatime master:1 - fstype source super,options"
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        fstype, *rest = fields[fields.index("-", 6) + 1:]
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])  # \040 is a space
        if (path == point or path.startswith(point.rstrip("/") + "/")) and (found is None or len(point) >= len(found[0])):
            found = (point, fstype, rest[-1].split(",") if len(rest) > 1 else [])
    return found


def _beegfs_global_locks(options: list[str]) -> tuple[bool, str]:
    """Whether the BeeGFS client config named by the mount (cfgFile=) sets tuneUseGlobalFileLocks, and that file.
    The setting is not a mount option, so the file is read; one that cannot be read counts as the default, false."""
    config, enabled = next((o.split("=", 1)[1] for o in options if o.startswith("cfgFile=")), BEEGFS_CONFIG), False
    try:
        lines = Path(config).read_text().splitlines()
    except OSError:
        return False, config
    for line in lines:  # "tuneUseGlobalFileLocks = true  # a comment"
        key, _, value = line.split("#")[0].partition("=")
        if key.strip() == "tuneUseGlobalFileLocks":
            enabled = value.strip().lower() in ("true", "yes", "1")
    return enabled, config


def lock_trouble(path: str | Path) -> tuple[str, bool] | None:
    """Why a lock on a file in `path` would not hold across nodes, from its mount: (the clause saying which file
    system, how it is mounted and what to change, whether the locks still hold on this node), or None where they hold
    (local disks, NFS with its lock service, Lustre -o flock, GPFS, BeeGFS with global locks, and file systems not
    known here, which are taken at their word)."""
    mount = _mount(path)
    if mount is None:
        return None
    point, fstype, options = mount
    if fstype == "lustre" and "flock" not in options:
        if "localflock" in options:
            return f"on Lustre mounted with localflock ({point}), whose locks hold on this node only: mount it with -o flock", True
        return f"on Lustre mounted without flock ({point}), where file locks fail: mount it with -o flock", False
    if fstype in ("nfs", "nfs4"):
        if "nolock" in options:
            return f"on NFS mounted with nolock ({point}), whose locks hold on this node only: mount it without nolock", True
        local = next((o for o in options if o in ("local_lock=posix", "local_lock=all")), None)
        if local:
            return f"on NFS mounted with {local} ({point}), whose locks hold on this node only: mount it with local_lock=none", True
    if fstype == "beegfs":
        global_locks, config = _beegfs_global_locks(options)
        if not global_locks:
            return (f"on BeeGFS ({point}) without tuneUseGlobalFileLocks = true in {config}, whose locks hold on this node "
                    f"only: set it there and remount"), True
    return None


def check_locks(dirs: dict[str, str]) -> None:
    """Before any stage: raise a one-line CacheError if a lock in one of `dirs` (config key -> directory) would not
    hold across nodes, unless it holds on this node and $SFT_KNOWLEDGE_NODE_LOCAL_LOCKS=1 accepts that. A directory
    this process cannot write is only read, and reading takes no lock (a complete read-only cache)."""
    node_local_ok = os.environ.get(NODE_LOCAL_ENV, "0")
    if node_local_ok not in ("0", "1"):
        raise CacheError(f"${NODE_LOCAL_ENV}={node_local_ok!r}: expected 0 or 1")
    for key, directory in dirs.items():
        existing = Path(directory).absolute()
        while not existing.exists():
            existing = existing.parent
        trouble = lock_trouble(existing)
        if trouble is None or not os.access(existing, os.W_OK) or (trouble[1] and node_local_ok == "1"):
            continue
        clause, node_local = trouble
        raise CacheError(f"{key}={directory} is {clause}" + (f", or set {NODE_LOCAL_ENV}=1 if every run that shares it "
                                                             f"runs on this node" if node_local else ""))


class FileLock:
    """An exclusive POSIX lock on `path` (see Locks above), held inside `with`: it holds across processes and, where
    check_locks passes, across nodes, and the kernel releases it when its process dies, however it dies. Opening the
    file happens at construction, so an unwritable directory fails before anything waits. `waiting`, if given, is
    printed when another process holds the lock. A file system that refuses locks is a one-line CacheError."""

    def __init__(self, path: Path, waiting: str | None = None):
        self.path, self.key, self.waiting = path, os.path.realpath(path), waiting
        if self.key in _held:  # opening it again and closing would release the lock this process holds
            raise RuntimeError(f"{path} is already locked by this process")
        self.file = open(path, "a")

    def _lock(self, how: int) -> None:
        try:
            fcntl.lockf(self.file, how)
        except OSError as err:
            if err.errno not in _NO_LOCKS:
                raise
            self.file.close()
            trouble, mount = lock_trouble(self.path.parent), _mount(self.path.parent)
            if trouble is not None:
                why = trouble[0]
            elif mount is not None and mount[1] in ("nfs", "nfs4"):
                why = f"on NFS ({mount[0]}), whose lock service did not grant it: NFSv3 needs rpc.statd on this node and lockd on the server"
            else:
                where = f"{mount[1]} ({mount[0]})" if mount else "a file system"
                why = f"on {where}, which does not support file locks: point paths.output_dir and paths.cache_dir at one that does"
            raise CacheError(f"cannot lock {self.path} ({err.strerror}): it is {why}") from None

    def __enter__(self) -> FileLock:
        try:
            self._lock(fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EAGAIN):  # another process holds it (which errno is the platform's)
                raise
            if self.waiting:
                print(self.waiting, flush=True)
            self._lock(fcntl.LOCK_EX)
        _held.add(self.key)
        return self

    def __exit__(self, *exc) -> None:
        _held.discard(self.key)
        self.file.close()


class Cache:
    def __init__(self, root: str | Path, verify: str | None = None):
        self.root = Path(root)
        self.verify = verify if verify is not None else os.environ.get(VERIFY_ENV, "full")
        if self.verify not in VERIFY_MODES:
            source = "verify" if verify is not None else f"${VERIFY_ENV}"
            raise CacheError(f"{source}={self.verify!r}: expected one of {', '.join(VERIFY_MODES)}")

    def entry(self, kind: str, spec: Any) -> Path:
        return self.root / kind / digest(spec, 16)

    def has(self, kind: str, spec: Any) -> bool:
        """Whether the entry for `spec` is published (its marker written last), without verifying or building it:
        what `sft_knowledge.plan` reports; a read still verifies it."""
        return (self.entry(kind, spec) / MARKER).is_file()

    def specs(self, kind: str) -> list[Any]:
        """The specs of every published entry of `kind`, as their markers record them (sft_knowledge.plan)."""
        out = []
        for marker in sorted((self.root / kind).glob(f"*/{MARKER}")):
            try:
                out.append(json.loads(marker.read_text())["spec"])
            except (OSError, ValueError, KeyError):
                continue  # a damaged marker: a read says so; here it is only not found
        return out

    def work_dir(self, kind: str, spec: Any) -> Path:
        """Scratch space that outlives a killed builder (SFT checkpoints); removed once the entry is published."""
        return self.root / kind / f".work-{digest(spec, 16)}"

    def _memo_key(self, path: Path) -> tuple[str, int, int]:
        st = (path / MARKER).stat()  # a rebuilt entry has a new marker, so it is verified again
        return str(path.resolve()), st.st_ino, st.st_mtime_ns

    def _read(self, path: Path) -> None:
        """Verify a published entry: sizes on every read (a stat per file), hashes once per process and entry
        ("full" also covers "size")."""
        try:
            key = self._memo_key(path)
        except OSError:
            key = None  # no marker: check() says so
        check(path, self.verify, hash_files=key is None or _verified.get(key) not in ("full", self.verify))
        if key is not None and _verified.get(key) != "full":
            _verified[key] = self.verify

    def get_or_build(self, kind: str, spec: Any, build: Callable[[Path], None]) -> tuple[Path, bool]:
        """Path of the entry for `spec`, building it with `build(tmp_dir)` if missing. Returns (path, hit)."""
        path = self.entry(kind, spec)
        if path.exists():  # published by one rename, immutable since: read without the lock
            self._read(path)
            return path, True
        lock_path = path.parent / f".{path.name}.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(lock_path)  # one builder per entry; the others wait, then hit
        except OSError as err:
            raise SaveError(f"cache entry {path} is missing and cannot be built: {path.parent} is not writable "
                            f"({err.strerror}); point paths.cache_dir at a writable directory") from None
        with lock:
            if path.exists():
                self._read(path)
                return path, True

            def build_entry(tmp: Path) -> None:
                build(tmp)
                marker = {"kind": kind, "spec": spec if not hasattr(spec, "__dataclass_fields__") else repr(spec), **_manifest(tmp)}
                (tmp / MARKER).write_text(json.dumps(marker, indent=1, default=str))

            def full_disk(tmp: Path, err: Exception) -> str:
                cause = f"{type(err).__name__}: {err}".splitlines()[0][:200]
                return (f"no space left to build cache entry {path}: it needs more than the {_size(_written(tmp))} written "
                        f"when the disk filled, {_size(_free_bytes(path.parent))} free; free space or point "
                        f"paths.cache_dir elsewhere, then re-run ({cause})")

            publish_dir(path, build_entry, full_disk)
            _verified[self._memo_key(path)] = "full"  # hashed just now, from the files as written
            shutil.rmtree(self.work_dir(kind, spec), ignore_errors=True)
        return path, False
