"""The botocore implementation of ObjectStore (s3/interface.py): get a range, put, head,
list, copy, delete, multipart.

Everything above this module speaks in buckets, keys and S3PipeError; boto3 and its
exceptions stay here. botocore is told to try each request once: every request runs
under the store's one retry policy (s3/retry.py), which retries throttles and transient
failures a bounded number of times and lowers the store's request rate when the server
answers 503 SlowDown. Errors are classified by their code, never by their message text.
With a bandwidth limit (`--bwlimit`) upload and download bodies are paced through
s3/bandwidth.py.
Small repeated requests may take the plain-HTTP fast path (s3/fastpath.py) where its
conditions hold; botocore's private attributes are reached only through s3/internals.py.
"""
from __future__ import annotations

import functools
import io
import logging
import os
import re
import threading
from typing import Iterator

import botocore.config
import botocore.exceptions
import botocore.handlers
import botocore.session
import urllib3.exceptions

from s3pipefs import errors
from s3pipefs.config import S3Config
from s3pipefs.s3 import internals
from s3pipefs.s3.bandwidth import Bandwidth, PacedBody, read_paced
from s3pipefs.s3.fastpath import QuickS3
from s3pipefs.s3.interface import ObjectInfo, Verify, every_page
from s3pipefs.s3.models import ModelCache, S3FirstLoader, cache_dir
from s3pipefs.s3.retry import RateLimiter, RetryPolicy, RetryStats

