"""A sync's options and its report."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from s3pipefs.engine.parts import UPLOAD_PART
from s3pipefs.s3 import RequestOptions


@dataclass
class SyncOptions:
    mode: str = "etag"
    delete: bool = False
    dry_run: bool = False
    filters: list = field(default_factory=list)
    workers: int = 16
    checkers: int = 16
    part_size: int = UPLOAD_PART
    allow_incomplete: bool = False
    # The source side's request options (its SSE-C key); None: the engine's, which are
    # always the destination's.
    source: RequestOptions | None = None
    # (index, count): only the relative paths of that shard (locations.shard_of); None: all.
    shard: tuple[int, int] | None = None
    # --files-from: only the entries these relative keys name (keylist.py); None: all.
    keys: list[str] | None = None


@dataclass
class Report:
    copied: int = 0
    skipped: int = 0
    deleted: int = 0
    failed: int = 0
    bytes: int = 0
    elapsed: float = 0.0
    requests: int = 0
    retries: int = 0
    throttles: int = 0
    dry_run: bool = False
    failures: list = field(default_factory=list)   # [(rel, message)]
    missing: list = field(default_factory=list)    # --files-from keys the source does not have
    actions: list = field(default_factory=list)    # dry run / verbose: [(verb, rel, reason)]
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict:
        e = max(self.elapsed, 1e-9)
        return {
            "copied": self.copied, "skipped": self.skipped, "deleted": self.deleted, "failed": self.failed,
            "bytes": self.bytes, "elapsed": round(self.elapsed, 3),
            "objects_per_second": round((self.copied + self.skipped) / e, 1),
            "bytes_per_second": round(self.bytes / e, 1), "requests": self.requests,
            "retries": self.retries, "throttles": self.throttles, "dry_run": self.dry_run,
            "failures": [{"path": r, "error": m} for r, m in self.failures],
            "missing": list(self.missing),
            "actions": [{"action": a, "path": r, "reason": why} for a, r, why in self.actions],
        }

    def summary(self) -> str:
        e = max(self.elapsed, 1e-9)
        verb = "would copy" if self.dry_run else "copied"
        dverb = "would delete" if self.dry_run else "deleted"
        return (f"{verb} {self.copied}, skipped {self.skipped}, {dverb} {self.deleted}, failed {self.failed}; "
                f"{_human(self.bytes)} in {self.elapsed:.1f}s ({_human(self.bytes / e)}/s, "
                f"{(self.copied + self.skipped) / e:.0f} objects/s); {self.requests} S3 requests"
                + (f", {self.retries} retries ({self.throttles} throttled)" if self.retries else "")
                + (f"; {len(self.missing)} listed keys not in the source" if self.missing else ""))


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
