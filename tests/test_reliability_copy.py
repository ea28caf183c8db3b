"""The fault matrix for `cp` and `sync`: transient faults, corruption in transit,
persistent faults and kill -9, each judged from outside (docs/reliability.md).

Faults are placed on the requests that carry each kind of transfer: CopyObject (a PUT with
x-amz-copy-source) for server-side stream copies, PUT of segments for file -> stream,
UploadPart (`partNumber=` in the query) for file -> object, segment and range GETs for
S3 -> file, and object PUTs for `sync DIR s3://...`.
"""
from __future__ import annotations

import hashlib
import signal
import subprocess
import time

import pytest

from s3pipefs.config import MiB, TransferConfig
from s3pipefs.engine import Engine
from tests.conftest import unique_name
from tests.faultproxy import FaultProxy, Rule
from tests.test_reliability_common import (SEG, blob, manifest_of, own_env, own_server, own_store, run,  # noqa: F401
                                           seg_key, spawn, wait_until)

DATA = blob(6 * SEG + 11, 41)  # seven segments


def write_stream(store, bucket, key, data):
    with Engine(store, TransferConfig(segment_size=SEG, workers=4)).open_writer(bucket, key) as w:
        w.write(data)


def stream_bytes(store, bucket, key) -> bytes:
    with Engine(store, TransferConfig(segment_size=SEG)).open_reader(bucket, key, follow=False) as r:
        return r.read(0, r.size + 1)


def assert_copy_complete(store, bucket, key, data):
    m = manifest_of(store, bucket, key)
    assert m is not None and m.completed and m.total_size == len(data), m
    assert m.sha256 == hashlib.sha256(data).hexdigest()
    assert stream_bytes(store, bucket, key) == data


# ---- cp s3://A -> s3://B (server-side, segment by segment) ---------------------------------------

COPY_TRANSIENT = {
    "503-slowdown": Rule("status", method="PUT", path_contains=f"/dst/{seg_key(2)}", times=2),
    "500": Rule("status", method="PUT", path_contains=f"/dst/{seg_key(2)}", status=500, times=2),
    "reset": Rule("reset", method="PUT", path_contains=f"/dst/{seg_key(2)}", times=2),
    "reply-lost": Rule("reset", method="PUT", path_contains=f"/dst/{seg_key(2)}", after_bytes=-1),
    "manifest-reply-lost": Rule("reset", method="PUT", path_contains="/dst/.manifest", after_bytes=-1, skip=1),
    "source-manifest-truncated": Rule("truncate", method="GET", path_contains="/src/.manifest", after_bytes=30),
}


@pytest.mark.parametrize("case", list(COPY_TRANSIENT))
def test_cp_stream_server_side_survives_transient_faults(case, fault_proxy, proxied_env, store, bucket, bucket2):
    write_stream(store, bucket, "src", DATA)
    rule = fault_proxy.add(COPY_TRANSIENT[case])
    r = run(proxied_env, "cp", f"s3://{bucket}/src", f"s3://{bucket2}/dst", timeout=90)
    assert rule.hits >= 1
    assert r.returncode == 0, r
    assert_copy_complete(store, bucket2, "dst", DATA)


def test_cp_stream_server_side_persistent_fault_fails_clearly(fault_proxy, proxied_env, store, bucket, bucket2):
    write_stream(store, bucket, "src", DATA)
    fault_proxy.add(Rule("status", method="PUT", path_contains=f"/dst/{seg_key(3)}", status=500, times=-1))
    r = run(proxied_env, "cp", "--tries", "2", f"s3://{bucket}/src", f"s3://{bucket2}/dst", timeout=120)
    assert r.returncode == 1, r
    assert "InternalError" in r.last_line() and f"s3://{bucket2}/dst" in r.last_line()
    assert r.elapsed < 60
    m = manifest_of(store, bucket2, "dst")
    assert m is None or not m.completed
    assert_copy_complete(store, bucket, "src", DATA)  # the source is untouched


