"""WriteHandle as a state machine, against an in-memory engine: for every state, what each
operation returns (or which errno it raises) and the state it leaves, written out here
independently of write_handle.RULES; then engine failures, and a release racing writes.
"""
from __future__ import annotations

import errno
import random
import sys
import threading
import time

import pytest

from s3pipefs import errors
from s3pipefs.fs.write_handle import WriteHandle, WriteState

S = WriteState
CMD, SHELL = 222, 111  # lock owners: the writing process and one that never wrote
T1 = 1577934245_123456789


class FakeEngine:
    """A stream of ``size`` bytes and the engine writers opened on it. ``fail`` names the
    next call that fails: "open", "write", "flush" or "close"."""

    def __init__(self, size: int = 0):
        self.size = size  # bytes of the stream as last committed
        self.writers: list[FakeWriter] = []
        self.commits = 0
        self.fail: str | None = None
        self.lock = threading.Lock()

    def open_writer(self, mode: str) -> "FakeWriter":
        self._maybe_fail("open", errors.Busy("s3://b/k: another writer holds the stream (test)"))
        w = FakeWriter(self, mode, 0 if mode == "create" else self.size)
        self.writers.append(w)
        return w

    def _maybe_fail(self, call: str, exc: Exception) -> None:
        if self.fail == call:
            self.fail = None
            raise exc

    def open_writers(self) -> list["FakeWriter"]:
        return [w for w in self.writers if not w.closed]


class FakeWriter:
    """Keeps every byte written through it unsealed until a flush (fsync); what the
    stream held at open is sealed."""

    def __init__(self, engine: FakeEngine, mode: str, offset: int):
        self.engine = engine
        self.how = mode
        self.offset = offset
        self.sealed = offset
        self.closed = self.aborted = False
        self.committed = None
        self.mode = self.mtime_ns = self.uid = self.gid = None  # attributes for the manifest, as StreamWriter has

    def write(self, data: bytes) -> None:
        assert not self.closed, "write to a closed engine writer"
        self.engine._maybe_fail("write", errors.EndpointError("s3://b/k: connection failed (test)"))
        time.sleep(0)  # let a racing thread in
        self.offset += len(data)

    def pwrite(self, offset: int, data: bytes) -> None:
        assert offset >= self.sealed, "a write into sealed data reached the engine"
        end = self.offset
        self.write(data)
        self.offset = max(end, offset + len(data))

    def truncate(self, length: int) -> None:
        assert not self.closed and length >= self.sealed, "a truncate into sealed data reached the engine"
        self.engine._maybe_fail("write", errors.EndpointError("s3://b/k: connection failed (test)"))
        self.offset = length

    def claim(self) -> None:
        assert not self.closed, "claim by a closed engine writer"
        self.engine._maybe_fail("claim", errors.EndpointError("s3://b/k: connection failed (test)"))

    def flush(self) -> None:
        assert not self.closed, "flush of a closed engine writer"
        self.engine._maybe_fail("flush", errors.EndpointError("s3://b/k: connection failed (test)"))
        self.sealed = self.offset

    def close(self) -> None:
        assert not self.closed, "commit of a closed engine writer"
        try:
            self.engine._maybe_fail("close", errors.IntegrityError("s3://b/k: checksum rejected (test)"))
        except errors.IntegrityError:
            self.abort()
            raise
        self.closed = True
        with self.engine.lock:
            self.engine.commits += 1
            self.engine.size = self.offset
        self.committed = ("manifest", self.offset)

    def abort(self) -> None:
        self.closed = self.aborted = True


def handle(engine: FakeEngine, mode: str, size: int = 0, append: bool = False) -> WriteHandle:
    return WriteHandle("/k", "s3://b/k", engine.open_writer, mode=mode, size=size, append=append)


# How to bring a handle into each state: (engine, handle), with the stream 5 bytes long
# before the handle opened it, and 3 bytes written through a created handle.
def _created():
    e = FakeEngine(5)
    return e, handle(e, "create")


