"""Local files, pipes and http(s) URLs <-> S3 (engine/transfer/, `s3pipefs cp`, `s3pipefs abort`).

The URL tests run a small HTTP server in the test: one handler serves byte ranges (206,
Content-Range, ETag/If-Range), the other ignores Range like many servers do. Either can cut
a response off at a chosen byte offset to interrupt a transfer.
"""
from __future__ import annotations

import hashlib
import http.server
import os
import re
import stat
import threading
import time

import pytest

from s3pipefs import errors
from s3pipefs.config import MiB, S3Config, TransferConfig
from s3pipefs.engine import Engine, transfer
from s3pipefs.s3 import Store
from s3pipefs.s3.retry import RetryPolicy
from tests.conftest import run_cli
from tests.faultproxy import FaultProxy, Rule


@pytest.fixture
def proxy(s3_server):
    with FaultProxy(s3_server.endpoint) as p:
        yield p


def fast_retrier() -> RetryPolicy:
    return RetryPolicy(3, base=0.01)


# -- a local HTTP source ---------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        src: Source = self.server.src
        data, etag = src.data, src.etag
        start, end, status = 0, len(data) - 1, 200
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if src.ranges and rng and (if_range is None or if_range == etag):
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
            start = int(m.group(1))
            end = min(int(m.group(2)), len(data) - 1) if m.group(2) else len(data) - 1
            status = 206
        body = data[start:end + 1]
        with src.lock:
            src.requests.append((rng, status))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/x-tar")
        if src.ranges:
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", etag)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        cut = src.cut_at
        if cut is not None and end >= cut:
            n = max(0, cut - start)
            self.wfile.write(body[:n])
            with src.lock:
                src.served += n
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)
        with src.lock:
            src.served += len(body)


class Source:
    def __init__(self, data: bytes, ranges: bool):
        self.lock = threading.Lock()
        self.ranges = ranges
        self.cut_at: int | None = None
        self.requests: list = []
        self.served = 0
        self.set(data)

    def set(self, data: bytes):
        self.data = data
        self.etag = '"' + hashlib.md5(data).hexdigest() + '"'

    def reset_counts(self):
        with self.lock:
            self.requests.clear()
            self.served = 0


@pytest.fixture(params=["ranges", "no-ranges"])
def http_source(request):
    src = Source(os.urandom(20 * MiB + 333), ranges=request.param == "ranges")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.src = src
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    src.url = f"http://127.0.0.1:{srv.server_address[1]}/data/backup.tar"
    yield src
    srv.shutdown()
    srv.server_close()


def test_url_to_object(http_source, store, bucket):
    src = http_source
    r = transfer.url_to_object(store, src.url, bucket, "u/backup.tar", workers=4, part_size=5 * MiB,
                               retrier=fast_retrier())
    got, info = store.get(bucket, "u/backup.tar")
    assert got == src.data and r.size == len(src.data)
    assert info.content_type == "application/x-tar"
    statuses = [s for _, s in src.requests]
    if src.ranges:
        # a one-byte probe, then five parallel ranged GETs
        assert statuses.count(206) == 6 and 200 not in statuses
    else:
        assert statuses == [200]  # one streamed GET
    assert src.served == len(src.data) + (1 if src.ranges else 0)


def test_url_interrupted_then_resumed_as_object(http_source, store, bucket, proxy):
    src = http_source
    part = 5 * MiB
    src.cut_at = 16 * MiB  # parts 1-3 arrive, part 4 (and, without ranges, the rest) never does
    via = Store(S3Config(endpoint_url=proxy.endpoint))
    with pytest.raises(errors.S3PipeError) as ei:
        transfer.url_to_object(via, src.url, bucket, "r.tar", workers=3, part_size=part, retrier=fast_retrier())
    assert "--resume" in str(ei.value) and "abort" in str(ei.value)
    assert store.head(bucket, "r.tar") is None
    ups = [u for u in store.mpu_list(bucket, "r.tar")]
    assert len(ups) == 1
    assert len(store.mpu_parts(bucket, "r.tar", ups[0]["UploadId"])) == 3

    src.cut_at = None
    src.reset_counts()
    proxy.reset_log()
    r = transfer.url_to_object(via, src.url, bucket, "r.tar", workers=3, part_size=part, resume=True,
                               retrier=fast_retrier())
    assert store.get(bucket, "r.tar")[0] == src.data
    assert r.skipped_parts == 3 and r.upload_id == ups[0]["UploadId"]
    rest = len(src.data) - 3 * part
    # Only the missing part went to S3 again.
    assert rest <= proxy.bytes_up < rest + 64 * 1024
    if src.ranges:
        # The missing part plus one landed part fetched back to prove the source unchanged.
        assert src.served == 1 + rest + part
    else:
        assert src.served == len(src.data)  # read again, but not uploaded again
    assert list(store.mpu_list(bucket, "r.tar")) == []


