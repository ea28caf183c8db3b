"""The fault matrix for the mount: real FUSE mounts (through the mount.s3pipefs helper)
whose daemon talks to SeaweedFS through the fault proxy; crash of the daemon; unmount
under a blocked reader; no ENOMEM past max_writers and bounded daemon memory; ENOSPC from a
full staging disk. See docs/reliability.md.
"""
from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import threading
import time

import psutil
import pytest

from s3pipefs.config import MiB, S3Config, TransferConfig
from s3pipefs.engine import Engine
from s3pipefs.s3 import Store
from tests.conftest import unique_name
from tests.faultproxy import Rule
from tests.fs_fixtures import helper_cmd, wait_for, wait_gone
from tests.test_reliability_common import (blob, manifest_of, own_env, own_server, own_store, run,  # noqa: F401
                                           seg_key)

pytestmark = pytest.mark.fuse
SEGM = 1 * MiB  # the Mounter's segment size
DATA = blob(4 * SEGM + 123, 61)


@pytest.fixture
def engine(s3_server, tmp_path):
    return Engine(Store(S3Config(endpoint_url=s3_server.endpoint)),
                  TransferConfig(segment_size=SEGM, workers=4, staging_dir=str(tmp_path / "eng"),
                                 poll_interval=0.1, heartbeat_interval=1))


def stream_bytes(engine, bucket, key) -> bytes:
    with engine.open_reader(bucket, key, follow=False) as r:
        return r.read(0, r.size + 1)


def write_file(path, data, chunk=256 * 1024):
    with open(path, "wb", buffering=0) as f:
        for i in range(0, len(data), chunk):
            f.write(data[i:i + chunk])


# ---- transient faults and corruption ------------------------------------------------------------

def test_mount_write_survives_transient_faults_and_corruption(mounter, fault_proxy, engine, bucket):
    m = mounter(bucket, endpoint=fault_proxy.endpoint)
    rules = [fault_proxy.add(r) for r in (
        Rule("corrupt", method="PUT", path_contains=f"/w.bin/{seg_key(1)}", direction="request", after_bytes=999),
        Rule("status", method="PUT", path_contains=f"/w.bin/{seg_key(2)}", times=2),
        Rule("reset", method="PUT", path_contains=f"/w.bin/{seg_key(3)}", after_bytes=5000, direction="request"),
        Rule("status", method="PUT", path_contains=f"/w.bin/{seg_key(4)}", status=500),
        Rule("reset", method="PUT", path_contains="/w.bin/.manifest", after_bytes=-1, skip=1))]
    write_file(m / "w.bin", DATA)  # close() returns: committed
    assert all(r.hits >= 1 for r in rules), [(r.path_contains, r.hits) for r in rules]
    e = engine.stat(bucket, "w.bin")
    assert e.complete and e.size == len(DATA)
    assert stream_bytes(engine, bucket, "w.bin") == DATA


def test_mount_read_survives_transient_faults_and_corruption(mounter, fault_proxy, engine, bucket):
    with engine.open_writer(bucket, "r.bin") as w:
        w.write(DATA)
    m = mounter(bucket, endpoint=fault_proxy.endpoint)
    rules = [fault_proxy.add(r) for r in (
        Rule("corrupt", method="GET", path_contains=f"/r.bin/{seg_key(1)}", after_bytes=77),
        Rule("reset", method="GET", path_contains=f"/r.bin/{seg_key(2)}", after_bytes=4096),
        Rule("truncate", method="GET", path_contains=f"/r.bin/{seg_key(3)}", after_bytes=100),
        Rule("status", method="GET", path_contains=f"/r.bin/{seg_key(4)}", status=500, times=2),
        Rule("truncate", method="GET", path_contains="/r.bin/.manifest", after_bytes=40))]
    assert (m / "r.bin").read_bytes() == DATA
    assert all(r.hits >= 1 for r in rules), [(r.path_contains, r.hits) for r in rules]


def test_mount_read_of_persistently_corrupt_data_is_eio_never_wrong_bytes(mounter, fault_proxy, engine, bucket):
    with engine.open_writer(bucket, "bad.bin") as w:
        w.write(DATA)
    m = mounter(bucket, endpoint=fault_proxy.endpoint, tries="2", direct_io=True)
    fault_proxy.add(Rule("corrupt", method="GET", path_contains=f"/bad.bin/{seg_key(3)}", after_bytes=10, times=-1))
    got = bytearray()
    t0 = time.monotonic()
    with open(m / "bad.bin", "rb", buffering=0) as f:
        with pytest.raises(OSError) as e:
            while b := f.read(256 * 1024):
                got += b
    assert e.value.errno == errno.EIO
    assert bytes(got) == DATA[:len(got)] and len(got) <= 2 * SEGM  # nothing from segment 3 on
    assert time.monotonic() - t0 < 30
    assert "CRC32 mismatch" in m.log_text()


