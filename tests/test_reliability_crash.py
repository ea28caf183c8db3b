"""Crash safety of the pipe face: `kill -9` of a writer at the worst moments.

What must hold after any crash (docs/reliability.md, "Crash safety"):
* what the manifest names was verified, and reads back as a prefix of the input;
* the stream is incomplete, never complete (and a complete stream being replaced stays
  the old complete stream);
* `put --resume` (same input) or `put --append` (the rest) continues it to the right
  bytes, and leaves no stray objects behind.
"""
from __future__ import annotations

import hashlib
import signal
import subprocess
import time

from s3pipefs.config import TransferConfig
from s3pipefs.engine import Engine
from s3pipefs.engine.verify import verify_stream
from tests.faultproxy import Rule
from tests.test_reliability_common import (SEG, blob, manifest_of, run, seg_key, slow_feeder, spawn,
                                           wait_until)


def keys_under(store, bucket, prefix):
    return sorted(o.key[len(prefix):] for o in store.list(bucket, prefix))


def verified(store, bucket, key) -> bool:
    rep = verify_stream(Engine(store, TransferConfig(segment_size=SEG)), bucket, key)
    return rep.ok


def test_kill9_with_uploads_in_flight_names_only_the_contiguous_verified_run(
        fault_proxy, proxied_env, s3_env, store, bucket):
    """Segment 3 hangs on its way to S3 while 4..6 land; kill -9 the writer then. The
    manifest must name segments 1-2 only (no hole), and resume must finish the stream."""
    data = blob(6 * SEG + 100, 31)
    url = f"s3://{bucket}/s"
    fault_proxy.add(Rule("stall", method="PUT", path_contains=seg_key(3), seconds=60))
    p = spawn(proxied_env, "put", "--segment-size", str(SEG), "--workers", "4", url,
              stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdin.write(data)
    p.stdin.close()  # all input given: the writer now waits for segment 3 inside close()
    wait_until(lambda: store.head(bucket, "s/" + seg_key(6)) is not None, 30, what="segment 6 to land")
    time.sleep(0.6)  # let the manifest thread publish what is contiguous
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    fault_proxy.stop()  # the stalled PUT of segment 3 is dropped, never forwarded

    m = manifest_of(store, bucket, "s")
    assert not m.completed
    assert m.num_segments == 2 and m.total_size == 2 * SEG, m  # not 6: segment 3 is missing
    assert store.head(bucket, "s/" + seg_key(3)) is None
    r = run(s3_env, "cat", "--no-follow", url)
    assert r.returncode == 0, r
    assert r.stdout == data[:2 * SEG]
    assert run(s3_env, "ls", url).stdout.split()[0] == b"INCOMPLETE"
    # A follower of the dead stream gets the verified bytes, then a clear error in bounded time.
    r = run(s3_env, "cat", "--follow-timeout", "2", url, timeout=60)
    assert r.returncode == 1 and "incomplete" in r.last_line(), r
    assert r.stdout == data[:2 * SEG] and r.elapsed < 20

    r = run(s3_env, "put", "--resume", "--segment-size", str(SEG), url, input=data)
    assert r.returncode == 0, r
    assert run(s3_env, "cat", url).stdout == data
    m = manifest_of(store, bucket, "s")
    assert m.completed and m.sha256 == hashlib.sha256(data).hexdigest()
    assert keys_under(store, bucket, "s/") == [".manifest"] + [seg_key(i) for i in range(1, 8)]
    assert verified(store, bucket, "s")


def test_kill9_while_replacing_keeps_the_old_complete_stream(s3_env, store, bucket, tmp_path):
    old, new = blob(3 * SEG + 1, 32), blob(8 * SEG, 33)
    url = f"s3://{bucket}/s"
    assert run(s3_env, "put", "--segment-size", str(SEG), url, input=old).returncode == 0
    src = tmp_path / "new"
    src.write_bytes(new)
    feed = subprocess.Popen(slow_feeder(src, 5 * SEG), stdout=subprocess.PIPE)
    p = spawn(s3_env, "put", "--segment-size", str(SEG), url, stdin=feed.stdout, stderr=subprocess.PIPE)
    feed.stdout.close()
    wait_until(lambda: len([k for k in keys_under(store, bucket, "s/") if k.startswith(".next-")]) >= 4, 30,
               what="the replacement's segments")
    p.kill()
    p.wait(10)
    feed.kill()
    # The old stream is untouched: complete, same bytes, every checksum right.
    m = manifest_of(store, bucket, "s")
    assert m.completed and m.total_size == len(old) and m.sha256 == hashlib.sha256(old).hexdigest()
    assert run(s3_env, "cat", url).stdout == old
    assert verified(store, bucket, "s")
    # The next writer replaces it at once (the dead writer was on this host) and cleans up.
    r = run(s3_env, "put", "--segment-size", str(SEG), url, input=new)
    assert r.returncode == 0, r
    assert run(s3_env, "cat", url).stdout == new
    assert keys_under(store, bucket, "s/") == [".manifest"] + [seg_key(i) for i in range(1, 9)]


def test_kill9_of_an_append_is_continued_by_appending_the_rest(s3_env, store, bucket, tmp_path):
    """`>>` after a crash: the stream keeps the old bytes plus the verified part of the
    append; `info` says how far it got and `put --append` of the rest completes it."""
    old, more = blob(2 * SEG + 9, 34), blob(6 * SEG + 5, 35)
    url = f"s3://{bucket}/s"
    assert run(s3_env, "put", "--segment-size", str(SEG), url, input=old).returncode == 0
    src = tmp_path / "more"
    src.write_bytes(more)
    feed = subprocess.Popen(slow_feeder(src, 3 * SEG), stdout=subprocess.PIPE)
    p = spawn(s3_env, "put", "--append", "--segment-size", str(SEG), url, stdin=feed.stdout,
              stderr=subprocess.PIPE)
    feed.stdout.close()
    wait_until(lambda: (m := manifest_of(store, bucket, "s")) and m.num_segments >= 5, 30,
               what="appended segments")
    p.kill()
    p.wait(10)
    feed.kill()
    m = manifest_of(store, bucket, "s")
    assert not m.completed
    size = m.total_size
    assert len(old) < size <= len(old) + 3 * SEG
    assert run(s3_env, "cat", "--no-follow", url).stdout == (old + more)[:size]
    rest = more[size - len(old):]
    r = run(s3_env, "put", "--append", "--segment-size", str(SEG), url, input=rest)
    assert r.returncode == 0, r
    assert run(s3_env, "cat", url).stdout == old + more
    assert manifest_of(store, bucket, "s").completed
    assert verified(store, bucket, "s")


def test_kill9_before_any_segment_leaves_an_incomplete_empty_stream(s3_env, store, bucket):
    """A writer killed right after taking the stream: incomplete, zero bytes, and a new
    put (not only --resume) can take it over at once."""
    url = f"s3://{bucket}/s"
    p = spawn(s3_env, "put", url, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(lambda: manifest_of(store, bucket, "s") is not None, 30, what="the manifest")
    p.kill()
    p.wait(10)
    p.stdin.close()
    m = manifest_of(store, bucket, "s")
    assert not m.completed and m.total_size == 0
    r = run(s3_env, "cat", "--no-follow", url)
    assert r.returncode == 0 and r.stdout == b""
    r = run(s3_env, "put", url, input=b"after the crash")
    assert r.returncode == 0, r
    assert run(s3_env, "cat", url).stdout == b"after the crash"
