"""Encryption against the real server: SSE-C through every command and the mount, and
client-side AES-256-GCM segments (engine/crypto.py) with their attacks.

Every output of the CLI runs here, and the mount's log, is kept and grepped for the keys
in every form a user may hold them (raw, hex, base64) at the end of the module.
"""
from __future__ import annotations

import base64
import os
import subprocess
import threading

import pytest

from s3pipefs import errors, manifest as mf
from s3pipefs.checksum import crc32
from s3pipefs.config import TransferConfig
from s3pipefs.engine import Engine, crypto
from s3pipefs.s3 import RequestOptions
from tests.conftest import make_bytes

SEG = 1 << 20
SSE_KEY = bytes(range(40, 72))
KEY = bytes(range(100, 132))
OTHER_KEY = bytes(range(150, 182))
SEEN: list[bytes] = []  # every stdout/stderr of this module's runs and logs, checked at the end


def secrets() -> list[bytes]:
    return [form for k in (SSE_KEY, KEY, OTHER_KEY)
            for form in (k, k.hex().encode(), k.hex().upper().encode(), base64.b64encode(k))]


@pytest.fixture
def keyfiles(tmp_path):
    def write(name: str, key: bytes, form: str = "hex") -> str:
        p = tmp_path / name
        p.write_bytes(key.hex().encode() if form == "hex" else base64.b64encode(key) if form == "b64" else key)
        p.chmod(0o600)
        return str(p)
    return {"sse": write("sse.key", SSE_KEY, "b64"), "key": write("enc.key", KEY),
            "other": write("other.key", OTHER_KEY, "raw")}


@pytest.fixture
def run(cli):
    """cli(), with every output kept for the secrets check."""
    def go(*args, **kw):
        r = cli(*args, **kw)
        SEEN.extend([r.stdout, r.stderr])
        return r
    return go


def one_line(r) -> str:
    err = r.stderr.decode().strip()
    assert r.returncode != 0 and "\n" not in err and "Traceback" not in err, err
    return err


def segments(store, bucket, name) -> list[str]:
    return sorted(o.key for o in store.list(bucket, name + "/") if mf.segment_index(o.key[len(name) + 1:]))


# -- SSE-C -------------------------------------------------------------------------------------

def test_sse_c_through_put_cat_info_verify_ls_rm_and_clear_key_errors(run, bucket, keyfiles, tmp_path):
    data = make_bytes(2 * SEG + 7, "ssec")
    k = ["--sse-c-key-file", keyfiles["sse"]]
    url = f"s3://{bucket}/s"
    run("put", *k, "--segment-size", "1M", url, input=data, check=True)
    assert run("cat", *k, url, check=True).stdout == data
    assert b"complete" in run("info", *k, url, check=True).stdout
    assert b"OK" in run("verify", *k, url, check=True).stdout
    # An object too: cp --object with the key, then cat and info.
    src = tmp_path / "o"
    src.write_bytes(b"object body")
    run("cp", "--object", *k, str(src), f"s3://{bucket}/o", check=True)
    assert run("cat", *k, f"s3://{bucket}/o", check=True).stdout == b"object body"

    for target in (url, f"s3://{bucket}/o"):
        for cmd in ("cat", "info", "verify"):
            missing = run(cmd, target)
            assert "SSE-C key" in one_line(missing) and "--sse-c-key-file" in one_line(missing), missing.stderr
            assert missing.stdout == b""
            wrong = run(cmd, "--sse-c-key-file", keyfiles["key"], target)
            assert "wrong SSE-C key" in one_line(wrong), wrong.stderr
    # The environment variable serves as well as the file; rm takes the key.
    assert run("cat", url, env={"S3PIPEFS_SSE_C_KEY": SSE_KEY.hex()}, check=True).stdout == data
    assert "SSE-C key" in one_line(run("rm", url))
    run("rm", *k, url, check=True)
    assert run("ls", f"s3://{bucket}/", check=True).stdout.count(b"s3://") == 1  # the object is left


