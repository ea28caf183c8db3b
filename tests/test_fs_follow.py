"""Live follow through real mounts: on the writing mount itself, and how soon other hosts
see a slow writer.

Same host: `tail -f` and `cat` of a file being written on the same mount get every byte,
including bytes still in the writer's staging (16M segments and flush_interval=0 keep
them there), and follow it to its commit. Other hosts: a writer producing a line a second
(`s3pipefs put` from a pipe, and a file on a mount) is seen by a second mount within 3 s,
by way of short segments (flush_interval).
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time

import pytest

from s3pipefs.config import S3Config, TransferConfig
from s3pipefs.engine import Engine
from s3pipefs.s3 import Store
from tests.fs_fixtures import wait_for


@pytest.fixture
def engine(s3_server, tmp_path):
    return Engine(Store(S3Config(endpoint_url=s3_server.endpoint)), TransferConfig(staging_dir=str(tmp_path)))


# Writes lines to a file, reports each write, and closes when told to on stdin.
LINE_WRITER = r"""
import os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
total = 0
for i in range(n):
    line = f"{i:05d} {'x' * (i * 37 % 200)}\n".encode()
    os.write(fd, line)
    total += len(line)
    print(total, flush=True)
    time.sleep(0.01)
sys.stdin.readline()
os.close(fd)
print("closed", flush=True)
"""


def lines(n: int) -> bytes:
    return b"".join(f"{i:05d} {'x' * (i * 37 % 200)}\n".encode() for i in range(n))


def test_tail_f_on_the_writing_mount_sees_every_byte_before_any_is_uploaded(mounter, bucket, tmp_path, engine):
    m = mounter(bucket, segment_size="16M", flush_interval="0")
    path, out = m / "growing.log", tmp_path / "tail.out"
    w = subprocess.Popen([sys.executable, "-c", LINE_WRITER, str(path), "200"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert int(w.stdout.readline()) > 0
    with open(out, "wb") as f:
        tail = subprocess.Popen(["stdbuf", "-o0", "tail", "-c", "+1", "-f", str(path)], stdout=f, stderr=subprocess.PIPE)
    try:
        written = 0
        for _ in range(199):
            written = int(w.stdout.readline())
        data = lines(200)
        assert written == len(data)
        assert wait_for(lambda: out.read_bytes() == data, 10), (len(out.read_bytes()), written)
        assert os.stat(path).st_size == written  # stat shows the writer's size
        e = engine.stat(bucket, "growing.log")
        assert e is None or e.size == 0  # none of it is in S3 yet
        assert tail.poll() is None
        w.stdin.write("close\n")
        w.stdin.flush()
        assert w.stdout.readline() == "closed\n" and w.wait(30) == 0
        assert engine.stat(bucket, "growing.log").complete
        time.sleep(1.5)  # tail polls once a second: nothing more, nothing twice
        assert out.read_bytes() == data == path.read_bytes()
    finally:
        tail.kill()
        tail.wait()
        w.kill()
    assert tail.stderr.read() == b""


# Copies stdin to stdout in 64 KiB pieces, slowly: a tar that takes a few seconds.
THROTTLE = r"""
import os, sys, time
while True:
    piece = os.read(0, 65536)
    if not piece:
        break
    os.write(1, piece)
    time.sleep(0.02)
"""


def test_cat_while_tar_writes_on_the_same_mount_gets_the_finished_file(mounter, bucket, tmp_path):
    m = mounter(bucket)  # 1M segments: some uploaded, some staged, while cat reads
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(5)
    for i in range(12):
        (src / f"f{i}").write_bytes(rng.randbytes(rng.randrange(300_000, 700_000)))
    tar = subprocess.Popen(["sh", "-c", f"tar c -C {src} . | {sys.executable} -c '{THROTTLE}' > {m / 'b.tar'}"],
                           stderr=subprocess.PIPE)
    # About 2 s of writing at 3 MB/s: cat starts early and reads most of it as it is written.
    assert wait_for(lambda: (m / "b.tar").exists(), 10)
    cat = subprocess.run(["cat", str(m / "b.tar")], capture_output=True, timeout=120)
    assert tar.wait(60) == 0, tar.stderr.read()
    assert cat.returncode == 0, cat.stderr
    finished = (m / "b.tar").read_bytes()
    assert len(finished) > 3 << 20 and cat.stdout == finished
    listed = subprocess.run(["tar", "t", "-f", "-"], input=cat.stdout, capture_output=True, check=True).stdout
    assert sorted(listed.split()) == sorted([b"./"] + [f"./f{i}".encode() for i in range(12)])


# Writes a line a second, each carrying the time it was written.
SLOW_LINES = r"""
import os, sys, time
out = sys.argv[1] if len(sys.argv) > 1 else None
fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC) if out else 1
for i in range(7):
    os.write(fd, f"{i} {time.time():.3f}\n".encode())
    time.sleep(1)
os.close(fd)
"""


def arrivals(path, count: int) -> list[tuple[int, float, float]]:
    """Follow ``path`` with cat; (line number, time written, time read) for each line."""
    got = []
    cat = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)

    def read():
        for raw in cat.stdout:
            n, written = raw.split()
            got.append((int(n), float(written), time.time()))
    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(count + 30)
    cat.kill()
    return got


def assert_seen_within(got, seconds: float, count: int) -> None:
    assert [n for n, _, _ in got] == list(range(count)), got
    # The first lines may predate the reader's open; every later one is seen within seconds.
    lags = [round(seen - written, 2) for n, written, seen in got if n >= 2]
    assert lags and max(lags) < seconds, lags


def test_a_slow_put_is_seen_by_a_mount_within_3s(mounter, bucket, s3_server, s3_env):
    reader = mounter(bucket, "reader", metadata_ttl="1")
    writer = subprocess.Popen(
        f"{sys.executable} -c '{SLOW_LINES}' | {sys.executable} -m s3pipefs put "
        f"--endpoint-url {s3_server.endpoint} s3://{bucket}/slow.log", shell=True, env=s3_env,
        stderr=subprocess.PIPE)
    assert wait_for(lambda: (reader / "slow.log").exists(), 10)
    got = arrivals(reader / "slow.log", 7)
    assert writer.wait(30) == 0, writer.stderr.read()
    assert_seen_within(got, 3.0, 7)


def test_a_slow_writer_on_a_mount_is_seen_by_a_second_mount_within_3s(mounter, bucket):
    a = mounter(bucket, "writer", segment_size="16M")
    b = mounter(bucket, "reader", metadata_ttl="1")
    writer = subprocess.Popen([sys.executable, "-c", SLOW_LINES, str(a / "slow.log")], stderr=subprocess.PIPE)
    assert wait_for(lambda: (b / "slow.log").exists(), 10)
    got = arrivals(b / "slow.log", 7)
    assert writer.wait(30) == 0, writer.stderr.read()
    assert_seen_within(got, 3.0, 7)
