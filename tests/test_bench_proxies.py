"""The benchmark's link-emulating, request-counting proxy (bench/wanproxy.py).

The WAN and tree sections of the benchmark trust it to pass bytes unchanged, to add the
round trip and hold the rate it is told, and to count the requests the server gets.
Small and quick: no S3 server, no benchmark run.
"""
from __future__ import annotations

import asyncio
import collections
import http.server
import importlib.util
import os
import random
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "wanproxy", Path(__file__).resolve().parent.parent / "bench" / "wanproxy.py")
wanproxy = importlib.util.module_from_spec(_SPEC)
sys.modules["wanproxy"] = wanproxy  # dataclasses look their module up there
_SPEC.loader.exec_module(wanproxy)


async def _upstream(handler):
    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    return srv, ("127.0.0.1", srv.sockets[0].getsockname()[1])


async def _echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def test_bytes_pass_unchanged_both_ways():
    payload = os.urandom(3 * 1024 * 1024 + 17)

    async def go():
        srv, addr = await _upstream(_echo)
        proxy = await wanproxy.Proxy(addr, wanproxy.Link()).start()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)

        async def send():
            view = memoryview(payload)
            while view:  # uneven pieces, as clients write
                n = random.randint(1, 200_000)
                writer.write(view[:n])
                view = view[n:]
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        got = await reader.read(-1)
        await sender
        writer.close()
        await proxy.close()
        srv.close()
        return got, proxy.stats

    got, stats = asyncio.run(go())
    assert got == payload
    assert stats.bytes_up == stats.bytes_down == len(payload)
    assert stats.connections == 1


def test_round_trip_is_added_and_a_new_connection_costs_one_more():
    rtt = 0.1

    async def go():
        srv, addr = await _upstream(_echo)
        proxy = await wanproxy.Proxy(addr, wanproxy.Link(delay=rtt / 2)).start()
        t0 = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        first = time.monotonic() - t0
        t1 = time.monotonic()
        writer.write(b"y")
        assert await reader.readexactly(1) == b"y"
        second = time.monotonic() - t1
        writer.close()
        await proxy.close()
        srv.close()
        return first, second

    first, second = asyncio.run(go())
    assert 2 * rtt * 0.95 <= first < 2 * rtt + 0.15   # handshake + one exchange
    assert rtt * 0.95 <= second < rtt + 0.1


async def _sink_until(total: int, done: asyncio.Future, reader, writer):
    got = 0
    while got < total:
        data = await reader.read(65536)
        if not data:
            break
        got += len(data)
    done.set_result((time.monotonic(), got))
    writer.close()


def _time_upload(link, size: int) -> float:
    """Seconds from the first byte sent to the last byte at the server."""
    async def go():
        done = asyncio.get_running_loop().create_future()
        srv, addr = await _upstream(lambda r, w: _sink_until(size, done, r, w))
        proxy = await wanproxy.Proxy(addr, link).start()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        payload = os.urandom(size)
        await asyncio.sleep(link.rtt + 0.02)  # past the handshake delay
        t0 = time.monotonic()
        writer.write(payload)
        await writer.drain()
        t1, got = await done
        writer.close()
        await proxy.close()
        srv.close()
        assert got == size
        return t1 - t0
    return asyncio.run(go())


def test_rate_cap_holds():
    rate, size = 8e6, 4 * 1024 * 1024   # 64 Mbit/s, 4 MiB: about 0.52 s
    took = _time_upload(wanproxy.Link(rate=rate), size)
    expected = size / rate
    assert expected * 0.9 <= took <= expected * 1.5


def test_window_cap_limits_a_connection_to_window_per_round_trip():
    rtt, window, size = 0.1, 64 * 1024, 320 * 1024  # 5 windows: about 4.5 round trips
    took = _time_upload(wanproxy.Link(delay=rtt / 2, window=window), size)
    assert took >= (size / window - 1) * rtt + rtt / 2 - 0.02
    assert took < (size / window) * rtt + 0.4


def test_request_counter_counts_heads_not_bodies():
    body = b"GET /not-a-request HTTP/1.1\r\n\r\n" * 3
    chunked = b"1f\r\n" + b"PUT /nor-this HTTP/1.1\r\n\r\n12345" + b"\r\n0\r\nX-Trailer: 1\r\n\r\n"
    stream = (b"PUT /b/k HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body) + body
              + b"POST /b/k?uploads HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
              + b"GET /b/k HTTP/1.1\r\nHost: h\r\n\r\n"
              + b"HEAD /b/k HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
    assert len(b"PUT /nor-this HTTP/1.1\r\n\r\n12345") == 0x1f
    for pieces in (1, 7, len(stream)):  # all at once, a few pieces, byte by byte
        counts = collections.Counter()
        counter = wanproxy.RequestCounter(counts)
        step = -(-len(stream) // pieces)
        for i in range(0, len(stream), step):
            counter.feed(stream[i:i + step])
        assert counts == {"PUT": 1, "POST": 1, "GET": 1, "HEAD": 1}, pieces


def test_request_counter_gives_up_on_what_is_not_http():
    counts = collections.Counter()
    counter = wanproxy.RequestCounter(counts)
    counter.feed(b"\x00junk\r\nContent-Length: lots\r\n\r\nGET / HTTP/1.1\r\n\r\n")
    counter.feed(b"x" * (wanproxy.RequestCounter.MAX_LINE + 10) + b"\n")
    counter.feed(b"GET / HTTP/1.1\r\n\r\n")
    assert counts == {}


class _Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_PUT(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(b"")

    def do_GET(self):
        self._answer(b"hello")

    def _answer(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_proxy_process_relays_http_and_reports_counts(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy = wanproxy.ProxyProcess(f"http://127.0.0.1:{server.server_address[1]}",
                                  wanproxy.Link(), tmp_path / "proxy.log")
    try:
        for _ in range(2):
            req = urllib.request.Request(proxy.endpoint + "/b/k", data=b"z" * 1000, method="PUT")
            assert urllib.request.urlopen(req, timeout=10).status == 200
        assert urllib.request.urlopen(proxy.endpoint + "/b/k", timeout=10).read() == b"hello"
        stats = proxy.stats()
    finally:
        proxy.stop()
        server.shutdown()
    assert stats["requests"] == {"PUT": 2, "GET": 1}
    assert stats["requests_total"] == 3
    assert stats["bytes_up"] > 2000
    assert proxy.proc.returncode == 0


def test_proxy_process_refuses_a_zero_window(tmp_path):
    with pytest.raises(RuntimeError, match="did not start"):
        wanproxy.ProxyProcess("127.0.0.1:9", wanproxy.Link(window=0), tmp_path / "proxy.log")