def _opened():
    e = FakeEngine(5)
    return e, handle(e, "append", size=5)


def _claimed():
    e, h = _created()
    h.flush(SHELL)  # the shell's copy of `>`: takes the stream, writes nothing
    return e, h


def _writing():
    e, h = _created()
    h.write(b"abc", 0, CMD)
    return e, h


def _committed():
    e, h = _writing()
    h.flush(CMD)
    return e, h


def _failed():
    e, h = _writing()
    e.fail = "write"
    with pytest.raises(errors.EndpointError):
        h.write(b"d", 3, CMD)
    return e, h


def _shut_down():
    e, h = _writing()
    assert h.abort_for_shutdown(1)
    return e, h


def _releasing():
    e, h = _writing()
    assert h.release()
    return e, h


def _released():
    e, h = _releasing()
    h.finish_release()
    return e, h


SETUPS = {S.CREATED: _created, S.OPENED: _opened, S.CLAIMED: _claimed, S.WRITING: _writing,
          S.COMMITTED: _committed, S.FAILED: _failed, S.SHUT_DOWN: _shut_down,
          S.RELEASING: _releasing, S.RELEASED: _released}

OPS = {
    "write at the end": lambda h: h.write(b"xy", h.size, CMD),
    "write past the end": lambda h: h.write(b"xy", h.size + 1, CMD),  # a one-byte hole
    "write before the end": lambda h: h.write(b"xy", max(h.size - 1, 0), CMD),  # sealed, or not yet
    "flush by the writer": lambda h: h.flush(CMD),
    "flush by another": lambda h: h.flush(SHELL),
    "fsync": lambda h: h.fsync(),
    "truncate to its size": lambda h: h.truncate(h.size),
    "truncate to 0": lambda h: h.truncate(0),
    "truncate to 100": lambda h: h.truncate(100),
    "allocate 100": lambda h: h.allocate(100),
    "hold_attrs": lambda h: h.hold_attrs(mtime_ns=T1),
    "release": lambda h: h.release(),
    "finish_release": lambda h: h.finish_release(),
    "abort_for_shutdown": lambda h: h.abort_for_shutdown(1),
}


class Err(int):
    """An expected errno (distinct from an expected return value)."""


ESPIPE, ENOTSUP, EBADF = Err(errno.ESPIPE), Err(errno.EOPNOTSUPP), Err(errno.EBADF)
ENET, ESHUT = Err(errno.EHOSTUNREACH), Err(errno.ESHUTDOWN)  # the errors that stuck

