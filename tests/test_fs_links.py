"""Symlinks and owners: stored as s3fs-fuse stores them, through real mounts and real tools
(ln, readlink, chown, rsync -a, cp -a, tar x), plus what a listing costs in requests."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import boto3
import pytest

from s3pipefs.engine import Engine
from s3pipefs.fs import namespace
from s3pipefs.fs.filesystem import Filesystem
from s3pipefs.fs.options import FsConfig
from s3pipefs.s3.inmemory import MemoryStore
from tests.fs_fixtures import wait_for, tool

# What s3fs-fuse writes for a symlink: mode 0o120777 and these keys, nothing else.
S3FS_LINK_KEYS = {"mode", "atime", "ctime", "mtime", "uid", "gid"}
LINK_MODE = str(stat.S_IFLNK | 0o777)  # "41471"


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["bash", "-c", cmd], capture_output=True)
    if check and r.returncode != 0:
        pytest.fail(f"`{cmd}` failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    return r


def boto(s3_server):
    return boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1")


def make_tree(root: Path) -> None:
    """Files, a nested directory and every kind of link, with owners other than root's."""
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(70_000))
    (root / "sub" / "deep" / "c").write_bytes(b"")
    os.symlink("a.txt", root / "rel")                   # relative
    os.symlink("../a.txt", root / "sub" / "up")         # relative, through ..
    os.symlink("/etc/hostname", root / "abs")           # absolute
    os.symlink("no/such/thing", root / "dangling")      # dangling
    os.symlink("sub", root / "dirlink")                 # to a directory
    os.chmod(root / "a.txt", 0o640)
    for i, p in enumerate(["a.txt", "sub/b.bin", "rel", "abs", "dangling", "sub/up"]):
        os.lchown(root / p, 1200 + i, 3400 + i)
    for i, p in enumerate(["a.txt", "sub/b.bin", "rel", "abs", "sub/up", "dangling", "dirlink"]):
        os.utime(root / p, ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789 + i * 10**9),
                 follow_symlinks=False)


