"""The fault matrix for the pipe face: `put` and `cat` through the fault proxy.

Each cell runs the real CLI against the session SeaweedFS with a FaultProxy in between,
and judges the result from outside (docs/reliability.md has the matrix as a table):

* transient faults (503 SlowDown, 500, resets, stalls, truncated bodies) -> exit 0 and
  identical bytes, with the fault shown to have fired;
* corruption in transit -> detected and retried; corrupt bytes never reach stdout or S3;
* persistent faults -> exit 1 with one clear line within a bounded time, and the stream
  never marked complete;
* the server killed and restarted mid-transfer -> the transfer continues, or fails
  cleanly and `put --resume` finishes it with the right bytes.
"""
from __future__ import annotations

import hashlib
import subprocess
import time

import pytest

from s3pipefs.config import S3Config, TransferConfig
from s3pipefs.engine import Engine
from s3pipefs.engine.verify import verify_stream
from s3pipefs.s3 import Store
from tests.conftest import unique_name
from tests.faultproxy import Rule
from tests.test_reliability_common import (SEG, blob, manifest_of, own_env, own_server, run, seg_key,  # noqa: F401
                                           slow_feeder, spawn, wait_until)

DATA = blob(5 * SEG + 7, 5)  # six segments, the last one short
SEG2 = seg_key(2)
SEG3 = seg_key(3)
MANIFEST = ".manifest"


def assert_complete_and_identical(store, s3_env, bucket, key, data):
    """Complete, the right bytes, and every segment at rest matches its checksum (read
    in-process, straight from the server: faster than two more CLI runs)."""
    m = manifest_of(store, bucket, key)
    assert m is not None and m.completed, m
    assert m.total_size == len(data) and m.sha256 == hashlib.sha256(data).hexdigest()
    eng = Engine(store, TransferConfig(segment_size=SEG, workers=4))
    with eng.open_reader(bucket, key, follow=False) as r:
        assert r.read(0, len(data) + 1) == data
    rep = verify_stream(eng, bucket, key)
    assert rep.ok, rep.summary()


def assert_not_complete(store, bucket, key):
    m = manifest_of(store, bucket, key)
    assert m is None or not m.completed, m


# ---- put: transient faults -> identical bytes ---------------------------------------------------

PUT_TRANSIENT = {
    "503-slowdown-on-segment": [Rule("status", method="PUT", path_contains=SEG2, times=2)],
    "500-on-segment": [Rule("status", method="PUT", path_contains=SEG2, status=500, times=2)],
    "reset-before-segment": [Rule("reset", method="PUT", path_contains=SEG2, times=2)],
    "reset-mid-segment-body": [Rule("reset", method="PUT", path_contains=SEG2, after_bytes=1000,
                                    direction="request", times=2)],
    "segment-reply-lost": [Rule("reset", method="PUT", path_contains=SEG2, after_bytes=-1, times=2)],
    "stall-segment-1s": [Rule("stall", method="PUT", path_contains=SEG2, seconds=1)],
    "503-on-manifest": [Rule("status", method="PUT", path_contains=MANIFEST, skip=1, times=2)],
    "stall-manifest-1s": [Rule("stall", method="PUT", path_contains=MANIFEST, skip=1, seconds=1)],
    # The server stored the manifest but the reply was lost: the retried conditional PUT
    # then carries a stale If-Match.
    "manifest-reply-lost": [Rule("reset", method="PUT", path_contains=MANIFEST, after_bytes=-1, skip=1)],
    "first-manifest-reply-lost": [Rule("reset", method="PUT", path_contains=MANIFEST, after_bytes=-1)],
    # The writer's first GET (a 404 reply: botocore reads error bodies eagerly) and its
    # read-back of the manifest it just wrote, broken mid-body.
    "manifest-404-body-reset": [Rule("reset", method="GET", path_contains=MANIFEST, after_bytes=20)],
    "manifest-read-back-truncated": [Rule("truncate", method="GET", path_contains=MANIFEST, skip=1,
                                          after_bytes=20)],
    "manifest-read-back-corrupt": [Rule("corrupt", method="GET", path_contains=MANIFEST, skip=1,
                                        after_bytes=20)],
    "manifest-get-500": [Rule("status", method="GET", path_contains=MANIFEST, status=500, times=2)],
}