log = logging.getLogger(__name__)

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_NO_BUCKET = {"NoSuchBucket"}
_DENIED = {
    "AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden",
    "AllAccessDisabled", "InvalidToken", "ExpiredToken", "AccountProblem",
}
# A GET or HEAD of an SSE-C object sent without its key: 400 with one of these codes (a
# HEAD's reply has no body, so its code is just the status).
_SSE_C_NEEDED = {"InvalidRequest", "InvalidArgument", "BadRequest", "400"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
UPLOAD_BLOCK = 1024 * 1024  # bytes per read()/send() of an upload body
# Characters XML 1.0 cannot carry, even escaped: S3 keys may hold them, but a DeleteObjects
# body naming such a key is refused as MalformedXML (SeaweedFS), so those go one by one.
_NOT_XML = re.compile("[\x01-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _where(bucket: str, key: str | None) -> str:
    return f"s3://{bucket}/{key}" if key is not None else f"s3://{bucket}"


def translate(exc: Exception, bucket: str, key: str | None = None, action: str = "",
              sse: bool = False) -> errors.S3PipeError:
    """Map a boto3/botocore exception to an S3PipeError with a one-line message.

    The S3 error code and HTTP status travel along as ``.code`` and ``.status`` so that
    the retry policy can classify by code, never by message text.
    """
    err = _translate(exc, bucket, key, action, sse)
    if isinstance(exc, botocore.exceptions.ClientError):
        err.code = str(exc.response.get("Error", {}).get("Code", ""))
        err.status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return err


def _translate(exc: Exception, bucket: str, key: str | None, action: str, sse: bool) -> errors.S3PipeError:
    where = _where(bucket, key)
    doing = f"{action} " if action else ""
    if isinstance(exc, errors.S3PipeError):
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 304:
            return errors.NotModified(f"{doing}{where}: not modified")
        if code in _NO_BUCKET:
            return errors.BucketNotFound(f"{doing}{where}: no such bucket '{bucket}'")
        if code in _NOT_FOUND or status == 404:
            return errors.NotFound(f"{doing}{where}: not found")
        if sse and (code in _DENIED or status in (400, 403)):
            return errors.WrongKey(f"{doing}{where}: wrong SSE-C key: the server refused it ({code or status}); "
                                   "give the key it was written with")
        if not sse and status == 400 and action in ("head", "read") and code in _SSE_C_NEEDED:
            return errors.KeyNeeded(f"{doing}{where}: encrypted with an SSE-C key; give it with --sse-c-key-file "
                                    "or $S3PIPEFS_SSE_C_KEY")
        if code in _DENIED or status == 403:
            return errors.AccessDenied(f"{doing}{where}: access denied ({code or status}); check the credentials and the bucket policy")
        if code in _PRECONDITION or status in (409, 412):
            return errors.Busy(f"{doing}{where}: changed by another writer")
        if code in ("InvalidRange",) or status == 416:
            return errors.S3PipeError(f"{doing}{where}: range not satisfiable")
        if code == "BadDigest":
            return errors.IntegrityError(f"{doing}{where}: server rejected the upload's checksum")
        return errors.S3PipeError(f"{doing}{where}: {code or status} {err.get('Message', '')}".rstrip())
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return errors.AccessDenied(f"{doing}{where}: no AWS credentials found (set AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws/credentials)")
    if isinstance(exc, botocore.exceptions.ProfileNotFound):
        return errors.UsageError(f"AWS profile not found: {exc.kwargs.get('profile')}")
    if isinstance(exc, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError)):
        return errors.EndpointError(f"{doing}{where}: cannot reach endpoint {getattr(exc, 'kwargs', {}).get('endpoint_url', '')}".rstrip())
    # HTTPClientError covers read timeouts, closed connections and broken bodies; urllib3's
    # own errors escape botocore when an error reply's body breaks (it reads those eagerly).
    if isinstance(exc, (botocore.exceptions.HTTPClientError, urllib3.exceptions.HTTPError)):
        return errors.EndpointError(f"{doing}{where}: connection to the endpoint failed ({type(exc).__name__})")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return errors.S3PipeError(f"{doing}{where}: {exc}")
    if isinstance(exc, OSError):
        return errors.EndpointError(f"{doing}{where}: {exc.strerror or exc}")
    return errors.S3PipeError(f"{doing}{where}: {type(exc).__name__}: {exc}")


def _client_config(c: S3Config, region: str) -> botocore.config.Config:
    return botocore.config.Config(
        region_name=region,
        max_pool_connections=c.max_pool_connections,
        connect_timeout=c.connect_timeout,
        read_timeout=c.read_timeout,
        # One attempt: the store's RetryPolicy retries (s3/retry.py), so attempts are
        # bounded once and every throttle reaches its shared rate limiter.
        retries={"mode": "standard", "total_max_attempts": 1},
        # "virtual", not "auto": with a custom endpoint "auto" means path-style.
        s3={"addressing_style": "path" if c.path_style else "virtual",
            # Every upload carries a Content-MD5 or x-amz-checksum-crc32 header, which is
            # signed and which the server checks: hashing the body again with SHA-256 for
            # the signature (botocore does so over http) cost 0.6 s of CPU per GiB.
            "payload_signing_enabled": False},
        # We send Content-MD5 and verify bodies ourselves; skip a second CRC pass.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        tcp_keepalive=True,
        # Our calls are typed by construction; validation cost ~15% of a small request.
        parameter_validation=False,
    )


@functools.lru_cache(maxsize=None)
def _model_loader(data_path: str | None, cache: str | None) -> S3FirstLoader:
    """One model loader per process (per data path and model cache), as botocore has one
    per session for all of that session's clients: the models it parses are read-only, and
    a Store after the first then makes its client in ~50 ms instead of ~85, without ~20,000
    more objects of model data for the garbage collector to walk."""
    return S3FirstLoader(data_path, cache=ModelCache(cache))


def _resolve_credentials(client, session, profile: str | None) -> None:
    """Fetch the credentials now, so that a role that cannot be assumed (STS down, access
    denied, an SSO login expired) is reported as a credentials problem, not as a failure
    of whichever S3 request came first. No credentials at all is left to that request.

    They are the client's own (what its signer uses) where internals.py can reach them:
    asking the session again runs the whole provider chain a second time, the fallback."""
    what = "AWS credentials" + (f" (profile {p})" if (p := profile or os.environ.get("AWS_PROFILE")) else "")
    try:
        try:
            creds = internals.signer_credentials(client)
        except internals.Unavailable:
            creds = session.get_credentials()
        if creds is not None:
            creds.get_frozen_credentials()
    except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError) as e:
        raise errors.EndpointError(f"{what}: cannot reach {e.kwargs.get('endpoint_url', 'the endpoint')}") from None
    except botocore.exceptions.ClientError as e:
        err = e.response.get("Error", {})
        raise errors.AccessDenied(f"{what}: {err.get('Code', 'error')}: {err.get('Message', '')}".rstrip(": ")) from None
    except botocore.exceptions.BotoCoreError as e:
        raise errors.AccessDenied(f"{what}: {e}") from None


