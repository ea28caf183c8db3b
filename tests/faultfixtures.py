"""pytest fixtures that put a FaultProxy in front of the session S3 server.

Loaded from tests/conftest.py with `pytest_plugins = ["tests.faultfixtures"]`; they
need its `s3_server` fixture (an object with `.endpoint` and `.env()`).

    def test_writer_survives_503(fault_proxy, proxied_env):
        fault_proxy.add(Rule("status", method="PUT", path_contains="000000000000002"))
        subprocess.run(["s3pipefs", "put", ...], env=proxied_env, check=True)
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import pytest

from tests.faultproxy import FaultProxy, Rule, Seen  # noqa: F401  (re-exported for tests)


@contextlib.contextmanager
def fault_proxy_for(s3_server) -> Iterator[FaultProxy]:
    """A started proxy in front of `s3_server`, stopped on exit."""
    with FaultProxy(s3_server.endpoint) as proxy:
        yield proxy


def proxied_env_for(s3_server, proxy: FaultProxy) -> dict[str, str]:
    """`s3_server.env()` with every endpoint variable pointing at the proxy."""
    env = dict(s3_server.env())
    env["AWS_ENDPOINT_URL"] = proxy.endpoint
    # A service-specific endpoint would win over AWS_ENDPOINT_URL in botocore.
    if "AWS_ENDPOINT_URL_S3" in env:
        env["AWS_ENDPOINT_URL_S3"] = proxy.endpoint
    return env


@pytest.fixture
def fault_proxy(s3_server) -> Iterator[FaultProxy]:
    """A fresh proxy per test, so rules and counters never leak between tests."""
    with fault_proxy_for(s3_server) as proxy:
        yield proxy


@pytest.fixture
def proxied_env(s3_server, fault_proxy) -> dict[str, str]:
    """An environment for subprocesses (s3pipefs CLI, mount) that talk via the proxy."""
    return proxied_env_for(s3_server, fault_proxy)
