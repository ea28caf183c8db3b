"""Attributes of plain objects, stored a moment after they are set, merged.

S3 changes an object's metadata only by copying the object onto itself, so each chmod,
chown and utimens of an object is a HEAD and a copy. ``rsync -a`` sets three of them on
every file it writes, after closing it and just before renaming it, which would triple
what a small file costs. So the mount shows an object's new attributes at once (its
cache) and stores them DELAY seconds later, all of them in one copy, or in the rename's
own copy when a rename comes first (namespace.py). An unlink drops them; a file opened
for writing stores them first (a copy racing the commit of new bytes could bring the old
bytes back); unmount stores what is left.

The cost of the saving: attributes set within DELAY of a crash of the daemon are lost
(the data never is: close() has committed it), and other mounts see them DELAY later.
Streams keep their attributes in the manifest, written at once (engine set_attrs).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from s3pipefs import errors

log = logging.getLogger(__name__)

DELAY = 0.5  # seconds an object's new attributes wait for more, or for a rename


class AttrsBehind:
    def __init__(self, store_attrs: Callable[..., object], delay: float = DELAY, clock=time.monotonic):
        """``store_attrs(key, **attrs)``: writes them into the object ``key`` now."""
        self._store = store_attrs
        self._delay = delay
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: dict[str, tuple[float, dict]] = {}  # key -> (when due, attrs)
        self._storing: set[str] = set()
        self._thread: threading.Thread | None = None
        self._closed = False

    def hold(self, key: str, **attrs) -> None:
        """Store ``attrs`` (mode, uid, gid, mtime_ns) into the object ``key`` soon."""
        with self._cond:
            due, held = self._pending.get(key, (self._clock() + self._delay, {}))
            held.update({k: v for k, v in attrs.items() if v is not None})
            self._pending[key] = (due, held)
            if self._thread is None:
                # Started on first use: the daemon forks after building the filesystem.
                self._thread = threading.Thread(target=self._run, name="s3pipefs-attrs", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def held(self, key: str) -> dict:
        """What is held for ``key`` and not yet being stored ({} when nothing)."""
        with self._cond:
            return dict(self._pending.get(key, (0.0, {}))[1])

    def take(self, key: str) -> dict:
        """The attributes held for ``key``, no longer to be stored by this (the caller
        stores them, or the object is going); {} when none. Waits while they are being
        stored, so that a rename copies the object with them."""
        with self._cond:
            self._cond.wait_for(lambda: key not in self._storing)
            return self._pending.pop(key, (0.0, {}))[1]

    def store_now(self, key: str) -> None:
        """Store what is held for ``key`` at once (before new bytes are committed there)."""
        attrs = self.take(key)
        if attrs:
            self._store(key, **attrs)

    def store_under(self, prefix: str) -> None:
        """store_now() for every key under ``prefix`` (a directory about to be copied)."""
        with self._cond:
            self._cond.wait_for(lambda: not any(k.startswith(prefix) for k in self._storing))
            held = {k: self._pending.pop(k)[1] for k in [k for k in self._pending if k.startswith(prefix)]}
        for key, attrs in held.items():
            self._store(key, **attrs)

    def flush(self) -> None:
        """Store everything held now (unmount), and wait until it is stored."""
        with self._cond:
            for key, (_, attrs) in list(self._pending.items()):
                self._pending[key] = (0.0, attrs)
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._pending and not self._storing)

    def close(self) -> None:
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    now = self._clock()
                    due = [k for k, (when, _) in self._pending.items() if when <= now]
                    if due:
                        break
                    soonest = min((when for when, _ in self._pending.values()), default=None)
                    self._cond.wait(timeout=None if soonest is None else max(0.01, soonest - now))
                if self._closed:
                    return
                batch = {k: self._pending.pop(k)[1] for k in due}
                self._storing.update(batch)
            for key, attrs in batch.items():
                try:
                    self._store(key, **attrs)
                except errors.S3PipeError as e:  # gone meanwhile, or the server refused
                    log.warning("s3 key %s: attributes not stored: %s", key, e)
                except Exception:  # noqa: BLE001 - the thread must live on
                    log.exception("s3 key %s: attributes not stored", key)
                finally:
                    with self._cond:
                        self._storing.discard(key)
                        self._cond.notify_all()
