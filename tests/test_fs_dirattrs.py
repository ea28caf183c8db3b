"""Directories' owners, modes and times on a server that keeps no metadata on markers.

SeaweedFS drops the user metadata of keys ending in '/', so a directory's attributes go
to its folder object ``dir_$folder$`` (engine/objattrs.py), which s3fs-fuse also takes
for the directory ``dir``. These tests run real tools on real mounts of that server and
look at the bucket through the store.
"""
from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from s3pipefs.config import S3Config
from s3pipefs.engine import Engine
from s3pipefs.fs.filesystem import Filesystem
from s3pipefs.fs.options import FsConfig
from s3pipefs.s3 import Store
from tests.fs_fixtures import is_mounted, require_fuse, tool, wait_for

pytestmark = pytest.mark.fuse

FOLDER = "_$folder$"
T0 = 1_500_000_000


def sh(*argv: str) -> str:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr}")
    return r.stdout


def make_dirs(root: Path) -> dict[str, tuple[int, int]]:
    """Directories of modes 0700, 0755 and 2775 (with a file each) and set mtimes;
    {relative path: (mode, mtime)}."""
    want = {"private": (0o700, T0 + 1), "shared": (0o2775, T0 + 2), "shared/inner": (0o755, T0 + 3),
            "empty": (0o750, T0 + 4)}
    for rel in want:
        (root / rel).mkdir(parents=True, exist_ok=True)
    for rel in ("private", "shared", "shared/inner"):
        (root / rel / "f").write_bytes(rel.encode())
        os.utime(root / rel / "f", (T0, T0))
    for rel, (mode, mtime) in sorted(want.items(), key=lambda kv: -len(kv[0])):
        os.chmod(root / rel, mode)
        os.utime(root / rel, (mtime, mtime))
    os.utime(root, (T0, T0))
    return want


def dir_stats(root: Path, rels) -> dict[str, tuple[int, int]]:
    return {rel: (stat.S_IMODE(os.stat(root / rel).st_mode), int(os.stat(root / rel).st_mtime)) for rel in rels}


def keys(store: Store, bucket: str, prefix: str = "") -> list[str]:
    return sorted(o.key for o in store.list(bucket, prefix) if not isinstance(o, str))


def stored(store: Store, bucket: str, key: str) -> dict:
    """The metadata of the folder object ``key`` once it is put: a directory's attributes
    go out a moment after they are set (merged, fs/namespace.py folder_attrs)."""
    assert wait_for(lambda: store.head(bucket, key) is not None, timeout=5), key
    return store.head(bucket, key).metadata


def wait_stored(store: Store, bucket: str, prefix: str, want: dict[str, tuple[int, int]]) -> None:
    """Until every directory of ``want`` under ``prefix`` has its mode and mtime in its
    folder object (put a moment after they are set)."""
    for rel, (mode, mtime) in want.items():
        key = prefix + rel + FOLDER
        assert wait_for(lambda: (store.head(bucket, key) or _NONE).metadata.get("mtime") == str(mtime), timeout=20), key


class _NONE:
    metadata: dict = {}


def settle() -> None:
    """Longer than the mount holds a directory's attributes before it puts them."""
    time.sleep(1.0)


def test_rsync_a_keeps_directory_modes_and_times_and_a_second_run_lists_nothing(mounter, store, bucket, tmp_path):
    tool("rsync")
    src = tmp_path / "src"
    want = make_dirs(src)
    m = mounter(bucket, umask="0")  # (the default 022 would show 2775 as 2755)
    sh("rsync", "-a", f"{src}/", f"{m / 't'}/")
    assert dir_stats(m / "t", want) == want
    # The server dropped the markers' metadata: each directory's attributes are in its
    # folder object, s3fs-fuse's keys with the directory type in the mode.
    meta = stored(store, bucket, "t/shared" + FOLDER)
    assert meta["mode"] == str(stat.S_IFDIR | 0o2775) and meta["mtime"] == str(T0 + 2)
    assert store.head(bucket, "t/shared/").metadata == {}
    # No folder object is ever shown as a name.
    assert sorted(os.listdir(m / "t")) == ["empty", "private", "shared"]
    assert not (m / "t" / ("shared" + FOLDER)).exists()
    # A second run, from this mount and from a fresh one: nothing itemized at all.
    wait_stored(store, bucket, "t/", want)
    for mnt in (m, mounter(bucket, umask="0")):
        out = sh("rsync", "-a", "--itemize-changes", f"{src}/", f"{mnt / 't'}/")
        assert out.splitlines() == [], out
        assert dir_stats(mnt / "t", want) == want


def test_cp_a_keeps_directory_times_and_modes_seen_by_a_second_mount(mounter, store, bucket, tmp_path):
    src = tmp_path / "src"
    want = make_dirs(src)
    m = mounter(bucket, umask="0")
    sh("cp", "-a", str(src), str(m / "c"))
    expect = {rel: sh("stat", "-c", "%Y %a", str(src / rel)) for rel in want}
    wait_stored(store, bucket, "c/", want)
    for mnt in (m, mounter(bucket, umask="0")):
        assert {rel: sh("stat", "-c", "%Y %a", str(mnt / "c" / rel)) for rel in want} == expect
    assert sh("stat", "-c", "%Y %a", str(m / "c")) == sh("stat", "-c", "%Y %a", str(src))