@pytest.mark.parametrize("case", list(PUT_TRANSIENT))
def test_put_transient_fault_gives_identical_bytes(case, fault_proxy, proxied_env, s3_env, store, bucket):
    rules = [fault_proxy.add(r) for r in PUT_TRANSIENT[case]]
    r = run(proxied_env, "put", "--segment-size", str(SEG), f"s3://{bucket}/s", input=DATA, timeout=90)
    assert r.returncode == 0, r
    assert all(rule.hits >= 1 for rule in rules), [(x.action, x.hits) for x in rules]
    fault_proxy.clear()
    assert_complete_and_identical(store, s3_env, bucket, "s", DATA)


# ---- put: corruption in transit -> refused by the server, retried --------------------------------

@pytest.mark.parametrize("target", [SEG2, MANIFEST])
def test_put_corruption_in_transit_is_rejected_and_retried(target, fault_proxy, proxied_env, s3_env, store,
                                                           bucket):
    # Flip one byte of the request body on its way to the server. Segments carry
    # x-amz-checksum-crc32 and the manifest Content-MD5, so the server must refuse it.
    skip = 1 if target == MANIFEST else 0
    rule = fault_proxy.add(Rule("corrupt", method="PUT", path_contains=target, after_bytes=30,
                                direction="request", skip=skip))
    r = run(proxied_env, "put", "--segment-size", str(SEG), f"s3://{bucket}/s", input=DATA, timeout=90)
    assert rule.hits == 1
    assert r.returncode == 0, r
    fault_proxy.clear()
    assert_complete_and_identical(store, s3_env, bucket, "s", DATA)
    # Every segment at rest matches its CRC32: the flipped byte never landed.
    assert run(s3_env, "verify", f"s3://{bucket}/s").returncode == 0


# ---- put: persistent faults -> clear error, bounded time, never complete ---------------------------

PUT_PERSISTENT = {
    "500-forever-on-segment": (Rule("status", method="PUT", path_contains=SEG3, status=500, times=-1),
                               "InternalError"),
    "reset-forever-on-segment": (Rule("reset", method="PUT", path_contains=SEG3, times=-1), "connection"),
    "503-forever-on-segment": (Rule("status", method="PUT", path_contains=SEG3, times=-1), "SlowDown"),
    "corrupt-forever-on-segment": (Rule("corrupt", method="PUT", path_contains=SEG3, direction="request",
                                        after_bytes=5, times=-1), "checksum"),
    "manifest-writes-fail": (Rule("status", method="PUT", path_contains=MANIFEST, status=500, skip=1, times=-1),
                             "InternalError"),
    "403-on-segments": (Rule("status", method="PUT", path_contains="/s/0", status=403, times=-1),
                        "access denied"),
}


@pytest.mark.parametrize("case", list(PUT_PERSISTENT))
def test_put_persistent_fault_fails_clearly_in_bounded_time(case, fault_proxy, proxied_env, s3_env, store,
                                                            bucket):
    rule, needle = PUT_PERSISTENT[case]
    fault_proxy.add(rule)
    r = run(proxied_env, "put", "--segment-size", str(SEG), "--tries", "2", f"s3://{bucket}/s",
            input=DATA, timeout=120)
    assert r.returncode == 1, r
    line = r.last_line()
    assert needle in line, line
    assert f"s3://{bucket}/s" in line
    assert rule.hits >= 1
    assert r.elapsed < 45, r.elapsed
    fault_proxy.clear()
    assert_not_complete(store, bucket, "s")
    # What the manifest names was verified: it reads back as a prefix of the input.
    c = run(s3_env, "cat", "--no-follow", f"s3://{bucket}/s")
    assert DATA.startswith(c.stdout)


