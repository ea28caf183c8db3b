"""One suite of read/write scenarios, run three ways: against the engine API directly, against
the FUSE-free Filesystem in-process, and through a real kernel mount (writer and reader on
two mounts of the same bucket, and two Filesystems in-process). They must agree byte for byte."""
from __future__ import annotations

import os
import random
import threading
import time

import pytest

from s3pipefs.config import KiB, MiB, S3Config, TransferConfig
from s3pipefs.engine import Engine
from s3pipefs.fs.filesystem import Filesystem
from s3pipefs.fs.options import FsConfig
from s3pipefs.s3 import Store
from tests.conftest import unique_name
from tests.fs_fixtures import CoreDriver, EngineDriver, Mounter, MountDriver, wait_for

SEG = 256 * KiB


def blob(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def chunks(data: bytes, size: int = 100_000):
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.fixture(params=["engine", "core", "mount"])
def driver(request, s3_server, bucket, tmp_path):
    cfg = TransferConfig(segment_size=SEG, workers=4, staging_dir=str(tmp_path / "staging"), poll_interval=0.1,
                         follow_timeout=10, heartbeat_interval=1)
    engine = Engine(Store(S3Config(endpoint_url=s3_server.endpoint)), cfg)
    if request.param == "engine":
        yield EngineDriver(engine, bucket)
    elif request.param == "core":
        # Writer and reader on two filesystems, as the mount driver's two mounts: on the
        # writing one a reader sees the writer's bytes (fs/follow.py), not the stream in S3.
        fs, rfs = (Filesystem(engine, bucket, "", FsConfig(metadata_ttl=1)) for _ in range(2))
        yield CoreDriver(fs, rfs)
        for f in (fs, rfs):
            f.shutdown(0)
            f.close()
    else:
        yield request.getfixturevalue("mount_driver")


@pytest.fixture(scope="module")
def mount_driver(s3_server, tmp_path_factory):
    """The mount driver's writing and reading mounts, on a bucket of their own, shared by
    this module's tests (each uses names of its own): two daemon starts per module, not
    per test."""
    bucket = unique_name("scenarios")
    Store(S3Config(endpoint_url=s3_server.endpoint)).create_bucket(bucket)
    m = Mounter(tmp_path_factory.mktemp("scenario-mounts"), dict(os.environ), s3_server.endpoint)
    try:
        yield MountDriver(m(bucket, "w", segment_size="256K", metadata_ttl="1"), m(bucket, "r", metadata_ttl="1"))
    finally:
        m.close()


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, 3 * SEG + 5])
def test_round_trip(driver, size):
    data = blob(size, size)
    driver.write(f"s{size}", chunks(data))
    assert driver.read(f"s{size}") == data
    assert driver.size(f"s{size}") == size


def test_append_adds_to_the_end(driver):
    a, b = blob(SEG + 3, 1), blob(2 * SEG, 2)
    driver.write("ap", chunks(a))
    driver.append("ap", chunks(b))
    driver.append("ap", [b"tail"])
    assert driver.read("ap") == a + b + b"tail"


def test_replace_keeps_the_old_stream_whole_until_the_new_one_completes(driver):
    old, new = blob(2 * SEG, 3), blob(SEG // 2, 4)
    driver.write("r", chunks(old))
    with driver.writer("r") as w:
        w.write(new[:1000])
        w.sync()
        assert driver.read("r") == old
        w.write(new[1000:])
    assert driver.read("r") == new


def test_random_access_reads(driver):
    data = blob(5 * SEG + 123, 5)
    driver.write("ra", chunks(data))
    rnd = random.Random(8)
    for _ in range(25):
        off = rnd.randrange(len(data))
        n = rnd.randrange(1, 2 * SEG)
        assert driver.read_at("ra", off, n) == data[off:off + n]


def test_live_follow_gets_identical_bytes(driver):
    data = blob(2 * MiB + 7, 6)
    got = {}
    with driver.writer("live") as w:
        w.write(data[:SEG])
        w.sync()
        assert wait_for(lambda: driver.exists("live"), 10)
        reader = threading.Thread(target=lambda: got.setdefault("data", driver.read("live")))
        reader.start()
        for c in chunks(data[SEG:], 200_000):
            time.sleep(0.05)
            w.write(c)
    reader.join(60)
    assert got["data"] == data


def test_a_second_writer_is_busy(driver):
    driver.write("busy", [b"0"])
    with driver.writer("busy") as w:
        w.write(b"first")
        w.sync()
        assert driver.busy("busy")
    assert driver.read("busy") == b"first"


def test_remove(driver):
    driver.write("gone", [b"bye"])
    assert driver.exists("gone")
    driver.remove("gone")
    assert wait_for(lambda: not driver.exists("gone"), 5)
