"""A writer's bytes before they are whole segments, on the in-memory store (s3/inmemory.py).

Short segments: a writer holding bytes longer than ``flush_interval`` publishes them in a
short segment, the layout records it, and a reader that knows only s3pipe2's keys (or
`cat 0*` of the segments) still reads the stream. Staged reads: a reader in the writer's
own process gets every byte written so far from the writer (StreamWriter.read_staged and
engine/live.py), landed segments from S3.
"""
from __future__ import annotations

import configparser
import hashlib
import errno
import os
import threading
import time

import pytest

from s3pipefs import errors, manifest as mf
from s3pipefs.config import S3Config, TransferConfig
from s3pipefs.engine import Engine, manifests
from s3pipefs.engine.verify import verify_stream
from s3pipefs.s3 import Store
from s3pipefs.s3.inmemory import MemoryStore
from tests.conftest import unique_name

SEG = 1024


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    s.create_bucket("b")
    return s


def engine(store, tmp_path, **kw) -> Engine:
    cfg = TransferConfig(segment_size=SEG, workers=3, staging_dir=str(tmp_path), tries=3, **kw)
    return Engine(store, cfg)


def published(store, key="s", bucket="b") -> mf.Manifest | None:
    loaded = manifests.load(store, bucket, key + "/")
    return loaded.manifest if loaded is not None else None


def wait_published(store, size: int, timeout: float = 5.0) -> float:
    """Seconds until the manifest names ``size`` bytes; fails after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        m = published(store)
        if m is not None and m.total_size >= size:
            return time.monotonic() - t0
        time.sleep(0.02)
    pytest.fail(f"{size} bytes not published within {timeout}s: {published(store)}")


def s3pipe2_read(store, key="s") -> bytes:
    """What s3pipe2's reader and `cat 0*` do: the [s3pipe2] keys, then segments 1..n in order."""
    body, _ = store.get("b", key + "/.manifest")
    cp = configparser.RawConfigParser()
    cp.read_string(body.decode())
    sec = cp["s3pipe2"]
    n, total = int(sec["num_segments"]), int(sec["total_size"])
    names = sorted(o.key for o in store.list("b", key + "/") if mf.segment_index(o.key.rsplit("/", 1)[1]))
    assert names == [f"{key}/{mf.segment_name(i)}" for i in range(1, n + 1)]
    data = b"".join(store.get("b", k)[0] for k in names)
    assert len(data) == total
    return data


# -- short segments ------------------------------------------------------------------------------

def test_a_slow_writer_is_published_within_the_flush_interval(store, tmp_path):
    eng = engine(store, tmp_path, flush_interval=0.3)
    w = eng.open_writer("b", "s")
    lines = [f"line {i}\n".encode() for i in range(3)]
    for i, line in enumerate(lines):
        w.write(line)
        took = wait_published(store, sum(map(len, lines[:i + 1])))
        assert took < 0.3 + 1.0  # the interval, a manifest round and the upload
    m = published(store)
    assert not m.completed and m.layout == mf.Layout.from_sizes(map(len, lines))
    w.write(b"x" * (2 * SEG + 5))  # whole segments after short ones start at the next index
    w.close()
    m = published(store)
    data = b"".join(lines) + b"x" * (2 * SEG + 5)
    assert m.completed and m.total_size == len(data)
    assert m.layout.render() == "3x7,2x1024,1x5"
    with eng.open_reader("b", "s", follow=False) as r:
        assert r.read(0, len(data) + 1) == data
    assert s3pipe2_read(store) == data


def test_flush_interval_zero_publishes_whole_segments_only(store, tmp_path):
    eng = engine(store, tmp_path, flush_interval=0)
    w = eng.open_writer("b", "s")
    w.write(b"a" * 10)
    time.sleep(1.0)
    assert published(store).total_size == 0
    w.write(b"a" * SEG)
    wait_published(store, SEG)
    assert published(store).layout.render() == "1x1024"
    w.close()
    assert s3pipe2_read(store) == b"a" * (SEG + 10)


