"""Whole trees on the mount: small files as plain objects, what they cost in requests
(counted at the proxy between the mount and the server), and when a file is a stream.

Mounts here use the test segment size (1 MiB): a file that closes within it is one
object; past it, or fsync'd, or left unsent for half the flush interval, a stream.
"""
from __future__ import annotations

import collections
import errno
import os
import stat
import subprocess
import time

import pytest

from s3pipefs import manifest as mf
from s3pipefs.config import MiB, S3Config, TransferConfig
from s3pipefs.engine import Engine
from s3pipefs.s3 import Store
from tests.fs_fixtures import wait_for

pytestmark = pytest.mark.fuse

N = 1000


@pytest.fixture
def engine(s3_server, tmp_path):
    return Engine(Store(S3Config(endpoint_url=s3_server.endpoint)),
                  TransferConfig(segment_size=MiB, workers=4, staging_dir=str(tmp_path / "eng")))


def _requests(proxy) -> collections.Counter:
    return collections.Counter(s.method for s in proxy.requests)


def _kind(engine, bucket, key):
    e = engine.stat(bucket, key)
    return None if e is None else e.kind


def test_a_thousand_small_files_cost_one_request_each_to_create_and_to_remove(mounter, fault_proxy, engine, bucket):
    # Within the metadata TTL this mount knows every name in the directory it made; past
    # it, a lookup of a free name costs one LIST (see the next test).
    m = mounter(bucket, endpoint=fault_proxy.endpoint, metadata_ttl="120")
    d = m / "tree"
    os.mkdir(d)
    fault_proxy.reset_log()
    for i in range(N):
        with open(d / f"f{i:04d}", "wb") as f:
            f.write(b"%d\n" % i * (1 + i % 7))
    made = _requests(fault_proxy)
    # One PUT per file: no lease, no manifest, no lookup (this mount made the directory).
    assert made["PUT"] == N and sum(made.values()) <= N + 5, made
    assert _kind(engine, bucket, "tree/f0007") == "object"

    fault_proxy.reset_log()
    listed = subprocess.run(["ls", "-l", str(d)], check=True, capture_output=True, text=True).stdout
    assert len(listed.splitlines()) == N + 1  # "total" and one line per file
    assert sum(_requests(fault_proxy).values()) == 0  # listed within the TTL: answered from the cache

    fault_proxy.reset_log()
    for i in (0, 500, 999, 2):  # out of order: nothing is fetched ahead
        assert (d / f"f{i:04d}").read_bytes() == b"%d\n" % i * (1 + i % 7)
    assert _requests(fault_proxy) == {"GET": 4}  # the data only: the size and ETag are known

    fault_proxy.reset_log()
    subprocess.run(["rm", "-rf", str(d)], check=True)
    assert wait_for(lambda: not list(engine.store.list(bucket, "tree/")), 5)  # the marker's DELETE: just after
    gone = _requests(fault_proxy)
    assert gone["DELETE"] <= N + 3 and sum(gone.values()) <= 2 * N, gone


