"""Server-side copy of streams and objects (engine/copy.py) and `s3pipefs cp` between S3 places.

Real SeaweedFS, two buckets; the FaultProxy counts the bytes that pass through the client
and breaks chosen requests.
"""
from __future__ import annotations

import hashlib
import os

import pytest

from s3pipefs import errors, manifest as mf
from s3pipefs.config import MiB, S3Config, TransferConfig
from s3pipefs.engine import Engine
from s3pipefs.engine import copy as copy_mod
from s3pipefs.s3 import Store
from tests.conftest import run_cli
from tests.faultproxy import FaultProxy, Rule

SEG = 1 * MiB
TCFG = TransferConfig(segment_size=SEG, workers=4, heartbeat_interval=1.0)


def store_at(endpoint: str, **kw) -> Store:
    return Store(S3Config(endpoint_url=endpoint, **kw))


def write_stream(store: Store, bucket: str, key: str, data: bytes, cfg: TransferConfig = TCFG) -> None:
    w = Engine(store, cfg).open_writer(bucket, key)
    for i in range(0, len(data), 300_000):
        w.write(data[i:i + 300_000])
    w.close()


def read_stream(store: Store, bucket: str, key: str) -> bytes:
    r = Engine(store, TCFG).open_reader(bucket, key, follow=False)
    try:
        return b"".join(bytes(c) for c in r.chunks(0))
    finally:
        r.close()


@pytest.fixture
def proxy(s3_server):
    with FaultProxy(s3_server.endpoint) as p:
        yield p


def test_stream_copy_is_server_side_and_byte_for_byte(store, bucket, bucket2, proxy):
    data = os.urandom(6 * SEG + 12345)  # 7 segments, the last one short
    write_stream(store, bucket, "src/big", data)
    via = store_at(proxy.endpoint)
    r = copy_mod.copy_stream(via, bucket, "src/big", bucket2, "dst/big", workers=4, cfg=TCFG)
    assert r.kind == "stream" and r.size == len(data) and r.complete
    # Only manifests, listings and small XML answers passed: no payload.
    moved = proxy.bytes_up + proxy.bytes_down
    assert moved < 32 * 1024, f"{moved} bytes went through the client for a {len(data)} byte copy"
    assert proxy.count("PUT", f"/{bucket2}/dst/big/0000") == 7  # one CopyObject per segment
    assert proxy.count("GET", f"/{bucket}/src/big/0000") == 0   # no segment was read
    assert read_stream(store, bucket2, "dst/big") == data
    # The published manifest is the source's, so the copy is complete with the same digests.
    a = mf.parse(store.get(bucket, "src/big/.manifest")[0])
    b = mf.parse(store.get(bucket2, "dst/big/.manifest")[0])
    assert b.completed and (b.sha256, b.chain, b.layout) == (a.sha256, a.chain, a.layout)
    # Segment checksums the reader verifies travel with the copy.
    s1, d1 = store.head(bucket, "src/big/" + mf.segment_name(1)), store.head(bucket2, "dst/big/" + mf.segment_name(1))
    assert d1.metadata == s1.metadata and d1.metadata  # crc32 (+gen) kept by CopyObject
    assert d1.etag == s1.etag


def test_half_done_copy_is_never_a_complete_stream(store, bucket, bucket2, proxy):
    data = os.urandom(5 * SEG)
    write_stream(store, bucket, "s", data)
    # The fourth segment's copy is refused for good (403 is not retried).
    proxy.add(Rule("status", status=403, code="AccessDenied", method="PUT",
                   path_contains=f"/{bucket2}/d/{mf.segment_name(4)}", times=-1))
    via = store_at(proxy.endpoint)
    with pytest.raises(errors.AccessDenied):
        copy_mod.copy_stream(via, bucket, "s", bucket2, "d", workers=2, cfg=TCFG)
    # 403 is permanent: exactly one attempt.
    assert proxy.count("PUT", f"/{bucket2}/d/{mf.segment_name(4)}") == 1
    m = mf.parse(store.get(bucket2, "d/.manifest")[0])
    assert not m.completed and m.num_segments == 0 and m.heartbeat == 0  # released, empty
    e = Engine(store, TCFG).stat(bucket2, "d")
    assert e.kind == "stream" and not e.complete and not e.writer_alive
    # A second copy replaces the leftovers and completes.
    proxy.clear()
    copy_mod.copy_stream(via, bucket, "s", bucket2, "d", workers=2, cfg=TCFG)
    assert read_stream(store, bucket2, "d") == data


