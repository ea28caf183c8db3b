"""Every use of botocore's and urllib3's private attributes, each behind a version check.

Two things the project wants are not in botocore's public API:

* the credentials a client signs with (:func:`signer_credentials`), read to resolve them
  once at start-up and by the fast path (s3/fastpath.py) to sign its requests;
* urllib3's pool keyword ``blocksize`` in the client's HTTP session
  (:func:`http_session`, :func:`set_upload_blocksize`), so that a file body is sent in
  1 MiB read()+send() pairs instead of 16 KiB ones.

Each was verified on the botocore versions in :data:`VERIFIED_BOTOCORE` (botocore 1.44.18
with urllib3 2.8.0 when this was written). On any other version, or when an attribute is
not where it was, the first two functions raise :class:`Unavailable` and the caller falls back (the
credentials are asked of the session instead; the fast path stays off and botocore sends
everything), and the blocksize stays urllib3's default 16 KiB. Everything keeps working
through botocore.
"""
from __future__ import annotations

import botocore

# Inclusive (major, minor) range of botocore releases these attributes were checked on.
VERIFIED_BOTOCORE = ((1, 44), (1, 44))


class Unavailable(Exception):
    """This botocore was not verified, or the private attribute is not where it was."""


def _version(text: str) -> tuple[int, int] | None:
    parts = text.split(".")
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    return int(parts[0]), int(parts[1])


def verified(version: str | None = None) -> bool:
    """True when this botocore (or ``version``) is one the private attributes were checked on."""
    got = _version(version if version is not None else botocore.__version__)
    low, high = VERIFIED_BOTOCORE
    return got is not None and low <= got <= high


def _checked() -> None:
    if not verified():
        raise Unavailable(f"botocore {botocore.__version__} is not a version this was verified on")


def signer_credentials(client):
    """The refreshable Credentials the client's signer uses (None when it found none)."""
    _checked()
    signer = getattr(client, "_request_signer", None)
    if signer is None or not hasattr(signer, "_credentials"):
        raise Unavailable("the client's signer keeps no _credentials")
    return signer._credentials


def http_session(client):
    """The client's own URLLib3Session (its pools' keywords are set through it)."""
    _checked()
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    if not callable(getattr(session, "send", None)):
        raise Unavailable("the client's endpoint has no http_session")
    return session


def set_upload_blocksize(client, size: int) -> bool:
    """Make the client's connection pools send bodies ``size`` bytes per read()+send().
    True when it was set; False leaves urllib3's default."""
    try:
        session = http_session(client)
    except Unavailable:
        return False
    pool_kw = getattr(getattr(session, "_manager", None), "connection_pool_kw", None)
    if not isinstance(pool_kw, dict):
        return False
    pool_kw["blocksize"] = size
    return True