def test_cp_stream_killed_midway_is_never_complete_and_a_rerun_finishes(fault_proxy, proxied_env, s3_env,
                                                                        store, bucket, bucket2):
    write_stream(store, bucket, "src", DATA)
    fault_proxy.add(Rule("stall", method="PUT", path_contains=f"/dst/{seg_key(3)}", seconds=60))
    p = spawn(proxied_env, "cp", f"s3://{bucket}/src", f"s3://{bucket2}/dst", stderr=subprocess.PIPE)
    wait_until(lambda: store.head(bucket2, f"dst/{seg_key(5)}") is not None, 30, what="segment 5 copied")
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    fault_proxy.stop()
    m = manifest_of(store, bucket2, "dst")
    assert m is None or not m.completed, m
    r = run(s3_env, "cat", "--no-follow", f"s3://{bucket2}/dst")
    assert DATA.startswith(r.stdout)  # whatever it shows is right, and never claimed complete
    r = run(s3_env, "cp", f"s3://{bucket}/src", f"s3://{bucket2}/dst")
    assert r.returncode == 0, r
    assert_copy_complete(store, bucket2, "dst", DATA)


# ---- cp FILE -> stream / object -------------------------------------------------------------------

def test_cp_file_to_stream_corruption_in_transit_is_refused_and_retried(fault_proxy, proxied_env, store, bucket,
                                                                         tmp_path):
    src = tmp_path / "in"
    src.write_bytes(DATA)
    rule = fault_proxy.add(Rule("corrupt", method="PUT", path_contains=f"/s/{seg_key(4)}", direction="request",
                                after_bytes=123))
    r = run(proxied_env, "--segment-size", str(SEG), "cp", str(src), f"s3://{bucket}/s", timeout=90)
    assert rule.hits == 1
    assert r.returncode == 0, r
    assert_copy_complete(store, bucket, "s", DATA)


BIG = blob(12 * MiB + 3, 42)  # three 5 MiB parts


@pytest.mark.parametrize("rule", [
    Rule("status", method="PUT", query_contains="partNumber=2", status=500, times=2),
    Rule("reset", method="PUT", query_contains="partNumber=2", after_bytes=100000, direction="request"),
    Rule("corrupt", method="PUT", query_contains="partNumber=2", after_bytes=5, direction="request"),
    Rule("status", method="POST", query_contains="uploadId", status=503, times=1),  # CompleteMultipartUpload
], ids=["part-500", "part-reset-mid-body", "part-corrupt", "complete-503"])
def test_cp_file_to_object_survives_transient_faults(rule, fault_proxy, proxied_env, store, bucket, tmp_path):
    src = tmp_path / "big"
    src.write_bytes(BIG)
    fault_proxy.add(rule)
    r = run(proxied_env, "cp", "--object", "--part-size", "5M", str(src), f"s3://{bucket}/big", timeout=120)
    assert rule.hits >= 1
    assert r.returncode == 0, r
    assert store.get(bucket, "big")[0] == BIG
    assert list(store.mpu_list(bucket, "big")) == []  # no unfinished upload left behind


def test_cp_file_to_object_killed_then_resumed(fault_proxy, proxied_env, s3_env, store, bucket, tmp_path):
    src = tmp_path / "big"
    src.write_bytes(BIG)
    fault_proxy.add(Rule("stall", method="PUT", query_contains="partNumber=3", seconds=60))
    p = spawn(proxied_env, "cp", "--object", "--part-size", "5M", "-n", "3", str(src), f"s3://{bucket}/big",
              stderr=subprocess.PIPE)

    def two_parts():
        ups = list(store.mpu_list(bucket, "big"))
        return ups and len(store.mpu_parts(bucket, "big", ups[0]["UploadId"])) >= 2
    wait_until(two_parts, 30, what="two parts uploaded")
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    fault_proxy.stop()
    assert store.head(bucket, "big") is None  # no object until the upload completes
    r = run(s3_env, "cp", "--object", "--resume", "--part-size", "5M", str(src), f"s3://{bucket}/big")
    assert r.returncode == 0, r
    assert store.get(bucket, "big")[0] == BIG
    assert list(store.mpu_list(bucket, "big")) == []


# ---- cp s3 -> FILE ----------------------------------------------------------------------------------

def test_cp_stream_to_file_corruption_is_retried(fault_proxy, proxied_env, store, bucket, tmp_path):
    write_stream(store, bucket, "s", DATA)
    rule = fault_proxy.add(Rule("corrupt", method="GET", path_contains=f"/s/{seg_key(2)}", after_bytes=50, times=2))
    out = tmp_path / "out"
    r = run(proxied_env, "cp", f"s3://{bucket}/s", str(out), timeout=90)
    assert rule.hits >= 1
    assert r.returncode == 0, r
    assert out.read_bytes() == DATA