def test_copy_over_a_longer_stream_removes_its_extra_segments(store, bucket, bucket2):
    write_stream(store, bucket2, "d", os.urandom(6 * SEG))
    data = os.urandom(2 * SEG + 10)
    write_stream(store, bucket, "s", data)
    copy_mod.copy_stream(store, bucket, "s", bucket2, "d", cfg=TCFG)
    assert read_stream(store, bucket2, "d") == data
    names = sorted(o.key for o in store.list(bucket2, "d/"))
    assert names == ["d/.manifest"] + [f"d/{mf.segment_name(i)}" for i in (1, 2, 3)]


def test_copy_refuses_a_stream_being_written(store, bucket, bucket2):
    write_stream(store, bucket, "s", os.urandom(SEG))
    w = Engine(store, TCFG).open_writer(bucket2, "busy")
    try:
        with pytest.raises(errors.Busy):
            copy_mod.copy_stream(store, bucket, "s", bucket2, "busy", cfg=TCFG)
    finally:
        w.abort()


def _incomplete(store, bucket, key, data):
    w = Engine(store, TCFG).open_writer(bucket, key)
    w.write(data)
    w.flush()   # the segments so far are in S3 and named by the manifest
    w.abort()   # the writer "dies": incomplete, heartbeat 0


def test_incomplete_source_refused_unless_allowed(store, bucket, bucket2, s3_server):
    data = os.urandom(3 * SEG)
    _incomplete(store, bucket, "part", data)
    r = run_cli(s3_server, "cp", f"s3://{bucket}/part", f"s3://{bucket2}/part")
    assert r.returncode == 1
    err = r.stderr.decode()
    assert "incomplete" in err and "--allow-incomplete" in err and "Traceback" not in err
    assert store.head(bucket2, "part/.manifest") is None
    r = run_cli(s3_server, "cp", "--allow-incomplete", f"s3://{bucket}/part", f"s3://{bucket2}/part")
    assert r.returncode == 0, r.stderr
    m = mf.parse(store.get(bucket2, "part/.manifest")[0])
    assert not m.completed and m.total_size == len(data) and m.heartbeat == 0
    # The copy can be finished like the original: resume with the same input.
    w = Engine(store, TCFG).open_writer(bucket2, "part", mode="resume")
    w.write(data + b"tail")
    w.close()
    assert read_stream(store, bucket2, "part") == data + b"tail"


def test_object_over_the_single_copy_limit_uses_parallel_part_copies(store, bucket, bucket2, proxy):
    data = os.urandom(12 * MiB + 7)
    store.put(bucket, "o/big.bin", data, metadata={"md5": hashlib.md5(data).hexdigest(), "x": "y"},
              content_type="application/x-test")
    via = store_at(proxy.endpoint)
    # Pretend the 5 GB limit is 1 MiB so the multipart path runs on test-sized data.
    r = copy_mod.copy_object(via, bucket, "o/big.bin", bucket2, "c/big.bin", workers=3,
                             part_size=5 * MiB, max_single=1 * MiB)
    assert r.kind == "object" and r.size == len(data)
    part_copies = [s for s in proxy.requests if s.method == "PUT" and "partNumber=" in s.query
                   and "x-amz-copy-source" in s.headers]
    assert len(part_copies) == 3  # 5 + 5 + 2 MiB
    assert {s.headers["x-amz-copy-source-range"] for s in part_copies} == {
        "bytes=0-5242879", "bytes=5242880-10485759", f"bytes=10485760-{len(data) - 1}"}
    assert proxy.bytes_up + proxy.bytes_down < 16 * 1024
    got, info = store.get(bucket2, "c/big.bin")
    assert got == data
    assert info.metadata == {"md5": hashlib.md5(data).hexdigest(), "x": "y"}
    assert info.content_type == "application/x-test"
    assert "-" in info.etag  # really a multipart object