def describe(root: Path, ns: bool = True) -> dict:
    """Every entry below ``root``: kind, link target, owners, mode and mtime (files, links);
    ``ns`` False: mtimes in whole seconds (what a tar archive keeps)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = os.lstat(p)
            mtime = st.st_mtime_ns if ns else st.st_mtime_ns // 10**9
            rel = str(p.relative_to(root))
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p), st.st_uid, st.st_gid, mtime)
            else:
                out[rel] = ("file", p.read_bytes(), st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), mtime)
    return out


# -- links ------------------------------------------------------------------------------------------

def test_ln_s_stores_exactly_what_s3fs_stores_and_readlink_reads_it(mounter, bucket, store):
    m = mounter(bucket)
    (m / "target.txt").write_bytes(b"hello\n")
    sh(f"cd {m} && ln -s target.txt rel && ln -s /etc/hostname abs && ln -s 'nowhere/x y' dangling")
    assert os.readlink(m / "rel") == "target.txt"
    assert os.readlink(m / "abs") == "/etc/hostname"
    assert os.readlink(m / "dangling") == "nowhere/x y"
    assert (m / "rel").read_bytes() == b"hello\n"  # followed by the kernel
    assert not (m / "dangling").exists() and (m / "dangling").is_symlink()
    st = os.lstat(m / "rel")
    assert stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o777 and st.st_size == len("target.txt")
    listing = sh(f"ls -l {m}").stdout.decode()
    assert re.search(r"^l.* rel -> target.txt$", listing, re.M)

    info = store.head(bucket, "rel")
    assert set(info.metadata) == S3FS_LINK_KEYS and info.metadata["mode"] == LINK_MODE
    assert (info.metadata["uid"], info.metadata["gid"]) == (str(os.getuid()), str(os.getgid()))
    assert re.fullmatch(r"\d+(\.\d{9})?", info.metadata["mtime"])
    assert info.content_type == "application/octet-stream"
    assert store.get(bucket, "rel")[0] == b"target.txt"  # the body is the target, nothing more

    # mv keeps a link a link; rm removes the link, not its target.
    sh(f"mv {m / 'rel'} {m / 'moved'}")
    assert os.readlink(m / "moved") == "target.txt" and store.head(bucket, "moved").metadata["mode"] == LINK_MODE
    sh(f"rm {m / 'moved'}")
    assert not os.path.lexists(m / "moved")
    # The DELETE goes out just after unlink returns (fs/deletes_behind.py).
    assert wait_for(lambda: store.head(bucket, "moved") is None, 10)
    assert (m / "target.txt").read_bytes() == b"hello\n"
    r = sh(f"ln -s other {m / 'abs'}", check=False)
    assert r.returncode != 0 and b"File exists" in r.stderr
    assert os.readlink(mounter(bucket) / "abs") == "/etc/hostname"  # another mount sees the links


def test_a_link_written_in_s3fs_format_by_another_tool_is_a_link(mounter, bucket, s3_server):
    s3 = boto(s3_server)
    s3.put_object(Bucket=bucket, Key="data/file.txt", Body=b"payload")
    s3.put_object(Bucket=bucket, Key="data/link", Body=b"file.txt", ContentType="application/octet-stream",
                  Metadata={"mode": LINK_MODE, "mtime": "1600000000", "uid": "1000", "gid": "100",
                            "atime": "1600000000", "ctime": "1600000000"})
    # Without a mode, a small object is a plain file.
    s3.put_object(Bucket=bucket, Key="data/plain", Body=b"file.txt")
    m = mounter(bucket)
    names = {e.name: e for e in os.scandir(m / "data")}
    assert names["link"].is_symlink() and not names["plain"].is_symlink()
    st = os.lstat(m / "data" / "link")
    assert (st.st_uid, st.st_gid, st.st_mtime) == (1000, 100, 1600000000)
    assert os.readlink(m / "data" / "link") == "file.txt"
    assert (m / "data" / "link").read_bytes() == b"payload"
    assert (m / "data" / "plain").read_bytes() == b"file.txt"


# -- owners -----------------------------------------------------------------------------------------

def test_chown_and_chgrp_are_kept_on_streams_objects_and_shown(mounter, bucket, store, s3_server):
    assert os.geteuid() == 0, "chown to other users needs root"
    boto(s3_server).put_object(Bucket=bucket, Key="obj", Body=b"an object", ContentType="text/plain")
    m = mounter(bucket)
    (m / "stream").write_bytes(os.urandom(1536 * 1024))  # past a segment (1 MiB): a stream
    (m / "dir").mkdir()
    sh(f"chown 1234:5678 {m / 'stream'} && chgrp 99 {m / 'obj'} && chown 4321 {m / 'obj'} && chown 7:8 {m / 'dir'}")
    for mnt in (m, mounter(bucket)):  # this mount and a fresh one
        st = os.stat(mnt / "stream")
        assert (st.st_uid, st.st_gid) == (1234, 5678)
        # An object's are stored a moment after they are set (fs/attrs_behind.py), both
        # in one copy; the fresh mount may first cache what was there before, for its TTL.
        assert wait_for(lambda: (os.stat(mnt / "obj").st_uid, os.stat(mnt / "obj").st_gid) == (4321, 99), 5)
    manifest = store.get(bucket, "stream/.manifest")[0].decode()
    assert "uid = 1234" in manifest and "gid = 5678" in manifest
    info = store.head(bucket, "obj")
    assert (info.metadata["uid"], info.metadata["gid"]) == ("4321", "99")
    assert info.content_type == "text/plain" and store.get(bucket, "obj")[0] == b"an object"
    # Overwriting a file keeps its owner, as on a disk.
    (m / "stream").write_bytes(b"new content")
    st = os.stat(mounter(bucket) / "stream")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    # uid=/gid= given: they own everything, as before owners were kept.
    o = mounter(bucket, uid="55", gid="66")
    assert {(os.lstat(o / n).st_uid, os.lstat(o / n).st_gid) for n in ("stream", "obj", "dir")} == {(55, 66)}
    # SeaweedFS keeps no metadata on directory markers: the directory keeps its owners in
    # its folder object instead (tests/test_fs_dirattrs.py), and the log says so once.
    assert (os.stat(m / "dir").st_uid, os.stat(m / "dir").st_gid) == (7, 8)
    assert "keeps no metadata on directory markers" in m.log_text()


def test_directories_keep_owners_mode_and_time_in_their_marker_where_the_server_does(tmp_path):
    """What AWS S3 does with a marker's metadata, with the in-memory store: s3fs's keys."""
    store = MemoryStore()
    store.create_bucket("b")
    fs = Filesystem(Engine(store), "b", "", FsConfig(metadata_ttl=60))
    fs.mkdir("/d")
    fs.chown("/d", 7, -1)
    fs.chown("/d", -1, 8)
    fs.set_mode("/d", stat.S_IFDIR | 0o750)
    fs.set_times("/d", (0, 1_600_000_000_500_000_000))
    meta = store.head("b", "d/").metadata
    assert meta == {"uid": "7", "gid": "8", "mode": str(stat.S_IFDIR | 0o750), "mtime": "1600000000.500000000"}
    fresh = Filesystem(Engine(store), "b", "", FsConfig(metadata_ttl=60))
    fresh.readdir("/")
    st = fresh.getattr("/d")
    assert (st["st_uid"], st["st_gid"], st["st_mode"], st["st_mtime"]) == \
        (7, 8, stat.S_IFDIR | 0o750, 1_600_000_000_500_000_000)


# -- what a listing costs ----------------------------------------------------------------------------

class Counted:
    """A store that counts its requests by method (thread-safe: listings HEAD in parallel)."""

    def __init__(self, store):
        self._store = store
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name):
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def counted(*a, **k):
            with self._lock:
                self.calls[name] = self.calls.get(name, 0) + 1
            return attr(*a, **k)
        return counted


def test_a_listing_fetches_only_objects_small_enough_to_be_links(store, bucket):
    n = 200
    for i in range(n):
        store.put(bucket, f"links/l{i:03d}", b"target", metadata={"mode": LINK_MODE})
        store.put(bucket, f"big/o{i:03d}", b"x" * 5000)  # over LINK_MAX: never a link
    counted = Counted(store)
    fs = Filesystem(Engine(counted), bucket, "", FsConfig(metadata_ttl=60))
    t0 = time.monotonic()
    modes = dict(fs.readdir("/links"))
    t_links = time.monotonic() - t0
    assert all(stat.S_ISLNK(modes[f"l{i:03d}"]) for i in range(n))
    for i in range(n):  # ls -l: every lstat and readlink answered from the listing
        assert stat.S_ISLNK(fs.getattr(f"/links/l{i:03d}")["st_mode"])
        assert fs.readlink(f"/links/l{i:03d}") == "target"
    # One small GET per link, its target included (+ the directory's own manifest lookup).
    assert n <= counted.calls.get("get", 0) <= n + 1, counted.calls
    assert counted.calls.get("head", 0) <= 2, counted.calls  # (the directory's own lookup)
    # Larger objects: a HEAD each, in the listing's own round (their times, modes and
    # owners), and none at their stats within the TTL.
    counted.calls.clear()
    fs.readdir("/big")
    assert counted.calls.get("get", 0) <= 1 and n <= counted.calls.get("head", 0) <= n + 2, counted.calls
    for _ in range(2):
        for i in range(n):
            assert stat.S_ISREG(fs.getattr(f"/big/o{i:03d}")["st_mode"])
    assert counted.calls.get("get", 0) <= 1 and n <= counted.calls.get("head", 0) <= n + 2, counted.calls
    print(f"\nreaddir of {n} links: {t_links * 1000:.0f} ms ({n} GETs in parallel)")


def test_a_listing_that_began_before_a_change_of_this_mount_is_not_kept(store, bucket):
    """A readdir racing a change here (a commit, a removal, or a listing ahead of a walk
    made meanwhile) returns what it saw, but the next readdir lists again and shows it."""
    store.put(bucket, "d/old", b"x")
    eng = Engine(store)
    fs = Filesystem(eng, bucket, "", FsConfig(metadata_ttl=60))
    real, calls = eng.listdir, []

    def listing_while_a_change_lands(b, prefix):
        found = list(real(b, prefix))
        calls.append(prefix)
        if len(calls) == 1:  # its LIST is done: now this mount's change lands
            store.put(bucket, "d/new", b"y")
            fs.ns.invalidate("/d/new")
        return found
    eng.listdir = listing_while_a_change_lands
    fs.getattr("/d")
    assert sorted(n for n, _ in fs.readdir("/d")) == [".", "..", "old"]
    assert sorted(n for n, _ in fs.readdir("/d")) == [".", "..", "new", "old"]
    assert calls == ["d/", "d/"]


def test_a_walk_is_listed_ahead_and_a_person_browsing_is_not(store, bucket, monkeypatch):
    """Readdirs in quick succession down a tree (ls -R, find, rm -rf) have the next
    directories listed ahead, and those listings serve the walker; a person who lists a
    directory a while after its parent gets that one listing and no more."""
    monkeypatch.setattr(namespace, "WALK_GAP", 0.3)
    for d in range(3):
        for s in range(6):
            store.put(bucket, f"t/d{d}/s{s}/f", b"x")
    counted = Counted(store)
    fs = Filesystem(Engine(counted), bucket, "", FsConfig(metadata_ttl=60))
    fs.readdir("/t")
    time.sleep(0.5)
    counted.calls.clear()
    fs.readdir("/t/d0")  # a while after /t: a person
    time.sleep(0.1)  # (anything listed ahead would be on its way)
    assert counted.calls.get("list") == 1, counted.calls
    fs.readdir("/t/d0/s0")  # at once: a walk, so d0/s1 to s4 are listed ahead
    assert wait_for(lambda: counted.calls.get("list") == 1 + 1 + namespace.WALK_AHEAD, 5), counted.calls
    for s in range(1, 6):  # the walker's next readdirs find them, and keep the lead
        assert [n for n, _ in fs.readdir(f"/t/d0/s{s}")] == [".", "..", "f"]
    time.sleep(0.1)
    assert counted.calls.get("list") == 1 + 6, counted.calls  # d0 and its 6, each once
    # Up a level at once: d1 listed, and ahead of the walk its first 4 and /t's next, d2.
    assert [n for n, _ in fs.readdir("/t/d1")][2:] == [f"s{s}" for s in range(6)]
    assert wait_for(lambda: counted.calls.get("list") == 7 + 1 + namespace.WALK_AHEAD + 1, 5), counted.calls


def test_a_crowded_listing_leaves_larger_objects_to_their_first_stat(store, bucket, monkeypatch):
    """Past DESCRIBED_AT_LISTING larger objects a listing HEADs none of them (ls and find
    there do not wait for them all); the first stat HEADs the listing's rest, once."""
    monkeypatch.setattr(namespace, "DESCRIBED_AT_LISTING", 50)
    n = 120
    for i in range(n):
        store.put(bucket, f"big/o{i:03d}", b"x" * 5000, metadata={"mode": str(stat.S_IFREG | 0o600)})
    counted = Counted(store)
    fs = Filesystem(Engine(counted), bucket, "", FsConfig(metadata_ttl=60))
    fs.readdir("/")
    counted.calls.clear()
    assert len(fs.readdir("/big")) == n + 2
    assert counted.calls.get("head", 0) == 0 and counted.calls.get("get", 0) <= 1, counted.calls
    for _ in range(2):
        for i in range(n):
            assert stat.S_IMODE(fs.getattr(f"/big/o{i:03d}")["st_mode"]) == 0o600
    assert counted.calls.get("head", 0) == n, counted.calls


