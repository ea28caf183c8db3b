"""Holes and writes into the unsealed tail, through a real mount with the real tools.

Each tool runs twice, once into a local directory and once into the mount, and the
bytes must be identical: zip and python's zipfile (they seek back to patch a member's
header), ``cp --sparse=always`` and ``zstd -d`` (zero runs become forward seeks and a
final ftruncate or one-byte write), ``dd seek=N`` into a new file, ``truncate -s`` and
``fallocate -l``. A write into sealed data is refused (ESPIPE) and changes nothing. A
file opened for reading and writing (zip's temporary file, zipfile's archive) keeps
all it wrote writable until close, uploaded or not; what fsync published never changes.
The mounts use 1 MiB segments, so every archive here spans several of them.
"""
from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from s3pipefs.engine import manifests
from tests.fs_fixtures import tool, wait_for

pytestmark = pytest.mark.fuse
MiB = 1 << 20


def sh(cmd: str, cwd=None, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run(["bash", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        pytest.fail(f"`{cmd}` failed ({r.returncode}): {r.stderr}")
    return r


def md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while b := f.read(MiB):
            h.update(b)
    return h.hexdigest()


def same_on_both(local: Path, mounted: Path, cmd: str, outputs: list[str]) -> None:
    """Run ``cmd`` with {out} set to a local directory, then to a directory of the mount:
    every file in ``outputs`` comes out byte for byte the same."""
    local.mkdir(parents=True, exist_ok=True)
    mounted.mkdir(parents=True, exist_ok=True)
    for out in (local, mounted):
        sh(cmd.format(out=out))
    for name in outputs:
        assert md5(mounted / name) == md5(local / name), f"{cmd}: {name} differs"
        assert (mounted / name).stat().st_size == (local / name).stat().st_size


def source_tree(root: Path, seed: int = 5) -> Path:
    """Files of assorted sizes, compressible and not, ~4 MiB in all: the archives of it
    cross several 1 MiB segments, with member headers just before a boundary."""
    rnd = random.Random(seed)
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(60):
        n = rnd.choice([100, 5000, 40_000, 90_000])
        data = rnd.randbytes(n) if i % 2 else (b"line %d of a text file\n" % i) * (n // 20)
        (src / ("sub" if i % 3 == 0 else "") / f"f{i:02}.bin").write_bytes(data)
    (src / "big-but-in-one-segment.bin").write_bytes(rnd.randbytes(900_000))
    (src / "empty").write_bytes(b"")
    t = 1_600_000_000
    for p in src.rglob("*"):
        os.utime(p, (t, t))  # the archives record mtimes: the same for both runs
    return src


def test_zip_and_python_zipfile_patch_headers_in_the_unsealed_tail(mounter, bucket, tmp_path):
    tool("zip")
    tool("unzip")
    m = mounter(bucket)
    src = source_tree(tmp_path)
    # zip writes its archive to a temporary file beside it, seeking back after each member
    # to write its sizes and CRC into the local header, then renames it into place.
    same_on_both(tmp_path / "local", m / "zip", f"cd {src} && zip -q -r -X {{out}}/a.zip .", ["a.zip"])
    assert sh(f"unzip -tq {m / 'zip' / 'a.zip'}").returncode == 0
    # zipfile seeks back to each member's header too (its output is seekable).
    script = """
import os, sys, zipfile
src, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(os.path.join(out, "p.zip"), "w", zipfile.ZIP_DEFLATED) as z:
    for root, dirs, files in sorted(os.walk(src)):
        for name in sorted(files):
            path = os.path.join(root, name)
            z.write(path, os.path.relpath(path, src))
    with z.open(zipfile.ZipInfo("streamed.txt", (2020, 1, 2, 3, 4, 6)), "w") as f:
        for i in range(20000):
            f.write(b"written through ZipFile.open %d\\n" % i)
"""
    (tmp_path / "z.py").write_text(script)
    same_on_both(tmp_path / "local", m / "zip", f"{sys.executable} {tmp_path / 'z.py'} {src} {{out}}", ["p.zip"])
    with zipfile.ZipFile(m / "zip" / "p.zip") as z:
        assert z.testzip() is None and len(z.namelist()) == 63


def test_zip_members_longer_than_a_segment_are_patched_in_uploaded_segments(mounter, bucket, tmp_path):
    """zip's temporary file and zipfile's archive are opened for reading and writing: all
    they write stays writable until close, so the header of a member spanning several
    segments (already uploaded when it is patched) is written as on a local disk. Through
    a pipe, zip writes no header to patch at all."""
    tool("zip")
    tool("unzip")
    m = mounter(bucket)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a-small.txt").write_bytes(b"a small member before the big one\n" * 100)
    (src / "five-mib.bin").write_bytes(random.Random(9).randbytes(5 * MiB))  # incompressible
    (src / "z-after.txt").write_bytes(b"and one after it\n" * 300)
    for p in src.iterdir():
        os.utime(p, (1_600_000_000, 1_600_000_000))
    same_on_both(tmp_path / "local", m / "zip", f"cd {src} && zip -q -r -X {{out}}/a.zip .", ["a.zip"])
    assert sh(f"unzip -tq {m / 'zip' / 'a.zip'}").returncode == 0
    script = """
import random, sys, zipfile
src, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(out + "/p.zip", "w", zipfile.ZIP_DEFLATED) as z:
    z.write(src + "/a-small.txt", "a-small.txt")
    z.write(src + "/five-mib.bin", "five-mib.bin")
    with z.open(zipfile.ZipInfo("streamed.bin", (2020, 1, 2, 3, 4, 6)), "w") as f:
        rnd = random.Random(11)
        for _ in range(48):
            f.write(rnd.randbytes(64 * 1024))
"""
    (tmp_path / "z.py").write_text(script)
    same_on_both(tmp_path / "local", m / "zip", f"{sys.executable} {tmp_path / 'z.py'} {src} {{out}}", ["p.zip"])
    with zipfile.ZipFile(m / "zip" / "p.zip") as z:
        assert z.testzip() is None and len(z.namelist()) == 3
    assert (m / "zip" / "p.zip").stat().st_size > 8 * MiB  # the members span many segments
    assert "refused" not in m.log_text()
    sh(f"cd {src} && zip -q -r -X - . | cat > {m / 'piped.zip'}")
    assert sh(f"unzip -tq {m / 'piped.zip'}").returncode == 0


def test_an_rdwr_file_publishes_nothing_before_close_and_readers_here_read_its_patches(
        mounter, bucket, tmp_path, store):
    """A file open for reading and writing: its uploaded segments are named by no manifest
    (readers elsewhere see nothing) until close; a reader on the same mount reads every
    byte it holds, patched ones as patched."""
    m = mounter(bucket, flush_interval="0.3")
    data = bytearray(random.Random(12).randbytes(4 * MiB + 10))
    fd = os.open(m / "rw.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        assert wait_for(lambda: len([o for o in store.list(bucket, "rw.bin/") if o.key[-1].isdigit()]) >= 2)
        time.sleep(1.0)  # past the flush interval: still unpublished
        manifest = manifests.load(store, bucket, "rw.bin/").manifest
        assert manifest.total_size == 0 and not manifest.completed
        for offset, patch in ((10, b"PATCHED"), (MiB - 2, b"across"), (3 * MiB, b"third")):
            assert os.pwrite(fd, patch, offset) == len(patch)
            data[offset:offset + len(patch)] = patch
        assert (m / "rw.bin").read_bytes() == bytes(data)  # another descriptor, this mount
    finally:
        os.close(fd)
    assert (m / "rw.bin").read_bytes() == bytes(data)
    other = mounter(bucket)
    assert (other / "rw.bin").read_bytes() == bytes(data)
    assert "OK" in sh(f"{sys.executable} -m s3pipefs verify s3://{bucket}/rw.bin").stdout


def test_an_rdwr_file_refuses_writes_into_what_fsync_published(mounter, bucket, tmp_path):
    m = mounter(bucket)
    rnd = random.Random(13)
    first, then = rnd.randbytes(2 * MiB + 100), rnd.randbytes(3 * MiB)
    fd = os.open(m / "f.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, first)
        os.fsync(fd)  # published: never changes again
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"XXXX", 1000)
        assert e.value.errno == errno.ESPIPE
        os.write(fd, then)
        os.pwrite(fd, b"held", len(first) + 10)  # written since the fsync: still writable
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"XXXX", len(first) - 2)  # across the published end: refused whole
        assert e.value.errno == errno.ESPIPE
    finally:
        os.close(fd)
    assert (m / "f.bin").read_bytes() == first + then[:10] + b"held" + then[14:]
    assert wait_for(lambda: "the first 2097252 bytes are published" in m.log_text(), 5)
    assert "ESPIPE" in m.log_text()


def test_sparse_and_seeking_writers_store_their_holes_as_zeros(mounter, bucket, tmp_path):
    tool("zstd")
    m = mounter(bucket)
    rnd = random.Random(3)
    # A sparse source: data, holes over whole segments, data, and a hole at the end.
    sparse = tmp_path / "sparse.img"
    with open(sparse, "wb") as f:
        for off, n in ((0, 70_000), (3 * MiB + 5, 200_000), (6 * MiB, 4096)):
            f.seek(off)
            f.write(rnd.randbytes(n))
        f.truncate(9 * MiB + 17)
    out = m / "out"
    out.mkdir()
    sh(f"cp --sparse=always {sparse} {out / 'cp.img'}")
    assert md5(out / "cp.img") == md5(sparse)
    # zstd -d writes runs of zeros as forward seeks, then one byte at the end.
    sh(f"zstd -q -f {sparse} -o {tmp_path / 'sparse.zst'}")
    same_on_both(tmp_path / "local", out, f"zstd -q -d -f {tmp_path / 'sparse.zst'} -o {{out}}/z.img", ["z.img"])
    assert md5(out / "z.img") == md5(sparse)
    # dd seek=N into a new file: ftruncate to N blocks, then writes there.
    (tmp_path / "chunk").write_bytes(rnd.randbytes(3 * 65536))
    same_on_both(tmp_path / "local", out,
                 f"dd if={tmp_path / 'chunk'} of={{out}}/dd.img bs=64K seek=40 status=none", ["dd.img"])
    # truncate -s and fallocate -l grow a new or a closed file with zeros.
    same_on_both(tmp_path / "local", out,
                 "truncate -s 2M {out}/t.img && printf data >> {out}/t.img && truncate -s +1500K {out}/t.img"
                 " && fallocate -l 3M {out}/fa.img && fallocate -l 1M {out}/fa.img"
                 " && printf x >> {out}/fa.img && fallocate -o 4M -l 1M {out}/fa.img",
                 ["t.img", "fa.img"])
    assert (out / "fa.img").stat().st_size == 5 * MiB


def test_a_writer_cuts_and_rewrites_its_unsealed_tail(mounter, bucket, tmp_path):
    """ftruncate and pwrite by the writing process, and truncate(2) by path from another,
    within the unsealed tail; posix_fallocate past the end. The same program run on a
    local directory gives the same bytes."""
    m = mounter(bucket)
    script = """
import os, sys
rnd = __import__("random").Random(4)
path = os.path.join(sys.argv[1], "w.bin")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, rnd.randbytes(2_500_000))
os.ftruncate(fd, 2_200_000)                 # cut the tail
os.pwrite(fd, b"patched", 1_800_000)        # rewrite bytes in it
os.lseek(fd, 0, os.SEEK_END)
os.write(fd, rnd.randbytes(1_000_000))
os.truncate(path, 3_000_000)                # by path: this mount's writer does it
os.posix_fallocate(fd, 0, 3_500_000)        # grows with zeros
os.pwrite(fd, b"at the end", 3_500_000)
os.close(fd)
"""
    (tmp_path / "w.py").write_text(script)
    same_on_both(tmp_path / "local", m / "w", f"{sys.executable} {tmp_path / 'w.py'} {{out}}", ["w.bin"])


def test_a_write_into_sealed_data_is_refused_and_the_file_is_unchanged(mounter, bucket, tmp_path):
    m = mounter(bucket)
    data = random.Random(6).randbytes(3 * MiB + 100)
    fd = os.open(m / "s.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        with pytest.raises(OSError) as e:  # the first segment was sealed when the third began
            os.pwrite(fd, b"XXXX", 1000)
        assert e.value.errno == errno.ESPIPE
        with pytest.raises(OSError) as e:
            os.ftruncate(fd, 1000)
        assert e.value.errno == errno.EOPNOTSUPP
        os.pwrite(fd, b"tail", len(data) - 4)  # the last segment's worth stays writable
    finally:
        os.close(fd)
    assert (m / "s.bin").read_bytes() == data[:-4] + b"tail"
    log = m.log_text()
    assert "write of 4 bytes at offset 1000 refused" in log and "sealed (uploaded) and never change" in log
    assert "ESPIPE" in log