def test_failed_part_copy_aborts_the_upload(store, bucket, bucket2, proxy):
    store.put(bucket, "o", os.urandom(11 * MiB))
    proxy.add(Rule("status", status=403, code="AccessDenied", method="PUT", query_contains="partNumber=2",
                   times=-1))
    with pytest.raises(errors.AccessDenied):
        copy_mod.copy_object(store_at(proxy.endpoint), bucket, "o", bucket2, "o", workers=2,
                             part_size=5 * MiB, max_single=MiB)
    assert list(store.mpu_list(bucket2, "")) == []
    assert store.head(bucket2, "o") is None


def test_engine_copy_dispatches_by_kind(store, bucket, bucket2):
    data = os.urandom(SEG + 1)
    write_stream(store, bucket, "dir/s", data)
    store.put(bucket, "dir/o", b"plain")
    eng = Engine(store, TCFG)
    assert eng.copy(bucket, "dir/s", bucket2, "s2").kind == "stream"
    assert eng.copy(bucket, "dir/o", bucket2, "o2").kind == "object"
    assert read_stream(store, bucket2, "s2") == data
    assert store.get(bucket2, "o2")[0] == b"plain"
    with pytest.raises(copy_mod.IsADirectory):
        eng.copy(bucket, "dir", bucket2, "x")
    with pytest.raises(errors.NotFound):
        eng.copy(bucket, "nothing", bucket2, "x")
    with pytest.raises(errors.UsageError):
        copy_mod.copy_stream(store, bucket, "dir/s", bucket, "dir/s/inner", cfg=TCFG)


def test_cp_cli_between_buckets_keeps_name_and_handles_errors(store, bucket, bucket2, s3_server):
    data = os.urandom(2 * SEG)
    write_stream(store, bucket, "a/s", data)
    store.put(bucket, "a/o.txt", b"hello", content_type="text/plain")
    assert run_cli(s3_server, "cp", f"s3://{bucket}/a/s", f"s3://{bucket2}/b/").returncode == 0
    assert run_cli(s3_server, "cp", f"s3://{bucket}/a/o.txt", f"s3://{bucket2}/b/").returncode == 0
    assert read_stream(store, bucket2, "b/s") == data
    assert store.head(bucket2, "b/o.txt").content_type == "text/plain"
    r = run_cli(s3_server, "cp", f"s3://{bucket}/missing", f"s3://{bucket2}/x")
    assert r.returncode == 1 and r.stderr.decode().count("\n") == 1 and "missing" in r.stderr.decode()
    r = run_cli(s3_server, "cp", f"s3://{bucket}/a", f"s3://{bucket2}/x")
    assert r.returncode == 2 and "directory" in r.stderr.decode()
    r = run_cli(s3_server, "cp", "a", "b")
    assert r.returncode == 2


# -- SSE-C ---------------------------------------------------------------------------------------

def _key_md5(k: bytes) -> str:
    import base64

    return base64.b64encode(hashlib.md5(k).digest()).decode()


def test_sse_c_copy_re_encrypts_and_sends_both_keys(store, bucket, bucket2, proxy, s3_server, tmp_path):
    """SeaweedFS implements SSE-C; the request shape is checked at the proxy as well."""
    k1, k2 = os.urandom(32), os.urandom(32)
    (tmp_path / "k1").write_bytes(k1)
    (tmp_path / "k2").write_text(k2.hex() + "\n")
    os.chmod(tmp_path / "k1", 0o600)
    os.chmod(tmp_path / "k2", 0o600)
    data = os.urandom(2 * SEG + 5)
    src = tmp_path / "in"
    src.write_bytes(data)
    r = run_cli(s3_server, "--segment-size", "1M", "cp", "--sse-c-key-file", str(tmp_path / "k1"), str(src),
                f"s3://{bucket}/enc")
    assert r.returncode == 0, r.stderr
    r = run_cli(s3_server, "--segment-size", "1M", "cp", "--object", "--sse-c-key-file", str(tmp_path / "k1"),
                str(src), f"s3://{bucket}/enc.obj")
    assert r.returncode == 0, r.stderr
    # Server-side copies through the proxy, decrypting with k1 and encrypting with k2.
    for name in ("enc", "enc.obj"):
        r = run_cli(s3_server, "cp", "--source-sse-c-key-file", str(tmp_path / "k1"),
                    "--sse-c-key-file", str(tmp_path / "k2"), f"s3://{bucket}/{name}", f"s3://{bucket2}/{name}",
                    endpoint=proxy.endpoint)
        assert r.returncode == 0, r.stderr
    copies = [s for s in proxy.requests if s.method == "PUT" and "x-amz-copy-source" in s.headers]
    assert len(copies) == 4  # 3 segments + the object
    for s in copies:
        assert s.headers["x-amz-copy-source-server-side-encryption-customer-algorithm"] == "AES256"
        assert s.headers["x-amz-copy-source-server-side-encryption-customer-key-md5"] == _key_md5(k1)
        assert s.headers["x-amz-server-side-encryption-customer-algorithm"] == "AES256"
        assert s.headers["x-amz-server-side-encryption-customer-key-md5"] == _key_md5(k2)
    assert proxy.bytes_up + proxy.bytes_down < 32 * 1024
    # Readable with k2 (key from the environment this time), not without a key or with k1.
    import base64

    env = {"S3PIPEFS_SSE_C_KEY": base64.b64encode(k2).decode()}
    for name in ("enc", "enc.obj"):
        r = run_cli(s3_server, "cp", f"s3://{bucket2}/{name}", "-", env=env)
        assert r.returncode == 0 and r.stdout == data, r.stderr
        r = run_cli(s3_server, "cp", f"s3://{bucket2}/{name}", "-")
        assert r.returncode == 1 and r.stdout == b""
        r = run_cli(s3_server, "cp", "--sse-c-key-file", str(tmp_path / "k1"), f"s3://{bucket2}/{name}", "-")
        assert r.returncode == 1 and r.stdout == b""


