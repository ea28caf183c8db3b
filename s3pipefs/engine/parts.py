"""Part sizes: S3's multipart limits, the one rule that fits an object into them, and
the default size for each use.

S3 allows at most 10,000 parts, and every part but the last must be at least 5 MiB.
``part_size`` grows the size a caller wants until ``size`` fits; a part size that holds
the whole object is left as it is (one part, or one PUT, has no minimum).
"""
from __future__ import annotations

import math

from s3pipefs.config import MiB

MAX_PARTS = 10_000
MIN_PART = 5 * MiB

# Multipart upload parts (cp --object, sync's uploads): 32 MiB keeps workers + 1 parts in
# memory under 300 MiB with 8 workers, and a 300 GiB file within 10,000 parts.
UPLOAD_PART = 32 * MiB
# UploadPartCopy parts (server-side copies over 5 GB): 512 MiB copies a 5 TiB object in
# ~10,000 parts and a 6 GB one still in 12 parallel parts.
COPY_PART = 512 * MiB
# Ranged GETs (object downloads, http(s) sources): large enough that a request's latency
# is amortised on loopback and WAN, small enough that workers + 1 of them in flight stay
# well under 100 MiB.
READ_RANGE = 8 * MiB


def part_size(size: int | None, wanted: int) -> int:
    """``wanted`` grown (MiB-aligned) so that ``size`` bytes fit into 10,000 parts of at
    least 5 MiB; ``size`` None (a pipe) is assumed to need several parts."""
    need = max(wanted, MIN_PART if size is None or size > wanted else 1)
    if size is not None:
        need = max(need, math.ceil(size / MAX_PARTS))
    return math.ceil(need / MiB) * MiB if need > MiB else need