def test_ls_lists_everything_next_to_encrypted_streams_and_marks_them(run, bucket, keyfiles, store):
    run("put", f"s3://{bucket}/d/plain", input=b"plain", check=True)
    run("put", "--sse-c-key-file", keyfiles["sse"], f"s3://{bucket}/d/ssec", input=b"secret", check=True)
    run("put", "--encrypt-key-file", keyfiles["key"], f"s3://{bucket}/d/client", input=b"secret", check=True)
    store.put(bucket, "d/object", b"obj")
    r = run("ls", f"s3://{bucket}/d/", check=True)
    names = [line.rsplit("s3://", 1)[1].split("  [")[0] for line in r.stdout.decode().splitlines()]
    assert names == [f"{bucket}/d/{n}" for n in ("client", "object", "plain", "ssec")]
    text = r.stdout.decode()
    assert f"d/ssec  [SSE-C: key needed]" in text
    assert f"d/client  [encrypted: aes-256-gcm]" in text
    assert "d/plain\n" in text and "d/object\n" in text
    # Recursive and single-name listings too, and the JSON marks them.
    rec = run("ls", "-R", "--json", f"s3://{bucket}/d/", check=True).stdout.decode()
    assert '"encryption": "sse-c"' in rec and '"encryption": "aes-256-gcm"' in rec
    assert b"[SSE-C: key needed]" in run("ls", f"s3://{bucket}/d/ssec", check=True).stdout
    # With the key the SSE-C stream is read and shown with its size.
    withkey = run("ls", "--sse-c-key-file", keyfiles["sse"], f"s3://{bucket}/d/", check=True).stdout.decode()
    assert "key needed" not in withkey and " 6 " in withkey