def test_resume_refuses_a_url_that_changed(store, bucket):
    src = Source(os.urandom(12 * MiB), ranges=True)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.src = src
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/x"
    try:
        src.cut_at = 11 * MiB
        with pytest.raises(errors.S3PipeError):
            transfer.url_to_object(store, url, bucket, "x", workers=2, part_size=5 * MiB, retrier=fast_retrier())
        src.cut_at = None
        src.set(os.urandom(12 * MiB))
        with pytest.raises(errors.S3PipeError, match="changed since"):
            transfer.url_to_object(store, url, bucket, "x", workers=2, part_size=5 * MiB, resume=True,
                                   retrier=fast_retrier())
    finally:
        srv.shutdown()
        srv.server_close()


def test_url_interrupted_then_resumed_as_stream_by_cli(http_source, store, bucket, proxy, s3_server):
    src = http_source
    src.cut_at = 13 * MiB
    dst = f"s3://{bucket}/streams/"
    r = run_cli(s3_server, "--segment-size", "4M", "--tries", "2", "cp", src.url, dst, endpoint=proxy.endpoint)
    assert r.returncode == 1 and "Traceback" not in r.stderr.decode()
    e = Engine(store, TransferConfig()).stat(bucket, "streams/backup.tar")
    assert e is not None and e.kind == "stream" and not e.complete
    landed = e.size
    assert landed >= 8 * MiB  # whole 4 MiB segments before the cut
    src.cut_at = None
    proxy.reset_log()
    r = run_cli(s3_server, "--segment-size", "4M", "cp", "--resume", src.url, dst, endpoint=proxy.endpoint)
    assert r.returncode == 0, r.stderr
    rest = len(src.data) - landed
    assert rest <= proxy.bytes_up < rest + 256 * 1024  # the landed segments were not sent again
    r = run_cli(s3_server, "cp", f"s3://{bucket}/streams/backup.tar", "-")
    assert r.returncode == 0 and r.stdout == src.data


def test_url_source_errors_are_one_line(s3_server, bucket):
    r = run_cli(s3_server, "cp", "http://127.0.0.1:9/nothing", f"s3://{bucket}/x")
    assert r.returncode == 1 and r.stderr.decode().count("\n") == 1
    r = run_cli(s3_server, "cp", "ftp://example/x", f"s3://{bucket}/x")
    assert r.returncode == 2 and "ftp://" in r.stderr.decode()
    r = run_cli(s3_server, "cp", "http://127.0.0.1:9/x", "/tmp/x")
    assert r.returncode == 2


@pytest.mark.parametrize("as_object", [False, True])
def test_a_url_on_a_closed_port_is_one_line_naming_it(s3_server, store, bucket, as_object):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/f"  # nothing listens once it is closed
    r = run_cli(s3_server, "cp", *(["--object"] if as_object else []), url, f"s3://{bucket}/x")
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1, err
    assert url in err and "connection refused" in err and "Errno" not in err, err


# -- local files and pipes ------------------------------------------------------------------------

@pytest.mark.parametrize("as_object", [False, True])
def test_file_and_pipe_round_trips(tmp_path, store, bucket, s3_server, as_object):
    data = os.urandom(13 * MiB + 17)
    f = tmp_path / "in.bin"
    f.write_bytes(data)
    flags = ["--object", "--part-size", "5M"] if as_object else []
    assert run_cli(s3_server, "--segment-size", "4M", "cp", *flags, str(f), f"s3://{bucket}/f/").returncode == 0
    r = run_cli(s3_server, "--segment-size", "4M", "cp", *flags, "-", f"s3://{bucket}/p/piped", input=data)
    assert r.returncode == 0, r.stderr
    kind = Engine(store, TransferConfig()).stat(bucket, "f/in.bin").kind
    assert kind == ("object" if as_object else "stream")
    out = tmp_path / "outdir"
    out.mkdir()
    assert run_cli(s3_server, "cp", f"s3://{bucket}/f/in.bin", str(out)).returncode == 0
    assert (out / "in.bin").read_bytes() == data
    r = run_cli(s3_server, "cp", f"s3://{bucket}/p/piped", "-")
    assert r.returncode == 0 and r.stdout == data
    if as_object:
        info = store.head(bucket, "f/in.bin")
        assert info.etag.endswith("-3")  # parallel multipart, 5+5+3 MiB
        assert info.content_type in ("application/octet-stream", "")