# ---- cat: transient faults -> identical bytes ----------------------------------------------------

@pytest.fixture(scope="module")
def stream(s3_server):
    """One complete stream of DATA shared by the cat cells (they only read it): s3://B/s."""
    import uuid

    store = Store(S3Config(endpoint_url=s3_server.endpoint))
    bucket = "rel-cat-" + uuid.uuid4().hex[:8]
    store.create_bucket(bucket)
    with Engine(store, TransferConfig(segment_size=SEG, workers=4)).open_writer(bucket, "s") as w:
        w.write(DATA)
    return bucket


CAT_TRANSIENT = {
    "503-slowdown": [Rule("status", method="GET", path_contains=SEG2, times=2)],
    "500": [Rule("status", method="GET", path_contains=SEG2, status=500, times=2)],
    "reset-before": [Rule("reset", method="GET", path_contains=SEG2, times=2)],
    "reset-mid-body": [Rule("reset", method="GET", path_contains=SEG2, after_bytes=1000, times=2)],
    "truncated-body": [Rule("truncate", method="GET", path_contains=SEG2, after_bytes=1000, times=2)],
    "stall-1s": [Rule("stall", method="GET", path_contains=SEG2, seconds=1)],
    "stall-mid-body-1s": [Rule("stall", method="GET", path_contains=SEG2, after_bytes=5000, seconds=1)],
    "manifest-500": [Rule("status", method="GET", path_contains=MANIFEST, status=500, times=2)],
    "manifest-truncated": [Rule("truncate", method="GET", path_contains=MANIFEST, after_bytes=30)],
    "manifest-reset-mid-body": [Rule("reset", method="GET", path_contains=MANIFEST, after_bytes=30)],
}


@pytest.mark.parametrize("case", list(CAT_TRANSIENT))
def test_cat_transient_fault_gives_identical_bytes(case, fault_proxy, proxied_env, stream):
    bucket = stream
    rules = [fault_proxy.add(r) for r in CAT_TRANSIENT[case]]
    r = run(proxied_env, "cat", f"s3://{bucket}/s", timeout=90)
    assert all(rule.hits >= 1 for rule in rules)
    assert r.returncode == 0, r
    assert r.stdout == DATA


# ---- cat: corruption in transit -> detected, retried, never handed out -----------------------------

@pytest.mark.parametrize("target", [SEG2, MANIFEST])
def test_cat_corruption_in_transit_is_detected_and_retried(target, fault_proxy, proxied_env, stream):
    bucket = stream
    rule = fault_proxy.add(Rule("corrupt", method="GET", path_contains=target, after_bytes=40, times=2))
    r = run(proxied_env, "cat", f"s3://{bucket}/s", timeout=90)
    assert rule.hits >= 1
    assert r.returncode == 0, r
    assert r.stdout == DATA
    if target == SEG2:
        assert "CRC32 mismatch" in r.err  # detected (and logged) before the retry


def test_cat_persistent_corruption_never_reaches_stdout(fault_proxy, proxied_env, stream):
    bucket = stream
    fault_proxy.add(Rule("corrupt", method="GET", path_contains=SEG3, after_bytes=7, times=-1))
    r = run(proxied_env, "--tries", "3", "cat", f"s3://{bucket}/s", timeout=90)
    assert r.returncode == 1, r
    assert "CRC32 mismatch" in r.last_line() and SEG3 in r.last_line()
    # Exactly the verified segments before the damaged one came out, nothing after.
    assert r.stdout == DATA[:2 * SEG]
    assert r.elapsed < 30


# ---- cat: persistent faults -> clear error in bounded time, exact prefix ----------------------------

