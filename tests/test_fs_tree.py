"""Whole trees on the mount: what small files cost in requests, counted at the proxy."""
from __future__ import annotations

import collections
import os
import subprocess

from tests.fs_fixtures import mounter  # noqa: F401
from tests.faultfixtures import fault_proxy  # noqa: F401

N = 100


def _tally(proxy):
    c = collections.Counter(s.method for s in proxy.requests)
    return dict(c), len(proxy.requests)


def test_small_files_request_counts(mounter, fault_proxy, bucket):
    m = mounter(bucket, endpoint=fault_proxy.endpoint)
    d = m / "tree"
    os.mkdir(d)
    fault_proxy.reset_log()
    for i in range(N):
        with open(d / f"f{i:04d}", "wb") as f:
            f.write(b"x" * (100 + i))
    print("create", _tally(fault_proxy))
    fault_proxy.reset_log()
    subprocess.run(["ls", "-l", str(d)], check=True, capture_output=True)
    print("ls", _tally(fault_proxy))
    fault_proxy.reset_log()
    for i in range(N):
        assert (d / f"f{i:04d}").read_bytes() == b"x" * (100 + i)
    print("read", _tally(fault_proxy))
    fault_proxy.reset_log()
    subprocess.run(["rm", "-rf", str(d)], check=True)
    print("rm", _tally(fault_proxy))
    assert False
