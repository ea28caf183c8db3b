#!/usr/bin/env python3
"""A user-space wide-area link between the tools and the S3 server: a TCP proxy that
delays, paces and counts.

The benchmark runs on loopback, where a request costs microseconds and bandwidth is
whatever the CPU gives. To see what a tool does over a real network, every tool talks to
the server through this proxy instead, and the proxy makes each TCP connection behave like
one over a long, thin link:

* **Delay.** Every byte is delivered ``rtt / 2`` after the proxy read it, in each
  direction, so a request and its answer cost one round trip. A new connection costs one
  more round trip before its first byte moves (the TCP handshake).
* **Rate.** Each connection and direction is paced to ``rate`` bytes per second: a chunk
  leaves once the chunk before it has been "serialized" at that rate. Parallel connections
  each get the full rate, as separate TCP flows do on a path that is not saturated.
* **Window.** At most ``window`` bytes are in flight per connection and direction, and a
  chunk's credit returns one round trip after it was sent (when its ACK would arrive), so
  one connection moves at most ``window / rtt``. The default (16 MiB) only bounds the
  proxy's memory; a smaller one emulates a receiver with a small buffer.

Reading is paced and windowed, so a client that sends faster than the link is held back by
the proxy not reading, exactly as by a full TCP window: nothing piles up in memory.

It also **counts** what the server receives: connections, bytes each way, and HTTP
requests by method. The count parses only the framing of the client's byte stream
(request heads, Content-Length and chunked bodies), so it costs nothing per body byte.
With no delay and no rate the proxy is just a counting relay; the tree section uses it so.

Run as a program (``wanproxy.py --upstream HOST:PORT --rtt-ms 40 --rate-mbit 400``) it
prints one JSON line with the ports it listens on, ``{"port": P, "control": C}``, and runs
until SIGTERM. A connection to the control port gets the counters as one JSON line.
``ProxyProcess`` is the harness's handle on such a process.

The kernel's netem would do the shaping more precisely, but it needs a kernel module and
root in the network namespace; this works wherever Python does.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 256 * 1024
# How far reading may run ahead of the paced departures. Sleeping until each chunk's exact
# departure would add every sleep's overshoot to the schedule and fall behind the rate.
PACE_SLACK = 0.02
DEFAULT_WINDOW = 16 << 20  # far above 400 Mbit/s x 40 ms (2 MB): bounds memory only


@dataclass(frozen=True)
class Link:
    """What one direction of every connection looks like."""

    delay: float = 0.0              # one-way seconds
    rate: float | None = None       # bytes per second per connection, None: unlimited
    window: int = DEFAULT_WINDOW    # bytes in flight per connection

    @property
    def rtt(self) -> float:
        return 2 * self.delay


class RequestCounter:
    """Counts HTTP/1.1 requests in a client's byte stream, fed in arbitrary pieces.

    Only heads and chunk-size lines are looked at; body bytes are skipped by count. A
    stream it cannot follow (not HTTP, a line longer than MAX_LINE) is no longer counted,
    and still relayed.
    """

    MAX_LINE = 64 * 1024

    def __init__(self, counts: collections.Counter):
        self.counts = counts
        self._state = "head"      # head, body, chunk-size, chunk-data, trailer, lost
        self._line = bytearray()  # the unfinished line of a line-oriented state
        self._left = 0            # body or chunk bytes still to skip
        self._method = ""
        self._head_size = 0       # bytes of the head so far, bounded by MAX_LINE too
        self._length = 0
        self._chunked = False

    def feed(self, data: bytes) -> None:
        try:
            self._feed(data)
        except ValueError:  # a malformed length: lose the stream, never the connection
            self._state = "lost"

    def _feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n and self._state != "lost":
            if self._state in ("body", "chunk-data"):
                take = min(self._left, n - i)
                i += take
                self._left -= take
                if not self._left:
                    self._state = "head" if self._state == "body" else "chunk-size"
                continue
            j = data.find(b"\n", i)
            if j < 0 or len(self._line) + j - i > self.MAX_LINE:
                self._line += data[i:]
                if len(self._line) > self.MAX_LINE:
                    self._state = "lost"
                    self._line.clear()
                return
            self._line += data[i:j + 1]
            i = j + 1
            line = bytes(self._line).rstrip(b"\r\n")
            self._line.clear()
            self._on_line(line)

    def _on_line(self, line: bytes) -> None:
        if self._state == "chunk-size":
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size:
                self._state, self._left = "chunk-data", size + 2  # + CRLF after the data
            else:
                self._state = "trailer"
        elif self._state == "trailer":
            if not line:
                self._state = "head"
        elif len(line) + self._head_size > self.MAX_LINE:
            self._state = "lost"
        elif not self._method:
            if line:  # stray CRLFs between requests are allowed
                self._method = line.split(b" ", 1)[0].decode("latin-1")
                self._length, self._chunked = 0, False
        elif line:
            self._head_size += len(line)
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                self._length = int(value.strip())
            elif name == b"transfer-encoding":
                self._chunked = b"chunked" in value.lower()
        else:  # the empty line that ends the head
            self.counts[self._method] += 1
            self._method, self._head_size = "", 0
            if self._chunked:
                self._state = "chunk-size"
            elif self._length:
                self._state, self._left = "body", self._length


@dataclass
class Stats:
    connections: int = 0
    bytes_up: int = 0       # client -> server
    bytes_down: int = 0     # server -> client
    requests: collections.Counter = field(default_factory=collections.Counter)

    def to_json(self) -> dict:
        return {"connections": self.connections, "bytes_up": self.bytes_up,
                "bytes_down": self.bytes_down, "requests": dict(self.requests),
                "requests_total": sum(self.requests.values())}


class _Direction:
    """One direction of one connection: read, pace, hold for the delay, write."""

    def __init__(self, link: Link, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                 on_bytes, counter: RequestCounter | None = None):
        self.link, self.src, self.dst = link, src, dst
        self.on_bytes, self.counter = on_bytes, counter
        self.queue: asyncio.Queue = asyncio.Queue()
        self.in_flight = 0
        self.credit = asyncio.Event()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._send())
            tg.create_task(self._deliver())

    def _release(self, n: int) -> None:
        self.in_flight -= n
        self.credit.set()

    async def _send(self) -> None:
        loop = asyncio.get_running_loop()
        link, next_free = self.link, 0.0
        try:
            while True:
                while self.in_flight >= link.window:
                    self.credit.clear()
                    await self.credit.wait()
                data = await self.src.read(min(CHUNK, link.window - self.in_flight))
                if not data:
                    break
                if self.counter:
                    self.counter.feed(data)
                self.on_bytes(len(data))
                self.in_flight += len(data)
                now = loop.time()
                sent = now
                if link.rate:
                    sent = max(now, next_free) + len(data) / link.rate
                    next_free = sent
                self.queue.put_nowait((sent + link.delay, data))
                if sent - now > PACE_SLACK:  # do not read on while the link is busy
                    await asyncio.sleep(sent - now - PACE_SLACK)
        finally:
            self.queue.put_nowait((loop.time() + link.delay, b""))

    async def _deliver(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await self.queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if self.dst.can_write_eof():
                    self.dst.write_eof()
                return
            self.dst.write(data)
            await self.dst.drain()
            if self.link.delay:  # the ACK takes the way back
                loop.call_later(self.link.delay, self._release, len(data))
            else:
                self._release(len(data))


class Proxy:
    """The proxy inside an event loop: ``await start()``, then ``port`` and ``stats``."""

    def __init__(self, upstream: tuple[str, int], link: Link, host: str = "127.0.0.1", port: int = 0):
        self.upstream, self.link, self.host, self.port = upstream, link, host, port
        self.stats = Stats()
        self.control_port = 0
        self._servers: list[asyncio.base_events.Server] = []

    async def start(self) -> "Proxy":
        srv = await asyncio.start_server(self._serve, self.host, self.port)
        ctl = await asyncio.start_server(self._control, self.host, 0)
        self._servers = [srv, ctl]
        self.port = srv.sockets[0].getsockname()[1]
        self.control_port = ctl.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        for s in self._servers:
            s.close()
            await s.wait_closed()

    async def _control(self, reader, writer) -> None:
        writer.write(json.dumps(self.stats.to_json()).encode() + b"\n")
        await writer.drain()
        writer.close()

    def _up(self, n: int) -> None:
        self.stats.bytes_up += n

    def _down(self, n: int) -> None:
        self.stats.bytes_down += n

    async def _serve(self, c_reader, c_writer) -> None:
        self.stats.connections += 1
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            c_writer.close()
            return
        try:
            await self._relay(c_reader, c_writer, s_reader, s_writer)
        except asyncio.CancelledError:
            pass  # the proxy is shutting down; nothing awaits this handler
        finally:
            for w in (c_writer, s_writer):
                w.close()

    async def _relay(self, c_reader, c_writer, s_reader, s_writer) -> None:
        if self.link.delay:
            await asyncio.sleep(self.link.rtt)  # the handshake's round trip
        up = _Direction(self.link, c_reader, s_writer, self._up, RequestCounter(self.stats.requests))
        down = _Direction(self.link, s_reader, c_writer, self._down)
        try:
            async with asyncio.TaskGroup() as tg:  # an error in one cancels the others
                tg.create_task(up.run())
                tg.create_task(down.run())
        except* OSError:
            pass  # a reset on either side ends the connection on both


# -- the harness's handle ------------------------------------------------------------------
class ProxyProcess:
    """This module run as a separate process (its CPU is not the harness's), plus queries."""

    def __init__(self, upstream: str, link: Link, log: Path):
        argv = [sys.executable, str(Path(__file__).resolve()), "--upstream", upstream,
                "--rtt-ms", repr(link.rtt * 1000), "--window", str(link.window)]
        if link.rate:
            argv += ["--rate-mbit", repr(link.rate * 8 / 1e6)]
        self.link = link
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._log)
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise RuntimeError(f"wanproxy did not start (exit status {self.proc.returncode}, log {log})")
        ports = json.loads(line)
        self.port, self.control = ports["port"], ports["control"]
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict:
        with socket.create_connection(("127.0.0.1", self.control), timeout=10) as s:
            buf = b""
            while chunk := s.recv(65536):
                buf += chunk
        return json.loads(buf)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc.stdout.close()
        self._log.close()


def _host_port(text: str) -> tuple[str, int]:
    text = text.split("://", 1)[-1].rstrip("/")
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def _main(a) -> None:
    link = Link(delay=a.rtt_ms / 2000, rate=a.rate_mbit * 1e6 / 8 if a.rate_mbit else None,
                window=a.window)
    proxy = await Proxy(_host_port(a.upstream), link, port=a.port).start()
    print(json.dumps({"port": proxy.port, "control": proxy.control_port}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await proxy.close()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="HOST:PORT or http://HOST:PORT of the server")
    ap.add_argument("--port", type=int, default=0, help="port to listen on (default: any free one)")
    ap.add_argument("--rtt-ms", type=float, default=0.0, help="round trip added, in ms (half each way)")
    ap.add_argument("--rate-mbit", type=float, default=0.0, help="per-connection rate each way, Mbit/s (0: unlimited)")
    ap.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="bytes in flight per connection and direction")
    a = ap.parse_args(argv)
    if a.window < 1:
        ap.error("--window must be at least 1 byte")
    asyncio.run(_main(a))


if __name__ == "__main__":
    main()
