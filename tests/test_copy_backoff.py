"""Back-off: the store's one retry policy and its shared rate limiter (s3/retry.py).

* 503 SlowDown is retried with jitter and lowers the store's request rate;
* other transient errors (500) are retried a bounded number of times, and the bound is
  not multiplied by the engine above the store;
* permanent errors (403, 404, 412) are not retried at all;
* a sync survives a SlowDown storm, and its report counts the retries.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import time

import pytest

from s3pipefs import errors
from s3pipefs.config import MiB, S3Config, TransferConfig
from s3pipefs.engine import Engine, manifests
from s3pipefs.engine.sync import Sync, SyncOptions, parse_location
from s3pipefs.s3 import Store
from s3pipefs.s3.retry import PERMANENT, THROTTLE, TRANSIENT, RateLimiter, RetryPolicy, TransientError, classify
from tests.faultproxy import FaultProxy, Rule


def one_shot(store: Store) -> Store:
    """The same store trying each request once: every error reaches the caller."""
    store.retry = RetryPolicy(1, throttle_tries=1)
    return store


@pytest.fixture
def proxy(s3_server):
    with FaultProxy(s3_server.endpoint) as p:
        yield p


def test_slowdown_is_retried_and_lowers_the_store_rate(store, bucket, proxy):
    store.put(bucket, "k", b"v")
    via = Store(S3Config(endpoint_url=proxy.endpoint))
    via.get(bucket, "k")  # warm up: creates the client
    lim = via.retry.limiter
    assert lim.rate is None  # no throttle seen: no limit
    proxy.add(Rule("status", status=503, code="SlowDown", method="GET", path_contains=f"/{bucket}/k", times=4))
    t0 = time.monotonic()
    data, _ = via.get(bucket, "k")
    took = time.monotonic() - t0
    assert data == b"v"
    assert proxy.count("GET", f"/{bucket}/k") == 1 + 5  # warm-up, 4 throttled, 1 success
    # The limiter sets the rate once a second, from the second that passed.
    time.sleep(max(0.0, 1.0 - took))
    via.head(bucket, "k")
    # The store now limits its own send rate, and it did back off between attempts.
    assert lim.rate is not None and lim.rate < 50 and lim.throttles == 4
    assert (via.stats.retries, via.stats.throttles) == (4, 4)
    assert took > 0.05
    # One limiter for the whole store: puts through it are spaced by the lowered rate too
    # (unlimited, two puts on loopback take milliseconds).
    rate = lim.rate
    t0 = time.monotonic()
    via.put(bucket, "p0", b"x")
    via.put(bucket, "p1", b"x")
    assert time.monotonic() - t0 >= 0.5 / rate


def test_transient_errors_retry_a_bounded_number_of_times(store, bucket, proxy):
    store.put(bucket, "k", b"v")
    via = Store(S3Config(endpoint_url=proxy.endpoint, max_attempts=3))
    n = via.retry.tries
    assert n == 3
    proxy.add(Rule("status", status=500, method="GET", path_contains=f"/{bucket}/k", times=n - 1))
    assert via.get(bucket, "k")[0] == b"v"
    assert proxy.count("GET", f"/{bucket}/k") == n
    proxy.reset_log()
    proxy.add(Rule("status", status=500, method="GET", path_contains=f"/{bucket}/k", times=-1))
    with pytest.raises(errors.S3PipeError) as ei:
        via.get(bucket, "k")
    assert proxy.count("GET", f"/{bucket}/k") == n  # bounded, then the error
    assert classify(ei.value) == TRANSIENT


def test_the_engine_does_not_multiply_attempts(store, bucket, proxy, tmp_path):
    """A manifest and a segment failing forever: max_attempts and tries requests, not
    their product with an engine loop around the store."""
    cfg = TransferConfig(segment_size=MiB, workers=2, tries=2, staging_dir=str(tmp_path))
    with Engine(store, cfg).open_writer(bucket, "s") as w:
        w.write(os.urandom(3 * MiB))
    via = Store(S3Config(endpoint_url=proxy.endpoint, max_attempts=3))
    proxy.add(Rule("status", status=500, method="GET", path_contains=f"/{bucket}/s/.manifest", times=-1))
    with pytest.raises(errors.S3PipeError):
        manifests.load(via, bucket, "s/")
    assert proxy.count("GET", f"/{bucket}/s/.manifest") == 3
    proxy.clear()
    proxy.reset_log()
    proxy.add(Rule("status", status=500, method="GET", path_contains=f"/{bucket}/s/000000000000002", times=-1))
    with pytest.raises(errors.S3PipeError):
        with Engine(via, cfg).open_reader(bucket, "s", follow=False) as r:
            r.read(0, 3 * MiB)
    assert proxy.count("GET", f"/{bucket}/s/000000000000002") == cfg.tries


@pytest.mark.parametrize("status,code,exc", [(403, "AccessDenied", errors.AccessDenied),
                                             (404, "NoSuchKey", errors.NotFound)])
def test_permanent_errors_are_not_retried(store, bucket, proxy, status, code, exc):
    store.put(bucket, "k", b"v")
    via = Store(S3Config(endpoint_url=proxy.endpoint))
    proxy.add(Rule("status", status=status, code=code, method="GET", path_contains=f"/{bucket}/k", times=-1))
    with pytest.raises(exc) as ei:
        via.get(bucket, "k")
    assert classify(ei.value) == PERMANENT
    assert proxy.count("GET", f"/{bucket}/k") == 1 and via.stats.retries == 0


def test_a_failed_condition_is_not_retried(store, bucket, proxy):
    via = Store(S3Config(endpoint_url=proxy.endpoint))
    via.put(bucket, "c", b"first", if_none_match=True)
    proxy.reset_log()
    with pytest.raises(errors.Busy):
        via.put(bucket, "c", b"second", if_none_match=True)
    assert proxy.count("PUT", f"/{bucket}/c") == 1
    assert store.get(bucket, "c")[0] == b"first"


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


def _storm_second(lim, c, sends: int) -> None:
    """A second in which the program sends ``sends`` requests, evenly spread (later when the
    limiter makes them wait), and the server refuses every third."""
    t0 = c.t
    for i in range(sends):
        c.t = max(c.t, t0 + i / sends)
        lim.acquire()
        if i % 3 == 2:
            lim.throttled()
    c.t = max(c.t, t0 + 1.0)


def test_rate_limiter_cuts_to_what_the_server_accepted_once_a_second():
    c = _Clock()
    lim = RateLimiter(floor=1.0, quiet=3.0, window=1.0, clock=c.now, sleep=c.sleep)
    for i in range(40):           # 40 requests within one second: unlimited
        c.t = 100 + i / 40
        lim.acquire()
    assert c.slept == 0 and lim.rate is None and lim.slowdown() is None
    sent = 40 / 0.975             # over the time they were sent, from the first to the last
    lim.throttled()               # 40 requests show the rate: the smallest cut, at once
    first = 0.75 * sent
    assert lim.rate == pytest.approx(first)
    for _ in range(19):
        lim.throttled()           # the same second: no further cut
    assert lim.rate == pytest.approx(first)
    c.t, c.slept = 101.0, 0
    for _ in range(10):
        lim.acquire()             # the second is over: half of it was refused, so half the limit
    half = first / 2
    assert lim.rate == pytest.approx(half)
    assert c.slept == pytest.approx(9 / half)  # spaced 1/rate apart
    lim.throttled()               # slower, and a smaller share refused: slowing helped
    c.t = 102.0
    lim.acquire()
    second = 0.75 * half          # the smallest cut, of the limit
    assert lim.rate == pytest.approx(second)
    for _ in range(5):
        lim.succeeded()           # each success regrows the limit by one request a second
    assert lim.rate == pytest.approx(second + 5)
    c.t += 3
    lim.succeeded()
    assert lim.rate is None       # quiet for 3 s: limit lifted
    assert lim.slowdown() == (pytest.approx(sent), pytest.approx(second), pytest.approx(105 - 100.975))
    assert lim.throttles == 20 + 1


def test_rate_limiter_lifts_a_limit_that_did_not_help():
    """A server refusing one request in three however slowly they come: a cut that lowered
    the rate sent but not the share refused is undone, so the storm costs its retries,
    not a rate driven down to the floor."""
    c = _Clock()
    lim = RateLimiter(floor=1.0, quiet=3.0, window=1.0, clock=c.now, sleep=c.sleep)
    _storm_second(lim, c, 300)
    assert lim.lowest is not None and lim.lowest < 300  # cut (and maybe lifted already)
    t0 = c.t
    for _ in range(8):
        _storm_second(lim, c, 300)  # the storm goes on, at whatever rate is allowed
    assert c.t - t0 < 8 * 1.5     # a cut that did not help was lifted: 300 a second still go out
    assert lim.lowest >= 300 / 3  # and the limit was never driven far down


def test_retry_policy_jitter_and_bounds():
    c = _Clock()
    r = RetryPolicy(3, throttle_tries=4, base=0.1, cap=1.0, sleep=c.sleep, rand=lambda: 0.5)
    attempts = []

    def flaky():
        attempts.append(1)
        raise TransientError("boom")
    with pytest.raises(TransientError):
        r.call(flaky)
    assert len(attempts) == 3 and c.slept == pytest.approx(0.5 * (0.2 + 0.4))
    assert (r.stats.requests, r.stats.retries) == (3, 2)
    # A call may bound its own transient attempts; throttles get twice as many plus two.
    attempts.clear()
    with pytest.raises(TransientError):
        r.call(flaky, tries=5)
    assert len(attempts) == 5
    throttled = []
    slow_down = errors.S3PipeError("x")
    slow_down.code = "SlowDown"

    def storm():
        throttled.append(1)
        raise slow_down

    def no_code():
        throttled.append(1)
        raise errors.S3PipeError("503 SlowDown")
    with pytest.raises(errors.S3PipeError):
        r.call(storm)
    assert len(throttled) == 4
    throttled.clear()
    with pytest.raises(errors.S3PipeError):
        RetryPolicy(2, sleep=c.sleep).call(storm)
    assert len(throttled) == 2 * 2 + 2
    throttled.clear()
    with pytest.raises(errors.S3PipeError):  # no code, no status: permanent, whatever the text
        r.call(no_code)
    assert len(throttled) == 1


def test_sync_rides_out_a_slowdown_storm(store, bucket, bucket2, proxy):
    """botocore tries once, so every 503 reaches the store's policy and its shared limiter."""
    n, storm_size = 120, 10
    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: store.put(bucket, f"s/{i:03d}", os.urandom(100)), range(n)))
    via = Store(S3Config(endpoint_url=proxy.endpoint))
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
    assert via.retry.limiter.throttles == storm_size
    assert via.retry.limiter.lowest is not None  # the shared rate was lowered
    assert len(list(store.list(bucket2, "s/"))) == n
    assert rep.requests == 2 + 2 + n + storm_size  # bucket checks, listings, copies, retries
    print(f"\nSlowDown storm: {n} objects, {storm_size} throttles, {took:.1f}s, "
          f"lowest shared rate {via.retry.limiter.lowest:.1f}/s")