def test_a_file_keeps_its_time_and_mode_as_a_stream_and_back(tmp_path, store, bucket, s3_server):
    """cp file -> stream stores the file's mtime (ns) and mode, as cp -p into a mount
    does; cp stream -> file gives them back. A pipe has none to keep."""
    f = tmp_path / "in.bin"
    f.write_bytes(b"x" * 1000)
    os.chmod(f, 0o640)
    os.utime(f, ns=(0, 1577934245_123456789))
    assert run_cli(s3_server, "cp", str(f), f"s3://{bucket}/kept").returncode == 0
    m = Engine(store, TransferConfig()).stat(bucket, "kept").manifest
    assert (m.mtime_ns, m.mode) == (1577934245_123456789, 0o640)
    out = tmp_path / "out.bin"
    assert run_cli(s3_server, "cp", f"s3://{bucket}/kept", str(out)).returncode == 0
    st = os.stat(out)
    assert (st.st_mtime_ns, stat.S_IMODE(st.st_mode)) == (1577934245_123456789, 0o640)
    assert run_cli(s3_server, "cp", "-", f"s3://{bucket}/piped", input=b"abc").returncode == 0
    m = Engine(store, TransferConfig()).stat(bucket, "piped").manifest
    assert m.mtime_ns is None and m.mode is None
    out2 = tmp_path / "out2.bin"
    assert run_cli(s3_server, "cp", f"s3://{bucket}/piped", str(out2)).returncode == 0
    assert abs(os.stat(out2).st_mtime - time.time()) < 60  # nothing stored: the download's own time


def test_object_upload_interrupted_then_resumed_and_aborted(tmp_path, store, bucket, proxy, s3_server):
    data = os.urandom(23 * MiB)
    f = tmp_path / "big"
    f.write_bytes(data)
    proxy.add(Rule("status", status=403, code="AccessDenied", method="PUT", query_contains="partNumber=4",
                   times=-1))
    r = run_cli(s3_server, "cp", "--object", "--part-size", "5M", "-n", "2", str(f), f"s3://{bucket}/big",
                endpoint=proxy.endpoint)
    assert r.returncode == 1
    assert "--resume" in r.stderr.decode() and "s3pipefs abort" in r.stderr.decode()
    (up,) = list(store.mpu_list(bucket, "big"))
    landed = sum(p["Size"] for p in store.mpu_parts(bucket, "big", up["UploadId"]))
    assert landed >= 3 * 5 * MiB
    proxy.clear()
    proxy.reset_log()
    r = run_cli(s3_server, "cp", "--object", "--resume", "--part-size", "5M", str(f), f"s3://{bucket}/big",
                endpoint=proxy.endpoint)
    assert r.returncode == 0, r.stderr
    assert proxy.bytes_up < len(data) - landed + 64 * 1024
    assert store.get(bucket, "big")[0] == data

    # abort: list, then cancel, unfinished uploads under a prefix.
    u1 = store.mpu_create(bucket, "dir/a")
    store.mpu_create(bucket, "dir/b")
    store.mpu_create(bucket, "other")
    r = run_cli(s3_server, "abort", "--dry-run", f"s3://{bucket}/dir/")
    assert r.returncode == 0 and r.stdout.decode().count("listed") == 2 and u1 in r.stdout.decode()
    assert len(list(store.mpu_list(bucket, "dir/"))) == 2
    r = run_cli(s3_server, "abort", "--older-than", "1h", f"s3://{bucket}/dir/")
    assert r.returncode == 0 and len(list(store.mpu_list(bucket, "dir/"))) == 2
    r = run_cli(s3_server, "abort", f"s3://{bucket}/dir/")
    assert r.returncode == 0 and r.stdout.decode().count("aborted") == 2
    assert list(store.mpu_list(bucket, "dir/")) == []
    assert len(list(store.mpu_list(bucket, "other"))) == 1


def test_download_checks_the_md5(store, bucket, proxy):
    data = os.urandom(3 * MiB)
    store.put(bucket, "o", data)
    proxy.add(Rule("corrupt", method="GET", path_contains=f"/{bucket}/o", after_bytes=100, times=1))
    import io

    out = io.BytesIO()
    via = Store(S3Config(endpoint_url=proxy.endpoint))
    # One range: the corruption is caught by the whole-object MD5 (no per-range checksum exists).
    with pytest.raises(errors.IntegrityError):
        transfer.download_object(via, bucket, "o", out, workers=2, part_size=4 * MiB)


def test_a_compressed_file_is_typed_by_its_compression_without_content_encoding(tmp_path, store, bucket, s3_server):
    """mimetypes calls x.tar.gz an application/x-tar in gzip encoding; as Content-Type +
    Content-Encoding that makes HTTP clients unpack it on download."""
    for name, want in (("x.tar.gz", "application/gzip"), ("y.tar.bz2", "application/x-bzip2"),
                       ("z.txt.xz", "application/x-xz"), ("w.tar", "application/x-tar")):
        (tmp_path / name).write_bytes(os.urandom(100))
        r = run_cli(s3_server, "cp", "--object", str(tmp_path / name), f"s3://{bucket}/")
        assert r.returncode == 0, r.stderr
        head = store.client.head_object(Bucket=bucket, Key=name)
        assert head["ContentType"] == want and "ContentEncoding" not in head, (name, head)