# state -> operation -> (what it returns or raises, the state after it)
EXPECTED = {
    S.CREATED: {
        "write at the end": (2, S.WRITING), "write past the end": (2, S.WRITING),
        "write before the end": (2, S.WRITING),  # empty: that is the end
        "flush by the writer": (None, S.CLAIMED), "flush by another": (None, S.CLAIMED),
        "fsync": (None, S.CLAIMED), "truncate to its size": (None, S.CREATED),
        "truncate to 0": (None, S.CREATED), "truncate to 100": (None, S.WRITING), "allocate 100": (None, S.WRITING),
        "hold_attrs": (True, S.CREATED), "release": (True, S.RELEASING),
        "finish_release": (EBADF, S.CREATED), "abort_for_shutdown": (True, S.SHUT_DOWN)},
    S.OPENED: {
        "write at the end": (2, S.WRITING), "write past the end": (2, S.WRITING),
        "write before the end": (ESPIPE, S.OPENED),  # all of it is in S3: sealed
        "flush by the writer": (None, S.OPENED), "flush by another": (None, S.OPENED),
        "fsync": (None, S.OPENED), "truncate to its size": (None, S.OPENED),
        "truncate to 0": (None, S.CREATED), "truncate to 100": (None, S.WRITING), "allocate 100": (None, S.WRITING),
        "hold_attrs": (False, S.OPENED), "release": (False, S.RELEASED),
        "finish_release": (EBADF, S.OPENED), "abort_for_shutdown": (True, S.SHUT_DOWN)},
    S.CLAIMED: {
        "write at the end": (2, S.WRITING), "write past the end": (2, S.WRITING),
        "write before the end": (2, S.WRITING),
        "flush by the writer": (None, S.CLAIMED), "flush by another": (None, S.CLAIMED),
        "fsync": (None, S.CLAIMED), "truncate to its size": (None, S.CLAIMED),
        "truncate to 0": (None, S.CLAIMED), "truncate to 100": (None, S.WRITING), "allocate 100": (None, S.WRITING),
        "hold_attrs": (True, S.CLAIMED), "release": (True, S.RELEASING),
        "finish_release": (EBADF, S.CLAIMED), "abort_for_shutdown": (True, S.SHUT_DOWN)},
    S.WRITING: {
        "write at the end": (2, S.WRITING), "write past the end": (2, S.WRITING),
        "write before the end": (2, S.WRITING),  # the unsealed tail
        "flush by the writer": (None, S.COMMITTED), "flush by another": (None, S.WRITING),
        "fsync": (None, S.WRITING), "truncate to its size": (None, S.WRITING),
        "truncate to 0": (None, S.WRITING), "truncate to 100": (None, S.WRITING), "allocate 100": (None, S.WRITING),
        "hold_attrs": (True, S.WRITING), "release": (True, S.RELEASING),
        "finish_release": (EBADF, S.WRITING), "abort_for_shutdown": (True, S.SHUT_DOWN)},
    S.COMMITTED: {
        "write at the end": (2, S.WRITING), "write past the end": (2, S.WRITING),
        "write before the end": (ESPIPE, S.COMMITTED),  # committed: sealed
        "flush by the writer": (None, S.COMMITTED), "flush by another": (None, S.COMMITTED),
        "fsync": (None, S.COMMITTED), "truncate to its size": (None, S.COMMITTED),
        "truncate to 0": (ENOTSUP, S.COMMITTED), "truncate to 100": (None, S.WRITING),
        "allocate 100": (None, S.WRITING),
        "hold_attrs": (False, S.COMMITTED), "release": (False, S.RELEASED),
        "finish_release": (EBADF, S.COMMITTED), "abort_for_shutdown": (True, S.SHUT_DOWN)},
    S.FAILED: {
        "write at the end": (ENET, S.FAILED), "write past the end": (ENET, S.FAILED),
        "write before the end": (ENET, S.FAILED),
        "flush by the writer": (ENET, S.FAILED), "flush by another": (ENET, S.FAILED),
        "fsync": (ENET, S.FAILED), "truncate to its size": (ENET, S.FAILED),
        "truncate to 0": (ENET, S.FAILED), "truncate to 100": (ENET, S.FAILED), "allocate 100": (ENET, S.FAILED),
        "hold_attrs": (False, S.FAILED), "release": (False, S.RELEASED),
        "finish_release": (EBADF, S.FAILED), "abort_for_shutdown": (True, S.SHUT_DOWN)},
    S.SHUT_DOWN: {
        "write at the end": (ESHUT, S.SHUT_DOWN), "write past the end": (ESHUT, S.SHUT_DOWN),
        "write before the end": (ESHUT, S.SHUT_DOWN),
        "flush by the writer": (ESHUT, S.SHUT_DOWN), "flush by another": (ESHUT, S.SHUT_DOWN),
        "fsync": (ESHUT, S.SHUT_DOWN), "truncate to its size": (ESHUT, S.SHUT_DOWN),
        "truncate to 0": (ESHUT, S.SHUT_DOWN), "truncate to 100": (ESHUT, S.SHUT_DOWN),
        "allocate 100": (ESHUT, S.SHUT_DOWN),
        "hold_attrs": (False, S.SHUT_DOWN), "release": (False, S.RELEASED),
        "finish_release": (EBADF, S.SHUT_DOWN), "abort_for_shutdown": (True, S.SHUT_DOWN)},
    S.RELEASING: {
        "write at the end": (EBADF, S.RELEASING), "write past the end": (EBADF, S.RELEASING),
        "write before the end": (EBADF, S.RELEASING),
        "flush by the writer": (EBADF, S.RELEASING), "flush by another": (EBADF, S.RELEASING),
        "fsync": (EBADF, S.RELEASING), "truncate to its size": (None, S.RELEASING),
        "truncate to 0": (EBADF, S.RELEASING), "truncate to 100": (EBADF, S.RELEASING),
        "allocate 100": (EBADF, S.RELEASING),
        "hold_attrs": (True, S.RELEASING), "release": (EBADF, S.RELEASING),
        "finish_release": (None, S.RELEASED), "abort_for_shutdown": (True, S.RELEASING)},
    S.RELEASED: {
        "write at the end": (EBADF, S.RELEASED), "write past the end": (EBADF, S.RELEASED),
        "write before the end": (EBADF, S.RELEASED),
        "flush by the writer": (EBADF, S.RELEASED), "flush by another": (EBADF, S.RELEASED),
        "fsync": (EBADF, S.RELEASED), "truncate to its size": (None, S.RELEASED),
        "truncate to 0": (EBADF, S.RELEASED), "truncate to 100": (EBADF, S.RELEASED),
        "allocate 100": (EBADF, S.RELEASED),
        "hold_attrs": (False, S.RELEASED), "release": (EBADF, S.RELEASED),
        "finish_release": (EBADF, S.RELEASED), "abort_for_shutdown": (True, S.RELEASED)},
}

