"""Every knob, in frozen dataclasses, with the memory and disk bounds they imply.

Bounds (see docs/tuning.md):

* Writer staging disk  <= (max(workers, max_inflight) + 2) * segment_size
  one segment being filled, up to the adaptive limit uploading (``workers`` to begin
  with; ``max_inflight`` at most), one queued (the backpressure slot); one more for a
  mount's writer, which keeps a full segment unsealed (writable).
* Writer memory        ~  uploads in flight * 1 MiB (segments stream from their staging files).
* A mount's writers share one staging budget and upload pool instead (engine/budget.py,
  the mount options ``write_budget`` and ``upload_threads``; docs/tuning.md).
* Reader memory        <= read_ahead + cache_size + one unit
  A reader fetches and verifies whole segments (streams) or ``block_size`` ranges
  (plain objects); ``min(prefetch, read_ahead // unit)`` units are in flight to begin
  with. Adaptive concurrency adds requests by splitting units into ranged parts (no more
  memory) or, for units too small to split, fetching more of them, within read_ahead.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field, replace

from s3pipefs.errors import UsageError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}


def parse_size(text: str | int, default_unit: str = "") -> int:
    """'64M' -> 67108864. Suffixes K/M/G/T are binary; a bare number uses default_unit."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise UsageError(f"not a size: {text!r} (use e.g. 64M, 1G, 512K)")
    number, unit, _ = m.groups()
    unit = (unit or default_unit).lower()
    value = int(float(number) * _UNITS[unit])
    return value


def parse_duration(text: str | float) -> float:
    """'60', '60s', '2m', '1h' -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", str(text))
    if not m:
        raise UsageError(f"not a duration: {text!r} (use e.g. 30s, 2m)")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    return float(m.group(1)) * scale


def default_staging_dir() -> str:
    # /dev/shm would be faster but is usually small; the temp dir is the safe default.
    return os.environ.get("TMPDIR") or tempfile.gettempdir()


@dataclass(frozen=True)
class S3Config:
    """Where S3 is and how to talk to it. Credentials come from the AWS chain only."""

    endpoint_url: str | None = None
    profile: str | None = None
    region: str | None = None
    # Attempts per request, the first included, for transient errors (the store's retry
    # policy, s3/retry.py; a throttled request gets 2 * max_attempts + 2).
    max_attempts: int = 5
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    # Connections in the pool; sized to the worker count by the engine.
    max_pool_connections: int = 32
    # Path-style addressing works with every S3-compatible server.
    path_style: bool = True
    # Payload bytes a second through this store, up and down together (s3/bandwidth.py); 0: no limit.
    bwlimit: int = 0


@dataclass(frozen=True)
class TransferConfig:
    """Sizes, parallelism and timeouts of the engine."""

    # 16 MiB: measured best for 1 GiB put and cat against 8 and 32 MiB (docs/tuning.md);
    # small enough that a seek or a live reader waits for little, big enough that request
    # overhead stays under a few percent.
    segment_size: int = 16 * MiB
    workers: int = 8
    staging_dir: str = field(default_factory=default_staging_dir)
    # Reader: at most ``prefetch`` units and ``read_ahead`` bytes fetched ahead of the
    # read position, and ``cache_size`` bytes of verified units kept for re-reads.
    prefetch: int = 8
    read_ahead: int = 128 * MiB
    cache_size: int = 32 * MiB
    # Adaptive concurrency (engine/adaptive.py): requests in flight per transfer rise from
    # the configured start (workers; a reader's window) toward this while the network, not
    # the CPU, bounds throughput. At most the start (0): fixed, as configured.
    max_inflight: int = 32
    # Range size for plain objects (no per-range checksum exists to verify against).
    block_size: int = 8 * MiB
    # Attempts for a stream segment's or an object block's request, instead of
    # S3Config.max_attempts: a transfer's data may be given more (or fewer) than the rest.
    tries: int = 5
    # Live follow: poll interval, and how long a silent writer may stay silent. A follower
    # whose stream does not grow doubles its interval up to poll_max (a new segment is then
    # seen within poll_max plus one request), and polls every poll_interval again once it grows.
    poll_interval: float = 0.5
    poll_max: float = 0.8
    follow_timeout: float = 60.0
    # Writer: heartbeat into the manifest at least this often while uploading.
    heartbeat_interval: float = 10.0
    # Bounded visibility lag: bytes a writer has held this long without publishing them go
    # out in a short segment, so readers elsewhere see a slow writer. 0: whole segments only.
    flush_interval: float = 1.0
    # A writer whose heartbeat is older than this is dead and may be taken over.
    stale_after: float = 60.0
    verbose: bool = False

    def with_(self, **kw) -> "TransferConfig":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def validate(self) -> "TransferConfig":
        if self.segment_size < 1 * KiB:
            raise UsageError(f"segment size {self.segment_size} bytes is too small (minimum 1K; sizes take K, M, G suffixes)")
        if self.segment_size > 5 * GiB:
            raise UsageError("segment size over 5G: S3 cannot store a single object that large")
        if not 1 <= self.workers <= 256:
            raise UsageError(f"workers must be between 1 and 256, not {self.workers}")
        if self.flush_interval < 0:
            raise UsageError(f"flush interval must be >= 0, not {self.flush_interval}")
        if not 0 <= self.max_inflight <= 256:
            raise UsageError(f"max inflight must be between 0 and 256, not {self.max_inflight}")
        if self.prefetch < 1 or self.cache_size < 0 or self.read_ahead < 1:
            raise UsageError("prefetch and read_ahead must be >= 1 and cache_size >= 0")
        return self

    @property
    def upload_cap(self) -> int:
        """The most segments one writer of its own uploads at once (adaptive concurrency's cap)."""
        return max(self.workers, self.max_inflight)

    @property
    def staging_bound(self) -> int:
        return (self.upload_cap + 2) * self.segment_size

    @property
    def reader_memory_bound(self) -> int:
        return self.read_ahead + self.cache_size + self.segment_size