def test_a_walk_lists_each_directory_once_and_fetches_each_file_once(mounter, fault_proxy, engine, bucket):
    """A fresh mount walking a tree: each directory is LISTed once (some ahead of the
    walker), each file is HEADed once by its listing (not fetched: ls -l needs no bytes);
    reading the files in order then GETs each one once, most of them ahead of the reader."""
    sizes = {f"walk/d{d}/s{s}/f{i:02d}": 300 + 97 * i for d in range(3) for s in range(3) for i in range(30)}
    for key, size in sizes.items():
        engine.store.put(bucket, key, key.encode().ljust(size, b"."))
    m = mounter(bucket, endpoint=fault_proxy.endpoint, metadata_ttl="120")
    fault_proxy.reset_log()
    listed = subprocess.run(["ls", "-lR", str(m / "walk")], check=True, capture_output=True, text=True).stdout
    assert sum(line.startswith("-") for line in listed.splitlines()) == len(sizes)
    seen = fault_proxy.requests
    lists = collections.Counter(r.query for r in seen if r.method == "GET" and "list-type=2" in r.query)
    assert all(n == 1 for n in lists.values()), lists  # probes of prefixes (max-keys=1) too
    # the lookup of walk (prefix=walk), then walk/, its 3 directories and their 9
    assert sum("delimiter" in q for q in lists) == 1 + 1 + 3 + 9, lists
    heads = collections.Counter(r.path for r in seen if r.method == "HEAD")
    assert sum(heads[f"/{bucket}/{k}"] for k in sizes) == len(sizes) and max(heads.values()) == 1
    files = {f"/{bucket}/{k}" for k in sizes}
    assert not [r.path for r in seen if r.method == "GET" and r.path in files]  # no bytes (only probes)

    fault_proxy.reset_log()
    for key, size in sorted(sizes.items()):
        assert (m / key).read_bytes() == key.encode().ljust(size, b".")
    gets = collections.Counter(r.path for r in fault_proxy.requests if r.method == "GET")
    assert gets == {f"/{bucket}/{k}": 1 for k in sizes}, gets  # each once: ahead, or by its read
    assert {r.method for r in fault_proxy.requests} == {"GET"}

    # While files are being read, a listing fetches the small ones whole (no HEAD), and
    # reading them then costs nothing more.
    more = {f"more/f{i:02d}": 500 + 50 * i for i in range(20)}
    for key, size in more.items():
        engine.store.put(bucket, key, key.encode().ljust(size, b"."))
    fault_proxy.reset_log()
    assert sorted(os.listdir(m / "more")) == sorted(k.split("/")[1] for k in more)
    for key, size in sorted(more.items()):
        assert (m / key).stat().st_size == size and (m / key).read_bytes() == key.encode().ljust(size, b".")
    gets = collections.Counter(r.path for r in fault_proxy.requests if r.method == "GET")
    assert all(gets[f"/{bucket}/{k}"] == 1 for k in more), gets
    assert not [r.path for r in fault_proxy.requests if r.method == "HEAD" and "/more/f" in r.path]


def test_removing_a_tree_the_mount_made_costs_no_probes(mounter, fault_proxy, engine, bucket):
    """Directories the mount made keep their attributes in folder objects: a lookup of
    one is a LIST and that object's HEAD (no stream test, no emptiness test), and rm -rf
    of the tree costs, per directory, its listing, one emptiness test and its two
    DELETEs, and per file its description and DELETE."""
    m = mounter(bucket)
    dirs = [m / "t"] + [m / "t" / f"d{d}" for d in range(4)]
    dirs += [m / "t" / f"d{d}" / f"s{s}" for d in range(4) for s in range(3)]
    for p in dirs:
        p.mkdir()
    files = [p / f"f{i}" for p in dirs[5:] for i in range(5)]
    for f in files:
        f.write_bytes(b"x" * 300)
    for p in reversed(dirs):
        os.chmod(p, 0o750)  # as cp -a, rsync and tar x do: a folder object each
    assert wait_for(lambda: sum(o.key.endswith("_$folder$") for o in engine.store.list(bucket, "t")) == len(dirs), 5)
    other = mounter(bucket, endpoint=fault_proxy.endpoint, metadata_ttl="120")
    fault_proxy.reset_log()
    assert stat.S_IMODE(os.stat(other / "t" / "d0").st_mode) == 0o750
    seen = _requests(fault_proxy)
    assert seen == {"GET": 2, "HEAD": 2}, seen  # t and t/d0: a LIST and a folder object's HEAD each
    fault_proxy.reset_log()
    subprocess.run(["rm", "-rf", str(other / "t")], check=True)
    assert not (other / "t").exists()
    # The last DELETEs (each directory's marker and folder object, as each file's object)
    # go out just after rmdir returns.
    assert wait_for(lambda: not list(engine.store.list(bucket, "t")), 5)
    assert not [r.path for r in fault_proxy.requests if r.path.endswith("/.manifest") or "max-keys=1" in r.query]
    assert len(fault_proxy.requests) <= 2 * len(files) + 5 * len(dirs), _requests(fault_proxy)


