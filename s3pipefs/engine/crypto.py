"""Client-side encryption of streams: AES-256-GCM segments bound to their stream and position.

The user holds one 32-byte key. Each stream has a random 16-byte *stream id*, stored in its
manifest, from which HKDF-SHA256 (salt = stream id) derives that stream's keys: a data key
for AES-256-GCM and a MAC key for the manifest. So no two streams share a data key, and
the user key itself never encrypts anything.

* Segment ``i`` (1-based) on S3 is ``nonce (12 random bytes) || ciphertext || tag (16)``,
  its plaintext plus OVERHEAD bytes, with the associated data ``AAD_LABEL || stream id ||
  i`` (8 bytes, big-endian). A segment moved to another position or another stream fails
  its tag. The nonce is random, not the index: resume and append rewrite a segment number
  a dead writer had already used, with other bytes.
* The manifest keeps plaintext sizes (``total_size``, ``layout``) and adds the scheme, the
  stream id, the key's fingerprint (``key_id``) and ``mac``: HMAC-SHA256 over everything
  that says which segments hold which bytes (completed, counts, layout, digests). A
  manifest cut short, or one from another stream with the same key pasted in, is refused;
  dropping a segment then shows as a missing or misplaced segment. What HMAC cannot catch
  is a rollback to an older state the writer itself published (the manifest before an
  append): docs/encryption.md says so.
* Digests that would tell an observer about the plaintext are keyed: the segment digest
  chain starts from a secret seed, and ``sha256`` is an HMAC of the plaintext's SHA-256.
  Segments carry the CRC32 of their ciphertext (the server checks it on upload).
* Attributes (mtime, mode, owners), the writer id and heartbeat stay outside the MAC:
  a mount changes them without the key.

Readers decrypt whole segments (bounded by the segment size) before handing out a byte,
so a tampered segment is refused, never partly served.

``cryptography`` is imported when a stream cipher is first made: a command that encrypts
nothing does not pay its ~17 ms import.
"""
from __future__ import annotations

import hashlib
import hmac
import os

from s3pipefs import errors, manifest as mf

SCHEME = "aes-256-gcm"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = NONCE_BYTES + TAG_BYTES  # ciphertext segment = plaintext + OVERHEAD
STREAM_ID_BYTES = 16
AAD_LABEL = b"s3pipefs segment v1\0"
_KDF_INFO = b"s3pipefs stream keys v1"
_KEY_ID_LABEL = b"s3pipefs key id v1"
KEY_ENV = "S3PIPEFS_ENCRYPT_KEY"
SOURCE_KEY_ENV = "S3PIPEFS_SOURCE_ENCRYPT_KEY"
HOW_TO_GIVE = f"give it with --encrypt-key-file or ${KEY_ENV}"


