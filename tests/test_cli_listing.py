"""ls -R, rm -R, du, wildcards in ls/rm/cp, --json, and what -r means, through the real CLI
against the real server. Streams are one entry each everywhere: never their segments or
their .manifest."""
from __future__ import annotations

import json

import pytest

from s3pipefs.config import TransferConfig
from s3pipefs.engine import Engine
from tests.conftest import make_bytes
from tests.test_cli_errors import one_line

SEGMENT = 64 * 1024


@pytest.fixture
def tree(bucket, store, tmp_path):
    """logs/2026-01/big (a 5-segment stream), logs/2026-02/s1 (stream), logs/2026-02/obj.txt
    (object), logs/2025-12 (stream), top (stream), a directory marker empty/. Written
    in-process by the engine `put` runs (the CLI's own tests are test_streams.py's), which
    spares five interpreter starts per test."""
    data = make_bytes(5 * SEGMENT - 100, "big")
    engine = Engine(store, TransferConfig(segment_size=SEGMENT, staging_dir=str(tmp_path / "staging")))
    for key, body in (("logs/2026-01/big", data), ("logs/2026-02/s1", b"one"), ("logs/2025-12", b"dec"),
                      ("top", b"t")):
        with engine.open_writer(bucket, key) as w:
            w.write(body)
    store.put(bucket, "logs/2026-02/obj.txt", b"object!")
    store.put(bucket, "empty/", b"")
    return data


def urls(out: bytes) -> list[str]:
    return ["s3://" + line.split(" s3://", 1)[1] for line in out.decode().splitlines()]


def keys(store, bucket) -> list[str]:
    return sorted(o.key for o in store.list(bucket, ""))


def test_ls_recursive_lists_streams_as_one_entry_each(cli, bucket, tree):
    r = cli("ls", "-R", f"s3://{bucket}/", check=True)
    assert urls(r.stdout) == [f"s3://{bucket}/{k}" for k in
                              ("logs/2025-12", "logs/2026-01/big", "logs/2026-02/obj.txt", "logs/2026-02/s1", "top")]
    listed = json.loads(cli("ls", "--recursive", "--json", f"s3://{bucket}/logs", check=True).stdout)
    big = next(e for e in listed if e["key"] == "logs/2026-01/big")
    assert big == {**big, "kind": "stream", "size": len(tree), "complete": True}
    assert [e["kind"] for e in listed] == ["stream", "stream", "object", "stream"]
    # One level without -R, as before: a prefix is a DIR line.
    assert urls(cli("ls", f"s3://{bucket}/logs/", check=True).stdout) == [
        f"s3://{bucket}/logs/2025-12", f"s3://{bucket}/logs/2026-01/", f"s3://{bucket}/logs/2026-02/"]


def test_ls_wildcards_match_whole_keys_from_the_literal_prefix(cli, bucket, tree):
    r = cli("ls", f"s3://{bucket}/logs/2026-*", check=True)
    assert urls(r.stdout) == [f"s3://{bucket}/logs/2026-01/big", f"s3://{bucket}/logs/2026-02/obj.txt",
                              f"s3://{bucket}/logs/2026-02/s1"]
    r = cli("ls", f"s3://{bucket}/logs/202?-0?/s?", check=True)
    assert urls(r.stdout) == [f"s3://{bucket}/logs/2026-02/s1"]
    r = cli("ls", "--json", f"s3://{bucket}/*.txt", check=True)
    assert [e["key"] for e in json.loads(r.stdout)] == ["logs/2026-02/obj.txt"]
    # Nothing matches: an error, not an empty success.
    r = cli("ls", f"s3://{bucket}/logs/2027-*")
    assert r.returncode == 1 and one_line(r) == f"s3pipefs: s3://{bucket}/logs/2027-*: no match"
    # Inside a stream there are no entries: its segments are not files.
    r = cli("ls", f"s3://{bucket}/logs/2026-01/big/0*")
    assert r.returncode == 1 and "no match" in one_line(r)
    assert urls(cli("ls", "-R", f"s3://{bucket}/logs/2026-01/big/", check=True).stdout) == [
        f"s3://{bucket}/logs/2026-01/big"]


def test_rm_recursive_dry_run_then_for_real(cli, bucket, store, tree):
    before = keys(store, bucket)
    r = cli("rm", "-R", "--dry-run", f"s3://{bucket}/logs/", check=True)
    assert r.stdout.decode().splitlines() == [
        f"would remove stream s3://{bucket}/logs/2025-12", f"would remove stream s3://{bucket}/logs/2026-01/big",
        f"would remove object s3://{bucket}/logs/2026-02/obj.txt", f"would remove stream s3://{bucket}/logs/2026-02/s1"]
    assert keys(store, bucket) == before
    # A prefix without -R is refused with a pointer to -R; nothing is removed.
    r = cli("rm", f"s3://{bucket}/logs")
    assert r.returncode == 2 and "-R" in one_line(r) and keys(store, bucket) == before
    r = cli("rm", "--recursive", "-v", f"s3://{bucket}/logs", check=True)
    assert f"removed stream s3://{bucket}/logs/2026-01/big" in r.stderr.decode()
    assert [k for k in keys(store, bucket) if k.startswith("logs")] == []
    r = cli("rm", "-R", f"s3://{bucket}/empty/", check=True)
    assert [k.split("/")[0] for k in keys(store, bucket)] == ["top", "top"]  # the stream's segment and manifest