# The only cells that commit, and the cells that take the stream (open an engine writer).
COMMITS = {(S.WRITING, "flush by the writer"), (S.RELEASING, "finish_release")}
TAKES = {(S.CREATED, "flush by the writer"), (S.CREATED, "flush by another"), (S.CREATED, "fsync"),
         (S.CREATED, "write before the end")} | {
    (state, op) for state in (S.CREATED, S.OPENED, S.COMMITTED)
    for op in ("write at the end", "write past the end", "truncate to 100", "allocate 100")}
# Where an OPENED handle goes without claiming its path (every other way out claims it).
UNCLAIMED_AFTER = {S.OPENED, S.SHUT_DOWN, S.RELEASED}
# States in which the handle holds an open engine writer (as these setups reach them).
HOLDS_WRITER = {S.CLAIMED, S.WRITING, S.RELEASING}


def test_the_table_covers_every_state_and_operation():
    assert set(EXPECTED) == set(S) == set(SETUPS)
    for state, row in EXPECTED.items():
        assert set(row) == set(OPS), state


@pytest.mark.parametrize("state", list(S), ids=lambda s: s.name)
def test_each_setup_reaches_its_state(state):
    engine, h = SETUPS[state]()
    assert h.state is state
    assert len(engine.open_writers()) == (1 if state in HOLDS_WRITER else 0)


@pytest.mark.parametrize("state,op", [(s, op) for s in S for op in OPS], ids=lambda v: getattr(v, "name", v))
def test_what_each_operation_does_in_each_state(state, op):
    engine, h = SETUPS[state]()
    expected, after = EXPECTED[state][op]
    commits, opened, size = engine.commits, len(engine.writers), h.size
    if isinstance(expected, Err):
        with pytest.raises(errors.S3PipeError) as e:
            OPS[op](h)
        assert errors.errno_of(e.value) == expected, e.value
        assert h.size == size  # a refused call changes nothing
    else:
        assert OPS[op](h) == expected
    assert h.state is after
    assert engine.commits - commits == (1 if (state, op) in COMMITS else 0)
    assert len(engine.writers) - opened == (1 if (state, op) in TAKES else 0)
    # A created file is released without a writer: finish_release makes its empty stream.
    holds = after in HOLDS_WRITER and (state, after) != (S.CREATED, S.RELEASING)
    assert len(engine.open_writers()) == (1 if holds else 0)
    # An opened file that was never written has not claimed its path (see below).
    assert h.is_live == (after is not S.RELEASED and not (state is S.OPENED and after in UNCLAIMED_AFTER))
    assert h.is_open == (after not in (S.RELEASING, S.RELEASED))


