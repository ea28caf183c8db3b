"""The S3 boundary's conditions: the private-attribute fallbacks and virtual-hosted addressing.

* On a botocore that s3/internals.py was not verified on, every private access falls back
  (no fast path, the session's credentials, urllib3's default blocksize) and the store
  still does everything, through botocore.
* With ``path_style=False`` requests name the bucket in the Host header and go through
  botocore end to end, against a SeaweedFS that serves ``{bucket}.localhost``.
* Keys holding characters XML 1.0 cannot carry are deleted one by one when a
  DeleteObjects batch naming them is refused as MalformedXML.
"""
from __future__ import annotations

import base64
import hashlib
import os
import socket

import pytest

from s3pipefs import errors
from s3pipefs.config import MiB, S3Config, TransferConfig
from s3pipefs.engine import Engine
from s3pipefs.engine.copy import copy_object
from s3pipefs.s3 import Store, internals
from s3pipefs.server import LocalServer
from tests.faultproxy import FaultProxy


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def test_versions_outside_the_verified_range_are_not_trusted():
    assert internals.verified()  # the installed botocore is one it was checked on
    low, high = internals.VERIFIED_BOTOCORE
    assert internals.verified(f"{low[0]}.{low[1]}.0") and internals.verified(f"{high[0]}.{high[1]}.99")
    assert not internals.verified(f"{low[0]}.{low[1] - 1}.9")
    assert not internals.verified(f"{high[0]}.{high[1] + 1}.0")
    assert not internals.verified(f"{high[0] + 1}.0.0") and not internals.verified("garbage")


def test_an_unverified_botocore_falls_back_and_everything_still_works(s3_server, bucket, monkeypatch):
    monkeypatch.setattr(internals, "VERIFIED_BOTOCORE", ((0, 0), (0, 0)))
    store = Store(S3Config(endpoint_url=s3_server.endpoint))
    with pytest.raises(internals.Unavailable):
        internals.signer_credentials(store.client)
    with pytest.raises(internals.Unavailable):
        internals.http_session(store.client)
    assert not internals.set_upload_blocksize(store.client, MiB)
    data = b"through botocore"
    assert store.put(bucket, "k", data, md5=_md5(data), quick=True) == hashlib.md5(data).hexdigest()
    assert store.copy(bucket, "k", bucket, "k2", quick=True)
    assert [o.key for o in store.list(bucket, quick=True)] == ["k", "k2"]
    assert store.quick_requests == 0  # the fast path stayed off
    assert store.get(bucket, "k2")[0] == data
    # The engine on top: a stream across segments, and a multipart copy.
    eng = Engine(store, TransferConfig(segment_size=64 * 1024, workers=2))
    payload = os.urandom(200_000)
    with eng.open_writer(bucket, "s") as w:
        w.write(payload)
    with eng.open_reader(bucket, "s", follow=False) as r:
        assert r.read(0, len(payload) + 1) == payload
    with pytest.raises(errors.NotFound):
        store.get(bucket, "missing")
    # Credentials came from the session: a wrong secret is refused, as on the fast path.
    os.environ["AWS_SECRET_ACCESS_KEY"], real = "zz-wrong-zz", os.environ["AWS_SECRET_ACCESS_KEY"]
    try:
        with pytest.raises(errors.AccessDenied):
            Store(S3Config(endpoint_url=s3_server.endpoint)).put(bucket, "x", b"x", quick=True)
    finally:
        os.environ["AWS_SECRET_ACCESS_KEY"] = real


def test_the_verified_botocore_takes_the_fast_path_and_sets_the_blocksize(store, bucket):
    assert internals.set_upload_blocksize(store.client, MiB)
    store.put(bucket, "k", b"quick", quick=True)
    assert store.quick_requests == 1
    # Conditions go the quick way too (a mount's small files), and a lost one is Busy.
    store.put(bucket, "c", b"conditional", quick=True, if_none_match=True)
    assert store.quick_requests == 2
    with pytest.raises(errors.Busy):
        store.put(bucket, "c", b"again", quick=True, if_none_match=True)
    assert store.quick_requests == 3
    # HEAD, GET and DELETE always go the quick way when they can.
    assert store.get(bucket, "c")[0] == b"conditional"
    assert store.head(bucket, "c").size == len(b"conditional")
    store.delete(bucket, "c")
    assert store.quick_requests == 6
    store.put(bucket, "k", b"sse-c", quick=True, sse_key=b"k" * 32)  # a key: botocore
    assert store.get(bucket, "k", sse_key=b"k" * 32)[0] == b"sse-c"
    assert store.quick_requests == 6
    # A listing of a prefix with a space and non-ASCII letters, signed as the server checks it.
    store.put(bucket, "café ☃/x+y z", b"")
    items, _ = store.list_page(bucket, "café ☃/", quick=True)
    assert [o.key for o in items] == ["café ☃/x+y z"] and store.quick_requests == 7