def test_stream_copy_rides_out_slowdown_on_its_segment_copies(store, bucket, bucket2, proxy):
    from s3pipefs.engine.copy import copy_stream

    cfg = TransferConfig(segment_size=MiB, workers=4)
    data = os.urandom(6 * MiB)
    w = Engine(store, cfg).open_writer(bucket, "s")
    w.write(data)
    w.close()
    via = Store(S3Config(endpoint_url=proxy.endpoint))
    storm = proxy.add(Rule("status", status=503, code="SlowDown", method="PUT", path_contains=f"/{bucket2}/c/0",
                           times=5))
    r = copy_stream(via, bucket, "s", bucket2, "c", workers=4, cfg=cfg)
    assert storm.hits == 5 and r.complete and via.stats.throttles == 5
    rd = Engine(store, cfg).open_reader(bucket2, "c", follow=False)
    try:
        assert b"".join(bytes(c) for c in rd.chunks(0)) == data
    finally:
        rd.close()


def test_rate_limiter_does_not_cut_again_during_a_storm_it_learned_is_not_about_rate():
    """Once a cut showed that slower does not help, the limiter stays lifted while the
    share refused stays the storm's, and cuts again when the share clearly grows."""
    c = _Clock()
    lim = RateLimiter(floor=1.0, quiet=3.0, window=1.0, clock=c.now, sleep=c.sleep)
    for _ in range(3):
        _storm_second(lim, c, 300)
    assert lim.rate is None  # learned: lifted
    cuts = lim.lowest
    t0 = c.t
    for _ in range(6):
        _storm_second(lim, c, 300)
    assert lim.rate is None and lim.lowest == cuts  # no new cut during the same storm
    assert c.t - t0 < 6 * 1.1
    # Quiet seconds forget the storm: the next throttle cuts at once again.
    c.sleep(4.0)
    for _ in range(20):  # over more than a window, none throttled
        lim.acquire()
        lim.succeeded()
        c.sleep(0.06)
    lim.throttled()
    c.sleep(1.1)
    lim.acquire()
    assert lim.rate is not None and lim.lowest < 300


