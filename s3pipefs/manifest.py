"""The on-S3 stream format: strict manifest parsing, rendering, and segment key naming.

A stream ``s3://B/P/NAME`` is the prefix ``P/NAME/`` holding segments
``000000000000001``, ``000000000000002``, ... and an INI file ``.manifest``. Section
``[s3pipe2]`` carries exactly the keys the s3pipe2 tool reads and writes; section
``[s3pipefs]`` carries ours. See docs/format.md for a worked example.

The parser trusts nothing: sizes are capped, numbers range-checked, the segment layout
must add up to the totals, and a format version newer than ours is refused.
"""
from __future__ import annotations

import configparser
import datetime as _dt
import re
from dataclasses import dataclass, field, replace

from s3pipefs.errors import ManifestError

MANIFEST_NAME = ".manifest"
SEGMENT_DIGITS = 15
MAX_SEGMENTS = 10**SEGMENT_DIGITS - 1
FORMAT_VERSION = 1
# Client-side encrypted streams (engine/crypto.py) are format 2: an s3pipefs that cannot
# decrypt them refuses them by their version instead of serving ciphertext.
ENCRYPTED_FORMAT = 2
NEWEST_FORMAT = ENCRYPTED_FORMAT
# A manifest is a few hundred bytes; appends add one layout run each. 1 MiB is generous
# and keeps a hostile manifest from costing memory.
MAX_MANIFEST_BYTES = 1 << 20
# S3 objects are at most 5 TiB; a stream of MAX_SEGMENTS such objects still fits in 2**63.
MAX_TOTAL_SIZE = 2**63 - 1
MAX_SEGMENT_SIZE = 5 * 1024**4
# Nanoseconds since the epoch that fit a signed 64-bit time (the year 2262).
MAX_MTIME_NS = 2**63 - 1
# Owners are 32-bit ids; (uid_t)-1 means "no change" to chown, so it is never an owner.
MAX_ID = 2**32 - 2
S3PIPE2_SECTION = "s3pipe2"
OWN_SECTION = "s3pipefs"
S3PIPE2_VERSION = "0.1"
_SEGMENT_RE = re.compile(r"^\d{15}$")


def segment_name(index: int) -> str:
    """The object name of segment ``index`` (1-based) within its stream prefix."""
    if not 1 <= index <= MAX_SEGMENTS:
        raise ManifestError(f"segment number {index} out of range 1..{MAX_SEGMENTS}")
    return f"{index:0{SEGMENT_DIGITS}d}"


def segment_index(name: str) -> int | None:
    """Inverse of segment_name; None for anything that is not a segment name."""
    if _SEGMENT_RE.match(name):
        n = int(name)
        return n if n >= 1 else None
    return None


@dataclass(frozen=True)
class Layout:
    """Segment sizes, run-length encoded: ((count, size), ...).

    Known for s3pipefs streams; s3pipe2 streams have variable segment sizes (its reads
    can be short) and get theirs from a listing.
    """

    runs: tuple[tuple[int, int], ...] = ()

    @classmethod
    def from_sizes(cls, sizes) -> "Layout":
        runs: list[list[int]] = []
        for s in sizes:
            if runs and runs[-1][1] == s:
                runs[-1][0] += 1
            else:
                runs.append([1, s])
        return cls(tuple((c, s) for c, s in runs))

    def append(self, size: int) -> "Layout":
        if self.runs and self.runs[-1][1] == size:
            return Layout(self.runs[:-1] + ((self.runs[-1][0] + 1, size),))
        return Layout(self.runs + ((1, size),))

    def truncate(self, count: int) -> "Layout":
        """The first ``count`` segments."""
        out = []
        for c, s in self.runs:
            if count <= 0:
                break
            take = min(c, count)
            out.append((take, s))
            count -= take
        return Layout(tuple(out))

    @property
    def count(self) -> int:
        return sum(c for c, _ in self.runs)

    @property
    def total(self) -> int:
        return sum(c * s for c, s in self.runs)

    def sizes(self):
        for c, s in self.runs:
            for _ in range(c):
                yield s

    def render(self) -> str:
        return ",".join(f"{c}x{s}" for c, s in self.runs)

    @classmethod
    def parse(cls, text: str) -> "Layout":
        text = text.strip()
        if not text:
            return cls()
        runs = []
        for part in text.split(","):
            m = re.fullmatch(r"\s*(\d{1,16})x(\d{1,16})\s*", part)
            if not m:
                raise ManifestError(f"bad layout run {part[:40]!r}")
            c, s = int(m.group(1)), int(m.group(2))
            if c < 1 or s > MAX_SEGMENT_SIZE:
                raise ManifestError(f"layout run {part[:40]!r} out of range")
            # Writers only ever end a stream with one empty segment (s3pipe2's EOF marker,
            # or an empty stream); a run of them is hostile or broken.
            if s == 0 and c > 1:
                raise ManifestError(f"layout run {part[:40]!r}: more than one empty segment")
            runs.append((c, s))
        return cls(tuple(runs))


