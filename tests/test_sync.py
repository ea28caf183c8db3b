"""`s3pipefs sync` (engine/sync/) against a real SeaweedFS: buckets, prefixes, directories."""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import subprocess
import threading
import time

from s3pipefs import manifest as mf
from s3pipefs.config import MiB, TransferConfig
from s3pipefs.engine import Engine
from s3pipefs.engine.sync import Sync, SyncOptions, make_filter, parse_location
from tests.conftest import run_cli
from tests.faultproxy import FaultProxy, Rule

TCFG = TransferConfig(segment_size=1 * MiB, workers=4)


def sync_json(s3_server, *args, endpoint=None) -> tuple[int, dict, str]:
    r = run_cli(s3_server, "sync", "--json", *args, endpoint=endpoint)
    return r.returncode, json.loads(r.stdout or b"{}"), r.stderr.decode()


def write_stream(store, bucket, key, data):
    w = Engine(store, TCFG).open_writer(bucket, key)
    w.write(data)
    w.close()


def read_stream(store, bucket, key) -> bytes:
    r = Engine(store, TCFG).open_reader(bucket, key, follow=False)
    try:
        return b"".join(bytes(c) for c in r.chunks(0))
    finally:
        r.close()


def fill(store, bucket, prefix, n) -> dict[str, bytes]:
    """n small objects in nested prefixes (several listing pages' worth of keys)."""
    objs = {f"{prefix}d{i % 7}/e{i % 3}/f{i:04d}.txt": os.urandom(200 + i % 50) for i in range(n)}
    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: store.put(bucket, kv[0], kv[1]), objs.items()))
    return objs


def listing(store, bucket, prefix=""):
    return {o.key: o for o in store.list(bucket, prefix)}