# -- client-side encryption --------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG])
def test_client_side_round_trip_at_segment_boundaries_stores_only_ciphertext(run, bucket, keyfiles, store, size):
    data = make_bytes(size, f"b{size}")
    url = f"s3://{bucket}/c"
    k = ["--encrypt-key-file", keyfiles["key"]]
    run("put", *k, "--segment-size", "1M", url, input=data, check=True)
    assert run("cat", *k, url, check=True).stdout == data
    for off in {0, SEG - 1, SEG, SEG + 1, size}:
        if off <= size:
            assert run("cat", *k, "--offset", str(off), url, check=True).stdout == data[off:]
    # `cat 0*` of the segments is ciphertext: each segment its plaintext + 28 bytes, and
    # no plaintext run in it.
    stored = b"".join(store.get(bucket, key)[0] for key in segments(store, bucket, "c"))
    count = max(1, -(-size // SEG))
    assert len(stored) == size + count * crypto.OVERHEAD
    if size >= 64:
        assert data[:64] not in stored
    body = store.get(bucket, "c/.manifest")[0].decode()
    m = mf.parse(body.encode())
    assert (m.encryption, m.format, m.total_size, m.key_id) == ("aes-256-gcm", 2, size, crypto.key_id(KEY))
    SEEN.append(body.encode())
    assert b"OK" in run("verify", *k, url, check=True).stdout


def test_missing_or_wrong_key_fails_with_one_line_and_writes_nothing(run, bucket, keyfiles):
    url = f"s3://{bucket}/c"
    run("put", "--encrypt-key-file", keyfiles["key"], url, input=make_bytes(SEG + 5, "k"), check=True)
    missing = run("cat", url)
    assert "encrypted client-side" in one_line(missing) and "--encrypt-key-file" in one_line(missing)
    assert missing.stdout == b""
    wrong = run("cat", "--encrypt-key-file", keyfiles["other"], url)
    assert "wrong encryption key" in one_line(wrong) and wrong.stdout == b""
    assert "wrong encryption key" in one_line(run("verify", "--encrypt-key-file", keyfiles["other"], url))
    # A plain stream read with a key is refused (it could be a downgrade), and a plain object
    # cannot be written encrypted.
    run("put", f"s3://{bucket}/p", input=b"plain", check=True)
    assert "not encrypted" in one_line(run("cat", "--encrypt-key-file", keyfiles["key"], f"s3://{bucket}/p"))
    assert "client-side encryption is for streams" in one_line(
        run("cp", "--object", "--encrypt-key-file", keyfiles["key"], "-", f"s3://{bucket}/o", input=b"x"))


def _put_raw(store, bucket, key, body: bytes, writer: str = "w") -> None:
    """Store a segment as a forger would: with a CRC32 that matches, so only the cipher can tell."""
    c = mf.crc32_bytes(crc32(body))
    store.put(bucket, key, body, metadata={"crc32": c.hex(), "gen": writer})


def _cat_refused(run, url, keyfile, data: bytes, what: str, hand_out_before: int = 0):
    r = run("cat", "--encrypt-key-file", keyfile, url)
    assert what in one_line(r), r.stderr
    # Nothing past the last authentic segment before the damage is handed out.
    assert r.stdout == data[:hand_out_before]


def test_tampered_swapped_replayed_and_truncated_segments_are_refused(run, bucket, keyfiles, store):
    k = keyfiles["key"]
    data = make_bytes(3 * SEG, "tamper")
    other = make_bytes(3 * SEG, "other")
    for name, body in (("a", data), ("b", other)):
        run("put", "--encrypt-key-file", k, "--segment-size", "1M", f"s3://{bucket}/{name}", input=body, check=True)
    url = f"s3://{bucket}/a"
    seg = [store.get(bucket, f"a/{mf.segment_name(i)}")[0] for i in (1, 2, 3)]
    failed = "failed authentication"

    # A flipped bit in segment 2.
    bad = bytearray(seg[1])
    bad[100] ^= 1
    _put_raw(store, bucket, f"a/{mf.segment_name(2)}", bytes(bad))
    _cat_refused(run, url, k, data, failed, SEG)
    # Segments 2 and 3 swapped.
    _put_raw(store, bucket, f"a/{mf.segment_name(2)}", seg[2])
    _put_raw(store, bucket, f"a/{mf.segment_name(3)}", seg[1])
    _cat_refused(run, url, k, data, failed, SEG)
    # Segment 2 replayed from another stream under the same key.
    _put_raw(store, bucket, f"a/{mf.segment_name(3)}", seg[2])
    _put_raw(store, bucket, f"a/{mf.segment_name(2)}", store.get(bucket, f"b/{mf.segment_name(2)}")[0])
    _cat_refused(run, url, k, data, failed, SEG)
    _put_raw(store, bucket, f"a/{mf.segment_name(2)}", seg[1])
    assert run("cat", "--encrypt-key-file", k, url, check=True).stdout == data  # restored: whole again

    # Truncation: the manifest cut to two segments (its MAC then fails).
    body = store.get(bucket, "a/.manifest")[0]
    m = mf.parse(body)
    cut = m.with_(num_segments=2, total_size=2 * SEG, layout=mf.Layout(((2, SEG),)))
    store.put(bucket, "a/.manifest", mf.render(cut))
    _cat_refused(run, url, k, data, "manifest failed authentication")
    # Another stream's (authentic) manifest pasted in: its stream id does not fit these segments.
    store.put(bucket, "a/.manifest", store.get(bucket, "b/.manifest")[0])
    _cat_refused(run, url, k, data, failed)
    # Encryption stripped from the manifest: refused as plaintext where a key was given.
    stripped = m.with_(encryption="", stream_id="", key_id="", mac="", format=1,
                       layout=mf.Layout(((3, SEG + crypto.OVERHEAD),)), total_size=3 * (SEG + crypto.OVERHEAD))
    store.put(bucket, "a/.manifest", mf.render(stripped))
    _cat_refused(run, url, k, data, "not encrypted")
    # A segment cut short.
    store.put(bucket, "a/.manifest", body)
    _put_raw(store, bucket, f"a/{mf.segment_name(3)}", seg[2][:-1])
    r = run("cat", "--encrypt-key-file", k, url)
    assert r.returncode == 1 and len(r.stdout) <= 2 * SEG and r.stdout == data[:len(r.stdout)]


def test_resume_append_copies_and_key_rotation(run, bucket, bucket2, keyfiles, store):
    k, other = keyfiles["key"], keyfiles["other"]
    url = f"s3://{bucket}/r"
    first, more = make_bytes(2 * SEG + 3, "first"), make_bytes(SEG // 2, "more")
    run("put", "--encrypt-key-file", k, "--segment-size", "1M", url, input=first, check=True)
    run("put", "--append", "--encrypt-key-file", k, url, input=more, check=True)
    assert run("cat", "--encrypt-key-file", k, url, check=True).stdout == first + more
    # Appending without the key, or plaintext with a key to a plain stream, is refused.
    assert "encrypted client-side" in one_line(run("put", "--append", url, input=b"x"))
    # Resume of an interrupted encrypted stream: the same input again completes it.
    eng = Engine(store, TransferConfig(segment_size=SEG), request=RequestOptions(encrypt_key=KEY))
    w = eng.open_writer(bucket, "res")
    w.write(first[:SEG + 10])
    w.flush()
    w.abort()
    run("put", "--resume", "--encrypt-key-file", k, f"s3://{bucket}/res", input=first, check=True)
    assert run("cat", "--encrypt-key-file", k, f"s3://{bucket}/res", check=True).stdout == first
    # Server-side copy keeps the ciphertext: the copy reads with the same key, no data moved.
    r = run("cp", f"s3://{bucket}/r", f"s3://{bucket2}/r", check=True)
    assert r.returncode == 0
    assert store.get(bucket2, f"r/{mf.segment_name(1)}")[0] == store.get(bucket, f"r/{mf.segment_name(1)}")[0]
    assert run("cat", "--encrypt-key-file", k, f"s3://{bucket2}/r", check=True).stdout == first + more
    # Key rotation: a re-encrypting copy under the other key; the old key no longer reads it.
    run("cp", "--source-encrypt-key-file", k, "--encrypt-key-file", other, f"s3://{bucket}/r",
        f"s3://{bucket2}/rot", check=True)
    assert run("cat", "--encrypt-key-file", other, f"s3://{bucket2}/rot", check=True).stdout == first + more
    assert "wrong encryption key" in one_line(run("cat", "--encrypt-key-file", k, f"s3://{bucket2}/rot"))
    m = mf.parse(store.get(bucket2, "rot/.manifest")[0])
    assert m.key_id == crypto.key_id(OTHER_KEY)
    # A plain stream encrypted on copy; sync copies encrypted streams as they are.
    run("put", f"s3://{bucket}/plain", input=b"plain text", check=True)
    eng2 = Engine(store, TransferConfig())
    eng2.copy(bucket, "plain", bucket2, "enc", source=RequestOptions(), dest=RequestOptions(encrypt_key=KEY))
    assert run("cat", "--encrypt-key-file", k, f"s3://{bucket2}/enc", check=True).stdout == b"plain text"
    run("sync", f"s3://{bucket}/", f"s3://{bucket2}/synced/", check=True)
    assert run("cat", "--encrypt-key-file", k, f"s3://{bucket2}/synced/r", check=True).stdout == first + more


def test_random_access_and_live_follow_of_an_encrypted_stream(store, bucket):
    cfg = TransferConfig(segment_size=SEG, poll_interval=0.05, follow_timeout=20)
    eng = Engine(store, cfg, request=RequestOptions(encrypt_key=KEY))
    data = make_bytes(3 * SEG + 100, "live")
    w = eng.open_writer(bucket, "live")
    got = []

    def follow():
        with eng.open_reader(bucket, "live", follow=True) as r:
            got.append(b"".join(bytes(c) for c in r.chunks(0)))
    w.write(data[:SEG + 50])
    w.flush()
    t = threading.Thread(target=follow)
    t.start()
    w.write(data[SEG + 50:])
    w.close()
    t.join(60)
    assert got == [data]
    with eng.open_reader(bucket, "live", follow=False) as r:
        assert r.read(2 * SEG - 3, 10) == data[2 * SEG - 3:2 * SEG + 7]
        assert r.read(3 * SEG + 90, 100) == data[3 * SEG + 90:]
    # A reader in the writer's process reads landed (encrypted) segments before the manifest names them.
    w = eng.open_writer(bucket, "live2")
    w.write(data)
    w.flush()
    with eng.open_live_reader(w) as live:
        assert live.read(SEG - 5, 10) == data[SEG - 5:SEG + 5]
    w.close()
    with pytest.raises(errors.KeyNeeded):
        Engine(store, cfg).open_reader(bucket, "live")


def test_mount_reads_and_writes_encrypted_streams(mounter, bucket, keyfiles, run, store):
    data = make_bytes(2 * SEG + 11, "mnt")
    run("put", "--encrypt-key-file", keyfiles["key"], f"s3://{bucket}/in", input=data, check=True)
    # Both kinds at once: SSE-C on the server, the client's own on top. (A plain stream in a
    # mount with a client-side key is refused, as cat refuses it.)
    run("put", "--sse-c-key-file", keyfiles["sse"], "--encrypt-key-file", keyfiles["key"], f"s3://{bucket}/sse",
        input=b"sse data", check=True)
    m = mounter(bucket, encrypt_key_file=keyfiles["key"], sse_c_key_file=keyfiles["sse"])
    assert (m / "in").read_bytes() == data
    assert (m / "sse").read_bytes() == b"sse data"
    with open(m / "in", "rb") as f:
        f.seek(SEG - 2)
        assert f.read(5) == data[SEG - 2:SEG + 3]
    (m / "out").write_bytes(data[::-1])
    (m / "dir").mkdir()
    assert sorted(os.listdir(m.path)) == ["dir", "in", "out", "sse"]
    man = mf.parse(store.get(bucket, "out/.manifest", sse_key=SSE_KEY)[0])
    assert man.encryption == "aes-256-gcm" and man.key_id == crypto.key_id(KEY)
    assert run("cat", "--encrypt-key-file", keyfiles["key"], "--sse-c-key-file", keyfiles["sse"],
               f"s3://{bucket}/out", check=True).stdout == data[::-1]
    # A symlink carries the SSE-C key like everything else the mount writes.
    os.symlink("in", m.path / "link")
    assert os.readlink(m.path / "link") == "in" and (m / "link").read_bytes() == data
    with pytest.raises(errors.KeyNeeded):
        store.get(bucket, "link")
    assert store.get(bucket, "link", sse_key=SSE_KEY)[0] == b"in"
    # A mount without the keys lists everything and refuses only the encrypted data.
    plain = mounter(bucket)
    assert sorted(os.listdir(plain.path)) == ["dir", "in", "link", "out", "sse"]
    with pytest.raises(PermissionError):
        (plain / "in").read_bytes()
    with pytest.raises(PermissionError):
        (plain / "sse").read_bytes()
    SEEN.extend([m.log_text().encode(), plain.log_text().encode()])
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True).stdout
    SEEN.append(ps)


def test_zz_no_key_in_any_output_log_or_manifest_of_these_runs():
    assert SEEN, "the runs above kept nothing"
    for blob in SEEN:
        for secret in secrets():
            assert secret not in blob