def test_cp_stream_to_file_persistent_corruption_writes_no_file(fault_proxy, proxied_env, store, bucket, tmp_path):
    write_stream(store, bucket, "s", DATA)
    fault_proxy.add(Rule("corrupt", method="GET", path_contains=f"/s/{seg_key(5)}", after_bytes=50, times=-1))
    out = tmp_path / "out"
    r = run(proxied_env, "--tries", "2", "cp", f"s3://{bucket}/s", str(out), timeout=90)
    assert r.returncode == 1 and "CRC32 mismatch" in r.last_line(), r
    assert not out.exists() and not list(tmp_path.glob(".out*"))  # no partial file, no temp file


def test_cp_object_to_file_transient_corruption_never_gives_a_wrong_file(fault_proxy, proxied_env, store, bucket,
                                                                         tmp_path):
    """Plain objects have no per-range checksum; the whole-object MD5 (the ETag) catches a
    flipped byte. Expected: retried to the right bytes."""
    data = blob(3 * MiB, 43)
    store.put(bucket, "o", data)
    rule = fault_proxy.add(Rule("corrupt", method="GET", path_contains=f"/{bucket}/o", after_bytes=1000, times=1))
    out = tmp_path / "out"
    r = run(proxied_env, "cp", f"s3://{bucket}/o", str(out), timeout=90)
    assert rule.hits == 1
    assert "Traceback" not in r.err
    assert not out.exists() or out.read_bytes() == data  # never a wrong file
    assert r.returncode == 0, r


# ---- sync DIR -> s3 ------------------------------------------------------------------------------------

def make_tree(root, n=12):
    files = {}
    for i in range(n):
        p = root / f"d{i % 3}" / f"f{i:02d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(blob(1000 + 37 * i, 100 + i))
        files[f"d{i % 3}/f{i:02d}.bin"] = p.read_bytes()
    return files


def assert_synced(store, bucket, files, prefix="t/"):
    got = {o.key[len(prefix):]: o for o in store.list(bucket, prefix)}
    assert set(got) == set(files)
    for rel, data in files.items():
        assert store.get(bucket, prefix + rel)[0] == data


def test_sync_dir_survives_transient_faults(fault_proxy, proxied_env, store, bucket, tmp_path):
    files = make_tree(tmp_path / "src")
    rules = [fault_proxy.add(r) for r in (
        Rule("status", method="PUT", path_contains="f01.bin", times=2),
        Rule("status", method="PUT", path_contains="f02.bin", status=500, times=2),
        Rule("reset", method="PUT", path_contains="f03.bin", times=1),
        Rule("reset", method="PUT", path_contains="f04.bin", after_bytes=-1),
        Rule("corrupt", method="PUT", path_contains="f05.bin", direction="request", after_bytes=10))]
    r = run(proxied_env, "sync", str(tmp_path / "src"), f"s3://{bucket}/t", timeout=120)
    assert all(rule.hits >= 1 for rule in rules), [(x.path_contains, x.hits) for x in rules]
    assert r.returncode == 0, r
    assert_synced(store, bucket, files)


def test_sync_dir_persistent_fault_is_reported_and_a_rerun_finishes(fault_proxy, proxied_env, s3_env, store, bucket,
                                                                     tmp_path):
    files = make_tree(tmp_path / "src")
    fault_proxy.add(Rule("status", method="PUT", path_contains="f07.bin", status=500, times=-1))
    r = run(proxied_env, "--tries", "2", "sync", str(tmp_path / "src"), f"s3://{bucket}/t", timeout=120)
    assert r.returncode == 1, r
    assert "f07.bin" in r.err and "Traceback" not in r.err
    assert r.elapsed < 60
    assert store.head(bucket, "t/d1/f07.bin") is None
    assert store.get(bucket, "t/d0/f06.bin")[0] == files["d0/f06.bin"]  # the others went through
    r = run(s3_env, "sync", str(tmp_path / "src"), f"s3://{bucket}/t")
    assert r.returncode == 0, r
    assert_synced(store, bucket, files)