def test_bucket_to_bucket_then_rerun_then_one_change(store, bucket, bucket2, s3_server):
    n = 400
    objs = fill(store, bucket, "data/", n)
    s1, s2 = os.urandom(3 * MiB + 5), os.urandom(MiB // 2)
    write_stream(store, bucket, "data/streams/one", s1)
    write_stream(store, bucket, "data/d1/two", s2)

    t0 = time.monotonic()
    rc, rep, err = sync_json(s3_server, f"s3://{bucket}/data", f"s3://{bucket2}/copy/")
    first = time.monotonic() - t0
    assert rc == 0, err
    assert (rep["copied"], rep["failed"], rep["skipped"]) == (n + 2, 0, 0)
    dst = listing(store, bucket2, "copy/")
    for k, v in objs.items():
        o = dst["copy/" + k[len("data/"):]]
        assert o.etag == hashlib.md5(v).hexdigest() and o.size == len(v)
    # Streams went as streams: segments + manifest, readable, complete.
    assert read_stream(store, bucket2, "copy/streams/one") == s1
    assert read_stream(store, bucket2, "copy/d1/two") == s2
    assert "copy/streams/one/" + mf.segment_name(4) in dst

    time.sleep(1.2)  # LastModified has one-second resolution
    rc, rep, err = sync_json(s3_server, f"s3://{bucket}/data", f"s3://{bucket2}/copy/")
    assert rc == 0, err
    assert (rep["copied"], rep["skipped"], rep["bytes"]) == (0, n + 2, 0)
    # Two bucket checks and two single-page listings (<1000 keys each): nothing else.
    assert rep["requests"] <= 6, rep
    again = listing(store, bucket2, "copy/")
    assert {k: o.last_modified for k, o in again.items()} == {k: o.last_modified for k, o in dst.items()}

    # One object changes (same size, new bytes): only it is copied.
    changed = "data/d3/e1/f0010.txt"
    assert changed in objs
    store.put(bucket, changed, os.urandom(len(objs[changed])))
    rc, rep, err = sync_json(s3_server, f"s3://{bucket}/data", f"s3://{bucket2}/copy/")
    assert (rc, rep["copied"], rep["skipped"]) == (0, 1, n + 1), err
    after = listing(store, bucket2, "copy/")
    moved = {k for k in after if after[k].last_modified != dst[k].last_modified}
    assert moved == {"copy/d3/e1/f0010.txt"}
    print(f"\nsync of {n} objects + 2 streams: {first:.2f}s wall (CLI), "
          f"{rep['requests']} requests on the one-change re-run")


def test_dir_to_s3_to_dir_is_identical(tmp_path, store, bucket, s3_server):
    src = tmp_path / "src"
    files = {
        "a.txt": b"hello\n", "empty": b"", "sub/b.json": b'{"x": 1}', "sub/deeper/c.bin": os.urandom(70000),
        "sp ace/ünïcode.txt": "grüße".encode(), "big/blob.dat": os.urandom(11 * MiB + 3),
    }
    for rel, data in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    rc, rep, err = sync_json(s3_server, "--part-size", "5M", str(src), f"s3://{bucket}/tree")
    assert rc == 0 and rep["copied"] == len(files), err
    assert store.head(bucket, "tree/a.txt").content_type == "text/plain"
    assert store.head(bucket, "tree/sub/b.json").content_type == "application/json"
    big = store.head(bucket, "tree/big/blob.dat")
    assert big.etag.endswith("-3")  # multipart: the re-run must still recognise it
    # A stream in the tree comes down as one file.
    stream_data = os.urandom(2 * MiB + 1)
    write_stream(store, bucket, "tree/sub/stream.tar", stream_data)

    out = tmp_path / "out"
    rc, rep, err = sync_json(s3_server, f"s3://{bucket}/tree", str(out))
    assert rc == 0 and rep["copied"] == len(files) + 1, err
    (src / "sub/stream.tar").write_bytes(stream_data)
    assert subprocess.run(["diff", "-r", str(src), str(out)]).returncode == 0
    assert not [p for p in out.rglob("*") if ".s3pipefs-" in p.name]  # no temp files left

    # Re-runs in both directions copy nothing.
    os.unlink(src / "sub/stream.tar")
    rc, rep, err = sync_json(s3_server, "--part-size", "5M", str(src), f"s3://{bucket}/tree")
    assert (rc, rep["copied"], rep["skipped"]) == (0, 0, len(files)), err
    rc, rep, err = sync_json(s3_server, f"s3://{bucket}/tree", str(out))
    assert (rc, rep["copied"], rep["skipped"]) == (0, 0, len(files) + 1), err
    # A local edit that keeps size and mtime is still found (MD5 against the ETag).
    p = src / "sub/deeper/c.bin"
    st = p.stat()
    p.write_bytes(os.urandom(70000))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    rc, rep, err = sync_json(s3_server, str(src), f"s3://{bucket}/tree")
    assert (rc, rep["copied"]) == (0, 1), err


def test_delete_and_dry_run(store, bucket, bucket2, s3_server, tmp_path):
    fill(store, bucket, "", 20)
    rc, rep, _ = sync_json(s3_server, f"s3://{bucket}", f"s3://{bucket2}")
    assert rc == 0 and rep["copied"] == 20
    store.put(bucket2, "extra/one", b"1")
    store.put(bucket2, "keep.log", b"2")
    write_stream(store, bucket2, "extra/stream", b"s" * 1000)
    store.delete(bucket, "d0/e0/f0000.txt")
    before = listing(store, bucket2)

    rc, rep, _ = sync_json(s3_server, "--dry-run", "--delete", "--exclude", "*.log",
                           f"s3://{bucket}", f"s3://{bucket2}")
    assert rc == 0 and rep["dry_run"]
    assert sorted(a["path"] for a in rep["actions"] if a["action"] == "delete") == [
        "d0/e0/f0000.txt", "extra/one", "extra/stream"]
    assert listing(store, bucket2).keys() == before.keys()  # nothing changed
    r = run_cli(s3_server, "sync", "--dry-run", "--delete", f"s3://{bucket}", f"s3://{bucket2}")
    assert b"would delete extra/stream" in r.stdout

    rc, rep, _ = sync_json(s3_server, "--delete", "--exclude", "*.log", f"s3://{bucket}", f"s3://{bucket2}")
    assert rc == 0 and rep["deleted"] == 3 and rep["copied"] == 0
    left = listing(store, bucket2)
    assert "keep.log" in left and not [k for k in left if k.startswith("extra/")]
    assert "d0/e0/f0000.txt" not in left

    # --delete on a local destination, pruning emptied directories.
    out = tmp_path / "o"
    assert sync_json(s3_server, f"s3://{bucket}", str(out))[0] == 0
    (out / "x/y").mkdir(parents=True)
    (out / "x/y/stray").write_bytes(b"z")
    rc, rep, _ = sync_json(s3_server, "--delete", f"s3://{bucket}", str(out))
    assert rc == 0 and rep["deleted"] == 1  # the stray file
    assert not (out / "x").exists()


def test_verbose_sync_lists_its_deletions(store, bucket, bucket2, s3_server, tmp_path):
    store.put(bucket, "same", b"s")
    store.put(bucket, "new", b"n")
    store.put(bucket2, "same", b"s")
    store.put(bucket2, "gone/obj", b"1")
    write_stream(store, bucket2, "gone/stream", b"x" * 1000)
    r = run_cli(s3_server, "sync", "--delete", "-v", f"s3://{bucket}", f"s3://{bucket2}")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode().splitlines()
    # Batched objects and streams alike, like the copies; nothing for what was kept.
    assert sorted(line for line in out if line.startswith("delete ")) == [
        "delete gone/obj (not in source)", "delete gone/stream (not in source)"]
    assert "copy new (new)" in out and not [line for line in out if "same" in line]
    # A local destination too.
    dst = tmp_path / "d"
    dst.mkdir()
    (dst / "stray").write_bytes(b"z")
    r = run_cli(s3_server, "sync", "--delete", "-v", f"s3://{bucket}", str(dst))
    assert r.returncode == 0 and "delete stray (not in source)" in r.stdout.decode().splitlines(), r.stderr


def test_include_exclude_and_filter_rules():
    ok = make_filter([("exclude", "secret*"), ("include", "*.txt"), ("include", "docs/*")])
    assert ok("a/b.txt") and ok("docs/x.bin") and not ok("a/b.bin") and not ok("secret.txt")
    ok = make_filter([("exclude", "tmp/*"), ("exclude", "*.o")])
    assert ok("src/a.c") and not ok("tmp/x") and not ok("deep/dir/a.o")
    assert isinstance(parse_location("s3://b/p"), object) and parse_location("s3://b/p").prefix == "p/"


def test_existing_only_default_and_checksum_modes(store, bucket, bucket2, s3_server):
    # A multipart source (ETag "...-2") and a same-sized, newer, different single-part copy:
    # the default mode has no comparable ETag and falls back to size + time (skips);
    # --checksum compares the MD5s (s3pipefs metadata vs ETag) and copies.
    data = os.urandom(6 * MiB)
    from s3pipefs.engine import transfer

    transfer.upload_file(store, _BytesFile(data), bucket, "m/obj", part_size=5 * MiB,
                         metadata={"md5": hashlib.md5(data).hexdigest()})
    assert store.head(bucket, "m/obj").etag.endswith("-2")
    time.sleep(1.1)
    store.put(bucket2, "m/obj", os.urandom(6 * MiB))
    store.put(bucket, "m/small", b"abc")
    store.put(bucket2, "m/small", b"xyz")  # same size, different MD5 ETag

    rc, rep, _ = sync_json(s3_server, "--existing-only", f"s3://{bucket}/m", f"s3://{bucket2}/m")
    assert (rc, rep["copied"], rep["skipped"]) == (0, 0, 2)
    rc, rep, _ = sync_json(s3_server, f"s3://{bucket}/m", f"s3://{bucket2}/m")
    assert (rc, rep["copied"], rep["skipped"]) == (0, 1, 1)  # small: MD5 differs; obj: time says fine
    rc, rep, _ = sync_json(s3_server, "--checksum", f"s3://{bucket}/m", f"s3://{bucket2}/m")
    assert (rc, rep["copied"], rep["skipped"]) == (0, 1, 1)
    assert store.get(bucket2, "m/obj")[0] == data
    rc, rep, _ = sync_json(s3_server, "--checksum", f"s3://{bucket}/m", f"s3://{bucket2}/m")
    assert (rc, rep["copied"]) == (0, 0)


class _BytesFile:
    """A pipe-like reader (no fileno), so upload_file takes its sequential path."""

    def __init__(self, data):
        import io

        self._b = io.BytesIO(data)

    def read(self, n=-1):
        return self._b.read(n)


def test_failures_are_listed_and_block_deletes(store, bucket, bucket2, s3_server):
    fill(store, bucket, "", 30)
    store.put(bucket2, "stale", b"x")
    with FaultProxy(s3_server.endpoint) as proxy:
        proxy.add(Rule("status", status=403, code="AccessDenied", method="PUT",
                       path_contains=f"/{bucket2}/d2/e2/f0002.txt", times=-1))
        r = run_cli(s3_server, "sync", "--delete", f"s3://{bucket}", f"s3://{bucket2}", endpoint=proxy.endpoint)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert "failed: d2/e2/f0002.txt" in err and "access denied" in err and "Traceback" not in err
    assert "deletions skipped" in err
    assert "failed 1" in r.stdout.decode()
    assert store.head(bucket2, "stale") is not None
    assert store.head(bucket2, "d3/e0/f0003.txt") is not None  # the others were copied


def test_sync_errors(s3_server, bucket, tmp_path):
    r = run_cli(s3_server, "sync", str(tmp_path), f"s3://nosuchbucket{os.getpid()}/x")
    assert r.returncode == 1 and "no such bucket" in r.stderr.decode()
    r = run_cli(s3_server, "sync", str(tmp_path), str(tmp_path / "x"))
    assert r.returncode == 2
    r = run_cli(s3_server, "sync", f"s3://{bucket}/a", f"s3://{bucket}/a/b")
    assert r.returncode == 2 and "overlap" in r.stderr.decode()


def test_unsafe_keys_are_refused_for_local_destinations():
    # SeaweedFS refuses such keys itself; AWS stores them, so the check is tested directly.
    from s3pipefs.engine.sync import safe_rel

    for bad in ("a/../../escape", "../x", "/etc/passwd", "a//b", "./a", "a/.", "", "a\x00b"):
        assert not safe_rel(bad), bad
    for good in ("a", "a/b.c", "..a/b", "a/...", "sp ace/ü"):
        assert safe_rel(good), good


def test_sync_in_process_reports_requests(store, bucket, bucket2):
    fill(store, bucket, "p/", 50)
    rep = Sync(Engine(store), parse_location(f"s3://{bucket}/p"), parse_location(f"s3://{bucket2}/p"),
               SyncOptions(workers=8, checkers=4)).run()
    assert rep.copied == 50 and rep.requests >= 50
    d = rep.as_dict()
    assert d["objects_per_second"] > 0 and d["failures"] == []


def test_sync_counts_every_request_and_rides_out_faults_on_the_quick_path(store, bucket, bucket2, s3_server, tmp_path):
    """A reset listing and 500s on uploads are retried; the reported request count is what
    the server saw (quick-path requests included, retries included)."""
    for i in range(120):
        p = tmp_path / "src" / f"d{i % 4}" / f"f{i:03d}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(100 + i))
    with FaultProxy(s3_server.endpoint) as proxy:
        proxy.add(Rule("reset", method="GET", path_contains=f"/{bucket}", times=1))
        proxy.add(Rule("status", status=500, method="PUT", path_contains=f"/{bucket}/up/d1/", times=5))
        code, rep, err = sync_json(s3_server, str(tmp_path / "src"), f"s3://{bucket}/up/", endpoint=proxy.endpoint)
        assert code == 0, err
        assert rep["copied"] == 120 and rep["failed"] == 0 and rep["retries"] >= 6
        assert rep["requests"] == proxy.count()
    got = listing(store, bucket, "up/")
    assert len(got) == 120
    for i in (0, 5, 119):
        rel = f"d{i % 4}/f{i:03d}"
        assert store.get(bucket, "up/" + rel)[0] == (tmp_path / "src" / rel).read_bytes()


def test_small_local_files_are_hashed_on_one_thread_and_changes_still_found(store, bucket, tmp_path, monkeypatch):
    # Hashing a small file is Python's per-file work under the GIL: one thread does it
    # faster than sixteen passing the GIL around. Large files still hash in parallel.
    from s3pipefs.engine.sync import compare, digests

    src = tmp_path / "src"
    files = {f"d{i % 5}/f{i:03d}": os.urandom(1000 + i) for i in range(150)}
    files.update({"big/a": os.urandom(compare.SMALL_FILE + 1), "big/b": os.urandom(compare.SMALL_FILE + 7)})
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    first = Sync(Engine(store), parse_location(str(src)), parse_location(f"s3://{bucket}/t/"), SyncOptions()).run()
    assert first.copied == len(files) and first.failed == 0
    for rel in ("d3/f008", "big/b"):  # same size, other bytes: only a hash can tell
        (src / rel).write_bytes(os.urandom(len(files[rel])))
    threads = {}
    real = digests.file_digest

    def spy(path, algo="md5"):
        threads[os.path.relpath(path, src)] = threading.current_thread().name
        return real(path, algo)
    monkeypatch.setattr(digests, "file_digest", spy)
    again = Sync(Engine(store), parse_location(str(src)), parse_location(f"s3://{bucket}/t/"), SyncOptions()).run()
    assert (again.copied, again.skipped, again.failed) == (2, len(files) - 2, 0)
    assert store.get(bucket, "t/d3/f008")[0] == (src / "d3/f008").read_bytes()
    assert store.get(bucket, "t/big/b")[0] == (src / "big/b").read_bytes()
    small = {name for rel, name in threads.items() if not rel.startswith("big/")}
    assert len(threads) == len(files) and len(small) == 1 and small.pop().startswith("s3pipefs-hash")
    assert all(threads[rel].startswith("s3pipefs-check") for rel in ("big/a", "big/b"))


# -- --shard and --files-from --------------------------------------------------------------------

def run_shards(s3_server, count, *args) -> list[dict]:
    """``count`` shard runs of `sync ARGS`, side by side, as N machines would run them."""
    def one(i):
        rc, rep, err = sync_json(s3_server, "--shard", f"{i}/{count}", *args)
        assert rc == 0, err
        return rep
    with cf.ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_shards_side_by_side_do_what_one_sync_does(store, bucket, bucket2, s3_server, tmp_path):
    from s3pipefs.engine.sync.locations import shard_of

    objs = fill(store, bucket, "", 60)
    write_stream(store, bucket, "streams/one", os.urandom(MiB + 7))
    entries = set(objs) | {"streams/one"}
    reps = run_shards(s3_server, 4, f"s3://{bucket}", f"s3://{bucket2}")
    # Each shard copied exactly its own paths, and together every path once.
    assert [rep["copied"] for rep in reps] == [sum(shard_of(e, 4) == i for e in entries) for i in range(4)]
    assert sum(rep["copied"] for rep in reps) == len(entries) and all(rep["copied"] for rep in reps)
    got = listing(store, bucket2)
    assert {k: o.etag for k, o in got.items() if not k.startswith("streams/")} == {
        k: o.etag for k, o in listing(store, bucket).items() if not k.startswith("streams/")}
    assert read_stream(store, bucket2, "streams/one") == read_stream(store, bucket, "streams/one")
    # The union is what one unsharded sync makes: that sync finds nothing to do.
    rc, rep, _ = sync_json(s3_server, f"s3://{bucket}", f"s3://{bucket2}")
    assert rc == 0 and rep["copied"] == 0 and rep["skipped"] == len(entries)
    # Every shard is idempotent.
    assert [rep["copied"] for rep in run_shards(s3_server, 4, f"s3://{bucket}", f"s3://{bucket2}")] == [0] * 4

    # --delete: each shard deletes the extra keys of its own shard, and nothing else.
    extras = [f"extra/x{i}" for i in range(12)]
    for k in extras:
        store.put(bucket2, k, b"x")
    gone = sorted(objs)[:3]
    store.delete_many(bucket, gone)
    reps = run_shards(s3_server, 3, "--delete", f"s3://{bucket}", f"s3://{bucket2}")
    for i, rep in enumerate(reps):
        deleted = sorted(a["path"] for a in rep["actions"] if a["action"] == "delete")
        assert deleted == sorted(k for k in extras + gone if shard_of(k, 3) == i)
        assert rep["copied"] == 0
    assert {k for k in listing(store, bucket2) if not k.startswith("streams/")} == set(objs) - set(gone)

    # Shards of a local destination: the same split, the same union.
    out = tmp_path / "out"
    run_shards(s3_server, 2, f"s3://{bucket}", str(out))
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert files == (set(objs) - set(gone)) | {"streams/one"}


def test_shard_split_is_fixed_and_checked():
    from s3pipefs.engine.sync.locations import parse_shard, shard_filter, shard_of

    # The split is a property of the key alone, the same on every machine, run and release:
    # shards of one job may run different versions.
    assert shard_of("d0/e0/f0000.txt", 1_000_003) == int.from_bytes(
        hashlib.blake2b(b"d0/e0/f0000.txt", digest_size=8).digest(), "big") % 1_000_003
    keys = [f"k{i}" for i in range(800)]
    sizes = [sum(shard_filter((i, 8))(k) for k in keys) for i in range(8)]
    assert sum(sizes) == 800 and min(sizes) > 60  # a split, not everything in one shard
    assert parse_shard("3/8") == (3, 8) and parse_shard("0/1") == (0, 1)
    for bad in ("8/8", "-1/8", "1", "a/b", "1/0", "1/8/2"):
        try:
            parse_shard(bad)
        except Exception as e:  # noqa: BLE001
            assert "I/N" in str(e)
        else:
            raise AssertionError(bad)


def test_bad_shard_and_files_from_are_usage_errors(s3_server, bucket, bucket2, tmp_path):
    r = run_cli(s3_server, "sync", "--shard", "4/4", f"s3://{bucket}", f"s3://{bucket2}")
    assert r.returncode == 2 and b"I/N" in r.stderr
    keys = tmp_path / "keys"
    keys.write_text("a\n")
    r = run_cli(s3_server, "sync", "--delete", "--files-from", str(keys), f"s3://{bucket}", f"s3://{bucket2}")
    assert r.returncode == 2 and b"--files-from" in r.stderr
    r = run_cli(s3_server, "sync", "--files-from", str(tmp_path / "nope"), f"s3://{bucket}", f"s3://{bucket2}")
    assert r.returncode == 2 and b"nope" in r.stderr
    inv = tmp_path / "inv.csv"
    inv.write_text('"other-bucket","a","1"\n')
    r = run_cli(s3_server, "sync", "--files-from", str(inv), f"s3://{bucket}", f"s3://{bucket2}")
    assert r.returncode == 2 and b"other-bucket" in r.stderr


def test_files_from_copies_exactly_the_listed_keys(store, bucket, bucket2, s3_server, tmp_path):
    import gzip
    from urllib.parse import quote_plus

    for k in ("p/a.txt", "p/b.txt", "p/c d.txt", "p/ünï/e+f.txt", "p/skip.txt", "q/outside.txt"):
        store.put(bucket, k, k.encode())
    write_stream(store, bucket, "p/s1", os.urandom(MiB + 3))
    write_stream(store, bucket, "p/s2", b"s2" * 1000)

    # One relative key a line, from stdin: a stream by its name; a missing key is reported.
    r = run_cli(s3_server, "sync", "--json", "--files-from", "-", f"s3://{bucket}/p", f"s3://{bucket2}/o",
                input=b"a.txt\r\ns1\n\nnot-there\nc d.txt\n")
    rep = json.loads(r.stdout)
    assert r.returncode == 1 and rep["missing"] == ["not-there"] and rep["failed"] == 0
    assert rep["copied"] == 3
    assert sorted(k for k in listing(store, bucket2) if not k.startswith("o/s1/")) == ["o/a.txt", "o/c d.txt"]
    assert read_stream(store, bucket2, "o/s1") == read_stream(store, bucket, "p/s1")
    r = run_cli(s3_server, "sync", "--files-from", "-", f"s3://{bucket}/p", f"s3://{bucket2}/o",
                input=b"a.txt\nnot-there\n")
    assert r.returncode == 1 and f"missing: not-there: listed in --files-from, not in s3://{bucket}/p/".encode() in r.stderr
    assert b"copied 0, skipped 1" in r.stdout and b"1 listed keys not in the source" in r.stdout

    # An S3 Inventory report (gzipped CSV, URL-encoded keys, more columns): rows outside the
    # source prefix are left out; a stream's segment or manifest names the stream.
    def row(key, size=1):
        return f'"{bucket}","{quote_plus(key)}","{size}","2026-01-01T00:00:00.000Z"\n'
    inv = tmp_path / "inventory.csv.gz"
    inv.write_bytes(gzip.compress("".join(
        row(k) for k in ("p/b.txt", "p/ünï/e+f.txt", "q/outside.txt", "p/s2/.manifest", "p/s2/000000000000001",
                         "p/gone.txt")).encode()))
    rc, rep, err = sync_json(s3_server, "--files-from", str(inv), f"s3://{bucket}/p", str(tmp_path / "d"))
    assert rc == 1 and rep["missing"] == ["gone.txt"]
    got = {str(p.relative_to(tmp_path / "d")): p.read_bytes() for p in (tmp_path / "d").rglob("*") if p.is_file()}
    assert sorted(got) == ["b.txt", "s2", "ünï/e+f.txt"]
    assert got["ünï/e+f.txt"] == b"p/\xc3\xbcn\xc3\xaf/e+f.txt" and got["s2"] == b"s2" * 1000

    # With --shard: the listed keys of that shard only; missing keys too.
    from s3pipefs.engine.sync.locations import shard_of
    listed = ["a.txt", "b.txt", "c d.txt", "skip.txt", "nope1", "nope2", "nope3"]
    for i in range(2):
        r = run_cli(s3_server, "sync", "--json", "--shard", f"{i}/2", "--files-from", "-",
                    f"s3://{bucket}/p", f"s3://{bucket2}/sh", input="\n".join(listed).encode())
        rep = json.loads(r.stdout)
        assert sorted(rep["missing"]) == sorted(k for k in listed if k.startswith("nope") and shard_of(k, 2) == i)
        assert sorted(a["path"] for a in rep["actions"]) == sorted(
            k for k in listed if not k.startswith("nope") and shard_of(k, 2) == i)
    assert sorted(listing(store, bucket2, "sh/")) == ["sh/a.txt", "sh/b.txt", "sh/c d.txt", "sh/skip.txt"]


def test_a_tree_a_mount_made_syncs_down_and_back_without_its_directory_objects(tmp_path, store, bucket, s3_server):
    """Directory markers (``d/``) and folder objects (``d_$folder$``), which a mount keeps
    for its directories, are no files: syncing such a tree down makes none of them and
    fails on none, and a --delete sync back up leaves them alone."""
    store.put(bucket, "m/d/", b"", content_type="application/x-directory")
    store.put(bucket, "m/d_$folder$", b"", metadata={"mode": str(0o40700)})
    store.put(bucket, "m/d/f", b"in d")
    store.put(bucket, "m/d/e/", b"", content_type="application/x-directory")
    store.put(bucket, "m/empty_$folder$", b"", metadata={"mode": str(0o40755)})
    store.put(bucket, "m/top", b"at the top")
    out = tmp_path / "out"
    rc, rep, err = sync_json(s3_server, f"s3://{bucket}/m", str(out))
    assert (rc, rep["copied"], rep["failed"]) == (0, 2, 0), err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["d/f", "top"]
    rc, rep, err = sync_json(s3_server, "--delete", str(out), f"s3://{bucket}/m")
    assert (rc, rep["copied"], rep["deleted"]) == (0, 0, 0), err
    assert {"m/d/", "m/d_$folder$", "m/d/e/", "m/empty_$folder$"} <= set(listing(store, bucket, "m/"))


def test_ls_shows_folder_objects_as_the_directories_they_stand_for(store, bucket, s3_server):
    store.put(bucket, "l/d/x", b"x")
    store.put(bucket, "l/d_$folder$", b"", metadata={"mode": str(0o40700)})
    store.put(bucket, "l/alone_$folder$", b"")
    store.put(bucket, "l/file", b"f")
    r = run_cli(s3_server, "ls", f"s3://{bucket}/l/")
    assert r.returncode == 0, r.stderr
    shown = sorted(line.split()[-1] for line in r.stdout.decode().splitlines())
    assert shown == [f"s3://{bucket}/l/alone/", f"s3://{bucket}/l/d/", f"s3://{bucket}/l/file"], r.stdout


def test_recursive_ls_and_rm_treat_folder_objects_as_directory_attributes(store, bucket, s3_server):
    store.put(bucket, "r/d/x", b"xx")
    store.put(bucket, "r/d_$folder$", b"", metadata={"mode": str(0o40700)})
    store.put(bucket, "r_$folder$", b"", metadata={"mode": str(0o40755)})
    r = run_cli(s3_server, "ls", "-R", f"s3://{bucket}/r/")
    assert r.returncode == 0 and r.stdout.decode().split()[-1] == f"s3://{bucket}/r/d/x", r.stdout
    assert len(r.stdout.decode().splitlines()) == 1
    r = run_cli(s3_server, "rm", "-R", f"s3://{bucket}/r/")
    assert r.returncode == 0, r.stderr
    assert not listing(store, bucket, "r"), listing(store, bucket, "r")
