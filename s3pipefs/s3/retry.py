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
  Between attempts: full jitter, uniform(0, min(cap, base * 2**attempt)).
* Each store owns one :class:`RateLimiter` shared by all its threads. A throttle halves its
  rate (AIMD, one cut per congestion event), so a SlowDown storm slows every command that
  uses the store - put, cat, the mount, cp and sync alike - not only the one that saw it.
* :class:`RetryStats` counts requests (attempts), retries and throttles; sync reports them.

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
    """A request-rate limit shared by all threads of a store (AIMD with slow start, like TCP).

    Unlimited until the first throttle. Then every :meth:`acquire` is spaced ``1/rate``
    apart. A throttle halves the rate (at most once per ``cooldown`` seconds, so a burst of
    throttles from concurrent workers counts as one congestion event) and remembers the
    rate it happened at. Successes regrow the rate: +1 per success (doubling per second)
    up to that remembered rate, then +``increase`` per second. After ``quiet`` seconds
    without a throttle the limit is lifted again.
    """

    def __init__(self, floor: float = 1.0, increase: float = 2.0, cooldown: float = 0.2, quiet: float = 3.0,
                 clock=time.monotonic, sleep=time.sleep):
        self.floor = floor
        self.increase = increase
        self.cooldown = cooldown
        self.quiet = quiet
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self.rate: float | None = None  # requests/s; None = unlimited
        self._w_max = 0.0
        self._next = 0.0
        self._last_cut = -1e9
        # a small window of send times to measure the current rate
        self._sent: list[float] = []
        self.throttles = 0
        self.lowest: float | None = None

    def acquire(self) -> None:
        with self._lock:
            now = self._clock()
            self._sent.append(now)
            if len(self._sent) > 256:
                del self._sent[:128]
            if self.rate is None:
                return
            at = max(now, self._next)
            self._next = at + 1.0 / self.rate
        if at > now:
            self._sleep(at - now)

    def measured(self) -> float:
        """Requests per second over the last second (at least the floor)."""
        now = self._clock()
        recent = [t for t in self._sent if now - t <= 1.0]
        return max(float(len(recent)), self.floor)

    def throttled(self) -> None:
        with self._lock:
            self.throttles += 1
            now = self._clock()
            if now - self._last_cut < self.cooldown:
                return
            self._last_cut = now
            self._w_max = self.measured() if self.rate is None else self.rate
            self.rate = max(self.floor, self._w_max / 2.0)
            self.lowest = self.rate if self.lowest is None else min(self.lowest, self.rate)

    def succeeded(self) -> None:
        if self.rate is None:  # the common case, read without the lock: nothing to regrow
            return
        with self._lock:
            if self.rate is None:
                return
            if self._clock() - self._last_cut >= self.quiet:
                self.rate = None
                return
            self.rate += 1.0 if self.rate < self._w_max else self.increase / self.rate


@dataclass
class RetryStats:
    """What a policy did: requests sent (every attempt), retries, and how many were throttles."""

    requests: int = 0
    retries: int = 0
    throttles: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def sent(self) -> None:
        with self.lock:
            self.requests += 1

    def add(self, kind: str) -> None:
        with self.lock:
            self.retries += 1
            if kind == THROTTLE:
                self.throttles += 1


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
        self.log_level = log_level
        self._sleep = sleep
        self._rand = rand

    def delay(self, attempt: int) -> float:
        return self._rand() * min(self.cap, self.base * (2 ** attempt))

    def call(self, fn, *args, tries: int | None = None, **kw):
        """``fn(*args, **kw)``, retried. ``tries``: this call's bound for transient failures
        (a stream segment's own setting), instead of the policy's."""
        tries = max(1, tries) if tries else self.tries
        throttle_tries = self.throttle_tries if tries == self.tries else throttle_tries_for(tries)
        transient = throttles = 0
        while True:
            if self.limiter is not None:
                self.limiter.acquire()
            self.stats.sent()
            try:
                out = fn(*args, **kw)
            except Exception as e:  # noqa: BLE001 - classified below, re-raised when final
                kind = classify(e)
                if kind == PERMANENT:
                    raise
                if kind == THROTTLE:
                    throttles += 1
                    if self.limiter is not None:
                        self.limiter.throttled()
                    if throttles >= throttle_tries:
                        raise
                    attempt = throttles
                    log.info("%s (throttled; attempt %d of %d)", e, attempt, throttle_tries)
                else:
                    transient += 1
                    if transient >= tries:
                        raise
                    attempt = transient
                    log.log(self.log_level, "%s (attempt %d of %d)", e, attempt, tries)
                self.stats.add(kind)
                self._sleep(self.delay(attempt))
                continue
            if self.limiter is not None:
                self.limiter.succeeded()
            return out
