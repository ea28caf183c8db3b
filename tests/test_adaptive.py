"""Adaptive concurrency (engine/adaptive.py): the controller against simulated links, then
put and cat against the real server through the project's link-emulating proxy
(bench/wanproxy.py), with a long round trip and a small TCP window per connection, so that
one connection moves only window / rtt and more requests in flight move more.

Assertions are on the controller's decisions and the requests it let into flight, never on
wall time."""
from __future__ import annotations

import hashlib
import heapq
import importlib.util
import io
import sys
import threading
from pathlib import Path

import pytest

from s3pipefs.config import KiB, MiB, S3Config, TransferConfig
from s3pipefs.engine import adaptive, reader as reader_mod
from s3pipefs.engine.core import Engine
from s3pipefs.s3 import Store
from tests.conftest import make_bytes

_SPEC = importlib.util.spec_from_file_location(
    "wanproxy", Path(__file__).resolve().parent.parent / "bench" / "wanproxy.py")
wanproxy = importlib.util.module_from_spec(_SPEC)
sys.modules.setdefault("wanproxy", wanproxy)
_SPEC.loader.exec_module(wanproxy)


# -- the controller on a simulated link ----------------------------------------------------------

class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def simulate(duration_of, *, seconds: float, start: int = 8, cap: int = 64, waits=lambda t, slow: True,
             slow_at: float | None = None, slow_for: float = 0.0, size: int = MiB):
    """Requests of ``size`` bytes, as a reader fetches units: request k may begin once k is
    within ``limit`` of the oldest one not landed, for ``seconds`` of simulated time.
    ``duration_of(n)``: how long a request takes with n in flight. ``waits(t, slow)``: is the
    transfer's side waiting on the network then. The first request begun at or after
    ``slow_at`` takes ``slow_for`` instead. Returns the controller and the limit at each
    completion."""
    clock = Clock()
    ctl = adaptive.Concurrency(start, cap, clock=clock)
    active: list[tuple[float, int, adaptive.Ticket]] = []
    landed: set[int] = set()
    oldest = following = 0
    slow_until = None
    limits = []
    while clock.t < seconds:
        while following < oldest + ctl.limit:
            took = duration_of(len(active) + 1)
            if slow_at is not None and slow_until is None and clock.t >= slow_at:
                took = slow_for
                slow_until = clock.t + slow_for
            heapq.heappush(active, (clock.t + took, following, ctl.begin()))
            following += 1
        end, k, ticket = heapq.heappop(active)
        slow = slow_until is not None and clock.t < slow_until
        if waits(clock.t, slow):
            ctl.waited(end - clock.t)
        clock.t = end
        ctl.end(ticket, size)
        landed.add(k)
        while oldest in landed:
            landed.discard(oldest)
            oldest += 1
        limits.append(ctl.limit)
    return ctl, limits


def latency_bound(n: int) -> float:
    """60 ms round trip, 4 MiB/s per connection (a small window), 100 MiB/s in all."""
    per_connection = min(4 * MiB, 100 * MiB / n)
    return 0.06 + MiB / per_connection


def cpu_bound(n: int) -> float:
    """50 MiB/s in all however many requests share it: more in flight only share it."""
    return n * MiB / (50 * MiB)


def test_latency_bound_link_raises_the_limit_until_the_link_is_full():
    ctl, limits = simulate(latency_bound, seconds=60)
    # 100 MiB/s / (1 MiB / 0.31 s per request) ~ 31 requests fill the link.
    assert ctl.limit >= 20, ctl.history
    assert max(limits) <= 64
    # Past the knee raises stop paying: it settles, it does not climb to the cap.
    assert ctl.limit <= 45, ctl.history
    assert ctl.history == sorted(ctl.history[:3]) + ctl.history[3:]  # rises first


def test_cpu_bound_link_stays_at_the_start():
    ctl, limits = simulate(cpu_bound, seconds=120)
    assert ctl.limit == 8
    # It probes now and then (conditions change) and steps back each time, a step at most.
    assert max(limits) <= 8 + 2
    assert sum(1 for x in limits if x == 8) >= 0.9 * len(limits)
    # Failed probes hold longer and longer: few of them in two minutes.
    assert ctl.history.count(10) <= 10, ctl.history


def test_one_slow_request_does_not_move_it():
    # Enough network: the consumer waits only while one request takes 5 s instead of 0.3.
    ctl, limits = simulate(latency_bound, seconds=30, waits=lambda t, slow: slow, slow_at=10.0, slow_for=5.0)
    assert ctl.history == [8]


def test_fixed_when_the_cap_is_the_start():
    ctl, _ = simulate(latency_bound, seconds=20, cap=0)
    assert not ctl.adaptive and ctl.history == [8]


