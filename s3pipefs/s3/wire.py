"""Keep-alive HTTP/1.1 connections to one S3 endpoint, for the fast path (s3/fastpath.py).

Why not botocore's session (urllib3, http.client): a HEAD of a small object cost 0.87 ms
of client CPU through it and 0.36 ms through a bare urllib3 pool, against 0.05 ms as one
``sendall`` and a buffered read of the reply on a kept-alive socket (2,000 HEADs against
the local server; docs/tuning.md). A tree on the mount is thousands of such requests, and
their client CPU was most of what `ls -lR` and `rm -rf` cost.

What this speaks, deliberately little of HTTP/1.1:

* one request at a time per connection, idle connections kept for reuse (at most
  ``maxsize``); an idle connection that the server closed (readable while idle) is
  dropped before use, and a request whose reused connection dies before the first byte of
  the reply is sent again once on a new one;
* replies framed by Content-Length or chunked encoding, or ended by the server closing
  (then the connection is not reused); HEAD, 1xx, 204 and 304 carry no body;
* a body given as bytes, sent with its Content-Length;
* TLS through the standard library's ``ssl`` with the CA bundle botocore would use;
  no proxies (the Store uses botocore when one is configured);
* the connect and read timeouts of the S3 configuration.

Failures are botocore's transport exceptions (EndpointConnectionError, ConnectTimeoutError,
ReadTimeoutError, ConnectionClosedError), so ``store.translate`` and the retry policy
(s3/retry.py) treat them exactly as they treat botocore's own.
"""
from __future__ import annotations

import select
import socket
import ssl
import threading
from urllib.parse import urlsplit

import botocore.exceptions

_NO_BODY_STATUS = {204, 304}
_LINE = 65536  # longest status or header line accepted


class Response:
    """One reply: ``status``, ``headers`` (names lower-case), and its body through
    ``read``/``content``. The connection goes back to the pool once the body was read to
    its end; ``close`` before that drops the connection."""

    def __init__(self, conns: "Connections", conn, status: int, headers: dict[str, str], body_kind: str,
                 remaining: int):
        self._conns, self._conn = conns, conn
        self.status, self.headers = status, headers
        self._kind, self._remaining = body_kind, remaining  # kind: none, length, chunked, close
        self._content: bytes | None = None
        if body_kind == "none" or (body_kind == "length" and remaining == 0):
            self._finish()

    # A file-like body, as the Store reads botocore's and urllib3's.
    def read(self, n: int = -1) -> bytes:
        if self._conn is None:
            return b""
        try:
            if self._kind == "length":
                data = self._read_length(n)
            elif self._kind == "chunked":
                data = self._read_chunked(n)
            else:
                data = self._conn.rfile.read() if n < 0 else self._conn.rfile.read(n)
                if n < 0 or not data:
                    self._finish(reuse=False)
        except (OSError, ValueError) as e:
            self.close()
            raise self._conns.broken(e) from None
        return data

    @property
    def content(self) -> bytes:
        """The whole body (read once and kept)."""
        if self._content is None:
            self._content = self.read()
        return self._content

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def _read_length(self, n: int) -> bytes:
        want = self._remaining if n < 0 else min(n, self._remaining)
        data = self._conn.rfile.read(want)
        self._remaining -= len(data)
        if len(data) < want:
            raise ConnectionResetError("the reply ended early")
        if self._remaining == 0:
            self._finish()
        return data

    def _read_chunked(self, n: int) -> bytes:
        parts, got = [], 0
        rfile = self._conn.rfile
        while n < 0 or got < n:
            if self._remaining == 0:  # at a chunk's head
                size = int(rfile.readline(_LINE).split(b";", 1)[0].strip() or b"x", 16)
                if size == 0:
                    while rfile.readline(_LINE) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    self._finish()
                    break
                self._remaining = size
            take = self._remaining if n < 0 else min(self._remaining, n - got)
            data = rfile.read(take)
            if len(data) < take:
                raise ConnectionResetError("the reply ended early")
            parts.append(data)
            got += len(data)
            self._remaining -= len(data)
            if self._remaining == 0:
                rfile.readline(_LINE)  # the CRLF after a chunk
        return b"".join(parts)

    def _finish(self, reuse: bool = True) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._conns.release(conn, reuse and self._kind != "close")


class _Conn:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.rfile = sock.makefile("rb", buffering=_LINE)
        self.keep = True  # the server did not ask to close

    def close(self) -> None:
        try:
            self.rfile.close()
            self.sock.close()
        except OSError:
            pass


