"""Private staging of segments on local disk (or tmpfs) before upload.

Each writer gets its own ``mkdtemp`` directory (mode 0700) under the configured staging
path; segment files are created 0600. A full or unwritable staging disk becomes a
StagingError carrying the OS errno (ENOSPC, EACCES, ...) and naming the path.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile

from s3pipefs.checksum import crc32
from s3pipefs.errors import StagingError


class StagingDir:
    def __init__(self, root: str):
        self.root = root
        try:
            os.makedirs(root, exist_ok=True)
            self.path = tempfile.mkdtemp(prefix="s3pipefs-", dir=root)  # 0700 by construction
        except OSError as e:
            raise StagingError(f"staging dir {root}: {e.strerror}", e.errno) from None
        os.chmod(self.path, 0o700)

    def create(self, name: str) -> "StagedFile":
        return StagedFile(os.path.join(self.path, name))

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class StagedFile:
    """An append-only private file holding one segment, and the CRC32 of what was given
    to it: taken from memory as the data arrives, so the upload's checksum also covers
    the trip through the staging disk (and the file is not read twice)."""

    def __init__(self, path: str):
        self.path = path
        self.size = 0
        self.crc = 0
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise _staging_error(path, e) from None

    def write(self, data) -> None:
        view = memoryview(data)
        self.crc = crc32(view, self.crc)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
                self.size += n
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
        self.seal()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _staging_error(path: str, e: OSError) -> StagingError:
    if e.errno == errno.ENOSPC:
        return StagingError(f"staging dir {os.path.dirname(path)} is full (no space left on device)", e.errno)
    return StagingError(f"staging file {path}: {e.strerror}", e.errno)
