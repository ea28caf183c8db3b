"""Readers of one mount share a read-ahead budget (engine/reader.py ReadBudget)."""
import os

from s3pipefs.config import KiB, TransferConfig
from s3pipefs.engine import Engine
from s3pipefs.engine.reader import ReadBudget

SEG = 64 * KiB


def test_readers_share_the_budget_and_get_it_back(store, bucket):
    cfg = TransferConfig(segment_size=SEG, workers=4, prefetch=8, read_ahead=8 * SEG, cache_size=SEG)
    data = {}
    for name in ("a", "b", "c", "d"):
        data[name] = os.urandom(32 * SEG + 5)
        w = Engine(store, cfg).open_writer(bucket, name)
        w.write(data[name])
        w.close()
    budget = ReadBudget(4 * SEG)
    eng = Engine(store, cfg, read_budget=budget)

    first = eng.open_reader(bucket, "a")
    assert first.read(0, 10) == data["a"][:10]
    assert first.window == 4 and len(first._futs) <= 4  # its share: 4 segments, not read_ahead's 8

    others = [eng.open_reader(bucket, n) for n in ("b", "c", "d")]
    assert budget.readers == 4
    pos = 10
    while pos < len(data["a"]):  # walk on: prefetch now stays within a quarter of the budget
        got = first.read(pos, 3 * SEG)
        assert got == data["a"][pos:pos + len(got)]
        pos += len(got)
        assert first.window == 1 and len(first._futs) <= 1
    for r, n in zip(others, ("b", "c", "d")):
        open_now = budget.readers  # 4, then 3, then 2: the share grows as readers close
        assert b"".join(bytes(c) for c in r.chunks(0)) == data[n]
        assert r.window == max(1, 4 // open_now)
        r.close()
    assert budget.readers == 1
    assert first.read(0, 5) == data["a"][:5] and first.window == 4
    first.close()
    first.close()  # closing twice gives nothing back twice
    assert budget.readers == 0


def test_without_a_budget_each_reader_has_its_read_ahead(store, bucket):
    cfg = TransferConfig(segment_size=SEG, workers=4, prefetch=8, read_ahead=6 * SEG)
    w = Engine(store, cfg).open_writer(bucket, "s")
    w.write(os.urandom(20 * SEG))
    w.close()
    readers = [Engine(store, cfg).open_reader(bucket, "s") for _ in range(3)]
    for r in readers:
        r.read(0, 1)
        assert r.window == 6
        r.close()


def test_a_sequential_read_opens_its_window_gradually(store, bucket):
    """Slow start: 2 units ahead, then 4, then the window; a seek starts over. Opening the
    whole window at once made the next unit share the server with seven others."""
    cfg = TransferConfig(segment_size=SEG, workers=8, prefetch=8, read_ahead=8 * SEG)
    data = os.urandom(40 * SEG)
    w = Engine(store, cfg).open_writer(bucket, "s")
    w.write(data)
    w.close()
    with Engine(store, cfg).open_reader(bucket, "s") as r:
        assert r.read(0, 10) == data[:10]
        assert not r._futs  # a first read may be a seek: one unit, nothing ahead
        for k, ahead in [(1, 2), (2, 4), (3, 8), (4, 8), (5, 8)]:
            assert r.read(k * SEG + 3, 10) == data[k * SEG + 3:k * SEG + 13]
            assert max(r._futs) == k + ahead - 1, (k, sorted(r._futs))
        assert r.read(5 * SEG + 100, 10) == data[5 * SEG + 100:5 * SEG + 110]  # same unit
        assert max(r._futs) <= 5 + 8  # the window, never more
        assert r.read(30 * SEG, 10) == data[30 * SEG:30 * SEG + 10]  # a seek
        assert r.read(31 * SEG, 10) == data[31 * SEG:31 * SEG + 10]
        assert max(r._futs) == 32
