"""Reading a stream this process is writing: every byte written so far, as a local file.

A Reader (reader.py) serves what the manifest names. A writer in the same process holds
more: bytes in its staged segments, sealed segments still uploading, and landed segments
no manifest names yet (the manifest thread publishes them a moment later; a replacement's
not before its commit, and under its staging prefix). A LiveReader reads through the
writer: bytes it holds from its staging files (StreamWriter.read_staged), landed segments
from S3 by a Reader over the writer's own layout of them (WriterPlan), so they are
verified, prefetched and cached as any read. A patchable writer (engine/writer.py) may
bring a landed segment back, patch it and upload it again: read_staged serves it while
it is away, and once it landed again (StreamWriter.rewrites) the Reader and its cache
start over, so a read that begins after a write returns the bytes it wrote.

A LiveReader never waits. Where nothing can be read yet (the end of what was written, or
a segment that landed while an earlier one still uploads) it returns b"", and the caller
decides whether to wait (StreamWriter.wait_written) or to call it the end. It is for one
writer: once that writer is closed, read the stream as stored (Engine.open_reader).
"""
from __future__ import annotations

from s3pipefs.config import TransferConfig
from s3pipefs.engine.reader import ReadBudget, Reader, WriterPlan
from s3pipefs.engine.writer import StreamWriter
from s3pipefs.s3 import ObjectStore


class LiveReader:
    """Reads of what ``writer`` has written so far: staged bytes from it, landed ones from S3."""

    def __init__(self, store: ObjectStore, cfg: TransferConfig, writer: StreamWriter,
                 budget: ReadBudget | None = None):
        self.writer = writer
        self._store, self._cfg, self._budget = store, cfg, budget
        self._open_landed()

    def _open_landed(self) -> None:
        self._rewrites = self.writer.rewrites
        self._plan = WriterPlan(self.writer)
        self._landed = Reader(self._store, self._cfg, self._plan, follow=False, budget=self._budget)

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (through a patchable writer never past a
        segment's end); b"" where nothing can be read now. Raises the writer's error once it failed or was aborted."""
        staged = self.writer.read_staged(offset, size)
        if staged is not None:
            return staged
        if self.writer.rewrites != self._rewrites:
            # A patched segment landed again (a patchable writer): what is cached is old.
            self._landed.close()
            self._open_landed()
        if offset >= self._plan.size:
            self._plan.refresh()
        i = self._plan.unit_at(offset)
        if i is not None and self.writer.patchable:
            # One segment at a time: the next may be staged again, patched (read_staged).
            unit = self._plan.units[i]
            size = min(size, unit.offset + unit.length - offset)
        return self._landed.read(offset, size)

    def close(self) -> None:
        self._landed.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
