"""The S3 boundary: every request the project sends goes through this package.

Nothing above it imports boto3 or botocore. ``interface.py`` states what the engine may
ask of an object store (``ObjectStore``); ``store.py`` is the botocore implementation
(client, error translation, requests), ``inmemory.py`` a faithful one in memory for fast
tests of the engine. ``retry.py`` holds the one retry policy and rate limiter every request
runs under; ``fastpath.py`` the plain-HTTP path for small repeated requests;
``internals.py`` every use of botocore's private attributes, behind a version check;
``models.py`` the cached loading of botocore's service models.
"""
from s3pipefs.s3.interface import ObjectInfo, ObjectStore, RequestOptions, b64
from s3pipefs.s3.store import Store, translate

__all__ = ["ObjectInfo", "ObjectStore", "RequestOptions", "Store", "b64", "translate"]
