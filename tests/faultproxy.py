"""A fault-injecting HTTP/1.1 reverse proxy for the failure tests.

The failure tests put this proxy between s3pipefs (boto3) and a real S3 server
(SeaweedFS) and tell it, with `Rule`s, which requests to break and how: answer with an
S3 error, reset the connection, stall, truncate a body or flip one byte of it.

Design
------
- One thread per client connection, each paired with its own upstream connection.
  Both sides stay keep-alive, so the connection pattern the server sees is the one the
  client made, and a client's connection pool behaves as it would against S3.
- Requests are forwarded *byte for byte*: the request head (including `Host`) is sent
  upstream unchanged. SigV4 signs the Host header the client used, i.e. the proxy's
  `127.0.0.1:PORT`; SeaweedFS verifies the signature against the Host header it
  receives, so the unchanged header verifies (rewriting it to the upstream's address
  would break every signature). `test_faultproxy.py` checks both facts.
- Bodies are streamed in 1 MiB chunks with `readinto1` into one reusable buffer (no
  per-chunk allocation), for Content-Length, chunked and read-until-close bodies, so
  hundreds of MB/s pass through. Only the small heads are parsed.
- `Expect: 100-continue` (boto3 sends it on PUT) is passed upstream and the server's
  interim `100 Continue` is relayed back before the body is forwarded; a final answer
  instead of 100 is relayed and the connection closed, because the client may or may
  not send the body afterwards.
- A rule is chosen when the request head arrives: rules are tried in the order they
  were added and the first that *fires* wins. A rule counts (`matched`) only requests
  that reach it; it fires once `skip` of them have passed, on every `every`-th one after
  that (1: each), `times` times (-1: always), and `hits` counts firings even when the body turned out shorter than `after_bytes`.
  Faults are positioned by `after_bytes`:
    * `0`  -- before the request is forwarded: the server never sees it
              (`status`, `reset`, `stall`);
    * `>0` -- at that offset of the body in `direction` ("response" or "request");
              for chunked bodies the offset counts payload bytes, not the framing;
    * `-1` -- (`reset`, `stall`) after the server has fully answered, before any byte
              of the response reaches the client: "the PUT happened but the reply was
              lost" / "slow reply".
  `status` always answers at once, from the proxy, with an S3 XML error document.
  `corrupt` flips all bits of the body byte at `after_bytes` (0: the first byte).
  `truncate` is response-only: full headers, `after_bytes` of the body, then a clean
  close (FIN). `reset` closes with SO_LINGER 0, i.e. a TCP RST, which the client sees as
  ECONNRESET - distinct from a truncation.
- `requests` logs every request (`Seen`), and `bytes_up`/`bytes_down` count body
  payload bytes that actually passed, so tests can assert that a server-side copy moved
  no data through the client.
"""
from __future__ import annotations

import email.utils
import http.client
import select
import socket
import struct
import threading
import urllib.parse
from dataclasses import dataclass, field
from time import monotonic
from xml.sax.saxutils import escape

# Why 1 MiB: per-chunk Python overhead becomes negligible next to the copy, while a
# buffer per connection stays small even with a hundred open connections.
CHUNK = 1 << 20
# Why 64 KiB: S3 heads are a few KiB; a head line longer than this is not S3 traffic,
# and the cap keeps a broken peer from making readline() buffer without limit.
HEAD_BUFFER = MAX_LINE = 1 << 16

ACTIONS = ("status", "reset", "stall", "truncate", "corrupt")
# The S3 error code a `status` rule answers with when only the status is given.
_DEFAULT_CODES = {
    400: "BadRequest", 403: "AccessDenied", 404: "NoSuchKey", 409: "OperationAborted",
    412: "PreconditionFailed", 500: "InternalError", 503: "SlowDown",
}


