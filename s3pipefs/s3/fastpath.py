"""Small, repeated S3 requests sent without botocore's per-call pipeline.

A botocore call costs ~1.7 ms of CPU before and after the network: parameter
serialisation, some forty event hooks, endpoint rules, signing, urllib3 and http.client,
response parsing. A sync of 10,000 small files spent more CPU there than the server spent
storing the files, parsing a listing page of 1000 keys (timestamps through dateutil) took
70 ms, and a tree on the mount is thousands of HEADs, GETs and DELETEs. What those repeat
is built here as plain HTTP, signed by s3/sigv4.py with the client's own credentials and
sent on s3/wire.py's kept-alive connections: a HEAD costs about 0.1 ms of client CPU
instead of 1.7, and a listing page is parsed in ~10 ms.

Deliberately narrow:

* only path-style addressing, no SSE-C, no proxy, and only on a botocore whose
  credentials it can reach (s3/internals.py); otherwise the Store uses botocore;
* no retries here: the Store runs these requests under its retry policy (s3/retry.py),
  as it runs botocore's;
* failures are raised as the same botocore exceptions a client call would raise (a
  ClientError with the S3 code and status, or botocore's transport errors), so
  ``store.translate`` gives the same messages and classes whichever path sent a request;
* HEAD and GET answer with the fields botocore's reply carries (:func:`_reply`), so the
  Store reads either path's reply with the same code. A GET's body is urllib3's response,
  read by the caller as it reads botocore's streaming body.
"""
from __future__ import annotations

import threading
import urllib.request
import xml.etree.ElementTree as ET
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import quote, unquote_plus, urlencode, urlsplit

import botocore.exceptions
import botocore.httpsession

from s3pipefs.s3 import internals
from s3pipefs.s3.sigv4 import Signer
from s3pipefs.s3.wire import Connections


class QuickS3:
    """PUT, CopyObject, ListObjectsV2, HEAD, GET and DELETE for one botocore S3 client; see
    the module docstring."""

    def __init__(self, creds, region: str, conns: Connections):
        self._creds = creds  # refreshable: frozen per request
        self._signer = Signer(region)
        self._conns = conns
        self.sent = 0  # requests sent, so that tests can tell which path a request took
        self._lock = threading.Lock()

    @classmethod
    def for_client(cls, client, path_style: bool, *, ca_bundle: str | None = None,
                   connect_timeout: float = 10.0, read_timeout: float = 60.0,
                   maxsize: int = 32) -> "QuickS3 | None":
        """A QuickS3 when this client's setup allows one, else None (use botocore): only
        for path-style addressing, an endpoint reached without a proxy, and only where
        internals.py reaches the signer's credentials (a verified botocore).
        ``ca_bundle``: the CA bundle the session names (AWS_CA_BUNDLE), else botocore's."""
        url = client.meta.endpoint_url
        if not path_style or _proxied(url):
            return None
        try:
            creds = internals.signer_credentials(client)
        except internals.Unavailable:
            return None
        tls_bundle = (ca_bundle or botocore.httpsession.get_cert_path(True)) if url.startswith("https") else None
        conns = Connections(url, connect_timeout=connect_timeout, read_timeout=read_timeout,
                            ca_bundle=tls_bundle, maxsize=maxsize)
        return cls(creds, client.meta.region_name, conns)

    def put(self, bucket: str, key: str, body: bytes, headers: dict[str, str]) -> str:
        """PUT ``body``; ``headers`` as S3 names them, lower-case (content-md5,
        x-amz-meta-*, ...). Returns the ETag."""
        r = self._send("PUT", bucket, key, body, headers, "PutObject")
        return r.headers.get("etag", "").strip('"')

    def copy(self, src_bucket: str, src_key: str, bucket: str, key: str, headers: dict[str, str] | None = None) -> str:
        """Server-side CopyObject; returns the new ETag. The metadata is kept, unless
        ``headers`` (as S3 names them, lower-case) replace it (x-amz-metadata-directive: REPLACE)."""
        headers = {**(headers or {}), "x-amz-copy-source": f"/{src_bucket}/{quote(src_key, safe='/~')}"}
        r = self._send("PUT", bucket, key, b"", headers, "CopyObject")
        # S3 may answer a copy with 200 and an <Error> body when it fails late.
        root = _xml(r.content)
        if root is None:
            raise _unreadable(r, "CopyObject")
        if _local(root.tag) == "Error":
            raise _client_error(r, "CopyObject", root)
        for child in root:
            if _local(child.tag) == "ETag":
                return (child.text or "").strip('"')
        return ""

    def head_object(self, Bucket: str, Key: str) -> dict:  # noqa: N803 - botocore's names
        """HeadObject, its reply as botocore's (see _reply)."""
        return _reply(self._send("HEAD", Bucket, Key, b"", {}, "HeadObject"))

    def get_object(self, Bucket: str, Key: str, Range: str | None = None,  # noqa: N803
                   IfNoneMatch: str | None = None) -> dict:
        """GetObject, its reply as botocore's: the body under "Body" (the wire's Response,
        with read() and close()), not read yet."""
        headers = {k: v for k, v in (("range", Range), ("if-none-match", IfNoneMatch)) if v}
        r = self._send("GET", Bucket, Key, b"", headers, "GetObject", stream=True)
        return {**_reply(r), "Body": r}

    def delete_object(self, Bucket: str, Key: str) -> None:  # noqa: N803
        self._send("DELETE", Bucket, Key, b"", {}, "DeleteObject")

    def list_page(self, bucket: str, prefix: str = "", delimiter: str | None = None,
                  start_after: str | None = None, token: str | None = None,
                  max_keys: int | None = None) -> tuple[list, str | None]:
        """One ListObjectsV2 page: its items (common prefixes first, as from botocore's
        path) and the token of the next page, None after the last."""
        params = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
        if delimiter:
            params["delimiter"] = delimiter
        if token:
            params["continuation-token"] = token
        elif start_after:
            params["start-after"] = start_after
        if max_keys:
            params["max-keys"] = str(max_keys)
        # Percent-encoded as SigV4 signs it (a space is %20, never '+').
        query = urlencode(sorted(params.items()), quote_via=quote, safe="-_.~")
        r = self._send("GET", bucket, "", b"", {}, "ListObjectsV2", query=query)
        root = _xml(r.content)
        if root is None or _local(root.tag) != "ListBucketResult":
            raise _unreadable(r, "ListObjectsV2")
        encoded = _child_text(root, "EncodingType") == "url"
        token, truncated = None, False
        prefixes, objects = [], []
        for el in root:
            tag = _local(el.tag)
            if tag == "Contents":
                f = {_local(c.tag): c.text or "" for c in el}
                key = unquote_plus(f.get("Key", "")) if encoded else f.get("Key", "")
                mtime = datetime.fromisoformat(f["LastModified"]).timestamp() if f.get("LastModified") else 0.0
                objects.append((key, int(f.get("Size") or 0), f.get("ETag", "").strip('"'), mtime))
            elif tag == "CommonPrefixes":
                p = _child_text(el, "Prefix")
                prefixes.append(unquote_plus(p) if encoded else p)
            elif tag == "NextContinuationToken":
                token = el.text
            elif tag == "IsTruncated":
                truncated = (el.text or "").strip().lower() == "true"
        return prefixes + objects, (token if truncated and token else None)

    def _send(self, method: str, bucket: str, key: str, body: bytes, headers: dict, op: str, query: str = "",
              stream: bool = False):
        """One signed request (``headers``: names lower-case); its reply, whose body is
        read already unless ``stream``."""
        path = f"{self._conns.base_path}/{bucket}/{quote(key, safe='/~')}"
        creds = self._creds.get_frozen_credentials() if self._creds is not None else None
        if creds is None:
            raise botocore.exceptions.NoCredentialsError()
        signed = self._signer.sign(method, self._conns.host, path, query, headers, creds)
        with self._lock:
            self.sent += 1
        r = self._conns.request(method, f"{path}?{query}" if query else path, signed, body)
        if not 200 <= r.status < 300:
            raise _client_error(r, op, _xml(r.content))
        if not stream:
            r.content  # noqa: B018 - read whole, so that the connection is free again
        return r