def test_chmod_chown_and_touch_of_a_directory_cost_one_put_together(mounter, fault_proxy, store, bucket):
    assert os.geteuid() == 0, "chown to other users needs root"
    m = mounter(bucket, endpoint=fault_proxy.endpoint, metadata_ttl="120")
    os.mkdir(m / "first")
    os.chmod(m / "first", 0o700)  # finds out that markers keep nothing, and says so
    assert "keeps no metadata on directory markers" in m.log_text()
    os.mkdir(m / "d")  # the default mode: nothing to keep
    assert store.head(bucket, "d" + FOLDER) is None
    stored(store, bucket, "first" + FOLDER)
    fault_proxy.reset_log()
    t0 = time.monotonic()
    os.chmod(m / "d", 0o711)
    os.chown(m / "d", 12, 34)
    os.utime(m / "d", (T0, T0))
    burst = time.monotonic() - t0
    st = os.stat(m / "d")  # shown at once
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)) == (0o711, 12, 34, T0)
    assert wait_for(lambda: stored(store, bucket, "d" + FOLDER).get("mtime") == str(T0), timeout=20)
    settle()
    sent = [(r.method, r.path) for r in fault_proxy.requests]
    assert [r for r in sent if r[0] != "PUT"] == [] and 1 <= len(sent) <= 3, sent
    if burst < 0.4:  # all three within the half second the mount holds them: one PUT
        assert len(sent) == 1, (burst, sent)
    fault_proxy.reset_log()
    os.mkdir(m / "m", 0o750)  # (mkdir(2) itself drops a setgid bit)
    stored(store, bucket, "m" + FOLDER)
    assert [r.method for r in fault_proxy.requests].count("PUT") == 2  # the marker, the folder object
    for mnt in (m, mounter(bucket)):
        st = os.stat(mnt / "d")
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)) == (0o711, 12, 34, T0)
        assert stat.S_IMODE(os.stat(mnt / "m").st_mode) == 0o750
    assert store.head(bucket, "d" + FOLDER).metadata == {"mode": str(stat.S_IFDIR | 0o711), "uid": "12",
                                                          "gid": "34", "mtime": str(T0)}


def test_rmdir_mv_and_rm_rf_leave_no_folder_objects_behind(mounter, store, bucket):
    m = mounter(bucket)
    os.makedirs(m / "a" / "sub")
    (m / "a" / "sub" / "f").write_bytes(b"f")
    os.mkdir(m / "gone")
    for rel, mode in (("a", 0o701), ("a/sub", 0o710), ("gone", 0o700)):
        os.chmod(m / rel, mode)
        os.utime(m / rel, (T0, T0))
    assert wait_for(lambda: keys(store, bucket) == ["a/", "a/sub/", "a/sub/f", "a/sub" + FOLDER, "a" + FOLDER,
                                                    "gone/", "gone" + FOLDER], timeout=20), keys(store, bucket)
    os.rmdir(m / "gone")
    assert not (m / "gone").exists()
    subprocess.run(["mv", str(m / "a"), str(m / "b")], check=True)
    # (an emptied directory's DELETEs go out just after rmdir returns, as an unlinked file's)
    assert wait_for(lambda: keys(store, bucket) == ["b/", "b/sub/", "b/sub/f", "b/sub" + FOLDER, "b" + FOLDER], 5), \
        keys(store, bucket)
    other = mounter(bucket)
    for rel, mode in (("b", 0o701), ("b/sub", 0o710)):  # both moved with it
        assert (stat.S_IMODE(os.stat(other / rel).st_mode), int(os.stat(other / rel).st_mtime)) == (mode, T0)
    # An empty directory renamed over another one takes its own attributes along.
    os.mkdir(m / "x")
    os.mkdir(m / "y")
    os.chmod(m / "y", 0o700)
    os.rename(m / "x", m / "y")  # (y's attributes, held back, are put first, then go)
    assert stat.S_IMODE(os.stat(m / "y").st_mode) == 0o755
    assert store.head(bucket, "y" + FOLDER) is None and store.head(bucket, "x" + FOLDER) is None
    subprocess.run(["rm", "-rf", str(m / "b"), str(m / "y")], check=True)
    assert wait_for(lambda: keys(store, bucket) == [], 5), keys(store, bucket)