def test_a_writer_that_keeps_writing_is_never_sealed_short(store, tmp_path):
    """Bytes that fill a segment within the interval go out as whole segments."""
    eng = engine(store, tmp_path, flush_interval=0.5)
    with eng.open_writer("b", "s") as w:
        for _ in range(8 * 4):
            w.write(b"z" * (SEG // 4))
            time.sleep(0.02)
    assert published(store).layout.render() == "8x1024"


def test_short_segments_stretch_the_interval_as_the_layout_grows(store, tmp_path, monkeypatch):
    from s3pipefs.engine import writer as writer_mod

    monkeypatch.setattr(writer_mod, "SHORT_RUNS_AT_FULL_RATE", 2)
    monkeypatch.setattr(writer_mod, "MAX_SHORT_RUNS", 4)
    eng = engine(store, tmp_path, flush_interval=0.1)
    w = eng.open_writer("b", "s")
    intervals = []
    for n in range(1, 5):  # sizes 1, 2, 3, 4: a layout run each
        intervals.append(w._flush_interval())
        w.write(b"q" * n)
        wait_published(store, n * (n + 1) // 2)
    assert intervals[:3] == pytest.approx([0.1, 0.1, 0.1]) and intervals[3] == pytest.approx(0.15)
    assert w._flush_interval() == 0  # the cap: whole segments only from now on
    w.write(b"q")
    time.sleep(0.6)
    assert published(store).total_size == 10
    w.close()
    assert published(store).layout.render() == "1x1,1x2,1x3,1x4,1x1"
    assert s3pipe2_read(store) == b"q" * 11


def test_resume_and_append_continue_a_stream_of_short_segments(store, tmp_path):
    eng = engine(store, tmp_path, flush_interval=0.1)
    w = eng.open_writer("b", "s")
    w.write(b"12345")
    wait_published(store, 5)
    w.write(b"678")
    wait_published(store, 8)
    w.abort()
    with eng.open_writer("b", "s", mode="resume") as w:
        w.write(b"12345678abc")
    with eng.open_writer("b", "s", mode="append") as w:
        w.write(b"def")
    m = published(store)
    assert m.completed and m.layout.render() == "1x5,3x3"
    assert s3pipe2_read(store) == b"12345678abcdef"
    assert verify_stream(eng, "b", "s").ok  # the digest chain covers short segments too


# -- staged reads ----------------------------------------------------------------------------------

def test_read_staged_serves_the_current_and_sealed_segments_and_none_for_landed_ones(store, tmp_path):
    eng = engine(store, tmp_path, flush_interval=0)
    gate = threading.Event()
    real_put = store.put

    def held_put(bucket, key, body, **kw):  # segment 2 and later wait: they stay sealed, not landed
        if mf.segment_index(key.rsplit("/", 1)[1]) not in (None, 1):
            gate.wait(10)
        return real_put(bucket, key, body, **kw)
    store.put = held_put
    w = eng.open_writer("b", "s")
    data = os.urandom(3 * SEG + 100)
    w.write(data)
    assert w.read_staged(len(data), 10) == b""  # the end of what was written
    assert w.read_staged(3 * SEG + 50, 1000) == data[3 * SEG + 50:]  # the current segment
    assert w.read_staged(SEG + 10, 5000) == data[SEG + 10:2 * SEG]  # sealed: never past its end
    deadline = time.monotonic() + 5
    while w.read_staged(10, 10) is not None:  # segment 1 lands: read it from S3
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert w.landed() == ("s/", mf.Layout.from_sizes([SEG]))
    with eng.open_live_reader(w) as r:
        got = b""
        while len(got) < len(data):
            piece = r.read(len(got), 700)
            assert piece, len(got)
            got += piece
        assert got == data and r.read(len(data), 10) == b""
        assert published(store).total_size <= SEG  # what was read was mostly never published
        gate.set()
        w.close()
    assert s3pipe2_read(store) == data


def test_a_live_reader_follows_a_writer_as_it_writes(store, tmp_path):
    eng = engine(store, tmp_path, flush_interval=0.2)
    w = eng.open_writer("b", "s")
    written = []

    def produce():
        for i in range(40):
            chunk = os.urandom(97 + 13 * i)
            written.append(chunk)
            w.write(chunk)
            time.sleep(0.01)
        w.close()
    t = threading.Thread(target=produce)
    t.start()
    got = bytearray()
    with eng.open_live_reader(w) as r:
        while not (w.closed and len(got) == w.offset):
            piece = r.read(len(got), 1000)
            if piece:
                got += piece
            else:
                w.wait_written(len(got), 0.5)
    t.join()
    assert bytes(got) == b"".join(written)


def test_reads_through_a_failed_writer_raise_its_error(store, tmp_path):
    eng = engine(store, tmp_path)
    w = eng.open_writer("b", "s")
    w.write(b"abc")
    r = eng.open_live_reader(w)
    assert r.read(0, 10) == b"abc"
    waiter = threading.Thread(target=lambda: w.wait_written(3, 10))
    waiter.start()
    w.abort()
    waiter.join(2)
    assert not waiter.is_alive()  # the abort woke the reader waiting at the end
    with pytest.raises(errors.StreamIncomplete) as e:
        r.read(0, 10)
    assert e.value.errno == errno.EIO
    r.close()


def test_a_live_reader_of_an_append_reads_the_old_bytes_from_s3(store, tmp_path):
    eng = engine(store, tmp_path, flush_interval=0)
    old = os.urandom(2 * SEG + 3)
    with eng.open_writer("b", "s") as w:
        w.write(old)
    w = eng.open_writer("b", "s", mode="append")
    w.write(b"new bytes")
    with eng.open_live_reader(w) as r:
        assert r.read(0, 3 * SEG) == old  # the landed segments, up to the end of their run
        assert r.read(2 * SEG, SEG) == old[2 * SEG:]
        assert r.read(len(old), SEG) == b"new bytes"
    w.close()


def test_a_live_reader_of_a_replacement_reads_the_new_bytes(store, tmp_path):
    eng = engine(store, tmp_path, flush_interval=0)
    with eng.open_writer("b", "s") as w:
        w.write(b"o" * (3 * SEG))
    w = eng.open_writer("b", "s")  # over a complete stream: staged under .next-<id>/
    new = os.urandom(2 * SEG + 1)
    w.write(new)
    w.flush()
    assert w.landed()[0].startswith("s/.next-")
    with eng.open_live_reader(w) as r:
        assert r.read(0, SEG) + r.read(SEG, SEG) + r.read(2 * SEG, SEG) == new
    w.close()


# -- the timed seal and the writable tail of a mount (hold_back) ---------------------------------

def test_a_mount_writer_keeps_its_tail_writable_while_busy_and_publishes_it_once_quiet(store, tmp_path):
    eng = engine(store, tmp_path, flush_interval=0.4)
    w = eng.open_writer("b", "s", hold_back=SEG)
    model = bytearray()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.9:  # past the interval, never quiet for half of it
        model += b"%d," % len(model)
        w.write(bytes(model[w.offset:]))
        time.sleep(0.05)
    assert w.sealed == 0 and published(store).total_size == 0
    w.pwrite(0, b"HEADER")  # as zip patches a header it wrote long ago: still unsealed
    model[0:6] = b"HEADER"
    took = wait_published(store, len(model))  # quiet now: the tail goes out
    assert took < 0.2 + 1.0 and w.sealed == len(model)
    with pytest.raises(errors.SeekNotAllowed):
        w.pwrite(0, b"late")  # sealed: refused, nothing changes
    assert w.read_staged(0, 6) in (None, b"HEADER")  # uploading or landed, never changed
    w.close()
    m = published(store)
    assert m.completed and m.total_size == len(model) and m.sha256 == hashlib.sha256(model).hexdigest()
    assert s3pipe2_read(store) == bytes(model)
    assert verify_stream(eng, "b", "s").ok


def test_a_busy_mount_writer_is_still_published_within_a_few_intervals(store, tmp_path):
    from s3pipefs.engine import writer as writer_mod

    interval = 0.1
    eng = engine(store, tmp_path, flush_interval=interval)
    w = eng.open_writer("b", "s", hold_back=SEG)
    t0 = time.monotonic()
    while published(store).total_size == 0:  # a trickle, never quiet for half an interval
        w.write(b"t")
        time.sleep(0.01)
        assert time.monotonic() - t0 < writer_mod.HELD_TAIL_INTERVALS * interval + 1.0
    assert time.monotonic() - t0 >= writer_mod.HELD_TAIL_INTERVALS * interval * 0.9  # not before the cap
    w.close()
    assert s3pipe2_read(store) == b"t" * w.offset


def test_read_staged_reads_the_held_back_tail_with_its_patches(store, tmp_path):
    eng = engine(store, tmp_path, flush_interval=0)
    w = eng.open_writer("b", "s", hold_back=SEG)
    data = bytearray(os.urandom(SEG + 300))
    w.write(bytes(data))  # a full segment held back, and a partial one
    w.pwrite(SEG - 2, b"XXXX")  # across the two
    data[SEG - 2:SEG + 2] = b"XXXX"
    w.truncate(SEG + 200)
    del data[SEG + 200:]
    assert w.sealed == 0
    assert w.read_staged(SEG - 2, 100) == b"XX"  # never past a segment's end
    assert w.read_staged(SEG, 1000) == bytes(data[SEG:])
    with eng.open_live_reader(w) as r:
        assert r.read(0, SEG) + r.read(SEG, SEG) == bytes(data)
    w.close()
    assert s3pipe2_read(store) == bytes(data)


# -- patchable writers (a mount's O_RDWR files), on the real server ---------------------------------

def real_engine(s3_server, tmp_path, **kw) -> tuple[Engine, str]:
    store = Store(S3Config(endpoint_url=s3_server.endpoint))
    bucket = unique_name("patchable")
    store.create_bucket(bucket)
    cfg = TransferConfig(segment_size=SEG, workers=3, staging_dir=str(tmp_path), tries=3, **kw)
    return Engine(store, cfg), bucket


def wait_landed(w, nbytes: int, timeout: float = 10.0) -> None:
    t0 = time.monotonic()
    while w.progress()["uploaded"] < nbytes:
        assert time.monotonic() - t0 < timeout, w.progress()
        time.sleep(0.02)


def test_a_patchable_writer_rewrites_uploaded_segments_and_commits_right_digests(s3_server, tmp_path):
    eng, bucket = real_engine(s3_server, tmp_path, flush_interval=0.2)
    w = eng.open_writer(bucket, "s", hold_back=SEG, patchable=True)
    data = bytearray(os.urandom(6 * SEG + 100))
    w.write(bytes(data))
    wait_landed(w, 4 * SEG)  # segments 1-4 are in S3...
    segments = [o.key for o in eng.store.list(bucket, "s/") if mf.segment_index(o.key[2:])]
    assert len(segments) >= 4
    time.sleep(0.5)  # ...past the flush interval, and still no manifest names any of them
    assert published(eng.store, "s", bucket).total_size == 0
    assert w.sealed == 0  # every byte may still change
    with eng.open_live_reader(w) as r:
        assert r.read(0, SEG) == bytes(data[:SEG])  # cached by the reader: patched below
        for offset, patch in ((10, b"HEADER"), (2 * SEG - 3, b"across two"), (5 * SEG + 50, b"tail")):
            w.pwrite(offset, patch)
            data[offset:offset + len(patch)] = patch
        # The newest bytes, while a patched segment is staged again and once it landed again.
        got = b"".join(r.read(off, SEG) for off in range(0, len(data), SEG))
        assert got == bytes(data)
        w.pwrite(SEG + 1, b"x")  # brings segment 2 back: segment 1 goes up again
        data[SEG + 1] = ord("x")
        t0 = time.monotonic()
        while w.rewrites < 1:
            assert time.monotonic() - t0 < 10
            time.sleep(0.02)
        assert r.read(0, SEG) == bytes(data[:SEG])
    assert published(eng.store, "s", bucket).total_size == 0
    w.close()
    m = published(eng.store, "s", bucket)
    assert m.completed and m.total_size == len(data) and m.layout.runs[0] == (6, SEG)
    assert m.sha256 == hashlib.sha256(data).hexdigest()
    report = verify_stream(eng, bucket, "s")
    assert report.ok, report.summary()  # each segment's CRC32, the chain and the SHA-256
    assert eng.open_reader(bucket, "s").read(0, len(data)) == bytes(data)


def test_what_a_patchable_writer_published_never_changes(s3_server, tmp_path):
    """fsync (flush) publishes: those bytes are refused, later ones stay patchable; an
    abort leaves a manifest naming only what was published."""
    eng, bucket = real_engine(s3_server, tmp_path)
    w = eng.open_writer(bucket, "s", hold_back=SEG, patchable=True)
    first = os.urandom(2 * SEG + 10)
    w.write(first)
    w.flush()
    assert published(eng.store, "s", bucket).total_size == len(first) == w.sealed
    with pytest.raises(errors.SeekNotAllowed, match="published"):
        w.pwrite(SEG + 5, b"no")
    w.write(os.urandom(3 * SEG))
    wait_landed(w, len(first) + 2 * SEG)
    w.pwrite(len(first) + 1, b"yes")  # held: uploaded after the fsync, not published
    with pytest.raises(errors.SeekNotAllowed):
        w.truncate(len(first) + 5)  # a cut stays within the unsealed tail
    w.abort()
    m = published(eng.store, "s", bucket)
    assert not m.completed and m.total_size == len(first)
    assert eng.open_reader(bucket, "s", follow=False).read(0, 10 * SEG) == first
