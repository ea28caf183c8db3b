"""Moving bytes between S3 and the outside: local files, pipes and http(s) URLs.

Plain objects
    Upload: one PUT up to ``part_size``, else a multipart upload whose parts are read
    (``os.pread`` for files, sequentially for pipes) and sent by ``workers`` threads, each
    with Content-MD5; at most ``workers + 1`` parts are in memory. Download: ranged GETs in
    parallel, written in order through a sliding window (same bound), the whole-object MD5
    checked when the ETag is one.
Streams
    Through the engine: a StreamWriter fed in big chunks, a Reader drained in order. The
    engine does the parallelism, verification and commit.
http(s) URLs (as S3AM does)
    A first ``GET`` with ``Range: bytes=0-0`` tells whether the server serves ranges. If it
    does, parts are fetched with parallel ranged GETs (``If-Range`` on the server's
    validator, so a file that changes mid-transfer is caught); if not, that same response
    is read once, start to end, and cut into parts as it arrives.
Resume (``resume=True``)
    Objects: the newest unfinished multipart upload for the key is continued. Parts already
    there are listed; a local file's or a pipe's part is re-read and skipped when its MD5
    equals the part's ETag. For a ranged URL, parts are not fetched again; one landed part
    is fetched back and compared so that a source that changed since is refused. A
    non-range URL is read again from the start, but landed parts are not re-uploaded.
    Streams: the writer's resume mode, which checks the input from its start against the
    digest chain of the segments already uploaded and uploads only the rest.

A failed upload is left in place for ``--resume`` and named in the error; ``s3pipefs abort``
cancels it. Every S3 call is retried by the store's policy (s3/retry.py); the reads of an
http(s) source by a RetryPolicy of their own (``retrier``).

Modules, one job each: ``multipart`` (file or pipe -> object, and the multipart upload
they share with URLs), ``downloads`` (object -> file or pipe, and the temp-file-and-rename
into a local path), ``urls`` (http(s) sources), ``streams`` (file or pipe <-> stream
through the engine's writer and reader), ``common`` (the Result and small helpers).
Engine.upload, upload_url and download choose among them.
"""
from s3pipefs.engine.transfer.common import Result, guess_type, multipart_etag
from s3pipefs.engine.transfer.downloads import download_object, download_to_path
from s3pipefs.engine.transfer.multipart import find_upload, upload_file
from s3pipefs.engine.transfer.streams import download_stream, upload_to_stream
from s3pipefs.engine.transfer.urls import open_url, url_chunks, url_to_object, url_to_stream

__all__ = ["Result", "download_object", "download_stream", "download_to_path", "find_upload", "guess_type",
           "multipart_etag", "open_url", "upload_file", "upload_to_stream", "url_chunks", "url_to_object",
           "url_to_stream"]
