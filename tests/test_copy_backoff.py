"""Back-off: botocore's adaptive mode (inside each request) and the shared limiter (around tasks).

* 503 SlowDown lowers the request rate and is retried with jitter;
* other transient errors (500) are retried a bounded number of times;
* permanent errors (403, 404) are not retried at all;
* a sync survives a SlowDown storm that outlasts botocore's own retries.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import time

import botocore.retries.adaptive
import pytest

from s3pipefs import errors
from s3pipefs.config import S3Config
from s3pipefs.engine import Engine
from s3pipefs.engine.ratelimit import (PERMANENT, THROTTLE, TRANSIENT, RateLimiter, Retrier,
                                       TransientError, classify)
from s3pipefs.engine.sync import Sync, SyncOptions, parse_location
from s3pipefs.s3 import Store
from tests.faultproxy import FaultProxy, Rule


def attempts(store: Store) -> int:
    """Total attempts botocore makes per request with this store's configuration.

    botocore's ``max_attempts`` key counts *retries* (total = max_attempts + 1);
    ``total_max_attempts`` counts attempts.
    """
    r = store.client.meta.config.retries
    return r["total_max_attempts"] if "total_max_attempts" in r else r["max_attempts"] + 1


def one_shot(store: Store) -> Store:
    """The same store with botocore retries off: every error reaches the caller's back-off."""
    import boto3
    import botocore.config

    c = store._make_client()
    store._client = boto3.session.Session().client(
        "s3", endpoint_url=store.cfg.endpoint_url,
        config=c.meta.config.merge(botocore.config.Config(retries={"mode": "adaptive", "total_max_attempts": 1})))
    return store


@pytest.fixture
def proxy(s3_server):
    with FaultProxy(s3_server.endpoint) as p:
        yield p


@pytest.fixture
def limiters(monkeypatch):
    """Capture botocore's adaptive ClientRateLimiter of every client created in the test."""
    got = []
    real = botocore.retries.adaptive.register_retry_handler

    def spy(client):
        lim = real(client)
        got.append(lim)
        return lim
    monkeypatch.setattr(botocore.retries.adaptive, "register_retry_handler", spy)
    return got


def test_adaptive_mode_retries_slowdown_and_lowers_the_rate(store, bucket, proxy, limiters):
    store.put(bucket, "k", b"v")
    via = Store(S3Config(endpoint_url=proxy.endpoint))
    via.get(bucket, "k")  # warm up: creates the client
    (lim,) = limiters
    assert not lim._enabled  # no throttle seen: no client-side limit
    proxy.add(Rule("status", status=503, code="SlowDown", method="GET", path_contains=f"/{bucket}/k", times=4))
    t0 = time.monotonic()
    data, _ = via.get(bucket, "k")
    took = time.monotonic() - t0
    assert data == b"v"
    assert proxy.count("GET", f"/{bucket}/k") == 1 + 5  # warm-up, 4 throttled, 1 success
    # The client now limits its own send rate, and it did back off between attempts.
    assert lim._enabled
    assert lim._token_bucket.max_rate < 50
    assert took > 0.05


def test_transient_errors_retry_a_bounded_number_of_times(store, bucket, proxy):
    store.put(bucket, "k", b"v")
    via = Store(S3Config(endpoint_url=proxy.endpoint, max_attempts=3))
    n = attempts(via)
    assert n >= 3
    proxy.add(Rule("status", status=500, method="GET", path_contains=f"/{bucket}/k", times=n - 1))
    assert via.get(bucket, "k")[0] == b"v"
    assert proxy.count("GET", f"/{bucket}/k") == n
    proxy.reset_log()
    proxy.add(Rule("status", status=500, method="GET", path_contains=f"/{bucket}/k", times=-1))
    with pytest.raises(errors.S3PipeError) as ei:
        via.get(bucket, "k")
    assert proxy.count("GET", f"/{bucket}/k") == n  # bounded, then the error
    assert classify(ei.value) == TRANSIENT
    # The outer layer retries it a bounded number of times too.
    proxy.reset_log()
    with pytest.raises(errors.S3PipeError):
        Retrier(tries=2, base=0.001).call(via.get, bucket, "k")
    assert proxy.count("GET", f"/{bucket}/k") == 2 * n


@pytest.mark.parametrize("status,code,exc", [(403, "AccessDenied", errors.AccessDenied),
                                             (404, "NoSuchKey", errors.NotFound)])
def test_permanent_errors_are_not_retried(store, bucket, proxy, status, code, exc):
    store.put(bucket, "k", b"v")
    via = Store(S3Config(endpoint_url=proxy.endpoint))
    proxy.add(Rule("status", status=status, code=code, method="GET", path_contains=f"/{bucket}/k", times=-1))
    calls = []

    def task():
        calls.append(1)
        return via.get(bucket, "k")
    with pytest.raises(exc) as ei:
        Retrier(RateLimiter(), tries=5, base=0.001).call(task)
    assert classify(ei.value) == PERMANENT
    assert proxy.count("GET", f"/{bucket}/k") == 1 and len(calls) == 1