def test_sync_killed_midway_then_rerun_is_identical(fault_proxy, proxied_env, s3_env, store, bucket, tmp_path):
    files = make_tree(tmp_path / "src", n=30)
    fault_proxy.add(Rule("stall", method="PUT", path_contains="f05.bin", seconds=60))
    p = spawn(proxied_env, "sync", "--checkers", "2", "-n", "2", str(tmp_path / "src"), f"s3://{bucket}/t",
              stderr=subprocess.PIPE)
    wait_until(lambda: len(list(store.list(bucket, "t/"))) >= 5, 30, what="some files synced")
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    fault_proxy.stop()
    # Whatever landed is whole: an object is there with its right bytes, or not at all.
    for o in store.list(bucket, "t/"):
        assert store.get(bucket, o.key)[0] == files[o.key[2:]]
    r = run(s3_env, "sync", str(tmp_path / "src"), f"s3://{bucket}/t")
    assert r.returncode == 0, r
    assert_synced(store, bucket, files)


# ---- the server killed and restarted mid-transfer -----------------------------------------------------

def crash_and_restart(srv, after: float = 0.0) -> None:
    time.sleep(after)
    srv.kill()
    time.sleep(1)
    srv.start()


def test_cp_stream_across_a_server_crash_continues_or_reruns_cleanly(own_server, s3_env):
    """Server-side copy of a 24-segment stream; the server dies after a few segment copies."""
    env = own_env(own_server, s3_env)
    store = own_store(own_server)
    src, dst = unique_name("srca"), unique_name("dstb")
    store.create_bucket(src)
    store.create_bucket(dst)
    data = blob(24 * SEG + 1, 44)
    write_stream(store, src, "src", data)
    with FaultProxy(own_server.endpoint) as proxy:
        # Slow the copy down so that the crash lands in the middle of it.
        proxy.add(Rule("stall", method="PUT", path_contains=f"/{dst}/dst/0", seconds=0.3, times=-1))
        p = spawn({**env, "AWS_ENDPOINT_URL": proxy.endpoint}, "cp", "-n", "2", f"s3://{src}/src", f"s3://{dst}/dst",
                  stderr=subprocess.PIPE)
        wait_until(lambda: store.head(dst, f"dst/{seg_key(3)}") is not None, 30, what="three segments copied")
        crash_and_restart(own_server)
        rc = p.wait(120)
    err = p.stderr.read().decode()
    print(f"cp across a server crash: exit {rc}; {err.strip()[-300:]}")
    assert "Traceback" not in err
    if rc != 0:
        assert rc == 1
        m = manifest_of(store, dst, "dst")
        assert m is None or not m.completed
        r = run(env, "cp", f"s3://{src}/src", f"s3://{dst}/dst", timeout=120)
        assert r.returncode == 0, r
    assert_copy_complete(store, dst, "dst", data)


def test_sync_across_a_server_crash_continues_or_reruns_cleanly(own_server, s3_env, tmp_path):
    env = own_env(own_server, s3_env)
    store = own_store(own_server)
    dst = unique_name("dstb")
    store.create_bucket(dst)
    files = make_tree(tmp_path / "src", n=40)
    with FaultProxy(own_server.endpoint) as proxy:
        proxy.add(Rule("stall", method="PUT", path_contains=f"/{dst}/t/", seconds=0.2, times=-1))
        p = spawn({**env, "AWS_ENDPOINT_URL": proxy.endpoint}, "sync", "-n", "2", str(tmp_path / "src"),
                  f"s3://{dst}/t", stderr=subprocess.PIPE)
        wait_until(lambda: len(list(store.list(dst, "t/"))) >= 6, 30, what="some files synced")
        crash_and_restart(own_server)
        rc = p.wait(120)
    err = p.stderr.read().decode()
    print(f"sync across a server crash: exit {rc}; {err.strip()[-300:]}")
    assert "Traceback" not in err
    for o in store.list(dst, "t/"):  # whatever is there is whole
        assert store.get(dst, o.key)[0] == files[o.key[2:]]
    if rc != 0:
        assert rc == 1
        r = run(env, "sync", str(tmp_path / "src"), f"s3://{dst}/t", timeout=120)
        assert r.returncode == 0, r
    assert_synced(store, dst, files)
