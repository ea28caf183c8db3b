"""Streams end to end on a real SeaweedFS: put/cat round trips, the on-S3 layout, s3pipe2
compatibility, live follow across processes, resume, append and the one-writer rule."""
import configparser
import hashlib
import json
import os
import random
import subprocess
import sys
import time

import pytest

from s3pipefs import errors, manifest as mf
from s3pipefs.config import KiB, S3Config, TransferConfig
from s3pipefs.engine import Engine
from s3pipefs.s3 import Store

SEG = 64 * KiB  # small segments: many-segment cases stay fast


def blob(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def engine(s3_server, tmp_path):
    store = Store(S3Config(endpoint_url=s3_server.endpoint))
    cfg = TransferConfig(segment_size=SEG, workers=4, staging_dir=str(tmp_path / "staging"),
                         poll_interval=0.1, follow_timeout=5, heartbeat_interval=1)
    return Engine(store, cfg)


def put(cli, url, data, *extra):
    r = cli("put", "--segment-size", str(SEG), *extra, url, input=data)
    assert r.returncode == 0, r.stderr
    return r


def cat(cli, url, *extra):
    r = cli("cat", *extra, url)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 7 * SEG + 123])
def test_cli_round_trip(cli, bucket, size):
    data = blob(size, size)
    put(cli, f"s3://{bucket}/dir/s{size}", data)
    assert cat(cli, f"s3://{bucket}/dir/s{size}") == data


def test_layout_on_s3_is_the_public_contract(cli, bucket, store, tmp_path):
    data = blob(3 * SEG + 10)
    put(cli, f"s3://{bucket}/backups/db.dump", data)
    keys = sorted(o.key for o in store.list(bucket, "backups/db.dump/"))
    assert keys == ["backups/db.dump/.manifest"] + [f"backups/db.dump/{i:015d}" for i in range(1, 5)]
    # Reassemble without s3pipefs: download the prefix, `cat 0*`.
    out = tmp_path / "dl"
    out.mkdir()
    for k in keys:
        (out / k.rsplit("/", 1)[1]).write_bytes(store.get(bucket, k)[0])
    joined = subprocess.run("cat 0*", shell=True, cwd=out, capture_output=True, check=True).stdout
    assert joined == data
    m = mf.parse((out / ".manifest").read_bytes())
    assert m.completed and m.num_segments == 4 and m.total_size == len(data)
    assert m.sha256 == hashlib.sha256(data).hexdigest()


def test_stream_is_readable_by_s3pipe2_rules(cli, bucket, store):
    """s3pipe2 reads num_segments from the manifest, fetches 1..n and checks each ETag as MD5."""
    data = blob(2 * SEG + 5, 7)
    put(cli, f"s3://{bucket}/x", data)
    cp = configparser.RawConfigParser()
    cp.read_string(store.get(bucket, "x/.manifest")[0].decode())
    assert cp.getboolean("s3pipe2", "completed")
    out = b""
    for i in range(1, cp.getint("s3pipe2", "num_segments") + 1):
        body, info = store.get(bucket, f"x/{i:015d}")
        assert info.etag.strip('"') == hashlib.md5(body).hexdigest()
        out += body
    assert out == data and int(cp.get("s3pipe2", "total_size")) == len(data)


def write_s3pipe2_stream(store, bucket, key, chunks, completed=True, manifest_segments=None):
    """A stream exactly as s3pipe2 writes it: variable-size segments (short pipe reads)."""
    for i, c in enumerate(chunks, 1):
        store.put(bucket, f"{key}/{i:015d}", c)
    cp = configparser.RawConfigParser()
    cp.add_section("s3pipe2")
    cp.set("s3pipe2", "version", "0.1")
    cp.set("s3pipe2", "segment_size", "100")
    cp.set("s3pipe2", "upload_began", "2015-06-01T10:00:00.000001")
    cp.set("s3pipe2", "completed", "true" if completed else "false")
    cp.set("s3pipe2", "num_segments", str(manifest_segments or len(chunks)))
    cp.set("s3pipe2", "total_size", str(sum(map(len, chunks))))
    if completed:
        cp.set("s3pipe2", "upload_ended", "2015-06-01T10:05:00.000001")
    import io
    buf = io.StringIO()
    cp.write(buf)
    store.put(bucket, f"{key}/.manifest", buf.getvalue().encode())