def _proxied(url: str) -> bool:
    """True when the environment sends requests to ``url`` through a proxy."""
    u = urlsplit(url)
    return u.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(u.hostname or "")


def _reply(r) -> dict:
    """The fields of a HEAD or GET reply under the names botocore's parsed reply uses."""
    h = r.headers  # names lower-case
    out: dict = {"ETag": h.get("etag", ""), "ContentType": h.get("content-type", ""),
                 "Metadata": {k[11:]: v for k, v in h.items() if k.startswith("x-amz-meta-")}}
    if "content-length" in h:
        out["ContentLength"] = int(h["content-length"])
    if "content-range" in h:
        out["ContentRange"] = h["content-range"]
    if h.get("last-modified"):
        out["LastModified"] = parsedate_to_datetime(h["last-modified"])
    return out


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _child_text(el, name: str) -> str:
    for c in el:
        if _local(c.tag) == name:
            return c.text or ""
    return ""


def _xml(body: bytes):
    if not body:
        return None
    try:
        return ET.fromstring(body)
    except ET.ParseError:
        return None


def _unreadable(r, op: str) -> botocore.exceptions.ClientError:
    """A 2xx reply without the XML it should carry: worth another try, like a 500."""
    return botocore.exceptions.ClientError(
        {"Error": {"Code": "InternalError", "Message": f"unreadable {op} reply"},
         "ResponseMetadata": {"HTTPStatusCode": r.status}}, op)


def _client_error(r, op: str, root) -> botocore.exceptions.ClientError:
    """The ClientError botocore would raise for this reply."""
    fields = {_local(c.tag): c.text or "" for c in root} if root is not None else {}
    err = {"Code": fields.get("Code") or str(r.status), "Message": fields.get("Message", "")}
    return botocore.exceptions.ClientError(
        {"Error": err, "ResponseMetadata": {"HTTPStatusCode": r.status, "HTTPHeaders": dict(r.headers)}}, op)
