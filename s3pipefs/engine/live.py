"""Reading a stream this process is writing: every byte written so far, as a local file.

A Reader (reader.py) serves what the manifest names. A writer in the same process holds
more: bytes in its staged segments, sealed segments still uploading, and landed segments
no manifest names yet (the manifest thread publishes them a moment later; a replacement's
not before its commit, and under its staging prefix). A LiveReader reads through the
writer: bytes it holds from its staging files (StreamWriter.read_staged), landed segments
from S3 by a Reader over the writer's own layout of them (WriterPlan), so they are
verified, prefetched and cached as any read.

A LiveReader never waits. Where nothing can be read yet (the end of what was written, or
a segment that landed while an earlier one still uploads) it returns b"", and the caller
decides whether to wait (StreamWriter.wait_written) or to call it the end. It is for one
writer: once that writer is closed, read the stream as stored (Engine.open_reader).
"""
from __future__ import annotations

from s3pipefs import manifest as mf
from s3pipefs.config import TransferConfig
from s3pipefs.engine.reader import ReadBudget, Reader, StreamUnits
from s3pipefs.engine.writer import StreamWriter
from s3pipefs.s3 import ObjectStore


class WriterPlan:
    """The landed segments of a stream a writer of this process is writing (a Reader's plan)."""

    # Every unit named has landed: a missing segment is an error at once, not "not yet".
    complete = True

    def __init__(self, writer: StreamWriter):
        self.bucket, self.sse_key = writer.bucket, writer.sse_key  # the writer's SSE-C key reads its segments
        self.cipher = writer.cipher  # and its cipher decrypts them
        self.where = writer.where
        self._writer = writer
        self.units = StreamUnits(writer.prefix, mf.Layout())
        self.size = 0
        self.refresh()

    def refresh(self) -> None:
        prefix, layout = self._writer.landed()
        if layout.count > len(self.units) or prefix != self.units.prefix:
            self.units = StreamUnits(prefix, layout)
            self.size = self.units.size

    def unit_at(self, offset: int) -> int | None:
        return self.units.index_at(offset)

    def wait_grow(self, follow_timeout: float) -> None:  # the caller waits, on the writer
        return None


class LiveReader:
    """Reads of what ``writer`` has written so far: staged bytes from it, landed ones from S3."""

    def __init__(self, store: ObjectStore, cfg: TransferConfig, writer: StreamWriter,
                 budget: ReadBudget | None = None):
        self.writer = writer
        self._plan = WriterPlan(writer)
        self._landed = Reader(store, cfg, self._plan, follow=False, budget=budget)

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; b"" where nothing can be read now. Raises
        the writer's error once it failed or was aborted."""
        staged = self.writer.read_staged(offset, size)
        if staged is not None:
            return staged
        if offset >= self._plan.size:
            self._plan.refresh()
        return self._landed.read(offset, size)

    def close(self) -> None:
        self._landed.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
