"""The engine on the in-memory ObjectStore (s3/inmemory.py): fast, no server.

First the store keeps the interface's contract where the engine relies on it; then stream
scenarios: a round trip across segment boundaries, append, resume, a second writer refused,
a manifest that says complete only after close, damaged segments fetched ``tries`` times.
The same engine runs against the real server in the other test files.
"""
from __future__ import annotations

import hashlib
import os

import pytest

from s3pipefs import errors, manifest as mf
from s3pipefs.checksum import crc32
from s3pipefs.config import MiB, TransferConfig
from s3pipefs.engine import Engine, manifests
from s3pipefs.s3 import ObjectStore, RequestOptions, b64
from s3pipefs.s3.inmemory import MemoryStore

SEG = 1024  # the smallest segment size: a few KiB make many segments


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    s.create_bucket("b")
    return s


@pytest.fixture
def cfg(tmp_path) -> TransferConfig:
    return TransferConfig(segment_size=SEG, workers=3, staging_dir=str(tmp_path), tries=3)


def read_all(engine: Engine, key: str) -> bytes:
    with engine.open_reader("b", key, follow=False) as r:
        return r.read(0, r.size + 1)


# -- the store's contract ---------------------------------------------------------------------------

def test_memory_store_is_an_object_store(store):
    def takes(s: ObjectStore) -> ObjectStore:
        return s
    assert takes(store) is store
    for name in ObjectStore.__dict__:
        if not name.startswith("_"):
            assert hasattr(store, name), name


def test_conditional_puts_missing_keys_and_ranges(store):
    etag = store.put("b", "k", b"0123456789", if_none_match=True)
    assert etag == hashlib.md5(b"0123456789").hexdigest()
    with pytest.raises(errors.Busy):
        store.put("b", "k", b"other", if_none_match=True)
    with pytest.raises(errors.Busy):
        store.put("b", "k", b"other", if_match="0" * 32)
    etag2 = store.put("b", "k", b"abcdefghij", if_match=etag)
    data, info = store.get("b", "k", 2, 5)
    assert (data, info.size, info.etag) == (b"cde", 10, etag2)
    assert store.get("b", "k", 7)[0] == b"hij"
    with pytest.raises(errors.NotFound):
        store.get("b", "nothing")
    with pytest.raises(errors.BucketNotFound):
        store.get("no-bucket", "k")
    assert store.head("b", "nothing") is None
    with pytest.raises(errors.IntegrityError):
        store.put("b", "bad", b"body", md5=b64(hashlib.md5(b"another body").digest()))
    store.put("b", "enc", b"secret", sse_key=b"k" * 32)
    with pytest.raises(errors.AccessDenied):
        store.get("b", "enc")  # without the key it was written with
    assert store.get("b", "enc", sse_key=b"k" * 32)[0] == b"secret"


def test_listing_pages_and_common_prefixes(store):
    keys = ["a/1", "a/2", "a/b/1", "a/b/2", "a/c/1", "a/d", "a/e/x/y", "z"]
    for k in keys:
        store.put("b", k, k.encode())
    assert [o.key for o in store.list("b", "a/")] == [k for k in keys if k.startswith("a/")]
    assert list(store.list("b", "a/", delimiter="/")) == \
        ["a/b/", "a/c/", "a/e/"] + [o for o in store.list("b", "a/", delimiter="/") if not isinstance(o, str)]
    got, token = store.list_page("b", "a/", delimiter="/", max_keys=3)
    assert [g if isinstance(g, str) else g.key for g in got] == ["a/b/", "a/1", "a/2"]
    rest, token2 = store.list_page("b", "a/", delimiter="/", token=token, max_keys=3)
    assert [g if isinstance(g, str) else g.key for g in rest] == ["a/c/", "a/e/", "a/d"] and token2 is None
    assert [o.key for o in store.list("b", "a/", start_after="a/b/2")] == ["a/c/1", "a/d", "a/e/x/y"]
    assert store.any_key("b", "a/e/") and not store.any_key("b", "q/")
    store.delete_many("b", ["a/1", "a/2", "missing"])
    assert store.head("b", "a/1") is None


