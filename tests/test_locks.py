"""Locks on shared file systems: where a lock would not hold across nodes (a mount option), a run stops before any stage
with one line naming the option; where the file system refuses locks, one line, not a traceback. The mounts are fake
/proc/self/mountinfo text, as each file system shows itself there (docs/guarantees.md#file-systems-and-locks)."""
import errno
import fcntl
import os
import signal
import sys
from pathlib import Path

import pytest

from sft_knowledge import cache as cache_mod
from sft_knowledge.cache import Cache, CacheError, FileLock, check_locks

OPT_IN = "or set SFT_KNOWLEDGE_NODE_LOCAL_LOCKS=1 if every run that shares it runs on this node"


@pytest.fixture
def mount(tmp_path, monkeypatch):
    """`mount(fstype, options)`: a fake mountinfo where `<tmp>/mnt` is that file system (and / is ext4); returns the
    mount point, as the code resolves it."""
    point = Path(os.path.realpath(tmp_path)) / "mnt"
    point.mkdir()

    def fake(fstype: str, options: str, source: str = "server:/export") -> Path:
        info = tmp_path / "mountinfo"
        info.write_text("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
                        f"90 27 0:50 / {point} rw,relatime shared:40 - {fstype} {source} {options}\n")
        monkeypatch.setattr(cache_mod, "MOUNTINFO", info)
        return point
    monkeypatch.delenv(cache_mod.NODE_LOCAL_ENV, raising=False)
    return fake


def _beegfs_config(tmp_path: Path, value: str | None) -> Path:
    config = tmp_path / "beegfs-client.conf"
    config.write_text("sysMgmtdHost = mgmt\n" + (f"tuneUseGlobalFileLocks       = {value}   # across clients\n" if value else ""))
    return config


# (fstype, mount options as mountinfo shows them, the refusal after "paths.cache_dir=<dir> is ", or None: locks hold)
MOUNTS = [
    ("lustre", "rw,flock,lazystatfs", None),
    ("lustre", "rw,localflock,lazystatfs",
     "on Lustre mounted with localflock ({point}), whose locks hold on this node only: mount it with -o flock, " + OPT_IN),
    ("lustre", "rw,noflock,user_xattr,lazystatfs",  # Lustre 2.15 shows noflock
     "on Lustre mounted without flock ({point}), where file locks fail: mount it with -o flock"),
    ("lustre", "rw,user_xattr,lazystatfs",  # older clients show neither flock nor localflock: noflock, their default
     "on Lustre mounted without flock ({point}), where file locks fail: mount it with -o flock"),
    ("nfs", "rw,vers=3,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,mountaddr=10.0.0.1,"
            "mountvers=3,mountport=20048,mountproto=udp,local_lock=none,addr=10.0.0.1", None),
    ("nfs", "rw,vers=3,nolock,proto=tcp,sec=sys,local_lock=all,addr=10.0.0.1",  # nolock shows local_lock=all too
     "on NFS mounted with nolock ({point}), whose locks hold on this node only: mount it without nolock, " + OPT_IN),
    ("nfs", "rw,vers=3,proto=tcp,sec=sys,local_lock=all,addr=10.0.0.1",
     "on NFS mounted with local_lock=all ({point}), whose locks hold on this node only: mount it with local_lock=none, " + OPT_IN),
    ("nfs", "rw,vers=3,proto=tcp,sec=sys,local_lock=posix,addr=10.0.0.1",
     "on NFS mounted with local_lock=posix ({point}), whose locks hold on this node only: mount it with local_lock=none, " + OPT_IN),
    ("nfs", "rw,vers=3,proto=tcp,sec=sys,local_lock=flock,addr=10.0.0.1", None),  # only flock is local: POSIX locks reach the server
    ("nfs4", "rw,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,"
             "clientaddr=10.0.0.2,local_lock=none,addr=10.0.0.1", None),
    ("gpfs", "rw", None),  # GPFS's POSIX locks hold across the cluster (its flock does not)
    ("ext4", "rw,errors=remount-ro", None),
    ("xfs", "rw,attr2,inode64,logbufs=8,logbsize=32k,noquota", None),
    ("tmpfs", "rw,size=1024k", None),
]