# -- real trees through real tools -------------------------------------------------------------------

def test_rsync_a_round_trips_a_tree_with_symlinks_and_sends_nothing_the_second_time(mounter, bucket, tmp_path):
    tool("rsync")
    src, back = tmp_path / "src", tmp_path / "back"
    make_tree(src)
    m = mounter(bucket)
    sh(f"rsync -a {src}/ {m / 't'}/")
    assert describe(m / "t") == describe(src)
    sh(f"rsync -a {m / 't'}/ {back}/")
    sh(f"diff -r --no-dereference {src} {back}")
    assert describe(back) == describe(src)
    # Again, from another mount: nothing to send.
    m.unmount()  # (attributes held for a moment are stored by then)
    other = mounter(bucket)
    out = sh(f"rsync -a --itemize-changes {src}/ {other / 't'}/").stdout.decode().splitlines()
    # Directories included: one whose time rsync found equal to its source's (to the
    # second) and left alone shows its marker's time on every mount.
    assert out == [], out


def test_cp_a_round_trips_a_tree_with_symlinks(mounter, bucket, tmp_path):
    src, back = tmp_path / "src", tmp_path / "back"
    make_tree(src)
    m = mounter(bucket)
    sh(f"cp -a {src} {m / 'c'}")
    assert describe(m / "c") == describe(src)
    m.unmount()  # (attributes held for a moment are stored by then)
    sh(f"cp -a {mounter(bucket) / 'c'} {back}")
    sh(f"diff -r --no-dereference {src} {back}")
    assert describe(back) == describe(src)


def test_tar_x_of_an_archive_with_symlinks(mounter, bucket, tmp_path):
    tool("tar")
    src = tmp_path / "src"
    make_tree(src)
    archive = tmp_path / "t.tar"
    sh(f"tar c -C {src} -f {archive} .")
    m = mounter(bucket)
    (m / "x").mkdir()
    sh(f"tar x -C {m / 'x'} -f {archive}")  # as root: owners too (--same-owner)
    assert describe(m / "x", ns=False) == describe(src, ns=False)
    with tarfile.open(archive) as t:
        links = {i.name.removeprefix("./"): i.linkname for i in t if i.issym()}
    assert {k: os.readlink(m / "x" / k) for k in links} == links
    sh(f"tar --compare -C {m / 'x'} -f {archive}")
