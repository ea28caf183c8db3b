"""Security: secrets stay out of command lines, logs and error messages; staging is
private; SSE-C keys are never printed; allow_other is opt-in and its risk documented.

The tests grep for the session's secret access key (and for a test SSE-C key in raw, hex
and base64 form) in everything s3pipefs prints or logs, on success and on every failure
path we can provoke, with verbose output and S3PIPEFS_DEBUG tracebacks switched on.
"""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from s3pipefs.s3 import RequestOptions
from tests.faultproxy import FaultProxy, Rule
from tests.test_reliability_common import (SEG, blob, no_secret, run, run_batch, slow_feeder, spawn,
                                           wait_until)

REPO = Path(__file__).resolve().parent.parent
SSE_KEY = bytes(range(7, 39))  # 32 bytes: the test SSE-C key


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def all_cmdlines() -> str:
    return "\n".join(cmdline(int(p)) for p in os.listdir("/proc") if p.isdigit())


# ---- the secret access key ---------------------------------------------------------------------

def test_no_secret_in_output_on_success_or_failure(s3_server, s3_env, bucket, tmp_path):
    secret = s3_env["AWS_SECRET_ACCESS_KEY"]
    url = f"s3://{bucket}/s"
    debug = {**s3_env, "S3PIPEFS_DEBUG": "1"}
    data = blob(3 * SEG, 1)
    outputs = []
    # Success, verbosely.
    outputs += run_batch(s3_env, [
        (("-v", "put", "--segment-size", str(SEG), url), data), (("-v", "cat", url), b""),
        (("ls", "--json", f"s3://{bucket}/"), b""), (("info", "--json", url), b""), (("verify", url), b""),
        (("-v", "cp", url, f"s3://{bucket}/copy"), b""), (("-v", "rm", f"s3://{bucket}/copy"), b""),
    ], tmp_path)
    # Failures with tracebacks on: refused by the server, broken server, no server.
    with FaultProxy(s3_server.endpoint) as proxy:
        proxy.add(Rule("status", status=403, code="AccessDenied", path_contains="/denied", times=-1))
        proxy.add(Rule("status", status=500, path_contains="/broken", times=-1))
        env = {**debug, "AWS_ENDPOINT_URL": proxy.endpoint}
        for cmd in (["put", f"s3://{bucket}/denied"], ["cat", f"s3://{bucket}/denied"],
                    ["put", "--tries", "1", f"s3://{bucket}/broken"], ["ls", f"s3://{bucket}/broken/"]):
            r = run(env, *cmd, input=b"x" * 1000, timeout=60)
            assert r.returncode != 0
            outputs.append(r)
    r = run({**debug, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "cat", url, timeout=60)
    assert r.returncode != 0
    outputs.append(r)
    # A wrong secret: the server's "signature does not match" must not echo either key.
    wrong = "wrong-" + secret[::-1]
    r = run({**debug, "AWS_SECRET_ACCESS_KEY": wrong}, "put", f"s3://{bucket}/w", input=b"x", timeout=60)
    assert r.returncode != 0
    no_secret(wrong, r.stdout, r.stderr)
    outputs.append(r)
    for r in outputs:
        no_secret(secret, r.stdout, r.stderr)
    assert any("Traceback" in r.err for r in outputs)  # the debug paths really ran


def test_no_secret_on_any_command_line_while_transferring(s3_env, bucket, tmp_path):
    """Credentials travel in the environment (AWS convention), never in argv, which every
    local user can read in /proc or ps."""
    secret = s3_env["AWS_SECRET_ACCESS_KEY"]
    src = tmp_path / "in"
    src.write_bytes(blob(2 * SEG, 2))
    feed = subprocess.Popen(slow_feeder(src, SEG), stdout=subprocess.PIPE)
    p = spawn(s3_env, "put", "--segment-size", str(SEG), f"s3://{bucket}/s", stdin=feed.stdout,
              stderr=subprocess.PIPE)
    feed.stdout.close()
    try:
        wait_until(lambda: "s3pipefs" in cmdline(p.pid) and run(s3_env, "info", f"s3://{bucket}/s").returncode == 0,
                   30, what="the writer to start")
        assert secret not in all_cmdlines()
    finally:
        p.kill()
        feed.kill()
        p.wait()


def test_command_line_credentials_are_ignored_with_a_warning_and_never_echoed(s3_env, bucket):
    """s3pipe2's -a/-s would put keys in argv: accepted for compatibility, ignored, warned
    about, and the value is not repeated anywhere."""
    r = run(s3_env, "-a", "AKIAFAKEFAKEFAKE", "-s", "argv-secret-value-123", "put", f"s3://{bucket}/w",
            input=b"x")
    assert r.returncode == 0, r
    assert "warning" in r.err and "command line" in r.err
    no_secret("argv-secret-value-123", r.stdout, r.stderr)


# ---- staging ---------------------------------------------------------------------------------------

def test_staging_is_private_even_with_umask_0(s3_env, bucket, tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir(mode=0o777)
    os.chmod(staging, 0o777)
    src = tmp_path / "in"
    src.write_bytes(blob(6 * SEG, 3))
    # Half a segment, then a pause: a staged file is open while we look.
    feed = subprocess.Popen(slow_feeder(src, SEG // 2), stdout=subprocess.PIPE)
    p = subprocess.Popen([sys.executable, "-m", "s3pipefs", "put", "--segment-size", str(SEG), "--staging",
                          str(staging), f"s3://{bucket}/s"], stdin=feed.stdout, env=s3_env,
                         stderr=subprocess.PIPE, preexec_fn=lambda: os.umask(0))
    feed.stdout.close()
    try:
        files = wait_until(lambda: [f for f in staging.rglob("*") if f.is_file()], 30, what="a staged file")
        dirs = [d for d in staging.iterdir() if d.is_dir()]
        assert dirs
        for d in dirs:
            assert stat.S_IMODE(d.stat().st_mode) == 0o700, oct(d.stat().st_mode)
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, (f, oct(f.stat().st_mode))
            assert f.stat().st_uid == os.getuid()
    finally:
        p.kill()
        feed.kill()
        p.wait()


# ---- SSE-C keys ------------------------------------------------------------------------------------

def test_sse_c_key_is_never_printed_or_on_a_command_line(s3_server, s3_env, bucket, tmp_path):
    keyfile = tmp_path / "key"
    keyfile.write_bytes(SSE_KEY)
    keyfile.chmod(0o600)
    wrong = tmp_path / "wrong"
    wrong.write_bytes(bytes(32))
    wrong.chmod(0o600)
    src = tmp_path / "in"
    src.write_bytes(blob(2 * SEG + 5, 4))
    debug = {**s3_env, "S3PIPEFS_DEBUG": "1"}
    outs = []
    r = run(debug, "-v", "cp", "--object", "--sse-c-key-file", str(keyfile), str(src), f"s3://{bucket}/enc")
    assert r.returncode == 0, r
    outs.append(r)
    r = run(debug, "-v", "cp", "--sse-c-key-file", str(keyfile), f"s3://{bucket}/enc", str(tmp_path / "out"))
    assert r.returncode == 0, r
    assert (tmp_path / "out").read_bytes() == src.read_bytes()
    outs.append(r)
    # Failure paths: no key, the wrong key, and the key in the environment.
    for args in ((), ("--sse-c-key-file", str(wrong))):
        r = run(debug, "-v", "cp", *args, f"s3://{bucket}/enc", str(tmp_path / "x"), timeout=60)
        assert r.returncode != 0
        outs.append(r)
    r = run({**debug, "S3PIPEFS_SSE_C_KEY": SSE_KEY.hex()}, "-v", "cp", f"s3://{bucket}/enc", "-")
    assert r.returncode == 0 and r.stdout == src.read_bytes(), r
    r.stdout = b""  # the plaintext, not a leak
    outs.append(r)
    for r in outs:
        no_secret(SSE_KEY, r.stdout, r.stderr)
    # A key on the command line is not even an option.
    r = run(s3_env, "cp", "--sse-c-key", SSE_KEY.hex(), str(src), f"s3://{bucket}/x")
    assert r.returncode == 2
    # repr() of the request options, which a traceback or a debug log could show, hides it too.
    no_secret(SSE_KEY, repr(RequestOptions(sse_key=SSE_KEY)))


# ---- allow_other -----------------------------------------------------------------------------------

def test_allow_other_is_opt_in():
    from s3pipefs.fs.options import parse_options

    assert parse_options([])[0].fs.allow_other is False
    assert parse_options(["endpoint=http://x:1,ro"])[0].fs.allow_other is False
    assert parse_options(["allow_other"])[0].fs.allow_other is True


def test_allow_other_has_a_documented_warning():
    """docs/mount.md must warn, at the option itself, what allow_other exposes."""
    text = (REPO / "docs" / "mount.md").read_text()
    section = text.split("### `allow_other`", 1)[1].split("\n### ", 1)[0]
    assert re.search(r"\bwarning\b", section, re.I), section
    assert "other users" in section


@pytest.mark.fuse
def test_a_mount_is_closed_to_other_users_unless_allow_other(s3_server, s3_env, bucket, tmp_path):
    """Without allow_other another local user cannot even list the mount; with it, the
    kernel checks modes (umask) as for any file."""
    import pwd
    import tempfile

    from tests.fs_fixtures import Mounter, require_fuse

    require_fuse()
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="rel-allow-", dir="/tmp"))
    base.chmod(0o755)
    mnt = Mounter(base, dict(s3_env), s3_server.endpoint)
    try:
        closed = mnt(bucket, "closed")
        (closed / "f").write_bytes(b"data")
        opened = mnt(bucket, "open", allow_other=True, debug=True)

        def as_nobody(*cmd):
            return subprocess.run(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                                   "--clear-groups", *cmd], capture_output=True, timeout=30)

        r = as_nobody("ls", str(closed.path))
        assert r.returncode != 0 and b"Permission denied" in r.stderr, r
        r = as_nobody("cat", str(opened / "f"))
        assert r.returncode == 0 and r.stdout == b"data", r
        # Modes still apply: the tree belongs to the mounting user, 0755/0644.
        r = as_nobody("sh", "-c", f"echo x > {opened / 'g'}")
        assert r.returncode != 0 and b"Permission denied" in r.stderr, r
        secret = s3_env["AWS_SECRET_ACCESS_KEY"]
        no_secret(secret, Path("/proc/mounts").read_text(), all_cmdlines(), closed.log_text(), opened.log_text())
    finally:
        mnt.close()
        subprocess.run(["rm", "-rf", str(base)])
