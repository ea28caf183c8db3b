"""The mount daemon's side of `s3pipefs status`: a snapshot of the mount, served on its socket.

The snapshot is made from the objects that already hold the state: the handle table's
writers and readers (each writer's engine StreamWriter reports its bytes and segments in
flight), and the store's RetryStats and limiters (s3/retry.py), through which every
request passes. One daemon thread accepts connections and answers each with the JSON of
a fresh snapshot; s3pipefs/status.py says where the socket is and reads it.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from s3pipefs import status

log = logging.getLogger(__name__)


def snapshot(fs, source: str, mountpoint: str, started: float) -> dict:
    store = fs.engine.store
    limiter = store.retry.limiter
    writers = []
    for h in fs.handles.writers():
        w = h.stream_writer
        entry = {"path": h.path, "state": h.state.name.lower(), "size": h.size}
        if w is not None:
            entry.update(w.progress())
        if h.error is not None:
            entry["error"] = str(h.error)
        writers.append(entry)
    readers = []
    for h in fs.handles.readers():
        try:
            size = h.size()
        except Exception:  # noqa: BLE001 - a reader that just failed still shows up
            size = None
        readers.append({"path": h.path, "size": size})
    bw = getattr(store, "bandwidth", None)
    return {
        "mountpoint": mountpoint, "source": source, "pid": os.getpid(),
        "uptime_seconds": round(time.time() - started, 1),
        "writers": writers, "readers": readers,
        "requests": store.stats.as_dict(),
        "rate_limit": None if limiter is None or limiter.rate is None else round(limiter.rate, 1),
        "bwlimit": bw.rate if bw is not None else None,
    }


class StatusServer:
    """Answers each connection on the mount's socket with a snapshot, until ``close``."""

    def __init__(self, fs, source: str, mountpoint: str):
        self._fs, self._source, self._mountpoint = fs, source, mountpoint
        self._started = time.time()
        self.path = status.socket_path(mountpoint)
        self._sock: socket.socket | None = None

    def start(self) -> None:
        try:
            status.private_dir()
            try:
                os.unlink(self.path)  # a stale one, from a daemon that died at this mount point
            except FileNotFoundError:
                pass
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)  # created 0600, never briefly open to others
            try:
                sock.bind(self.path)
            finally:
                os.umask(old)
            sock.listen(8)
        except OSError as e:
            log.warning("s3pipefs status will not see this mount: %s", e)
            return
        self._sock = sock
        threading.Thread(target=self._serve, name="s3pipefs-status", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            with conn:
                try:
                    doc = snapshot(self._fs, self._source, self._mountpoint, self._started)
                    conn.sendall(json.dumps(doc).encode())
                except Exception as e:  # noqa: BLE001 - a status request never harms the mount
                    log.debug("status request failed: %s", e)

    def close(self) -> None:
        if self._sock is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._sock = None