def test_folder_objects_of_other_tools_are_directories_never_files(mounter, store, bucket):
    """s3fs-fuse's old-style directories: ``x_$folder$`` beside ``x/``, or alone (empty)."""
    dir_meta = {"mode": str(stat.S_IFDIR | 0o750), "uid": "7", "gid": "8", "mtime": str(T0)}
    store.put(bucket, "full" + FOLDER, b"", metadata=dir_meta)
    store.put(bucket, "full/x", b"x")
    store.put(bucket, "alone" + FOLDER, b"", metadata=dir_meta)
    m = mounter(bucket, metadata_ttl="0.5")
    assert sorted(os.listdir(m.path)) == ["alone", "full"]
    for looked_up in (False, True):  # from the listing, then past the TTL by lookup
        if looked_up:
            time.sleep(0.6)
        for name in ("full", "alone"):
            st = os.stat(m / name)
            assert stat.S_ISDIR(st.st_mode)
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)) == (0o750, 7, 8, T0)
        assert not os.path.exists(m / ("full" + FOLDER))
    assert os.listdir(m / "alone") == [] and os.listdir(m / "full") == ["x"]
    # Such names are the directories': refused for files and directories of the mount.
    for make in (lambda p: p.write_bytes(b"no"), os.mkdir):
        with pytest.raises(PermissionError):
            make(m / ("new" + FOLDER))
    os.rmdir(m / "alone")
    assert wait_for(lambda: keys(store, bucket) == ["full/x", "full" + FOLDER], 5), keys(store, bucket)


def test_a_listing_costs_one_head_per_directory_as_with_markers(s3_server, store, bucket):
    """The folder object is HEADed instead of the marker, not as well, and spares the
    probe of its prefix."""
    from tests.test_fs_links import Counted

    for i in range(20):
        store.put(bucket, f"p/d{i}/f", b"f")
        if i % 2:
            store.put(bucket, f"p/d{i}" + FOLDER, b"", metadata={"mode": str(stat.S_IFDIR | 0o700)})
    counted = Counted(Store(S3Config(endpoint_url=s3_server.endpoint)))
    fs = Filesystem(Engine(counted), bucket, "", FsConfig(metadata_ttl=60))
    fs.getattr("/p")  # not a listing of / (then /p's would be a walk, which lists ahead)
    counted.calls.clear()
    listed = dict(fs.readdir("/p"))
    assert sorted(listed) == [".", "..", *sorted(f"d{i}" for i in range(20))]
    assert counted.calls.get("head", 0) == 20, counted.calls
    # A prefix listed beside its folder object is a directory without a probe: the stream
    # test (its manifest) and the emptiness test (one key under it) only for the others.
    assert counted.calls.get("get", 0) == 10 and counted.calls.get("any_key", 0) == 10, counted.calls
    modes = {i: stat.S_IMODE(fs.getattr(f"/p/d{i}")["st_mode"]) for i in range(20)}
    assert modes == {i: 0o700 if i % 2 else 0o755 for i in range(20)}


def test_s3fs_shows_the_folder_object_as_the_directory_it_stands_for(s3_server, store, bucket, tmp_path):
    """What the format relies on, checked with s3fs-fuse itself: it lists ``d_$folder$``
    as the directory ``d`` (never as a file), and reads its attributes where the server
    answers no HEAD of ``d/`` (SeaweedFS answers it for every folder it holds)."""
    require_fuse()
    tool("s3fs")
    dir_meta = {"mode": str(stat.S_IFDIR | 0o2750), "uid": "1234", "gid": "2345", "mtime": str(T0)}
    store.put(bucket, "d" + FOLDER, b"", metadata=dir_meta)
    store.put(bucket, "d/x", b"x")
    store.put(bucket, "e" + FOLDER, b"", metadata=dir_meta)
    passwd = tmp_path / "passwd"
    fd = os.open(passwd, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"{s3_server.access_key}:{s3_server.secret_key}\n".encode())
    os.close(fd)
    mnt = tmp_path / "s3fs"
    mnt.mkdir()
    p = subprocess.Popen(["s3fs", bucket, str(mnt), "-f", "-o",
                          f"passwd_file={passwd},url={s3_server.endpoint},use_path_request_style"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: is_mounted(mnt), 20), "s3fs did not mount"
        assert sorted(os.listdir(mnt)) == ["d", "e"]
        assert stat.S_ISDIR(os.stat(mnt / "d").st_mode) and os.listdir(mnt / "d") == ["x"]
        st = os.stat(mnt / "e")
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)) == (0o2750, 1234, 2345, T0)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_directory_never_given_a_time_shows_the_same_one_on_every_mount(mounter, store, bucket):
    """Its marker's time (whole seconds), also once a chmod wrote its folder object later:
    rsync leaves a directory alone when its time looks equal to the source's."""
    a = mounter(bucket)
    os.mkdir(a / "plain")
    os.mkdir(a / "chmodded")
    shown = {name: int(os.stat(a / name).st_mtime) for name in ("plain", "chmodded")}
    time.sleep(1.2)  # what is written from now on is written in a later second
    os.chmod(a / "chmodded", 0o700)
    stored(store, bucket, "chmodded" + FOLDER)
    b = mounter(bucket)
    assert {name: int(os.stat(b / name).st_mtime) for name in shown} == shown
    assert stat.S_IMODE(os.stat(b / "chmodded").st_mode) == 0o700