def test_a_directory_removed_and_made_again_at_once_keeps_its_new_marker_and_attributes(mounter, fault_proxy,
                                                                                          engine, bucket):
    """rmdir of an emptied directory returns before its marker's and folder object's
    DELETEs land (slowed here); a mkdir and chmod of the same name wait for them, so
    neither the new marker nor the new attributes are removed by the old DELETEs."""
    from tests.faultproxy import Rule
    m = mounter(bucket, endpoint=fault_proxy.endpoint)
    d = m / "again"
    os.mkdir(d)
    os.chmod(d, 0o700)
    assert wait_for(lambda: engine.store.head(bucket, "again_$folder$") is not None, 5)
    fault_proxy.add(Rule("stall", method="DELETE", path_contains="again", seconds=0.5, times=-1))
    t0 = time.monotonic()
    os.rmdir(d)
    assert time.monotonic() - t0 < 0.4 and not d.exists()  # returned before its DELETEs
    os.mkdir(d)
    os.chmod(d, 0o750)
    (d / "f").write_bytes(b"x")
    time.sleep(1.5)  # the old DELETEs, and the new attributes, have landed
    assert {o.key for o in engine.store.list(bucket, "again")} == {"again/", "again/f", "again_$folder$"}
    other = mounter(bucket)
    assert stat.S_IMODE(os.stat(other / "again").st_mode) == 0o750


def test_past_the_ttl_a_new_name_costs_one_lookup(mounter, fault_proxy, engine, bucket):
    m = mounter(bucket, endpoint=fault_proxy.endpoint, metadata_ttl="0.5")
    os.mkdir(m / "d")
    time.sleep(0.6)  # the listing this mount made with the directory has expired
    fault_proxy.reset_log()
    for i in range(200):
        (m / "d" / f"n{i}").write_bytes(b"x")
    made = _requests(fault_proxy)
    assert made["PUT"] == 200 and sum(made.values()) <= 3 * 200, made


def test_a_second_mount_sees_new_replaced_and_removed_files_within_the_ttl(mounter, engine, bucket):
    a = mounter(bucket, metadata_ttl="1")
    b = mounter(bucket, metadata_ttl="1")
    os.mkdir(a / "d")
    (a / "d" / "x").write_bytes(b"one")
    assert wait_for(lambda: (b / "d" / "x").exists() and (b / "d" / "x").read_bytes() == b"one", 5)
    (a / "d" / "x").write_bytes(b"two!")
    assert wait_for(lambda: (b / "d" / "x").read_bytes() == b"two!", 5)
    os.unlink(a / "d" / "x")
    assert wait_for(lambda: not (b / "d" / "x").exists(), 5)


def test_a_plain_object_appended_to_reads_back_as_old_and_new_bytes(mounter, engine, bucket):
    engine.store.put(bucket, "log.txt", b"written by another tool\n")
    m = mounter(bucket)
    with open(m / "log.txt", "ab") as f:
        f.write(b"appended through the mount\n")
    assert (m / "log.txt").read_bytes() == b"written by another tool\nappended through the mount\n"
    body, _ = engine.store.get(bucket, "log.txt")
    assert body == b"written by another tool\nappended through the mount\n"
    assert _kind(engine, bucket, "log.txt") == "object"


def test_a_small_object_changes_in_place_and_a_large_one_appends_as_a_stream(mounter, engine, bucket):
    engine.store.put(bucket, "small", b"0123456789")
    big = os.urandom(1536 * 1024)  # past the 1 MiB segment
    engine.store.put(bucket, "big", big)
    m = mounter(bucket)
    with open(m / "small", "r+b") as f:  # a write inside the file, as an editor or sqlite does
        f.seek(3)
        f.write(b"abc")
    assert (m / "small").read_bytes() == b"012abc6789"
    with open(m / "big", "ab") as f:
        f.write(b"tail")
    assert (m / "big").read_bytes() == big + b"tail"
    assert _kind(engine, bucket, "big") == "stream"
    assert engine.store.head(bucket, "big") is None  # the object it replaced is gone
    with open(m / "big", "r+b", buffering=0) as f:  # a stream's bytes are sealed
        with pytest.raises(OSError) as e:
            f.write(b"x")
    assert e.value.errno == errno.ESPIPE


def test_a_file_becomes_a_stream_when_it_outgrows_a_segment_or_is_fsynced(mounter, engine, bucket):
    m = mounter(bucket)
    data = os.urandom(3 * 1024 * 1024 + 5)
    (m / "grown").write_bytes(data)
    assert _kind(engine, bucket, "grown") == "stream"
    assert (m / "grown").read_bytes() == data
    with open(m / "synced", "wb") as f:
        f.write(b"durable before close")
        f.flush()
        os.fsync(f.fileno())
        e = engine.stat(bucket, "synced")
        assert e.kind == "stream" and not e.complete and e.size == 20
    e = engine.stat(bucket, "synced")
    assert e.kind == "stream" and e.complete
    # Replaced by a small file: an object again, and nothing of the stream is left.
    (m / "grown").write_bytes(b"small now")
    assert _kind(engine, bucket, "grown") == "object"
    assert (m / "grown").read_bytes() == b"small now"
    assert [o.key for o in engine.store.list(bucket, "grown/")] == []


