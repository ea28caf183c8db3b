"""CRC32 (the zlib/IEEE polynomial, the one S3's x-amz-checksum-crc32 uses), as fast as
this machine allows.

Every byte s3pipefs moves is CRC-checked once on each side, so the speed of this one
function shows in every put and cat. zlib's table-driven CRC32 runs at ~3 GB/s; ISA-L's
(the ``isal`` package) uses carry-less multiply instructions and runs an order of
magnitude faster with identical results. Both release the GIL on large buffers.
"""
from __future__ import annotations

try:
    from isal.isal_zlib import crc32
except ImportError:  # no wheel for this platform: same function, slower
    from zlib import crc32

__all__ = ["crc32"]
