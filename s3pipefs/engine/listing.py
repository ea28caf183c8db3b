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
from typing import Iterator

from s3pipefs.s3 import ObjectInfo, ObjectStore

# Fan out when the first page holds at most this many subtrees (so each has hundreds of keys).
MAX_SUBTREES_ON_FIRST_PAGE = 2
# Levels split to find enough subtrees to keep the workers busy.
MAX_SPLIT_DEPTH = 3


def list_tree(store: ObjectStore, bucket: str, prefix: str, *, workers: int = 16,
              page_size: int | None = None) -> list[ObjectInfo]:
    """Every object under ``prefix``, in key order (see the module docstring)."""
    first, token = store.list_page(bucket, prefix, max_keys=page_size, quick=True)
    objects = _objects(first)
    if token is None:
        return objects
    if _subtrees_seen(objects, prefix) > MAX_SUBTREES_ON_FIRST_PAGE or workers < 2:
        return objects + _objects(_pages(store, bucket, prefix, page_size, token=token))
    found: dict[str, ObjectInfo] = {o.key: o for o in objects}
    with cf.ThreadPoolExecutor(workers, thread_name_prefix="s3pipefs-list") as pool:
        subtrees = [prefix]
        for _ in range(MAX_SPLIT_DEPTH):
            split = list(pool.map(lambda p: list(_pages(store, bucket, p, page_size, delimiter="/")),
                                  subtrees))
            subtrees = []
            for items in split:  # the objects directly under a subtree, and its own subtrees
                found.update((o.key, o) for o in _objects(items))
                subtrees += [i for i in items if isinstance(i, str)]
            if len(subtrees) >= workers or not subtrees:
                break
        for listed in pool.map(lambda p: _objects(_pages(store, bucket, p, page_size)), subtrees):
            found.update((o.key, o) for o in listed)
    return [found[k] for k in sorted(found)]


def _subtrees_seen(objects: list[ObjectInfo], prefix: str) -> int:
    """Distinct first path parts (a key without "/" counts as its own) among ``objects``."""
    start = len(prefix)
    return len({o.key[start:].split("/", 1)[0] + ("/" if "/" in o.key[start:] else "") for o in objects})


def _pages(store, bucket, prefix, page_size, *, delimiter=None, token=None) -> Iterator:
    """The items of every page from ``token`` on (None: from the first), each page one
    request (which the store retries)."""
    while True:
        items, token = store.list_page(bucket, prefix, delimiter, None, token, max_keys=page_size, quick=True)
        yield from items
        if token is None:
            return


def _objects(items) -> list[ObjectInfo]:
    return [o for o in items if not isinstance(o, str)]
