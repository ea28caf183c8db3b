"""engine/listing.py against a real SeaweedFS behind the fault proxy, with small pages
(``page_size``) so that a few hundred keys make the shapes that matter: large subtrees
listed side by side, many small ones and flat prefixes listed page after page."""
from __future__ import annotations

import concurrent.futures as cf
import os
import time
from urllib.parse import parse_qs

import pytest

from s3pipefs.config import S3Config
from s3pipefs.engine.listing import list_tree
from s3pipefs.s3 import Store
from tests.faultproxy import Rule

PAGE = 10


@pytest.fixture
def proxied_store(fault_proxy):
    return Store(S3Config(endpoint_url=fault_proxy.endpoint))


def put_all(store, bucket, keys):
    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put(bucket, k, os.urandom(len(k) % 7 + 1)), keys))


def listings(proxy) -> list[dict]:
    return [{k: v[0] for k, v in parse_qs(r.query, keep_blank_values=True).items()} for r in proxy.requests
            if r.method == "GET" and "list-type=2" in r.query]


def same_as_one_by_one(store, bucket, prefix, got):
    want = [(o.key, o.size, o.etag) for o in store.list(bucket, prefix)]
    assert [(o.key, o.size, o.etag) for o in got] == want
    return want


def test_large_subtrees_are_listed_side_by_side_and_nothing_is_missed(proxied_store, fault_proxy, bucket):
    keys = [f"t/{d}/k{i:03d}" for d in ("a", "b", "c") for i in range(30)]
    keys += ["t/direct-1", "t/zz-direct", "t/b/deeper/x", "t/c/", "t/s/.manifest", "t/s/000000000000001"]
    put_all(proxied_store, bucket, keys)
    fault_proxy.requests.clear()
    # One page in three of the subtree listings answers 503 first: retried, not dropped.
    flaky = fault_proxy.add(Rule("status", method="GET", query_contains="continuation-token", times=2, skip=1))
    got = list_tree(proxied_store, bucket, "t/", workers=4, page_size=PAGE)
    assert flaky.hits == 2
    assert len(same_as_one_by_one(proxied_store, bucket, "t/", got)) == len(keys)
    seen = listings(fault_proxy)
    split = [q for q in seen if q.get("delimiter") == "/"]
    by_subtree = {q["prefix"] for q in seen if "delimiter" not in q}
    assert [q["prefix"] for q in split] == ["t/"]
    assert {"t/a/", "t/b/", "t/c/", "t/s/"} <= by_subtree


def test_a_lone_top_directory_is_split_a_level_deeper(proxied_store, fault_proxy, bucket):
    keys = [f"top/{d}/k{i:03d}" for d in ("x", "y") for i in range(25)]
    put_all(proxied_store, bucket, keys)
    fault_proxy.requests.clear()
    got = list_tree(proxied_store, bucket, "", workers=4, page_size=PAGE)
    same_as_one_by_one(proxied_store, bucket, "", got)
    split = sorted(q["prefix"] for q in listings(fault_proxy) if q.get("delimiter") == "/")
    assert split[:2] == ["", "top/"]  # then x/ and y/ are split too: fewer subtrees than workers


@pytest.mark.parametrize("shape", ["many small subtrees", "flat"])
def test_small_subtrees_and_flat_prefixes_cost_one_request_a_page(proxied_store, fault_proxy, bucket, shape):
    if shape == "flat":
        keys = [f"f/k{i:03d}" for i in range(35)]
    else:
        keys = [f"f/d{i:02d}/k{j}" for i in range(12) for j in range(3)]
    put_all(proxied_store, bucket, keys)
    fault_proxy.requests.clear()
    got = list_tree(proxied_store, bucket, "f/", workers=8, page_size=PAGE)
    seen = listings(fault_proxy)
    same_as_one_by_one(proxied_store, bucket, "f/", got)
    assert len(seen) == 4 and not any("delimiter" in q for q in seen)  # one request a page


def test_with_latency_the_subtrees_pages_are_in_flight_together(proxied_store, fault_proxy, bucket):
    keys = [f"l/{d}/k{i:03d}" for d in "abcd" for i in range(40)]
    put_all(proxied_store, bucket, keys)
    fault_proxy.add(Rule("stall", method="GET", times=-1, seconds=0.1, after_bytes=-1))
    spans = []
    real = proxied_store.list_page

    def timed(*a, **kw):
        t = time.monotonic()
        try:
            return real(*a, **kw)
        finally:
            spans.append((t, time.monotonic(), a[1]))
    proxied_store.list_page = timed
    got = list_tree(proxied_store, bucket, "l/", workers=8, page_size=PAGE)
    assert [o.key for o in got] == sorted(keys)
    subtree_spans = [s for s in spans if s[2] != "l/"]
    most = max(sum(1 for a, b, _ in subtree_spans if a <= t < b) for t, _, _ in subtree_spans)
    assert most == 4  # the four subtrees' listings overlap; page after page, never more than 1