@dataclass
class Rule:
    """Which requests to break and how; see the module docstring for positions."""

    action: str
    method: str | None = None
    path_contains: str | None = None   # substring of the decoded URL path
    query_contains: str | None = None  # substring of the raw query string
    times: int = 1                     # requests that get the fault; -1 = forever
    skip: int = 0                      # first matching requests let through untouched
    every: int = 1                     # past `skip`, only every n-th matching request (a 1-in-n storm)
    status: int = 503
    code: str = "SlowDown"
    after_bytes: int = 0
    seconds: float = 0.0
    direction: str = "response"
    hits: int = 0                      # filled in: how many times it fired
    matched: int = 0                   # filled in: matching requests, skipped ones too

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; one of {ACTIONS}")
        if self.direction not in ("response", "request"):
            raise ValueError(f"direction must be 'response' or 'request', not {self.direction!r}")
        if self.action == "truncate" and self.direction != "response":
            raise ValueError("truncate applies to responses only")
        if self.code == "SlowDown" and self.status != 503:
            # Rule("status", status=500) should say InternalError, not SlowDown.
            self.code = _DEFAULT_CODES.get(self.status, "SlowDown")

    def matches(self, method: str, path: str, query: str) -> bool:
        return ((self.method is None or self.method.upper() == method)
                and (self.path_contains is None or self.path_contains in path)
                and (self.query_contains is None or self.query_contains in query))


@dataclass
class Seen:
    """One request as the proxy saw it; updated while it is in flight."""

    method: str
    path: str                          # decoded URL path: /bucket/key
    query: str                         # raw query string
    headers: dict[str, str]            # request headers, names lower-cased
    status: int | None = None          # status sent to the client (None: no answer)
    bytes_in: int = 0                  # request body bytes forwarded to the server
    bytes_out: int = 0                 # response body bytes sent to the client
    fault: str | None = None           # the action of the rule that fired, if any
    time: float = field(default_factory=monotonic)
    ended: float | None = None         # when its answer was relayed (None: not yet, or never)


class _Reset(Exception):
    """End the client connection with a TCP RST."""


class _Close(Exception):
    """End the client connection with a clean FIN (a truncated body)."""


def _stall(stop: threading.Event, seconds: float) -> None:
    """Hold a request; a proxy being stopped ends it instead of finishing it."""
    if stop.wait(seconds):
        raise _Reset()


def _reset_or_stall(rule: Rule | None, position: int, stop: threading.Event) -> None:
    """Apply a reset or stall placed outside the bodies: before forwarding (0) or
    between the server's answer and the client (-1)."""
    if rule and rule.after_bytes == position and rule.action in ("reset", "stall"):
        if rule.action == "reset":
            raise _Reset()
        _stall(stop, rule.seconds)


class _Head:
    """A parsed request or response head, with its raw bytes kept for forwarding."""

    def __init__(self, raw: bytes):
        self.raw = raw
        lines = raw.decode("latin-1").split("\r\n")
        self.start = lines[0].split(" ", 2)
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                # Repeated headers (rare here) are joined as RFC 9110 allows.
                key = name.strip().lower()
                value = value.strip()
                self.headers[key] = f"{self.headers[key]}, {value}" if key in self.headers else value

    def has_token(self, name: str, token: str) -> bool:
        return token in (t.strip().lower() for t in self.headers.get(name, "").split(","))

    def framing(self) -> tuple[str, int]:
        """('chunked', 0), ('length', n) or ('none', 0) from the headers alone."""
        if self.has_token("transfer-encoding", "chunked"):
            return "chunked", 0
        if "content-length" in self.headers:
            return "length", int(self.headers["content-length"])
        return "none", 0