def test_the_stream_is_taken_the_way_the_state_says():
    engine, h = _created()
    h.write(b"a", 0, CMD)
    engine2, h2 = _opened()
    h2.write(b"a", 5, CMD)
    engine3, h3 = _committed()
    h3.write(b"d", 3, CMD)
    engine4, h4 = _opened()
    h4.truncate(0)  # open(O_TRUNC) on a kernel without atomic_o_trunc
    h4.write(b"a", 0, CMD)
    assert [w.how for w in engine.writers] == ["create"]
    assert [w.how for w in engine2.writers] == ["append"]
    assert [w.how for w in engine3.writers] == ["create", "append"]  # continues after its commit
    assert [w.how for w in engine4.writers] == ["create"]


def test_an_opened_file_claims_its_path_at_its_first_write_or_truncation():
    """Lock files, O_RDWR probes: two opens of one file that do not write both stay
    unclaimed; the first to write claims the path, and the other's write is refused
    with EBUSY, changing nothing."""
    holder: dict[str, WriteHandle] = {}

    def claim(h):
        other = holder.get(h.path)
        if other is not None and other is not h and other.is_live:
            raise errors.Busy("s3://b/k: another descriptor is writing it (test)")
        holder[h.path] = h

    e = FakeEngine(5)
    a, b, c = (WriteHandle("/k", "s3://b/k", e.open_writer, mode="append", size=5, append=False, claim=claim)
               for _ in range(3))
    for h in (a, b, c):
        h.flush(CMD)
        h.fsync()
        assert h.state is S.OPENED and not h.is_live and not e.writers
    a.write(b"x", 5, CMD)
    assert a.is_live and holder["/k"] is a
    with pytest.raises(errors.Busy):
        b.write(b"y", 5, CMD)
    with pytest.raises(errors.Busy):
        c.truncate(0)
    assert (b.state, c.state) == (S.OPENED, S.OPENED) and not b.is_live and not c.is_live
    assert len(e.writers) == 1 and c.size == 5
    a.flush(CMD)
    assert not a.release() and not a.is_live
    b.release()
    c.truncate(0)  # now free: c claims it
    assert c.is_live and c.state is S.CREATED and holder["/k"] is c
    created = WriteHandle("/n", "s3://b/n", e.open_writer, mode="create", size=0, append=False, claim=claim)
    assert created.is_live  # a created file claims its path at open (the table registers it)


def test_a_file_created_and_never_written_is_committed_empty_at_release():
    engine, h = _created()
    h.hold_attrs(mode=0o600)
    assert h.needs_final_work() and h.release() and h.state is S.RELEASING
    h.finish_release()
    assert h.state is S.RELEASED and h.wait_released(0)
    assert engine.commits == 1 and engine.size == 0
    assert [(w.how, w.mode) for w in engine.writers] == [("create", 0o600)]


def test_a_stream_grown_elsewhere_since_open_is_given_back_and_the_state_stays():
    engine, h = _opened()
    engine.size = 9  # appended to by another mount between open and first write
    with pytest.raises(errors.Busy):
        h.write(b"a", 5, CMD)
    assert h.state is S.OPENED and h.size == 5
    assert engine.open_writers() == [] and engine.commits == 1  # closed as it was: still complete
    # With O_APPEND the write goes to the end, wherever that is now.
    engine = FakeEngine(5)
    h = handle(engine, "append", size=5, append=True)
    engine.size = 9
    assert h.write(b"a", 5, CMD) == 1 and h.size == 10 and h.state is S.WRITING