def test_multipart_etag_and_resume_listing(store):
    up = store.mpu_create("b", "big", metadata={"Md5": "x"})
    parts = [os.urandom(100), os.urandom(50)]
    etags = [store.mpu_part("b", "big", up, n, p) for n, p in enumerate(parts, 1)]
    assert [p["Size"] for p in store.mpu_parts("b", "big", up)] == [100, 50]
    assert [u["UploadId"] for u in store.mpu_list("b", "big")] == [up]
    etag = store.mpu_complete("b", "big", up, etags)
    want = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + "-2"
    assert etag == want and store.head("b", "big").metadata == {"md5": "x"}
    assert store.get("b", "big")[0] == b"".join(parts)
    assert list(store.mpu_list("b")) == []


def test_a_failing_verify_is_fetched_again_up_to_tries(store):
    store.put("b", "k", b"body")
    seen = []

    def verify(data, info):
        seen.append(data)
        if len(seen) < 3:
            raise errors.IntegrityError("damaged")
    assert store.get("b", "k", verify=verify)[0] == b"body" and len(seen) == 3
    seen.clear()

    def always_damaged(data, info):
        seen.append(data)
        raise errors.IntegrityError("damaged")
    with pytest.raises(errors.IntegrityError):
        store.get("b", "k", verify=always_damaged, tries=2)
    assert len(seen) == 2


# -- streams --------------------------------------------------------------------------------------

def test_round_trip_across_segment_boundaries(store, cfg):
    eng = Engine(store, cfg)
    data = os.urandom(10 * SEG + 17)
    with eng.open_writer("b", "s") as w:
        for i in range(0, len(data), 700):  # writes that straddle segment ends
            w.write(data[i:i + 700])
    m = manifests.load(store, "b", "s/").manifest
    assert m.completed and m.num_segments == 11 and m.total_size == len(data)
    assert m.sha256 == hashlib.sha256(data).hexdigest()
    with eng.open_reader("b", "s", follow=False) as r:
        assert r.read(0, len(data) + 1) == data
        for off, n in ((SEG - 10, 20), (3 * SEG - 1, 2 * SEG + 2), (len(data) - 5, 100), (0, 1)):
            assert r.read(off, n) == data[off:off + n]
    assert eng.stat("b", "s").size == len(data)


def test_append_continues_a_complete_stream(store, cfg):
    eng = Engine(store, cfg)
    a, b = os.urandom(2 * SEG + 5), os.urandom(3 * SEG + 1)
    with eng.open_writer("b", "s") as w:
        w.write(a)
    with eng.open_writer("b", "s", mode="append") as w:
        w.write(b)
    assert read_all(eng, "s") == a + b
    m = manifests.load(store, "b", "s/").manifest
    assert m.completed and m.total_size == len(a + b)


def test_resume_uploads_only_what_is_missing(store, cfg):
    eng = Engine(store, cfg)
    data = os.urandom(6 * SEG + 3)
    w = eng.open_writer("b", "s")
    w.write(data[:3 * SEG])
    w.flush()  # three segments land and the manifest names them
    w.abort()  # a writer that stopped: incomplete, lease released
    m = manifests.load(store, "b", "s/").manifest
    assert not m.completed and m.num_segments == 3
    puts = []
    real_put = store.put
    store.put = lambda bucket, key, *a, **kw: puts.append(key) or real_put(bucket, key, *a, **kw)
    with eng.open_writer("b", "s", mode="resume") as w:
        w.write(data)
    segments = sorted(k for k in puts if mf.segment_index(k.rsplit("/", 1)[1]))
    assert segments == [f"s/{mf.segment_name(i)}" for i in range(4, 8)]
    assert read_all(eng, "s") == data
    with pytest.raises(errors.Exists):
        eng.open_writer("b", "s", mode="resume")