def test_gate_follows_its_size():
    size = [1]
    gate = adaptive.Gate(lambda: size[0])
    assert gate.acquire(blocking=False)
    assert not gate.acquire(blocking=False)
    got = []
    t = threading.Thread(target=lambda: got.append(gate.acquire(timeout=10)))
    t.start()
    size[0] = 3  # a raised limit lets the waiter through at the next release
    gate.release()
    t.join(10)
    assert got == [True]
    assert gate.acquire(blocking=False) and gate.acquire(blocking=False)
    assert not gate.acquire(blocking=False)


# -- put and cat through a long link ---------------------------------------------------------------

SEGMENT = 1 * MiB
DATA = 128 * MiB


@pytest.fixture
def wan(s3_server, tmp_path):
    """rtt 60 ms, 256 KiB window per connection and direction: ~4 MiB/s a connection."""
    link = wanproxy.Link(delay=0.03, window=256 * KiB)
    proxy = wanproxy.ProxyProcess(s3_server.endpoint.split("://", 1)[-1], link, tmp_path / "wanproxy.log")
    yield proxy
    proxy.stop()


def _engine(endpoint: str, **transfer) -> Engine:
    cfg = TransferConfig(segment_size=SEGMENT, **transfer)
    return Engine(Store(S3Config(endpoint_url=endpoint, max_pool_connections=80)), cfg)


def _put(eng: Engine, bucket: str, key: str, data: bytes):
    """Through the engine's stream writer, as `put` does; returns its controller."""
    w = eng.open_writer(bucket, key)
    view = memoryview(data)
    for i in range(0, len(data), MiB):
        w.write(view[i:i + MiB])
    w.close()
    return w.concurrency


def _cat(eng: Engine, bucket: str, key: str) -> tuple[str, adaptive.Concurrency]:
    h = hashlib.sha256()
    with eng.open_reader(bucket, key) as r:
        for chunk in r.chunks(0):
            h.update(chunk)
        return h.hexdigest(), r.concurrency


def test_put_and_cat_over_a_long_link_raise_requests_in_flight(s3_server, bucket, wan):
    # 1 MiB segments are too small to split into ranged parts: the reader fetches more of
    # them ahead instead, within its read-ahead.
    data = make_bytes(DATA, "adaptive-wan")
    eng = _engine(wan.endpoint)
    up = _put(eng, bucket, "wan", data)
    assert max(up.history) > 8 and up.peak > 9, up.history  # the producer waited, more uploads paid
    digest, down = _cat(eng, bucket, "wan")
    assert digest == hashlib.sha256(data).hexdigest()
    assert max(down.history) > 8 and down.peak > 9, down.history
    assert wan.stats()["requests"]["GET"] >= DATA // SEGMENT


def test_loopback_keeps_the_start(s3_server, bucket, monkeypatch):
    monkeypatch.setattr(reader_mod, "PART_SIZE", 256 * KiB)
    data = make_bytes(DATA, "adaptive-loopback")
    eng = _engine(s3_server.endpoint)
    up = _put(eng, bucket, "lo", data)
    digest, down = _cat(eng, bucket, "lo")
    assert digest == hashlib.sha256(data).hexdigest()
    # Probes may happen (two shared cores make loopback CPU-bound and noisy); none that did
    # not pay is kept: at most one step past the start is standing at the end.
    assert up.limit <= 10 and down.limit <= 10, (up.history, down.history)


def test_damaged_part_is_fetched_again_whole(s3_server, bucket, monkeypatch):
    """Ranged parts that do not add up to the segment's CRC32 are not handed out: the
    segment is fetched again in one GET, verified by its own path."""
    monkeypatch.setattr(reader_mod, "PART_SIZE", 64 * KiB)
    data = make_bytes(4 * SEGMENT, "adaptive-damaged")
    eng = _engine(s3_server.endpoint, workers=1, prefetch=1, max_inflight=8)
    _put(eng, bucket, "dmg", data)
    real_get = eng.store.get
    damaged = []

    def get(b, key, start=None, end=None, sse_key=None, **kw):
        got, info = real_get(b, key, start, end, sse_key, **kw)
        if start is not None and start > 0 and len(damaged) < 3:
            damaged.append(key)
            got = bytes([got[0] ^ 1]) + got[1:]
        return got, info

    monkeypatch.setattr(eng.store, "get", get)
    with eng.open_reader(bucket, "dmg") as r:
        r.concurrency._set(8)  # as if raised: split from the first unit on
        out = b"".join(bytes(c) for c in r.chunks(0))
    assert damaged and out == data