def key_id(user_key: bytes) -> str:
    """The key's fingerprint as manifests record it: 16 hex digits that tell keys apart and
    reveal nothing of the key (an HMAC under it)."""
    return hmac.new(user_key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


class StreamCipher:
    """The keys of one stream: seals and opens its segments, protects and checks its manifests."""

    def __init__(self, user_key: bytes, stream_id: bytes, where: str):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        if len(user_key) != KEY_BYTES:
            raise errors.UsageError(f"an encryption key must be {KEY_BYTES} bytes")
        keys = HKDF(hashes.SHA256(), 2 * KEY_BYTES, salt=stream_id, info=_KDF_INFO).derive(user_key)
        self._aead = AESGCM(keys[:KEY_BYTES])
        self._mac_key = keys[KEY_BYTES:]
        self.stream_id = stream_id
        self.key_id = key_id(user_key)
        self.where = where
        # The digest chain starts here, so chain values say nothing of the segments' CRC32s.
        self.chain_seed = self._mac(b"chain seed")[:32]

    def __repr__(self) -> str:
        return f"StreamCipher({self.where}, key_id={self.key_id})"

    @classmethod
    def new(cls, user_key: bytes, where: str) -> "StreamCipher":
        return cls(user_key, os.urandom(STREAM_ID_BYTES), where)

    @classmethod
    def for_manifest(cls, m: mf.Manifest, user_key: bytes, where: str) -> "StreamCipher":
        """The cipher of the encrypted stream ``m`` (checked: scheme, key, MAC)."""
        if m.encryption != SCHEME:
            raise errors.ManifestError(f"{where}: unknown encryption scheme {m.encryption[:40]!r}")
        if not user_key:
            raise errors.KeyNeeded(f"{where}: encrypted client-side (key fingerprint {m.key_id}); {HOW_TO_GIVE}")
        given = key_id(user_key)
        if given != m.key_id:
            raise errors.WrongKey(f"{where}: wrong encryption key: the stream was encrypted with key "
                                  f"{m.key_id}, the key given is {given}")
        cipher = cls(user_key, bytes.fromhex(m.stream_id), where)
        cipher.check(m)
        return cipher

    # -- segments ------------------------------------------------------------------------
    def _aad(self, index: int) -> bytes:
        return AAD_LABEL + self.stream_id + index.to_bytes(8, "big")

    def seal(self, index: int, plaintext) -> bytes:
        """Segment ``index`` as stored: nonce || ciphertext || tag."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, bytes(plaintext), self._aad(index))

    def open(self, index: int, data: bytes, where: str) -> bytes:
        """The plaintext of segment ``index``; IntegrityError when it fails authentication."""
        from cryptography.exceptions import InvalidTag

        if len(data) < OVERHEAD:
            raise errors.IntegrityError(f"{where}: encrypted segment too short ({len(data)} bytes)")
        try:
            return self._aead.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], self._aad(index))
        except InvalidTag:
            raise errors.IntegrityError(f"{where}: encrypted segment failed authentication (tampered with, "
                                        "or moved from another stream or position)") from None

    # -- manifests -----------------------------------------------------------------------
    def _mac(self, data: bytes) -> str:
        return hmac.new(self._mac_key, data, hashlib.sha256).hexdigest()

    def stream_digest(self, sha256_hex: str) -> str:
        """What the manifest's ``sha256`` holds for a plaintext SHA-256: keyed, so that it
        confirms no guess of the contents to someone without the key."""
        return self._mac(b"sha256 " + sha256_hex.encode())

    def _covered(self, m: mf.Manifest) -> bytes:
        layout = m.layout.render() if m.layout is not None else "-"
        return "\n".join(["s3pipefs manifest v1", m.encryption, m.stream_id, m.key_id, str(m.completed),
                          str(m.num_segments), str(m.total_size), layout, m.sha256, m.chain]).encode()

    def protect(self, m: mf.Manifest) -> mf.Manifest:
        """``m`` as an encrypted stream's manifest: scheme, ids, keyed digest and MAC.
        ``m.sha256`` is the plaintext's digest (or "")."""
        m = m.with_(format=mf.ENCRYPTED_FORMAT, encryption=SCHEME, stream_id=self.stream_id.hex(),
                    key_id=self.key_id, sha256=self.stream_digest(m.sha256) if m.sha256 else "")
        return m.with_(mac=self._mac(self._covered(m)))

    def check(self, m: mf.Manifest) -> None:
        """IntegrityError unless ``m`` is a manifest of this stream as its writer wrote it."""
        if m.stream_id != self.stream_id.hex() or m.layout is None or \
                not hmac.compare_digest(m.mac, self._mac(self._covered(m))):
            raise errors.IntegrityError(f"{self.where}: the manifest failed authentication (tampered with, "
                                        "or taken from another stream)")


def for_reading(m: mf.Manifest, user_key: bytes, where: str) -> StreamCipher | None:
    """The cipher to read the stream ``m`` with: None for a plain stream read without a key.
    A plain stream read *with* a key is refused: plaintext put where an encrypted stream
    was would otherwise be served as if it were authentic."""
    if m.encryption:
        return StreamCipher.for_manifest(m, user_key, where)
    if user_key:
        raise errors.WrongKey(f"{where}: not encrypted, but an encryption key was given: refusing to serve "
                              "unauthenticated data (read it without --encrypt-key-file)")
    return None


def for_writing(user_key: bytes, existing: mf.Manifest | None, mode: str, where: str) -> StreamCipher | None:
    """The cipher a writer in ``mode`` uses: a new stream's own (new stream id), or for
    append and resume the existing stream's, whose scheme and key must match."""
    if mode in ("append", "resume") and existing is not None:
        if existing.encryption or user_key:
            if not existing.encryption:
                raise errors.WrongKey(f"{where}: not encrypted: encrypted data cannot be appended to it "
                                      "(write it without --encrypt-key-file)")
            return StreamCipher.for_manifest(existing, user_key, where)
        return None
    return StreamCipher.new(user_key, where) if user_key else None

