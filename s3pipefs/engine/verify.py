"""verify: read every segment of a stream, check each against its checksum, then the
whole-stream digests (the SHA-256 of all bytes, and the chain over the segment CRC32s).
An encrypted stream's segments are also authenticated as they are read, and its digests
are keyed (engine/crypto.py): the chain starts from its seed, the SHA-256 is compared as
the manifest keeps it."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from s3pipefs import errors, manifest as mf
from s3pipefs.checksum import crc32


@dataclass
class VerifyReport:
    where: str
    size: int = 0
    segments: int = 0
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = f"{self.where}: {'OK' if self.ok else 'FAILED'}: {self.segments} segments, {self.size} bytes"
        lines = [head] + [f"  checked: {c}" for c in self.checked] + [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)


def verify_stream(engine, bucket: str, key: str, progress=lambda n: None) -> VerifyReport:
    entry = engine.stat(bucket, key)
    where = f"s3://{bucket}/{key.strip('/')}"
    if entry is None:
        raise errors.NotFound(f"{where}: no such stream or object")
    rep = VerifyReport(where)
    reader = engine.open_reader(bucket, key, follow=False, entry=entry)
    whole = hashlib.sha256()
    chain = ""
    try:
        if entry.kind == "stream":
            m = entry.manifest
            if not m.completed:
                rep.problems.append("stream is not complete")
            cipher = reader.plan.cipher
            if cipher is not None:
                chain = cipher.chain_seed
            for i, _ in enumerate(reader.plan.units):
                try:
                    data = reader.unit(i)  # verified against the segment's MD5, or raises
                except errors.S3PipeError as e:
                    rep.problems.append(str(e))
                    break
                whole.update(data)
                chain = mf.chain_next(chain, mf.crc32_bytes(crc32(data)))
                rep.segments += 1
                rep.size += len(data)
                progress(len(data))
            else:
                rep.checked.append(f"{rep.segments} segment checksums")
                if cipher is not None:
                    rep.checked.append(f"{rep.segments} segments authenticated (AES-256-GCM)")
                if m.sha256:
                    got = whole.hexdigest() if cipher is None else cipher.stream_digest(whole.hexdigest())
                    if got == m.sha256:
                        rep.checked.append(f"stream SHA-256 {whole.hexdigest()}")
                    else:
                        rep.problems.append(f"stream SHA-256 {got} != manifest {m.sha256}")
                if m.chain:
                    if chain == m.chain:
                        rep.checked.append("segment digest chain")
                    else:
                        rep.problems.append("segment digest chain does not match the manifest")
                if m.completed and rep.size != m.total_size:
                    rep.problems.append(f"{rep.size} bytes, manifest says {m.total_size}")
        else:
            for chunk in reader.chunks():
                rep.size += len(chunk)
                progress(len(chunk))
            rep.segments = 1
            rep.checked.append("object MD5 against its ETag" if reader.plan.info.plain_md5
                               else "object read whole (its ETag is not an MD5: no checksum to compare)")
    except errors.S3PipeError as e:
        rep.problems.append(str(e))
    finally:
        reader.close()
    return rep