def test_s3pipe2_stream_reads(cli, bucket, store, engine):
    chunks = [blob(100_000, 1), blob(4_000, 2), blob(99_999, 3), b""]  # last: s3pipe2's empty EOF segment
    write_s3pipe2_stream(store, bucket, "legacy/dump", chunks)
    want = b"".join(chunks)
    assert cat(cli, f"s3://{bucket}/legacy/dump") == want
    with engine.open_reader(bucket, "legacy/dump") as r:  # random access across odd sizes
        assert r.size == len(want)
        assert r.read(99_990, 20) == want[99_990:100_010]
        assert r.read(len(want) - 3, 100) == want[-3:]
    r = cli("verify", f"s3://{bucket}/legacy/dump")
    assert r.returncode == 0, r.stdout + r.stderr


def test_corrupt_s3pipe2_segment_is_detected(cli, bucket, store):
    """An s3pipe2 segment whose bytes no longer match its ETag is never handed out."""
    write_s3pipe2_stream(store, bucket, "legacy/bad", [blob(1000, 1), blob(1000, 2)])
    # Overwrite segment 2 with a wrong body carrying a forged md5 metadata? No: S3 computes
    # ETags itself, so corruption "at rest" is simulated by a stream whose manifest names a
    # segment of another size.
    store.put(bucket, "legacy/bad/000000000000002", blob(999, 9))
    r = cli("cat", f"s3://{bucket}/legacy/bad")
    assert r.returncode == 1
    assert b"manifest says" in r.stderr or b"bytes" in r.stderr


def test_random_access_reads_only_what_it_needs(engine, bucket):
    data = blob(20 * SEG, 3)
    with engine.open_writer(bucket, "ra") as w:
        w.write(data)
    with engine.open_reader(bucket, "ra") as r:
        for off in (19 * SEG + 7, 0, 5 * SEG - 3, 11 * SEG):
            assert r.read(off, 10) == data[off:off + 10]
        assert r.read(len(data) - 1, 100) == data[-1:]
        assert r.read(len(data), 100) == b""
        # Random reads must not prefetch the whole stream.
        assert len(r._cache) + len(r._futs) < 20


def test_live_follow_across_processes(s3_env, bucket, tmp_path):
    """The reader starts before the writer finishes and gets identical bytes."""
    data = blob(12 * SEG + 17, 11)
    src = tmp_path / "src"
    src.write_bytes(data)
    feeder = (f"import sys,time\nd=open({str(src)!r},'rb').read()\n"
              f"for i in range(0,len(d),{SEG // 2}):\n"
              f"    sys.stdout.buffer.write(d[i:i+{SEG // 2}]); sys.stdout.flush(); time.sleep(0.15)\n")
    url = f"s3://{bucket}/live"
    feed = subprocess.Popen([sys.executable, "-c", feeder], stdout=subprocess.PIPE)
    writer = subprocess.Popen([sys.executable, "-m", "s3pipefs", "put", "--segment-size", str(SEG), url],
                              stdin=feed.stdout, env=s3_env, stderr=subprocess.PIPE)
    feed.stdout.close()
    deadline = time.time() + 30
    while subprocess.run([sys.executable, "-m", "s3pipefs", "info", url], env=s3_env,
                         capture_output=True).returncode != 0:
        assert time.time() < deadline
        time.sleep(0.1)
    reader = subprocess.run([sys.executable, "-m", "s3pipefs", "cat", url], env=s3_env,
                            capture_output=True, timeout=120)
    assert writer.wait(60) == 0, writer.stderr.read()
    assert feed.wait(10) == 0
    assert reader.returncode == 0, reader.stderr
    assert reader.stdout == data


def test_follow_gives_up_on_a_dead_writer(cli, bucket, engine):
    w = engine.open_writer(bucket, "dead")
    w.write(blob(3 * SEG))
    w.flush()
    # Simulate a crash: the process is gone, its heartbeat just stops.
    w._stop_manifest.set()
    w._budget.shutdown()  # its upload pool
    t = time.monotonic()
    r = cli("cat", "--follow-timeout", "2", f"s3://{bucket}/dead")
    assert r.returncode == 1
    assert len(r.stdout) == 3 * SEG  # everything that was durable came out first
    assert b"incomplete" in r.stderr and r.stderr.count(b"\n") == 1
    assert time.monotonic() - t < 30


def test_aborted_writer_stops_followers_at_once(cli, bucket, engine):
    w = engine.open_writer(bucket, "aborted")
    w.write(blob(SEG + 5))
    w.flush()
    w.abort()
    r = cli("cat", "--follow-timeout", "60", f"s3://{bucket}/aborted")
    assert r.returncode == 1 and b"stopped without completing" in r.stderr
    assert r.stdout == blob(SEG + 5)[:SEG + 5]
    info = cli("info", f"s3://{bucket}/aborted")
    assert b"INCOMPLETE" in info.stdout


