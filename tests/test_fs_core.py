"""The FUSE-free Filesystem, in-process, against a real SeaweedFS: every decision the mount
makes (when to commit, what is EBUSY/ESPIPE/ENOMEM, what the namespace shows and what it
costs) without a kernel in the way. test_fs_mount.py repeats the important ones through
a real mount."""
from __future__ import annotations

import configparser
import errno
import hashlib
import logging
import os
import random
import stat
import threading
import time

import pytest

from s3pipefs import errors
from s3pipefs.config import KiB, S3Config, TransferConfig
from s3pipefs.engine import Engine, manifests
from s3pipefs.engine.budget import WriteBudget
from s3pipefs.fs import fserrors
from s3pipefs.fs.filesystem import Filesystem
from s3pipefs.fs.write_handle import WriteHandle
from s3pipefs.fs import namespace
from s3pipefs.fs.namespace import DIR_CONTENT_TYPE
from s3pipefs.fs.options import FsConfig
from s3pipefs.s3 import Store
from tests.fs_fixtures import wait_for

SEG = 64 * KiB
WR = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
SHELL, CMD = 111, 222  # lock owners: two processes' file tables


def blob(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def engine(s3_server, tmp_path):
    store = Store(S3Config(endpoint_url=s3_server.endpoint))
    cfg = TransferConfig(segment_size=SEG, workers=4, staging_dir=str(tmp_path / "staging"),
                         poll_interval=0.05, follow_timeout=3, heartbeat_interval=1, stale_after=10)
    return Engine(store, cfg)


def make_fs(engine, bucket, **kw) -> Filesystem:
    # These tests are about streams and their handles, whatever a file's size:
    # small files as plain objects have their own tests (test_fs_tree.py).
    return Filesystem(engine, bucket, kw.pop("prefix", ""),
                      FsConfig(**{"metadata_ttl": 60, "small_files": "stream", **kw}))


@pytest.fixture
def fs(engine, bucket):
    f = make_fs(engine, bucket)
    yield f
    f.shutdown(0)
    f.wait_idle(30)
    f.close()


def write_file(fs, path, data, owner=CMD, chunk=50_000, flags=WR):
    fh = fs.create(path, flags).fh if flags & os.O_CREAT else fs.open(path, flags).fh
    off = 0 if flags & os.O_TRUNC else fs.getattr(path)["st_size"]
    for i in range(0, len(data), chunk):
        off += fs.write(fh, data[i:i + chunk], off, owner)
    fs.flush(fh, owner)
    fs.release(fh)
    assert fs.wait_idle(30)


def read_file(fs, path) -> bytes:
    fh = fs.open(path, os.O_RDONLY).fh
    out, off = [], 0
    try:
        while b := fs.read(fh, 1 << 20, off):
            out.append(b)
            off += len(b)
    finally:
        fs.release(fh)
    return b"".join(out)


def s3(engine, bucket, key):
    return engine.stat(bucket, key)


# -- commit on close --------------------------------------------------------------------------

def test_close_commits_and_the_data_is_verified_in_s3(fs, engine, bucket):
    data = blob(5 * SEG + 17)
    write_file(fs, "/a.bin", data)
    e = s3(engine, bucket, "a.bin")
    assert e.kind == "stream" and e.complete and e.size == len(data)
    assert read_file(fs, "/a.bin") == data
    assert fs.getattr("/a.bin")["st_size"] == len(data)


def test_shell_redirect_commits_once_when_the_command_exits(fs, engine, bucket, monkeypatch):
    """`cmd > f`: the shell closes its copy before cmd writes; cmd's exit commits."""
    opened = []
    real = engine.open_writer
    monkeypatch.setattr(engine, "open_writer", lambda *a, **k: opened.append(a) or real(*a, **k))
    fh = fs.create("/out", WR).fh
    fs.flush(fh, SHELL)  # the shell's dup2 + close: nothing written, the stream is taken
    e = s3(engine, bucket, "out")
    assert e.kind == "stream" and not e.complete and e.writer_alive and len(opened) == 1
    fs.write(fh, b"hello\n", 0, CMD)
    fs.write(fh, b"world\n", 6, CMD)
    fs.flush(fh, CMD)  # cmd exits
    fs.release(fh)
    assert fs.wait_idle(10)
    assert len(opened) == 1
    assert s3(engine, bucket, "out").complete and read_file(fs, "/out") == b"hello\nworld\n"


def test_a_forked_child_closing_its_copy_does_not_commit(fs, engine, bucket):
    """A writer that runs a subprocess: the child's exec closes the inherited descriptor."""
    fh = fs.create("/live", WR).fh
    fs.write(fh, b"x" * SEG, 0, CMD)
    fs.fsync(fh)
    fs.flush(fh, SHELL)  # the child's close
    e = s3(engine, bucket, "live")
    assert e is not None and not e.complete and e.size == SEG
    fs.write(fh, b"y" * 10, SEG, CMD)
    fs.flush(fh, CMD)
    fs.release(fh)
    assert s3(engine, bucket, "live").complete and read_file(fs, "/live") == b"x" * SEG + b"y" * 10


def test_exec_3_redirect_commits_each_echo_and_appends_the_next(fs, engine, bucket):
    """exec 3>f; echo a >&3; echo b >&3; exec 3>&-"""
    fh = fs.create("/log", WR).fh
    fs.write(fh, b"a\n", 0, SHELL)
    fs.flush(fh, SHELL)  # bash restores stdout: closes the dup
    assert s3(engine, bucket, "log").complete and read_file(fs, "/log") == b"a\n"
    fs.write(fh, b"b\n", 2, SHELL)  # reopens in append mode at the same offset
    fs.flush(fh, SHELL)
    fs.flush(fh, SHELL)  # exec 3>&-
    fs.release(fh)
    assert fs.wait_idle(10)
    e = s3(engine, bucket, "log")
    assert e.complete and e.size == 4 and read_file(fs, "/log") == b"a\nb\n"


def test_created_and_never_written_becomes_an_empty_stream(fs, engine, bucket):
    fh = fs.create("/empty", WR).fh
    fs.flush(fh, SHELL)
    # Once close(2) returned, other mounts see the file: a stream being written.
    e = s3(engine, bucket, "empty")
    assert e.kind == "stream" and not e.complete and e.writer_alive
    fs.release(fh)
    # stat shows it while the release commit runs, and afterwards from S3.
    assert fs.getattr("/empty")["st_size"] == 0
    assert fs.wait_idle(10)
    e = s3(engine, bucket, "empty")
    assert e.kind == "stream" and e.complete and e.size == 0
    assert read_file(fs, "/empty") == b""


def test_o_trunc_replaces_only_at_commit_and_empty_truncation_works(fs, engine, bucket):
    write_file(fs, "/f", b"old contents")
    fh = fs.open("/f", os.O_WRONLY | os.O_TRUNC).fh
    fs.write(fh, b"new", 0, CMD)
    # The old stream is whole in S3 until the new one commits; this mount reads the file
    # as its writer has it, as a local disk would.
    with engine.open_reader(bucket, "f", follow=False) as r:
        assert r.read(0, 100) == b"old contents"
    rh = fs.open("/f", os.O_RDONLY).fh
    assert fs.read(rh, 100, 0, owner=CMD) == b"new" and fs.read(rh, 100, 3, owner=CMD) == b""
    fs.release(rh)
    fs.flush(fh, CMD)
    fs.release(fh)
    assert read_file(fs, "/f") == b"new"
    # `: > f` (open O_TRUNC, close) empties it.
    fh = fs.open("/f", os.O_WRONLY | os.O_TRUNC).fh
    fs.flush(fh, SHELL)
    fs.release(fh)
    assert fs.wait_idle(10)
    assert read_file(fs, "/f") == b"" and s3(engine, bucket, "f").complete


def test_truncate_after_open_is_the_kernel_without_atomic_o_trunc(fs, engine, bucket):
    write_file(fs, "/t", b"0123456789")
    fh = fs.open("/t", os.O_WRONLY).fh  # open without O_TRUNC, then setattr(size=0)
    fs.truncate("/t", 0, fh)
    fs.write(fh, b"ab", 0, CMD)
    fs.flush(fh, CMD)
    fs.release(fh)
    assert read_file(fs, "/t") == b"ab"
    with pytest.raises(fserrors.NotSupported) as e:
        fs.truncate("/t", 1)
    assert e.value.errno == errno.EOPNOTSUPP
    fs.truncate("/t", 2)  # to the current size: fine
    fs.truncate("/t", 0)  # `truncate -s 0`
    assert read_file(fs, "/t") == b""


def test_append_adds_segments_and_o_append_ignores_the_kernel_offset(fs, engine, bucket):
    write_file(fs, "/ap", b"a" * (SEG + 5))
    fh = fs.open("/ap", os.O_WRONLY | os.O_APPEND).fh
    fs.write(fh, b"b" * 7, 0, CMD)  # a stale i_size: the kernel may say 0
    fs.write(fh, b"c" * 3, 5, CMD)
    fs.flush(fh, CMD)
    fs.release(fh)
    assert read_file(fs, "/ap") == b"a" * (SEG + 5) + b"b" * 7 + b"c" * 3


def test_writes_go_anywhere_from_the_unsealed_tail_on_and_sealed_data_never_changes(fs, engine, bucket):
    fh = fs.create("/seq", WR).fh
    model = bytearray(blob(3 * SEG + 100))
    fs.write(fh, bytes(model), 0, CMD)
    # The mount keeps one segment unsealed behind the end: 2 * SEG bytes are sealed.
    for off in (0, SEG, 2 * SEG - 1):
        with pytest.raises(errors.SeekNotAllowed) as e:
            fs.write(fh, b"Z", off, CMD)
        assert e.value.errno == errno.ESPIPE and "the first 131072 bytes are sealed" in str(e.value)
    with pytest.raises(fserrors.NotSupported) as e:
        fs.truncate("/seq", 2 * SEG - 1, fh)
    assert e.value.errno == errno.EOPNOTSUPP and fs.getattr("/seq")["st_size"] == len(model)
    for off, data in ((2 * SEG, b"header"), (len(model) - 2, b"over the end"), (len(model) + 20, b"hole")):
        fs.write(fh, data, off, CMD)  # not sticky: the tail, the end and past it still take writes
        model += bytes(max(0, off - len(model)))
        model[off:off + len(data)] = data
    fs.truncate("/seq", len(model) - 3, fh)  # cut the unsealed tail
    del model[-3:]
    fs.truncate("/seq", len(model) + SEG, fh)  # grow with zeros
    model += bytes(SEG)
    assert fs.getattr("/seq")["st_size"] == len(model)
    fs.flush(fh, CMD)
    fs.release(fh)
    assert fs.wait_idle(10)
    assert read_file(fs, "/seq") == bytes(model)
    m = manifests.load(engine.store, bucket, "seq/").manifest
    assert m.completed and m.sha256 == hashlib.sha256(model).hexdigest()
    # An existing complete stream opened without O_TRUNC/O_APPEND: all of it is sealed; a
    # write into it is refused, and closing leaves the stream complete and unchanged.
    fh = fs.open("/seq", os.O_WRONLY).fh
    with pytest.raises(errors.SeekNotAllowed):
        fs.write(fh, b"Z", len(model) - 1, CMD)
    fs.flush(fh, CMD)
    fs.release(fh)
    e = s3(engine, bucket, "seq")
    assert e.complete and read_file(fs, "/seq") == bytes(model)
    # ... while a write at or past the end appends (dd seek=N conv=notrunc).
    fh = fs.open("/seq", os.O_WRONLY).fh
    fs.write(fh, b"C", len(model) + 2, CMD)
    fs.flush(fh, CMD)
    fs.release(fh)
    assert read_file(fs, "/seq") == bytes(model) + b"\0\0C"


def test_truncate_and_fallocate_grow_a_file_with_zeros(fs, engine, bucket):
    fh = fs.create("/t", WR).fh  # dd seek=N: create, ftruncate, write at N
    fs.truncate("/t", 5 * SEG, fh)
    fs.write(fh, b"end", 5 * SEG, CMD)
    fs.flush(fh, CMD)
    fs.release(fh)
    assert read_file(fs, "/t") == bytes(5 * SEG) + b"end"
    fs.truncate("/t", 6 * SEG)  # a path truncate of a closed file: grows it
    assert read_file(fs, "/t") == bytes(5 * SEG) + b"end" + bytes(SEG - 3)
    fh = fs.create("/f", WR).fh
    fs.fallocate(fh, 0, 0, 1000)          # posix_fallocate on a new file
    fs.fallocate(fh, 0, 10, 20)           # within it: nothing to do
    fs.fallocate(fh, 1, 0, 10 ** 9)       # FALLOC_FL_KEEP_SIZE: nothing to reserve in S3
    for mode in (0x03, 0x10, 0x08, 0x20):  # punch hole, zero, collapse, insert range
        with pytest.raises(fserrors.NotSupported) as e:
            fs.fallocate(fh, mode, 0, 10)
        assert e.value.errno == errno.EOPNOTSUPP
    assert fs.getattr("/f")["st_size"] == 1000
    fs.write(fh, b"x", 1000, CMD)
    fs.flush(fh, CMD)
    fs.release(fh)
    assert read_file(fs, "/f") == bytes(1000) + b"x"


def test_fsync_makes_data_durable_without_completing(fs, engine, bucket):
    fh = fs.create("/s", WR).fh
    fs.write(fh, b"q" * (SEG + 3), 0, CMD)
    fs.fsync(fh)
    e = s3(engine, bucket, "s")
    assert not e.complete and e.size == SEG + 3
    with engine.open_reader(bucket, "s", follow=False) as r:
        assert r.read(0, SEG + 3) == b"q" * (SEG + 3)
    fs.flush(fh, CMD)
    fs.release(fh)
    assert s3(engine, bucket, "s").complete


# -- one writer, bounded writers, read-only --------------------------------------------------

def test_second_writer_on_this_mount_or_elsewhere_gets_ebusy(fs, engine, bucket):
    fh = fs.create("/w", WR).fh
    fs.write(fh, b"1", 0, CMD)
    with pytest.raises(errors.Busy) as e:
        fs.open("/w", os.O_WRONLY | os.O_TRUNC)
    assert e.value.errno == errno.EBUSY
    fs.flush(fh, CMD)
    fs.release(fh)
    # A live writer elsewhere (another mount, `s3pipefs put`): EBUSY at open.
    other = engine.open_writer(bucket, "w", "append")
    other.write(b"2")
    other.flush()
    try:
        with pytest.raises(errors.Busy):
            fs.open("/w", os.O_WRONLY | os.O_APPEND)
        with pytest.raises(errors.Busy):
            fs.unlink("/w")
    finally:
        other.close()
    assert read_file(fs, "/w") == b"12"


def test_two_opens_that_race_fail_at_the_first_write(engine, bucket):
    fs1, fs2 = make_fs(engine, bucket), make_fs(engine, bucket)
    a = fs1.create("/race", WR).fh
    b = fs2.create("/race", WR).fh  # neither has written: both opens succeed
    fs1.write(a, b"first", 0, CMD)
    with pytest.raises(errors.Busy):
        fs2.write(b, b"second", 0, CMD)
    fs1.flush(a, CMD)
    fs1.release(a)
    fs2.release(b)
    fs2.wait_idle(10)
    assert read_file(fs1, "/race") == b"first"


def test_opens_for_writing_that_never_write_do_not_exclude_each_other(fs):
    """Lock files, O_RDWR probes: the first descriptor to write has the file."""
    write_file(fs, "/lk", b"12")
    a, b = fs.open("/lk", os.O_RDWR).fh, fs.open("/lk", os.O_WRONLY | os.O_APPEND).fh
    fs.flush(b, SHELL)
    fs.write(a, b"3", 2, CMD)
    with pytest.raises(errors.Busy):
        fs.write(b, b"4", 2, SHELL)
    with pytest.raises(errors.Busy):  # someone writes now: a new open is refused at once
        fs.open("/lk", os.O_RDWR)
    fs.flush(a, CMD)
    fs.release(a)
    fs.release(b)
    assert fs.wait_idle(30)
    assert read_file(fs, "/lk") == b"123"


def test_a_descriptor_open_for_reading_and_writing_reads_until_it_writes(fs):
    """sqlite opens its database O_RDWR to read it; a new file reads as empty."""
    write_file(fs, "/rw", b"stored")
    fh = fs.open("/rw", os.O_RDWR).fh
    assert fs.read(fh, 100, 0) == b"stored" and fs.read(fh, 100, 3) == b"red"
    fs.write(fh, b"+", 6, CMD)
    with pytest.raises(fserrors.NotSupported):  # what it wrote may be only in its writer
        fs.read(fh, 100, 0)
    fs.flush(fh, CMD)
    fs.release(fh)
    new = fs.create("/rw2", os.O_RDWR | os.O_CREAT | os.O_TRUNC).fh
    assert fs.read(new, 100, 0) == b""
    fs.release(new)
    assert fs.wait_idle(30)
    assert read_file(fs, "/rw") == b"stored+" and read_file(fs, "/rw2") == b""


def test_ftruncate_without_its_descriptor_reaches_the_one_open_for_writing(fs):
    """libfuse 3 passes ftruncate on as a path truncate: vim opens without O_TRUNC, then
    ftruncates to 0 and writes."""
    write_file(fs, "/vi", b"old text")
    fh = fs.open("/vi", os.O_WRONLY | os.O_CREAT).fh
    fs.truncate("/vi", 0)
    fs.write(fh, b"new", 0, CMD)
    fs.flush(fh, CMD)
    fs.release(fh)
    assert fs.wait_idle(30)
    assert read_file(fs, "/vi") == b"new"
    a, b = fs.open("/vi", os.O_RDWR).fh, fs.open("/vi", os.O_RDWR).fh
    with pytest.raises(errors.Busy):  # which one? refuse rather than guess
        fs.truncate("/vi", 0)
    fs.release(a)
    fs.release(b)
    assert read_file(fs, "/vi") == b"new"


def test_max_writers_is_ignored_and_writers_share_one_budget(engine, bucket):
    budget = WriteBudget(64 * 1024, threads=2)
    shared = Engine(engine.store, engine.cfg, write_budget=budget)
    fs = make_fs(shared, bucket, max_writers=2)
    fhs = [fs.create(f"/{i}", WR).fh for i in range(5)]  # past max_writers: no ENOMEM
    for i, fh in enumerate(fhs):
        assert fs.write(fh, bytes([i]) * 4096, 0, owner=CMD) == 4096
    assert budget.held == 5 * 4096  # each holds what it wrote, not a reservation
    for fh in fhs:
        fs.flush(fh, owner=CMD)
        fs.release(fh)
    assert fs.wait_idle(10)
    assert budget.held == 0
    for i in range(5):
        assert read_file(fs, f"/{i}") == bytes([i]) * 4096
    fs.shutdown(0)
    fs.close()
    budget.shutdown()


def test_read_only_mount_refuses_every_change(engine, bucket):
    rw = make_fs(engine, bucket)
    write_file(rw, "/x", b"data")
    ro = make_fs(engine, bucket, read_only=True)
    for call in (lambda: ro.create("/y", WR), lambda: ro.open("/x", os.O_WRONLY | os.O_APPEND),
                 lambda: ro.mkdir("/d"), lambda: ro.unlink("/x"), lambda: ro.rename("/x", "/z"),
                 lambda: ro.truncate("/x", 0)):
        with pytest.raises(errors.ReadOnly) as e:
            call()
        assert e.value.errno == errno.EROFS
    assert ro.getattr("/x")["st_mode"] & 0o222 == 0
    assert read_file(ro, "/x") == b"data"


# -- objects, directories, rename -----------------------------------------------------------------

def test_plain_objects_are_read_only_files_with_random_access(fs, engine, bucket):
    data = blob(3_000_000, 5)
    engine.store.put(bucket, "obj.bin", data)
    a = fs.getattr("/obj.bin")
    assert a["st_size"] == len(data) and a["st_mode"] & 0o777 == 0o444
    fh = fs.open("/obj.bin", os.O_RDONLY).fh
    rnd = random.Random(3)
    for _ in range(40):
        off = rnd.randrange(len(data) + 10)
        n = rnd.randrange(1, 300_000)
        assert fs.read(fh, n, off) == data[off:off + n]
    fs.release(fh)
    with pytest.raises(fserrors.PermissionDenied) as e:
        fs.open("/obj.bin", os.O_WRONLY | os.O_TRUNC)
    assert e.value.errno == errno.EACCES


def test_directories_markers_rmdir_and_listing(fs, engine, bucket):
    fs.mkdir("/d")
    info = engine.store.head(bucket, "d/")
    assert info is not None and info.size == 0 and info.content_type == DIR_CONTENT_TYPE
    with pytest.raises(errors.Exists):
        fs.mkdir("/d")
    write_file(fs, "/d/s", b"stream")
    engine.store.put(bucket, "d/o", b"object")
    fs.ns.invalidate("/d/o")  # made elsewhere: shows within the TTL, which the test does not wait out
    fs.mkdir("/d/sub")
    names = {n for n, _ in fs.readdir("/d")}
    assert names == {".", "..", "s", "o", "sub"}
    modes = dict(fs.readdir("/d"))
    assert modes["sub"] & 0o170000 == 0o040000 and modes["s"] & 0o170000 == 0o100000
    with pytest.raises(errors.NotEmpty) as e:
        fs.rmdir("/d")
    assert e.value.errno == errno.ENOTEMPTY
    with pytest.raises(fserrors.NotADirectory):
        fs.rmdir("/d/s")
    with pytest.raises(fserrors.IsADirectory):
        fs.unlink("/d/sub")
    fs.rmdir("/d/sub")
    fs.unlink("/d/s")
    fs.unlink("/d/o")
    assert {n for n, _ in fs.readdir("/d")} == {".", ".."}
    assert list(engine.store.list(bucket, "d/s")) == []  # segments, manifest and folder gone
    fs.rmdir("/d")
    assert wait_for(lambda: engine.stat(bucket, "d") is None, 5)  # its marker's DELETE: just after
    with pytest.raises(errors.NotFound):
        fs.getattr("/d")


def test_rename_is_copy_then_delete_and_replaces_the_target(fs, engine, bucket, monkeypatch):
    write_file(fs, "/dir/.tmp.x", blob(3 * SEG, 2))  # rsync's temp file
    write_file(fs, "/dir/x", b"older, longer " * 10_000)
    fs.rename("/dir/.tmp.x", "/dir/x")
    assert read_file(fs, "/dir/x") == blob(3 * SEG, 2)
    assert {n for n, _ in fs.readdir("/dir")} == {".", "..", "x"}
    assert engine.stat(bucket, "dir/.tmp.x") is None
    # An object renamed over a stream, and a stream over an object: the old kind goes.
    engine.store.put(bucket, "dir/o", b"obj")
    fs.rename("/dir/o", "/dir/x")
    assert read_file(fs, "/dir/x") == b"obj" and engine.stat(bucket, "dir/x").kind == "object"
    write_file(fs, "/dir/s", b"strm")
    fs.rename("/dir/s", "/dir/x")
    assert engine.stat(bucket, "dir/x").kind == "stream" and engine.store.head(bucket, "dir/x") is None
    # Directories: an empty one moves, a small one is copied then deleted, a large one is
    # EXDEV (mv copies then).
    fs.mkdir("/e")
    fs.rename("/e", "/e2")
    assert fs.getattr("/e2")["st_mode"] & 0o040000 and engine.stat(bucket, "e") is None
    write_file(fs, "/dir/sub/deep", b"deep")
    engine.store.put(bucket, "dir/sub/obj", b"object")
    fs.rename("/dir", "/dir2")
    assert read_file(fs, "/dir2/x") == b"strm" and read_file(fs, "/dir2/sub/deep") == b"deep"
    assert read_file(fs, "/dir2/sub/obj") == b"object"
    assert list(engine.store.list(bucket, "dir/")) == [] and engine.stat(bucket, "dir") is None
    monkeypatch.setattr(namespace, "MAX_DIR_RENAME", 64)  # the limit, made small for the test
    for i in range(65):
        engine.store.put(bucket, f"big/{i}", b"")
    with pytest.raises(fserrors.CrossDevice) as e:
        fs.rename("/big", "/big2")
    assert e.value.errno == errno.EXDEV


def test_of_two_directory_renames_to_one_name_exactly_one_wins(engine, bucket):
    """borg's lock: a directory holding one file, renamed into place by two processes of
    one mount at once. (Across mounts the server's If-None-Match decides; SeaweedFS's is
    not atomic, see Namespace._rename_dir.)"""
    fs1 = fs2 = make_fs(engine, bucket)
    for trial in range(8):
        for fs, n in ((fs1, 1), (fs2, 2)):
            write_file(fs, f"/t{trial}.{n}/owner", str(n).encode())
        results = {}

        def go(fs, n):
            try:
                fs.rename(f"/t{trial}.{n}", f"/lock{trial}")
                results[n] = "won"
            except errors.S3PipeError as e:
                results[n] = errors.errno_of(e)
        threads = [threading.Thread(target=go, args=a) for a in ((fs1, 1), (fs2, 2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        won = [n for n, r in results.items() if r == "won"]
        assert len(won) == 1 and set(results.values()) - {"won"} <= {errno.ENOTEMPTY, errno.EEXIST}, results
        fs1.ns.invalidate(f"/lock{trial}/owner")
        assert read_file(fs1, f"/lock{trial}/owner") == str(won[0]).encode()


def test_open_files_cannot_be_removed_or_renamed_underneath(fs):
    fs.mkdir("/sub")
    fh = fs.create("/sub/busy", WR).fh
    fs.write(fh, b"x", 0, CMD)
    assert "busy" in {n for n, _ in fs.readdir("/sub")}  # before its first byte is in S3
    for call in (lambda: fs.unlink("/sub/busy"), lambda: fs.rename("/sub/busy", "/b2")):
        with pytest.raises(errors.Busy):
            call()
    with pytest.raises(errors.NotEmpty):
        fs.rmdir("/sub")
    fs.flush(fh, CMD)
    fs.release(fh)


def test_the_manifest_name_is_reserved(fs):
    """A file named .manifest would turn its directory into a broken stream."""
    write_file(fs, "/s", b"x")
    for call in (lambda: fs.create("/.manifest", WR), lambda: fs.mkdir("/.manifest"),
                 lambda: fs.rename("/s", "/.manifest")):
        with pytest.raises(fserrors.PermissionDenied) as e:
            call()
        assert e.value.errno == errno.EACCES


def test_names_s3_cannot_store_or_delete_are_refused_before_anything_is_written(fs, engine, bucket):
    write_file(fs, "/keep", b"kept")
    for path, err in (("/" + "n" * 256, errno.ENAMETOOLONG), ("/esc\x1b", errno.EINVAL),
                      ("/back\\slash", errno.EINVAL), ("/not-utf8-\udce9", errno.EINVAL),
                      ("/" + "/".join(["d" * 250] * 4) + "/" + "b" * 30, errno.ENAMETOOLONG)):
        for call in (lambda: fs.create(path, WR), lambda: fs.mkdir(path), lambda: fs.rename("/keep", path)):
            with pytest.raises(errors.S3PipeError) as e:
                call()
            assert errors.errno_of(e.value) == err, (path, e.value)
    # Room for the segments: the longest file name fits as a directory, not as a stream.
    deep = "/" + "/".join(["d" * 250] * 4) + "/" + "b" * 10
    with pytest.raises(fserrors.NameTooLong):
        fs.create(deep, WR)
    fs.mkdir(deep)
    fs.rmdir(deep)
    # A key S3 cannot hold cannot exist: a lookup says so without asking.
    with pytest.raises(fserrors.NameTooLong):
        fs.getattr("/" + "/".join(["a" * 250] * 5))
    with pytest.raises(errors.NotFound):
        fs.getattr("/not-utf8-\udce9")
    assert wait_for(lambda: [o.key for o in engine.store.list(bucket)] == ["keep/.manifest", "keep/000000000000001"], 5)


def test_a_stream_whose_segments_the_server_cannot_delete_is_left_whole(fs, engine, bucket):
    """Made by another tool: rm and mv refuse before deleting anything."""
    with engine.open_writer(bucket, "esc\x1bname", "create") as w:
        w.write(b"data")
    fs.ns.invalidate("/esc\x1bname")
    for call in (lambda: fs.unlink("/esc\x1bname"), lambda: fs.rename("/esc\x1bname", "/fine")):
        with pytest.raises(fserrors.BadName):
            call()
    assert read_file(fs, "/esc\x1bname") == b"data"
    assert fs.ns.lookup("/fine", fresh=True) is None


def test_chown_succeeds_without_storing(fs):
    write_file(fs, "/m", b"1")
    fs.touch_metadata("/m")
    with pytest.raises(errors.NotFound):
        fs.touch_metadata("/nope")
    st = fs.statfs()
    assert st["f_bavail"] * st["f_frsize"] >= 1 << 50 and st["f_namemax"] == 255


T1 = 1577934245_123456789  # 2020-01-02 03:04:05.123456789 UTC
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2


def test_times_and_mode_of_a_closed_stream_are_kept_in_its_manifest(engine, bucket, fs):
    """What rsync -a does after writing a file: utimens and chmod on the closed file. A
    second mount (another machine, or after a remount) sees both, exactly."""
    write_file(fs, "/d/f", b"data")
    fs.set_times("/d/f", (T1 + 5, T1))
    fs.set_mode("/d/f", 0o100640)
    st = fs.getattr("/d/f")
    assert st["st_mtime"] == T1 and stat.S_IMODE(st["st_mode"]) == 0o640 and st["st_size"] == 4
    other = make_fs(engine, bucket)
    st = other.getattr("/d/f")
    assert st["st_mtime"] == T1 and stat.S_IMODE(st["st_mode"]) == 0o640
    assert dict(other.readdir("/d"))["f"] == stat.S_IFREG | 0o640
    m = engine.stat(bucket, "d/f").manifest
    assert m.completed and m.mtime_ns == T1 and m.mode == 0o640
    assert other.read(other.open("/d/f", os.O_RDONLY).fh, 10, 0) == b"data"  # the data is untouched
    fs.set_mode("/d/f", 0o777)
    assert stat.S_IMODE(make_fs(engine, bucket, umask=0o077).getattr("/d/f")["st_mode"]) == 0o700  # umask bounds it
    assert stat.S_IMODE(make_fs(engine, bucket, umask=0).getattr("/d/f")["st_mode"]) == 0o777
    fs.set_times("/d/f", (0, UTIME_OMIT))  # atime only: nothing to keep
    assert make_fs(engine, bucket).getattr("/d/f")["st_mtime"] == T1
    before = time.time_ns()
    fs.set_times("/d/f", None)  # touch: now
    assert before <= make_fs(engine, bucket).getattr("/d/f")["st_mtime"] <= time.time_ns()


def test_an_open_that_finds_the_cache_behind_keeps_the_stored_attributes(engine, bucket, fs):
    """Opening a file whose cached size is stale refreshes the cached entry: its stored
    time and mode must stay in it, not fall back to the defaults."""
    write_file(fs, "/grown", b"one")
    fs.set_times("/grown", (T1, T1))
    fs.set_mode("/grown", 0o640)
    with engine.open_writer(bucket, "grown", "append") as w:  # another machine appends
        w.write(b" two")
    engine.set_attrs(bucket, "grown", mtime_ns=T1, mode=0o640)  # and keeps the attributes
    fs.release(fs.open("/grown", os.O_RDONLY).fh)  # the cache still says 3 bytes
    st = fs.getattr("/grown")
    assert st["st_size"] == 7 and st["st_mtime"] == T1 and stat.S_IMODE(st["st_mode"]) == 0o640


def test_attributes_set_by_two_mounts_are_both_kept(engine, bucket, fs):
    """Each mount starts from its cached manifest; a stale cache loses the If-Match race,
    reads again and applies its change on top: the other mount's change is not lost."""
    write_file(fs, "/both", b"x")
    other = make_fs(engine, bucket)
    assert other.getattr("/both")["st_size"] == 1  # other caches the manifest now
    fs.set_mode("/both", 0o600)
    other.set_times("/both", (T1, T1))  # from a cache older than fs's chmod
    m = engine.stat(bucket, "both").manifest
    assert (m.mtime_ns, m.mode) == (T1, 0o600)


def test_times_set_while_writing_go_out_with_the_commit(engine, bucket, fs):
    """cp -p and tar x set times on the open descriptor before close; a write after
    utimens makes the mtime "now" again, as on a local disk."""
    fh = fs.create("/p", WR).fh
    fs.write(fh, b"abc", 0, CMD)
    fs.set_times("/p", (T1, T1))
    fs.set_mode("/p", 0o600)
    assert fs.getattr("/p")["st_mtime"] == T1  # shown before the commit too
    assert engine.stat(bucket, "p").manifest.mtime_ns is None  # nothing committed yet
    fs.flush(fh, CMD)
    fs.release(fh)
    fs.wait_idle(10)
    st = make_fs(engine, bucket).getattr("/p")
    assert st["st_mtime"] == T1 and stat.S_IMODE(st["st_mode"]) == 0o600

    before = time.time_ns() // 10**9 * 10**9
    fh = fs.create("/q", WR).fh
    fs.set_times("/q", (T1, T1))  # touch of a new file: before its first write
    fs.write(fh, b"x", 0, CMD)
    fs.flush(fh, CMD)
    fs.release(fh)
    fs.wait_idle(10)
    assert make_fs(engine, bucket).getattr("/q")["st_mtime"] >= before  # the write's time, not T1

    fh = fs.create("/empty", WR).fh  # touch -d of a new, empty file
    fs.set_times("/empty", (T1, T1))
    fs.flush(fh, CMD)
    fs.release(fh)
    fs.wait_idle(10)
    st = make_fs(engine, bucket).getattr("/empty")
    assert st["st_mtime"] == T1 and st["st_size"] == 0


def test_the_create_mode_is_shown_while_open_and_kept_at_commit(engine, bucket, fs):
    """The kernel passes the creator's mode with its umask applied (open(O_CREAT, 0600),
    tar x of a 0600 member); an existing file opened with O_CREAT keeps its own."""
    for name, mode in (("p600", 0o600), ("p640", 0o640), ("p755", 0o755), ("p444", 0o444)):
        fh = fs.create(f"/{name}", WR, stat.S_IFREG | mode).fh
        assert stat.S_IMODE(fs.getattr(f"/{name}")["st_mode"]) == mode
        if mode != 0o444:
            fs.write(fh, b"data", 0, CMD)
        fs.flush(fh, CMD)
        fs.release(fh)
        assert fs.wait_idle(30)
        assert s3(engine, bucket, name).mode == mode
        assert stat.S_IMODE(make_fs(engine, bucket).getattr(f"/{name}")["st_mode"]) == mode
    fh = fs.create("/p600", WR, stat.S_IFREG | 0o666).fh  # a create that finds the file: O_TRUNC
    fs.write(fh, b"new", 0, CMD)
    fs.flush(fh, CMD)
    fs.release(fh)
    assert fs.wait_idle(30)
    assert s3(engine, bucket, "p600").mode == 0o600


def test_overwriting_keeps_the_mode_and_drops_the_stored_time(engine, bucket, fs):
    before = time.time_ns() // 10**9 * 10**9
    write_file(fs, "/o", b"one")
    fs.set_mode("/o", 0o604)
    fs.set_times("/o", (T1, T1))
    write_file(fs, "/o", b"two, longer")  # > o: new data, same file
    fs.wait_idle(10)
    st = make_fs(engine, bucket).getattr("/o")
    assert stat.S_IMODE(st["st_mode"]) == 0o604 and st["st_mtime"] >= before
    assert st["st_size"] == 11


def test_attributes_never_overwrite_a_live_writer_or_a_read_only_mount(engine, bucket, fs):
    w = engine.open_writer(bucket, "live")  # another machine's writer holds the stream
    try:
        w.write(b"growing")
        w.flush()
        with pytest.raises(errors.Busy) as e:
            fs.set_times("/live", (T1, T1))
        assert e.value.errno == errno.EBUSY and "s3://" in str(e.value)
        assert engine.stat(bucket, "live").manifest.writer_id == w.writer_id
    finally:
        w.close()
    write_file(fs, "/r", b"1")
    ro = make_fs(engine, bucket, read_only=True)
    with pytest.raises(errors.ReadOnly):
        ro.set_times("/r", (T1, T1))
    with pytest.raises(errors.ReadOnly):
        ro.set_mode("/r", 0o600)
    with pytest.raises(errors.NotFound):
        fs.set_times("/nope", (T1, T1))
    assert engine.stat(bucket, "r").manifest.mtime_ns is None


def test_objects_keep_attributes_in_their_metadata_and_markers_where_the_server_does(engine, bucket, fs, caplog):
    engine.store.put(bucket, "obj", b"plain", content_type="text/plain")
    fs.set_times("/obj", (T1, T1))
    fs.set_mode("/obj", 0o640)
    assert stat.S_IMODE(fs.getattr("/obj")["st_mode"]) == 0o440  # shown at once
    assert engine.store.head(bucket, "obj").metadata == {}  # stored a moment later, both in one copy
    fs.wait_idle(10)
    st = make_fs(engine, bucket).getattr("/obj")
    # Kept as s3fs-fuse keeps them; shown without write bits (objects are read-only here).
    assert st["st_mtime"] == T1 and stat.S_IMODE(st["st_mode"]) == 0o440
    info = engine.store.head(bucket, "obj")
    assert info.metadata["mode"] == str(stat.S_IFREG | 0o640) and info.metadata["mtime"] == "1577934245.123456789"
    assert info.content_type == "text/plain" and engine.store.get(bucket, "obj")[0] == b"plain"
    fs.mkdir("/dir")
    caplog.set_level(logging.INFO, "s3pipefs.fs")
    fs.set_times("/dir", (T1, T1))
    fs.set_mode("/dir", 0o700)
    # SeaweedFS drops a directory marker's user metadata: the log says so once, and the
    # directory keeps them in its folder object instead.
    assert engine.store.head(bucket, "dir/").metadata == {}
    fs.wait_idle(10)  # (held a moment, like an object's, then put in one go)
    st = make_fs(engine, bucket).getattr("/dir")
    assert st["st_mode"] == stat.S_IFDIR | 0o700 and st["st_mtime"] == T1
    assert engine.store.head(bucket, "dir_$folder$").metadata["mode"] == str(stat.S_IFDIR | 0o700)
    assert caplog.text.count("keeps no metadata on directory markers") == 1


def test_attributes_on_an_s3pipe2_stream_leave_its_own_section_alone(engine, bucket, fs):
    from tests.test_streams import write_s3pipe2_stream

    write_s3pipe2_stream(engine.store, bucket, "old", [b"ab", b"cde"])
    fs.set_times("/old", (T1, T1))
    body = engine.store.get(bucket, "old/.manifest")[0].decode()
    cp = configparser.RawConfigParser()
    cp.read_string(body)
    assert dict(cp["s3pipe2"]) == {"version": "0.1", "segment_size": "100", "upload_began": "2015-06-01T10:00:00.000001",
                                   "completed": "true", "num_segments": "2", "total_size": "5",
                                   "upload_ended": "2015-06-01T10:05:00.000001"}
    other = make_fs(engine, bucket)
    assert other.getattr("/old")["st_mtime"] == T1
    assert other.read(other.open("/old", os.O_RDONLY).fh, 10, 0) == b"abcde"


def test_prefix_mount_sees_only_its_prefix(engine, bucket):
    engine.store.put(bucket, "outside", b"o")
    fs = make_fs(engine, bucket, prefix="inner/")
    write_file(fs, "/f", b"inside")
    assert engine.stat(bucket, "inner/f").complete
    assert {n for n, _ in fs.readdir("/")} == {".", "..", "f"}


# -- caching costs -------------------------------------------------------------------------

class Counting:
    """Wraps a Store and counts its calls by method."""

    def __init__(self, store):
        self._store = store
        self.calls: dict[str, int] = {}

    def __getattr__(self, name):
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def counted(*a, **k):
            self.calls[name] = self.calls.get(name, 0) + 1
            return attr(*a, **k)
        return counted

    def total(self) -> int:
        return sum(self.calls.values())


def test_ls_l_of_many_streams_costs_one_listing_per_ttl(engine, bucket):
    n = 40
    for i in range(n):
        with engine.open_writer(bucket, f"many/s{i:03d}", "create") as w:
            w.write(b"x" * i)
    counting = Counting(engine.store)
    eng = Engine(counting, engine.cfg)
    fs = make_fs(eng, bucket, metadata_ttl=30)

    def ls_l():
        names = [n for n, _ in fs.readdir("/many") if n not in (".", "..")]
        return {name: fs.getattr(f"/many/{name}")["st_size"] for name in names}

    sizes = ls_l()
    assert sizes == {f"s{i:03d}": i for i in range(n)}
    first = counting.total()
    assert first <= n + 5  # one LIST (+ the directory's own stat) and one manifest GET per stream
    counting.calls.clear()
    for _ in range(3):
        assert ls_l() == sizes
    assert counting.total() == 0, counting.calls
    # This mount's own change shows at once and costs one new listing.
    fs.unlink("/many/s000")
    counting.calls.clear()
    assert "s000" not in ls_l()


# -- reading growing streams -----------------------------------------------------------------

def test_reads_follow_a_growing_stream_to_its_end(fs, engine, bucket):
    data = blob(6 * SEG + 11, 9)
    w = engine.open_writer(bucket, "grow", "create")
    w.write(data[:SEG])
    w.flush()
    opened = fs.open("/grow", os.O_RDONLY)
    assert opened.direct_io  # past the stat'd size the kernel must still ask us

    def feed():
        for i in range(SEG, len(data), SEG // 2):
            time.sleep(0.05)
            w.write(data[i:i + SEG // 2])
        w.close()
    t = threading.Thread(target=feed)
    t.start()
    out, off = [], 0
    while b := fs.read(opened.fh, 100_000, off):
        out.append(b)
        off += len(b)
    t.join()
    fs.release(opened.fh)
    assert b"".join(out) == data
    # Complete now. The first open finds the cached stat behind (direct I/O: the kernel's
    # size may be stale too); from then on the page cache is used and kept while unchanged.
    o1 = fs.open("/grow", os.O_RDONLY)
    o2 = fs.open("/grow", os.O_RDONLY)
    assert o1.direct_io and not o1.keep_cache
    assert not o2.direct_io and o2.keep_cache
    fs.release(o1.fh)
    fs.release(o2.fh)


def test_a_read_waiting_on_a_growing_stream_can_be_interrupted(fs, engine, bucket):
    """Ctrl-C on `cat growing.log`: EINTR at once, not when the writer next writes."""
    w = engine.open_writer(bucket, "paused", "create")
    w.write(b"p" * 10)
    w.flush()
    fh = fs.open("/paused", os.O_RDONLY).fh
    assert fs.read(fh, 100, 0, lambda: False) == b"p" * 10
    t0 = time.monotonic()
    with pytest.raises(errors.Interrupted) as e:
        fs.read(fh, 100, 10, lambda: time.monotonic() - t0 > 0.3)
    assert e.value.errno == errno.EINTR and time.monotonic() - t0 < 2
    # The abandoned read is picked up by the retry once the writer goes on.
    threading.Timer(0.3, lambda: (w.write(b"q" * 5), w.close())).start()
    assert fs.read(fh, 100, 10, lambda: False) == b"q" * 5
    assert fs.read(fh, 100, 15, lambda: False) == b""
    fs.release(fh)


def test_the_process_writing_a_file_never_waits_reading_it_through_another_descriptor(fs, engine, bucket):
    """It would wait for bytes only its own writes bring: it reads every byte it wrote,
    uploaded or not, then the end at once. Another process (another lock owner) follows
    the file as it grows."""
    fh = fs.create("/own", WR).fh
    fs.write(fh, b"a" * 2 * SEG, 0, CMD)
    fs.fsync(fh)  # two segments uploaded
    fs.write(fh, b"b" * 10, 2 * SEG, CMD)  # not uploaded
    fs.ns.invalidate("/own")
    rh = fs.open("/own", os.O_RDONLY).fh
    never = lambda: False  # noqa: E731
    assert fs.read(rh, 100, 0, never, owner=CMD) == b"a" * 100
    assert fs.read(rh, 100, 2 * SEG, never, owner=CMD) == b"b" * 10
    for interrupted in (never, None):  # with and without a follower pool
        t0 = time.monotonic()
        assert fs.read(rh, 100, 2 * SEG + 10, interrupted, owner=CMD) == b""
        assert time.monotonic() - t0 < 1
    t0 = time.monotonic()
    with pytest.raises(errors.Interrupted):  # another process waited until interrupted
        fs.read(rh, 100, 2 * SEG + 10, lambda: time.monotonic() - t0 > 0.3, owner=SHELL)
    threading.Timer(0.3, lambda: fs.write(fh, b"c" * 5, 2 * SEG + 10, CMD)).start()
    assert fs.read(rh, 100, 2 * SEG + 10, never, owner=SHELL) == b"c" * 5  # and it follows
    fs.flush(fh, CMD)
    fs.release(fh)
    assert fs.wait_idle(30)
    assert fs.read(rh, 100, 2 * SEG, never, owner=CMD) == b"b" * 10 + b"c" * 5
    assert fs.read(rh, 100, 2 * SEG + 15, never, owner=SHELL) == b""  # committed: the end
    fs.release(rh)


def test_a_reader_on_the_writing_mount_gets_every_byte_then_the_end_at_the_commit(fs, engine, bucket):
    """Opened before anything is written (nothing in S3): it waits, reads bytes still in
    staging, follows the writer, and reaches the end only when the file is committed."""
    fh = fs.create("/live", WR).fh
    rh = fs.open("/live", os.O_RDONLY).fh  # was EBUSY: nothing uploaded yet
    never = lambda: False  # noqa: E731
    data = blob(3 * SEG + 77)
    got = bytearray()

    def follow():
        while True:
            piece = fs.read(rh, 50_000, len(got), never, owner=SHELL)
            if not piece:
                return
            got.extend(piece)
    reader = threading.Thread(target=follow)
    reader.start()
    for i in range(0, len(data), 10_000):
        fs.write(fh, data[i:i + 10_000], i, CMD)
        assert fs.getattr("/live")["st_size"] == min(i + 10_000, len(data))
        time.sleep(0.02)
    deadline = time.monotonic() + 5
    while len(got) < len(data) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert bytes(got) == data and reader.is_alive()  # every byte, and still following
    fs.flush(fh, CMD)
    fs.release(fh)
    reader.join(10)
    assert not reader.is_alive() and bytes(got) == data  # the end came with the commit
    fs.release(rh)


def test_a_reader_on_the_writing_mount_gets_eio_when_the_writer_fails(fs, engine, bucket):
    fh = fs.create("/failing", WR).fh
    fs.write(fh, b"x" * 100, 0, CMD)
    rh = fs.open("/failing", os.O_RDONLY).fh
    assert fs.read(rh, 1000, 0, lambda: False, owner=SHELL) == b"x" * 100
    fs.handles.get(fh).stream_writer.abort()  # as an upload failure would
    fs.handles.get(fh)._fail(errors.S3PipeError("upload failed"))
    with pytest.raises(errors.StreamIncomplete) as e:
        fs.read(rh, 1000, 100, lambda: False, owner=SHELL)
    assert e.value.errno == errno.EIO
    fs.release(rh)
    fs.release(fh)


def test_a_reader_of_a_file_replaced_on_this_mount_reads_the_new_bytes(fs, engine, bucket):
    write_file(fs, "/rep", b"old" * SEG)
    assert fs.wait_idle(30)
    fh = fs.open("/rep", os.O_WRONLY | os.O_TRUNC).fh
    new = blob(2 * SEG + 5, seed=7)
    fs.write(fh, new, 0, CMD)
    fs.fsync(fh)  # landed under the replacement's staging prefix, no manifest names them
    rh = fs.open("/rep", os.O_RDONLY).fh
    assert fs.read(rh, 3 * SEG, 0, lambda: False, owner=SHELL) == new
    fs.flush(fh, CMD)
    fs.release(fh)
    assert fs.wait_idle(30)
    assert fs.read(rh, 3 * SEG, 0, lambda: False, owner=SHELL) == new
    assert fs.read(rh, 10, len(new), lambda: False, owner=SHELL) == b""
    fs.release(rh)


def test_a_read_waiting_on_a_dead_writer_fails_with_eio(fs, engine, bucket):
    w = engine.open_writer(bucket, "dies", "create")
    w.write(b"z" * SEG)
    w.flush()
    fh = fs.open("/dies", os.O_RDONLY).fh
    assert fs.read(fh, SEG, 0) == b"z" * SEG
    w.abort()  # the writer stops without completing
    with pytest.raises(errors.StreamIncomplete) as e:
        fs.read(fh, 10, SEG)
    assert e.value.errno == errno.EIO and "incomplete" in str(e.value)
    fs.release(fh)


# -- shutdown and failures --------------------------------------------------------------------

def test_shutdown_makes_open_writes_durable_and_leaves_the_stream_incomplete(engine, bucket):
    fs = make_fs(engine, bucket)
    fh = fs.create("/unfinished", WR).fh
    fs.write(fh, b"k" * (2 * SEG + 5), 0, CMD)
    fs.shutdown(0.2)
    e = s3(engine, bucket, "unfinished")
    assert e is not None and not e.complete and e.size == 2 * SEG + 5 and not e.writer_alive
    with pytest.raises(fserrors.ShuttingDown):
        fs.write(fh, b"k", 2 * SEG + 5, CMD)
    with pytest.raises(fserrors.ShuttingDown):
        fs.flush(fh, CMD)
    fs.release(fh)
    assert fs.wait_idle(5)
    assert not s3(engine, bucket, "unfinished").complete  # never completed short
    with pytest.raises(fserrors.ShuttingDown):
        fs.create("/new", WR)
    # It can be appended to later (resumed).
    fs2 = make_fs(engine, bucket)
    fh = fs2.open("/unfinished", os.O_WRONLY | os.O_APPEND).fh
    fs2.write(fh, b"!", 0, CMD)
    fs2.flush(fh, CMD)
    fs2.release(fh)
    assert read_file(fs2, "/unfinished") == b"k" * (2 * SEG + 5) + b"!"


def test_shutdown_waits_for_writers_that_close_within_the_grace(engine, bucket):
    fs = make_fs(engine, bucket)
    fh = fs.create("/closing", WR).fh
    fs.write(fh, b"c" * 10, 0, CMD)

    def close_soon():
        time.sleep(0.3)
        fs.flush(fh, CMD)
        fs.release(fh)
    t = threading.Thread(target=close_soon)
    t.start()
    fs.shutdown(5)
    t.join()
    assert s3(engine, bucket, "closing").complete


class FakeWriter:
    def __init__(self, fail_on_write=None, fail_on_close=False):
        self.offset = self.sealed = 0
        self.closed = False
        self.aborted = False
        self.fail_on_write = fail_on_write
        self.fail_on_close = fail_on_close
        self.mode = self.mtime_ns = self.uid = self.gid = None  # attributes for the manifest, as StreamWriter has

    def write(self, data):
        if self.fail_on_write is not None and self.offset >= self.fail_on_write:
            raise errors.EndpointError("s3://b/k: connection to the endpoint failed (test)")
        self.offset += len(data)

    def pwrite(self, offset, data):
        assert offset == self.offset, "these tests write in order"
        self.write(data)

    def flush(self):
        pass

    def close(self):
        if self.fail_on_close:
            self.abort()
            raise errors.IntegrityError("s3://b/k: server rejected the upload's checksum (test)")
        self.closed = True

    def abort(self):
        self.closed = self.aborted = True


def test_a_failed_write_aborts_and_every_later_call_reports_it():
    w = FakeWriter(fail_on_write=10)
    h = WriteHandle("/k", "s3://b/k", lambda mode: w, mode="create", size=0, append=False)
    h.write(b"x" * 10, 0, CMD)
    with pytest.raises(errors.EndpointError):
        h.write(b"x", 10, CMD)
    assert w.aborted
    for call in (lambda: h.write(b"x", 10, CMD), h.fsync, lambda: h.flush(CMD)):
        with pytest.raises(errors.EndpointError):
            call()
    assert not h.needs_final_work()
    h.release()  # nothing to commit: the stream stays incomplete


def test_a_failed_commit_is_returned_by_close_and_never_retried_as_complete():
    w = FakeWriter(fail_on_close=True)
    h = WriteHandle("/k", "s3://b/k", lambda mode: w, mode="create", size=0, append=False)
    h.write(b"abc", 0, CMD)
    with pytest.raises(errors.IntegrityError):
        h.flush(CMD)
    assert w.aborted
    with pytest.raises(errors.IntegrityError):
        h.flush(CMD)  # a second close of a dup says so again
    assert not h.needs_final_work()


def test_an_rsync_style_file_costs_few_requests(engine, bucket):
    # rsync -a writes ".name.XXXXXX", closes it, sets its mtime and mode, renames it over
    # "name". Measured with this sequence: 30.2 requests a file before the rename's copy
    # reused its lookup, the bucket was checked once per process instead of per new
    # stream, and a closing writer skipped its last progress manifest; 26.7 since.
    counting = Counting(engine.store)
    fs = make_fs(Engine(counting, engine.cfg), bucket, metadata_ttl=30)
    fs.readdir("/")
    counting.calls.clear()
    n = 6
    for i in range(n):
        tmp = f"/.f{i}.Xy12Ab"
        fh = fs.create(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL).fh
        fs.write(fh, blob(5000, i), 0, CMD)
        fs.flush(fh, CMD)
        fs.release(fh)
        assert fs.wait_idle(30)
        fs.set_times(tmp, (1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
        fs.set_mode(tmp, 0o640)
        fs.rename(tmp, f"/f{i}")
    calls = dict(counting.calls)
    # bucket_seen asks the server at most once for the whole run, not per file.
    requests = sum(calls.values()) - calls.pop("bucket_seen", 0) + 1
    assert requests / n <= 28, (requests / n, counting.calls)
    for i in range(n):
        st = fs.getattr(f"/f{i}")
        assert (st["st_size"], st["st_mtime"], stat.S_IMODE(st["st_mode"])) == \
            (5000, 1_700_000_000_123_456_789, 0o640)
        assert read_file(fs, f"/f{i}") == blob(5000, i)
    fs.shutdown(0)


def test_the_daemon_log_keeps_our_tracebacks_and_drops_the_sdks(tmp_path):
    from s3pipefs.fs.daemon import setup_logging

    target = tmp_path / "log" / "s3pipefs.log"
    saved = logging.getLogger().handlers[:], logging.getLogger().level
    try:
        setup_logging(str(target), foreground=False, debug=False, verbose=False)
        for name in ("botocore.credentials", "s3pipefs.fs.operations"):
            try:
                raise RuntimeError(f"raised under {name}")
            except RuntimeError:
                logging.getLogger(name).warning("logged by %s", name, exc_info=True)
        for h in logging.getLogger().handlers:
            h.flush()
        text = target.read_text()
    finally:
        root = logging.getLogger()
        for h in root.handlers[:]:
            root.removeHandler(h)
            h.close()
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
    assert "logged by botocore.credentials" in text and "raised under botocore" not in text
    assert "logged by s3pipefs.fs.operations" in text
    assert "Traceback" in text and "RuntimeError: raised under s3pipefs.fs.operations" in text
