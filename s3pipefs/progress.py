"""Progress display on stderr (tqdm), off unless asked for or stderr is a terminal."""
from __future__ import annotations

import sys


def human_size(n: float) -> str:
    """Bytes with a binary unit: "512 B", "1.5 KiB", "3.00 MiB"."""
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.2f} {unit}" if abs(n) < 10 else f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


class Progress:
    def __init__(self, desc: str, total: int | None = None, enabled: bool = False):
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                             file=sys.stderr, dynamic_ncols=True, mininterval=0.5, leave=True)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()
