"""Progress display on stderr (tqdm), off unless asked for or stderr is a terminal.

Sizes and rates are in binary units spelled as such (KiB, MiB, GiB): tqdm's own scaling
divides by 1024 but writes "MB". When the total is known (a complete stream, an object, a
file) the line shows the percentage and the time left:

    cat s3://b/disk.img:  42%|████▏     | 1.25 GiB/2.98 GiB [00:12<00:17, 103.2 MiB/s]
"""
from __future__ import annotations

import sys

KNOWN_TOTAL = "{desc}: {percentage:3.0f}%|{bar}| {size_n}/{size_total} [{elapsed}<{remaining}, {size_rate}]"
UNKNOWN_TOTAL = "{desc}: {size_n} [{elapsed}, {size_rate}]"


def human_size(n: float) -> str:
    """Bytes with a binary unit: "512 B", "1.50 KiB", "293.0 KiB"."""
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.2f} {unit}" if abs(n) < 10 else f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def _bar_class():
    from tqdm import tqdm

    class ByteBar(tqdm):
        """tqdm with our byte fields for bar_format (``format_dict`` is tqdm's public hook)."""

        @property
        def format_dict(self):
            d = super().format_dict
            rate = d.get("rate")
            if rate is None and d.get("elapsed"):
                rate = d["n"] / d["elapsed"]
            d.update(size_n=human_size(d["n"]), size_total=human_size(d["total"]) if d.get("total") else "?",
                     size_rate=f"{human_size(rate)}/s" if rate else "? B/s")
            return d

    return ByteBar


class Progress:
    def __init__(self, desc: str, total: int | None = None, enabled: bool = False):
        self._bar = None
        if enabled:
            self._bar = _bar_class()(total=total or None, desc=desc, unit="B",
                                     bar_format=KNOWN_TOTAL if total else UNKNOWN_TOTAL,
                                     file=sys.stderr, dynamic_ncols=True, mininterval=0.5, leave=True)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()
