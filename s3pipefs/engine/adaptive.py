"""Adaptive concurrency: how many requests one transfer keeps in flight.

A fixed number of requests in flight is wrong one way or the other. Over a long link each
request is slow (a round trip, and a TCP window per connection that moves only
window / rtt), so 8 in flight leave the link idle; on loopback, or when the CPU is what
bounds throughput, more in flight only add memory, staging disk and contention.

``Concurrency`` finds the number by hill climbing on measured goodput. The transfer tells
it when each request begins and ends (``begin``/``end``, with the bytes moved) and when
its own side had to wait on the network (``waited``: a reader's consumer waiting for a
unit, a writer's producer waiting for an upload slot). It answers ``limit``, the
requests that may be in flight now, never below ``start`` (the configured value) nor
above ``cap``.

* Rounds. Decisions are taken per round: a round ends at the first completion after
  ``MIN_ROUND`` seconds that makes at least ``MIN_COMPLETIONS`` completions of requests
  *begun at the current limit* (requests begun before a change do not measure it). The
  first round after a change only settles: its requests began while the number in
  flight was still moving, and the first of them saw less contention than the limit
  brings.
* Goodput of a round, by Little's law: the average number of requests in flight over the
  round times the bytes a request moves per second of its life (sum of bytes over sum of
  durations of the round's requests). It needs a few completions, not a full window of
  them: over a long link a 16 MiB request takes seconds. On a latency-bound link the
  per-request rate stays as requests are added and goodput grows with them; on a
  bandwidth- or CPU-bound one it falls as 1/n and goodput stays flat.
* States. *Steady*: goodput is measured at the current limit (``base``, the last round's). The ``WAITED_ROUNDS``-th round in a row in which the side waited on the
  network for at least ``WAIT_SHARE`` of the time (one slow request stalls a reader for
  two at most: the one in which the rest of its window lands, and the one it ends)
  raises the limit by a quarter (at least 2, at most to ``cap``) and enters *probing*.
  *Probing*: the next round at the raised limit is compared with ``base``: a gain of
  ``GAIN`` or more keeps it (steady again, and it may raise again at once); less steps
  back to the last limit that paid and *holds* there for ``HOLD_ROUNDS`` rounds, twice as
  long after each failed probe in a row (up to ``MAX_HOLD_ROUNDS``), before it may probe
  again: conditions change (another transfer ends), so it keeps looking, rarely.
* ``start == cap`` (``max_inflight`` 0 or at most the start): a fixed limit, as before.

``Gate`` is the semaphore such a limit needs: its size is read at each acquire, so a
raised limit lets more requests through at once and a lowered one lets fewer through
as the running ones finish.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)

MIN_ROUND = 0.25       # seconds: a round is at least this long
MIN_COMPLETIONS = 4    # and holds at least this many completions begun at its limit
WAIT_SHARE = 0.1       # the side waited on the network this share of a round or more
WAITED_ROUNDS = 3      # in this many rounds in a row, before a raise
GAIN = 0.10            # a raise must bring this much more goodput to be kept
RAISE = 1.25           # a raise multiplies the limit by this (and adds at least RAISE_MIN)
RAISE_MIN = 2
HOLD_ROUNDS = 8        # after a failed probe: rounds before the next one
MAX_HOLD_ROUNDS = 64


@dataclass(frozen=True)
class Ticket:
    """A request begun: when, and at which limit (its epoch)."""
    epoch: int
    began: float


class Concurrency:
    """The hill-climbing controller of one transfer (see the module docstring)."""

    def __init__(self, start: int, cap: int, *, clock: Callable[[], float] = time.monotonic):
        self.start = max(1, start)
        self.cap = max(self.start, cap)
        self._clock = clock
        self._lock = threading.Lock()
        self._limit = self.start
        self._good = self.start       # the last limit whose raise paid (or the start)
        self._base: float | None = None  # goodput measured at the current steady limit
        self._probing = False         # the current limit is a raise under test
        self._hold = 0                # rounds to wait before the next probe
        self._hold_next = HOLD_ROUNDS
        self._streak = 0              # rounds in a row in which the side waited
        self._epoch = 0               # requests count in the rounds of the epoch they began in
        self._warming = True          # the current round is the first at a new limit (or at all:
                                      # a reader's slow start, a writer's first segments)
        self._in_flight = 0
        self.peak = 0                 # the most requests ever in flight at once
        self.history: list[int] = [self.start]  # every limit decided, in order
        self._new_round(clock())

    @property
    def adaptive(self) -> bool:
        return self.cap > self.start

    @property
    def limit(self) -> int:
        return self._limit

    # -- what the transfer reports -------------------------------------------------------
    def begin(self) -> Ticket:
        with self._lock:
            self._integrate(self._clock())
            self._in_flight += 1
            self.peak = max(self.peak, self._in_flight)
            return Ticket(self._epoch, self._last)

    def end(self, ticket: Ticket, nbytes: int | None) -> None:
        """A request ended; ``nbytes`` None when it failed (it measures nothing)."""
        with self._lock:
            now = self._clock()
            self._integrate(now)
            self._in_flight -= 1
            if nbytes is None or ticket.epoch != self._epoch or not self.adaptive:
                return
            self._bytes += nbytes
            self._busy += now - ticket.began
            self._done += 1
            if self._done >= MIN_COMPLETIONS and now - self._round_began >= MIN_ROUND:
                self._decide(now)

    def waited(self, seconds: float) -> None:
        """The transfer's own side waited this long on the network."""
        if seconds > 0:
            with self._lock:
                self._waited += seconds

    # -- rounds ----------------------------------------------------------------------------
    def _new_round(self, now: float) -> None:
        self._round_began = self._last = now
        self._area = 0.0    # requests in flight integrated over the round's time
        self._bytes = 0
        self._busy = 0.0    # summed durations of the round's requests
        self._done = 0
        self._waited = 0.0

    def _integrate(self, now: float) -> None:
        self._area += self._in_flight * (now - self._last)
        self._last = now

    def _decide(self, now: float) -> None:
        if self._warming:
            # The first round at a new limit: its requests began while the number in
            # flight was still moving to it (the first ones saw less contention). It
            # measures nothing; the next round's requests begin at the limit.
            self._warming = False
            self._epoch += 1
            return self._new_round(now)
        elapsed = now - self._round_began
        goodput = (self._area / elapsed) * (self._bytes / self._busy) if self._busy > 0 else 0.0
        waiting = self._waited >= WAIT_SHARE * elapsed
        log.debug("%d in flight at most%s: %.1f MiB/s over %.2f s (%.1f in flight on average), waited %.0f%%",
                  self._limit, " (probing)" if self._probing else "", goodput / (1 << 20), elapsed,
                  self._area / elapsed, 100 * self._waited / elapsed)
        self._streak = self._streak + 1 if waiting else 0
        limit = self._limit
        if self._probing:
            self._probing = False
            if self._base is not None and goodput < self._base * (1 + GAIN):
                # The raise bought nothing: the link, the server or the CPU is full.
                self._set(self._good)
                self._hold, self._hold_next = self._hold_next, min(2 * self._hold_next, MAX_HOLD_ROUNDS)
                self._base = None  # measured again at the limit stepped back to
                return self._new_round(now)
            self._good, self._hold_next = limit, HOLD_ROUNDS
            self._base = goodput
        else:
            self._base = goodput
        if self._hold:
            self._hold -= 1
        elif self._streak >= WAITED_ROUNDS and limit < self.cap:
            self._set(min(self.cap, max(limit + RAISE_MIN, math.ceil(limit * RAISE))))
            self._probing = True
        self._new_round(now)

    def _set(self, limit: int) -> None:
        if limit != self._limit:
            self._limit = limit
            self._epoch += 1
            self._warming = True
            self.history.append(limit)


class Gate:
    """A semaphore whose size is ``size()``, read at each acquire and release."""

    def __init__(self, size: Callable[[], int]):
        self._size = size
        self._held = 0
        self._cond = threading.Condition()

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        with self._cond:
            if not blocking and self._held >= self._size():
                return False
            if not self._cond.wait_for(lambda: self._held < self._size(), timeout):
                return False
            self._held += 1
            return True

    def release(self) -> None:
        with self._cond:
            self._held -= 1
            # Waiters wake first come, first served; a raised limit may admit several.
            self._cond.notify(max(1, self._size() - self._held))
