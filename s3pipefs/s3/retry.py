"""The one retry policy: classified, bounded, full-jitter retries under a shared rate limit.

Every request a Store sends runs inside :meth:`RetryPolicy.call`, and nowhere else is a
request retried: botocore is told to try once (s3/store.py), and the engine calls the store
without loops of its own. So the attempts a request gets are bounded once, never
multiplied by nested layers.

* An error is classified by its type and S3 error code, never by its message text
  (:func:`classify`): a *throttle* (``SlowDown``, 429, a bare 503), a *transient* failure
  (5xx, a broken or timed-out connection, a body that failed its checksum) or a
  *permanent* one (403, 404, 412 and other 4xx, a local error), which is raised at once.
* A transient failure is tried ``tries`` times in all; a throttle ``throttle_tries``
  times (more: a storm is expected to pass, and each attempt is already rate-limited).
  Between attempts: full jitter, uniform(0, min(cap, base * 2**attempt)), where a
  throttled request's ``attempt`` counts from 0 and its wait stays under THROTTLE_CAP:
  the limiter below already slows it.
* Each store owns one :class:`RateLimiter` shared by all its threads. A throttle lowers
  its rate to what the server accepted (AIMD, one cut per congestion event, at most by
  half), so a server that refuses more when sent more slows every command that uses the
  store - put, cat, the mount, cp and sync alike - not only the one that saw it, and no
  further than it must.
* A storm that refuses a steady share however slowly requests come (sending slower did
  not lower the share refused) is not about our rate: the limiter lifts its limit and
  *rides it out*, and a throttled request is then retried promptly, after up to ``base``
  of jitter, instead of after a growing backoff - its refusal says nothing about it, and
  waiting would only leave the unlucky requests of a long job behind. Prompt retries are
  drawn from the store's :class:`RetryBudget` (one earned per request), so they at most
  double what a command sends; past it, and outside a storm, the backoff grows as above.
* :class:`RetryStats` counts requests (attempts), retries, throttles, failures and the
  time slept between attempts; sync reports them, ``s3pipefs status`` shows a mount's,
  and :func:`throttle_notice` is the one line a command prints when it was throttled.

The same policy, with a limiter of its own, retries the reads of an http(s) source
(engine/transfer/urls.py), whose failures are raised as :class:`TransientError`.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field

from s3pipefs import errors

log = logging.getLogger(__name__)

# S3 error codes that mean "send fewer requests".
THROTTLE_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
    "TooManyRequests", "TooManyRequestsException", "RequestThrottled", "BandwidthLimitExceeded",
})
# Codes and statuses worth another try (server hiccups, not a verdict on the request).
TRANSIENT_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeoutException",
    "PriorRequestNotComplete", "OperationAborted",
})
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})

THROTTLE, TRANSIENT, PERMANENT = "throttle", "transient", "permanent"
# A throttled request's own backoff stays under this: the store's limiter paces the rate,
# and longer waits only leave a storm's unlucky requests (refused again and again) behind.
THROTTLE_CAP = 1.0
# How much one congestion event cuts the request rate: the share throttled, within these.
MIN_CUT, MAX_CUT = 0.25, 0.5
# Requests the rate limiter must have seen in its window to cut at a first throttle, without
# waiting for the window's end: fewer tell nothing of the rate (a command that just started).
MIN_SAMPLE = 8
# Answers to requests sent after a first cut that judge it (PROBE_AT_TURN suffice when its
# window closes first): did the slower rate lower the share refused?
PROBE, PROBE_AT_TURN = 4 * MIN_SAMPLE, MIN_SAMPLE

# Prompt retries banked at most by a RetryBudget: a burst of refusals after a long calm is
# retried promptly only as far as the requests just before it earned.
BUDGET_CAP = 100


def near_storm(share: float) -> float:
    """The largest share refused that is still the same storm as ``share``: more is a
    server refusing more because it is sent more."""
    return 1.25 * share + 0.05


def error_code(exc: BaseException) -> tuple[str, int | None]:
    """(S3 error code, HTTP status) of an exception from s3/store.py, or ("", None).

    store.translate() sets ``code``/``status`` on the errors it makes; otherwise the
    botocore ClientError is looked for in the exception's context (``raise ... from None``
    hides it from tracebacks but keeps ``__context__``).
    """
    code = getattr(exc, "code", None)
    status = getattr(exc, "status", None)
    if isinstance(code, str) and code:
        return code, status if isinstance(status, int) else None
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 5:
        resp = getattr(cur, "response", None)
        if isinstance(resp, dict) and "Error" in resp:
            err = resp.get("Error") or {}
            st = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            return str(err.get("Code", "")), st if isinstance(st, int) else None
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return "", None


def classify(exc: BaseException) -> str:
    """THROTTLE, TRANSIENT or PERMANENT."""
    if isinstance(exc, (errors.NotFound, errors.NotModified, errors.AccessDenied, errors.UsageError,
                        errors.Busy, errors.Exists, errors.ManifestError, errors.StreamIncomplete,
                        errors.ReadOnly, errors.NoMemory, errors.Interrupted)):
        return PERMANENT
    code, status = error_code(exc)
    if code in THROTTLE_CODES:
        return THROTTLE
    if code in TRANSIENT_CODES:
        return TRANSIENT
    if status in (429, 503):
        # S3 answers 503 to mean "slow down"; a HEAD's error has no body, so no code.
        return THROTTLE
    if status in TRANSIENT_STATUS:
        return TRANSIENT
    if isinstance(exc, (errors.EndpointError, errors.IntegrityError)):
        return TRANSIENT
    if isinstance(exc, TransientError):
        return TRANSIENT
    return PERMANENT


class TransientError(errors.S3PipeError):
    """Raised by non-S3 sources (an http(s) URL) for a failure worth retrying."""


class RateLimiter:
    """A request-rate limit shared by all threads of a store, set once a second from what
    the server did with the second before.

    Unlimited until a throttle, which cuts the rate sent so far by MIN_CUT at once (when
    MIN_SAMPLE requests show what that rate is). Then every :meth:`acquire` is spaced
    ``1/rate`` apart. That first cut holds, without regrowth, while its :class:`_Probe`
    judges it: once PROBE requests sent under it were answered, were they refused about as
    often as those sent before it? Then slower did not help: the throttling is not about
    our rate (a storm in which the server refuses a steady share however slowly requests
    come), the limit is lifted and the storm ridden out (:meth:`riding_out`), a fraction
    of a second after it began. A share that fell (the rate mattered) or clearly grew (an
    overload setting in) keeps the cut, and the windows below go on from it.

    The limiter counts what was sent and what was throttled, and at the end of each
    ``window`` (a second) in which anything was throttled it sets the rate to what the
    server *accepted*: the rate sent times the share not throttled, a cut of at least
    MIN_CUT and at most MAX_CUT. A server that takes only so many requests a second is
    soon sent about that many. If the window before was cut too, we did send slower, and
    the share refused did not fall, the storm is ridden out as above. While riding out no
    new cut is made as long as the share refused stays near that storm's (only a clearly
    larger share, or a storm that comes back after ``quiet`` seconds, cuts again). Each
    success regrows a limit by one request a second; ``quiet`` seconds without a throttle
    lift it.

    (Halving on every throttle, at most every 0.2 s, took a sync of 400 files under a
    1-in-3 SlowDown storm from 2 s to 210 s, at one request a second; cutting by the share
    alone still took 20 s; judging a cut only by whole windows, while successes regrew
    the limit, took seconds to tell the storm, 2.5x-4.9x the sync's calm time with the
    per-request backoff's tail. Now about 1.2-2.4x.) :meth:`slowdown` says how far and how
    long it slowed.
    """

    def __init__(self, floor: float = 1.0, quiet: float = 3.0, window: float = 1.0,
                 clock=time.monotonic, sleep=time.sleep):
        self.floor = floor
        self.quiet = quiet
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self.rate: float | None = None  # requests/s; None = unlimited
        self._next = 0.0
        # The current window: from its first request; requests sent, the last one's time, throttles.
        self._start = self._last = 0.0
        self._sent = self._refused = 0
        self._last_throttle = -1e9
        self._cut: tuple[float, float] | None = None  # (rate sent, share refused) of a window that cut
        self._ok = 0  # successes answered in the current window
        # The outcomes before and after a first cut, while it holds (no regrowth) to show
        # whether sending slower lowered the share refused.
        self._probe: _Probe | None = None
        # The share a storm refuses however slowly requests come, once a cut showed that:
        # no cut again while the share stays there (quiet seconds forget it).
        self._storm: float | None = None
        self.throttles = 0
        self.lowest: float | None = None
        self.before: float | None = None  # the rate sent in the first window that was throttled
        self._limited_since: float | None = None
        self._limited_for = 0.0  # seconds under a limit, the current stretch not included

    def acquire(self) -> float:
        """Wait for the request's turn; return when it went (to pass to :meth:`throttled` or
        :meth:`succeeded`, which tell a first cut's probe what was sent under it)."""
        with self._lock:
            now = self._clock()
            self._turn(now)
            if not self._sent:
                self._start = now
            self._sent += 1
            self._last = now
            if self.rate is None:
                return now
            at = max(now, self._next)
            self._next = at + 1.0 / self.rate
        if at > now:
            self._sleep(at - now)
        return at

    def throttled(self, sent_at: float | None = None) -> None:
        with self._lock:
            now = self._clock()
            self._turn(now)
            self.throttles += 1
            self._refused += 1
            self._last_throttle = now
            if self._probe is not None:
                self._probe.count(sent_at, refused=True)
                if self._probe.verdict(PROBE) is not None:
                    self._end_probe(now)
            elif self.rate is None and self._storm is None and self._sent >= MIN_SAMPLE:  # the smallest cut at once
                self._limit(now, self._sent_rate() * (1.0 - MIN_CUT))
                self._probe = _Probe(now, self._ok, self._refused)
            elif (self.rate is not None and self._sent >= 4 * MIN_SAMPLE
                  and self._slower_did_not_help(self._sent_rate(), self._refused / self._sent)):
                self._ride_out(now, self._refused / self._sent)  # seen early: no need to wait for the window's end

    def succeeded(self, sent_at: float | None = None) -> None:
        with self._lock:
            now = self._clock()
            self._turn(now)
            self._ok += 1
            if self._probe is not None:
                self._probe.count(sent_at, refused=False)
                if self._probe.verdict(PROBE) is not None:
                    self._end_probe(now)
            if self.rate is None:
                return
            if now - self._last_throttle >= self.quiet:
                self._lift(now)
            elif self._probe is None:
                self.rate += 1.0

    def _turn(self, now: float) -> None:
        """Close the window once it has lasted ``window``: set the rate from it."""
        if not self._sent or now - self._start < self.window:
            return
        rate, sent, refused = self._sent_rate(), self._sent, self._refused
        self._sent = self._refused = self._ok = 0
        if self._probe is not None and self._end_probe(now, PROBE_AT_TURN):
            return
        if not refused:
            self._cut = None
            if now - self._last_throttle >= self.quiet:
                self._storm = None
            return
        share = min(1.0, refused / sent)
        if self._slower_did_not_help(rate, share):
            self._ride_out(now, share)
            return
        if self._storm is not None and (sent < MIN_SAMPLE or share <= near_storm(self._storm)):
            return  # the storm as before (or too few requests to tell): slower would not help
        self._storm = None
        base = rate if self.rate is None else min(self.rate, rate)  # a limit not reached binds nothing
        self._limit(now, base * min(1.0 - MIN_CUT, max(1.0 - MAX_CUT, 1.0 - share)))
        self._cut = (rate, share)

    def _end_probe(self, now: float, enough: int = PROBE) -> bool:
        """Judge the first cut by its probe (with ``enough`` answers after it, else by the
        window): ride out a storm that slower sending did not ease. True if it did."""
        storm, share = self._probe.verdict(enough), self._probe.share_after()
        self._probe = None
        if storm:
            self._ride_out(now, share)
        return bool(storm)

    def _slower_did_not_help(self, rate: float, share: float) -> bool:
        """After a cut: did sending slower (``rate``) leave the share refused as it was?"""
        return self._cut is not None and rate < 0.9 * self._cut[0] and share >= 0.8 * self._cut[1]

    def _ride_out(self, now: float, share: float) -> None:
        """The throttling is not about our rate: lift the limit, remember the storm's share."""
        self._storm = share
        self._lift(now)

    def _sent_rate(self) -> float:
        """Requests a second in the current window, over the time they were sent (not the
        pause after them: the rate the command asked for, not its idle time). Fewer than
        MIN_SAMPLE requests count as spread over a quarter window at least: two requests
        a millisecond apart are not a thousand a second."""
        span = max(self._last - self._start, self.window / 4 if self._sent < MIN_SAMPLE else 1e-3)
        return max(self._sent / span, self.floor)

    def _limit(self, now: float, rate: float) -> None:
        if self.rate is None:
            self._limited_since = now
            if self.before is None:
                self.before = self._sent_rate()
        self.rate = max(self.floor, rate)
        self.lowest = self.rate if self.lowest is None else min(self.lowest, self.rate)

    def _lift(self, now: float) -> None:
        if self.rate is not None:
            self._limited_for += now - self._limited_since
        self.rate = None
        self._cut = None
        self._probe = None

    def riding_out(self) -> bool:
        """Is the limit lifted for a storm that slower sending did not ease? Then a throttled
        request is retried promptly: waiting longer would not make the server refuse it less."""
        return self._storm is not None and self.rate is None

    def slowdown(self) -> tuple[float, float, float] | None:
        """(rate sent when first throttled, lowest limit, seconds under a limit), or None
        when no limit was ever set."""
        with self._lock:
            if self.lowest is None:
                return None
            limited = self._limited_for + (self._clock() - self._limited_since if self.rate is not None else 0.0)
            return self.before, self.lowest, limited


class _Probe:
    """The outcomes (answered, refused) of the requests sent before a first cut and of those
    sent after it, told apart by when each was sent: a request in flight at the cut counts
    as before it. Counted by answer, not by sending, so requests still in flight do not
    dilute the share refused."""

    def __init__(self, at: float, ok: int, refused: int):
        self.at = at
        self.before = [ok + refused, refused]
        self.after = [0, 0]

    def count(self, sent_at: float | None, refused: bool) -> None:
        if sent_at is None:
            return  # a caller that does not say when it sent: no evidence either way
        side = self.after if sent_at >= self.at else self.before
        side[0] += 1
        side[1] += refused

    def share_after(self) -> float:
        return self.after[1] / max(1, self.after[0])

    def verdict(self, enough: int) -> bool | None:
        """None until ``enough`` requests sent after the cut were answered; then whether
        they were refused about as often as before it: slower did not help, so the refusals
        are not about our rate. A share that fell says the rate mattered; one that clearly
        grew is an overload setting in (a server's burst allowance running out), not a
        storm's steady share."""
        if self.after[0] < enough:
            return None
        before, after = self.before[1] / max(1, self.before[0]), self.share_after()
        return 0.8 * before <= after <= near_storm(before)


@dataclass
class RetryStats:
    """What a policy did: requests sent (every attempt), retries and how many were throttles,
    requests that failed for good after their retries (``gave_up``) or at once (``refused``:
    not found, denied, changed by another writer - often an answer the caller expects), and
    the seconds requests slept between attempts."""

    requests: int = 0
    retries: int = 0
    throttles: int = 0
    gave_up: int = 0
    refused: int = 0
    backoff: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def sent(self) -> None:
        with self.lock:
            self.requests += 1

    def add(self, kind: str, slept: float = 0.0) -> None:
        with self.lock:
            self.retries += 1
            self.backoff += slept
            if kind == THROTTLE:
                self.throttles += 1

    def failed(self, kind: str) -> None:
        with self.lock:
            if kind == PERMANENT:
                self.refused += 1
            else:
                self.gave_up += 1

    def as_dict(self) -> dict:
        with self.lock:
            return {"requests": self.requests, "retries": self.retries, "throttles": self.throttles,
                    "gave_up": self.gave_up, "refused": self.refused, "backoff_seconds": round(self.backoff, 3)}


class RetryBudget:
    """The prompt retries a store may send: each first attempt earns one (at most BUDGET_CAP
    banked), each prompt retry spends one. So prompt retries never more than double what a
    command sends, however long a storm lasts; past the budget a throttled request backs off
    as it would outside a storm."""

    def __init__(self, cap: int = BUDGET_CAP):
        self.cap = cap
        self._tokens = 0.0
        self._lock = threading.Lock()

    def earn(self) -> None:
        with self._lock:
            self._tokens = min(self.cap, self._tokens + 1.0)

    def spend(self) -> bool:
        with self._lock:
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True


def throttle_tries_for(tries: int) -> int:
    """Attempts for a request that keeps being throttled: twice the transient ones, plus
    two (12 for the default 5): a storm is expected to pass, and each attempt is spaced
    by the lowered rate already."""
    return 2 * max(1, tries) + 2


class RetryPolicy:
    """Runs one request at a time under the limiter, retrying by error class (see the module
    docstring). ``tries`` bounds transient failures, ``throttle_tries`` throttles.
    A retried transient failure is logged at ``log_level``, a throttle at INFO."""

    def __init__(self, tries: int = 5, throttle_tries: int | None = None, *, limiter: RateLimiter | None = None,
                 base: float = 0.1, cap: float = 5.0, stats: RetryStats | None = None,
                 log_level: int = logging.INFO, sleep=time.sleep, rand=random.random):
        self.tries = max(1, tries)
        self.throttle_tries = max(1, throttle_tries) if throttle_tries else throttle_tries_for(self.tries)
        self.limiter = limiter
        self.base = base
        self.cap = cap
        self.stats = stats or RetryStats()
        self.budget = RetryBudget()
        self.log_level = log_level
        self._sleep = sleep
        self._rand = rand

    def delay(self, attempt: int) -> float:
        return self._rand() * min(self.cap, self.base * (2 ** attempt))

    def throttle_pause(self, throttles: int) -> float:
        """The wait before retrying a request throttled ``throttles`` times in a row.

        In a storm the limiter rides out (slower sending did not lower the share refused),
        a refusal says nothing about this request: it is retried promptly, after up to
        ``base`` of jitter, while the budget lasts. Otherwise the shared limiter already
        slows the whole store, and a request's own backoff starts small and grows only while
        it is refused again, under THROTTLE_CAP."""
        if self.limiter is not None and self.limiter.riding_out() and self.budget.spend():
            return self.delay(0)
        return min(THROTTLE_CAP, self.delay(throttles - 1))

    def call(self, fn, *args, tries: int | None = None, **kw):
        """``fn(*args, **kw)``, retried. ``tries``: this call's bound for transient failures
        (a stream segment's own setting), instead of the policy's."""
        tries = max(1, tries) if tries else self.tries
        throttle_tries = self.throttle_tries if tries == self.tries else throttle_tries_for(tries)
        transient = throttles = 0
        self.budget.earn()
        while True:
            sent_at = self.limiter.acquire() if self.limiter is not None else None
            self.stats.sent()
            try:
                out = fn(*args, **kw)
            except Exception as e:  # noqa: BLE001 - classified below, re-raised when final
                kind = classify(e)
                if kind == PERMANENT:
                    self.stats.failed(kind)
                    raise
                if kind == THROTTLE:
                    throttles += 1
                    if self.limiter is not None:
                        self.limiter.throttled(sent_at)
                    if throttles >= throttle_tries:
                        self.stats.failed(kind)
                        raise
                    log.info("%s (throttled; attempt %d of %d)", e, throttles, throttle_tries)
                    pause = self.throttle_pause(throttles)
                else:
                    transient += 1
                    if transient >= tries:
                        self.stats.failed(kind)
                        raise
                    log.log(self.log_level, "%s (attempt %d of %d)", e, transient, tries)
                    pause = self.delay(transient)
                self.stats.add(kind, pause)
                self._sleep(pause)
                continue
            if self.limiter is not None:
                self.limiter.succeeded(sent_at)
            return out


def throttle_notice(stats: RetryStats, limiter: RateLimiter | None) -> str | None:
    """One line saying that the server throttled and how far it slowed us; None if it did not."""
    slow = limiter.slowdown() if limiter is not None else None
    if not stats.throttles or slow is None:
        return None
    before, lowest, seconds = slow
    return (f"the server throttled {stats.throttles} of {stats.requests} requests (503 SlowDown): the request "
            f"rate was lowered from {before:.0f}/s to {lowest:.0f}/s at the lowest, for {seconds:.1f}s")