@dataclass(frozen=True)
class Manifest:
    """One stream's manifest."""

    completed: bool = False
    num_segments: int = 0
    total_size: int = 0
    segment_size: int = 0  # bytes
    upload_began: str = ""
    upload_ended: str = ""
    s3pipe2_version: str = S3PIPE2_VERSION
    # s3pipefs section; absent (own=False) for streams written by s3pipe2.
    own: bool = True
    format: int = FORMAT_VERSION
    layout: Layout | None = None
    block_size: int = 0
    # SHA-256 of every byte of the stream (compare with `sha256sum`), set at completion
    # when the writer saw the whole stream (not after an append).
    sha256: str = ""
    # md5 chain over the segments' CRC32s: c_n = md5(c_{n-1} + crc32(segment_n)); extendable
    # by appends and checkable by resume without re-reading earlier data.
    chain: str = ""
    writer_id: str = ""
    heartbeat: float = 0.0
    # File attributes set through a mount (utimens, chmod, chown); None = never set. A
    # stream without a stored mtime shows when its manifest was last written, without
    # stored owners the mount's.
    mtime_ns: int | None = None
    mode: int | None = None  # permission bits, 0..0o7777
    uid: int | None = None
    gid: int | None = None
    # Client-side encryption (engine/crypto.py): the scheme ("" for none), the stream's
    # random id (hex), the key's fingerprint and the manifest's MAC. Never the key.
    encryption: str = ""
    stream_id: str = ""
    key_id: str = ""
    mac: str = ""
    extra: dict = field(default_factory=dict)

    def with_(self, **kw) -> "Manifest":
        return replace(self, **kw)

    def owned(self) -> "Manifest":
        """This manifest with an [s3pipefs] section, for s3pipefs to write back. An
        s3pipe2 manifest gains one without a layout (its segment sizes come from a
        listing); its [s3pipe2] keys render as they were."""
        return self if self.own else replace(self, own=True, format=FORMAT_VERSION, layout=None)


def now_iso() -> str:
    return _dt.datetime.now().isoformat()


