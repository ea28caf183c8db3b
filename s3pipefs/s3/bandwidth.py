"""The store's bandwidth limit (``--bwlimit``, ``-o bwlimit=``): payload bytes a second,
uploads and downloads together, shared by every thread of the store.

A backup should leave the link usable, so bytes are paced block by block, never charged
for a whole segment and then sent in one burst: upload bodies are read through
:class:`PacedBody` (urllib3 sends a file body in 1 MiB reads, s3/store.py), download
bodies are read in BLOCK pieces, and each block waits its turn in :meth:`Bandwidth.take`.
Turns are spaced ``n / rate`` apart, like the request limiter's (s3/retry.py), and an idle
link banks no credit, so a burst is one block at most. A retried request pays again: its
bytes cross the link again. Requests and their headers are not counted.
"""
from __future__ import annotations

import threading
import time

BLOCK = 1 << 20  # bytes per paced read of a download body


class Bandwidth:
    def __init__(self, rate: int, clock=time.monotonic, sleep=time.sleep):
        if rate <= 0:
            raise ValueError("a bandwidth limit is a positive number of bytes a second")
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = 0.0

    def take(self, n: int) -> None:
        """Wait until ``n`` more bytes may cross the link."""
        if n <= 0:
            return
        with self._lock:
            now = self._clock()
            at = max(now, self._next)
            self._next = at + n / self.rate
        if at > now:
            self._sleep(at - now)


class PacedBody:
    """A request body (a file, or bytes) read through a :class:`Bandwidth`: what the
    HTTP client reads, block by block, is what crosses the link. Seekable as the file is,
    so a retry rewinds it (s3/store.py ``_rewinding``)."""

    def __init__(self, raw, bandwidth: Bandwidth):
        self._raw = raw
        self._bandwidth = bandwidth

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._bandwidth.take(len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


def read_paced(body, bandwidth: Bandwidth | None) -> bytes:
    """A download body, whole: read in BLOCK pieces through ``bandwidth`` when there is one."""
    if bandwidth is None:
        return body.read()
    parts = []
    while True:
        bandwidth.take(BLOCK)
        block = body.read(BLOCK)
        if not block:
            return b"".join(parts)
        parts.append(block)
