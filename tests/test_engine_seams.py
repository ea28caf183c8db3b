"""The engine's shared pieces, each decided in one place: what a key names (engine/kinds.py),
the one-writer lease (engine/lease.py), stream deletion (engine/deletion.py). Real SeaweedFS."""
from __future__ import annotations

import time

import pytest

from s3pipefs import errors, manifest as mf
from s3pipefs.config import MiB, TransferConfig
from s3pipefs.engine import Engine, kinds, manifests
from s3pipefs.engine.lease import Lease, new_writer_id

SEG = 1 * MiB
TCFG = TransferConfig(segment_size=SEG, workers=2, heartbeat_interval=1.0)


def write_stream(store, bucket, key, data=b"x" * 1000):
    with Engine(store, TCFG).open_writer(bucket, key) as w:
        w.write(data)


def kind(store, bucket, key):
    found = kinds.find(store, bucket, key)
    return None if found is None else found.kind


# -- what a key names --------------------------------------------------------------------

def test_kind_of_stream_object_marker_and_nothing(store, bucket):
    write_stream(store, bucket, "s")
    store.put(bucket, "o", b"plain")
    store.put(bucket, "d/", b"")                       # a directory marker, nothing else
    store.put(bucket, "tree/leaf", b"1")
    assert kind(store, bucket, "s") == kinds.STREAM
    assert kinds.find(store, bucket, "s").loaded.manifest.completed
    assert kind(store, bucket, "o") == kinds.OBJECT
    assert kinds.find(store, bucket, "o").info.size == 5
    assert kind(store, bucket, "d") == kinds.DIR
    assert kind(store, bucket, "tree") == kinds.DIR
    assert kind(store, bucket, "nothing") is None
    assert kind(store, bucket, "") == kinds.DIR        # the bucket itself


def test_kind_of_an_emptied_prefix_is_nothing(store, bucket):
    # SeaweedFS keeps listing a folder whose last object went; it names nothing.
    store.put(bucket, "gone/a", b"1")
    store.delete(bucket, "gone/a")
    # (The server still lists the folder, which is what makes this case matter.)
    assert "gone/" in list(store.list(bucket, "", delimiter="/"))
    assert kind(store, bucket, "gone") is None
    assert Engine(store, TCFG).stat(bucket, "gone") is None
    assert [e.name for e in Engine(store, TCFG).listdir(bucket, "")] == []


def test_kind_of_a_key_that_is_an_object_and_a_prefix(store, bucket):
    store.put(bucket, "both", b"object")
    store.put(bucket, "both/child", b"under it")
    assert kind(store, bucket, "both") == kinds.OBJECT
    # Written as a directory, the same name is one: a trailing '/' never names an object.
    assert kind(store, bucket, "both/") == kinds.DIR
    # The engine's stat takes names (slashes ignored): the object.
    assert Engine(store, TCFG).stat(bucket, "both/").kind == "object"


def test_a_stream_wins_over_an_object_of_its_name(store, bucket):
    store.put(bucket, "x", b"object")
    write_stream(store, bucket, "x")
    assert kind(store, bucket, "x") == kinds.STREAM
    assert Engine(store, TCFG).stat(bucket, "x").kind == "stream"


def test_split_listing_applies_the_same_rule(store, bucket):
    write_stream(store, bucket, "p/s", b"y" * 2500)
    write_stream(store, bucket, "p/s/inner")          # nested inside a stream: belongs to it
    store.put(bucket, "p/o", b"obj")
    infos = [o for o in store.list(bucket, "p/")]
    objects, streams = kinds.split_listing(infos, "p/")
    assert [o.key for o in objects] == ["p/o"]
    assert list(streams) == ["p/s/"] and streams["p/s/"][1] == 2500


# -- the lease -----------------------------------------------------------------------------

def test_lease_refuses_a_stream_a_live_writer_holds(store, bucket):
    w = Engine(store, TCFG).open_writer(bucket, "held")
    try:
        w.write(b"abc")
        existing = manifests.load(store, bucket, "held/")
        lease = Lease(store, bucket, "held/", new_writer_id("copy-"), where="held")
        with pytest.raises(errors.Busy, match="another writer"):
            lease.take(existing.manifest.with_(writer_id=lease.writer_id), existing, TCFG.stale_after)
        # Nothing was written: the writer still holds it and can commit.
        assert manifests.load(store, bucket, "held/").manifest.writer_id == w.writer_id
    finally:
        w.close()
    assert Engine(store, TCFG).stat(bucket, "held").complete


