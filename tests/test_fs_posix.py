"""What programs see when they do what a stream cannot, through a real mount with the real
tools: errnos that say what happened (and a log line saying why), names refused before
anything is written, create modes kept, racing creators, a writer reading its own file,
locks, and vim, sqlite3 and borg on the mount. docs/mount.md describes each of these."""
from __future__ import annotations

import errno
import fcntl
import multiprocessing
import os
import stat
import subprocess
import sys

import pytest

from s3pipefs.config import S3Config, TransferConfig
from s3pipefs.engine import Engine
from s3pipefs.s3 import Store
from tests.fs_fixtures import tool, wait_for

pytestmark = pytest.mark.fuse


def run(*cmd, check=False, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", 120)
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        pytest.fail(f"{cmd} failed ({r.returncode}): {r.stderr}")
    return r


def keys(store, bucket) -> list[str]:
    return sorted(o.key for o in store.list(bucket))


def errno_of(call) -> int | None:
    try:
        call()
    except OSError as e:
        return e.errno
    return None


# -- names and errnos -----------------------------------------------------------------------

def test_names_s3_cannot_store_are_refused_before_anything_is_written(mounter, bucket, store):
    m = mounter(bucket)
    (m / "keep").write_bytes(b"kept")
    before = keys(store, bucket)
    # touch and mkdir: one component over 255 bytes, or a path whose key is over 1024.
    long_name = "n" * 256
    assert "File name too long" in run(tool("touch"), m / long_name).stderr
    assert "File name too long" in run(tool("mkdir"), m / long_name).stderr
    deep = m
    for i in range(4):
        deep = deep / (str(i) * 250)
        deep.mkdir()  # each directory's marker is under 1024 bytes
    assert errno_of(lambda: (deep / "file").write_bytes(b"x")) == errno.ENAMETOOLONG
    assert errno_of(lambda: os.stat(deep / ("y" * 200))) == errno.ENAMETOOLONG  # no key that long
    # Characters the server stores but cannot delete again, a backslash it rewrites, a
    # name that is not UTF-8: EINVAL from touch, mkdir and mv, and nothing reaches S3.
    for name in ("esc\x1bname", "bell\x07", "back\\slash", os.fsdecode(b"latin1-\xe9")):
        assert errno_of(lambda: (m / name).write_bytes(b"x")) == errno.EINVAL, repr(name)
        assert errno_of(lambda: (m / name).mkdir()) == errno.EINVAL, repr(name)
        assert errno_of(lambda: os.rename(m / "keep", m / name)) == errno.EINVAL, repr(name)
    assert "Invalid argument" in run(tool("touch"), m / "esc\x1bname").stderr
    # mv words EINVAL from rename(2) as "cannot move ... to a subdirectory of itself".
    assert run(tool("mv"), m / "keep", m / "esc\x1bname").returncode != 0
    # Tab, newline and the rest of Unicode are fine, and can be removed again.
    for name in ("tab\tname", "new\nline", "caf\u00e9 \u2603"):
        (m / name).write_bytes(b"ok")
        assert (m / name).read_bytes() == b"ok"
        (m / name).unlink()
    assert (m / "keep").read_bytes() == b"kept"
    dirs = [k for k in keys(store, bucket) if k not in before]
    assert all(k.endswith("/") for k in dirs) and len(dirs) == 4, dirs  # only the four markers
    log = m.log_text()
    assert "names cannot contain '\\x1b'" in log
    assert "ENAMETOOLONG" in log and "EINVAL" in log  # one warning line per refusal, saying why


def test_what_a_stream_cannot_be_gets_a_clear_errno(mounter, bucket, store):
    m = mounter(bucket)
    data = b"data" * (400 << 10)  # past a segment (1 MiB): a stream, not a plain object
    (m / "f").write_bytes(data)
    r = run(tool("ln"), m / "f", m / "hard")
    assert r.returncode != 0 and "Operation not supported" in r.stderr
    r = run(tool("mkfifo"), m / "fifo")
    assert r.returncode != 0 and "Operation not supported" in r.stderr
    r = run(tool("truncate"), "-s", "2", m / "f")
    assert r.returncode != 0 and "Operation not supported" in r.stderr
    with open(m / "f", "r+b", buffering=0) as f:  # a write into the middle
        assert errno_of(lambda: os.pwrite(f.fileno(), b"X", 1)) == errno.ESPIPE
    assert errno_of(lambda: (m / ".manifest").write_bytes(b"x")) == errno.EACCES
    assert (m / "f").read_bytes() == data
    assert not (m / "hard").exists() and not (m / "fifo").exists()
    log = m.log_text()
    for why in ("hard links are not supported", "a FIFO cannot be stored in S3", "streams are append-only",
                "reserved for stream manifests"):
        assert why in log, why


# -- modes ----------------------------------------------------------------------------------

def _create_in_child(path, mode: int, umask: int) -> None:
    """open(O_CREAT, mode) under ``umask`` in a child, as a program would (umask is per process)."""
    code = ("import os,sys,stat; os.umask(int(sys.argv[3], 8)); "
            "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, int(sys.argv[2], 8)); "
            "print(oct(stat.S_IMODE(os.fstat(fd).st_mode))); os.write(fd, b'x'); os.close(fd)")
    r = run(sys.executable, "-c", code, path, oct(mode), oct(umask), check=True)
    return int(r.stdout, 8)


def test_create_mode_and_umask_are_kept_while_open_and_after_close(mounter, bucket, tmp_path):
    m = mounter(bucket)
    cases = {"m600": (0o600, 0o022, 0o600), "m640": (0o640, 0o022, 0o640), "m755": (0o755, 0o022, 0o755),
             "m444": (0o444, 0o022, 0o444), "u077": (0o666, 0o077, 0o600), "u027": (0o777, 0o027, 0o750)}
    for name, (mode, umask, want) in cases.items():
        assert _create_in_child(m / name, mode, umask) == want, name  # while open
    other = mounter(bucket)  # after commit, from S3
    for name, (_, _, want) in cases.items():
        assert stat.S_IMODE(os.stat(m / name).st_mode) == want, name
        assert stat.S_IMODE(os.stat(other / name).st_mode) == want, name
    # tar x of a 0600 member gives 0600 (tar sets the mode at create and again with chmod).
    src = tmp_path / "src"
    src.mkdir()
    (src / "secret").write_bytes(b"s")
    (src / "secret").chmod(0o600)
    (src / "shared").write_bytes(b"p")
    (src / "shared").chmod(0o644)
    run(tool("tar"), "cf", tmp_path / "a.tar", "-C", src, "secret", "shared", check=True)
    (m / "x").mkdir()
    run(tool("tar"), "xf", tmp_path / "a.tar", "-C", m / "x", "--no-same-permissions", check=True)
    assert stat.S_IMODE(os.stat(m / "x" / "secret").st_mode) == 0o600
    run("bash", "-c", f"umask 077; tar xf {tmp_path / 'a.tar'} -C {m / 'x'} --no-same-permissions "
        f"--transform s/shared/shared2/ shared", check=True)
    assert stat.S_IMODE(os.stat(m / "x" / "shared2").st_mode) == 0o600  # umask 077 applies


# -- racing creators -----------------------------------------------------------------------

def _racer(barrier, queue, paths, who: int, flags: int) -> None:
    data = bytes([who]) * 300_000
    for p in paths:
        barrier.wait()
        try:
            fd = os.open(p, flags, 0o644)
            try:
                for i in range(0, len(data), 100_000):
                    os.write(fd, data[i:i + 100_000])
            finally:
                os.close(fd)
            queue.put((str(p), who, 0))
        except OSError as e:
            queue.put((str(p), who, e.errno))


def race(paths, flags: int) -> dict[str, dict[int, int]]:
    """Two processes create each path at the same moment; {path: {who: errno or 0}}."""
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(barrier, queue, paths, who, flags)) for who in (1, 2)]
    for p in procs:
        p.start()
    out: dict[str, dict[int, int]] = {}
    for _ in range(2 * len(paths)):
        path, who, err = queue.get(timeout=120)
        out.setdefault(path, {})[who] = err
    for p in procs:
        p.join(30)
    return out