def test_mount_write_with_a_persistent_fault_fails_in_bounded_time(mounter, fault_proxy, engine, bucket):
    m = mounter(bucket, endpoint=fault_proxy.endpoint, retries="2", tries="2")
    fault_proxy.add(Rule("status", method="PUT", path_contains=f"/p.bin/{seg_key(2)}", status=500, times=-1))
    t0 = time.monotonic()
    with pytest.raises(OSError) as e:
        write_file(m / "p.bin", DATA)
    assert e.value.errno == errno.EIO
    assert time.monotonic() - t0 < 60
    ent = engine.stat(bucket, "p.bin")
    assert ent is None or not ent.complete
    assert "InternalError" in m.log_text()


# ---- the daemon killed while writing ---------------------------------------------------------------

def kill9(m) -> None:
    pids = m.daemon_pids()
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGKILL)
    assert wait_gone(pids, 10)


def test_daemon_kill9_while_writing_keeps_what_was_synced_and_append_continues(mounter, engine, bucket, s3_env,
                                                                               tmp_path):
    m = mounter(bucket)
    f = open(m / "crash.bin", "wb", buffering=0)
    f.write(DATA[:2 * SEGM + 100])
    os.fsync(f.fileno())  # durable: two whole segments and a short third
    f.write(DATA[2 * SEGM + 100:3 * SEGM])  # written but not synced: may or may not survive
    # Staging is private while the write is in flight.
    for p in (tmp_path / "staging0").rglob("*"):
        want = 0o700 if p.is_dir() else 0o600
        assert stat.S_IMODE(p.stat().st_mode) == want, (p, oct(p.stat().st_mode))
    kill9(m)
    try:
        f.close()
    except OSError:
        pass  # ENOTCONN: the daemon is gone
    # What was fsync'd is readable, and the stream is not complete.
    man = manifest_of(engine.store, bucket, "crash.bin")
    assert not man.completed and man.total_size >= 2 * SEGM + 100
    r = run(s3_env, "cat", "--no-follow", f"s3://{bucket}/crash.bin")
    assert r.returncode == 0 and len(r.stdout) == man.total_size and DATA.startswith(r.stdout)
    # The mount point is stale until unmounted; then a new mount works at once (the dead
    # daemon was on this host, so its lease is free) and `>>` continues to the right bytes.
    with pytest.raises(OSError) as e:
        os.listdir(m.path)
    assert e.value.errno == errno.ENOTCONN
    subprocess.run(["umount", "-l", str(m.path)], capture_output=True)
    m2 = mounter(bucket, m.path.name)
    size = os.stat(m2 / "crash.bin").st_size
    assert size == man.total_size
    with open(m2 / "crash.bin", "ab", buffering=0) as g:
        g.write(DATA[size:])
    e2 = engine.stat(bucket, "crash.bin")
    assert e2.complete and stream_bytes(engine, bucket, "crash.bin") == DATA