def test_a_second_writer_is_refused_while_the_first_holds_the_stream(store, cfg):
    eng = Engine(store, cfg)
    first = eng.open_writer("b", "s")
    first.write(os.urandom(2 * SEG))
    with pytest.raises(errors.Busy):
        eng.open_writer("b", "s")
    first.close()
    with eng.open_writer("b", "s") as again:  # done: it may be replaced
        again.write(b"new")
    assert read_all(eng, "s") == b"new"


def test_the_manifest_says_complete_only_after_close(store, cfg):
    eng = Engine(store, cfg)
    data = os.urandom(4 * SEG + 1)
    w = eng.open_writer("b", "s")
    w.write(data)
    w.flush()
    m = manifests.load(store, "b", "s/").manifest
    assert not m.completed and m.writer_id == w.writer_id and m.total_size == len(data)
    with eng.open_reader("b", "s", follow=False) as r:
        assert not r.complete and r.read(0, len(data)) == data  # what is named reads back
    w.close()
    m = manifests.load(store, "b", "s/").manifest
    assert m.completed and m.total_size == len(data)


def test_a_damaged_segment_is_fetched_tries_times_then_refused(store, cfg):
    eng = Engine(store, cfg)
    data = os.urandom(3 * SEG)
    with eng.open_writer("b", "s") as w:
        w.write(data)
    key = f"s/{mf.segment_name(2)}"
    info = store.head("b", key)
    store.put("b", key, bytes(SEG), metadata=info.metadata)  # same CRC32 claimed, other bytes
    before = store.stats.requests
    with pytest.raises(errors.IntegrityError, match="CRC32"):
        with eng.open_reader("b", "s", follow=False) as r:
            r.read(SEG, SEG)
    assert store.stats.requests - before == 1 + cfg.tries  # the manifest, then the segment's tries


def test_with_an_sse_c_key_the_engine_default_applies(tmp_path):
    key = os.urandom(32)
    store = MemoryStore()
    store.create_bucket("b")
    eng = Engine(store, TransferConfig(segment_size=SEG, staging_dir=str(tmp_path)), request=RequestOptions(key))
    with eng.open_writer("b", "s") as w:
        w.write(b"x" * (2 * SEG))
    assert read_all(eng, "s") == b"x" * (2 * SEG)
    with pytest.raises(errors.AccessDenied):
        store.get("b", f"s/{mf.segment_name(1)}", sse_key=b"")


class KeyRecorder(MemoryStore):
    """A MemoryStore that notes the SSE-C key of every request that can carry one."""

    def __init__(self):
        super().__init__()
        self.sent: list[tuple[str, str, bytes | None]] = []  # (operation, object key, SSE-C key)

    def head(self, bucket, key, sse_key=None):
        self.sent.append(("head", key, sse_key))
        return super().head(bucket, key, sse_key)

    def get(self, bucket, key, start=None, end=None, sse_key=None, **kw):
        self.sent.append(("get", key, sse_key))
        return super().get(bucket, key, start, end, sse_key, **kw)

    def put(self, bucket, key, body, *, sse_key=None, **kw):
        self.sent.append(("put", key, sse_key))
        return super().put(bucket, key, body, sse_key=sse_key, **kw)

    def copy(self, src_bucket, src_key, bucket, key, *, source_sse_key=None, sse_key=None, **kw):
        self.sent += [("copy from", src_key, source_sse_key), ("copy to", key, sse_key)]
        return super().copy(src_bucket, src_key, bucket, key, source_sse_key=source_sse_key, sse_key=sse_key, **kw)

    def mpu_create(self, bucket, key, *, sse_key=None, **kw):
        self.sent.append(("mpu_create", key, sse_key))
        return super().mpu_create(bucket, key, sse_key=sse_key, **kw)

    def mpu_part(self, bucket, key, upload_id, number, body, md5=None, sse_key=None):
        self.sent.append(("mpu_part", key, sse_key))
        return super().mpu_part(bucket, key, upload_id, number, body, md5, sse_key)