def render(m: Manifest) -> bytes:
    """INI text readable by s3pipe2 (RawConfigParser) and by parse()."""
    cp = configparser.RawConfigParser()
    cp.optionxform = str  # keep key case
    cp.add_section(S3PIPE2_SECTION)
    sec = cp[S3PIPE2_SECTION]
    sec["version"] = m.s3pipe2_version
    # s3pipe2 counts segment_size in (decimal) MB.
    sec["segment_size"] = str(max(1, round(m.segment_size / 1_000_000))) if m.segment_size else "0"
    sec["upload_began"] = m.upload_began or now_iso()
    sec["completed"] = "true" if m.completed else "false"
    sec["num_segments"] = str(m.num_segments)
    sec["total_size"] = str(m.total_size)
    if m.completed:
        sec["upload_ended"] = m.upload_ended or now_iso()
    if m.own:  # a manifest parsed from an s3pipe2 stream renders as s3pipe2 wrote it
        cp.add_section(OWN_SECTION)
        own = cp[OWN_SECTION]
        own["format"] = str(m.format)
        own["segment_size_bytes"] = str(m.segment_size)
        if m.block_size:
            own["block_size"] = str(m.block_size)
        if m.layout is not None:
            own["layout"] = m.layout.render()
        if m.sha256:
            own["sha256"] = m.sha256
        if m.chain:
            own["chain"] = m.chain
        if m.writer_id:
            own["writer_id"] = m.writer_id
        if m.heartbeat:
            own["heartbeat"] = f"{m.heartbeat:.3f}"
        if m.mtime_ns is not None:
            own["mtime_ns"] = str(m.mtime_ns)
        if m.mode is not None:
            own["mode"] = f"{m.mode:04o}"
        if m.uid is not None:
            own["uid"] = str(m.uid)
        if m.gid is not None:
            own["gid"] = str(m.gid)
        if m.encryption:
            own["encryption"] = m.encryption
            own["stream_id"] = m.stream_id
            own["key_id"] = m.key_id
            own["mac"] = m.mac
        for k, v in m.extra.items():
            own[k] = v
    import io

    buf = io.StringIO()
    cp.write(buf)
    return buf.getvalue().encode()


def _int(sec, key: str, lo: int, hi: int, where: str, default=None) -> int:
    if key not in sec:
        if default is not None:
            return default
        raise ManifestError(f"{where}: missing key '{key}'")
    raw = sec[key].strip()
    if not re.fullmatch(r"-?\d{1,20}", raw):
        raise ManifestError(f"{where}: '{key}' is not an integer: {raw[:40]!r}")
    v = int(raw)
    if not lo <= v <= hi:
        raise ManifestError(f"{where}: '{key}' = {v} out of range {lo}..{hi}")
    return v


def _bool(sec, key: str, where: str) -> bool:
    if key not in sec:
        raise ManifestError(f"{where}: missing key '{key}'")
    raw = sec[key].strip().lower()
    if raw in ("true", "yes", "1", "on"):
        return True
    if raw in ("false", "no", "0", "off"):
        return False
    raise ManifestError(f"{where}: '{key}' is not a boolean: {raw[:40]!r}")