CAT_PERSISTENT = {
    "500-forever": (Rule("status", method="GET", path_contains=SEG3, status=500, times=-1), "InternalError"),
    "reset-forever": (Rule("reset", method="GET", path_contains=SEG3, times=-1), "connection"),
    "truncate-forever": (Rule("truncate", method="GET", path_contains=SEG3, after_bytes=100, times=-1),
                         "transfer broke"),
    "403-forever": (Rule("status", method="GET", path_contains=SEG3, status=403, times=-1), "access denied"),
    # (503 forever is the put cell above: the same store retry policy, seconds of throttled back-off.)
}


@pytest.mark.parametrize("case", list(CAT_PERSISTENT))
def test_cat_persistent_fault_fails_clearly_in_bounded_time(case, fault_proxy, proxied_env, stream):
    bucket = stream
    rule, needle = CAT_PERSISTENT[case]
    fault_proxy.add(rule)
    r = run(proxied_env, "cat", "--tries", "2", f"s3://{bucket}/s", timeout=120)
    assert r.returncode == 1, r
    assert needle in r.last_line() and SEG3 in r.last_line(), r.last_line()
    assert r.stdout == DATA[:2 * SEG]
    assert r.elapsed < 45, r.elapsed


# ---- live follow through faults ------------------------------------------------------------------------