# state, operation, the engine call that fails, the errno reported, the state after
FAILURES = [
    (S.CREATED, "write at the end", "open", errno.EBUSY, S.FAILED),
    (S.CREATED, "flush by another", "open", errno.EBUSY, S.FAILED),
    (S.CREATED, "fsync", "flush", errno.EHOSTUNREACH, S.FAILED),
    (S.OPENED, "write at the end", "write", errno.EHOSTUNREACH, S.FAILED),
    (S.CLAIMED, "fsync", "flush", errno.EHOSTUNREACH, S.FAILED),
    (S.WRITING, "write at the end", "write", errno.EHOSTUNREACH, S.FAILED),
    (S.WRITING, "fsync", "flush", errno.EHOSTUNREACH, S.FAILED),
    (S.WRITING, "flush by the writer", "close", errno.EIO, S.FAILED),
    (S.COMMITTED, "write at the end", "open", errno.EBUSY, S.FAILED),
    (S.RELEASING, "finish_release", "close", errno.EIO, S.RELEASED),
]


@pytest.mark.parametrize("state,op,call,err,after", FAILURES, ids=lambda v: getattr(v, "name", v))
def test_an_engine_failure_aborts_the_writer_and_the_error_sticks(state, op, call, err, after):
    engine, h = SETUPS[state]()
    commits = engine.commits
    engine.fail = call
    with pytest.raises(errors.S3PipeError) as e:
        OPS[op](h)
    assert errors.errno_of(e.value) == err
    assert h.state is after
    assert engine.open_writers() == [] and engine.commits == commits  # aborted, never complete
    assert all(w.aborted for w in engine.writers[-1:]) or call == "open"
    if after is S.FAILED:
        for again in ("write at the end", "fsync", "flush by the writer"):
            with pytest.raises(errors.S3PipeError) as e2:
                OPS[again](h)
            assert e2.value is e.value  # the same error, every time
        assert h.release() is False and h.state is S.RELEASED
    else:
        assert h.wait_released(0)


def test_a_release_racing_a_writer_commits_exactly_once():
    """One thread writes and closes (write, then flush); another releases, as the
    filesystem does: release(), then finish_release() when it says a commit is due.
    Whatever the interleaving, the stream is committed once, holds every accepted byte,
    is never replaced by an empty one, and no engine writer is left open."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    orders = set()
    try:
        for trial in range(300):
            rnd = random.Random(trial)
            engine, h = _writing()  # 3 bytes written, not yet committed
            barrier = threading.Barrier(2)
            accepted = []

            def writer():
                barrier.wait()
                time.sleep(rnd.random() * 1e-4)
                try:
                    h.write(b"de", 3, CMD)
                    accepted.append(2)
                    h.flush(CMD)
                except errors.S3PipeError as e:
                    assert errors.errno_of(e) == errno.EBADF, e  # only a released handle refuses

            def releaser():
                barrier.wait()
                time.sleep(rnd.random() * 1e-4)
                if h.release():
                    h.finish_release()

            threads = [threading.Thread(target=writer), threading.Thread(target=releaser)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            assert h.state is S.RELEASED
            assert engine.commits == 1, f"trial {trial}: {engine.commits} commits"
            assert engine.size == 3 + sum(accepted)
            assert engine.open_writers() == []
            assert [w.how for w in engine.writers] == ["create"]  # never re-created empty
            orders.add(bool(accepted))
    finally:
        sys.setswitchinterval(old)
    assert orders == {True, False}, "the race was never run both ways"


@pytest.mark.parametrize("state", list(S), ids=lambda s: s.name)
def test_only_a_committed_handle_lets_go_of_a_path_being_removed(state):
    """unlink of a file closed a moment ago, whose release the kernel has not sent yet:
    the handle gives the path up, and a later write through it is ESTALE (the name does
    not come back); any other state keeps it (the unlink is EBUSY)."""
    engine, h = SETUPS[state]()
    live, commits = h.is_live, engine.commits
    if state is not S.COMMITTED:
        assert h.detach() is False and h.state is state and h.is_live == live
        return
    assert h.detach() is True
    assert h.state is S.FAILED and not h.is_live and engine.commits == commits
    with pytest.raises(errors.S3PipeError) as e:
        h.write(0, b"late")
    assert errors.errno_of(e.value) == errno.ESTALE
    assert not engine.open_writers()  # nothing reopened the stream
    assert h.release() is False and h.state is S.RELEASED