def test_sse_c_key_never_on_the_command_line(s3_server, tmp_path, bucket):
    r = run_cli(s3_server, "cp", "--sse-c-key", "abc", "-", f"s3://{bucket}/x", input=b"")
    assert r.returncode == 2
    bad = tmp_path / "bad"
    bad.write_text("not a key")
    r = run_cli(s3_server, "cp", "--sse-c-key-file", str(bad), "-", f"s3://{bucket}/x", input=b"x")
    assert r.returncode == 2 and "32 bytes" in r.stderr.decode() and "not a key" not in r.stderr.decode()


def test_cp_with_two_keys_builds_one_store(s3_server, store, bucket, bucket2, tmp_path, monkeypatch):
    """The source and destination keys travel with the requests: a re-encrypting cp of a
    stream and an object, and a download with the source key, each make one store (one
    botocore client), not one per key."""
    from s3pipefs import cli
    from s3pipefs.s3 import RequestOptions

    k1, k2 = os.urandom(32), os.urandom(32)
    data = os.urandom(SEG + 7)
    with Engine(store, TCFG, request=RequestOptions(k1)).open_writer(bucket, "enc") as w:
        w.write(data)
    store.put(bucket, "enc.obj", data, sse_key=k1)
    made = []
    real_init = Store.__init__

    def counted(self, *args, **kw):
        made.append(self)
        real_init(self, *args, **kw)
    monkeypatch.setattr(Store, "__init__", counted)
    monkeypatch.setenv("S3PIPEFS_SOURCE_SSE_C_KEY", k1.hex())
    monkeypatch.setenv("S3PIPEFS_SSE_C_KEY", k2.hex())

    def cp(*argv) -> int:
        argv = ["--endpoint-url", s3_server.endpoint, "cp", *map(str, argv)]
        args = cli.build_parser(argv).parse_args(argv)
        return args.run(args)
    for name in ("enc", "enc.obj"):
        made.clear()
        assert cp(f"s3://{bucket}/{name}", f"s3://{bucket2}/{name}") == 0
        assert len(made) == 1
        made.clear()
        assert cp(f"s3://{bucket}/{name}", tmp_path / name) == 0
        assert len(made) == 1 and (tmp_path / name).read_bytes() == data
    assert read_stream_with(store, bucket2, "enc", k2) == data
    assert store.get(bucket2, "enc.obj", sse_key=k2)[0] == data
    with pytest.raises(errors.AccessDenied):
        store.get(bucket2, "enc.obj", sse_key=k1)


def read_stream_with(store: Store, bucket: str, key: str, sse_key: bytes) -> bytes:
    from s3pipefs.s3 import RequestOptions

    with Engine(store, TCFG, request=RequestOptions(sse_key)).open_reader(bucket, key, follow=False) as r:
        return b"".join(bytes(c) for c in r.chunks(0))
