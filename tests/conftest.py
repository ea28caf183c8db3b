"""Shared fixtures: one real S3 server (SeaweedFS) per test session, and helpers around it.

* ``s3_server`` (session): a started ``LocalServer`` in a temp dir. If it cannot start
  the run *fails* with weed's log tail: a machine that cannot run the server must never
  pass by skipping. Its AWS_* variables are put in ``os.environ`` for the whole session
  (boto3's default chain, as Store uses it, then finds them in-process and subprocesses
  inherit them); AWS config/credentials files and profiles are masked so nothing from the
  developer's own AWS setup leaks into the tests.
* ``crash_server`` (session): a second server for the tests that crash one (``own_server``).
* ``s3_env``: a copy of that environment, for subprocesses.
* ``store``: a Store on the server; ``bucket``/``bucket2``: fresh, uniquely named buckets.
* ``cli``: runs ``python -m s3pipefs ARGS`` with ``s3_env``; returns a CompletedProcess
  with bytes stdout/stderr.
* ``make_bytes(n, seed)``: deterministic pseudo-random bytes (also importable:
  ``from tests.conftest import make_bytes``); ``unique_name(prefix)`` / ``run_id``.
"""
from __future__ import annotations

import gc
import hashlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid

import pytest

from s3pipefs.config import S3Config
from s3pipefs.errors import S3PipeError
from s3pipefs.server import LocalServer
from s3pipefs.s3 import Store

pytest_plugins = ["tests.faultfixtures", "tests.fs_fixtures"]

# Variables that would send boto3 somewhere else or with other credentials.
_MASKED = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
           "AWS_ENDPOINT_URL_S3", "AWS_CA_BUNDLE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")

_RUN = uuid.uuid4().hex[:6]
_counter = itertools.count(1)


def make_bytes(n: int, seed: int | str = 0) -> bytes:
    """n deterministic pseudo-random bytes (~400 MB/s; no block ever repeats)."""
    return hashlib.shake_128(f"s3pipefs-test:{seed}".encode()).digest(n) if n > 0 else b""


def unique_name(prefix: str = "t") -> str:
    """A name unique in this run and across runs, valid as an S3 bucket name (<= 63)."""
    prefix = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:40] or "t"
    return f"{prefix}-{_RUN}-{next(_counter)}"


def pytest_collection_finish(session):
    """What is alive once the tests are collected (modules, botocore, the test items) lives
    to the end of the run: keep it out of the garbage collector's full passes, which would
    walk all of it again every few tests."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session", autouse=True)
def children_take_ctrl_c():
    """A suite started in the background (``make test &``) inherits SIGINT ignored, and so
    would every child it starts; the tests that press Ctrl-C on a child need it delivered.
    A handler (unlike "ignored") is reset to the default in a child at exec."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("s3server")
    saved = dict(os.environ)
    # Credentials are given explicitly so a developer's AWS_* keys are never adopted.
    server = LocalServer(str(data_dir), access_key="S3PIPEFSTESTKEY00001",
                         secret_key=f"test-secret-{uuid.uuid4().hex}")
    try:
        server.start(timeout=90)
    except S3PipeError as e:
        server.stop()
        pytest.fail(f"the local S3 server for the tests did not start: {e}", pytrace=False)
    for k in _MASKED:
        os.environ.pop(k, None)
    nowhere = str(data_dir / "no-aws-config")
    os.environ.update(server.env(), AWS_CONFIG_FILE=nowhere, AWS_SHARED_CREDENTIALS_FILE=nowhere,
                      # every test process reads botocore's models through one fresh cache
                      S3PIPEFS_CACHE_DIR=str(data_dir / "cache"))
    try:
        yield server
    finally:
        # No grace: weed's graceful stop waits seconds on gRPC streams, for data thrown away below.
        server.stop(grace=0)
        os.environ.clear()
        os.environ.update(saved)
        # The data can be gigabytes and pytest keeps the last three runs' temp dirs; the
        # log stays for post-mortems.
        shutil.rmtree(data_dir / "weed", ignore_errors=True)


@pytest.fixture(scope="session")
def crash_server(s3_server, tmp_path_factory):
    """A second SeaweedFS, shared by the tests that kill and restart a server mid-run, so
    that the session server is never disturbed. Same keys as the session server (Store()
    in this process takes them from the environment); each test uses buckets of its own.
    Tests take it through ``own_server`` (tests/test_reliability_common.py)."""
    srv = LocalServer(str(tmp_path_factory.mktemp("crash-srv")), access_key=os.environ["AWS_ACCESS_KEY_ID"],
                      secret_key=os.environ["AWS_SECRET_ACCESS_KEY"])
    srv.start()
    yield srv
    srv.stop(grace=0)


@pytest.fixture
def s3_env(s3_server) -> dict[str, str]:
    env = dict(os.environ)
    env.update(s3_server.env())
    return env


@pytest.fixture
def store(s3_server) -> Store:
    return Store(S3Config(endpoint_url=s3_server.endpoint))


def _new_bucket(store: Store, request) -> str:
    name = unique_name(request.node.name)
    store.create_bucket(name)
    return name


@pytest.fixture
def bucket(store, request) -> str:
    return _new_bucket(store, request)


@pytest.fixture
def bucket2(store, request) -> str:
    return _new_bucket(store, request)


@pytest.fixture
def run_id() -> str:
    """A short id unique to this test (for key names, temp names...)."""
    return unique_name("r").split("-", 1)[1]


@pytest.fixture(name="make_bytes")
def make_bytes_fixture():
    return make_bytes


@pytest.fixture
def cli(s3_env):
    """run(*args, input=None, env=None, timeout=120, check=False, cwd=None) -> CompletedProcess."""

    def run(*args, input: bytes | None = None, env: dict | None = None, timeout: float = 120,
            check: bool = False, cwd=None) -> subprocess.CompletedProcess:
        e = dict(s3_env)
        e.update(env or {})
        stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        r = subprocess.run([sys.executable, "-m", "s3pipefs", *map(str, args)], **stdin,
                           capture_output=True, env=e, timeout=timeout, cwd=cwd)
        if check and r.returncode != 0:
            raise AssertionError(f"s3pipefs {' '.join(map(str, args))} exited {r.returncode}: "
                                 f"{r.stderr.decode(errors='replace').strip()}")
        return r

    return run


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MiB tmpfs: a staging disk that fills up (full-disk tests). Fails, never skips."""
    d = tmp_path / "tiny"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(d)], capture_output=True)
    assert r.returncode == 0, f"cannot mount a tmpfs for the full-disk test: {r.stderr!r}"
    yield d
    subprocess.run(["umount", "-l", str(d)])


def run_cli(s3_server, *args, endpoint: str | None = None, input: bytes | None = None, env: dict | None = None):
    """Run `python -m s3pipefs ARGS` against ``s3_server`` (or ``endpoint``, e.g. a fault proxy)."""
    e = dict(s3_server.env())
    if endpoint:
        e["AWS_ENDPOINT_URL"] = endpoint
        e.pop("AWS_ENDPOINT_URL_S3", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "s3pipefs", *args], input=input, env=e,
                          capture_output=True, timeout=300)
