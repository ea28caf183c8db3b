"""Removing and moving trees through a real mount: their S3 requests run concurrently.

unlink returns once the name is gone from the mount's view and its delete runs on a
pool (fs/deletes.py); rmdir waits for the deletes under it; a failed delete shows the
file again; rename of a directory copies its objects in parallel. Concurrency is
observed through the fault proxy (requests in flight at once), not by wall time.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import subprocess
import time

import pytest

from s3pipefs.config import MiB, S3Config, TransferConfig
from s3pipefs.engine import Engine
from s3pipefs.s3 import Store
from tests.faultproxy import Rule
from tests.fs_fixtures import wait_for

pytestmark = pytest.mark.fuse

FILES = 1000


@pytest.fixture
def engine(s3_server, tmp_path):
    return Engine(Store(S3Config(endpoint_url=s3_server.endpoint, max_pool_connections=32)),
                  TransferConfig(segment_size=MiB, workers=2, staging_dir=str(tmp_path / "eng")))


def make_streams(engine, bucket, keys) -> None:
    def one(key):
        with engine.open_writer(bucket, key) as w:
            w.write(key.encode())
    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, keys))


def rm_rf(path) -> float:
    t0 = time.monotonic()
    r = subprocess.run(["rm", "-rf", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return time.monotonic() - t0


def test_rm_rf_of_1000_files_runs_its_deletes_concurrently_and_a_second_mount_sees_nothing(
        mounter, fault_proxy, engine, bucket):
    make_streams(engine, bucket, [f"tree/f{i:04d}" for i in range(FILES)] + [f"seq/f{i:02d}" for i in range(20)])
    m = mounter(bucket, endpoint=fault_proxy.endpoint)
    assert len(os.listdir(m / "tree")) == FILES

    # For comparison: 20 files removed one after another, the requests an unlink used to
    # make before returning.
    t0 = time.monotonic()
    for i in range(20):
        engine.delete(bucket, f"seq/f{i:02d}")
    sequential_per_file = (time.monotonic() - t0) / 20

    fault_proxy.reset_log()
    wall = rm_rf(m / "tree")
    requests = len(fault_proxy.requests)
    peak = fault_proxy.peak_in_flight(method="DELETE")
    print(f"rm -rf of {FILES} files: {wall:.1f} s, {requests / FILES:.1f} requests per file, up to {peak} "
          f"deletes in flight; one at a time would take about {sequential_per_file * FILES:.1f} s")
    assert peak >= 8, peak  # one file at a time would never overlap
    assert requests <= 8 * FILES, requests
    assert not (m / "tree").exists()

    other = mounter(bucket)  # straight to the server, its own caches
    assert "tree" not in os.listdir(other.path)
    assert list(engine.store.list(bucket, "tree/")) == []


def test_a_name_removed_and_created_again_holds_the_new_file(mounter, engine, bucket):
    m = mounter(bucket)
    for round_ in range(5):
        (m / "again.txt").write_text(f"old {round_}")
        os.unlink(m / "again.txt")
        assert not (m / "again.txt").exists()  # gone from the view at once
        (m / "again.txt").write_text(f"new {round_}")  # waits for the delete, then writes
        assert (m / "again.txt").read_text() == f"new {round_}"
    m.unmount()  # drains the deletes
    assert engine.stat(bucket, "again.txt").complete
    with engine.open_reader(bucket, "again.txt", follow=False) as r:
        assert r.read(0, 100) == b"new 4"


def test_a_failed_delete_is_logged_and_the_file_shows_again(mounter, fault_proxy, engine, bucket):
    make_streams(engine, bucket, ["keep.bin"])
    m = mounter(bucket, endpoint=fault_proxy.endpoint, retries="1", metadata_ttl="60")
    fault_proxy.add(Rule("status", method="DELETE", path_contains="/keep.bin/.manifest", status=403,
                         code="AccessDenied", times=-1))
    os.unlink(m / "keep.bin")
    assert wait_for(lambda: "removal failed" in m.log_text(), 15)
    assert wait_for(lambda: "keep.bin" in os.listdir(m.path), 10)
    assert (m / "keep.bin").read_bytes() == b"keep.bin"
    assert engine.stat(bucket, "keep.bin").complete


def test_rename_of_a_directory_copies_its_files_concurrently(mounter, fault_proxy, engine, bucket):
    make_streams(engine, bucket, [f"dir/f{i:02d}" for i in range(20)])
    m = mounter(bucket, endpoint=fault_proxy.endpoint)
    fault_proxy.reset_log()
    os.rename(m / "dir", m / "moved")
    assert fault_proxy.peak_in_flight(method="PUT", path_contains="/moved/") >= 4
    assert sorted(os.listdir(m / "moved")) == [f"f{i:02d}" for i in range(20)]
    assert not (m / "dir").exists()
    assert (m / "moved" / "f07").read_bytes() == b"dir/f07"
    assert list(engine.store.list(bucket, "dir/")) == []