def test_a_slow_small_writer_is_seen_elsewhere_within_the_flush_interval(mounter, engine, bucket):
    w = mounter(bucket, flush_interval="1")
    r = mounter(bucket, metadata_ttl="0.5")
    with open(w / "slow.log", "wb", buffering=0) as f:
        f.write(b"first line\n")
        assert wait_for(lambda: (r / "slow.log").exists() and (r / "slow.log").stat().st_size == 11, 6)
        e = engine.stat(bucket, "slow.log")
        assert e.kind == "stream" and not e.complete
    assert wait_for(lambda: engine.stat(bucket, "slow.log").complete, 5)


def test_creators_on_two_mounts_one_wins_whole_and_the_other_learns_it(mounter, engine, bucket):
    a = mounter(bucket)
    b = mounter(bucket)
    fa = open(a / "race", "wb")
    fb = open(b / "race", "wb")
    fa.write(b"A" * 100)
    fb.write(b"B" * 50)
    fa.close()
    with pytest.raises(OSError) as e:
        fb.close()
    assert e.value.errno == errno.EBUSY
    body, _ = engine.store.get(bucket, "race")
    assert body == b"A" * 100


def test_modes_owners_and_times_of_small_files_survive_tar_and_rsync(mounter, engine, bucket, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(20):
        p = src / ("sub" if i % 2 else ".") / f"f{i}"
        p.write_bytes(b"x" * (i * 97))
        os.chmod(p, 0o600 if i % 3 == 0 else 0o644)
        os.utime(p, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i * 1_000_000_007))
    os.symlink("f2", src / "link")
    m = mounter(bucket)
    first = subprocess.run(["rsync", "-a", "--stats", f"{src}/", str(m / "dst")], check=True,
                           capture_output=True, text=True).stdout
    assert "Number of regular files transferred: 20" in first
    for i in range(20):
        p = m / "dst" / ("sub" if i % 2 else ".") / f"f{i}"
        st = p.stat()
        assert (st.st_mode & 0o777) == (0o600 if i % 3 == 0 else 0o644)
        assert st.st_mtime_ns == 1_600_000_000_000_000_000 + i * 1_000_000_007
    assert os.readlink(m / "dst" / "link") == "f2"
    again = subprocess.run(["rsync", "-a", "--stats", f"{src}/", str(m / "dst")], check=True,
                           capture_output=True, text=True).stdout
    assert "Number of regular files transferred: 0" in again
    # tar x keeps a 0600 member 0600.
    archive = tmp_path / "a.tar"
    subprocess.run(["tar", "cf", str(archive), "-C", str(src), "."], check=True)
    os.mkdir(m / "untar")
    subprocess.run(["tar", "xf", str(archive), "-C", str(m / "untar")], check=True)
    assert (m / "untar" / "f0").stat().st_mode & 0o777 == 0o600
    assert subprocess.run(["diff", "-r", str(src), str(m / "untar")]).returncode == 0
    assert _kind(engine, bucket, "untar/f2") == "object"
    assert mf.MANIFEST_NAME not in {o.key.rsplit("/", 1)[-1] for o in engine.store.list(bucket, "untar/")}


