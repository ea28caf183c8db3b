"""The fast path's own HTTP and signing (s3/wire.py, s3/sigv4.py): signatures equal
botocore's, and the HTTP framing, reuse and failures a real server can produce are handled
as botocore's transport would (same exception classes)."""
import calendar
import socket
import ssl
import subprocess
import threading
import time

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.exceptions
import pytest

from s3pipefs.s3.sigv4 import Signer
from s3pipefs.s3.wire import Connections


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEBc//token+with/odd=chars"])
@pytest.mark.parametrize("path,query,headers", [
    ("/bucket/plain.txt", "", {}),
    ("/bucket/a%20b/c%2Bd%25e~f.bin", "", {"content-md5": "1B2M2Y8AsgTpgAmY7PhCfg==",
                                           "x-amz-meta-mode": "33188", "if-none-match": "*"}),
    ("/bucket/%C3%BC/%E6%97%A5.txt", "", {"range": "bytes=0-99", "x-amz-meta-mtime": "1700000000.5"}),
    ("/bucket/", "continuation-token=a%2Bb%3D&delimiter=%2F&encoding-type=url&list-type=2&prefix=a%20b%2F", {}),
    ("/bucket/dst", "", {"x-amz-copy-source": "/bucket/src%20key", "content-type": "text/x  odd  spaces"}),
])
def test_signature_equals_botocores(path, query, headers, token):
    creds = botocore.credentials.Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    frozen = creds.get_frozen_credentials()
    url = f"http://127.0.0.1:9000{path}" + (f"?{query}" if query else "")
    req = botocore.awsrequest.AWSRequest("GET", url, data=b"", headers=dict(headers))
    req.context["client_config"] = botocore.config.Config(s3={"payload_signing_enabled": False})
    botocore.auth.S3SigV4Auth(frozen, "s3", "eu-west-3").add_auth(req)
    stamp = req.headers["X-Amz-Date"]
    now = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
    ours = Signer("eu-west-3").sign("GET", "127.0.0.1:9000", path, query, headers, frozen, now=now)
    assert ours["x-amz-date"] == stamp
    assert ours["authorization"] == req.headers["Authorization"]
    assert ours.get("x-amz-security-token") == token


class _Server:
    """A raw TCP server answering each request with the bytes ``answer(n)`` gives for the
    n-th request on that connection (None: close the connection without a word; a tuple
    (bytes, "close"): close it after those bytes)."""

    def __init__(self, answer, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"):
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_side=True)
        self.url = f"{'https' if tls else 'http'}://{host}:{self.sock.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        f = conn.makefile("rb")
        n = 0
        with conn:
            while True:
                line = f.readline()
                if not line:
                    return
                length = 0
                while (h := f.readline()) not in (b"\r\n", b""):
                    if h.lower().startswith(b"content-length:"):
                        length = int(h.split(b":")[1])
                f.read(length)
                reply = self.answer(n)
                n += 1
                if reply is None:
                    return
                reply, then = reply if isinstance(reply, tuple) else (reply, "")
                conn.sendall(reply)
                if then == "close" or reply.startswith(b"HTTP/1.0"):
                    return  # an HTTP/1.0 body ends where the connection does

    def close(self):
        self.sock.close()


def _conns(server, **kw):
    return Connections(server.url, connect_timeout=2, read_timeout=kw.pop("read_timeout", 5), **kw)


def _ok(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def test_replies_framed_by_length_chunks_or_close_are_read_whole_and_reused_when_they_can_be():
    replies = [_ok(b"hello"),
               b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nchunk\r\n3\r\ned!\r\n0\r\nX-Trailer: t\r\n\r\n",
               b"HTTP/1.1 204 No Content\r\n\r\n"]
    server = _Server(lambda n: replies[n] if n < len(replies) else None)
    conns = _conns(server)
    assert conns.request("GET", "/b/k", {}).content == b"hello"
    assert conns.request("GET", "/b/k", {}).content == b"chunked!"
    r = conns.request("DELETE", "/b/k", {})
    assert (r.status, r.content) == (204, b"")
    assert server.connections == 1  # all three on one kept-alive connection
    # Framed by the server closing: read to the end, and the connection is not reused.
    server.answer = lambda n: b"HTTP/1.0 200 OK\r\n\r\nuntil the end" if n == 3 else None
    assert conns.request("GET", "/b/k", {}).content == b"until the end"
    server.answer = lambda n: _ok(b"fresh")
    assert conns.request("GET", "/b/k", {}).content == b"fresh"
    assert server.connections == 2
    server.close()


def test_a_kept_alive_connection_the_server_dropped_is_replaced_without_an_error():
    # The server answers one request per connection and then drops it, without saying so.
    server = _Server(lambda n: _ok(b"one") if n == 0 else None)
    conns = _conns(server)
    for _ in range(3):
        assert conns.request("PUT", "/b/k", {}, b"body").content == b"one"
    assert server.connections == 3
    server.close()


def test_a_streamed_body_read_in_pieces_frees_its_connection_at_the_end_and_close_drops_it():
    server = _Server(lambda n: _ok(b"0123456789"))
    conns = _conns(server)
    r = conns.request("GET", "/b/k", {})
    assert r.read(4) + r.read(4) + r.read() == b"0123456789" and r.read() == b""
    r = conns.request("GET", "/b/k", {})
    assert server.connections == 1  # the first connection was reused
    r.read(3)
    r.close()  # left unread: that connection cannot carry another request
    assert conns.request("GET", "/b/k", {}).content == b"0123456789"
    assert server.connections == 2
    server.close()


def test_transport_failures_are_botocores_exceptions():
    # A reply cut short: the read fails, the retry policy sees a closed connection.
    server = _Server(lambda n: (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b", "close"))
    conns = _conns(server)
    r = conns.request("GET", "/b/k", {})
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        r.read()
    # No reply at all on a new connection.
    server.answer = lambda n: None
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        conns.request("GET", "/b/k", {})
    server.close()
    # A server that never answers: the read timeout.
    silent = socket.create_server(("127.0.0.1", 0))
    conns = Connections(f"http://127.0.0.1:{silent.getsockname()[1]}", connect_timeout=2, read_timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        conns.request("HEAD", "/b/k", {})
    assert time.monotonic() - t0 < 3
    silent.close()
    # Nothing listening.
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        Connections(f"http://127.0.0.1:{port}", connect_timeout=2, read_timeout=2).request("HEAD", "/b/k", {})


def test_tls_endpoints_are_verified_against_the_ca_bundle(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server = _Server(lambda n: _ok(b"secret"), tls=tls, host="localhost")
    conns = Connections(server.url, connect_timeout=2, read_timeout=5, ca_bundle=str(cert))
    assert conns.host == f"localhost:{server.sock.getsockname()[1]}"
    assert conns.request("GET", "/b/k", {}).content == b"secret"
    assert conns.request("GET", "/b/k", {}).content == b"secret"
    assert server.connections == 1
    # A certificate the bundle does not vouch for: no request goes out.
    other = tmp_path / "other.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(tmp_path / "k2.pem"), "-out", str(other)], check=True, capture_output=True)
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        Connections(server.url, connect_timeout=2, read_timeout=5, ca_bundle=str(other)).request("GET", "/b/k", {})
    server.close()


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent():
    server = _Server(lambda n: _ok(b"never"))
    conns = _conns(server)
    for headers in ({"content-type": "text/plain\r\nx-injected: 1"}, {"x-amz-meta-a": "b\nc"}):
        with pytest.raises(ValueError):
            conns.request("PUT", "/b/k", headers, b"body")
    assert server.connections == 0
    server.close()