def test_second_writer_is_refused(engine, bucket, cli):
    w = engine.open_writer(bucket, "busy")
    w.write(b"x" * 10)
    try:
        r = cli("put", f"s3://{bucket}/busy", input=b"other")
        assert r.returncode == 1 and b"another writer" in r.stderr
        with pytest.raises(errors.Busy):
            engine.open_writer(bucket, "busy", mode="append")
    finally:
        w.close()
    assert cat(cli, f"s3://{bucket}/busy") == b"x" * 10


@pytest.mark.parametrize("size", [0, 5000, 3 * SEG])
def test_close_does_not_wait_out_the_manifest_loop(engine, bucket, monkeypatch, size):
    # The manifest thread sleeps on a condition between updates; close must wake it. It
    # once waited out that interval on every small file, which doubled an rsync into a mount.
    from s3pipefs.engine import writer
    monkeypatch.setattr(writer, "MIN_MANIFEST_INTERVAL", 30.0)
    w = engine.open_writer(bucket, f"quick{size}", "create")
    w.write(blob(size, 4))
    t = time.monotonic()
    w.close()
    assert time.monotonic() - t < 10
    assert engine.stat(bucket, f"quick{size}").complete


def test_append(cli, bucket):
    a, b = blob(SEG + 3, 1), blob(2 * SEG + 9, 2)
    put(cli, f"s3://{bucket}/ap", a)
    put(cli, f"s3://{bucket}/ap", b, "--append")
    assert cat(cli, f"s3://{bucket}/ap") == a + b
    r = cli("verify", f"s3://{bucket}/ap")
    assert r.returncode == 0, r.stdout


def test_overwrite_replaces_only_on_completion(engine, bucket, cli):
    old, new = blob(3 * SEG, 1), blob(SEG + 1, 2)
    put(cli, f"s3://{bucket}/ow", old)
    w = engine.open_writer(bucket, "ow")
    w.write(new)
    w.flush()
    assert cat(cli, f"s3://{bucket}/ow") == old  # still the old, complete stream
    w.close()
    assert cat(cli, f"s3://{bucket}/ow") == new
    keys = [o.key for o in engine.store.list(bucket, "ow/")]
    assert sorted(keys) == ["ow/.manifest", "ow/000000000000001", "ow/000000000000002"]


def test_failed_replacement_keeps_the_old_stream(engine, bucket, cli):
    old = blob(2 * SEG, 5)
    put(cli, f"s3://{bucket}/keep", old)
    w = engine.open_writer(bucket, "keep")
    w.write(blob(SEG * 2, 6))
    w.abort()
    assert cat(cli, f"s3://{bucket}/keep") == old
    assert not [o.key for o in engine.store.list(bucket, "keep/.next-")]


def test_resume_after_kill(s3_env, cli, bucket, tmp_path):
    data = blob(40 * SEG + 11, 21)
    src = tmp_path / "in"
    src.write_bytes(data)
    url = f"s3://{bucket}/res"
    # Feed half the data, then hang so the writer is mid-stream when it dies.
    feeder = (f"import sys,time\nd=open({str(src)!r},'rb').read()\n"
              f"sys.stdout.buffer.write(d[:{20 * SEG}]); sys.stdout.flush(); time.sleep(60)\n")
    feed = subprocess.Popen([sys.executable, "-c", feeder], stdout=subprocess.PIPE)
    w = subprocess.Popen([sys.executable, "-m", "s3pipefs", "put", "--segment-size", str(SEG), url],
                         stdin=feed.stdout, env=s3_env)
    feed.stdout.close()
    deadline = time.time() + 60
    while True:
        r = cli("info", "--json", url)
        if r.returncode == 0 and json.loads(r.stdout).get("segments", 0) >= 10:
            break
        assert time.time() < deadline, r.stdout + r.stderr
        time.sleep(0.2)
    w.kill()
    feed.kill()
    w.wait()
    r = cli("cat", "--no-follow", url)
    info = json.loads(cli("info", "--json", url).stdout)
    assert not info["completed"]
    assert data.startswith(r.stdout) and len(r.stdout) >= 10 * SEG  # what was verified stays readable
    # A different input is refused: its first segments don't match what is stored.
    bad = cli("put", "--resume", "--segment-size", str(SEG), url, input=blob(len(data), 99))
    assert bad.returncode == 1 and b"differs" in bad.stderr
    # The same input continues the stream to the right bytes. The killed writer's heartbeat
    # is still fresh, but its process is gone from this host, so the lease is free at once.
    put(cli, url, data, "--resume")
    assert cat(cli, url) == data
    assert cli("verify", url).returncode == 0


