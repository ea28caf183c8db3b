"""Many files open for writing through a real mount: the shared staging budget.

Any number of writers open at once (no ENOMEM), a write that waits for the budget is
released when uploads drain, a really full staging disk gives ENOSPC and damages
nothing, and the daemon's memory stays within the bound docs/tuning.md states.
"""
from __future__ import annotations

import errno
import os
import random
import subprocess
import threading
import time

import psutil
import pytest

from s3pipefs.config import MiB, S3Config, TransferConfig
from s3pipefs.engine import Engine
from s3pipefs.s3 import Store
from tests.faultproxy import Rule
from tests.fs_fixtures import wait_for
from tests.test_reliability_common import blob, seg_key

pytestmark = pytest.mark.fuse

WRITERS = 256
# docs/tuning.md, "Writers of a mount": the daemon's RSS with 256 writers, default budget.
RSS_BOUND = 200 * MiB


@pytest.fixture
def engine(s3_server, tmp_path):
    return Engine(Store(S3Config(endpoint_url=s3_server.endpoint)),
                  TransferConfig(segment_size=MiB, workers=4, staging_dir=str(tmp_path / "eng")))


def stream_bytes(engine, bucket, key) -> bytes:
    with engine.open_reader(bucket, key, follow=False) as r:
        return r.read(0, r.size + 1)


class PeakRss:
    """Samples a process's RSS in the background; ``peak`` is the most it saw."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_256_writers_open_at_once_all_land_within_the_memory_bound(mounter, engine, bucket):
    m = mounter(bucket, max_writers="4")  # an old fstab line: still mounts, refuses nobody
    rnd = random.Random(7)
    # 4 KiB to 1 MiB, most of them small (log-uniform), as a tree of files is.
    sizes = [int(4096 * 256 ** rnd.random()) for _ in range(WRITERS)]
    datas = [blob(n, 1000 + i) for i, n in enumerate(sizes)]
    all_open = threading.Barrier(WRITERS, timeout=60)
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            with open(m / f"f{i:03d}", "wb", buffering=0) as f:
                all_open.wait()  # every file is open for writing before anyone writes
                for off in range(0, len(datas[i]), 256 * 1024):
                    f.write(datas[i][off:off + 256 * 1024])
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)
            all_open.abort()

    with PeakRss(m.daemon_pids()[0]) as rss:
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors, errors[:3]
    assert not any(getattr(e, "errno", None) == errno.ENOMEM for e in errors)
    for i in range(WRITERS):
        assert (m / f"f{i:03d}").read_bytes() == datas[i], i
    entry = engine.stat(bucket, "f000")
    assert entry is not None and entry.complete
    print(f"daemon peak RSS with {WRITERS} writers: {rss.peak / MiB:.0f} MiB")
    assert rss.peak < RSS_BOUND, rss.peak / MiB


def test_a_write_waits_for_the_budget_and_goes_on_when_uploads_drain(mounter, fault_proxy, engine, bucket):
    m = mounter(bucket, endpoint=fault_proxy.endpoint, write_budget="1M")
    stall = fault_proxy.add(Rule("stall", method="PUT", path_contains=f"/a.bin/{seg_key(1)}",
                                 after_bytes=-1, seconds=2.0))
    a_data, b_data = blob(2 * MiB, 1), blob(4096, 2)
    with open(m / "a.bin", "wb", buffering=0) as a:
        # 2 MiB, 1 MiB segments: segment 1 is sealed and uploads (its answer held back by
        # the proxy); segment 2 stays unsealed (the mount's writable tail).
        a.write(a_data)
        assert wait_for(lambda: stall.hits == 1, 10)
        with open(m / "b.bin", "wb", buffering=0) as b:
            t0 = time.monotonic()
            b.write(b_data)  # 2 MiB staged > 1M budget, an upload draining: wait for it
            waited = time.monotonic() - t0
    assert 1.0 <= waited < 15, waited
    assert stream_bytes(engine, bucket, "a.bin") == a_data
    assert stream_bytes(engine, bucket, "b.bin") == b_data
    assert engine.stat(bucket, "b.bin").complete


def test_full_staging_disk_fails_writers_with_enospc_and_damages_nothing(mounter, engine, bucket, tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(tiny)], capture_output=True)
    assert r.returncode == 0, r.stderr
    try:
        # A budget far larger than the disk: the disk fills first.
        m = mounter(bucket, staging=str(tiny), segment_size="4M", write_budget="64M")
        (m / "before.bin").write_bytes(blob(300_000, 9))
        datas = [blob(1536 * 1024, 20 + i) for i in range(3)]
        outcome: dict[int, int | None] = {}
        # All three are open, and none is closed (its close would upload it and free its
        # staging) until all have written or failed: the disk must hold them at once.
        all_open, all_written = threading.Barrier(3, timeout=60), threading.Barrier(3, timeout=60)

        def writer(i: int) -> None:
            try:
                with open(m / f"w{i}.bin", "wb", buffering=0) as f:
                    all_open.wait()
                    try:
                        for off in range(0, len(datas[i]), 128 * 1024):
                            f.write(datas[i][off:off + 128 * 1024])
                    finally:
                        all_written.wait()
                outcome[i] = None
            except OSError as e:
                outcome[i] = e.errno

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(outcome) == [0, 1, 2]
        assert set(outcome.values()) <= {None, errno.ENOSPC}, outcome
        assert errno.ENOSPC in outcome.values()  # 4.5 MiB cannot fit on 2 MiB
        for i, err in outcome.items():
            ent = engine.stat(bucket, f"w{i}.bin")
            if err is None:
                assert stream_bytes(engine, bucket, f"w{i}.bin") == datas[i]
            else:
                assert ent is None or not ent.complete  # never complete and short
        assert stream_bytes(engine, bucket, "before.bin") == blob(300_000, 9)
        assert wait_for(lambda: not os.listdir(tiny), 10), os.listdir(tiny)
        (m / "after.bin").write_bytes(b"fits")  # the mount goes on
        assert stream_bytes(engine, bucket, "after.bin") == b"fits"
    finally:
        mounter.close()
        subprocess.run(["umount", "-l", str(tiny)], capture_output=True)
