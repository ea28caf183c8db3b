"""The fault proxy itself: faithful when no rule fires, and each fault does what it says.

Two upstreams: the session S3 server (boto3 through the proxy, SigV4, Expect: 100-continue,
server-side copy) and a tiny local HTTP server whose answers are known byte for byte, so
framing (chunked, read-until-close) and exact fault offsets can be checked with a raw
http.client.
"""
from __future__ import annotations

import hashlib
import http.client
import http.server
import os
import threading
import time
import urllib.parse
import uuid

import boto3
import botocore.config
import botocore.exceptions
import pytest

from tests.faultproxy import FaultProxy, Rule

MB = 1 << 20


# ---- a local upstream with known answers -------------------------------------------

def pattern(n: int) -> bytes:
    """n deterministic, non-repeating-looking bytes."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(i.to_bytes(8, "big")).digest()
        i += 1
    return bytes(out[:n])


class _Upstream(http.server.BaseHTTPRequestHandler):
    """GET /bytes/N, /chunked/N, /close/N answer pattern(N) with that framing;
    PUT echoes the request body; every connection's peer port is recorded."""

    protocol_version = "HTTP/1.1"   # keep-alive, and Expect: 100-continue handled

    def log_message(self, *args):
        pass

    def _n(self) -> int:
        return int(self.path.rsplit("/", 1)[1])

    def do_GET(self):
        self.server.ports.add(self.client_address[1])
        body = pattern(self._n())
        self.send_response(200)
        if self.path.startswith("/chunked/"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 1000):
                piece = body[i:i + 1000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\nx-trailer: yes\r\n\r\n")
        elif self.path.startswith("/close/"):
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def do_PUT(self):
        self.server.ports.add(self.client_address[1])
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def local_upstream():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    server.ports = set()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def local_proxy(local_upstream):
    local_upstream.ports.clear()
    with FaultProxy("http://127.0.0.1:%d" % local_upstream.server_port) as proxy:
        yield proxy


def raw(proxy: FaultProxy) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(urllib.parse.urlsplit(proxy.endpoint).netloc, timeout=20)


def get(proxy: FaultProxy, path: str, conn: http.client.HTTPConnection | None = None):
    conn = conn or raw(proxy)
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp, resp.read()


# ---- faithful forwarding -------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bytes", "chunked", "close"])
def test_response_framings_pass_unchanged(local_proxy, kind):
    resp, body = get(local_proxy, f"/{kind}/123456")
    assert resp.status == 200 and body == pattern(123456)
    assert local_proxy.bytes_down == 123456   # payload only, not chunk framing
    assert local_proxy.requests[0].bytes_out == 123456


def test_chunked_request_and_expect_continue(local_proxy):
    conn = raw(local_proxy)
    data = pattern(300_000)
    conn.request("PUT", "/echo", body=iter([data[:100_000], data[100_000:]]), encode_chunked=True)
    assert conn.getresponse().read() == data
    conn.request("PUT", "/echo", body=data, headers={"Expect": "100-continue"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == data
    assert local_proxy.bytes_up == 2 * len(data)


def test_keep_alive_on_both_sides(local_proxy, local_upstream):
    conn = raw(local_proxy)
    for _ in range(5):
        assert get(local_proxy, "/bytes/10", conn)[1] == pattern(10)
    assert local_proxy.count("GET") == 5
    assert len(local_upstream.ports) == 1   # one upstream connection served all five


# ---- faults, at exact offsets ---------------------------------------------------------

def test_truncate_gives_incomplete_read(local_proxy):
    local_proxy.add(Rule("truncate", method="GET", after_bytes=5000))
    conn = raw(local_proxy)
    conn.request("GET", "/bytes/100000")
    resp = conn.getresponse()
    assert resp.getheader("Content-Length") == "100000"
    with pytest.raises(http.client.IncompleteRead) as e:
        resp.read()
    assert e.value.partial == pattern(5000)


def test_corrupt_response_flips_exactly_one_byte(local_proxy):
    local_proxy.add(Rule("corrupt", path_contains="/chunked/", after_bytes=54321))
    _, body = get(local_proxy, "/chunked/100000")
    want = pattern(100000)
    assert len(body) == len(want)
    assert [i for i in range(len(want)) if body[i] != want[i]] == [54321]
    assert get(local_proxy, "/chunked/100000")[1] == want   # times=1: the next one is clean


def test_corrupt_request_flips_exactly_one_byte(local_proxy):
    local_proxy.add(Rule("corrupt", method="PUT", direction="request", after_bytes=3 * MB + 7))
    data = pattern(4 * MB)
    conn = raw(local_proxy)
    conn.request("PUT", "/echo", body=data)
    echoed = conn.getresponse().read()
    assert len(echoed) == len(data)
    assert [i for i in range(len(data)) if echoed[i] != data[i]] == [3 * MB + 7]


def test_reset_before_forwarding(local_proxy, local_upstream):
    local_proxy.add(Rule("reset", method="GET"))
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
        get(local_proxy, "/bytes/10")
    assert local_upstream.ports == set()   # the server never saw it
    assert local_proxy.requests[0].fault == "reset" and local_proxy.requests[0].status is None


def test_reset_mid_response(local_proxy):
    local_proxy.add(Rule("reset", method="GET", after_bytes=70000))
    conn = raw(local_proxy)
    conn.request("GET", "/bytes/1000000")
    resp = conn.getresponse()
    got = bytearray()
    with pytest.raises(ConnectionResetError):
        while chunk := resp.read1(65536):
            got += chunk
    assert bytes(got) == pattern(70000)


def test_reset_mid_request(local_proxy):
    local_proxy.add(Rule("reset", method="PUT", direction="request", after_bytes=MB))
    conn = raw(local_proxy)
    with pytest.raises((ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)):
        conn.request("PUT", "/echo", body=pattern(8 * MB))
        conn.getresponse().read()
    assert local_proxy.bytes_up == MB


# Why a 1.5 s stall against a 1 s bound: apart by enough that a busy shared machine
# cannot make a clean request look stalled, or a stalled one look clean.
STALL = 1.5


@pytest.mark.parametrize("after", [0, -1])
def test_stall_before_answering(local_proxy, after):
    local_proxy.add(Rule("stall", method="GET", seconds=STALL, after_bytes=after))
    t = time.monotonic()
    assert get(local_proxy, "/bytes/1000")[1] == pattern(1000)
    assert STALL - 0.1 < time.monotonic() - t < STALL + 3
    t = time.monotonic()
    get(local_proxy, "/bytes/1000")
    assert time.monotonic() - t < 1.0


def test_stall_mid_body(local_proxy):
    local_proxy.add(Rule("stall", method="GET", seconds=STALL, after_bytes=10000))
    conn = raw(local_proxy)
    t = time.monotonic()
    conn.request("GET", "/bytes/50000")
    resp = conn.getresponse()
    first = resp.read(10000)
    t_first = time.monotonic() - t
    rest = resp.read()
    assert first + rest == pattern(50000)
    assert t_first < 1.0 and STALL - 0.1 < time.monotonic() - t < STALL + 3


def test_status_answers_with_s3_error_and_keeps_the_connection(local_proxy, local_upstream):
    local_proxy.add(Rule("status", status=500))
    conn = raw(local_proxy)
    resp, body = get(local_proxy, "/bytes/10", conn)
    assert resp.status == 500 and b"<Code>InternalError</Code>" in body
    assert resp.getheader("Content-Type") == "application/xml"
    assert get(local_proxy, "/bytes/10", conn)[1] == pattern(10)   # same connection, clean
    assert local_proxy.count("GET") == 2 and len(local_upstream.ports) == 1


def test_status_on_head_has_no_body(local_proxy):
    local_proxy.add(Rule("status", method="HEAD", status=404))
    conn = raw(local_proxy)
    conn.request("HEAD", "/bytes/10")
    resp = conn.getresponse()
    assert resp.status == 404 and resp.read() == b""
    # A stray body would be parsed as the next response and garble this one.
    assert get(local_proxy, "/bytes/10", conn)[1] == pattern(10)


def test_stop_does_not_wait_for_a_stall(local_upstream):
    proxy = FaultProxy("http://127.0.0.1:%d" % local_upstream.server_port).start()
    proxy.add(Rule("stall", seconds=60))
    outcome = []

    def request():
        try:
            outcome.append(get(proxy, "/bytes/1")[0].status)
        except (ConnectionError, http.client.HTTPException) as e:
            outcome.append(type(e))

    t = threading.Thread(target=request)
    t.start()
    time.sleep(0.3)
    started = time.monotonic()
    proxy.stop()
    t.join(5)
    assert not t.is_alive() and time.monotonic() - started < 5
    assert outcome and outcome[0] != 200   # cut off, not answered late


def test_skip_and_times(local_proxy):
    rule = local_proxy.add(Rule("status", method="GET", path_contains="/bytes/", skip=2, times=2))
    other = local_proxy.add(Rule("status", status=404, query_contains="never"))
    statuses = [get(local_proxy, "/bytes/10")[0].status for _ in range(6)]
    assert statuses == [200, 200, 503, 503, 200, 200]
    assert (rule.matched, rule.hits, other.hits) == (6, 2, 0)
    assert [s.fault for s in local_proxy.requests] == [None, None, "status", "status", None, None]
    local_proxy.clear()
    forever = local_proxy.add(Rule("status", times=-1))
    assert {get(local_proxy, "/bytes/10")[0].status for _ in range(4)} == {503}
    assert forever.hits == 4


def test_first_rule_that_fires_wins(local_proxy):
    local_proxy.add(Rule("status", status=404, times=1))
    local_proxy.add(Rule("status", status=500, times=1))
    assert [get(local_proxy, "/bytes/1")[0].status for _ in range(3)] == [404, 500, 200]


# ---- in front of the real S3 server ------------------------------------------------

def s3_client(s3_server, endpoint: str, attempts: int = 3, **cfg):
    env = s3_server.env()
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        config=botocore.config.Config(
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "total_max_attempts": attempts},
            read_timeout=20, connect_timeout=5, **cfg),
    )


@pytest.fixture(scope="module")
def fp_bucket(s3_server):
    name = "faultproxy-test"
    direct = s3_client(s3_server, s3_server.endpoint)
    try:
        direct.create_bucket(Bucket=name)
    except botocore.exceptions.ClientError as e:
        if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    return name


@pytest.fixture(scope="module")
def big(s3_server, fp_bucket):
    """A 50 MB object, written directly (not through any proxy)."""
    data = os.urandom(50 * MB)
    s3_client(s3_server, s3_server.endpoint).put_object(Bucket=fp_bucket, Key="big", Body=data)
    return data


@pytest.fixture
def proxy(s3_server):
    with FaultProxy(s3_server.endpoint) as p:
        yield p


def test_boto3_put_get_50mb_identical(s3_server, fp_bucket, proxy):
    s3 = s3_client(s3_server, proxy.endpoint)
    data = os.urandom(50 * MB)
    s3.put_object(Bucket=fp_bucket, Key="through-proxy", Body=data)
    assert s3.get_object(Bucket=fp_bucket, Key="through-proxy")["Body"].read() == data
    put, got = proxy.requests
    assert put.headers.get("expect") == "100-continue"   # the interim-response path ran
    assert (put.status, put.bytes_in, got.status, got.bytes_out) == (200, len(data), 200, len(data))
    assert (proxy.bytes_up, proxy.bytes_down) == (len(data), len(data))
    assert proxy.count("PUT", "through-proxy") == 1 and proxy.count(path_contains="through") == 2


def test_expect_continue_is_relayed_promptly(s3_server, fp_bucket, proxy):
    # boto3 waits up to 1 s for "100 Continue" before each PUT body; a proxy that
    # swallowed it would make these ten PUTs take ten seconds.
    s3 = s3_client(s3_server, proxy.endpoint)
    t = time.monotonic()
    for i in range(10):
        s3.put_object(Bucket=fp_bucket, Key=f"small-{i}", Body=b"x" * 1000)
    assert time.monotonic() - t < 5
    assert proxy.requests[0].headers.get("expect") == "100-continue"


def test_host_header_is_forwarded_as_signed(s3_server, fp_bucket, proxy):
    """SigV4 signs the Host the client used (the proxy's); the server checks it."""
    direct = s3_client(s3_server, s3_server.endpoint, attempts=1)

    def other_host(request, **kwargs):   # after signing, as a Host-rewriting proxy would
        request.headers["Host"] = urllib.parse.urlsplit(proxy.endpoint).netloc

    direct.meta.events.register("before-send.s3", other_host)
    try:
        direct.head_bucket(Bucket=fp_bucket)
        pytest.skip("the server does not check signatures; nothing to learn here")
    except botocore.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] in ("403", "SignatureDoesNotMatch")
    s3_client(s3_server, proxy.endpoint, attempts=1).head_bucket(Bucket=fp_bucket)
    assert proxy.requests[0].headers["host"] == urllib.parse.urlsplit(proxy.endpoint).netloc