def test_every_request_of_an_engine_carries_its_key(tmp_path):
    """Writers (create, replace, append), leases, manifests, lookups, listings, readers,
    attributes, object uploads and downloads, copies and deletes: each request that can
    carry an SSE-C key carries the engine's, and nothing else does."""
    key = os.urandom(32)
    store = KeyRecorder()
    store.create_bucket("b")
    eng = Engine(store, TransferConfig(segment_size=SEG, workers=2, staging_dir=str(tmp_path)),
                 request=RequestOptions(key))
    data = os.urandom(3 * SEG + 5)
    for mode in ("create", "create", "append"):  # the second replaces: staged, then copied in
        with eng.open_writer("b", "d/s", mode=mode) as w:
            w.write(data)
    assert read_all(eng, "d/s") == data + data
    assert eng.stat("b", "d/s").kind == "stream" and eng.find("b", "d/s").kind == "stream"
    assert [e.kind for e in eng.listdir("b", "d/")] == ["stream"]
    eng.set_attrs("b", "d/s", mtime_ns=10**18)
    big = os.urandom(6 * MiB)  # two parts of a multipart upload
    (tmp_path / "big").write_bytes(big)
    eng.upload(str(tmp_path / "big"), "b", "d/obj", as_object=True, part_size=5 * MiB)
    assert read_all(eng, "d/obj") == big
    eng.copy("b", "d/s", "b", "e/s")
    eng.copy("b", "d/obj", "b", "e/obj")
    eng.delete("b", "d/s")
    ops = {op for op, _, _ in store.sent}
    assert {"head", "get", "put", "copy from", "copy to", "mpu_create", "mpu_part"} <= ops, ops
    assert [s for s in store.sent if s[2] != key] == []
    # Nothing was written without it.
    for k in ("e/s/.manifest", f"e/s/{mf.segment_name(1)}", "e/obj"):
        with pytest.raises(errors.AccessDenied):
            store.get("b", k)


def test_a_copy_takes_each_side_s_options_from_the_call(tmp_path):
    """Engine.copy's ``source``/``dest`` override the engine's options: a re-encrypting
    copy through one engine over one store."""
    old, new = os.urandom(32), os.urandom(32)
    store = KeyRecorder()
    store.create_bucket("b")
    cfg = TransferConfig(segment_size=SEG, workers=2, staging_dir=str(tmp_path))
    with Engine(store, cfg, request=RequestOptions(old)).open_writer("b", "s") as w:
        w.write(b"y" * (2 * SEG))
    eng = Engine(store, cfg, request=RequestOptions(new))
    store.sent.clear()
    eng.copy("b", "s", "b", "t", source=RequestOptions(old))
    assert {sse for _, k, sse in store.sent if k.startswith("s/")} == {old}  # every source request
    assert {sse for _, k, sse in store.sent if k.startswith("t/")} == {new}  # every destination one
    assert read_all(eng, "t") == b"y" * (2 * SEG)
    with pytest.raises(errors.AccessDenied):
        read_all(eng, "s")
    assert eng.stat("b", "s", request=RequestOptions(old)).size == 2 * SEG


def test_request_options_never_show_the_key():
    key = bytes(range(32))
    assert key.hex() not in repr(RequestOptions(key)) and repr(key) not in repr(RequestOptions(key))
    with pytest.raises(errors.UsageError):
        RequestOptions(b"short")

# -- writes into the unsealed tail, holes -----------------------------------------------------------

