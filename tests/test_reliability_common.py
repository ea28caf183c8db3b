"""Shared helpers of the reliability suite (tests/test_reliability_*.py); holds no tests.

The reliability tests run the real CLI (``python -m s3pipefs``) as a subprocess against
the session SeaweedFS, usually through the fault proxy (tests/faultproxy.py), and judge
the outcome from outside: exit status, stderr, the bytes a fresh ``cat`` returns, and the
manifest read straight from S3. See docs/reliability.md for the matrix they fill in.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import pytest

from s3pipefs import manifest as mf

# Small segments: a handful of segments per stream keeps each cell fast, and a fault on
# "segment 2" always lands mid-stream.
SEG = 64 * 1024


def blob(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def seg_key(i: int) -> str:
    return mf.segment_name(i)


class Result:
    """A finished CLI run: returncode, stdout, stderr (bytes), elapsed seconds."""

    def __init__(self, cp: subprocess.CompletedProcess, elapsed: float):
        self.returncode, self.stdout, self.stderr = cp.returncode, cp.stdout, cp.stderr
        self.elapsed = elapsed

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")

    def last_line(self) -> str:
        """The final stderr line, after checking there is no traceback."""
        assert "Traceback" not in self.err, self.err
        lines = [line for line in self.err.splitlines() if line.strip()]
        assert lines, "no message on stderr"
        return lines[-1]

    def __repr__(self) -> str:
        return f"<rc={self.returncode} {self.elapsed:.1f}s stderr={self.err[-800:]!r}>"


def run(env: dict, *args: str, input: bytes | None = None, timeout: float = 120, **kw) -> Result:
    """``python -m s3pipefs ARGS`` with ``env``; never hangs the suite past ``timeout``."""
    t = time.monotonic()
    cp = subprocess.run([sys.executable, "-m", "s3pipefs", *args], input=input, env=env,
                        capture_output=True, timeout=timeout, **kw)
    return Result(cp, time.monotonic() - t)


def spawn(env: dict, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "s3pipefs", *args], env=env, **kw)


def manifest_of(store, bucket: str, key: str) -> mf.Manifest | None:
    """The stream's manifest as it is in S3 right now (None: no manifest)."""
    info = store.head(bucket, f"{key}/.manifest")
    if info is None:
        return None
    return mf.parse(store.get(bucket, f"{key}/.manifest")[0])


def info_json(env: dict, url: str) -> dict:
    r = run(env, "info", "--json", url)
    assert r.returncode == 0, r
    return json.loads(r.stdout)


def slow_feeder(data_path, first: int, pause: float = 60.0, chunk: int = 16 * 1024,
                delay: float = 0.0) -> list[str]:
    """argv of a process that writes the file's first ``first`` bytes (``chunk`` at a time,
    ``delay`` apart), then the rest only after ``pause`` seconds (so a test can kill the
    writer mid-stream, or let it finish)."""
    code = (
        "import sys,time\n"
        f"d=open({str(data_path)!r},'rb').read()\n"
        "o=sys.stdout.buffer\n"
        f"for i in range(0,{first},{chunk}):\n"
        f"    o.write(d[i:min(i+{chunk},{first})]); o.flush(); time.sleep({delay})\n"
        f"time.sleep({pause})\n"
        f"o.write(d[{first}:]); o.flush()\n"
    )
    return [sys.executable, "-c", code]


def wait_until(pred, timeout: float, interval: float = 0.1, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def segments_in_manifest(store, bucket: str, key: str) -> int:
    m = manifest_of(store, bucket, key)
    return m.num_segments if m else 0


def no_secret(secret: str, *texts) -> None:
    """Assert the secret (and its obvious encodings) appear in none of the texts."""
    import base64

    needles = {secret, secret.encode().hex()} if isinstance(secret, str) else {secret}
    if isinstance(secret, bytes):
        needles = {secret.hex(), base64.b64encode(secret).decode(), repr(secret)[2:-1]}
    for t in texts:
        s = t.decode(errors="replace") if isinstance(t, bytes) else str(t)
        for n in needles:
            assert n not in s, f"secret leaked: {n[:6]}… found in {s[:200]!r}"


def environ_without_aws() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}



_BATCH = r"""
import contextlib, io, json, os, sys, tempfile, time, traceback
from s3pipefs.cli import main
jobs = json.load(open(sys.argv[1]))
results = []
for argv, data in jobs:
    with tempfile.TemporaryFile() as fin, tempfile.TemporaryFile() as fout:
        fin.write(data.encode("latin-1")); fin.flush(); fin.seek(0)
        keep_in, keep_out = os.dup(0), os.dup(1)
        os.dup2(fin.fileno(), 0); os.dup2(fout.fileno(), 1)
        err = io.StringIO()
        t = time.monotonic()
        with contextlib.redirect_stderr(err):
            try:
                rc = main(list(argv))
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
            except BaseException:
                err.write(traceback.format_exc())
                rc = -1
            sys.stdout.flush()
        elapsed = time.monotonic() - t
        os.dup2(keep_in, 0); os.dup2(keep_out, 1); os.close(keep_in); os.close(keep_out)
        fout.seek(0)
        results.append({"rc": rc, "stderr": err.getvalue(), "stdout": fout.read().decode("latin-1"),
                        "elapsed": elapsed})
json.dump(results, open(sys.argv[2], "w"))
"""


class BatchResult(Result):
    def __init__(self, d: dict):
        self.returncode, self.elapsed = d["rc"], d["elapsed"]
        self.stdout, self.stderr = d["stdout"].encode("latin-1"), d["stderr"].encode()


def run_batch(env: dict, jobs: list, tmp_path, timeout: float = 180) -> list[Result]:
    """Many CLI runs in one child interpreter (``cli.main(argv)`` each, stdin from the
    job's bytes, stdout and stderr captured per run): the same code paths as separate
    processes, without paying Python and boto3 start-up for every cell. ``jobs`` holds
    ``(argv, input_bytes)`` pairs."""
    import json as _json

    jf, rf = tmp_path / "batch-jobs.json", tmp_path / "batch-results.json"
    jf.write_text(_json.dumps([[list(a), (d or b"").decode("latin-1")] for a, d in jobs]))
    cp = subprocess.run([sys.executable, "-c", _BATCH, str(jf), str(rf)], env=env, capture_output=True,
                        timeout=timeout)
    assert cp.returncode == 0, cp.stderr.decode()[-2000:]
    return [BatchResult(d) for d in _json.loads(rf.read_text())]


@pytest.fixture
def own_server(crash_server):
    """A SeaweedFS apart from the session's, to kill and restart without disturbing any
    other test (tests/conftest.py ``crash_server``, shared by the crash tests: each makes
    buckets of its own, ``unique_name``). It uses the session's keys: Store() in this
    process takes its credentials from the environment the session fixture set up."""
    crash_server.start()  # up again if an earlier test failed between its kill and start
    return crash_server


def own_env(srv, base_env: dict) -> dict:
    env = {k: v for k, v in base_env.items() if not k.startswith("AWS_")}
    env.update(srv.env())
    return env


def own_store(srv):
    from s3pipefs.config import S3Config
    from s3pipefs.s3 import Store

    return Store(S3Config(endpoint_url=srv.endpoint))
