"""Real mounts, real tools, real SeaweedFS: tar, gzip/zcat, dd, cp, rsync, cat >>, shell
redirections, live follow across two mounts, fstab through mount(8), ro, ls -l, rm, EBUSY,
SIGTERM. Mounts go through the mount.s3pipefs helper as mount(8) would run it; a machine
without /dev/fuse fails these tests instead of skipping them."""
from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from s3pipefs.config import S3Config, TransferConfig
from s3pipefs.engine import Engine
from s3pipefs.s3 import Store
from tests.fs_fixtures import helper_cmd, require_fuse, tool, wait_for, wait_gone

pytestmark = pytest.mark.fuse
REPO = Path(__file__).resolve().parent.parent


def blob(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def sh(cmd: str, cwd=None, check=True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(["bash", "-c", cmd], cwd=cwd, capture_output=True, **kw)
    if check and r.returncode != 0:
        pytest.fail(f"`{cmd}` failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    return r


@pytest.fixture
def engine(s3_server, tmp_path):
    return Engine(Store(S3Config(endpoint_url=s3_server.endpoint)),
                  TransferConfig(staging_dir=str(tmp_path / "eng-staging"), poll_interval=0.1))


def md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


# -- big data through tar ----------------------------------------------------------------------

def test_tar_of_150mib_into_the_mount_and_back_out_and_tar_x_into_it(mounter, bucket, tmp_path, engine):
    tool("tar")
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    with open(src / "big.bin", "wb") as f:  # 150 MiB + change, written in pieces to spare memory
        for i in range(15):
            f.write(blob(10 << 20, i))
        f.write(blob(12345, 99))
    for i in range(20):
        (src / "sub" / f"f{i}.txt").write_bytes(blob(i * 997, 100 + i))
    (src / "sub" / "deeper" / "empty").write_bytes(b"")
    m = mounter(bucket, segment_size="8M")

    t0 = time.monotonic()
    sh(f"tar c -C {src} . > {m / 'backup.tar'}")
    t_write = time.monotonic() - t0
    size = os.stat(m / "backup.tar").st_size
    e = engine.stat(bucket, "backup.tar")
    assert e.kind == "stream" and e.complete and e.size == size > 150 << 20

    out = tmp_path / "out"
    out.mkdir()
    t0 = time.monotonic()
    sh(f"tar x -C {out} -f {m / 'backup.tar'}")
    t_read = time.monotonic() - t0
    sh(f"diff -r {src} {out}")

    # And unpacked *into* the mount: mkdir, create, utime, chmod all through FUSE.
    (m / "tree").mkdir()
    t0 = time.monotonic()
    sh(f"tar x -C {m / 'tree'} -f {m / 'backup.tar'}")
    t_x = time.monotonic() - t0
    sh(f"diff -r {src} {m / 'tree'}")
    sh(f"tar --compare -C {m / 'tree'} -f {m / 'backup.tar'}")  # sizes, contents, modes and mtimes
    print(f"\ntar c 150 MiB into mount {t_write:.1f}s, tar x out of it {t_read:.1f}s, tar x into it {t_x:.1f}s")


# -- the everyday tools ---------------------------------------------------------------------------

def test_gzip_into_the_mount_and_zcat_out(mounter, bucket, tmp_path):
    tool("gzip")
    data = b"".join(b"line %d of a log that compresses well\n" % i for i in range(200_000))
    (tmp_path / "log").write_bytes(data)
    m = mounter(bucket)
    sh(f"gzip -c < {tmp_path / 'log'} > {m / 'log.gz'}")
    r = sh(f"zcat {m / 'log.gz'}")
    assert r.stdout == data
    r = sh(f"zcat {m / 'log.gz'} | tail -c 100")  # a pipe that stops early is fine too
    assert r.stdout == data[-100:]


def test_dd_bs_1m_and_cp(mounter, bucket, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(blob(24 << 20 | 4321, 7))
    m = mounter(bucket)
    r = sh(f"dd if={src} of={m / 'dd.bin'} bs=1M 2>&1")
    assert b"copied" in r.stdout
    sh(f"cmp {src} {m / 'dd.bin'}")
    assert os.stat(m / "dd.bin").st_blksize == 1 << 20  # libfuse 3: 1 MiB requests; cp/cat size buffers by it
    sh(f"dd if={m / 'dd.bin'} of={tmp_path / 'back.bin'} bs=1M")
    sh(f"cmp {src} {tmp_path / 'back.bin'}")
    sh(f"cp {src} {m / 'cp.bin'}")
    os.utime(src, ns=(0, 1577934245_000000001))
    sh(f"cp -p {src} {m / 'cp-p.bin'}")  # -p: utime + chmod on the open file, chown accepted
    assert md5(m / "cp.bin") == md5(m / "cp-p.bin") == md5(src)
    assert os.stat(m / "cp-p.bin").st_mtime_ns == 1577934245_000000001
    sh(f"touch -d @86400 {m / 'cp.bin'}; chmod 640 {m / 'cp.bin'}")  # on a closed file
    st = os.stat(mounter(bucket) / "cp.bin")
    assert st.st_mtime == 86400 and stat.S_IMODE(st.st_mode) == 0o640
    sh(f"cp {m / 'cp.bin'} {m / 'cp2.bin'}")  # read and write through the mount at once
    sh(f"cmp {src} {m / 'cp2.bin'}")


def test_rsync_a_into_the_mount_and_again(mounter, bucket, tmp_path):
    tool("rsync")
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    for i in range(12):
        (src / "a" / f"f{i}").write_bytes(blob(i * 1500, i))
    (src / "a" / "b" / "big").write_bytes(blob(3 << 20, 42))
    m = mounter(bucket)
    os.chmod(src / "a" / "f1", 0o600)
    os.utime(src / "a" / "f2", ns=(0, 1577934245_123456789))

    def rsync() -> int:
        out = sh(f"rsync -a --stats {src}/ {m / 'rs'}/").stdout.decode()
        return int(re.search(r"Number of regular files transferred: (\d+)", out).group(1).replace(",", ""))

    assert rsync() == 13
    sh(f"diff -r {src} {m / 'rs'}")  # no temp files left behind either
    other = mounter(bucket)
    for f in ("a/f1", "a/f2", "a/b/big"):  # times (to the ns) and modes kept, in another mount too
        local, there = os.stat(src / f), os.stat(other / "rs" / f)
        assert (there.st_mtime_ns, there.st_mode) == (local.st_mtime_ns, local.st_mode), f
    assert rsync() == 0  # nothing changed: nothing sent again
    (src / "a" / "f3").write_bytes(b"changed")
    assert rsync() == 1
    sh(f"diff -r {src} {m / 'rs'}")


def test_shell_redirections_append_and_fd_3(mounter, bucket):
    m = mounter(bucket)
    sh(f"echo hello > {m / 'r.txt'}")
    sh(f"printf 'more\\n' | cat >> {m / 'r.txt'}")
    sh(f"cat >> {m / 'r.txt'} < /etc/hostname")
    assert (m / "r.txt").read_bytes() == b"hello\nmore\n" + Path("/etc/hostname").read_bytes()
    sh(f"exec 3>{m / 'fd3.txt'}; echo a >&3; echo b >&3; date >/dev/null; exec 3>&-")
    assert (m / "fd3.txt").read_bytes() == b"a\nb\n"
    sh(f"(echo one; echo two) > {m / 'sub.txt'}")
    assert (m / "sub.txt").read_bytes() == b"one\ntwo\n"
    sh(f": > {m / 'r.txt'}; touch {m / 'new-empty'}")
    assert (m / "r.txt").read_bytes() == b"" and (m / "new-empty").stat().st_size == 0


def test_a_random_write_is_refused_and_the_stream_stays_intact(mounter, bucket, tmp_path):
    m = mounter(bucket)
    data = blob(3 << 20, 11)
    (m / "seq.bin").write_bytes(data)
    fd = os.open(m / "seq.bin", os.O_WRONLY)
    try:
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"XXXX", 1000)
        assert e.value.errno == errno.ESPIPE
    finally:
        os.close(fd)
    r = sh(f"printf ZZ | dd of={m / 'seq.bin'} bs=1 seek=10 conv=notrunc", check=False)
    assert r.returncode != 0 and b"Illegal seek" in r.stderr
    assert md5(m / "seq.bin") == hashlib.md5(data).hexdigest()
    # A write exactly at the end is an append (dd seek=SIZE conv=notrunc).
    sh(f"printf END | dd of={m / 'seq.bin'} bs=1 seek={len(data)} conv=notrunc")
    assert (m / "seq.bin").read_bytes() == data + b"END"
    assert wait_for(lambda: "write of 4 bytes at offset 1000 refused" in m.log_text(), 5)


def test_plain_objects_read_at_random_offsets(mounter, bucket, store, tmp_path):
    data = blob(20 << 20, 21)
    store.put(bucket, "plain/object.bin", data)
    m = mounter(bucket)
    st = os.stat(m / "plain" / "object.bin")
    # Writable (a write reads it back and stores it again, or appends as a stream).
    assert st.st_size == len(data) and stat.S_IMODE(st.st_mode) == 0o644
    rnd = random.Random(5)
    with open(m / "plain" / "object.bin", "rb", buffering=0) as f:
        for _ in range(60):
            off = rnd.randrange(len(data))
            n = rnd.choice([1, 100, 4096, 65536, 1 << 20, 3 << 20])
            assert os.pread(f.fileno(), n, off) == data[off:off + n]
    sh(f"tail -c 12345 {m / 'plain' / 'object.bin'} > {tmp_path / 'tail'}")
    assert (tmp_path / "tail").read_bytes() == data[-12345:]
    open(m / "plain" / "object.bin", "ab").close()  # opened for writing, not written: unchanged
    assert store.head(bucket, "plain/object.bin").size == len(data)
    assert store.head(bucket, "plain/object.bin/.manifest") is None


# -- live follow across two mounts -------------------------------------------------------------------

WRITER = r"""
import os, subprocess, sys, time
path, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
import random
data = random.Random(seed).randbytes(n)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
step = n // 12
for i in range(0, n, step):
    os.write(fd, data[i:i + step])
    os.fsync(fd)
    if i == 2 * step:
        subprocess.run(["true"])  # a forked child closes its copy: must not commit
        print("started", flush=True)
    time.sleep(0.25)
os.close(fd)
"""


def test_live_follow_across_two_mounts_reads_identical_bytes(mounter, bucket, tmp_path):
    a = mounter(bucket, "writer")
    b = mounter(bucket, "reader", metadata_ttl="1")
    n = 6 << 20
    w = subprocess.Popen([sys.executable, "-c", WRITER, str(a / "live.bin"), str(n), "77"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert w.stdout.readline() == b"started\n"
    assert wait_for(lambda: (b / "live.bin").exists(), 10)
    t0 = time.monotonic()
    r = subprocess.run(["cat", str(b / "live.bin")], capture_output=True, timeout=60)
    waited = time.monotonic() - t0
    assert w.wait(60) == 0, w.stderr.read()
    assert r.returncode == 0, r.stderr
    assert r.stdout == blob(n, 77)
    assert waited > 1.0  # it really waited for the writer rather than reading a finished file
    assert os.stat(b / "live.bin").st_size == n or wait_for(lambda: os.stat(b / "live.bin").st_size == n, 5)


def test_a_reader_gets_eio_when_the_writer_goes_stale(mounter, bucket):
    """The writing daemon dies (kill -9): no heartbeat, no commit. The follower gives up
    after follow_timeout with EIO, and its log says why."""
    a = mounter(bucket, "writer")
    b = mounter(bucket, "reader", follow_timeout="2")
    f = open(a / "orphan.bin", "wb", buffering=0)
    f.write(b"o" * 1000)
    os.fsync(f.fileno())
    for pid in a.daemon_pids():
        os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    with open(b / "orphan.bin", "rb", buffering=0) as r:
        assert r.read(1000) == b"o" * 1000
        with pytest.raises(OSError) as e:
            r.read(1000)
    assert e.value.errno == errno.EIO and 1.5 < time.monotonic() - t0 < 30
    try:
        f.close()
    except OSError:
        pass  # the writer's mount is gone: ENOTCONN
    assert wait_for(lambda: "writer silent" in b.log_text(), 5), b.log_text()


def test_ctrl_c_on_a_reader_waiting_for_a_paused_writer_returns_at_once(mounter, bucket):
    a = mounter(bucket, "writer")
    b = mounter(bucket, "reader")
    f = open(a / "paused.log", "wb", buffering=0)
    try:
        f.write(b"first line\n")
        os.fsync(f.fileno())
        cat = subprocess.Popen(["cat", str(b / "paused.log")], stdout=subprocess.PIPE)
        assert cat.stdout.readline() == b"first line\n"  # now waiting at the end
        t0 = time.monotonic()
        cat.send_signal(signal.SIGINT)
        cat.wait(5)
        assert time.monotonic() - t0 < 3
    finally:
        f.close()
    assert (b / "paused.log").read_bytes() == b"first line\n"


# -- mount(8), fstab, unmount ------------------------------------------------------------------

@pytest.fixture
def installed_helper():
    """/sbin/mount.s3pipefs for this checkout, via the packaging script; removed afterwards
    when this fixture installed it."""
    target = Path("/sbin/mount.s3pipefs")
    helper = helper_cmd()
    if len(helper) != 1:
        pytest.fail("the mount.s3pipefs console script is not installed (pip install -e .)")
    mine = target.exists() and helper[0] in target.read_text(errors="replace")
    if not mine:
        r = subprocess.run([str(REPO / "packaging" / "install-mount-helper.sh"), "--helper", helper[0]],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail(f"install-mount-helper.sh failed: {r.stderr}")
    yield target
    if not mine:
        subprocess.run([str(REPO / "packaging" / "install-mount-helper.sh"), "--uninstall"], capture_output=True)


def test_mount_fstab_through_mount8(installed_helper, s3_server, s3_env, bucket, tmp_path):
    require_fuse()
    mp = tmp_path / "fstab-mnt"
    mp.mkdir()
    log = tmp_path / "fstab.log"
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# a test fstab\n"
        f"{bucket}/pre  {mp}  s3pipefs  _netdev,nofail,endpoint={s3_server.endpoint},log={log},"
        "segment_size=1M,workers=2,allow_other,x-systemd.mount-timeout=30  0 0\n")
    r = subprocess.run(["mount", "--fstab", str(fstab), str(mp)], env=s3_env, capture_output=True, text=True,
                       timeout=60)
    try:
        assert r.returncode == 0, r.stderr + log.read_text() if log.exists() else r.stderr
        assert os.path.ismount(mp)
        line = next(ln for ln in Path("/proc/mounts").read_text().splitlines() if f" {mp} " in ln)
        assert line.split()[:3] == [f"{bucket}/pre", str(mp), "fuse.s3pipefs"]
        assert "allow_other" in line.split()[3]
        (mp / "hello").write_bytes(b"via fstab")
        # A small file: one plain object.
        assert Store(S3Config(endpoint_url=s3_server.endpoint)).get(bucket, "pre/hello")[0] == b"via fstab"
    finally:
        u = subprocess.run(["umount", str(mp)], capture_output=True, text=True)
    assert u.returncode == 0, u.stderr
    assert not os.path.ismount(mp)
    assert wait_for(lambda: "unmounted" in log.read_text(), 10)


@pytest.mark.parametrize("fstype", ["s3pipefs", "fuse.s3pipefs"])
def test_mount_t_through_mount8(installed_helper, s3_server, s3_env, bucket, tmp_path, fstype):
    require_fuse()
    mp = tmp_path / "t-mnt"
    mp.mkdir()
    r = subprocess.run(["mount", "-t", fstype, bucket, str(mp), "-o",
                        f"endpoint={s3_server.endpoint},log={tmp_path / 't.log'},nofail,_netdev"],
                       env=s3_env, capture_output=True, text=True, timeout=60)
    try:
        assert r.returncode == 0, r.stderr
        (mp / "t").write_bytes(b"-t works")
        assert (mp / "t").read_bytes() == b"-t works"
    finally:
        subprocess.run(["umount", str(mp)], capture_output=True)
    assert not os.path.ismount(mp)


def test_s3pipefs_mount_subcommand(cli, bucket, s3_server, tmp_path):
    require_fuse()
    mp = tmp_path / "cli-mnt"
    mp.mkdir()
    log = tmp_path / "cli.log"
    r = cli("mount", f"{bucket}/sub", mp, "-o", f"endpoint={s3_server.endpoint},log={log}", "-o", "workers=2")
    try:
        assert r.returncode == 0, r.stderr
        assert os.path.ismount(mp)
        (mp / "x").write_bytes(b"from the cli mount")
        assert cli("cat", f"s3://{bucket}/sub/x").stdout == b"from the cli mount"
    finally:
        subprocess.run(["umount", str(mp)], capture_output=True)
    assert wait_for(lambda: "unmounted" in log.read_text(), 10)


def test_helper_reports_failures_with_mount8_statuses(s3_server, s3_env, tmp_path):
    require_fuse()
    mp = tmp_path / "m"
    mp.mkdir()
    r = subprocess.run([*helper_cmd(), "no-such-bucket-s3pipefs", str(mp), "-o",
                        f"endpoint={s3_server.endpoint},log={tmp_path / 'l'}"], env=s3_env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 32 and "no such bucket 'no-such-bucket-s3pipefs'" in r.stderr
    r = subprocess.run([*helper_cmd(), "b", str(mp), "-o", "endpoint=http://x:1,sgement_size=1M"],
                       env=s3_env, capture_output=True, text=True)
    assert r.returncode == 1 and "unknown mount option 'sgement_size=1M'" in r.stderr
    assert not os.path.ismount(mp)


def _read_ahead_kb(mount) -> int:
    dev = subprocess.run(["mountpoint", "-d", str(mount)], capture_output=True, text=True, check=True).stdout.strip()
    return int(Path(f"/sys/class/bdi/{dev}/read_ahead_kb").read_text())


def test_the_kernel_reads_ahead_in_1mib_steps_and_the_option_sets_it(mounter, bucket):
    # The kernel's own default for a FUSE mount is 128 KiB: 8x more read requests.
    for opts, want in (({}, 1024), ({"kernel_read_ahead": "4M"}, 4096), ({"kernel_read_ahead": "0"}, None)):
        m = mounter(bucket, **opts)
        deadline = time.monotonic() + 10  # set by a thread once the kernel has INIT's reply
        while _read_ahead_kb(m) != want and time.monotonic() < deadline and want is not None:
            time.sleep(0.05)
        got = _read_ahead_kb(m)
        assert got == want if want is not None else got not in (1024, 4096), (opts, got)


def test_ro_mount_rejects_writes(mounter, bucket, store):
    store.put(bucket, "o.txt", b"object")
    rw = mounter(bucket)
    (rw / "s.txt").write_bytes(b"stream")
    ro = mounter(bucket, "ro", ro=True)
    assert (ro / "s.txt").read_bytes() == b"stream" and (ro / "o.txt").read_bytes() == b"object"
    for action in (lambda: (ro / "new").write_bytes(b"x"), lambda: open(ro / "s.txt", "ab"),
                   lambda: (ro / "d").mkdir(), lambda: (ro / "s.txt").unlink(),
                   lambda: os.rename(ro / "s.txt", ro / "t.txt")):
        with pytest.raises(OSError) as e:
            action()
        assert e.value.errno == errno.EROFS
    assert "ro" in next(ln for ln in Path("/proc/mounts").read_text().splitlines()
                        if f" {ro.path} " in ln).split()[3].split(",")


def test_ls_l_sizes_and_rm(mounter, bucket, engine):
    m = mounter(bucket)
    sizes = {"zero": 0, "one": 1, "seg": 1 << 20, "more": (1 << 20) * 2 + 77}
    (m / "d").mkdir()
    for name, n in sizes.items():
        (m / "d" / name).write_bytes(blob(n, n))
    r = sh(f"ls -l {m / 'd'}")
    listed = {}
    for line in r.stdout.decode().splitlines()[1:]:
        parts = line.split()
        listed[parts[-1]] = int(parts[4])
        assert parts[0] == "-rw-r--r--"
    assert listed == sizes
    sh(f"rm {m / 'd' / 'more'}")
    assert not (m / "d" / "more").exists()
    assert engine.stat(bucket, "d/more") is None
    sh(f"rm -r {m / 'd'}")
    assert not (m / "d").exists()


def test_ls_l_of_1000_streams_costs_one_listing_then_nothing(s3_server, s3_env, bucket, tmp_path, store, engine):
    """Counted at the HTTP level, through a proxy, by a real `ls -l` in a real mount."""
    import concurrent.futures as cf

    from tests.faultfixtures import fault_proxy_for
    from tests.fs_fixtures import Mounter

    with engine.open_writer(bucket, "many/s0000", "create") as w:
        w.write(b"x" * 10)
    manifest = store.get(bucket, "many/s0000/.manifest")[0]
    segment = store.get(bucket, "many/s0000/000000000000001")[0]

    def clone(i):  # 999 more streams, byte for byte the same: two PUTs each
        store.put(bucket, f"many/s{i:04d}/000000000000001", segment)
        store.put(bucket, f"many/s{i:04d}/.manifest", manifest)
    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(clone, range(1, 1000)))

    with fault_proxy_for(s3_server) as proxy:
        mnt = Mounter(tmp_path, dict(s3_env), proxy.endpoint)
        try:
            m = mnt(bucket, metadata_ttl="60")
            proxy.reset_log()
            t0 = time.monotonic()
            first = sh(f"ls -l {m / 'many'}").stdout.decode().splitlines()
            t_first = time.monotonic() - t0
            n_first = proxy.count()
            assert len(first) == 1001 and all(line.split()[4] == "10" for line in first[1:])
            proxy.reset_log()
            t0 = time.monotonic()
            for _ in range(3):
                assert sh(f"ls -l {m / 'many'}").stdout.decode().splitlines() == first
            t_again = (time.monotonic() - t0) / 3
            assert proxy.count() == 0
        finally:
            mnt.close()
    # One listing (a page per 1000 names) plus one manifest GET per stream, fetched in parallel.
    assert 1000 <= n_first <= 1010, n_first
    print(f"\nls -l of 1000 streams: first {t_first:.2f}s ({n_first} requests), then {t_again:.2f}s (0 requests)")


def test_two_writers_get_ebusy_on_one_mount_and_across_mounts(mounter, bucket):
    a = mounter(bucket, "a")
    b = mounter(bucket, "b")
    f = open(a / "w.bin", "wb", buffering=0)
    f.write(b"first writer")
    os.fsync(f.fileno())
    try:
        for m in (a, b):
            with pytest.raises(OSError) as e:
                open(m / "w.bin", "ab")
            assert e.value.errno == errno.EBUSY
        r = sh(f"echo second > {b / 'w.bin'}", check=False)
        assert r.returncode != 0 and b"busy" in r.stderr.lower()
    finally:
        f.close()
    assert (b / "w.bin").read_bytes() == b"first writer"


def test_unmount_while_idle_is_clean(mounter, bucket):
    m = mounter(bucket)
    (m / "x").write_bytes(b"x")
    pids = m.daemon_pids()
    assert len(pids) == 1
    r = subprocess.run(["umount", str(m.path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert wait_gone(pids, 10)
    assert "unmounted" in m.log_text() and "ERROR" not in m.log_text()


SLOW_WRITER = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
os.write(fd, b"d" * 3_000_000)
print("wrote", flush=True)
for i in range(int(sys.argv[2])):
    time.sleep(0.1)
    try:
        os.write(fd, b"e" * 1000)
    except OSError as e:
        print("write failed", e.errno, flush=True)
        break
try:
    os.close(fd)
    print("closed", flush=True)
except OSError as e:
    print("close failed", e.errno, flush=True)
"""


def test_sigterm_during_a_write_leaves_the_stream_incomplete_never_short(mounter, bucket, engine):
    m = mounter(bucket, shutdown_timeout="1")
    w = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(m / "cut.bin"), "1000"],
                         stdout=subprocess.PIPE, text=True)
    assert w.stdout.readline() == "wrote\n"
    pids = m.daemon_pids()
    os.kill(pids[0], signal.SIGTERM)
    out = w.communicate(timeout=60)[0]
    assert "write failed" in out and "close failed" in out
    assert wait_gone(pids, 20)
    assert not os.path.ismount(m.path)
    e = engine.stat(bucket, "cut.bin")
    assert not e.complete and not e.writer_alive and e.size >= 3_000_000
    assert "left incomplete" in m.log_text()


def test_sigterm_lets_a_writer_that_closes_in_time_commit(mounter, bucket, engine):
    m = mounter(bucket, shutdown_timeout="20")
    w = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(m / "done.bin"), "10"],
                         stdout=subprocess.PIPE, text=True)
    assert w.stdout.readline() == "wrote\n"
    pids = m.daemon_pids()
    os.kill(pids[0], signal.SIGTERM)
    out = w.communicate(timeout=60)[0]
    assert "closed" in out, out
    assert wait_gone(pids, 30)
    e = engine.stat(bucket, "done.bin")
    assert e.complete and e.size == 3_000_000 + 10 * 1000


def test_upload_failure_comes_back_from_close_and_the_stream_stays_incomplete(s3_server, s3_env, bucket,
                                                                                tmp_path, engine):
    from tests.faultfixtures import Rule, fault_proxy_for
    from tests.fs_fixtures import Mounter

    with fault_proxy_for(s3_server) as proxy:
        mnt = Mounter(tmp_path, dict(s3_env), proxy.endpoint)
        try:
            m = mnt(bucket, retries="1", tries="1")
            proxy.add(Rule("status", method="PUT", path_contains="000000000000002", status=403,
                           code="AccessDenied", times=-1))
            r = sh(f"head -c 5000000 /dev/zero > {m / 'fails.bin'}", check=False)
            assert r.returncode != 0 and b"Permission denied" in r.stderr, r.stderr
        finally:
            mnt.close()
    e = engine.stat(bucket, "fails.bin")
    assert e is None or not e.complete


def test_libfuse2_works_too(mounter, bucket, tmp_path):
    """mfusepy on libfuse 2 (128 KiB requests, big_writes, atomic_o_trunc) when forced."""
    env = dict(mounter.env)
    mounter.env = {**env, "FUSE_LIBRARY_NAME": "fuse"}
    try:
        m = mounter(bucket)
    finally:
        mounter.env = env
    assert "libfuse 2." in m.log_text()
    assert os.statvfs(m.path).f_bsize == 128 << 10  # big_writes: 128 KiB requests
    data = blob(3 << 20, 31)
    (tmp_path / "d").write_bytes(data)
    sh(f"cp {tmp_path / 'd'} {m / 'd'}; echo tail >> {m / 'd'}")
    assert (m / "d").read_bytes() == data + b"tail\n"
    with open(m / "d", "r+b", buffering=0) as f:  # a stream's bytes are sealed
        with pytest.raises(OSError) as e:
            os.pwrite(f.fileno(), b"x", 0)
        assert e.value.errno == errno.ESPIPE
    sh(f"echo short > {m / 'd'}")  # O_TRUNC on an existing stream: a small file now, one object
    assert (m / "d").read_bytes() == b"short\n"
    with open(m / "d", "r+b", buffering=0) as f:  # an object that fits a segment changes in place
        os.pwrite(f.fileno(), b"S", 0)
    assert (m / "d").read_bytes() == b"Short\n"