class _Peer:
    """A socket plus a buffered reader: heads are read line by line, bodies in chunks."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        # Why: request/response heads are small writes; Nagle + delayed ACK would add
        # 40 ms to every keep-alive exchange.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Why a buffer smaller than CHUNK: readinto1() then reads bodies from the socket
        # straight into self.buf, skipping a copy through the reader's own buffer.
        self.rfile = sock.makefile("rb", buffering=HEAD_BUFFER)
        self.buf = bytearray(CHUNK)

    def read_head(self) -> _Head | None:
        """The next head, or None on a clean EOF before its first byte."""
        lines = []
        while True:
            line = self.rfile.readline(MAX_LINE)
            if not line:
                if lines:
                    raise ConnectionError("connection closed inside an HTTP head")
                return None
            if not lines and line in (b"\r\n", b"\n"):
                continue  # stray CRLF between messages is allowed (RFC 9112 2.2)
            lines.append(line)
            if line in (b"\r\n", b"\n"):
                return _Head(b"".join(lines))
            if len(lines) > 200:
                raise ConnectionError("HTTP head too long")

    def readinto(self, n: int) -> memoryview:
        """Up to n bytes (fewer at a chunk boundary) into the peer's buffer; b'' at EOF."""
        mv = memoryview(self.buf)[:min(n, CHUNK)]
        return mv[:self.rfile.readinto1(mv)]

    def stale(self) -> bool:
        """An idle keep-alive socket that is readable has been closed by the server."""
        return bool(select.select([self.sock], [], [], 0)[0])

    def close(self, reset: bool = False):
        try:
            if reset:
                # SO_LINGER with a zero timeout makes close() send RST, not FIN.
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.rfile.close()
        self.sock.close()


class _Fault:
    """The rule that fired for one request body, applied as bytes pass its offset."""

    def __init__(self, rule: Rule | None, direction: str, stop: threading.Event):
        # corrupt and truncate always act on a body (offset 0 is its first byte); reset
        # and stall do at a positive offset only, 0 and -1 being before/after the body.
        on = rule is not None and rule.direction == direction and (
            rule.after_bytes >= 0 if rule.action in ("corrupt", "truncate") else rule.after_bytes > 0)
        self.rule = rule if on else None
        self.stop = stop
        self.done = False

    def apply(self, offset: int, data: memoryview, send) -> None:
        """Send `data` (which starts at payload `offset`), applying the fault in it."""
        r = self.rule
        at = r.after_bytes - offset if r and not self.done else -1
        if not 0 <= at < len(data):
            send(data)
            return
        self.done = True
        if r.action == "corrupt":
            data[at] ^= 0xFF   # flip every bit of one byte; the length is unchanged
            send(data)
            return
        send(data[:at])
        if r.action == "stall":
            _stall(self.stop, r.seconds)
            send(data[at:])
        elif r.action == "reset":
            raise _Reset()
        else:  # truncate
            raise _Close()