def test_mounting_over_a_stale_mount_is_reported_clearly(mounter, bucket, tmp_path):
    """After a daemon crash the mount point answers ENOTCONN. Mounting there again must
    either work (cleaning up the stale mount) or say what is wrong and what to do."""
    m = mounter(bucket)
    kill9(m)
    r = subprocess.run([*helper_cmd(), bucket, str(m.path), "-o", mounter.options(staging=tmp_path / "st2")],
                       env=mounter.env, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in r.stderr
    if r.returncode == 0:
        from tests.fs_fixtures import Mount
        mounter.mounts.append(Mount(m.path, tmp_path / "remount.log", bucket))
        os.listdir(m.path)  # a live mount again
    else:
        msg = r.stderr.strip().splitlines()[-1]
        assert "stale" in msg.lower() and "umount" in msg, msg


# ---- unmount while a reader is blocked in live follow -------------------------------------------------

def test_unmount_while_a_reader_is_blocked_in_live_follow(mounter, engine, bucket):
    w = engine.open_writer(bucket, "live.log")
    try:
        w.write(b"first\n")
        w.flush()
        m = mounter(bucket, follow_timeout="60")
        cat = subprocess.Popen(["cat", str(m / "live.log")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert cat.stdout.readline() == b"first\n"  # now blocked at the end, following
        pids = m.daemon_pids()
        # A plain umount refuses at once (the file is open), and the reader is not disturbed.
        t0 = time.monotonic()
        r = subprocess.run(["umount", str(m.path)], capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "busy" in r.stderr.lower(), r
        assert time.monotonic() - t0 < 10 and cat.poll() is None
        w.write(b"second\n")
        w.flush()
        assert cat.stdout.readline() == b"second\n"
        # SIGTERM (systemd stop, shutdown): the blocked read returns, the daemon exits and
        # the mount point is left clean, not stale.
        t0 = time.monotonic()
        os.kill(pids[0], signal.SIGTERM)
        cat.wait(30)
        print(f"reader returned {time.monotonic() - t0:.1f}s after SIGTERM, status {cat.returncode}, "
              f"{cat.stderr.read()!r}")
        assert time.monotonic() - t0 < 20
        assert wait_gone(pids, 30)
        assert not m.mounted()
        os.listdir(m.path)  # an ordinary empty directory again, not ENOTCONN
    finally:
        w.close()


# ---- memory bound and ENOMEM -----------------------------------------------------------------------------

def test_many_handles_stay_within_the_memory_bound_and_max_writers_refuses_nobody(mounter, engine, bucket):
    size = 12 * SEGM
    with engine.open_writer(bucket, "big.bin") as w:
        w.write(blob(size, 62))
    m = mounter(bucket, max_writers="2", direct_io=True, read_ahead="2M", cache_size="2M", prefetch="2")
    proc = psutil.Process(m.daemon_pids()[0])
    w1 = open(m / "w1", "wb", buffering=0)
    w2 = open(m / "w2", "wb", buffering=0)
    try:
        w1.write(b"1" * 1000)
        w2.write(b"2" * 1000)
        with open(m / "w3", "wb") as w3:  # max_writers is deprecated and refuses nobody
            w3.write(b"3")
        base = proc.memory_info().rss
        peak = [base]
        readers = [open(m / "big.bin", "rb", buffering=0) for _ in range(8)]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.05)
        t = threading.Thread(target=sample)
        t.start()
        try:
            # Interleaved sequential reads: all eight handles are live at once.
            for off in range(0, size, 512 * 1024):
                for r in readers:
                    assert len(os.pread(r.fileno(), 512 * 1024, off)) == 512 * 1024
        finally:
            stop.set()
            t.join()
            for r in readers:
                r.close()
        grew = (peak[0] - base) / MiB
        print(f"daemon RSS grew {grew:.1f} MiB with 8 readers")
        # Per reader at most read_ahead + cache_size + one segment (5 MiB) and a little
        # bookkeeping; a reader that kept what it read would add 12 MiB each (96 MiB).
        assert grew < 8 * 5 + 16, grew
    finally:
        w1.close()
        w2.close()
    assert engine.stat(bucket, "w1").complete and engine.stat(bucket, "w2").complete


# ---- a full staging disk ---------------------------------------------------------------------------------

def test_full_staging_disk_gives_enospc_and_the_mount_stays_usable(mounter, engine, bucket, tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(tiny)], capture_output=True)
    assert r.returncode == 0, r.stderr
    try:
        m = mounter(bucket, staging=str(tiny), segment_size="2M")
        with pytest.raises(OSError) as e:
            write_file(m / "full.bin", blob(3 * MiB, 63))
        assert e.value.errno == errno.ENOSPC
        ent = engine.stat(bucket, "full.bin")
        assert ent is None or not ent.complete
        assert "full" in m.log_text()
        # Nothing else is damaged: a small file still goes through the same mount.
        (m / "small.bin").write_bytes(b"fits")
        assert stream_bytes(engine, bucket, "small.bin") == b"fits"
        assert wait_for(lambda: not os.listdir(tiny), 10), os.listdir(tiny)
    finally:
        mounter.close()
        subprocess.run(["umount", "-l", str(tiny)], capture_output=True)


# ---- the server killed and restarted mid-write -------------------------------------------------------------

def test_mount_write_across_a_server_crash_continues_or_fails_cleanly(own_server, s3_env, tmp_path):
    from tests.fs_fixtures import Mounter

    env = own_env(own_server, s3_env)
    store = own_store(own_server)
    bkt = unique_name("crashmnt")
    store.create_bucket(bkt)
    mnt = Mounter(tmp_path, env, own_server.endpoint)
    try:
        m = mnt(bkt)
        err = None
        f = open(m / "x.bin", "wb", buffering=0)
        try:
            f.write(DATA[:SEGM + 10])
            own_server.kill()
            f.write(DATA[SEGM + 10:3 * SEGM])  # segments sealed while the server is down
            time.sleep(1)
            own_server.start()
            f.write(DATA[3 * SEGM:])
        except OSError as e:
            err = e
        finally:
            try:
                f.close()
            except OSError as e:
                err = err or e
        eng = Engine(store, TransferConfig(segment_size=SEGM))
        ent = eng.stat(bkt, "x.bin")
        print(f"mount write across a server crash: {err!r}; complete={ent and ent.complete}")
        if err is None:
            assert ent.complete and stream_bytes(eng, bkt, "x.bin") == DATA
        else:
            assert err.errno in (errno.EIO, errno.EHOSTUNREACH), err
            assert ent is None or not ent.complete
    finally:
        mnt.close()
