"""`s3pipefs status`: a running mount reports its open writers and readers and its request
counters on its private socket; the command finds it by mount point, or lists every mount."""
from __future__ import annotations

import json
import os
import stat

from s3pipefs import status


def test_status_of_a_mount_shows_its_writer_reader_and_counters(mounter, bucket, cli):
    m = mounter(bucket, segment_size="1M")
    (m / "done.bin").write_bytes(b"r" * 5000)
    reader = open(m / "done.bin", "rb")
    writer = open(m / "live.bin", "wb")
    try:
        writer.write(os.urandom(3 << 20 | 17))
        writer.flush()
        reader.read(10)
        r = cli("status", "--json", str(m))
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["mountpoint"] == str(m) and doc["source"] == bucket
        (w,) = doc["writers"]
        assert w["path"] == "/live.bin" and w["written"] == 3 << 20 | 17
        # Every byte is uploaded or staged here; the sealed segments are in S3 or on their way.
        assert w["uploaded"] + w["staged"] == w["written"] and w["segments_in_flight"] >= 0
        assert [rd["path"] for rd in doc["readers"]] == ["/done.bin"]
        c = doc["requests"]
        assert c["requests"] > 0 and c["throttles"] == 0 and c["gave_up"] == 0
        text = cli("status", str(m)).stdout.decode()
        assert "writing /live.bin" in text and "reading /done.bin" in text and "requests" in text
        listed = json.loads(cli("status", "--json").stdout)
        assert str(m) in [d["mountpoint"] for d in listed]
        assert str(m) in cli("status").stdout.decode()
    finally:
        writer.close()
        reader.close()
    # The socket is private: 0600 in a 0700 directory.
    path = status.socket_path(str(m))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    m.unmount()
    assert not os.path.exists(path)  # removed at unmount


def test_status_of_a_directory_that_is_no_mount_is_an_error(cli, tmp_path):
    r = cli("status", str(tmp_path))
    assert r.returncode == 1 and b"no running s3pipefs mount" in r.stderr