@pytest.mark.parametrize("excl", [False, True], ids=["O_TRUNC", "O_EXCL"])
def test_racing_creators_lose_with_ebusy_or_eexist_and_the_winner_is_intact(mounter, bucket, excl):
    m = mounter(bucket)
    paths = [m / f"race{i}" for i in range(40)]
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if excl else os.O_TRUNC)
    results = race(paths, flags)
    lost = {errno.errorcode.get(e, e) for r in results.values() for e in r.values() if e}
    assert lost <= ({"EEXIST"} if excl else {"EBUSY"}), results
    for p in paths:
        winners = [who for who, err in results[str(p)].items() if err == 0]
        assert winners, results[str(p)]
        if excl:
            assert len(winners) == 1, results[str(p)]
        # Both may succeed one after the other (O_TRUNC): the file is one whole payload.
        assert p.read_bytes() in {bytes([who]) * 300_000 for who in winners}
    print(f"\nlosers: {sum(1 for r in results.values() for e in r.values() if e)} of {len(paths)}, {lost}")


# -- the writing process reads its own file ----------------------------------------------------

READ_BACK = """
import errno, os, sys, time
path, wait = sys.argv[1], float(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
data = bytes(range(256)) * 8192  # 2 MiB
os.write(fd, data)
time.sleep(wait)  # past metadata_ttl: the open below asks S3, which shows the stream being written
t0 = time.monotonic()
try:
    r = os.open(path, os.O_RDONLY)
    got = os.pread(r, 100, 0)
    print("bytes" if got == data[:100] else f"wrong {got[:10]!r}", round(time.monotonic() - t0, 1))
    os.close(r)
except OSError as e:
    print(errno.errorcode[e.errno], round(time.monotonic() - t0, 1))
os.write(fd, b"end")
os.close(fd)
"""


