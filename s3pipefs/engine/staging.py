"""Private staging of segments on local disk (or tmpfs) before upload.

Each writer gets its own ``mkdtemp`` directory (mode 0700) under the configured staging
path; segment files are created 0600. A full or unwritable staging disk becomes a
StagingError carrying the OS errno (ENOSPC, EACCES, ...) and naming the path.

Each staged file reports the disk it holds to ``charge`` (a mount's shared budget,
engine/budget.py): bytes written add to it, holes do not, and removing the file gives
them back.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from typing import Callable, Iterator

from s3pipefs.checksum import crc32
from s3pipefs.errors import StagingError

_ZEROS = memoryview(bytes(1 << 20))
_READ_BACK = 1 << 20  # bytes per read when a patched segment is checksummed again


def zeros(n: int) -> Iterator[memoryview]:
    """``n`` zero bytes in chunks of at most 1 MiB, without allocating them."""
    while n > 0:
        chunk = _ZEROS[:min(n, len(_ZEROS))]
        n -= len(chunk)
        yield chunk


def _no_charge(_nbytes: int) -> None:
    pass


class StagingDir:
    def __init__(self, root: str, charge: Callable[[int], None] = _no_charge):
        self.root = root
        self._charge = charge
        try:
            os.makedirs(root, exist_ok=True)
            self.path = tempfile.mkdtemp(prefix="s3pipefs-", dir=root)  # 0700 by construction
        except OSError as e:
            raise StagingError(f"staging dir {root}: {e.strerror}", e.errno) from None
        os.chmod(self.path, 0o700)

    def create(self, name: str) -> "StagedFile":
        return StagedFile(os.path.join(self.path, name), self._charge)

    def cleanup(self) -> None:
        try:
            os.rmdir(self.path)  # the usual case: each staged file was removed already
        except OSError:
            shutil.rmtree(self.path, ignore_errors=True)


class _Held:
    """Bytes a pending file or segment holds, told to ``charge`` (a mount's shared
    budget, engine/budget.py) as they come and go."""

    def __init__(self, charge: Callable[[int], None]):
        self._charge = charge
        self.held = 0  # bytes charged

    def _hold(self, nbytes: int) -> None:
        if nbytes:
            self.held += nbytes
            self._charge(nbytes)


class StagedFile(_Held):
    """A private file holding one segment until it is sealed, and the CRC32 of its bytes.

    Appended bytes are checksummed from memory as they arrive, so the upload's checksum
    also covers the trip through the staging disk, and the file is not read twice. Zeros
    appended to fill a hole extend the file without writing it (sparse). A write over
    bytes already there (``patch``) or a ``cut`` makes that running CRC32 stale: the file
    is then read back once (``read_back``, from the page cache) before it is sealed.
    """

    def __init__(self, path: str, charge: Callable[[int], None] = _no_charge):
        super().__init__(charge)  # held: the bytes written (holes take no disk)
        self.path = path
        self.size = 0
        self.crc = 0
        self.patched = False  # crc is stale: read_back before sealing
        # Kept by the writer for the stream's SHA-256: its state at this segment's first
        # byte, and whether this segment's bytes still have to be fed to it at seal; and
        # when its first byte came (monotonic), for the timed seal.
        self.hash_before = None
        self.rehash = False
        self.since = 0.0
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise _staging_error(path, e) from None

    def append(self, data) -> None:
        view = memoryview(data)
        if not self.patched:
            self.crc = crc32(view, self.crc)
        self._pwrite(view, self.size)
        self.size += len(view)
        self._hold(len(view))

    def append_zeros(self, n: int) -> None:
        """Extend by ``n`` zero bytes: a hole in the staging file, read back as zeros."""
        if not self.patched:
            for chunk in zeros(n):
                self.crc = crc32(chunk, self.crc)
        try:
            os.ftruncate(self.fd, self.size + n)
        except OSError as e:
            raise _staging_error(self.path, e) from None
        self.size += n

    def patch(self, pos: int, data) -> None:
        """Overwrite bytes already staged (``pos + len(data) <= size``)."""
        view = memoryview(data)
        assert 0 <= pos and pos + len(view) <= self.size, (pos, len(view), self.size)
        self.patched = True
        self._pwrite(view, pos)

    def cut(self, size: int) -> None:
        """Drop the bytes from ``size`` on."""
        assert 0 <= size <= self.size, (size, self.size)
        try:
            os.ftruncate(self.fd, size)
        except OSError as e:
            raise _staging_error(self.path, e) from None
        self.size = size
        self.patched = True
        self._hold(min(self.held, size) - self.held)

    def read_back(self, feed: Callable[[bytes], object] | None = None) -> None:
        """Checksum the staged bytes again from the file, handing each chunk to ``feed``
        too (the stream's hash): after a patch or cut, or when a patch of an earlier
        segment left the stream hash behind this one."""
        crc = 0
        for chunk in self._chunks(_READ_BACK):
            crc = crc32(chunk, crc)
            if feed is not None:
                feed(chunk)
        self.crc = crc
        self.patched = False

    def contents(self) -> bytes:
        """Every staged byte in one buffer (a small file's body, sent from memory), with
        the CRC32 brought up to date when a patch made it stale."""
        parts = list(self._chunks(max(1, self.size)))
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if self.patched:
            self.crc = crc32(data)
            self.patched = False
        return data

    def _chunks(self, most: int):
        """The staged bytes in order, read from the file ``most`` at a time."""
        pos = 0
        try:
            while pos < self.size:
                chunk = os.pread(self.fd, min(most, self.size - pos), pos)
                if not chunk:
                    raise OSError(errno.EIO, f"staging file ended at {pos} of {self.size} bytes")
                yield chunk
                pos += len(chunk)
        except OSError as e:
            raise _staging_error(self.path, e) from None

    def _pwrite(self, view: memoryview, pos: int) -> None:
        try:
            while view:
                n = os.pwrite(self.fd, view, pos)
                view = view[n:]
                pos += n
        except OSError as e:
            raise _staging_error(self.path, e) from None

    def read(self, offset: int, size: int) -> bytes:
        """Bytes already written, for a reader in the writer's process."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                return os.pread(fd, size, offset)
            finally:
                os.close(fd)
        except OSError as e:
            raise _staging_error(self.path, e) from None

    def seal(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        """Delete the file and give back what it held; harmless when done already."""
        self.seal()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._hold(-self.held)


class HeldInMemory(_Held):
    """A small pending file's bytes kept in memory (engine/filewriter.py), with the
    interface of a StagedFile that the writer uses while the file is pending (no path,
    no seal): a file that closes small never touches the staging disk
    (no directory, file, unlink and rmdir for each of a tree's thousands of files). Its
    bytes, zeros of holes too, are charged as a staged file's are; the writer moves them
    to a StagedFile (``contents``) once they outgrow what it keeps in memory."""

    def __init__(self, charge: Callable[[int], None] = _no_charge):
        super().__init__(charge)
        self._buf = bytearray()
        self.crc = 0
        self.patched = False

    @property
    def size(self) -> int:
        return len(self._buf)

    def append(self, data) -> None:
        view = memoryview(data)
        if not self.patched:
            self.crc = crc32(view, self.crc)
        self._buf += view
        self._hold(len(view))

    def append_zeros(self, n: int) -> None:
        self.append(bytes(n))

    def patch(self, pos: int, data) -> None:
        view = memoryview(data)
        assert 0 <= pos and pos + len(view) <= self.size, (pos, len(view), self.size)
        self.patched = True
        self._buf[pos:pos + len(view)] = view

    def cut(self, size: int) -> None:
        assert 0 <= size <= self.size, (size, self.size)
        del self._buf[size:]
        self.patched = True
        self._hold(size - self.held)

    def read_back(self, feed: Callable[[bytes], object] | None = None) -> None:
        data = self.contents()  # (the CRC32 brought up to date)
        if feed is not None:
            feed(data)

    def contents(self) -> bytes:
        data = bytes(self._buf)
        if self.patched:
            self.crc = crc32(data)
            self.patched = False
        return data

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self._buf[offset:offset + size])

    def remove(self) -> None:
        self._buf = bytearray()
        self._hold(-self.held)


def _staging_error(path: str, e: OSError) -> StagingError:
    if e.errno == errno.ENOSPC:
        return StagingError(f"staging dir {os.path.dirname(path)} is full (no space left on device)", e.errno)
    return StagingError(f"staging file {path}: {e.strerror}", e.errno)