def _answered(lim, c, sends: int, per_second: float, refuse) -> None:
    """``sends`` requests offered at ``per_second`` (later when the limiter makes them wait),
    each answered before the next goes; ``refuse(sent_at)`` says whether the server refused it."""
    t0 = c.t
    for i in range(sends):
        c.t = max(c.t, t0 + i / per_second)
        at = lim.acquire()
        if refuse(at):
            lim.throttled(at)
        else:
            lim.succeeded(at)


def test_a_first_cut_that_did_not_lower_the_share_refused_is_lifted_within_a_fraction_of_a_second():
    """Its probe: the requests sent under the cut were refused as often as those before it,
    so the refusals are not about our rate, and the limit goes well before its window ends."""
    c = _Clock()
    lim = RateLimiter(floor=1.0, quiet=3.0, window=1.0, clock=c.now, sleep=c.sleep)
    seen = []

    def every_third(at):
        seen.append(at)
        return len(seen) % 3 == 0
    _answered(lim, c, 9, 300, every_third)
    assert lim.rate is not None and not lim.riding_out()  # the first cut, held while it is judged
    cut = lim.rate
    for _ in range(5):
        lim.succeeded()  # no regrowth while the cut is judged
    assert lim.rate == cut
    _answered(lim, c, 40, 300, every_third)
    assert lim.rate is None and lim.riding_out()
    assert c.t - 100 < 0.3
    assert lim.slowdown() is not None  # the cut happened: the notice can say so