@pytest.mark.parametrize("segment", ["16M", "1M"])
def test_a_second_descriptor_of_the_writer_never_hangs(mounter, bucket, segment):
    """It reads the bytes it wrote, whether uploaded (1M segments) or not (16M), within
    seconds, and the file is whole after close."""
    m = mounter(bucket, segment_size=segment, metadata_ttl="1")
    for wait in (0, 1.5):
        r = run(sys.executable, "-c", READ_BACK, m / f"own{wait}", wait, timeout=60)
        what, took = r.stdout.split()
        assert what == "bytes" and float(took) < 5, (r.stdout, r.stderr)
        assert (m / f"own{wait}").read_bytes() == bytes(range(256)) * 8192 + b"end"


# -- opening without writing, and locks ---------------------------------------------------------

TRY_LOCK = """
import errno, fcntl, os, sys
path, kind = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR)  # opening for writing without writing: never EBUSY
try:
    if kind == "lockf":
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("locked")
except OSError as e:
    print(errno.errorcode[e.errno])
os.close(fd)
"""


def try_lock(path, kind: str) -> str:
    r = run(sys.executable, "-c", TRY_LOCK, path, kind, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_opening_for_writing_without_writing_takes_no_lease_and_locks_work(mounter, bucket):
    """Lock files and O_RDWR probes (sqlite, borg, editors): two processes hold one file
    open for writing without EBUSY; POSIX and BSD locks between them work as on a local
    disk. The mount implements no lock operations, so the kernel keeps the locks: they
    hold between processes on one mount, not across mounts or hosts."""
    m = mounter(bucket)
    other = mounter(bucket)
    (m / "lock").write_bytes(b"")
    (m / "data").write_bytes(b"12345")
    fd = os.open(m / "lock", os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        assert try_lock(m / "lock", "lockf") in ("EAGAIN", "EACCES")  # refused, as on a disk
        assert try_lock(other / "lock", "lockf") == "locked"  # another mount: its own kernel locks
        fcntl.lockf(fd, fcntl.LOCK_UN)
        assert try_lock(m / "lock", "lockf") == "locked"
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert try_lock(m / "lock", "flock") == "EAGAIN"  # EWOULDBLOCK
        fcntl.flock(fd, fcntl.LOCK_UN)
        assert try_lock(m / "lock", "flock") == "locked"
    finally:
        os.close(fd)
    # Two descriptors open for writing: the first to write has the file, the other's
    # write gets EBUSY, and a third open while one writes gets EBUSY at open.
    a = os.open(m / "data", os.O_RDWR | os.O_APPEND)
    b = os.open(m / "data", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(a, b"6")
        assert errno_of(lambda: os.write(b, b"7")) == errno.EBUSY
        assert errno_of(lambda: os.open(m / "data", os.O_WRONLY | os.O_APPEND)) == errno.EBUSY
    finally:
        os.close(a)
        os.close(b)
    assert (m / "data").read_bytes() == b"123456"
    assert "another descriptor on this mount is writing it" in m.log_text()


# -- real programs ------------------------------------------------------------------------------

def sh(cmd: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_vim_writes_new_and_existing_files(mounter, bucket):
    """vim writes the file itself in place (open, ftruncate, write). Its swap file is
    rewritten at offset 0, which a stream refuses: with the swap file on the mount vim
    still writes the file but reports E297 and exits 1; with -n (or 'directory' pointing
    elsewhere) it exits 0."""
    tool("vim")
    m = mounter(bucket)
    r = sh("vim -es -n -c 'call setline(1, \"hello\")' -c wq new.txt", cwd=m.path)
    assert r.returncode == 0, r.stderr
    assert (m / "new.txt").read_bytes() == b"hello\n"
    (m / "ex.txt").write_bytes(b"a\nb\n")
    r = sh("vim -es -n -c '%s/a/A/' -c wq ex.txt", cwd=m.path)
    assert r.returncode == 0, r.stderr
    assert (m / "ex.txt").read_bytes() == b"A\nb\n"
    # The swap file on the mount; -V1 shows the messages an interactive vim shows (-es is silent).
    r = sh("vim -es -V1 -c '%s/b/B/' -c wq ex.txt", cwd=m.path)
    assert (m / "ex.txt").read_bytes() == b"A\nB\n"
    assert r.returncode in (0, 1)
    if r.returncode:
        assert "E297" in r.stdout + r.stderr  # "Write error in swap file", not silence
        assert "streams are append-only" in m.log_text()
    assert sorted(p.name for p in m.path.iterdir()) == ["ex.txt", "new.txt"]  # no swap file left


def test_sqlite3_reads_a_database_and_refuses_to_write_one_with_a_reason(mounter, bucket, tmp_path):
    """sqlite opens its database O_RDWR even to read it: reads work. Writing needs writes
    in place, which a stream refuses; sqlite says "disk I/O error", the log says why."""
    tool("sqlite3")
    m = mounter(bucket)
    local = tmp_path / "local.db"
    assert sh(f"sqlite3 {local} 'create table t(x); insert into t values (42), (43);'").returncode == 0
    run(tool("cp"), local, m / "copy.db", check=True)
    r = sh(f"sqlite3 {m / 'copy.db'} 'select sum(x) from t;'")
    assert (r.returncode, r.stdout.strip()) == (0, "85"), r.stderr
    r = sh(f"sqlite3 'file:{m / 'copy.db'}?immutable=1' 'select count(*) from t;'")
    assert (r.returncode, r.stdout.strip()) == (0, "2"), r.stderr
    r = sh(f"sqlite3 {m / 'copy.db'} 'insert into t values (1);'")
    assert r.returncode != 0 and "disk I/O error" in r.stderr
    log = m.log_text()
    assert "streams are append-only" in log and ("ESPIPE" in log or "ENOTSUP" in log)
    assert (m / "copy.db").read_bytes() == local.read_bytes()  # the database is unchanged
    r = sh(f"sqlite3 {m / 'copy.db'} 'select sum(x) from t;'")
    assert (r.returncode, r.stdout.strip()) == (0, "85"), r.stderr


KILLED = """
import os, signal, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for i in range(3):
    os.write(fd, bytes([65 + i]) * 1_000_000)
print("written", flush=True)
signal.pause()
"""


def test_a_writer_killed_by_sigkill_leaves_a_complete_stream_of_what_it_wrote(mounter, bucket, s3_server, tmp_path):
    """The kernel closes a killed process's files: the flush commits every byte write(2)
    accepted, as a complete stream."""
    m = mounter(bucket)
    p = subprocess.Popen([sys.executable, "-c", KILLED, str(m / "killed")], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "written"
    p.kill()
    p.wait(10)
    want = b"A" * 1_000_000 + b"B" * 1_000_000 + b"C" * 1_000_000
    assert wait_for(lambda: (m / "killed").read_bytes() == want, 30)
    engine = Engine(Store(S3Config(endpoint_url=s3_server.endpoint)), TransferConfig(staging_dir=str(tmp_path / "e")))
    st = engine.stat(bucket, "killed")
    assert st.kind == "stream" and st.complete and st.size == len(want)


def test_an_object_and_a_prefix_of_the_same_name_show_the_prefix(mounter, bucket, store):
    """S3 allows an object "x" beside keys under "x/": the directory (or stream) is shown,
    in listings and lookups alike; the object is left alone."""
    store.put(bucket, "d", b"object d")
    store.put(bucket, "d/inner", b"inner")
    m = mounter(bucket, small_files="stream")
    (m / "s2").write_bytes(b"stream")
    store.put(bucket, "s", b"object s")
    for o in store.list(bucket, "s2/"):
        store.copy(bucket, o.key, bucket, "s/" + o.key[len("s2/"):])
    m2 = mounter(bucket)
    assert sorted(os.listdir(m2.path)) == ["d", "s", "s2"]
    assert (m2 / "d").is_dir() and os.listdir(m2 / "d") == ["inner"]
    assert (m2 / "s").read_bytes() == b"stream" and os.stat(m2 / "s").st_size == 6
    assert store.get(bucket, "d")[0] == b"object d" and store.get(bucket, "s")[0] == b"object s"


def test_borg_init_create_check_and_extract(mounter, bucket, tmp_path):
    """borg writes its segments front to back and replaces its index and config by
    write-then-rename; its lock is a small directory renamed into place."""
    tool("borg")
    m = mounter(bucket)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(300_000))
    (src / "b").write_bytes(b"hello\n")
    env = {**os.environ, "BORG_PASSPHRASE": "", "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
           "BORG_BASE_DIR": str(tmp_path / "borg-home")}
    repo = m / "repo"

    def borg(*args, cwd=None):
        r = subprocess.run(["borg", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, (args, r.stderr)
        return r

    borg("init", "--lock-wait", "10", "-e", "none", str(repo))
    borg("create", "--lock-wait", "10", f"{repo}::one", "src", cwd=tmp_path)
    (src / "b").write_bytes(b"changed\n")
    borg("create", "--lock-wait", "10", f"{repo}::two", "src", cwd=tmp_path)
    assert borg("list", "--short", str(repo)).stdout.split() == ["one", "two"]
    borg("check", str(repo))
    out = tmp_path / "out"
    out.mkdir()
    borg("extract", f"{repo}::one", cwd=out)
    assert (out / "src" / "a").read_bytes() == (src / "a").read_bytes()
    assert (out / "src" / "b").read_bytes() == b"hello\n"
    assert not (repo / "lock.exclusive").exists() and not (repo / "lock.roster").exists()
