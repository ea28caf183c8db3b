"""Sync between S3 prefixes/buckets and local directories (S3 APU + parallel-s3sync).

Modules, one job each: ``locations`` (where: S3Loc, LocalLoc, entries, filters, shards),
``listings`` (what is there: one listing per side), ``keylist`` (the keys of --files-from:
a key list or an S3 Inventory report), ``compare`` (what must be copied), ``digests``
(content hashes and ETag arithmetic), ``report`` (options and the report) and ``runner``
(the job: pools, transfers, deletions). Engine.sync runs one.

Flow::

    list source ─┐                      ┌─► checker pool (hash a local file, HEAD, GET a
                 ├─► compare in order ──┤     manifest) ─► decision
    list dest  ──┘   (listing data only)└─► transfer pool (server-side copy, upload,
                                              download) ─► report
    then, if --delete and nothing failed: delete what only the destination has.

* A re-run with nothing changed costs the two listings (one request per 1000 keys each)
  plus, in the default mode, reading local files to hash them; no transfer and no HEAD.
* Streams are entries too: a prefix holding ``.manifest`` is one stream, named by the
  prefix, never a pile of segments. S3->S3 copies them with copy_stream (server-side,
  manifest last); S3<->local goes through the engine's reader/writer.
* Every S3 call of every pool runs under the store's retry policy and its one shared rate
  limiter, so an overloaded server slows the whole job down, and a storm that slower
  sending does not ease is ridden out with prompt retries, instead of failing objects
  (s3/retry.py). The report's request, retry and throttle counts come from the store's.

Comparison (``mode``):

``existing``  skip whatever exists at the destination (fastest re-run).
``etag``      (default) size, then content identity from the listings: equal MD5 ETags;
              equal multipart ETags (for a local file: computed with the part size the
              ETag's part count implies); for a stream, its manifest (MD5 ETag of the
              manifest object, or the whole-stream MD5 inside it against a local file).
              When no ETag is an MD5 (SSE-C/KMS, a multipart ETag against a single-part
              one) it falls back to size + time: the destination is up to date when it is
              not older than the source (downloads get the source's time as mtime).
``checksum``  size and content MD5 on both sides: local files hashed, S3 objects by the
              ``md5`` metadata s3pipefs writes (one HEAD each) or an MD5 ETag, else read
              and hashed; streams by the SHA-256 in their manifest (local files hashed to match).
"""
from s3pipefs.engine.sync.locations import LocalLoc, S3Loc, make_filter, parse_location, safe_rel
from s3pipefs.engine.sync.report import Report, SyncOptions
from s3pipefs.engine.sync.runner import Sync

__all__ = ["LocalLoc", "Report", "S3Loc", "Sync", "SyncOptions", "make_filter", "parse_location", "safe_rel"]
