"""The quick request path (s3pipefs/s3/fastpath.py) must be indistinguishable from botocore's:
same objects stored, same errors raised, same retry classification."""
import base64
import concurrent.futures
import hashlib

import pytest

from s3pipefs import errors
from s3pipefs.config import S3Config
from s3pipefs.s3 import Store, internals
from s3pipefs.s3.fastpath import QuickS3
from s3pipefs.s3.retry import THROTTLE, RateLimiter, RetryPolicy, classify
from tests.faultproxy import Rule

ODD_KEYS = ["plain.txt", "a b/c+d%e~f.bin", "ü/ж/日本.txt", "x?y#z&=;:@,$!'()*[]"]


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


@pytest.mark.parametrize("key", ODD_KEYS)
def test_quick_put_and_copy_store_what_botocore_would(store, bucket, key):
    data = f"body of {key}".encode()
    etag = store.put(bucket, key, data, md5=_md5(data), content_type="text/x-test",
                     metadata={"md5": hashlib.md5(data).hexdigest(), "origin": "quick"}, quick=True)
    assert etag == hashlib.md5(data).hexdigest()
    assert store.quick_requests >= 1, "the quick path was not taken"
    got, info = store.get(bucket, key)
    assert got == data
    assert info.content_type == "text/x-test"
    assert info.metadata == {"md5": hashlib.md5(data).hexdigest(), "origin": "quick"}

    copied = store.copy(bucket, key, bucket, key + ".copy", quick=True)
    assert copied == etag
    got, info2 = store.get(bucket, key + ".copy")
    assert got == data and info2.metadata == info.metadata and info2.content_type == "text/x-test"


def _error(fn):
    with pytest.raises(errors.S3PipeError) as e:
        fn()
    return type(e.value), str(e.value), e.value.code


def test_quick_errors_are_botocore_errors(store, bucket):
    # The store's tries, without the pauses between them: the errors are compared, not the backoff.
    r = store.retry
    store.retry = RetryPolicy(r.tries, r.throttle_tries, limiter=r.limiter, stats=r.stats, sleep=lambda s: None)
    data = b"some bytes"
    cases = [
        lambda q: store.put("no-such-bucket-quick", "k", data, md5=_md5(data), quick=q),
        lambda q: store.put(bucket, "k", data, md5=_md5(b"other bytes"), quick=q),  # BadDigest
        lambda q: store.copy(bucket, "missing-source", bucket, "dest", quick=q),
        lambda q: store.copy("no-such-bucket-quick", "k", bucket, "dest", quick=q),
        lambda q: store.put(bucket, "dir/./../x", data, quick=q),  # a key this server refuses
    ]
    for case in cases:
        slow, quick = _error(lambda: case(False)), _error(lambda: case(True))
        assert quick == slow
    assert _error(lambda: cases[1](True))[0] is errors.IntegrityError


def test_quick_with_wrong_secret_is_access_denied(s3_server, bucket):
    bad = Store(S3Config(endpoint_url=s3_server.endpoint))
    internals.signer_credentials(bad.client).secret_key = "zz-bad-secret-zz"  # the fast path signs with these
    kind, msg, _ = _error(lambda: bad.put(bucket, "k", b"x", md5=_md5(b"x"), quick=True))
    assert bad.quick_requests == 1
    assert kind is errors.AccessDenied and "zz-bad-secret-zz" not in msg


def test_quick_throttles_are_classified_and_retried(s3_server, fault_proxy, bucket):
    store = Store(S3Config(endpoint_url=fault_proxy.endpoint))
    store.retry = RetryPolicy(1, throttle_tries=1)  # one attempt: the error itself comes out
    fault_proxy.add(Rule("status", status=503, code="SlowDown", method="PUT", path_contains=f"/{bucket}/t", times=3))
    with pytest.raises(errors.S3PipeError) as e:
        store.put(bucket, "t0", b"x", md5=_md5(b"x"), quick=True)
    assert e.value.code == "SlowDown" and classify(e.value) == THROTTLE
    store.retry = RetryPolicy(3, limiter=RateLimiter(), sleep=lambda s: None)
    store.put(bucket, "t1", b"y", md5=_md5(b"y"), quick=True)
    assert store.quick_requests == 4  # every attempt took the quick path
    assert (store.stats.requests, store.stats.retries, store.stats.throttles) == (3, 2, 2)
    assert store.retry.limiter.throttles == 2  # the limiter saw them (it sets the rate once a second)
    assert store.get(bucket, "t1")[0] == b"y"


def test_puts_skip_100_continue_and_body_hashing(s3_server, fault_proxy, bucket, tmp_path):
    """Both paths: no 'Expect: 100-continue' round trip, no SHA-256 of the body for the
    signature (the signed Content-MD5/CRC32 protects it; the server checks those)."""
    store = Store(S3Config(endpoint_url=fault_proxy.endpoint))
    f = tmp_path / "body"
    f.write_bytes(b"file body")
    store.put(bucket, "slow", f.open("rb"), md5=_md5(b"file body"))
    store.put(bucket, "quick", b"mem body", md5=_md5(b"mem body"), quick=True)
    puts = [s for s in fault_proxy.requests if s.method == "PUT" and f"/{bucket}/" in s.path]
    assert len(puts) == 2
    for s in puts:
        assert "expect" not in s.headers
        assert s.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
        assert s.headers["content-md5"]


