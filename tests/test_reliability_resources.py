"""Resource limits of the pipe face: many readers of one live stream (fan-out), and a
full staging disk for `cp` (the `put` case is in test_cli_errors.py, memory bounds of
`put` in test_streams.py, the mount's limits in test_reliability_mount.py)."""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
import subprocess

import pytest

from s3pipefs.config import MiB, S3Config, TransferConfig
from s3pipefs.engine import Engine
from s3pipefs.s3 import Store
from tests.test_reliability_common import SEG, blob, manifest_of, run, slow_feeder, spawn, wait_until


def test_fan_out_many_readers_of_one_live_stream(s3_server, s3_env, store, bucket, tmp_path):
    """One writer, five `cat` processes and sixteen in-process readers all following the
    same growing stream: every one of them gets exactly the writer's bytes."""
    data = blob(10 * SEG + 77, 51)
    src = tmp_path / "src"
    src.write_bytes(data)
    url = f"s3://{bucket}/live"
    feed = subprocess.Popen(slow_feeder(src, len(data), pause=0, chunk=SEG // 2, delay=0.1), stdout=subprocess.PIPE)
    writer = spawn(s3_env, "put", "--segment-size", str(SEG), url, stdin=feed.stdout, stderr=subprocess.PIPE)
    feed.stdout.close()
    wait_until(lambda: manifest_of(store, bucket, "live") is not None, 30, what="the stream")
    cats = [spawn(s3_env, "cat", "--follow-timeout", "30", url, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(5)]
    eng = Engine(Store(S3Config(endpoint_url=s3_server.endpoint)),
                 TransferConfig(segment_size=SEG, workers=2, poll_interval=0.1, follow_timeout=30))

    def follow(_):
        with eng.open_reader(bucket, "live") as r:
            return hashlib.sha256(b"".join(bytes(c) for c in r.chunks())).hexdigest()

    with cf.ThreadPoolExecutor(16) as pool:
        digests = list(pool.map(follow, range(16)))
    outs = [c.communicate(timeout=120) for c in cats]
    assert writer.wait(60) == 0, writer.stderr.read()
    want = hashlib.sha256(data).hexdigest()
    assert digests == [want] * 16
    for c, (out, err) in zip(cats, outs):
        assert c.returncode == 0, err
        assert out == data


def test_cp_with_a_full_staging_disk_fails_clearly_and_damages_nothing(s3_env, store, bucket, tmp_path, tiny_tmpfs):
    old = blob(SEG + 5, 53)
    url = f"s3://{bucket}/s"
    assert run(s3_env, "put", url, input=old).returncode == 0
    src = tmp_path / "in"
    src.write_bytes(blob(3 * MiB, 54))
    r = run(s3_env, "--segment-size", "2M", "--staging", str(tiny_tmpfs), "cp", str(src), url)
    assert r.returncode == 1, r
    assert "is full" in r.last_line() and str(tiny_tmpfs) in r.last_line()
    # The complete stream it was replacing is still there and whole; staging is cleaned up.
    m = manifest_of(store, bucket, "s")
    assert m.completed and m.total_size == len(old)
    assert run(s3_env, "cat", url).stdout == old
    assert not os.listdir(tiny_tmpfs)


def test_a_staged_segment_damaged_on_disk_never_lands(store, bucket, monkeypatch):
    """The segment CRC is taken from the data as it arrives, not from the staging file, so
    a byte that changes on the staging disk makes the server refuse the upload (BadDigest)
    instead of storing it with a matching checksum."""
    from s3pipefs import errors
    from s3pipefs.engine import staging

    real_seal = staging.StagedFile.seal

    def seal_then_rot(self):
        real_seal(self)
        if self.path.endswith("000000000000002"):
            with open(self.path, "r+b") as f:
                f.seek(100)
                b = f.read(1)
                f.seek(100)
                f.write(bytes([b[0] ^ 0x40]))

    monkeypatch.setattr(staging.StagedFile, "seal", seal_then_rot)
    cfg = TransferConfig(segment_size=64 * 1024, workers=2, tries=2)
    w = Engine(store, cfg).open_writer(bucket, "rot")
    with pytest.raises(errors.IntegrityError):
        w.write(os.urandom(5 * 64 * 1024))
        w.close()
    w.abort()
    keys = [o.key for o in store.list(bucket, "rot/")]
    assert "rot/000000000000002" not in keys
    assert "completed = true" not in store.get(bucket, "rot/.manifest")[0].decode().lower()