def parse(data: bytes, where: str = "manifest") -> Manifest:
    """Parse manifest bytes strictly. ``where`` names the manifest in error messages."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{where}: {len(data)} bytes is too large for a manifest")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError(f"{where}: not UTF-8 text") from None
    cp = configparser.RawConfigParser(strict=True, interpolation=None)
    cp.optionxform = str
    try:
        cp.read_string(text)
    except configparser.Error as e:
        first = str(e).splitlines()[0][:120]
        raise ManifestError(f"{where}: malformed INI ({first})") from None
    if S3PIPE2_SECTION not in cp:
        raise ManifestError(f"{where}: no [{S3PIPE2_SECTION}] section")
    sec = cp[S3PIPE2_SECTION]
    completed = _bool(sec, "completed", where)
    num = _int(sec, "num_segments", 0, MAX_SEGMENTS, where, default=0 if not completed else None)
    total = _int(sec, "total_size", 0, MAX_TOTAL_SIZE, where, default=0 if not completed else None)
    seg_mb = _int(sec, "segment_size", 0, MAX_SEGMENT_SIZE // 1_000_000, where, default=0)
    m = Manifest(
        completed=completed,
        num_segments=num,
        total_size=total,
        segment_size=seg_mb * 1_000_000,
        upload_began=sec.get("upload_began", "")[:64],
        upload_ended=sec.get("upload_ended", "")[:64],
        s3pipe2_version=sec.get("version", S3PIPE2_VERSION)[:32],
        own=False,
        format=0,
    )
    if OWN_SECTION not in cp:
        return m
    own = cp[OWN_SECTION]
    fmt = _int(own, "format", 1, 2**31, where)
    # Format 2 is the encrypted stream's; a format 2 without encryption is none we know.
    if fmt > NEWEST_FORMAT or (fmt > FORMAT_VERSION and not own.get("encryption", "").strip()):
        raise ManifestError(
            f"{where}: format {fmt} was written by a newer s3pipefs (this one reads up to {NEWEST_FORMAT})"
        )
    seg = _int(own, "segment_size_bytes", 0, MAX_SEGMENT_SIZE, where)
    block = _int(own, "block_size", 0, MAX_SEGMENT_SIZE, where, default=0)
    try:
        layout = Layout.parse(own["layout"]) if "layout" in own else None
    except ManifestError as e:
        raise ManifestError(f"{where}: {e}") from None
    if layout is not None:
        if layout.count != num:
            raise ManifestError(f"{where}: layout has {layout.count} segments, num_segments says {num}")
        if layout.total != total:
            raise ManifestError(f"{where}: layout adds up to {layout.total} bytes, total_size says {total}")
    sha256 = own.get("sha256", "").strip().lower()
    if sha256 and not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ManifestError(f"{where}: 'sha256' is not a SHA-256 hex digest")
    chain = own.get("chain", "").strip().lower()
    if chain and not re.fullmatch(r"[0-9a-f]{32}", chain):
        raise ManifestError(f"{where}: 'chain' is not an MD5 hex digest")
    hb_raw = own.get("heartbeat", "0").strip()
    try:
        heartbeat = float(hb_raw)
    except ValueError:
        raise ManifestError(f"{where}: 'heartbeat' is not a number: {hb_raw[:40]!r}") from None
    if not 0 <= heartbeat < 1e11:
        raise ManifestError(f"{where}: 'heartbeat' out of range")
    mtime_ns = _int(own, "mtime_ns", 0, MAX_MTIME_NS, where) if "mtime_ns" in own else None
    mode_raw = own.get("mode", "").strip()
    if mode_raw and not re.fullmatch(r"[0-7]{1,4}", mode_raw):
        raise ManifestError(f"{where}: 'mode' is not octal permission bits: {mode_raw[:40]!r}")
    uid = _int(own, "uid", 0, MAX_ID, where) if "uid" in own else None
    gid = _int(own, "gid", 0, MAX_ID, where) if "gid" in own else None
    encryption = own.get("encryption", "").strip()
    crypt = {k: own.get(k, "").strip().lower() for k in ("stream_id", "key_id", "mac")}
    if encryption:
        for k, digits in (("stream_id", 32), ("key_id", 16), ("mac", 64)):
            if not re.fullmatch(f"[0-9a-f]{{{digits}}}", crypt[k]):
                raise ManifestError(f"{where}: '{k}' of an encrypted stream is not {digits} hex digits")
        if layout is None:
            raise ManifestError(f"{where}: an encrypted stream's manifest has no layout")
    known = {"format", "segment_size_bytes", "block_size", "layout", "sha256", "chain", "writer_id", "heartbeat",
             "mtime_ns", "mode", "uid", "gid", "encryption", "stream_id", "key_id", "mac"}
    extra = {k: v for k, v in own.items() if k not in known}
    return replace(
        m,
        own=True,
        format=fmt,
        segment_size=seg,
        block_size=block,
        layout=layout,
        sha256=sha256,
        chain=chain,
        writer_id=own.get("writer_id", "")[:200],
        heartbeat=heartbeat,
        mtime_ns=mtime_ns,
        mode=int(mode_raw, 8) if mode_raw else None,
        uid=uid,
        gid=gid,
        encryption=encryption[:40],
        stream_id=crypt["stream_id"] if encryption else "",
        key_id=crypt["key_id"] if encryption else "",
        mac=crypt["mac"] if encryption else "",
        extra=extra,
    )


def chain_next(chain_hex: str, segment_digest: bytes) -> str:
    """Extend the segment-digest chain by one segment's digest (its CRC32, 4 bytes)."""
    import hashlib

    prev = bytes.fromhex(chain_hex) if chain_hex else b""
    return hashlib.md5(prev + segment_digest).hexdigest()


def crc32_bytes(crc: int) -> bytes:
    return crc.to_bytes(4, "big")