def test_rm_wildcard_removes_the_matches_only(cli, bucket, store, tree):
    r = cli("rm", "--dry-run", f"s3://{bucket}/logs/2026-0?/*", check=True)
    assert len(r.stdout.decode().splitlines()) == 3
    cli("rm", f"s3://{bucket}/logs/2026-02/*", check=True)
    assert urls(cli("ls", "-R", f"s3://{bucket}/logs/", check=True).stdout) == [
        f"s3://{bucket}/logs/2025-12", f"s3://{bucket}/logs/2026-01/big"]
    r = cli("rm", f"s3://{bucket}/nothing-*", f"s3://{bucket}/top")
    assert r.returncode == 1 and "no match" in r.stderr.decode()
    assert cli("info", f"s3://{bucket}/top").returncode == 1  # the other URL was still removed


@pytest.mark.parametrize("argv", [["rm", "-r", "s3://{b}/logs/"], ["ls", "-r", "s3://{b}/"],
                                  ["-r", "eu-west-1", "rm", "s3://{b}/top"], ["put", "-r", "eu-west-1", "s3://{b}/x"]])
def test_r_is_the_region_only_for_to_and_from(cli, bucket, store, tree, argv):
    before = keys(store, bucket)
    r = cli(*[a.format(b=bucket) for a in argv], input=b"x")
    assert r.returncode == 2
    assert "-r is s3pipe2's spelling of --region, taken only by `to` and `from`" in one_line(r)
    assert "-R/--recursive" in one_line(r)
    assert keys(store, bucket) == before


def test_du_counts_streams_by_their_manifest_size(cli, bucket, store, tree):
    # Grow one segment object behind the manifest's back: du must still say the manifest's size.
    store.put(bucket, "logs/2026-01/big/000000000000001", b"x" * (SEGMENT + 5000))
    r = cli("du", "--json", f"s3://{bucket}/logs/", check=True)
    assert json.loads(r.stdout) == [{"url": f"s3://{bucket}/logs/", "bytes": len(tree) + 3 + 7 + 3,
                                     "streams": 3, "objects": 1}]
    r = cli("du", "-d", "1", f"s3://{bucket}", f"s3://{bucket}/top", check=True)
    rows = [line.split() for line in r.stdout.decode().splitlines()]
    assert [(row[0], row[-1]) for row in rows] == [
        (str(len(tree) + 13), f"s3://{bucket}/logs/"), (str(len(tree) + 14), f"s3://{bucket}/"),
        ("1", f"s3://{bucket}/top")]
    assert rows[1][3:7] == ["4", "streams", "1", "objects"]
    r = cli("du", "--json", "--depth", "1", f"s3://{bucket}/logs/2026-*", check=True)
    assert [(row["url"], row["bytes"], row["streams"]) for row in json.loads(r.stdout)] == [
        (f"s3://{bucket}/logs/2026-01/", len(tree), 1), (f"s3://{bucket}/logs/2026-02/", 10, 1),
        (f"s3://{bucket}/logs/2026-*", len(tree) + 10, 2)]


def test_cp_wildcard_copies_each_match_below_the_pattern_directory(cli, bucket, bucket2, tmp_path, tree):
    r = cli("cp", "--json", f"s3://{bucket}/logs/2026-*", str(tmp_path / "out"), check=True)
    done = json.loads(r.stdout)
    assert [(d["destination"], d["kind"], d["bytes"]) for d in done] == [
        (str(tmp_path / "out" / "2026-01" / "big"), "stream", len(tree)),
        (str(tmp_path / "out" / "2026-02" / "obj.txt"), "object", 7),
        (str(tmp_path / "out" / "2026-02" / "s1"), "stream", 3)]
    assert (tmp_path / "out" / "2026-01" / "big").read_bytes() == tree
    r = cli("cp", "--json", f"s3://{bucket}/logs/*/s?", f"s3://{bucket2}/copies", check=True)
    assert [(d["destination"], d["server_side"]) for d in json.loads(r.stdout)] == [
        (f"s3://{bucket2}/copies/2026-02/s1", True)]
    assert cli("cat", f"s3://{bucket2}/copies/2026-02/s1", check=True).stdout == b"one"
    r = cli("cp", f"s3://{bucket}/logs/*", "-")
    assert r.returncode == 2 and "may match several entries" in one_line(r)


def test_json_on_info_verify_and_a_single_cp(cli, bucket, tree, tmp_path):
    info = json.loads(cli("info", "--json", f"s3://{bucket}/logs/2026-01/big", check=True).stdout)
    assert (info["size"], info["segments"], info["completed"]) == (len(tree), 5, True)
    report = json.loads(cli("verify", "--json", f"s3://{bucket}/logs/2026-01/big", check=True).stdout)
    assert report["ok"] is True and report["size"] == len(tree) and report["segments"] == 5
    assert report["problems"] == [] and any("SHA-256" in c for c in report["checked"])
    (done,) = json.loads(cli("cp", "--json", f"s3://{bucket}/top", str(tmp_path / "t"), check=True).stdout)
    assert (done["source"], done["destination"], done["kind"], done["bytes"]) == (
        f"s3://{bucket}/top", str(tmp_path / "t"), "stream", 1)