class Store:
    """Thread-safe S3 access for the engine (an ObjectStore). One botocore S3 client, one
    retry policy and one rate limiter shared by all workers."""

    def __init__(self, cfg: S3Config | None = None):
        self.cfg = cfg or S3Config()
        self._client = None
        self._quick: QuickS3 | None = None
        self._lock = threading.Lock()
        self._buckets_seen: set[str] = set()
        # Retries of the store's requests are warnings: what a transfer rode out is worth
        # seeing (a damaged segment, a flaky link) even when it succeeds in the end.
        self.retry = RetryPolicy(self.cfg.max_attempts, limiter=RateLimiter(), log_level=logging.WARNING)
        # --bwlimit: upload bodies and download bodies are paced through it, block by block.
        self.bandwidth = Bandwidth(self.cfg.bwlimit) if self.cfg.bwlimit else None

    @property
    def stats(self) -> RetryStats:
        """Requests sent (every attempt), retries and throttles, since the store was made."""
        return self.retry.stats

    # The client is created lazily so that a daemon can fork before any thread exists.
    @property
    def client(self):
        if self._client is None:
            with self._lock:
                if self._client is None:
                    client, ca_bundle = self._make_client()
                    c = self.cfg
                    self._quick = QuickS3.for_client(client, c.path_style, ca_bundle=ca_bundle,
                                                     connect_timeout=c.connect_timeout,
                                                     read_timeout=c.read_timeout, maxsize=c.max_pool_connections)
                    self._client = client
        return self._client

    @property
    def quick_requests(self) -> int:
        """Requests sent by the fast path, so that a test can tell which path was taken
        (``stats.requests`` counts every request, whichever path sent it)."""
        return self._quick.sent if self._quick is not None else 0

    def _quick_path(self) -> QuickS3 | None:
        self.client  # noqa: B018 - creates the client, and with it the quick path
        return self._quick

    def _make_client(self):
        """botocore's client, and the CA bundle its session names (None: botocore's own)."""
        c = self.cfg
        session = botocore.session.Session(profile=c.profile or None)
        try:  # a missing profile surfaces at the first lookup, whichever that is
            loader = _model_loader(session.get_config_variable("data_path"), cache_dir())
            session.register_component("data_loader", loader)
            region = c.region or session.get_config_variable("region") or "us-east-1"
            client = session.create_client("s3", endpoint_url=c.endpoint_url, config=_client_config(c, region))
            loader.model_cache.save()
        except botocore.exceptions.ProfileNotFound as e:
            raise errors.UsageError(f"AWS profile not found: {e.kwargs.get('profile') or c.profile}") from e
        _resolve_credentials(client, session, c.profile)
        # botocore sends every PUT body as "Expect: 100-continue": a round trip (and ~25
        # one-byte reads of the interim reply) before each upload. Our bodies are at most a
        # segment, so an early refusal would save little; the round trip costs every time.
        client.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
        # urllib3 sends a file body in 16 KiB read()+send() pairs: 65,000 of each per GiB.
        # 1 MiB blocks cut that 64-fold. (Private in botocore; elsewhere 16 KiB it is.)
        internals.set_upload_blocksize(client, UPLOAD_BLOCK)
        return client, session.get_config_variable("ca_bundle")

    @staticmethod
    def _sse(key: bytes | None, source: bool = False) -> dict:
        """The SSE-C parameters of one request (of its copy source), none without a key."""
        if not key:
            return {}
        p = "CopySource" if source else ""
        return {f"{p}SSECustomerAlgorithm": "AES256", f"{p}SSECustomerKey": key}

    def _call(self, fn, bucket, key, action, **kw):
        """One request under the retry policy."""
        return self.retry.call(self._send, fn, bucket, key, action, kw)

    @staticmethod
    def _send(fn, bucket, key, action, kw):
        """One attempt, its failure translated (the policy classifies the translation)."""
        try:
            return fn(**kw)
        except Exception as e:  # noqa: BLE001 - translated into our hierarchy
            sse = any(k.endswith("SSECustomerKey") for k in kw)
            raise translate(e, bucket, key, action, sse) from None

    # -- reads -----------------------------------------------------------------
    def _plain(self, op: str, sse_key: bytes | None = None, paced: bool = False):
        """The method sending a HEAD, GET or DELETE (``op``: botocore's name, which the fast
        path shares): the fast path's where it can send it (no SSE-C key, and for a body,
        ``paced``, no bandwidth limit), else botocore's. Those requests carry nothing
        botocore adds, so they always take it (``put``'s and ``copy``'s callers choose)."""
        fast = None if sse_key or (paced and self.bandwidth) else self._quick_path()
        return getattr(fast if fast is not None else self.client, op)

    def head(self, bucket: str, key: str, sse_key: bytes | None = None) -> ObjectInfo | None:
        kw = {"Bucket": bucket, "Key": key, **self._sse(sse_key)}
        head_object = self._plain("head_object", sse_key)

        def once():
            try:
                return _info(key, head_object(**kw))
            except Exception as e:  # noqa: BLE001
                err = translate(e, bucket, key, "head", sse=bool(sse_key))
                if type(err) is errors.NotFound:
                    return None
                raise err from None
        return self.retry.call(once)

    def get(self, bucket: str, key: str, start: int | None = None, end: int | None = None,
            sse_key: bytes | None = None, *, verify: Verify | None = None,
            tries: int | None = None, if_none_match: str | None = None) -> tuple[bytes, ObjectInfo]:
        """Body bytes [start, end) (whole object when start is None) and object info.

        ``verify(data, info)`` runs inside each attempt: an IntegrityError it raises has
        the body fetched again. ``tries`` bounds this request's transient failures.
        ``if_none_match``: NotModified when the object still has this ETag (a 304, no body)."""
        kw = {"Bucket": bucket, "Key": key, **self._sse(sse_key)}
        if if_none_match:
            kw["IfNoneMatch"] = '"' + if_none_match.strip('"') + '"'
        if start is not None:
            if end is not None and end <= start:
                return b"", ObjectInfo(key, 0)
            kw["Range"] = f"bytes={start}-{'' if end is None else end - 1}"

        get_object = self._plain("get_object", sse_key, paced=True)

        def once():
            r = self._send(get_object, bucket, key, "read", kw)
            body = r["Body"]
            try:
                data = read_paced(body, self.bandwidth)
            except Exception as e:  # noqa: BLE001 - a body that broke mid-transfer
                raise errors.EndpointError(f"read {_where(bucket, key)}: transfer broke ({type(e).__name__})") from None
            finally:
                body.close()
            info = _info(key, r)
            want = r.get("ContentLength")
            if want is not None and len(data) != want:
                raise errors.IntegrityError(f"read {_where(bucket, key)}: got {len(data)} of {want} bytes")
            if verify is not None:
                verify(data, info)
            return data, info
        return self.retry.call(once, tries=tries)

    def list(self, bucket: str, prefix: str = "", delimiter: str | None = None,
             start_after: str | None = None, quick: bool = False) -> Iterator[ObjectInfo | str]:
        """Objects (ObjectInfo) and, with a delimiter, common prefixes (str), in key order.

        ``quick`` as for put(): many small requests, which may skip botocore's pipeline.
        """
        return every_page(self.list_page, bucket, prefix, delimiter, start_after, quick)

    def list_page(self, bucket: str, prefix: str = "", delimiter: str | None = None,
                  start_after: str | None = None, token: str | None = None, *,
                  max_keys: int | None = None, quick: bool = False) -> tuple[list, str | None]:
        """One page of list(): its items and the token of the next page (None after the last)."""
        return self.retry.call(self._list_page, bucket, prefix, delimiter, start_after, token, max_keys, quick)

    def _list_page(self, bucket, prefix, delimiter, start_after, token, max_keys, quick) -> tuple[list, str | None]:
        fast = self._quick_path() if quick else None
        try:
            if fast is not None:
                items, token = fast.list_page(bucket, prefix, delimiter, start_after, token, max_keys)
                return [i if isinstance(i, str) else ObjectInfo(*i) for i in items], token
            kw = {"Bucket": bucket, "Prefix": prefix}
            if delimiter:
                kw["Delimiter"] = delimiter
            if token:
                kw["ContinuationToken"] = token
            elif start_after:
                kw["StartAfter"] = start_after
            if max_keys:
                kw["MaxKeys"] = max_keys
            page = self.client.list_objects_v2(**kw)
        except Exception as e:  # noqa: BLE001
            raise translate(e, bucket, prefix, "list") from None
        items: list = [p["Prefix"] for p in page.get("CommonPrefixes", ())]
        items += [ObjectInfo(key=o["Key"], size=o["Size"], etag=o.get("ETag", "").strip('"'),
                             last_modified=o["LastModified"].timestamp() if o.get("LastModified") else 0.0)
                  for o in page.get("Contents", ())]
        return items, (page.get("NextContinuationToken") if page.get("IsTruncated") else None)

    def any_key(self, bucket: str, prefix: str) -> bool:
        """True when at least one object lies under ``prefix`` (one request, one key)."""
        items, _ = self.list_page(bucket, prefix, max_keys=1, quick=True)
        return bool(items)

    def bucket_exists(self, bucket: str) -> None:
        """Raise BucketNotFound / AccessDenied / EndpointError unless the bucket is usable."""
        try:
            self._call(self.client.head_bucket, bucket, None, "open", Bucket=bucket)
        except errors.NotFound:  # HEAD has no body, so no NoSuchBucket code: a bare 404
            raise errors.BucketNotFound(f"s3://{bucket}: no such bucket '{bucket}'") from None
        self._buckets_seen.add(bucket)

    def bucket_seen(self, bucket: str) -> None:
        """bucket_exists, asked of the server once per bucket and process: for a clear error
        before a new stream stages anything. A mount creates every new file and every
        rename's destination this way, and a bucket deleted later still fails the writes
        themselves with NoSuchBucket."""
        if bucket not in self._buckets_seen:
            self.bucket_exists(bucket)

    # -- writes ----------------------------------------------------------------
    def put(self, bucket: str, key: str, body, *, md5: str | None = None, crc32: str | None = None,
            length: int | None = None,
            metadata: dict | None = None, content_type: str | None = None,
            if_none_match: bool = False, if_match: str | None = None,
            sse_key: bytes | None = None, quick: bool = False, tries: int | None = None) -> str:
        """Upload one object; returns its ETag.

        ``md5`` is a base64 Content-MD5, ``crc32`` a base64 x-amz-checksum-crc32: the server
        refuses the upload (BadDigest) when the body it received does not match.
        ``quick``: one of many small requests: an in-memory body may skip botocore's
        pipeline (fastpath.py) where the fast path's conditions hold.
        A file body is rewound to where it was before each attempt; ``tries`` bounds
        this request's transient failures.
        """
        fast = self._quick_path() if quick and isinstance(body, bytes) and not (
            sse_key or self.bandwidth) else None
        if fast is not None:
            headers = {k: v for k, v in (("content-md5", md5), ("x-amz-checksum-crc32", crc32),
                                         ("content-type", content_type), ("if-match", if_match),
                                         ("if-none-match", "*" if if_none_match else None)) if v}
            headers.update({f"x-amz-meta-{k}": v for k, v in (metadata or {}).items()})
            return self._call(lambda: fast.put(bucket, key, body, headers), bucket, key, "write")
        if self.bandwidth is not None:
            body, length = self._paced(body, length)
        kw = {"Bucket": bucket, "Key": key, "Body": body, **self._sse(sse_key)}
        if md5:
            kw["ContentMD5"] = md5
        if crc32:
            kw["ChecksumCRC32"] = crc32
        if length is not None:
            kw["ContentLength"] = length
        if metadata:
            kw["Metadata"] = metadata
        if content_type:
            kw["ContentType"] = content_type
        if if_none_match:
            kw["IfNoneMatch"] = "*"
        if if_match:
            kw["IfMatch"] = if_match
        r = self.retry.call(self._send, _rewinding(self.client.put_object, body), bucket, key, "write", kw,
                            tries=tries)
        return r.get("ETag", "").strip('"')

    def copy(self, src_bucket: str, src_key: str, bucket: str, key: str, *,
             metadata: dict | None = None, content_type: str | None = None,
             source_sse_key: bytes | None = None, sse_key: bytes | None = None, quick: bool = False) -> str:
        """Server-side copy of an object up to 5 GB; returns the new ETag.

        ``quick`` as for put(): many small requests, which may skip botocore's pipeline.
        """
        fast = self._quick_path() if quick and not (source_sse_key or sse_key) else None
        if fast is not None:
            headers = {}
            if metadata is not None:
                headers = {"x-amz-metadata-directive": "REPLACE",
                           **{f"x-amz-meta-{k}": v for k, v in metadata.items()}}
                if content_type:
                    headers["content-type"] = content_type
            return self._call(lambda: fast.copy(src_bucket, src_key, bucket, key, headers), bucket, key, "copy to")
        kw = {"Bucket": bucket, "Key": key, "CopySource": {"Bucket": src_bucket, "Key": src_key},
              **self._sse(sse_key), **self._sse(source_sse_key, source=True)}
        if metadata is not None:
            kw["Metadata"] = metadata
            kw["MetadataDirective"] = "REPLACE"
            if content_type:
                kw["ContentType"] = content_type
        r = self._call(self.client.copy_object, bucket, key, "copy to", **kw)
        return r.get("CopyObjectResult", {}).get("ETag", "").strip('"')

    def _paced(self, body, length: int | None) -> tuple[PacedBody, int]:
        """``body`` (bytes or a seekable file) read through the bandwidth limit, and its length."""
        if isinstance(body, (bytes, bytearray, memoryview)):
            body = io.BytesIO(body)
        if length is None:
            here = body.tell()
            length = body.seek(0, io.SEEK_END) - here
            body.seek(here)
        return PacedBody(body, self.bandwidth), length

    def delete(self, bucket: str, key: str) -> None:
        self._call(self._plain("delete_object"), bucket, key, "delete", Bucket=bucket, Key=key)

    def delete_many(self, bucket: str, keys: list[str]) -> None:
        """Delete keys, 1000 per request; raise on the first key the server refused.

        A batch refused as MalformedXML because it names keys XML cannot carry is sent
        again without them, and they are deleted one by one (a DELETE names its key in
        the URL)."""
        for i in range(0, len(keys), 1000):
            chunk = keys[i:i + 1000]
            try:
                r = self._call(self.client.delete_objects, bucket, chunk[0], "delete",
                               Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})
            except errors.S3PipeError as e:
                awkward = [k for k in chunk if _NOT_XML.search(k)]
                if e.code != "MalformedXML" or not awkward:
                    raise
                for k in awkward:
                    self.delete(bucket, k)
                self.delete_many(bucket, [k for k in chunk if not _NOT_XML.search(k)])
                continue
            for err in r.get("Errors", ()):
                if err.get("Code") not in ("NoSuchKey",):
                    raise errors.S3PipeError(f"delete {_where(bucket, err.get('Key'))}: {err.get('Code')} {err.get('Message', '')}")

    def create_bucket(self, bucket: str) -> None:
        self._call(self.client.create_bucket, bucket, None, "create", Bucket=bucket)

    # -- multipart -------------------------------------------------------------
    def mpu_create(self, bucket: str, key: str, *, metadata=None, content_type=None, sse_key=None) -> str:
        kw = {"Bucket": bucket, "Key": key, **self._sse(sse_key)}
        if metadata:
            kw["Metadata"] = metadata
        if content_type:
            kw["ContentType"] = content_type
        return self._call(self.client.create_multipart_upload, bucket, key, "start upload of", **kw)["UploadId"]

    def mpu_part(self, bucket: str, key: str, upload_id: str, number: int, body, md5: str | None = None,
                 sse_key=None) -> str:
        length = None
        if self.bandwidth is not None:
            body, length = self._paced(body, None)
        kw = {"Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumber": number, "Body": body,
              **self._sse(sse_key)}
        if md5:
            kw["ContentMD5"] = md5
        if length is not None:
            kw["ContentLength"] = length
        return self.retry.call(self._send, _rewinding(self.client.upload_part, body), bucket, key,
                               f"upload part {number} of", kw)["ETag"]

    def mpu_part_copy(self, src_bucket: str, src_key: str, bucket: str, key: str, upload_id: str,
                      number: int, start: int, end: int, source_sse_key=None, sse_key=None) -> str:
        kw = {"Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumber": number,
              "CopySource": {"Bucket": src_bucket, "Key": src_key},
              "CopySourceRange": f"bytes={start}-{end - 1}",
              **self._sse(sse_key), **self._sse(source_sse_key, source=True)}
        r = self._call(self.client.upload_part_copy, bucket, key, f"copy part {number} to", **kw)
        return r["CopyPartResult"]["ETag"]

    def mpu_complete(self, bucket: str, key: str, upload_id: str, etags: list[str]) -> str:
        parts = [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]
        r = self._call(self.client.complete_multipart_upload, bucket, key, "complete upload of",
                       Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
        return r.get("ETag", "").strip('"')

    def mpu_abort(self, bucket: str, key: str, upload_id: str) -> None:
        self._call(self.client.abort_multipart_upload, bucket, key, "abort upload of",
                   Bucket=bucket, Key=key, UploadId=upload_id)

    def mpu_list(self, bucket: str, prefix: str = "") -> Iterator[dict]:
        """Unfinished multipart uploads under a prefix: dicts with Key, UploadId, Initiated.
        Page by page, each page one request under the retry policy."""
        kw = {"Bucket": bucket, "Prefix": prefix}
        while True:
            page = self._call(self.client.list_multipart_uploads, bucket, prefix, "list uploads in", **kw)
            yield from page.get("Uploads", ())
            if not page.get("IsTruncated"):
                return
            kw.update(KeyMarker=page.get("NextKeyMarker", ""), UploadIdMarker=page.get("NextUploadIdMarker", ""))

    def mpu_parts(self, bucket: str, key: str, upload_id: str) -> list[dict]:
        """The parts uploaded so far: dicts with PartNumber, Size, ETag."""
        kw = {"Bucket": bucket, "Key": key, "UploadId": upload_id}
        out: list[dict] = []
        while True:
            page = self._call(self.client.list_parts, bucket, key, "list parts of", **kw)
            out.extend(page.get("Parts", ()))
            if not page.get("IsTruncated"):
                return out
            kw["PartNumberMarker"] = page.get("NextPartNumberMarker", 0)


def _rewinding(fn, body):
    """``fn`` with a file ``body`` put back where it was before every attempt: a retry must
    send the same bytes, not what the failed attempt left unread."""
    seek = getattr(body, "seek", None)
    try:
        start = body.tell() if seek is not None else None
    except (OSError, ValueError):  # a pipe: sent once, as botocore would
        start = None
    if start is None:
        return fn

    def again(**kw):
        seek(start)
        return fn(**kw)
    return again


def _info(key: str, r: dict) -> ObjectInfo:
    size = r.get("ContentLength", 0)
    cr = r.get("ContentRange")
    if cr and "/" in cr:  # a ranged GET: the object's full size follows the slash
        tail = cr.rsplit("/", 1)[1]
        if tail.isdigit():
            size = int(tail)
    lm = r.get("LastModified")
    return ObjectInfo(
        key=key, size=size, etag=r.get("ETag", "").strip('"'),
        last_modified=lm.timestamp() if lm else 0.0,
        metadata={k.lower(): v for k, v in (r.get("Metadata") or {}).items()},
        content_type=r.get("ContentType", ""),
    )