class Connections:
    """A pool of keep-alive connections to one endpoint; see the module docstring."""

    def __init__(self, endpoint_url: str, *, connect_timeout: float, read_timeout: float,
                 ca_bundle: str | None = None, maxsize: int = 32):
        u = urlsplit(endpoint_url)
        self.endpoint_url = endpoint_url
        self.tls = u.scheme == "https"
        self.hostname = u.hostname or ""
        self.port = u.port or (443 if self.tls else 80)
        default_port = u.port is None or u.port == (443 if self.tls else 80)
        # The Host header (and what SigV4 signs): the port only when it is not the default.
        self.host = (f"[{self.hostname}]" if ":" in self.hostname else self.hostname) + (
            "" if default_port else f":{self.port}")
        self.base_path = u.path.rstrip("/")
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.maxsize = maxsize
        self._ssl = ssl.create_default_context(cafile=ca_bundle) if self.tls else None
        self._idle: list[_Conn] = []
        self._lock = threading.Lock()

    def request(self, method: str, target: str, headers: dict[str, str], body: bytes = b"") -> Response:
        """Send one request (``target``: path and query, encoded) and read the reply's head."""
        head = [f"{method} {target} HTTP/1.1"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        text = "".join(head)  # one scan of the whole head, not one per line and character
        if "\r" in text or "\n" in text or "\0" in text:
            # A header value from outside (a content type, metadata) must not end the
            # head early or start a second request.
            raise ValueError("a request line or header holds a line break")
        if body or method in ("PUT", "POST"):
            head.append(f"content-length: {len(body)}")
        wire = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if len(body) <= _LINE:
            wire, body = wire + body, b""
        while True:
            conn, reused = self._take()
            try:
                conn.sock.sendall(wire)
                if body:
                    conn.sock.sendall(body)
                status, reply_headers = self._read_head(conn)
            except Exception as e:  # noqa: BLE001 - every transport failure is one of botocore's
                conn.close()
                if reused and isinstance(e, (ConnectionError, _Silent)):
                    continue  # a kept-alive connection the server had closed: once more, anew
                raise self.broken(e) from None
            return self._reply(conn, method, status, reply_headers)

    def release(self, conn: _Conn, reuse: bool) -> None:
        if reuse and conn.keep:
            with self._lock:
                if len(self._idle) < self.maxsize:
                    self._idle.append(conn)
                    return
        conn.close()

    def broken(self, e: BaseException) -> Exception:
        """The botocore exception for a transport failure."""
        if isinstance(e, botocore.exceptions.BotoCoreError):
            return e
        if isinstance(e, socket.timeout):
            return botocore.exceptions.ReadTimeoutError(endpoint_url=self.endpoint_url, error=e)
        return botocore.exceptions.ConnectionClosedError(endpoint_url=self.endpoint_url, error=e)

    # -- internals --------------------------------------------------------------------
    def _take(self) -> tuple[_Conn, bool]:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                # Readable while idle: the server closed it (or sent what nobody asked for).
                if not select.select([conn.sock], [], [], 0)[0]:
                    return conn, True
                conn.close()
        return self._connect(), False

    def _connect(self) -> _Conn:
        try:
            sock = socket.create_connection((self.hostname, self.port), timeout=self.connect_timeout)
        except socket.timeout as e:
            raise botocore.exceptions.ConnectTimeoutError(endpoint_url=self.endpoint_url, error=e) from None
        except OSError as e:
            raise botocore.exceptions.EndpointConnectionError(endpoint_url=self.endpoint_url, error=e) from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=self.hostname)
            sock.settimeout(self.read_timeout)
        except OSError as e:
            sock.close()
            raise botocore.exceptions.EndpointConnectionError(endpoint_url=self.endpoint_url, error=e) from None
        return _Conn(sock)

    @staticmethod
    def _read_head(conn: _Conn) -> tuple[int, dict[str, str]]:
        rfile = conn.rfile
        while True:
            line = rfile.readline(_LINE)
            if not line:
                raise _Silent("the connection closed before the reply")
            parts = line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                raise ConnectionResetError(f"not an HTTP reply: {line[:40]!r}")
            status = int(parts[1])
            headers: dict[str, str] = {}
            while True:
                h = rfile.readline(_LINE)
                if h in (b"\r\n", b"\n"):
                    break
                if not h:
                    raise ConnectionResetError("the reply's head ended early")
                name, _, value = h.decode("latin-1").partition(":")
                name = name.strip().lower()
                value = value.strip()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            if 100 <= status < 200:
                continue  # an interim reply (100 Continue): the real one follows
            if parts[0] == b"HTTP/1.0" or "close" in headers.get("connection", "").lower():
                conn.keep = False
            return status, headers

    def _reply(self, conn: _Conn, method: str, status: int, headers: dict[str, str]) -> Response:
        if method == "HEAD" or status in _NO_BODY_STATUS:
            return Response(self, conn, status, headers, "none", 0)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return Response(self, conn, status, headers, "chunked", 0)
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit():
            return Response(self, conn, status, headers, "length", int(length))
        return Response(self, conn, status, headers, "close", 0)


class _Silent(ConnectionError):
    """The connection closed without a byte of reply."""