def test_memory_stays_bounded(s3_env, bucket, tmp_path):
    """Peak RSS of a 256 MiB put with small segments stays within the documented bound
    (which is below the input's size: a put that held its input, or a segment's worth per
    segment, would exceed it)."""
    import resource
    url = f"s3://{bucket}/big"
    cmd = [sys.executable, "-m", "s3pipefs", "put", "--segment-size", "1M", "--workers", "4",
           "--staging", str(tmp_path), url]
    gen = subprocess.Popen(["head", "-c", str(256 << 20), "/dev/zero"], stdout=subprocess.PIPE)
    p = subprocess.Popen(cmd, stdin=gen.stdout, env=s3_env, stderr=subprocess.PIPE)
    gen.stdout.close()
    # VmHWM is the peak RSS of the exec'd image; wait4's ru_maxrss would also count the
    # memory of this (large) pytest process that forked it.
    peak_kib = 0
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak_kib = max(peak_kib, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.05)
    assert p.wait() == 0, p.stderr.read()
    assert peak_kib > 10_000, "never sampled the process"
    peak_mib = peak_kib / 1024
    # docs/tuning.md: ~90 MiB interpreter + boto3, plus workers * ~4 MiB of request buffers.
    assert peak_mib < 90 + 4 * 4 + 30, peak_mib


# -- polling a live stream: conditional GETs, backing off while idle --------------------------------

def test_a_conditional_get_of_an_unchanged_object_is_a_bodiless_304(s3_server, bucket, fault_proxy):
    from s3pipefs.s3.inmemory import MemoryStore

    proxied = Store(S3Config(endpoint_url=fault_proxy.endpoint))
    memory = MemoryStore()
    memory.create_bucket(bucket)
    for store in (proxied, memory):
        etag = store.put(bucket, "m", b"manifest body")
        retries = store.stats.retries
        for given in (etag, f'"{etag}"'):
            with pytest.raises(errors.NotModified):
                store.get(bucket, "m", if_none_match=given)
        assert store.stats.retries == retries  # an answer, not a failure: never retried
        data, info = store.get(bucket, "m", if_none_match="0" * 32)
        assert data == b"manifest body" and info.etag == etag
        store.put(bucket, "m", b"changed")
        assert store.get(bucket, "m", if_none_match=etag)[0] == b"changed"
    # SeaweedFS itself answered 304, with no body.
    conditional = [s for s in fault_proxy.requests if s.method == "GET" and "if-none-match" in s.headers]
    assert [s.status for s in conditional] == [304, 304, 200, 200]
    assert [s.bytes_out for s in conditional[:2]] == [0, 0]


def test_an_idle_follower_backs_off_and_still_sees_a_new_segment_within_a_second(
        s3_server, bucket, fault_proxy, tmp_path):
    """Polling every 0.1 s for 4 idle seconds would be 40 manifest GETs; backing off to
    poll_max (0.8 s) it is a handful, each a 304, and a new segment is still read within
    about poll_max of landing."""
    direct = Store(S3Config(endpoint_url=s3_server.endpoint))
    wcfg = TransferConfig(segment_size=SEG, workers=2, staging_dir=str(tmp_path / "staging"),
                          heartbeat_interval=60, flush_interval=0)
    w = Engine(direct, wcfg).open_writer(bucket, "idle")
    first, second = blob(SEG, 1), blob(SEG, 2)
    w.write(first)
    w.flush()
    rcfg = TransferConfig(workers=2, poll_interval=0.1, poll_max=0.8, follow_timeout=30)
    reader = Engine(Store(S3Config(endpoint_url=fault_proxy.endpoint)), rcfg).open_reader(bucket, "idle")
    got, seen_at = [], []
    try:
        assert reader.read(0, SEG) == first

        def follow():
            got.append(reader.read(SEG, SEG))
            seen_at.append(time.monotonic())
        import threading
        t = threading.Thread(target=follow)
        fault_proxy.reset_log()
        t.start()
        time.sleep(4)
        polls = [s for s in fault_proxy.requests if s.path.endswith("/.manifest")]
        assert 3 <= len(polls) <= 12, len(polls)
        assert {s.status for s in polls if s.status is not None} == {304} and sum(s.bytes_out for s in polls) == 0
        w.write(second)
        w.flush()  # returns once the segment landed and the manifest names it
        landed = time.monotonic()
        t.join(10)
        assert got == [second]
        assert seen_at[0] - landed < 1.5, seen_at[0] - landed
    finally:
        reader.close()
        w.close()