def _botocore_only(store):
    """The same store with the fast path off for HEAD, GET and DELETE."""
    slow = Store(store.cfg)
    slow._plain = lambda op, *a, **k: getattr(slow.client, op)
    return slow


@pytest.mark.parametrize("key", ODD_KEYS)
def test_quick_head_get_and_delete_answer_what_botocore_would(store, bucket, key):
    slow = _botocore_only(store)
    data = bytes(range(256)) * 40
    etag = store.put(bucket, key, data, md5=_md5(data), content_type="application/x-odd",
                     metadata={"mode": "33188", "mtime": "1700000000.5"})
    before = store.quick_requests
    assert store.head(bucket, key) == slow.head(bucket, key)
    assert store.head(bucket, key).metadata == {"mode": "33188", "mtime": "1700000000.5"}
    assert store.get(bucket, key) == slow.get(bucket, key)
    assert store.get(bucket, key, 100, 2000) == slow.get(bucket, key, 100, 2000)
    assert store.get(bucket, key, 100, 2000)[0] == data[100:2000]
    assert store.get(bucket, key, 100, 2000)[1].size == len(data)  # the whole object's, from Content-Range
    assert store.quick_requests - before == 6  # every one of them went the quick way
    # The same errors, classes and codes.
    for case in (lambda s: s.get(bucket, key, if_none_match=etag),     # 304: not modified
                 lambda s: s.get(bucket, key + ".missing"),            # NotFound
                 lambda s: s.get("no-such-bucket-quick", key)):        # NoSuchBucket
        assert _error(lambda: case(store)) == _error(lambda: case(slow))
    assert _error(lambda: store.get(bucket, key, if_none_match=etag))[0] is errors.NotModified
    for b, k in ((bucket, key + ".missing"), ("no-such-bucket-quick", key)):  # a bare 404: nothing there
        assert store.head(b, k) is None and slow.head(b, k) is None
    store.delete(bucket, key)
    assert store.head(bucket, key) is None
    slow.delete(bucket, key)  # a DELETE of nothing succeeds on either path
    store.delete(bucket, key)


def test_quick_listing_equals_botocore_listing(store, bucket):
    keys = [f"p/{k}" for k in ODD_KEYS] + [f"p/many/{i:04d}" for i in range(1100)] + ["p/sub/x", "q/outside"]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # past one page of 1000 keys, soon
        list(pool.map(lambda k: store.put(bucket, k, b"v" * (len(k) % 7), quick=True), keys))
    for kw in ({"prefix": "p/"}, {"prefix": "p/", "delimiter": "/"}, {"prefix": "p/many/", "start_after": "p/many/0998"},
               {"prefix": ""}):
        slow = list(store.list(bucket, **kw))
        quick = list(store.list(bucket, quick=True, **kw))
        assert quick == slow, kw
    assert len(list(store.list(bucket, "p/", quick=True))) == len(keys) - 1  # pages joined, q/ left out
    kind, _, _ = _error(lambda: list(store.list("no-such-bucket-quick", "", quick=True)))
    assert kind is errors.BucketNotFound


def test_an_endpoint_behind_a_proxy_goes_through_botocore(s3_server, monkeypatch):
    """The fast path speaks to the endpoint directly; where the environment names a proxy
    for it, botocore (which honours proxies) sends everything."""
    store = Store(S3Config(endpoint_url=s3_server.endpoint))
    assert QuickS3.for_client(store.client, True) is not None
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert QuickS3.for_client(store.client, True) is None
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert QuickS3.for_client(store.client, True) is not None


@pytest.mark.parametrize("content_type", [None, "text/x-kept"])
def test_a_quick_copy_replacing_metadata_stores_what_botocore_would(store, bucket, content_type):
    """A copy that changes an object's attributes in place (chmod, chown, touch of a file
    on the mount) replaces its metadata, and its content type when given."""
    data = b"attributes change, bytes stay"
    for quick in (False, True):
        key = f"attrs-{quick}"
        store.put(bucket, key, data, metadata={"mode": "33188"}, content_type="text/x-first")
        before = store.quick_requests
        store.copy(bucket, key, bucket, key, metadata={"mode": "33261", "uid": "1000"},
                   content_type=content_type, quick=quick)
        assert (store.quick_requests > before) == quick
    slow, fast = (store.get(bucket, f"attrs-{q}") for q in (False, True))
    assert fast[0] == slow[0] == data
    assert fast[1].metadata == slow[1].metadata == {"mode": "33261", "uid": "1000"}
    assert fast[1].content_type == slow[1].content_type
    if content_type:
        assert fast[1].content_type == content_type