class FaultProxy:
    """A started proxy forwards to `upstream`; `endpoint` is where clients connect."""

    def __init__(self, upstream: str):
        u = urllib.parse.urlsplit(upstream)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream = upstream
        self._upstream_addr = (u.hostname, u.port or 80)
        self.endpoint = ""
        self.rules: list[Rule] = []
        self.requests: list[Seen] = []
        self.bytes_up = 0
        self.bytes_down = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._peers: set[_Peer] = set()

    # ---- lifecycle ---------------------------------------------------------------

    def start(self) -> "FaultProxy":
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.endpoint = "http://127.0.0.1:%d" % self._listener.getsockname()[1]
        self._accept_thread = threading.Thread(target=self._accept, name="faultproxy-accept", daemon=True)
        self._accept_thread.start()
        return self

    def stop(self):
        self._stop.set()   # also wakes stalled requests
        if self._listener is not None:
            try:
                # shutdown() wakes the thread blocked in accept(); close() alone does not.
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._accept_thread.join(5)
            self._listener = None
        with self._lock:
            peers = list(self._peers)
        for p in peers:
            try:
                p.sock.shutdown(socket.SHUT_RDWR)   # wakes the connection's thread
            except OSError:
                pass

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- rules and observations --------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self):
        """Drop all rules (the request log and byte counters are kept)."""
        with self._lock:
            self.rules.clear()

    def reset_log(self):
        """Forget the requests seen and zero the byte counters."""
        with self._lock:
            self.requests.clear()
            self.bytes_up = self.bytes_down = 0

    def count(self, method: str | None = None, path_contains: str | None = None) -> int:
        with self._lock:
            return sum(1 for s in self.requests
                       if (method is None or s.method == method.upper())
                       and (path_contains is None or path_contains in s.path))

    def peak_in_flight(self, method: str | None = None, path_contains: str | None = None) -> int:
        """The most such requests that were in flight at one moment (answered ones only):
        shows whether a client sent them concurrently or one after another."""
        with self._lock:
            spans = [(s.time, s.ended) for s in self.requests
                     if s.ended is not None and (method is None or s.method == method.upper())
                     and (path_contains is None or path_contains in s.path)]
        events = sorted([(t0, 1) for t0, _ in spans] + [(t1, -1) for _, t1 in spans])
        peak = now = 0
        for _, step in events:
            now += step
            peak = max(peak, now)
        return peak

    def _choose(self, seen: Seen) -> Rule | None:
        with self._lock:
            self.requests.append(seen)
            for r in self.rules:
                if not r.matches(seen.method, seen.path, seen.query):
                    continue
                r.matched += 1
                if (r.matched > r.skip and (r.matched - r.skip) % r.every == 0
                        and (r.times < 0 or r.hits < r.times)):
                    r.hits += 1
                    seen.fault = r.action
                    return r
        return None

    def _count(self, seen: Seen, n: int, up: bool) -> None:
        with self._lock:
            if up:
                seen.bytes_in += n
                self.bytes_up += n
            else:
                seen.bytes_out += n
                self.bytes_down += n

    # ---- the proxy -------------------------------------------------------------

    def _accept(self):
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=_Session(self, sock).run, name="faultproxy-conn", daemon=True).start()

    def _track(self, peer: _Peer, add: bool) -> None:
        with self._lock:
            (self._peers.add if add else self._peers.discard)(peer)