MOUNT_IDS = ["lustre-flock", "lustre-localflock", "lustre-noflock", "lustre-default", "nfs3", "nfs3-nolock", "nfs3-local_lock=all",
             "nfs3-local_lock=posix", "nfs3-local_lock=flock", "nfs4", "gpfs", "ext4", "xfs", "tmpfs"]


@pytest.mark.parametrize("fstype, options, refusal", MOUNTS, ids=MOUNT_IDS)
def test_each_mount_locks_across_nodes_or_is_one_line_naming_its_option(fstype, options, refusal, mount):
    point = mount(fstype, options)
    cache_dir = str(point / "cache")
    if refusal is None:
        check_locks({"paths.cache_dir": cache_dir})
        return
    with pytest.raises(CacheError) as err:
        check_locks({"paths.cache_dir": cache_dir})
    assert str(err.value) == f"paths.cache_dir={cache_dir} is " + refusal.format(point=point)


@pytest.mark.parametrize("value, refused", [("true", False), ("false", True), (None, True)])
def test_beegfs_is_read_from_the_client_config_its_mount_names(value, refused, mount, tmp_path):
    config = _beegfs_config(tmp_path, value)
    point = mount("beegfs", f"rw,relatime,cfgFile={config}", source="beegfs_nodev")
    if not refused:
        check_locks({"paths.cache_dir": str(point)})
        return
    with pytest.raises(CacheError) as err:
        check_locks({"paths.cache_dir": str(point)})
    assert str(err.value) == (f"paths.cache_dir={point} is on BeeGFS ({point}) without tuneUseGlobalFileLocks = true in "
                              f"{config}, whose locks hold on this node only: set it there and remount, " + OPT_IN)


def test_a_node_local_lock_is_accepted_only_when_asked_and_no_lock_never(mount, monkeypatch):
    point = mount("lustre", "rw,localflock")
    monkeypatch.setenv("SFT_KNOWLEDGE_NODE_LOCAL_LOCKS", "1")
    check_locks({"paths.cache_dir": str(point)})  # single-node use, said so
    mount("lustre", "rw,noflock")
    with pytest.raises(CacheError, match="where file locks fail: mount it with -o flock$"):
        check_locks({"paths.cache_dir": str(point)})  # no lock at all is not a node-local one
    monkeypatch.setenv("SFT_KNOWLEDGE_NODE_LOCAL_LOCKS", "yes")
    with pytest.raises(CacheError, match=r"^\$SFT_KNOWLEDGE_NODE_LOCAL_LOCKS='yes': expected 0 or 1$"):
        check_locks({})


def test_the_mount_is_the_longest_mount_point_above_the_directory(tmp_path, monkeypatch):
    root = Path(os.path.realpath(tmp_path))
    info = tmp_path / "mountinfo"
    info.write_text("27 1 254:0 / / rw - ext4 /dev/vda rw\n"
                    f"90 27 0:50 / {root}/lus rw - lustre mgs@tcp:/fs rw,flock\n"
                    f"91 90 0:51 / {root}/lus/scratch rw - lustre mgs@tcp:/fs2 rw,localflock\n"
                    f"92 27 0:52 / {root}/lus2 rw - lustre mgs@tcp:/fs3 rw,localflock\n"
                    f"93 27 0:53 / {root}/with\\040space rw - lustre mgs@tcp:/fs4 rw,localflock\n"
                    f"94 27 0:54 / {root}/over rw - lustre mgs@tcp:/fs5 rw,localflock\n"
                    f"95 27 0:55 / {root}/over rw - lustre mgs@tcp:/fs6 rw,flock\n")  # mounted over the line before
    monkeypatch.setattr(cache_mod, "MOUNTINFO", info)
    assert cache_mod.lock_trouble(root / "lus" / "scratch" / "cache")[1]  # the inner mount: localflock
    assert cache_mod.lock_trouble(root / "lus" / "cache") is None  # the outer one: flock
    assert cache_mod.lock_trouble(root / "lus2" / "cache")[1]  # /lus is not a prefix of /lus2
    assert cache_mod.lock_trouble(root / "with space" / "cache")[1]  # \040 in mountinfo is a space
    assert cache_mod.lock_trouble(root / "over" / "cache") is None  # the later mount hides the earlier