def test_503_is_retried_by_boto3(s3_server, fp_bucket, big, proxy):
    rule = proxy.add(Rule("status", method="GET", path_contains="/big", times=2))
    s3 = s3_client(s3_server, proxy.endpoint, attempts=3)
    assert s3.get_object(Bucket=fp_bucket, Key="big", Range="bytes=0-99")["Body"].read() == big[:100]
    assert rule.hits == 2 and proxy.count("GET", "/big") == 3


@pytest.mark.parametrize("status,code", [(503, "SlowDown"), (500, "InternalError"), (403, "AccessDenied")])
def test_status_without_retries_shows_the_code(s3_server, fp_bucket, big, proxy, status, code):
    proxy.add(Rule("status", method="GET", status=status))
    s3 = s3_client(s3_server, proxy.endpoint, attempts=1)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=fp_bucket, Key="big", Range="bytes=0-9")
    assert e.value.response["Error"]["Code"] == code
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == status


def test_status_on_put_never_reaches_the_server(s3_server, fp_bucket, proxy):
    key = f"refused-{uuid.uuid4().hex}"
    proxy.add(Rule("status", method="PUT", path_contains=key))
    s3 = s3_client(s3_server, proxy.endpoint, attempts=1)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket=fp_bucket, Key=key, Body=os.urandom(2 * MB))
    assert e.value.response["Error"]["Code"] == "SlowDown"
    assert proxy.bytes_up == 0   # answered before the body: Expect: 100-continue
    with pytest.raises(botocore.exceptions.ClientError):
        s3.head_object(Bucket=fp_bucket, Key=key)
    s3.put_object(Bucket=fp_bucket, Key=key, Body=b"fine")   # and the proxy still works


