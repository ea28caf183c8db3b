"""glibc malloc settings for a process that moves data in segment-sized buffers.

Every segment read arrives in a fresh bytes object of segment size (16 MiB by default).
With glibc's defaults such a buffer is mmapped or carved from a per-thread arena, and
freed memory goes back to the kernel soon after (its dynamic trim threshold), so the next
buffer page-faults its way in again: a 1 GiB ``cat`` took ~130,000 minor faults (~500 MB
of pages zeroed by the kernel) and peaked at ~320 MB RSS with eight download threads
each holding on to its own arena.

One arena, buffers up to 64 MiB from the heap, and freed heap kept for reuse (256 MiB in
a command, 64 MiB in a mount daemon, which should give memory back when idle): ~45,000
faults (the read-ahead window, touched once), ~190 MB peak RSS and ~0.15 s less kernel
CPU per GiB. Contention on the single arena costs nothing visible:
threads allocate little outside the GIL. Nothing here changes what memory is bounded by
(workers x segment size, docs/tuning.md), only how often the kernel hands it out.
"""
from __future__ import annotations

# mallopt(3) parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

_BUFFER_LIMIT = 64 << 20


def tune_malloc(keep: int = 256 << 20) -> bool:
    """Apply the settings (best before threads exist); ``keep`` is how much freed heap may
    stay with the process. False where there is no glibc mallopt."""
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (ImportError, OSError, AttributeError):  # not glibc (musl, macOS): defaults stay
        return False
    return all(mallopt(p, v) == 1 for p, v in ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, _BUFFER_LIMIT),
                                                (_M_TRIM_THRESHOLD, keep)))