def test_an_rsync_style_small_file_costs_few_requests(mounter, fault_proxy, engine, bucket, tmp_path):
    """rsync writes a temporary file, closes it, sets its time and mode, renames it."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(b"y" * (100 * i))
        os.utime(src / f"f{i}", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000 + i))
    m = mounter(bucket, endpoint=fault_proxy.endpoint, metadata_ttl="120")
    os.mkdir(m / "r")
    fault_proxy.reset_log()
    subprocess.run(["rsync", "-a", f"{src}/", f"{m / 'r'}/"], check=True)
    per_file = len(fault_proxy.requests) / 20
    print(f"\nrsync -a: {per_file:.1f} requests per file: {dict(_requests(fault_proxy))}")
    # The PUT, its time (and mode) in its metadata, the rename's copy and delete, and
    # the lookups of the two names.
    assert per_file <= 5, dict(_requests(fault_proxy))
    assert all(_kind(engine, bucket, f"r/f{i}") == "object" for i in range(20))
    assert (m / "r" / "f7").stat().st_mtime_ns == 1_500_000_000_000_000_007


def test_mv_of_a_directory_copies_on_the_server_in_parallel(mounter, fault_proxy, engine, bucket):
    m = mounter(bucket, endpoint=fault_proxy.endpoint)
    os.makedirs(m / "a" / "sub")
    for i in range(300):
        (m / "a" / ("sub" if i % 3 else ".") / f"f{i}").write_bytes(b"%d" % i)
    fault_proxy.reset_log()
    subprocess.run(["mv", str(m / "a"), str(m / "b")], check=True)
    copies = [s for s in fault_proxy.requests if s.method == "PUT" and "x-amz-copy-source" in s.headers]
    assert len(copies) == 300
    assert fault_proxy.peak_in_flight("PUT") > 4  # not one file at a time
    assert fault_proxy.count("POST") >= 1  # the sources go in a DeleteObjects batch
    assert not (m / "a").exists() and (m / "b" / "sub" / "f299").read_bytes() == b"299"
    assert [o.key for o in engine.store.list(bucket, "a/")] == []


def test_rm_rf_sends_its_deletes_concurrently_and_a_name_reused_at_once_survives(mounter, fault_proxy, engine,
                                                                                   bucket):
    m = mounter(bucket, endpoint=fault_proxy.endpoint, metadata_ttl="120", debug=True)
    d = m / "many"
    os.mkdir(d)
    for i in range(400):
        (d / f"f{i}").write_bytes(b"%d" % i)
    os.listdir(d)
    fault_proxy.reset_log()
    subprocess.run(["rm", "-rf", str(d)], check=True)
    assert fault_proxy.count("DELETE") >= 400
    assert fault_proxy.peak_in_flight("DELETE") > 2  # not one file at a time
    # rmdir waited for the files' DELETEs; its marker's own goes out just after it returns
    assert not d.exists() and [o.key for o in engine.store.list(bucket, "many/")] in ([], ["many/"])
    assert wait_for(lambda: not list(engine.store.list(bucket, "many/")), 5)
    # A name unlinked and created again at once: the new file is not removed by the old DELETE.
    os.mkdir(m / "again")
    for round_ in range(20):
        (m / "again" / "x").write_bytes(b"old %d" % round_)
        try:
            os.unlink(m / "again" / "x")
        except OSError as e:  # seen rarely under heavy load: say what the daemon saw
            pytest.fail(f"round {round_}: unlink: {e}\n{m.log_text()[-4000:]}")
        assert not (m / "again" / "x").exists()
        (m / "again" / "x").write_bytes(b"new %d" % round_)
        assert (m / "again" / "x").read_bytes() == b"new %d" % round_
    body, _ = engine.store.get(bucket, "again/x")
    assert body == b"new 19"


def test_a_shell_redirection_costs_one_put_and_an_empty_file_exists_at_its_close(mounter, fault_proxy, engine,
                                                                                  bucket, tmp_path):
    """`cmd > f`: the shell closes its own descriptor of f before cmd writes; that close
    is not the file's (the process holds f open still), so it costs no empty PUT. A file
    whose last descriptor closes empty exists in S3 when close(2) returns."""
    m = mounter(bucket, endpoint=fault_proxy.endpoint, metadata_ttl="120")
    os.mkdir(m / "r")
    data = tmp_path / "data"
    data.write_bytes(os.urandom(300_000))
    fault_proxy.reset_log()
    for i in range(5):
        subprocess.run(["sh", "-c", f"exec cat {data} > {m / 'r' / f'x{i}'}"], check=True)
    puts = [s for s in fault_proxy.requests if s.method == "PUT"]
    assert len(puts) == 5, [s.path for s in puts]
    assert all(engine.store.get(bucket, f"r/x{i}")[0] == data.read_bytes() for i in range(5))
    # Closed empty, on every descriptor: made at the last close, before it returns.
    subprocess.run(["sh", "-c", f": > {m / 'r' / 'empty'}"], check=True)
    assert engine.store.head(bucket, "r/empty").size == 0
    fd = os.open(m / "r" / "dup", os.O_WRONLY | os.O_CREAT, 0o644)
    fd2 = os.dup(fd)
    os.close(fd)  # held still on fd2: nothing stored yet
    assert engine.store.head(bucket, "r/dup") is None
    os.close(fd2)
    assert engine.store.head(bucket, "r/dup").size == 0