def test_reset_raises_connection_error(s3_server, fp_bucket, big, proxy):
    proxy.add(Rule("reset", method="GET", path_contains="/big"))
    s3 = s3_client(s3_server, proxy.endpoint, attempts=1)
    with pytest.raises((botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
        s3.get_object(Bucket=fp_bucket, Key="big", Range="bytes=0-9")


def test_reset_after_reply_means_the_put_happened(s3_server, fp_bucket, proxy):
    key = f"lost-reply-{uuid.uuid4().hex}"
    proxy.add(Rule("reset", method="PUT", path_contains=key, after_bytes=-1))
    s3 = s3_client(s3_server, proxy.endpoint, attempts=1)
    with pytest.raises((botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
        s3.put_object(Bucket=fp_bucket, Key=key, Body=b"done anyway")
    assert s3.get_object(Bucket=fp_bucket, Key=key)["Body"].read() == b"done anyway"


def test_truncated_get_is_an_error_for_boto3(s3_server, fp_bucket, big, proxy):
    proxy.add(Rule("truncate", method="GET", path_contains="/big", after_bytes=MB))
    s3 = s3_client(s3_server, proxy.endpoint, attempts=1)
    body = s3.get_object(Bucket=fp_bucket, Key="big", Range=f"bytes=0-{4 * MB - 1}")["Body"]
    with pytest.raises(botocore.exceptions.BotoCoreError):   # IncompleteReadError
        body.read()


def test_corrupt_put_is_rejected_by_the_server(s3_server, fp_bucket, proxy):
    proxy.add(Rule("corrupt", method="PUT", direction="request", after_bytes=12345))
    s3 = s3_client(s3_server, proxy.endpoint, attempts=1)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket=fp_bucket, Key="corrupt-put", Body=os.urandom(MB))
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert proxy.requests[0].fault == "corrupt" and proxy.requests[0].bytes_in == MB


def test_server_side_copy_moves_no_payload(s3_server, fp_bucket, big, proxy):
    s3 = s3_client(s3_server, proxy.endpoint)
    s3.copy_object(Bucket=fp_bucket, Key="big-copy", CopySource={"Bucket": fp_bucket, "Key": "big"})
    assert s3.head_object(Bucket=fp_bucket, Key="big-copy")["ContentLength"] == len(big)
    assert proxy.bytes_up + proxy.bytes_down < 4096   # XML replies only, not 50 MB