def test_lease_save_fails_once_another_writer_took_the_stream(store, bucket):
    write_stream(store, bucket, "taken")
    existing = manifests.load(store, bucket, "taken/")
    a = Lease(store, bucket, "taken/", new_writer_id(), where="taken")
    first = existing.manifest.with_(completed=False, writer_id=a.writer_id, heartbeat=time.time())
    a.take(first, existing, TCFG.stale_after)
    # Another writer overwrites the manifest behind a's back (a dead-writer takeover).
    b_id = new_writer_id()
    manifests.save(store, bucket, "taken/", first.with_(writer_id=b_id))
    with pytest.raises(errors.Busy):
        a.save(first.with_(heartbeat=time.time()))
    with pytest.raises(errors.Busy, match="lost the stream"):
        a.renew()
    assert manifests.load(store, bucket, "taken/").manifest.writer_id == b_id


def test_lease_release_leaves_heartbeat_zero(store, bucket):
    lease = Lease(store, bucket, "rel/", new_writer_id(), where="rel")
    assert manifests.load(store, bucket, "rel/") is None
    first = mf.Manifest(completed=False, segment_size=SEG, layout=mf.Layout(), writer_id=lease.writer_id,
                        heartbeat=time.time())
    lease.take(first, None, TCFG.stale_after)
    lease.keep_alive(0.05, lambda: first.with_(heartbeat=time.time()))
    time.sleep(0.3)
    lease.release(first)
    got = manifests.load(store, bucket, "rel/").manifest
    assert got.heartbeat == 0 and got.writer_id == lease.writer_id
    assert not Engine(store, TCFG).stat(bucket, "rel").writer_alive


# -- deleting a stream ---------------------------------------------------------------------

def test_stream_deletion_takes_the_manifest_first(s3_server, store, bucket):
    # DeleteObjects (the segments) is refused: the stream must not be left looking whole.
    from s3pipefs.config import S3Config
    from s3pipefs.s3 import Store
    from tests.faultproxy import FaultProxy, Rule

    write_stream(store, bucket, "doomed", b"z" * (2 * SEG + 10))
    with FaultProxy(s3_server.endpoint) as proxy:
        proxy.add(Rule("status", method="POST", query_contains="delete", status=403, code="AccessDenied",
                       times=-1))
        with pytest.raises(errors.S3PipeError):
            Engine(Store(S3Config(endpoint_url=proxy.endpoint)), TCFG).delete(bucket, "doomed")
    assert manifests.load(store, bucket, "doomed/") is None
    assert len([o for o in store.list(bucket, "doomed/")]) == 3   # the segments are still there
    assert kind(store, bucket, "doomed") == kinds.DIR              # no stream, complete or not


def test_leftovers_spare_the_live_staging_dir_and_the_stream(store, bucket):
    from s3pipefs.engine import deletion

    for k in ("s/000000000000001", "s/000000000000002", "s/000000000000003", "s/.manifest",
              "s/.next-dead/000000000000001", "s/.next-mine/000000000000001", "s/other"):
        store.put(bucket, k, b"1")
    deletion.delete_leftovers(store, bucket, "s/", keep=2, spare=".next-mine/")
    assert sorted(o.key for o in store.list(bucket, "s/")) == [
        "s/.manifest", "s/.next-mine/000000000000001", "s/000000000000001", "s/000000000000002", "s/other"]
    deletion.delete_leftovers(store, bucket, "s/", keep=2)   # nothing spared: every staging dir goes
    assert "s/.next-mine/000000000000001" not in [o.key for o in store.list(bucket, "s/")]


# -- part sizes ----------------------------------------------------------------------------

def test_part_size_fits_every_size_into_s3s_limits():
    from s3pipefs.engine.parts import COPY_PART, MAX_PARTS, MIN_PART, UPLOAD_PART, part_size

    assert part_size(1000, 4096) == 4096                 # one part: no minimum, no rounding
    assert part_size(100 * MiB, 1 * MiB) == MIN_PART      # several parts: at least 5 MiB
    assert part_size(None, 1 * MiB) == MIN_PART           # a pipe may need several
    five_tib = 5 * 1024 ** 4
    for wanted in (UPLOAD_PART, COPY_PART):
        p = part_size(five_tib, wanted)
        assert p % MiB == 0 and -(-five_tib // p) <= MAX_PARTS and p >= wanted
    assert part_size(6 * 1000 ** 3, COPY_PART) == COPY_PART