def test_a_first_cut_that_lowered_the_share_refused_stays():
    """A server that takes only so many requests a second refuses fewer once we send fewer:
    the cut is kept and the limiter goes on setting the rate from what the server accepts."""
    c = _Clock()
    lim = RateLimiter(floor=1.0, quiet=3.0, window=1.0, clock=c.now, sleep=c.sleep)
    capacity, burst = 200.0, 5.0
    bucket = {"tokens": burst, "at": c.t}  # the server's: refilled at ``capacity`` a second

    def overloaded(at):
        bucket["tokens"] = min(burst, bucket["tokens"] + (at - bucket["at"]) * capacity)
        bucket["at"] = at
        if bucket["tokens"] < 1:
            return True
        bucket["tokens"] -= 1
        return False
    _answered(lim, c, 60, 300, overloaded)  # its burst allowance, then a demand it cannot take
    assert lim.rate is not None and not lim.riding_out()  # the cut was judged, and kept
    _answered(lim, c, 200, 300, overloaded)
    assert lim.rate is not None and not lim.riding_out()
    assert c.t - 100 < 1.0  # within the first window: the probe decided, not the window's end


class _Storm:
    """A limiter stand-in that has learned the refusals are not about the rate."""

    def acquire(self):
        return 0.0

    def throttled(self, sent_at=None):
        pass

    def succeeded(self, sent_at=None):
        pass

    def riding_out(self):
        return True


def test_in_a_storm_throttled_requests_are_retried_promptly_while_the_budget_lasts():
    c = _Clock()
    r = RetryPolicy(5, limiter=_Storm(), base=0.1, sleep=c.sleep, rand=lambda: 1.0)
    slow_down = errors.S3PipeError("x")
    slow_down.code = "SlowDown"
    for _ in range(10):
        r.call(lambda: None)  # each first attempt earns one prompt retry
    refusals = [5]

    def unlucky():
        if refusals[0]:
            refusals[0] -= 1
            raise slow_down
        return "ok"
    assert r.call(unlucky) == "ok"
    assert c.slept == pytest.approx(5 * 0.1)  # not 0.1 + 0.2 + 0.4 + 0.8 + 1.0
    # Refused forever: still bounded by the throttle attempts (12), and once the budget
    # (11 earned, 5 spent, 1 more for this call) is gone the backoff grows as outside a storm.
    c.slept = 0.0
    attempts = []

    def forever():
        attempts.append(1)
        raise slow_down
    with pytest.raises(errors.S3PipeError):
        r.call(forever)
    assert len(attempts) == 12
    assert c.slept == pytest.approx(7 * 0.1 + 4 * 1.0)
    assert r.stats.backoff == pytest.approx(5 * 0.1 + 7 * 0.1 + 4 * 1.0)
