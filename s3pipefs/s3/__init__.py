"""The S3 boundary: every request the project sends goes through this package.

Nothing above it imports boto3 or botocore. ``store.py`` holds the client, the error
translation and the requests; ``fastpath.py`` the plain-HTTP path for small repeated
requests; ``models.py`` the cached loading of botocore's service models.
"""
from s3pipefs.s3.store import ObjectInfo, Store, b64, translate

__all__ = ["ObjectInfo", "Store", "b64", "translate"]