class _Session:
    """One client connection and the upstream connection paired with it."""

    def __init__(self, proxy: FaultProxy, sock: socket.socket):
        self.proxy = proxy
        self.stop = proxy._stop
        self.client = _Peer(sock)
        self.upstream: _Peer | None = None
        proxy._track(self.client, True)

    def run(self):
        reset = False
        try:
            while not self.stop.is_set() and self.exchange():
                pass
        except _Reset:
            reset = True
        except (_Close, OSError, ValueError):
            pass   # the client or server went away, or a truncation ended the connection
        finally:
            self.client.close(reset=reset)
            self.proxy._track(self.client, False)
            self.drop_upstream()

    def connect_upstream(self) -> _Peer:
        if self.upstream is not None and self.upstream.stale():
            self.drop_upstream()
        if self.upstream is None:
            self.upstream = _Peer(socket.create_connection(self.proxy._upstream_addr))
            self.proxy._track(self.upstream, True)
        return self.upstream

    def drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.proxy._track(self.upstream, False)
            self.upstream = None

    def exchange(self) -> bool:
        """Proxy one request and its response; False when the connection must end."""
        client = self.client
        req = client.read_head()
        if req is None:
            return False
        method = req.start[0].upper()
        url = urllib.parse.urlsplit(req.start[1] if len(req.start) > 1 else "/")
        seen = Seen(method, urllib.parse.unquote(url.path), url.query, dict(req.headers))
        rule = self.proxy._choose(seen)
        framing = req.framing()
        has_body = framing[0] == "chunked" or framing[1] > 0
        expect = has_body and req.has_token("expect", "100-continue")
        keep = not req.has_token("connection", "close")

        # Faults that answer before the request is forwarded.
        if rule and rule.action == "status":
            if expect:
                keep = False   # the body was not read; the client may or may not send it
            else:
                self.body(client, None, framing, _Fault(None, "request", self.stop), seen, up=True)
            self.respond(seen, rule.status, "application/xml", _error_xml(rule.code, seen.path), keep)
            return keep
        _reset_or_stall(rule, 0, self.stop)

        try:
            upstream = self.connect_upstream()
        except OSError as e:
            self.respond(seen, 502, "text/plain", f"upstream {self.proxy.upstream}: {e}".encode(), False)
            return False
        upstream.sock.sendall(req.raw)   # unchanged, Host included: SigV4 signed it
        resp = None
        if expect:
            resp = upstream.read_head()
            if resp is None:
                raise ConnectionError("upstream closed without answering")
            if resp.start[1] == "100":
                client.sock.sendall(resp.raw)
                resp = None
            else:
                keep = False   # a final answer instead of 100: the body was never sent
        if resp is None:
            self.body(client, upstream, framing, _Fault(rule, "request", self.stop), seen, up=True)
        while resp is None or resp.start[1].startswith("1"):
            if resp is not None:
                client.sock.sendall(resp.raw)   # other interim responses are relayed as-is
            resp = upstream.read_head()
            if resp is None:
                raise ConnectionError("upstream closed without answering")

        _reset_or_stall(rule, -1, self.stop)
        seen.status = status = int(resp.start[1])
        client.sock.sendall(resp.raw)
        if method == "HEAD" or status in (204, 304):
            rframing = ("none", 0)
        else:
            rframing = resp.framing()
            if rframing[0] == "none":
                rframing = ("close", 0)   # no length given: the body ends when the server closes
        self.body(upstream, client, rframing, _Fault(rule, "response", self.stop), seen, up=False)
        seen.ended = monotonic()
        if rframing[0] == "close" or resp.has_token("connection", "close"):
            self.drop_upstream()
            return False
        return keep

    def body(self, src: _Peer, dst: _Peer | None, framing: tuple[str, int], fault: _Fault,
             seen: Seen, up: bool) -> None:
        """Stream one body from src to dst (None: discard), counting payload bytes."""
        kind, length = framing
        offset = 0

        def send(data):
            if dst is not None:
                # Counted before sending, so a peer that has the bytes sees them counted.
                self.proxy._count(seen, len(data), up)
                dst.sock.sendall(data)

        def copy(n: int) -> None:   # n < 0: until EOF
            nonlocal offset
            while n:
                data = src.readinto(n if n > 0 else CHUNK)
                if not data:
                    if n > 0:
                        raise ConnectionError("body ended early")
                    return
                fault.apply(offset, data, send)
                offset += len(data)
                if n > 0:
                    n -= len(data)

        def line() -> bytes:
            raw = src.rfile.readline(MAX_LINE)
            if not raw:
                raise ConnectionError("chunked body ended early")
            if dst is not None:
                dst.sock.sendall(raw)
            return raw

        if kind == "length":
            copy(length)
        elif kind == "close":
            copy(-1)
        elif kind == "chunked":
            # Chunk-size lines, CRLFs and trailers are forwarded verbatim but not counted.
            while size := int(line().split(b";", 1)[0].strip(), 16):
                copy(size)
                line()
            while line() not in (b"\r\n", b"\n"):   # trailers, then the final empty line
                pass

    def respond(self, seen: Seen, status: int, ctype: str, body: bytes, keep: bool) -> None:
        """Answer the client from the proxy itself, the way S3 would."""
        head = (
            f"HTTP/1.1 {status} {http.client.responses.get(status, 'Error')}\r\n"
            f"Date: {email.utils.formatdate(usegmt=True)}\r\n"
            f"Content-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "x-amz-request-id: FAULTPROXY\r\n"
            f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n"
        ).encode()
        if seen.method == "HEAD":
            body = b""   # a HEAD answer has headers only
        seen.status = status
        self.proxy._count(seen, len(body), False)
        self.client.sock.sendall(head + body)


def _error_xml(code: str, resource: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>injected by faultproxy</Message>"
        f"<Resource>{escape(resource)}</Resource><RequestId>FAULTPROXY</RequestId></Error>"
    ).encode()
