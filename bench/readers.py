"""Many readers of one live stream: server requests per second and per-reader lag.

One writer appends a segment every ``--every`` seconds to a stream; 1, 16 and 64 readers
(threads of this process, sharing one S3 client as a mount's open files do) follow it to
the end. For each count it runs twice:

* ``polling``: the reader as it is (conditional GETs of the manifest, backing off from
  ``poll_interval`` to ``poll_max`` while nothing grows);
* ``fixed``: the reader as it was (a full GET of the manifest every ``poll_interval``):
  the store drops the If-None-Match and ``poll_max`` is ``poll_interval``.

Lag is the time from the writer's flush() returning (the segment landed and the manifest
names it) to a reader having read that segment, over every reader and segment after the
first. Requests are counted by the readers' store as they are sent: manifest GETs (200 or
304) and segment GETs; the server's CPU is read from /proc.

Runnable by hand, not part of the test suite (it takes about two minutes)::

    .venv/bin/python bench/readers.py                     # a local SeaweedFS of its own
    .venv/bin/python bench/readers.py --readers 1,16 --duration 10
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from s3pipefs import errors  # noqa: E402
from s3pipefs.config import KiB, S3Config, TransferConfig  # noqa: E402
from s3pipefs.engine import Engine  # noqa: E402
from s3pipefs.s3 import Store  # noqa: E402


class CountingStore(Store):
    """A Store that counts the GETs its readers send; ``conditional=False`` drops the
    If-None-Match of manifest polls (the reader before conditional GETs)."""

    def __init__(self, cfg: S3Config, conditional: bool):
        super().__init__(cfg)
        self.conditional = conditional
        self.counts = {"manifest 200": 0, "manifest 304": 0, "segment": 0}
        self._count_lock = threading.Lock()

    def get(self, bucket, key, *args, if_none_match=None, **kw):
        manifest = key.endswith("/.manifest")
        what = "manifest 200" if manifest else "segment"
        try:
            return super().get(bucket, key, *args, if_none_match=if_none_match if self.conditional else None, **kw)
        except errors.NotModified:
            what = "manifest 304"
            raise
        finally:
            with self._count_lock:
                self.counts[what] += 1


def cpu_seconds(pid: int | None) -> float:
    """user + system CPU of a process and its reaped children, from /proc (0 if unknown)."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def run_once(endpoint: str, bucket: str, readers: int, mode: str, args, server_pid: int | None) -> dict:
    seg = args.segment
    name = f"live-{mode}-{readers}-{time.time_ns()}"
    wstore = Store(S3Config(endpoint_url=endpoint))
    staging = tempfile.mkdtemp(prefix="readers-bench-")
    wcfg = TransferConfig(segment_size=seg, workers=2, staging_dir=staging, flush_interval=0)
    writer = Engine(wstore, wcfg).open_writer(bucket, name)
    landed: dict[int, float] = {}
    writer.write(os.urandom(seg))
    writer.flush()
    landed[0] = time.monotonic()

    poll = TransferConfig().poll_interval
    rcfg = TransferConfig(workers=2, follow_timeout=60, poll_interval=poll,
                          poll_max=TransferConfig().poll_max if mode == "polling" else poll)
    rstore = CountingStore(S3Config(endpoint_url=endpoint, max_pool_connections=readers + 8),
                           conditional=mode == "polling")
    engine = Engine(rstore, rcfg)
    seen: list[list[tuple[int, float]]] = [[] for _ in range(readers)]
    failures: list[str] = []

    def follow(i: int) -> None:
        try:
            with engine.open_reader(bucket, name) as r:
                offset = 0
                while True:
                    data = r.read(offset, seg)
                    if not data:
                        return
                    offset += len(data)
                    if offset % seg == 0:
                        seen[i].append((offset // seg - 1, time.monotonic()))
        except Exception as e:  # noqa: BLE001 - reported in the table
            failures.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=follow, args=(i,), daemon=True) for i in range(readers)]
    for t in threads:
        t.start()
    time.sleep(1)  # every reader has read the first segment and waits
    before = dict(rstore.counts)
    cpu0, t0 = cpu_seconds(server_pid), time.monotonic()
    segments = max(2, int(args.duration / args.every))
    for n in range(1, segments + 1):
        time.sleep(args.every)
        writer.write(os.urandom(seg))
        writer.flush()
        landed[n] = time.monotonic()
    time.sleep(args.every)  # the readers' last waits
    elapsed, cpu1 = time.monotonic() - t0, cpu_seconds(server_pid)
    after = dict(rstore.counts)
    writer.close()
    for t in threads:
        t.join(30)
    lags = [at - landed[n] for per in seen for n, at in per if n >= 1]
    counts = {k: (after[k] - before[k]) / elapsed for k in after}
    lags.sort()
    return {
        "readers": readers, "mode": mode, "elapsed": elapsed, "failures": failures,
        "manifest_200": counts["manifest 200"], "manifest_304": counts["manifest 304"],
        "segment": counts["segment"], "all": sum(counts.values()),
        "server_cpu": (cpu1 - cpu0) / elapsed,
        "lag_median": statistics.median(lags) if lags else None,
        "lag_p95": lags[int(0.95 * (len(lags) - 1))] if lags else None,
        "lag_max": lags[-1] if lags else None, "lags": len(lags),
        "expected_lags": readers * segments,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readers", default="1,16,64", help="reader counts, comma-separated")
    ap.add_argument("--modes", default="polling,fixed", help="polling (as it is), fixed (as it was)")
    ap.add_argument("--every", type=float, default=2.0, help="seconds between two segments")
    ap.add_argument("--duration", type=float, default=16.0, help="seconds of writing per run")
    ap.add_argument("--segment", type=int, default=64 * KiB, help="segment size in bytes")
    ap.add_argument("--endpoint", help="an S3 endpoint (credentials from the environment); "
                                       "default: a SeaweedFS of its own in a temp dir")
    args = ap.parse_args()
    server = None
    if args.endpoint:
        endpoint, pid = args.endpoint, None
    else:
        from s3pipefs.server import LocalServer

        server = LocalServer(tempfile.mkdtemp(prefix="readers-bench-server-")).start()
        os.environ.update(server.env())
        endpoint, pid = server.endpoint, server.pid
    try:
        bucket = f"bench-readers-{os.getpid()}"
        Store(S3Config(endpoint_url=endpoint)).create_bucket(bucket)
        print("| readers | reader | manifest GETs/s (200 / 304) | segment GETs/s | requests/s "
              "| server CPU | lag median / p95 / max |")
        print("|---|---|---|---|---|---|---|")
        for readers in (int(n) for n in args.readers.split(",")):
            for mode in args.modes.split(","):
                r = run_once(endpoint, bucket, readers, mode, args, pid)
                lag = ("n/a" if r["lag_median"] is None else
                       f"{r['lag_median']:.2f} / {r['lag_p95']:.2f} / {r['lag_max']:.2f} s")
                note = f" ({len(r['failures'])} readers failed: {r['failures'][0]})" if r["failures"] else ""
                if r["lags"] != r["expected_lags"]:
                    note += f" ({r['lags']} of {r['expected_lags']} segment reads)"
                print(f"| {readers} | {mode} | {r['manifest_200'] + r['manifest_304']:.1f} "
                      f"({r['manifest_200']:.1f} / {r['manifest_304']:.1f}) | {r['segment']:.1f} | "
                      f"{r['all']:.1f} | {100 * r['server_cpu']:.0f}% | {lag}{note} |", flush=True)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
