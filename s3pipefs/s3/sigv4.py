"""AWS Signature Version 4 for the fast path's requests (s3/fastpath.py).

botocore's signer builds an ``AWSRequest``, walks its headers through several dict
wrappers and derives the signing key again for every request: about 0.2 ms of CPU, more
than the rest of a small request on the fast path costs. The algorithm itself is a
published, fixed recipe; this module is that recipe for the one shape of request the fast
path sends:

* the payload is never hashed (``UNSIGNED-PAYLOAD``, as the client is configured: every
  upload carries a Content-MD5 or x-amz-checksum-crc32 the server checks instead);
* every header the request carries is signed, as botocore signs them (none of the ones
  it leaves out are ever sent here), plus ``host``, ``x-amz-date``,
  ``x-amz-content-sha256`` and, with temporary credentials, ``x-amz-security-token``;
* the path and query string arrive already percent-encoded as S3 wants them in the
  canonical request (keys are never normalised: ``a//b`` and ``a/./b`` are keys).

The signing key (four HMACs) is kept per secret, day and region. ``tests/test_wire.py``
checks that a signature made here equals botocore's for the same request.
"""
from __future__ import annotations

import hashlib
import hmac
import threading
import time

UNSIGNED = "UNSIGNED-PAYLOAD"
ALGORITHM = "AWS4-HMAC-SHA256"


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


class Signer:
    """Signs requests for one region and service; thread-safe."""

    def __init__(self, region: str, service: str = "s3"):
        self.region, self.service = region, service
        self._keys: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()

    def _key(self, secret: str, day: str) -> bytes:
        with self._lock:
            key = self._keys.get((secret, day))
            if key is None:
                key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret).encode(), day), self.region), self.service),
                            "aws4_request")
                self._keys = {(secret, day): key}  # one day's key at a time
            return key

    def sign(self, method: str, host: str, path: str, query: str, headers: dict[str, str],
             creds, now: float | None = None) -> dict[str, str]:
        """``headers`` (names lower-case) with the signature's own headers added.

        ``creds``: frozen credentials (access_key, secret_key, token). ``path`` and
        ``query`` as sent on the request line, percent-encoded, the query's parameters
        sorted by name."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        day = stamp[:8]
        out = {**headers, "host": host, "x-amz-date": stamp, "x-amz-content-sha256": UNSIGNED}
        if creds.token:
            out["x-amz-security-token"] = creds.token
        names = sorted(out)
        signed = ";".join(names)
        canonical = "\n".join((method, path, query,
                               "".join(f"{n}:{' '.join(str(out[n]).split())}\n" for n in names),
                               signed, UNSIGNED))
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._key(creds.secret_key, day), to_sign.encode(), hashlib.sha256).hexdigest()
        out["authorization"] = (f"{ALGORITHM} Credential={creds.access_key}/{scope}, "
                                f"SignedHeaders={signed}, Signature={signature}")
        return out
