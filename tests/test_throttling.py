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
import os
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
        proxy.clear()
        # The fault-free time once more, after the storm: on a shared machine one run of
        # under a second varies by half; the mean of the two is the reference.
        again, r2 = _timed_sync(s3_server, tmp_path / "src", f"s3://{bucket}/calm2/", proxy.endpoint)
        assert r2.returncode == 0, r2.stderr
        calm = (calm + again) / 2
    err = r.stderr.decode()
    print(f"\n{n} files: {calm:.2f}s without faults, {stormy:.2f}s under a 1-in-3 SlowDown storm "
          f"({storm.hits} throttled of {storm.matched}); stderr: {err.strip()}")
    assert r.returncode == 0, err
    assert storm.hits >= n // 3  # every third request of at least n uploads was refused
    assert len(list(store.list(bucket, "storm/"))) == n
    # The first cut's probe shows slower did not help, so the limit is lifted within a
    # fraction of a second and refused requests are retried promptly: about 1-2x here
    # (2.5x-4.9x while the limiter took seconds to tell, and the backoff grew per request;
    # 210x with a rate driven to the floor).
    assert stormy < 4 * calm, (calm, stormy)
    notice = [ln for ln in err.splitlines() if "throttl" in ln]
    assert len(notice) == 1, err  # one line, without -v
    assert "SlowDown" in notice[0] and "/s" in notice[0], notice


def test_bwlimit_paces_put_and_cat_and_the_bytes_arrive_whole(cli, bucket):
    n, limit = 6, 2  # MiB, MiB/s
    data = os.urandom(n << 20)
    url = f"s3://{bucket}/paced"
    t0 = time.monotonic()
    r = cli("put", "--bwlimit", f"{limit}M", "--segment-size", "1M", url, input=data)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    # Paced block by block, the first block free: (n - 1) / limit seconds at least.
    assert took >= 0.9 * (n - 1) / limit, took
    t0 = time.monotonic()
    r = cli("cat", "--bwlimit", f"{limit}M", url)
    took_cat = time.monotonic() - t0
    assert r.returncode == 0 and r.stdout == data
    assert took_cat >= 0.9 * (n - 1) / limit, took_cat
    # Without the limit the same bytes take a fraction of that (loopback).
    t0 = time.monotonic()
    assert cli("cat", url).stdout == data
    assert time.monotonic() - t0 < took_cat / 2
    r = cli("put", "--bwlimit", "fast", url, input=b"x")
    assert r.returncode == 2 and b"not a size" in r.stderr


def test_bwlimit_is_a_mount_option_too():
    from s3pipefs.fs.options import parse_options, render

    opts, _ = parse_options(["bwlimit=10M"])
    assert opts.s3.bwlimit == 10 << 20
    assert parse_options([render(opts)])[0] == opts