def check_stream(store, eng: Engine, key: str, want: bytes) -> mf.Manifest:
    """The stream reads back as ``want``, its manifest's SHA-256 and every segment's CRC32
    (metadata and the server-checked checksum) match the bytes stored."""
    assert read_all(eng, key) == want
    m = manifests.load(store, "b", key + "/").manifest
    assert m.completed and m.total_size == len(want)
    assert m.sha256 == hashlib.sha256(want).hexdigest()
    pos = 0
    for i, size in enumerate(m.layout.sizes(), 1):
        body, info = store.get("b", f"{key}/{mf.segment_name(i)}")
        assert body == want[pos:pos + size]
        assert info.metadata["crc32"] == mf.crc32_bytes(crc32(body)).hex()
        pos += size
    assert pos == len(want)
    return m


def test_pwrite_patches_the_unsealed_tail_and_fills_holes_with_zeros(store, cfg):
    eng = Engine(store, cfg)
    model = bytearray(os.urandom(3 * SEG + 100))
    w = eng.open_writer("b", "s", hold_back=SEG)
    w.write(bytes(model))
    # Held back: the full segment before the last one, and the last, stay writable.
    assert w.sealed == 2 * SEG and w.offset == len(model)
    for off, data in ((2 * SEG, b"H" * 30),               # the start of the held-back segment
                      (3 * SEG - 5, b"across the boundary"),  # from one staged segment into the next
                      (len(model) - 3, b"past the end")):    # overwrites 3 bytes, appends the rest
        assert w.pwrite(off, data) == len(data)
        model[off:off + len(data)] = data
    assert w.offset == len(model)
    gap_at = len(model) + 2 * SEG + 7  # a hole over whole segments: zeros, sealed as usual
    w.pwrite(gap_at, b"after the hole")
    model += bytes(gap_at - len(model)) + b"after the hole"
    assert w.sealed > 3 * SEG and w.offset == len(model)
    w.pwrite(w.sealed, b"first unsealed byte")  # still writable, and after a patch the hash catches up
    model[w.sealed:w.sealed + 19] = b"first unsealed byte"
    w.close()
    m = check_stream(store, eng, "s", bytes(model))
    assert m.num_segments == -(-len(model) // SEG)


def test_a_write_into_sealed_data_is_refused_and_nothing_changes(store, cfg):
    eng = Engine(store, cfg)
    data = os.urandom(2 * SEG + 10)
    w = eng.open_writer("b", "s")  # hold_back 0, as put: a full segment is sealed at once
    w.write(data)
    assert w.sealed == 2 * SEG
    for off in (0, SEG, 2 * SEG - 1):
        with pytest.raises(errors.SeekNotAllowed, match="sealed") as e:
            w.pwrite(off, b"XY")
        assert e.value.errno == 29  # ESPIPE
    with pytest.raises(errors.SeekNotAllowed):
        w.truncate(2 * SEG - 1)
    assert (w.sealed, w.offset) == (2 * SEG, len(data))
    w.pwrite(2 * SEG, b"ok")  # the unsealed tail still changes
    w.close()
    check_stream(store, eng, "s", data[:2 * SEG] + b"ok" + data[2 * SEG + 2:])


def test_truncate_extends_with_zeros_and_cuts_only_the_unsealed_tail(store, cfg):
    eng = Engine(store, cfg)
    a = os.urandom(SEG + 200)
    w = eng.open_writer("b", "s", hold_back=SEG)
    w.write(a)
    w.truncate(SEG + 50)           # inside the last staged segment
    w.truncate(SEG)                # at a segment boundary: the held-back full segment is the last now
    w.write(b"x" * 10)
    w.truncate(0)                  # back to the sealed end (nothing sealed yet): empty again
    w.write(a[:100])
    w.truncate(3 * SEG + 1)        # extend: zeros, over whole segments
    w.close()
    check_stream(store, eng, "s", a[:100] + bytes(3 * SEG + 1 - 100))
    w = eng.open_writer("b", "e")
    w.truncate(5)
    w.truncate(0)
    w.close()
    assert check_stream(store, eng, "e", b"").num_segments == 1  # the one empty segment


def test_an_append_after_a_complete_stream_pwrites_past_its_end(store, cfg):
    eng = Engine(store, cfg)
    a = os.urandom(SEG + 3)
    with eng.open_writer("b", "s") as w:
        w.write(a)
    w = eng.open_writer("b", "s", mode="append", hold_back=SEG)
    assert w.sealed == w.offset == len(a)
    with pytest.raises(errors.SeekNotAllowed):
        w.pwrite(len(a) - 1, b"x")
    w.pwrite(len(a) + 10, b"tail")
    w.pwrite(len(a) + 2, b"in")
    w.close()
    want = a + bytes(2) + b"in" + bytes(6) + b"tail"
    assert read_all(eng, "s") == want
    m = manifests.load(store, "b", "s/").manifest
    assert m.completed and m.total_size == len(want) and m.sha256 == ""  # an append drops it


@pytest.mark.parametrize("seed", range(6))
def test_random_writes_truncates_and_holes_match_a_local_file(store, cfg, seed, monkeypatch):
    import random
    rnd = random.Random(seed)
    eng = Engine(store, cfg)
    model = bytearray()
    w = eng.open_writer("b", "s", hold_back=rnd.choice([0, SEG // 2, SEG]))
    for _ in range(60):
        op = rnd.random()
        if op < 0.1 and len(model) > w.sealed:
            n = rnd.randrange(w.sealed, len(model))
            w.truncate(n)
            del model[n:]
        elif op < 0.2:
            n = len(model) + rnd.randrange(0, 2 * SEG)
            w.truncate(n)
            model += bytes(n - len(model))
        else:
            data = os.urandom(rnd.randrange(1, SEG + SEG // 2))
            lo = w.sealed if rnd.random() < 0.8 else 0
            off = rnd.randrange(lo, len(model) + SEG)
            if off < w.sealed:
                with pytest.raises(errors.SeekNotAllowed):
                    w.pwrite(off, data)
                continue
            w.pwrite(off, data)
            model += bytes(max(0, off - len(model)))
            model[off:off + len(data)] = data
        assert w.offset == len(model)
    w.close()
    check_stream(store, eng, "s", bytes(model))


def test_a_sequential_writer_reads_nothing_back(store, cfg, monkeypatch):
    from s3pipefs.engine.staging import StagedFile
    reads = []
    real = StagedFile.read_back
    monkeypatch.setattr(StagedFile, "read_back", lambda self, feed=None: reads.append(self.path) or real(self, feed))
    eng = Engine(store, cfg)
    data = os.urandom(5 * SEG + 3)
    with eng.open_writer("b", "s", hold_back=SEG) as w:
        w.write(data[:100])
        w.pwrite(100, data[100:])  # at the end: an append
    assert reads == []
    with eng.open_writer("b", "p", hold_back=SEG) as w:
        w.write(data)
        w.pwrite(4 * SEG + 1, b"!")  # patches the held-back segment: it and the next are read back
        w.write(data)
    assert len(reads) == 2 + 5  # then the hash is behind: each segment after it once, at seal
    check_stream(store, eng, "p", data[:4 * SEG + 1] + b"!" + data[4 * SEG + 2:] + data)


class _LostReply(MemoryStore):
    """A store whose first conditional PUT of a key lands and then answers 412, as a
    retried PUT whose first reply was lost meets its own write."""

    def __init__(self):
        super().__init__()
        self.lost: set[str] = set()

    def put(self, bucket, key, body, **kw):
        etag = super().put(bucket, key, body, **kw)
        if kw.get("if_none_match") and key not in self.lost:
            self.lost.add(key)
            raise errors.Busy(f"s3://{bucket}/{key}: changed by another writer")
        return etag


@pytest.mark.parametrize("size", [1000, 3 * MiB // 2])  # a body in memory, a body from its staging file
def test_a_file_put_that_meets_its_own_landed_write_succeeds_and_another_s_is_refused(tmp_path, size):
    store = _LostReply()
    store.create_bucket("b")
    eng = Engine(store, TransferConfig(segment_size=4 * MiB, staging_dir=str(tmp_path)))
    data = os.urandom(size)
    w = eng.open_file_writer("b", "mine", existing=None)
    w.pwrite(0, data)
    w.close()
    assert store.get("b", "mine")[0] == data and w.committed.etag == hashlib.md5(data).hexdigest()
    # Another writer's bytes under the name: refused, and they stay.
    store.lost.add("theirs")
    w = eng.open_file_writer("b", "theirs", existing=None)
    w.pwrite(0, data)
    store.put("b", "theirs", b"x" * size)
    with pytest.raises(errors.Busy, match="created meanwhile"):
        w.close()
    assert store.get("b", "theirs")[0] == b"x" * size


@pytest.mark.parametrize("seed", range(4))
def test_a_pending_file_held_in_memory_moves_to_its_staging_file_unchanged(tmp_path, seed):
    """Small pending files stay in memory (no staging directory at all), within what the
    budget lets them hold there together; past HELD_IN_MEMORY or that room they move to a
    staging file with every byte, hole and patch, and the PUT's CRC32 still matches."""
    import random

    from s3pipefs.engine.budget import WriteBudget
    from s3pipefs.engine.filewriter import HELD_IN_MEMORY
    rnd = random.Random(seed)
    store = MemoryStore()
    store.create_bucket("b")
    budget = WriteBudget(1 << 30, 2, memory_limit=50_000)
    eng = Engine(store, TransferConfig(segment_size=4 * MiB, staging_dir=str(tmp_path)), write_budget=budget)
    small = eng.open_file_writer("b", "small", existing=None)
    small.pwrite(0, b"a" * 30_000)
    assert os.listdir(tmp_path) == [] and budget.in_memory == budget.held == 30_000
    # Another file: in memory while the room lasts, then on disk, though under HELD_IN_MEMORY.
    other = eng.open_file_writer("b", "other", existing=None)
    other.pwrite(0, b"b" * 15_000)
    assert os.listdir(tmp_path) == [] and budget.in_memory == 45_000
    other.pwrite(15_000, b"c" * 15_000)
    assert len(os.listdir(tmp_path)) == 1 and budget.in_memory == 30_000 and budget.held == 60_000
    other.close()
    assert store.get("b", "other")[0] == b"b" * 15_000 + b"c" * 15_000

    model = bytearray(b"a" * 30_000)
    for _ in range(40):
        op = rnd.random()
        if op < 0.15:
            n = rnd.randrange(0, 2 * HELD_IN_MEMORY)
            small.truncate(n)
            model = model[:n] + bytes(max(0, n - len(model)))
        else:
            data = os.urandom(rnd.randrange(1, 20_000))
            off = rnd.randrange(0, len(model) + 10_000)
            small.pwrite(off, data)
            model += bytes(max(0, off - len(model)))
            model[off:off + len(data)] = data
        assert small.offset == len(model) and small.read_staged(0, len(model) + 1) == bytes(model)
        assert budget.held == len(model) or len(model) > HELD_IN_MEMORY or budget.in_memory == 0
        assert budget.in_memory <= budget.memory_limit
    small.close()
    body, info = store.get("b", "small")
    assert body == bytes(model)
    assert budget.held == 0 and budget.in_memory == 0 and os.listdir(tmp_path) == []


def test_timed_calls_run_in_order_on_one_thread_and_cancelled_ones_never():
    import threading
    import time

    from s3pipefs.engine.later import Later
    later, ran = Later(), []
    threads = set()

    def call(name):
        return lambda: (ran.append(name), threads.add(threading.get_ident()))
    later.call_later(0.3, call("late"))
    later.call_later(0.1, call("early"))  # armed after, due before: wakes the thread
    later.call_later(0.05, call("cancelled")).cancel()
    later.call_later(0.2, lambda: 1 / 0)  # a failing call stops nothing
    time.sleep(0.6)
    assert ran == ["early", "late"] and len(threads) == 1
