"""Throttling keeps pace, and --bwlimit paces payload (s3/retry.py, s3/bandwidth.py).

* Under a storm in which one request in three is answered 503 SlowDown, a `sync` of 400
  small files finishes within 4x the time of the same sync without faults, both run here
  through the same fault proxy, and stderr says (without -v) that the server throttled
  and how far the request rate was lowered.
* ``--bwlimit`` holds a put's upload and a cat's download to the limit, and the bytes
  arrive whole.
"""
from __future__ import annotations

import hashlib
import time

from tests.conftest import run_cli
from tests.faultproxy import FaultProxy, Rule


def _small_files(root, n: int) -> None:
    for i in range(n):
        d = root / f"d{i % 8}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}").write_bytes(hashlib.sha256(str(i).encode()).digest() * (1 + i % 5))


def _timed_sync(s3_server, src, dst, endpoint) -> tuple[float, object]:
    t0 = time.monotonic()
    r = run_cli(s3_server, "sync", str(src), dst, endpoint=endpoint)
    return time.monotonic() - t0, r


def test_sync_keeps_pace_under_a_one_in_three_slowdown_storm(s3_server, store, bucket, tmp_path):
    n = 400
    _small_files(tmp_path / "src", n)
    with FaultProxy(s3_server.endpoint) as proxy:
        calm, r = _timed_sync(s3_server, tmp_path / "src", f"s3://{bucket}/calm/", proxy.endpoint)
        assert r.returncode == 0, r.stderr
        assert b"throttl" not in r.stderr  # no notice without throttling
        storm = proxy.add(Rule("status", status=503, code="SlowDown", every=3, times=-1))
        stormy, r = _timed_sync(s3_server, tmp_path / "src", f"s3://{bucket}/storm/", proxy.endpoint)
    err = r.stderr.decode()
    print(f"\n{n} files: {calm:.2f}s without faults, {stormy:.2f}s under a 1-in-3 SlowDown storm "
          f"({storm.hits} throttled of {storm.matched}); stderr: {err.strip()}")
    assert r.returncode == 0, err
    assert storm.hits >= n // 3  # every third request of at least n uploads was refused
    assert len(list(store.list(bucket, "storm/"))) == n
    assert stormy < 4 * calm, (calm, stormy)
    notice = [ln for ln in err.splitlines() if "throttl" in ln]
    assert len(notice) == 1, err  # one line, without -v
    assert "SlowDown" in notice[0] and "/s" in notice[0], notice
