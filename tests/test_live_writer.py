"""A writer's bytes before they are whole segments, on the in-memory store (s3/inmemory.py).

Short segments: a writer holding bytes longer than ``flush_interval`` publishes them in a
short segment, the layout records it, and a reader that knows only s3pipe2's keys (or
`cat 0*` of the segments) still reads the stream. Staged reads: a reader in the writer's
own process gets every byte written so far from the writer (StreamWriter.read_staged and
engine/live.py), landed segments from S3.
"""
from __future__ import annotations

import configparser
import os
import threading
import time

import pytest

from s3pipefs import errors, manifest as mf
from s3pipefs.config import TransferConfig
from s3pipefs.engine import Engine, manifests
from s3pipefs.engine.verify import verify_stream
from s3pipefs.s3.inmemory import MemoryStore

SEG = 1024


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    s.create_bucket("b")
    return s


def engine(store, tmp_path, **kw) -> Engine:
    cfg = TransferConfig(segment_size=SEG, workers=3, staging_dir=str(tmp_path), tries=3, **kw)
    return Engine(store, cfg)


def published(store, key="s") -> mf.Manifest | None:
    loaded = manifests.load(store, "b", key + "/")
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
