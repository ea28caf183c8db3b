"""Parsing of s3://bucket/key locations."""
from __future__ import annotations

from dataclasses import dataclass

from s3pipefs.errors import UsageError


@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str  # no leading slash; may be "" (the bucket root)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def stream_prefix(self) -> str:
        """The prefix holding the stream's segments and manifest."""
        return self.key.rstrip("/") + "/" if self.key else ""

    def child(self, name: str) -> "S3Url":
        base = self.key.rstrip("/")
        return S3Url(self.bucket, f"{base}/{name}" if base else name)


def is_s3(text: str) -> bool:
    return text.startswith("s3://")


def parse_s3url(text: str) -> S3Url:
    if not text.startswith("s3://"):
        raise UsageError(f"not an S3 URL: {text!r} (expected s3://bucket/key)")
    rest = text[5:]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise UsageError(f"no bucket in {text!r}")
    return S3Url(bucket, key)
