"""Bad input gets one clear line, the right exit status, and never a stream marked complete."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest


def one_line(r):
    err = r.stderr.decode()
    assert "Traceback" not in err, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert lines, "no message on stderr"
    return lines[-1]


def test_missing_bucket(cli):
    r = cli("put", "s3://no-such-bucket-here/x", input=b"data")
    assert r.returncode == 1
    assert "no such bucket 'no-such-bucket-here'" in one_line(r)
    r = cli("cat", "s3://no-such-bucket-here/x")
    assert r.returncode == 1 and "no-such-bucket-here" in one_line(r)


def test_missing_key(cli, bucket):
    r = cli("cat", f"s3://{bucket}/nothing/here")
    assert r.returncode == 1
    assert f"s3://{bucket}/nothing/here" in one_line(r) and "no such" in one_line(r)


def test_bad_credentials(cli, bucket, s3_env):
    env = {**s3_env, "AWS_SECRET_ACCESS_KEY": "wrong-secret-value"}
    r = subprocess.run([sys.executable, "-m", "s3pipefs", "put", f"s3://{bucket}/x"], input=b"d",
                       env=env, capture_output=True, timeout=120)
    assert r.returncode == 1
    line = one_line(r)
    assert "access denied" in line and f"s3://{bucket}" in line
    assert "wrong-secret-value" not in r.stderr.decode()


def test_unreachable_endpoint(cli, s3_env):
    env = {**s3_env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # discard port: nothing listens
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "s3pipefs", "cat", "s3://b/x"], env=env,
                       capture_output=True, timeout=120)
    assert r.returncode == 1
    assert "cannot reach endpoint" in one_line(r) and "127.0.0.1:9" in one_line(r)
    assert time.monotonic() - t < 60


def test_unwritable_staging_dir(cli, bucket, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = cli("put", "--staging", str(blocker / "sub"), f"s3://{bucket}/x", input=b"data")
    assert r.returncode == 1
    assert "staging dir" in one_line(r) and str(blocker) in one_line(r)
    assert cli("info", f"s3://{bucket}/x").stdout.count(b"complete") == 0 or \
        json.loads(cli("info", "--json", f"s3://{bucket}/x").stdout)["completed"] is False


def test_full_staging_disk(cli, bucket, tiny_tmpfs):
    data = os.urandom(3 << 20)
    r = cli("put", "--segment-size", "2M", "--staging", str(tiny_tmpfs), f"s3://{bucket}/full", input=data)
    assert r.returncode == 1
    assert "is full" in one_line(r) and str(tiny_tmpfs) in one_line(r)
    info = json.loads(cli("info", "--json", f"s3://{bucket}/full").stdout)
    assert info["completed"] is False
    assert not os.listdir(tiny_tmpfs)  # staging cleaned up


def test_interrupted_input_leaves_stream_incomplete(s3_env, cli, bucket):
    url = f"s3://{bucket}/intr"
    feeder = "import sys,time\nsys.stdout.buffer.write(b'x'*300000); sys.stdout.flush(); time.sleep(60)\n"
    feed = subprocess.Popen([sys.executable, "-c", feeder], stdout=subprocess.PIPE)
    p = subprocess.Popen([sys.executable, "-m", "s3pipefs", "put", "--segment-size", "64K", url],
                         stdin=feed.stdout, env=s3_env, stderr=subprocess.PIPE)
    feed.stdout.close()
    deadline = time.time() + 30
    while cli("info", url).returncode != 0:
        assert time.time() < deadline
        time.sleep(0.1)
    time.sleep(1)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=60)[1].decode()
    feed.kill()
    assert p.returncode == 130
    assert "interrupted" in err and "incomplete" in err and "Traceback" not in err
    info = json.loads(cli("info", "--json", url).stdout)
    assert info["completed"] is False
    # Its lease is released: resume or overwrite can proceed at once.
    r = cli("put", url, input=b"fresh")
    assert r.returncode == 0, r.stderr
    assert cli("cat", url).stdout == b"fresh"


def test_usage_errors_exit_2(cli):
    for args in (["put"], ["cat", "not-an-s3-url"], ["put", "--segment-size", "lots", "s3://b/k"],
                 ["frobnicate"], ["put", "--segment-size", "10", "s3://b/k"]):
        r = cli(*args, input=b"")
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr.decode()


def test_a_usage_error_names_the_program_once(cli):
    assert one_line(cli("frobnicate")).startswith("s3pipefs: argument COMMAND: invalid choice: 'frobnicate'")
    assert one_line(cli("cp", "a", "b")) == "s3pipefs cp: one of SRC and DST must be an s3:// location"


def test_output_that_cannot_be_written_at_exit_is_an_error(cli, bucket, s3_env, tiny_tmpfs):
    # The process exits without the interpreter's teardown; the last buffered lines must
    # still be flushed, and a failed flush must not pass as success.
    assert cli("put", f"s3://{bucket}/listed", input=b"x").returncode == 0
    out = cli("ls", f"s3://{bucket}/")
    assert out.returncode == 0 and f"s3://{bucket}/listed" in out.stdout.decode()
    with open(tiny_tmpfs / "filler", "wb") as f:  # a full disk: buffered output fails at exit
        with pytest.raises(OSError):
            f.write(b"\0" * (2 << 20))
            f.flush()
    env = {k: v for k, v in s3_env.items() if k != "PYTHONUNBUFFERED"}  # as for most users
    with open(tiny_tmpfs / "listing", "wb") as dest:
        r = subprocess.run([sys.executable, "-m", "s3pipefs", "ls", f"s3://{bucket}/"], stdout=dest,
                           stderr=subprocess.PIPE, env=env, timeout=60)
    assert r.returncode == 1, r.stderr
    assert one_line(r) == "s3pipefs: stdout: No space left on device"


def test_s3pipe2_flags_and_aliases(cli, bucket, s3_env):
    data = os.urandom(2_500_000)
    # s3pipe2 [options] to|from PATH, with -m MB, -b KB, -n workers, -t tries, -p staging, -v
    r = cli("-m", "1", "-b", "64", "-n", "3", "-t", "2", "-p", "/tmp", "to", f"s3://{bucket}/legacy", input=data)
    assert r.returncode == 0, r.stderr
    info = json.loads(cli("info", "--json", f"s3://{bucket}/legacy").stdout)
    assert info["segment_size"] == 1_000_000 and info["segments"] == 3
    r = cli("-v", "from", f"s3://{bucket}/legacy")
    assert r.returncode == 0 and r.stdout == data


def test_credentials_on_the_command_line_are_refused_with_a_warning(cli, bucket):
    r = cli("-a", "AKIAEXAMPLE", "-s", "supersecretvalue", "put", f"s3://{bucket}/w", input=b"x")
    assert r.returncode == 0
    err = r.stderr.decode()
    assert "warning" in err and "supersecretvalue" not in err


def test_seekless_rm_and_ls(cli, bucket):
    assert cli("put", f"s3://{bucket}/a/s1", input=b"1").returncode == 0
    assert cli("put", f"s3://{bucket}/a/s2", input=b"22").returncode == 0
    out = cli("ls", f"s3://{bucket}/a/").stdout.decode()
    assert f"s3://{bucket}/a/s1" in out and f"s3://{bucket}/a/s2" in out
    assert cli("rm", f"s3://{bucket}/a/s1").returncode == 0
    listing = json.loads(cli("ls", "--json", f"s3://{bucket}/a/").stdout)
    assert [e["key"] for e in listing] == ["a/s2"] and listing[0]["size"] == 2
    r = cli("rm", f"s3://{bucket}/a/s1")
    assert r.returncode == 1 and "no such" in one_line(r)


def test_unknown_profile_is_a_usage_error_naming_it(cli, bucket, tmp_path):
    config = tmp_path / "aws-config"
    config.write_text("[profile real]\nregion = us-east-1\n")
    for args, env in ((["--profile", "nosuch-a"], {}), ([], {"AWS_PROFILE": "nosuch-b"})):
        r = cli("cat", *args, f"s3://{bucket}/x", env={"AWS_CONFIG_FILE": str(config), **env})
        assert r.returncode == 2
        name = args[1] if args else env["AWS_PROFILE"]
        assert one_line(r) == f"s3pipefs: AWS profile not found: {name}"


def test_to_refuses_to_replace_a_stream_as_s3pipe2_did_and_put_replaces(cli, bucket):
    url = f"s3://{bucket}/kept"
    assert cli("to", url, input=b"first").returncode == 0
    r = cli("to", url, input=b"second")
    assert r.returncode == 1
    assert one_line(r) == (f"s3pipefs: {url}: exists, and `to` (as s3pipe2) does not replace it; "
                           "remove it first, or replace it with `s3pipefs put`")
    assert cli("cat", url).stdout == b"first"
    assert cli("put", url, input=b"second").returncode == 0
    assert cli("from", url).stdout == b"second"
    assert cli("to", "--append", url, input=b"+more").returncode == 0  # adding is not replacing
    assert cli("cat", url).stdout == b"second+more"


def test_an_endpoint_that_is_not_a_url_is_one_usage_line(cli):
    r = cli("ls", "--endpoint-url", "notaurl", "s3://b/")
    assert r.returncode == 2
    assert one_line(r) == "s3pipefs ls: argument --endpoint-url: not an http(s) URL: 'notaurl'"


def test_sync_help_states_the_workers_default_sync_uses(cli):
    from s3pipefs.commands import sync

    flat = " ".join(cli("sync", "--help").stdout.decode().split())
    assert f"parallel S3 requests per transfer or open file (default {sync.DEFAULT_WORKERS})" in flat
    assert sync.DEFAULT_WORKERS == 16
    flat = " ".join(cli("cp", "--help").stdout.decode().split())
    assert "parallel S3 requests per transfer or open file (default 8)" in flat


def test_progress_shows_binary_units_and_percent_and_eta_when_the_size_is_known(cli, bucket, tmp_path):
    import re

    data = os.urandom(3 << 20)
    src = tmp_path / "in"
    src.write_bytes(data)
    url = f"s3://{bucket}/p"
    with open(src, "rb") as f:  # stdin is a file: its size is known
        r = subprocess.run([sys.executable, "-m", "s3pipefs", "put", "-v", url], stdin=f, capture_output=True,
                           timeout=120)
    assert r.returncode == 0, r.stderr
    for args in (["put", "-v", url], ["cat", "-v", url], ["cp", "-v", url, str(tmp_path / "out")],
                 ["verify", "-v", url]):
        r = cli(*args, input=data if args[0] == "put" else None) if args[0] != "put" else r
        err = r.stderr.decode()
        final = [part for part in re.split(r"[\r\n]", err) if "100%" in part]
        assert final, (args, err)
        assert "3.00 MiB/3.00 MiB [" in final[-1] and re.search(r"\[\d\d:\d\d<\d\d:\d\d, [\d.]+ [KMG]iB/s\]",
                                                                 final[-1]), final[-1]
        assert not re.search(r"\d(k|M|G)B", err), err
    # From a pipe the size is unknown: bytes and rate, no percentage.
    r = cli("put", "-v", f"s3://{bucket}/q", input=data)
    assert r.returncode == 0 and "3.00 MiB [" in r.stderr.decode() and "%" not in r.stderr.decode()