def test_a_directory_this_process_cannot_write_is_not_checked(mount, monkeypatch):
    point = mount("lustre", "rw,noflock")  # a complete cache on a read-only project space: read without locks
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    check_locks({"paths.cache_dir": str(point / "cache")})


# (fstype, options, errno the lock call fails with, what the line says after "cannot lock <file> (<strerror>): it is ")
FAILING = [
    ("lustre", "rw,lazystatfs", errno.ENOSYS, "on Lustre mounted without flock ({point}), where file locks fail: mount it with -o flock"),
    ("nfs", "rw,vers=3,local_lock=none,addr=10.0.0.1", errno.ENOLCK,
     "on NFS ({point}), whose lock service did not grant it: NFSv3 needs rpc.statd on this node and lockd on the server"),
    ("fuse.somefs", "rw,user_id=0,group_id=0", errno.EOPNOTSUPP,
     "on fuse.somefs ({point}), which does not support file locks: point paths.output_dir and paths.cache_dir at one that does"),
]


@pytest.mark.parametrize("fstype, options, code, why", FAILING, ids=[f for f, *_ in FAILING])
def test_a_lock_the_file_system_refuses_is_one_line_and_nothing_is_built(fstype, options, code, why, mount, monkeypatch):
    point = mount(fstype, options)

    def refuse(fd, how):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(fcntl, "lockf", refuse)
    cache, calls = Cache(point / "cache"), []
    with pytest.raises(CacheError) as err:
        cache.get_or_build("sft", {"a": 1}, calls.append)
    lock = cache.entry("sft", {"a": 1}).parent / f".{cache.entry('sft', {'a': 1}).name}.lock"
    assert str(err.value) == f"cannot lock {lock} ({os.strerror(code)}): it is " + why.format(point=point)
    assert calls == [] and [p.name for p in (point / "cache" / "sft").iterdir()] == [lock.name]  # no entry, no .tmp-*


def test_the_lock_is_a_posix_lock_which_gpfs_holds_across_nodes(tmp_path):
    path = tmp_path / ".lock"
    with FileLock(path):
        inode = f":{path.stat().st_ino} "
        mine = [line.split() for line in Path("/proc/locks").read_text().splitlines() if inode in line]
    assert [(fields[1], fields[3], fields[4]) for fields in mine] == [("POSIX", "WRITE", str(os.getpid()))]


def test_a_lock_this_process_holds_is_not_taken_again(tmp_path):
    path = tmp_path / ".lock"
    with FileLock(path):
        # A POSIX lock would not wait for its own process, and closing a second descriptor would release the first.
        with pytest.raises(RuntimeError, match="is already locked by this process$"):
            FileLock(path)
    with FileLock(path):
        pass


@pytest.mark.slow  # composes the config and imports the pipeline, as the command line does
@pytest.mark.parametrize("fstype, options, code, line", [
    ("lustre", "rw,localflock", None, "paths.runs_dir={out}/runs is on Lustre mounted with localflock ({out}), whose locks "
                                      "hold on this node only: mount it with -o flock, " + OPT_IN),
    ("gpfs", "rw", errno.ENOLCK, "cannot lock {out}/runs/"),
], ids=["node-local", "lock-fails"])
def test_the_command_line_stops_in_one_line_before_any_stage(fstype, options, code, line, mount, monkeypatch, capsys):
    from sft_knowledge import run

    out = mount(fstype, options)
    if code is not None:
        def refuse(fd, how):
            raise OSError(code, os.strerror(code))
        monkeypatch.setattr(fcntl, "lockf", refuse)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # run.main's handlers stay out of pytest
    monkeypatch.setenv("HYDRA_MAIN_MODULE", "__main__")  # Hydra finds conf/ beside run.py's file, as under python -m
    monkeypatch.setattr(sys, "argv", ["run", "experiment=smoke", f"paths.output_dir={out}"])
    monkeypatch.setattr(run, "_failures", [])  # what earlier in-process runs left
    with pytest.raises(SystemExit) as stop:
        run.main()
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and [e for e in err.splitlines() if e.startswith("error:")] == [err.strip().splitlines()[-1]], err
    assert err.strip().splitlines()[-1].startswith("error: " + line.format(out=out)), err
    assert not (out / "cache").exists() and not list(out.glob("runs/*/results.json"))  # no stage ran
    assert code is not None or not (out / "runs").exists()  # refused before the run directory was made
