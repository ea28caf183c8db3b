"""Listing a large tree of keys with several requests in flight.

A listing returns at most 1000 keys a request, and each page needs the token of the one
before: a million keys are a thousand requests in a row, minutes on S3 at ~100 ms a page.
When a tree is made of large subtrees ("directories"), those can be listed side by side:

1. the first page is read as usual; a tree that fits in it costs that one request;
2. when the page is full and its keys fall into at most two subtrees (the subtrees are
   large: hundreds of keys each), one listing with the delimiter "/" names every subtree
   and the keys directly at this level;
3. while there are fewer subtrees than workers, each is split the same way (up to three
   levels), then every subtree is listed on its own, ``workers`` at a time.

A tree of many small subtrees, or a flat one, is listed page after page as before: there
the split would cost more requests than it saves. Each subtree listing is a plain prefix
listing, so the union is exact whatever order the server lists keys in; the first page's
keys are listed again with their subtree (at most one page of duplicates, dropped).
"""
from __future__ import annotations

import concurrent.futures as cf

from s3pipefs.engine.ratelimit import Retrier
from s3pipefs.store import ObjectInfo, Store

# Fan out when the first page holds at most this many subtrees (so each has hundreds of keys).
MAX_SUBTREES_ON_FIRST_PAGE = 2
# Levels split to find enough subtrees to keep the workers busy.
MAX_SPLIT_DEPTH = 3


def list_tree(store: Store, bucket: str, prefix: str, retrier: Retrier, *, workers: int = 16,
              page_size: int | None = None) -> list[ObjectInfo]:
    """Every object under ``prefix``, in key order (see the module docstring)."""
    first, token = retrier.call(store.list_page, bucket, prefix, max_keys=page_size, quick=True)
    objects = [o for o in first if not isinstance(o, str)]
    if token is None:
        return objects
    if _subtrees_seen(objects, prefix) > MAX_SUBTREES_ON_FIRST_PAGE or workers < 2:
        return objects + _rest(store, bucket, prefix, token, retrier, page_size)
    found: dict[str, ObjectInfo] = {o.key: o for o in objects}
    with cf.ThreadPoolExecutor(workers, thread_name_prefix="s3pipefs-list") as pool:
        subtrees = [prefix]
        for _ in range(MAX_SPLIT_DEPTH):
            split = list(pool.map(lambda p: _split(store, bucket, p, retrier, page_size), subtrees))
            subtrees = []
            for direct, children in split:
                found.update((o.key, o) for o in direct)
                subtrees += children
            if len(subtrees) >= workers or not subtrees:
                break
        for listed in pool.map(lambda p: _all(store, bucket, p, retrier, page_size), subtrees):
            found.update((o.key, o) for o in listed)
    return [found[k] for k in sorted(found)]


def _subtrees_seen(objects: list[ObjectInfo], prefix: str) -> int:
    """Distinct first path parts (a key without "/" counts as its own) among ``objects``."""
    start = len(prefix)
    return len({o.key[start:].split("/", 1)[0] + ("/" if "/" in o.key[start:] else "") for o in objects})


def _split(store, bucket, prefix, retrier, page_size) -> tuple[list[ObjectInfo], list[str]]:
    """The objects directly under ``prefix`` and its subtrees (one delimited listing)."""
    direct, children = [], []
    token = None
    while True:
        items, token = retrier.call(store.list_page, bucket, prefix, "/", None, token,
                                    max_keys=page_size, quick=True)
        for i in items:
            (children if isinstance(i, str) else direct).append(i)
        if token is None:
            return direct, children


def _all(store, bucket, prefix, retrier, page_size) -> list[ObjectInfo]:
    first, token = retrier.call(store.list_page, bucket, prefix, max_keys=page_size, quick=True)
    objects = [o for o in first if not isinstance(o, str)]
    return objects if token is None else objects + _rest(store, bucket, prefix, token, retrier, page_size)


def _rest(store, bucket, prefix, token, retrier, page_size) -> list[ObjectInfo]:
    out = []
    while token is not None:
        items, token = retrier.call(store.list_page, bucket, prefix, None, None, token,
                                    max_keys=page_size, quick=True)
        out += [o for o in items if not isinstance(o, str)]
    return out
