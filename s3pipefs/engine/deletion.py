"""Removing a stream's objects: the one place that deletes segments and manifests.

* ``delete_stream``: the manifest goes **first**, then everything else under the prefix.
  A deletion that stops half-way (a crash, a refused DeleteObjects) leaves segments with
  no manifest, which nothing reads as a stream, never a manifest that names missing
  segments, which would look complete.
* ``delete_leftovers``: what a writer or a copy left behind inside a live stream:
  segments numbered past its end (``cat 0*`` would pick them up) and ``.next-*``
  staging directories of replacements that died.
* ``delete_under``: every object under a prefix (a replacement's staging directory).

Keys go out in DeleteObjects batches of 1000 (ObjectStore.delete_many).
"""
from __future__ import annotations

from typing import Callable

from s3pipefs import manifest as mf
from s3pipefs.engine import manifests
from s3pipefs.s3 import ObjectStore

STAGING_MARK = ".next-"  # a replacement's segments are staged under NAME/.next-<token>/


def delete_stream(store: ObjectStore, bucket: str, prefix: str) -> None:
    """Remove the stream under ``prefix`` (ending in '/'): manifest first, then the rest."""
    store.delete(bucket, manifests.manifest_key(prefix))
    delete_under(store, bucket, prefix)


def delete_leftovers(store: ObjectStore, bucket: str, prefix: str, keep: int, spare: str = "") -> None:
    """Remove segments numbered above ``keep`` and ``.next-*`` staging directories,
    except ``spare`` (a staging directory name, relative to the prefix, still in use)."""
    def doomed(rel: str) -> bool:
        idx = mf.segment_index(rel)
        if idx is not None:
            return idx > keep
        # "" spares nothing ("" would be a prefix of every name).
        return rel.startswith(STAGING_MARK) and not (spare and rel.startswith(spare))
    delete_under(store, bucket, prefix, doomed)


def delete_under(store: ObjectStore, bucket: str, prefix: str, want: Callable[[str], bool] | None = None) -> None:
    """Remove the objects under ``prefix`` whose name relative to it ``want`` accepts (all)."""
    keys = [o.key for o in store.list(bucket, prefix)
            if not isinstance(o, str) and (want is None or want(o.key[len(prefix):]))]
    if keys:
        store.delete_many(bucket, keys)