# -- virtual-hosted addressing ---------------------------------------------------------------------

class _VirtualHostServer(LocalServer):
    """SeaweedFS that also takes the bucket from a ``{bucket}.localhost`` Host header."""

    def command(self, weed: str) -> list[str]:
        return super().command(weed) + ["-s3.domainName=localhost"]


@pytest.fixture
def vhost_server(tmp_path):
    srv = _VirtualHostServer(str(tmp_path / "vhost-srv"), access_key=os.environ["AWS_ACCESS_KEY_ID"],
                             secret_key=os.environ["AWS_SECRET_ACCESS_KEY"])
    srv.start()
    yield srv
    srv.kill()


@pytest.fixture
def localhost_subdomains(monkeypatch):
    """Resolve ``*.localhost`` to 127.0.0.1 in this process (as systemd-resolved does)."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kw):
        if isinstance(host, str) and host.endswith(".localhost"):
            host = "127.0.0.1"
        return real(host, *args, **kw)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_virtual_hosted_addressing_works_end_to_end(vhost_server, localhost_subdomains, tmp_path):
    with FaultProxy(vhost_server.endpoint) as proxy:
        port = proxy.endpoint.rsplit(":", 1)[1]
        store = Store(S3Config(endpoint_url=f"http://localhost:{port}", path_style=False))
        bucket = "vhost-bucket"
        store.create_bucket(bucket)
        store.bucket_exists(bucket)
        data = os.urandom(300_000)
        store.put(bucket, "dir/obj", data, md5=_md5(data), quick=True)
        assert store.get(bucket, "dir/obj", 5, 105)[0] == data[5:105]
        assert store.head(bucket, "dir/obj").size == len(data)
        store.copy(bucket, "dir/obj", bucket, "dir/copy", quick=True)
        # A multipart copy (UploadPartCopy) and a listing with a delimiter.
        copy_object(store, bucket, "dir/obj", bucket, "dir/parts", max_single=100_000, part_size=100_000)
        assert store.get(bucket, "dir/parts")[0] == data
        assert list(store.list(bucket, "", delimiter="/", quick=True)) == ["dir/"]
        # A stream through the engine: segments, conditional manifest writes, verified reads.
        eng = Engine(store, TransferConfig(segment_size=64 * 1024, workers=2, staging_dir=str(tmp_path)))
        with eng.open_writer(bucket, "s") as w:
            w.write(data)
        with eng.open_reader(bucket, "s", follow=False) as r:
            assert r.read(0, len(data) + 1) == data
        store.delete_many(bucket, [o.key for o in store.list(bucket, "dir/")])
        assert not store.any_key(bucket, "dir/")
        with pytest.raises(errors.BucketNotFound):
            list(store.list("no-such-vhost-bucket"))
        assert store.quick_requests == 0  # the fast path is path-style only
        sent = [r for r in proxy.requests if r.method in ("GET", "PUT", "HEAD", "POST", "DELETE")]
        assert sent
        for r in sent:  # every request named its bucket in the Host header, none in the path
            host = r.headers["host"]
            assert host.split(":")[0].endswith(".localhost"), (r.method, r.path, host)
            assert not r.path.startswith(f"/{bucket}"), r.path


# Keys S3 stores but XML 1.0 cannot carry: a DeleteObjects naming one is MalformedXML.
NOT_XML_KEYS = ["ctl\x01a", "ctl\x08b", "ctl\x0bc", "ctl\x0cd", "ctl\x0ee", "ctl\x1ff", "nc\ufffeg", "nc\uffffh"]


def test_keys_xml_cannot_carry_are_deleted_one_by_one(store, bucket):
    keys = ["plain/1", *NOT_XML_KEYS, "plain/2"]
    for k in keys:
        store.put(bucket, k, b"x")
    assert sorted(o.key for o in store.list(bucket)) == sorted(keys)
    store.delete_many(bucket, keys)
    assert list(store.list(bucket)) == []


def test_rm_of_a_stream_whose_name_xml_cannot_carry_leaves_nothing(store, bucket, cli):
    name = "odd\x01name"
    with Engine(store, TransferConfig(segment_size=64 * 1024, workers=2)).open_writer(bucket, name) as w:
        w.write(os.urandom(200_000))  # 4 segments
    assert len(list(store.list(bucket))) == 5
    r = cli("rm", f"s3://{bucket}/{name}")
    assert r.returncode == 0, r.stderr
    assert list(store.list(bucket)) == []