def test_classify_by_code_not_text(store, bucket, proxy):
    via = one_shot(Store(S3Config(endpoint_url=proxy.endpoint)))
    proxy.add(Rule("status", status=503, code="SlowDown", method="GET", times=1))
    with pytest.raises(errors.S3PipeError) as ei:
        via.get(bucket, "anything")
    assert classify(ei.value) == THROTTLE  # by the S3 error code in the body
    # A HEAD's error has no body and so no code: a bare 503 from S3 means "slow down" too.
    proxy.add(Rule("status", status=503, code="SlowDown", method="HEAD", times=1))
    with pytest.raises(errors.S3PipeError) as ei:
        via.head(bucket, "anything")
    assert classify(ei.value) == THROTTLE
    proxy.add(Rule("status", status=500, method="GET", times=1))
    with pytest.raises(errors.S3PipeError) as ei:
        via.get(bucket, "anything")
    assert classify(ei.value) == TRANSIENT
    assert classify(errors.EndpointError("x")) == TRANSIENT
    assert classify(errors.IntegrityError("x")) == TRANSIENT
    assert classify(TransientError("x")) == TRANSIENT
    assert classify(errors.S3PipeError("SlowDown in the text only")) == PERMANENT
    assert classify(errors.Busy("x")) == PERMANENT


class _Clock:
    def __init__(self):
        self.t = 100.0
        self.slept = 0.0

    def now(self):
        return self.t

    def sleep(self, s):
        self.slept += s
        self.t += s


def test_rate_limiter_is_aimd_and_shared():
    c = _Clock()
    lim = RateLimiter(floor=1.0, increase=2.0, cooldown=0.2, quiet=3.0, clock=c.now, sleep=c.sleep)
    for _ in range(40):           # 40 requests within one second: unlimited
        lim.acquire()
    assert c.slept == 0 and lim.rate is None
    lim.throttled()
    assert lim.rate == pytest.approx(20.0)   # half the measured 40/s
    lim.throttled()                          # same congestion event (cooldown): no second cut
    assert lim.rate == pytest.approx(20.0)
    c.t += 1
    lim.throttled()
    assert lim.rate == pytest.approx(10.0)   # half of 20
    c.slept = 0
    for _ in range(10):
        lim.acquire()
    assert c.slept == pytest.approx(0.9, abs=0.01)  # spaced 1/10 s apart
    for _ in range(10):
        lim.succeeded()
    assert lim.rate == pytest.approx(20.0)   # slow start back to where it was throttled
    lim.succeeded()
    assert lim.rate == pytest.approx(20.1)   # then additive
    c.t += 3
    lim.succeeded()
    assert lim.rate is None                  # quiet for 3 s: limit lifted
    for _ in range(50):
        c.t += 1
        lim.throttled()
    assert lim.rate == 1.0 and lim.lowest == 1.0  # never below the floor
    assert lim.throttles == 53


def test_retrier_jitter_and_bounds():
    c = _Clock()
    r = Retrier(tries=3, throttle_tries=4, base=0.1, cap=1.0, sleep=c.sleep, rand=lambda: 0.5)
    attempts = []

    def flaky():
        attempts.append(1)
        raise TransientError("boom")
    with pytest.raises(TransientError):
        r.call(flaky)
    assert len(attempts) == 3 and c.slept == pytest.approx(0.5 * (0.2 + 0.4))
    assert r.stats.retries == 2


def test_sync_rides_out_a_slowdown_storm(store, bucket, bucket2, proxy):
    """botocore is told to try once, so every 503 reaches the sync's own back-off."""
    n, storm_size = 120, 10
    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: store.put(bucket, f"s/{i:03d}", os.urandom(100)), range(n)))
    via = one_shot(Store(S3Config(endpoint_url=proxy.endpoint)))
    # The proxy throttles by count, not by rate: every request of the storm gets 503 however
    # slowly it comes, so a longer storm only makes the test slower, not harder.
    storm = proxy.add(Rule("status", status=503, code="SlowDown", method="PUT", path_contains=f"/{bucket2}/",
                           times=storm_size))
    job = Sync(Engine(via), parse_location(f"s3://{bucket}/s"), parse_location(f"s3://{bucket2}/s"),
               SyncOptions(workers=16, checkers=4))
    t0 = time.monotonic()
    rep = job.run()
    took = time.monotonic() - t0
    assert storm.hits == storm_size
    assert (rep.copied, rep.failed) == (n, 0), rep.failures[:3]
    assert rep.throttles == storm_size and rep.retries == storm_size
    assert job.limiter.throttles == storm_size
    assert job.limiter.lowest is not None  # the shared rate was lowered
    assert len(list(store.list(bucket2, "s/"))) == n
    assert rep.requests == 2 + 2 + n + storm_size  # bucket checks, listings, copies, retries
    print(f"\nSlowDown storm: {n} objects, {storm_size} throttles, {took:.1f}s, "
          f"lowest shared rate {job.limiter.lowest:.1f}/s")


def test_stream_copy_rides_out_slowdown_on_its_segment_copies(store, bucket, bucket2, proxy):
    from s3pipefs.config import MiB, TransferConfig
    from s3pipefs.engine import Engine
    from s3pipefs.engine.copy import copy_stream

    cfg = TransferConfig(segment_size=MiB, workers=4)
    data = os.urandom(6 * MiB)
    w = Engine(store, cfg).open_writer(bucket, "s")
    w.write(data)
    w.close()
    via = one_shot(Store(S3Config(endpoint_url=proxy.endpoint)))
    storm = proxy.add(Rule("status", status=503, code="SlowDown", method="PUT", path_contains=f"/{bucket2}/c/0",
                           times=5))
    r = copy_stream(via, bucket, "s", bucket2, "c", workers=4, cfg=cfg,
                    retrier=Retrier(RateLimiter(), base=0.01))
    assert storm.hits == 5 and r.complete
    rd = Engine(store, cfg).open_reader(bucket2, "c", follow=False)
    try:
        assert b"".join(bytes(c) for c in rd.chunks(0)) == data
    finally:
        rd.close()