def test_live_follow_survives_faults_on_manifest_polls_and_segments(fault_proxy, proxied_env, s3_env, bucket,
                                                                    tmp_path):
    """A reader following a growing stream sees transient faults on its manifest polls and
    segment GETs, and still outputs exactly what the writer wrote."""
    data = blob(8 * SEG + 3, 8)
    src = tmp_path / "src"
    src.write_bytes(data)
    url = f"s3://{bucket}/live"
    # Writer direct to the server, fed slowly so the reader catches up and has to poll.
    feed = subprocess.Popen(slow_feeder(src, len(data), pause=0, chunk=SEG // 2, delay=0.2),
                            stdout=subprocess.PIPE)
    writer = spawn(s3_env, "put", "--segment-size", str(SEG), url, stdin=feed.stdout, stderr=subprocess.PIPE)
    feed.stdout.close()
    wait_until(lambda: run(s3_env, "info", url).returncode == 0, 30, what="stream to appear")
    manifest_faults = [fault_proxy.add(r) for r in (
        Rule("status", method="GET", path_contains=MANIFEST, status=500, skip=1, times=1),
        Rule("truncate", method="GET", path_contains=MANIFEST, after_bytes=50, skip=2, times=1),
        Rule("reset", method="GET", path_contains=MANIFEST, after_bytes=10, skip=3, times=1),
        Rule("corrupt", method="GET", path_contains=MANIFEST, after_bytes=60, skip=4, times=1))]
    segment_faults = [fault_proxy.add(r) for r in (
        Rule("reset", method="GET", path_contains=seg_key(4), after_bytes=100, times=1),
        Rule("corrupt", method="GET", path_contains=seg_key(6), after_bytes=100, times=1))]
    r = run(proxied_env, "cat", "--follow-timeout", "20", url, timeout=120)
    assert writer.wait(60) == 0, writer.stderr.read()
    assert r.returncode == 0, r
    assert r.stdout == data
    # The polls met faults while the stream grew (4 polls at least: it grows for ~3 s).
    assert sum(rule.hits for rule in manifest_faults) >= 3
    assert all(rule.hits == 1 for rule in segment_faults)


# ---- server killed and restarted mid-transfer ----------------------------------------------------------

def test_put_across_a_server_crash_continues_or_resumes_to_the_right_bytes(own_server, s3_env, tmp_path):
    env = own_env(own_server, s3_env)
    store = Store(S3Config(endpoint_url=own_server.endpoint))
    bkt = unique_name("crash")
    store.create_bucket(bkt)
    data = blob(12 * SEG + 5, 12)
    src = tmp_path / "in"
    src.write_bytes(data)
    url = f"s3://{bkt}/s"
    # Half the input at once, then a pause during which the server dies and comes back.
    feed = subprocess.Popen(slow_feeder(src, 6 * SEG, pause=4, chunk=SEG // 4, delay=0.02),
                            stdout=subprocess.PIPE)
    p = spawn(env, "put", "--segment-size", str(SEG), "--tries", "8", url, stdin=feed.stdout,
              stderr=subprocess.PIPE)
    feed.stdout.close()
    wait_until(lambda: (m := manifest_of(store, bkt, "s")) and m.num_segments >= 3, 30,
               what="three segments")
    own_server.kill()
    time.sleep(1)
    own_server.start()
    try:
        rc = p.wait(120)
    finally:
        feed.kill()
    err = p.stderr.read().decode()
    assert "Traceback" not in err, err
    print(f"put across a server crash: exit {rc}; {err.strip()[-300:]}")
    if rc != 0:
        # Failing cleanly is allowed: one clear line, the stream not complete, and resume
        # with the same input finishes it.
        assert rc == 1, err
        assert not manifest_of(store, bkt, "s").completed
        r = run(env, "put", "--resume", "--segment-size", str(SEG), url, input=data, timeout=120)
        assert r.returncode == 0, r
    assert run(env, "cat", url).stdout == data
    assert run(env, "verify", url).returncode == 0


def test_cat_across_a_server_crash_continues_or_fails_cleanly(own_server, s3_env):
    env = own_env(own_server, s3_env)
    store = Store(S3Config(endpoint_url=own_server.endpoint))
    bkt = unique_name("crash")
    store.create_bucket(bkt)
    data = blob(24 * SEG + 1, 24)
    assert run(env, "put", "--segment-size", str(SEG), f"s3://{bkt}/s", input=data).returncode == 0
    # Small read-ahead and a slow consumer: most of the stream is fetched after the crash.
    p = spawn(env, "cat", "--read-ahead", str(2 * SEG), "--tries", "8", f"s3://{bkt}/s",
              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    got = p.stdout.read(4 * SEG)
    own_server.kill()
    time.sleep(1)
    own_server.start()
    got += p.stdout.read()
    rc = p.wait(120)
    err = p.stderr.read().decode()
    assert "Traceback" not in err, err
    print(f"cat across a server crash: exit {rc}; {err.strip()[-300:]}")
    if rc == 0:
        assert got == data
    else:
        assert rc == 1 and f"s3://{bkt}/s" in err.strip().splitlines()[-1], err
        assert data.startswith(got)  # never wrong bytes, only fewer


# ---- a server that accepts and never answers ------------------------------------------------------------

@pytest.mark.parametrize("method", ["PUT", "GET"])
def test_a_server_that_never_answers_is_bounded_by_timeouts_times_attempts(method, fault_proxy, store, bucket,
                                                                           tmp_path):
    """A stall forever is bounded by read_timeout x attempts (a segment's: tries): with 1 s
    and 2 the writer (PUT) or reader (GET) gives up in seconds with a clear EndpointError.
    (The CLI's defaults are 60 s x 5: see docs/reliability.md, "Limits".)"""
    from s3pipefs import errors

    if method == "GET":
        with Engine(store, TransferConfig(segment_size=SEG, workers=2)).open_writer(bucket, "s") as w:
            w.write(DATA)
    fault_proxy.add(Rule("stall", method=method, path_contains=SEG2, seconds=600, times=-1))
    eng = Engine(Store(S3Config(endpoint_url=fault_proxy.endpoint, read_timeout=1, connect_timeout=1,
                                max_attempts=2)),
                 TransferConfig(segment_size=SEG, workers=2, tries=2, staging_dir=str(tmp_path), follow_timeout=5))
    t0 = time.monotonic()
    with pytest.raises(errors.EndpointError) as e:
        if method == "PUT":
            with eng.open_writer(bucket, "s") as w:
                w.write(DATA)
        else:
            with eng.open_reader(bucket, "s") as r:
                r.read(0, len(DATA))
    assert SEG2 in str(e.value)
    assert time.monotonic() - t0 < 20
    if method == "PUT":
        assert_not_complete(store, bucket, "s")
