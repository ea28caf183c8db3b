"""Hostile input: malformed and hostile manifests, fuzzed option strings, odd object names,
and a bucket the credentials may not read.

The manifest is untrusted input (docs/format.md, "Rules the parser enforces"): whatever it
says, s3pipefs gives one clear line naming it and exit 1, never a traceback, a hang, a
memory blow-up, or a request outside the stream's own prefix.
"""
from __future__ import annotations

import json
import math
import resource
import string
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from s3pipefs import errors, manifest as mf
from s3pipefs.server import LocalServer
from tests.test_reliability_common import blob, environ_without_aws, run, run_batch, seg_key

# ---- the parser, property-based ------------------------------------------------------------------

INVARIANT_KEYS = ("completed", "num_segments", "total_size", "segment_size", "version", "upload_began",
                  "upload_ended")
OWN_KEYS = ("format", "segment_size_bytes", "layout", "sha256", "chain", "writer_id", "heartbeat",
            "block_size", "replacing")

hostile_numbers = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70).map(str),
    st.sampled_from(["0", "-0", "1", "-1", "1e3", "0x10", "1_000", " 12 ", "١٢٣", "NaN", "inf", "-inf",
                     "1.5", "", "true", "9" * 19, "9" * 25, str(2**63), str(2**63 - 1), str(10**15),
                     str(10**15 - 1)]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
hostile_layouts = st.one_of(
    st.lists(st.tuples(st.integers(-3, 10**16), st.integers(-3, 10**16)), max_size=4).map(
        lambda runs: ",".join(f"{c}x{s}" for c, s in runs)),
    st.sampled_from(["", "x", "1x", "x1", "1x1,", ",", "1x1x1", "../../etc", "1x5,../x", "1 x 5",
                     "0x0", "-1x5", "1x-5", "99999999999999999x1"]),
)
hostile_values = st.one_of(hostile_numbers, st.text(max_size=40), st.sampled_from(
    ["true", "false", "yes", "no", "maybe", "TRUE", "1", "0", "%(x)s", "${x}", "\x00", "a" * 300]))


@st.composite
def manifest_texts(draw):
    """INI text shaped like a manifest, every key possibly missing, wrong or hostile."""
    lines = []
    for section, keys in (("s3pipe2", INVARIANT_KEYS), ("s3pipefs", OWN_KEYS)):
        if draw(st.booleans()) or section == "s3pipe2" and draw(st.integers(0, 9)):
            lines.append(f"[{section}]")
            for k in keys:
                if draw(st.integers(0, 4)) == 0:
                    continue  # missing key
                if k == "layout":
                    v = draw(hostile_layouts)
                elif k in ("num_segments", "total_size", "segment_size", "format", "segment_size_bytes",
                           "heartbeat", "block_size"):
                    v = draw(hostile_numbers)
                else:
                    v = draw(hostile_values)
                v = v.replace("\n", " ").replace("\r", " ")
                lines.append(f"{k} = {v}")
    if draw(st.booleans()):
        lines.append(draw(st.sampled_from(["[s3pipe2]", "completed = true", "[DEFAULT]", "junk", "=", "[",
                                           "num_segments = 1"])))
    return "\n".join(lines) + "\n"


def check_invariants(m: mf.Manifest) -> None:
    """What every caller may rely on once parse() has accepted a manifest."""
    assert 0 <= m.num_segments <= mf.MAX_SEGMENTS
    assert 0 <= m.total_size <= mf.MAX_TOTAL_SIZE
    assert 0 <= m.segment_size <= mf.MAX_SEGMENT_SIZE
    assert m.format <= mf.NEWEST_FORMAT
    if m.layout is not None:
        assert m.layout.count == m.num_segments and m.layout.total == m.total_size
        assert all(c >= 1 and 0 <= s <= mf.MAX_SEGMENT_SIZE for c, s in m.layout.runs)
    assert m.sha256 == "" or (len(m.sha256) == 64 and set(m.sha256) <= set(string.hexdigits.lower()))
    assert m.chain == "" or (len(m.chain) == 32 and set(m.chain) <= set(string.hexdigits.lower()))
    assert math.isfinite(m.heartbeat) and 0 <= m.heartbeat < 1e11
    assert len(m.writer_id) <= 200 and len(m.upload_began) <= 64


@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(manifest_texts())
def test_parser_accepts_only_consistent_manifests(text):
    try:
        m = mf.parse(text.encode(), where="s3://b/s/.manifest")
    except errors.ManifestError as e:
        assert "s3://b/s/.manifest" in str(e) and "\n" not in str(e)
        return
    check_invariants(m)
    # What we accept we can write back, and read again to the same meaning.
    again = mf.parse(mf.render(m))
    assert (again.completed, again.num_segments, again.total_size, again.layout) == \
        (m.completed, m.num_segments, m.total_size, m.layout)


@settings(max_examples=300, deadline=2000)
@given(st.binary(max_size=2000))
def test_parser_survives_arbitrary_bytes(data):
    try:
        check_invariants(mf.parse(data))
    except errors.ManifestError:
        pass


@settings(max_examples=200, deadline=2000)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_layout_parser_never_crashes(text):
    try:
        lay = mf.Layout.parse(text)
    except errors.ManifestError:
        return
    assert all(c >= 1 and 0 <= s <= mf.MAX_SEGMENT_SIZE for c, s in lay.runs)


# ---- the mount-option parser, property-based ------------------------------------------------------

def _options():
    from s3pipefs.fs import options
    return options


option_names = st.sampled_from(sorted({o.name for o in _options().OPTIONS}) + ["nosuchopt", "x-systemd.foo",
                                                                                 "_netdev", "ro", "rw"])
option_values = st.one_of(hostile_values, st.sampled_from(["1", "0", "-1", "8M", "1G", "99999999999999T",
                                                           "30s", "2m", "-5s", "0700", "0999", "root",
                                                           "nobody", "no-such-user-xyz", "http://h:1",
                                                           "ftp://x", "/tmp/x", ""]))


@st.composite
def option_strings(draw):
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(option_names)
        parts.append(name if draw(st.booleans()) else f"{name}={draw(option_values).replace(',', ';')}")
    return ",".join(parts)


@settings(max_examples=400, deadline=2000)
@given(st.lists(st.one_of(option_strings(), st.text(max_size=80)), max_size=3), st.booleans())
def test_mount_option_parser_gives_usage_errors_only(texts, sloppy):
    opts = _options()
    try:
        parsed, warnings = opts.parse_options(texts, sloppy=sloppy)
    except errors.UsageError as e:
        assert str(e) and "\n" not in str(e).strip()
        return
    # Accepted: the configs are valid and render back to options that parse to the same.
    parsed.transfer.validate()
    again, _ = opts.parse_options([opts.render(parsed)])
    assert again == parsed


def test_a_huge_duration_option_renders_back_to_an_option_that_parses():
    """Shrunk by hypothesis from the property above: 1e19 s parses, renders as '1e+19',
    and '1e+19' is not a duration. fs/options.py should bound durations, or render floats
    without an exponent."""
    opts = _options()
    parsed, _ = opts.parse_options(["follow_timeout=9999999999999999999"])
    assert opts.parse_options([opts.render(parsed)])[0] == parsed


@settings(max_examples=200, deadline=2000)
@given(st.text(max_size=120))
def test_mount_source_parser_gives_usage_errors_only(text):
    opts = _options()
    try:
        bucket, prefix = opts.parse_source(text)
    except errors.UsageError:
        return
    assert bucket and "/" not in bucket and ".." not in prefix.split("/")


# ---- hostile manifests end to end --------------------------------------------------------------------

def ini(s3pipe2: dict, own: dict | None = None) -> bytes:
    out = "[s3pipe2]\n" + "".join(f"{k} = {v}\n" for k, v in s3pipe2.items())
    if own is not None:
        out += "[s3pipefs]\n" + "".join(f"{k} = {v}\n" for k, v in own.items())
    return out.encode()


DONE = {"version": "0.1", "completed": "true"}
HOSTILE = {
    "huge-number": (ini({**DONE, "num_segments": "1" + "0" * 40, "total_size": "5"}), "num_segments"),
    "just-too-big": (ini({**DONE, "num_segments": str(10**15), "total_size": "5"}), "out of range"),
    "negative-size": (ini({**DONE, "num_segments": "1", "total_size": "-5"}), "out of range"),
    "negative-layout": (ini({**DONE, "num_segments": "1", "total_size": "5"},
                            {"format": "1", "segment_size_bytes": "5", "layout": "1x-5"}), "bad layout run"),
    "missing-completed": (ini({"num_segments": "1", "total_size": "5"}), "missing key 'completed'"),
    "missing-total": (ini({**DONE, "num_segments": "1"}), "missing key 'total_size'"),
    "missing-section": (b"[other]\ncompleted = true\n", "no [s3pipe2] section"),
    "wrong-type-bool": (ini({"completed": "2", "num_segments": "1", "total_size": "5"}), "not a boolean"),
    "wrong-type-int": (ini({**DONE, "num_segments": "1.5", "total_size": "5"}), "not an integer"),
    "wrong-type-heartbeat": (ini({"completed": "false"}, {"format": "1", "segment_size_bytes": "1",
                                                           "heartbeat": "nan"}), "heartbeat"),
    "future-format": (ini({"completed": "false"}, {"format": "2", "segment_size_bytes": "1"}), "newer s3pipefs"),
    "format-zero": (ini({"completed": "false"}, {"format": "0", "segment_size_bytes": "1"}), "out of range"),
    "layout-lies": (ini({**DONE, "num_segments": "2", "total_size": "10"},
                        {"format": "1", "segment_size_bytes": "8", "layout": "1x8,1x3"}), "adds up to 11"),
    "layout-path": (ini({**DONE, "num_segments": "1", "total_size": "5"},
                        {"format": "1", "segment_size_bytes": "5", "layout": "1x5,../../secret"}), "bad layout run"),
    "duplicate-key": (b"[s3pipe2]\ncompleted = true\ncompleted = false\n", "malformed INI"),
    "binary": (b"\x00\xff\xfe[s3pipe2]\n", "not UTF-8"),
    "not-ini": (b"<html>500 Internal Server Error</html>", "malformed INI"),
    "too-large": (b"[s3pipe2]\ncompleted = false\n#" + b"x" * (1 << 20), "too large"),
    "bad-digest": (ini({**DONE, "num_segments": "1", "total_size": "5"},
                       {"format": "1", "segment_size_bytes": "5", "layout": "1x5", "sha256": "../../x"}),
                   "not a SHA-256"),
}


HOSTILE_COMMANDS = (("cat",), ("info",), ("verify",), ("put", "--append"))


@pytest.fixture(scope="module")
def hostile(s3_server, tmp_path_factory):
    """One bucket holding every hostile stream (h/NAME/) beside a secret object; every
    command of HOSTILE_COMMANDS run on each through a recording proxy, in one batch."""
    import uuid

    from s3pipefs.config import S3Config
    from s3pipefs.s3 import Store
    from tests.faultfixtures import fault_proxy_for, proxied_env_for

    store = Store(S3Config(endpoint_url=s3_server.endpoint))
    bucket = "rel-hostile-" + uuid.uuid4().hex[:8]
    store.create_bucket(bucket)
    store.put(bucket, "secret", b"TOP-SECRET-BYTES")
    for name, (body, _) in HOSTILE.items():
        store.put(bucket, f"h/{name}/.manifest", body)
        store.put(bucket, f"h/{name}/{seg_key(1)}", b"12345")
    jobs = [((*cmd, f"s3://{bucket}/h/{name}"), b"appended") for name in HOSTILE for cmd in HOSTILE_COMMANDS]
    with fault_proxy_for(s3_server) as proxy:
        env = {**environ_without_aws(), **proxied_env_for(s3_server, proxy)}
        results = run_batch(env, jobs, tmp_path_factory.mktemp("hostile"))
        requests = list(proxy.requests)
    by_cell = {(job[0][-1].rsplit("/", 1)[1], job[0][:-1]): r for job, r in zip(jobs, results)}
    return bucket, by_cell, requests, store


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_manifest_gives_a_clear_error(name, hostile):
    bucket, results, requests, store = hostile
    _, needle = HOSTILE[name]
    where = f"s3://{bucket}/h/{name}/.manifest"
    for cmd in HOSTILE_COMMANDS:
        r = results[(name, cmd)]
        assert r.returncode == 1, (cmd, r)
        line = r.last_line()
        assert needle in line and where in line, (cmd, line)
        assert r.elapsed < 15
        assert b"TOP-SECRET" not in r.stdout
    # Nothing was written or deleted: a manifest we cannot read is not ours to change.
    assert store.head(bucket, f"h/{name}/.manifest") is not None
    assert [o.key for o in store.list(bucket, f"h/{name}/")] == [f"h/{name}/.manifest", f"h/{name}/{seg_key(1)}"]


def test_hostile_manifests_read_nothing_outside_their_stream(hostile):
    bucket, _, requests, _ = hostile
    assert requests
    for seen in requests:
        assert seen.method in ("GET", "HEAD"), (seen.method, seen.path)
        if seen.path.rstrip("/") == f"/{bucket}":
            continue  # bucket checks and listings (their prefix is in the query)
        assert seen.path.startswith(f"/{bucket}/h/"), seen.path
        name = seen.path[len(f"/{bucket}/h/"):].split("/", 1)[0]
        assert name in HOSTILE, seen.path


def test_listing_survives_a_hostile_stream_among_good_ones(hostile, s3_env):
    """`ls` of a prefix with hostile streams in it: one bad manifest must not hide a
    directory's other entries."""
    bucket = hostile[0]
    r = run(s3_env, "ls", f"s3://{bucket}/h/", timeout=30)
    assert "Traceback" not in r.err
    if r.returncode == 0:
        assert r.stdout.count(b"\n") == len(HOSTILE)
    else:
        # Refusing the whole listing must at least name the manifest at fault.
        assert r.returncode == 1 and ".manifest" in r.last_line()


def _limit_memory():
    # A hostile manifest must not cost memory: 1 GiB of address space is plenty for the CLI.
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.parametrize("layout,num,total", [
    ("999999999999999x0", 999999999999999, 0),          # a quadrillion empty segments
    ("1000000000000x1", 1000000000000, 1000000000000),  # a trillion one-byte segments
])
def test_manifest_naming_a_huge_number_of_segments_costs_no_memory(layout, num, total, store, bucket, s3_env):
    """Self-consistent but absurd: the layout adds up, so the parser accepts it. Reading it
    must fail (or work) promptly, in bounded memory, not build a list per segment."""
    body = ini({**DONE, "num_segments": str(num), "total_size": str(total)},
               {"format": "1", "segment_size_bytes": "1024", "layout": layout})
    store.put(bucket, "huge/.manifest", body)
    for cmd in (["cat", "--no-follow"], ["put", "--resume"]):
        t = time.monotonic()
        cp = subprocess.run([sys.executable, "-m", "s3pipefs", *cmd, f"s3://{bucket}/huge"], input=b"x",
                            env=s3_env, capture_output=True, timeout=60, preexec_fn=_limit_memory)
        err = cp.stderr.decode()
        assert "Traceback" not in err and "MemoryError" not in err, (cmd, err[-400:])
        assert cp.returncode == 1 and err.strip(), (cmd, err)
        assert time.monotonic() - t < 20


def test_stream_whose_segments_disagree_with_the_manifest_is_refused(s3_env, store, bucket):
    """The manifest says 2 x 10 bytes; the objects hold 11 and 9 (a hostile or broken
    writer). The reader never hands out bytes past a segment's verified end."""
    store.put(bucket, f"s/{seg_key(1)}", b"A" * 11, metadata={"crc32": "00000000"})
    store.put(bucket, f"s/{seg_key(2)}", b"B" * 9)
    store.put(bucket, "s/.manifest", ini({**DONE, "num_segments": "2", "total_size": "20"},
                                         {"format": "1", "segment_size_bytes": "10", "layout": "2x10"}))
    r = run(s3_env, "cat", "--tries", "1", f"s3://{bucket}/s", timeout=30)
    assert r.returncode == 1 and f"s3://{bucket}/s/{seg_key(1)}" in r.last_line(), r
    assert r.stdout == b""


def test_s3pipe2_stream_ignores_objects_that_are_not_its_segments(s3_env, store, bucket, fault_proxy,
                                                                    proxied_env):
    """s3pipe2 streams take segment sizes from a listing: names that merely look like
    segments, or try to climb out of the prefix, are not segments."""
    store.put(bucket, "secret", b"TOP-SECRET")
    store.put(bucket, f"s/{seg_key(1)}", b"hello ")
    store.put(bucket, f"s/{seg_key(2)}", b"world")
    # (SeaweedFS refuses keys with '..' components, so no decoy climbs out of the prefix.)
    for decoy in (f"{seg_key(3)} ", "0000000000000003", f"+{seg_key(3)[1:]}",
                  f"{seg_key(2)}.bak", "-00000000000003"):
        store.put(bucket, f"s/{decoy}", b"TOP-SECRET")
    store.put(bucket, "s/.manifest", ini({**DONE, "num_segments": "2", "total_size": "11"}))
    r = run(proxied_env, "cat", f"s3://{bucket}/s")
    assert r.returncode == 0, r
    assert r.stdout == b"hello world"
    gets = [s.path for s in fault_proxy.requests if s.method == "GET" and s.query.find("list-type") < 0]
    assert all(p.startswith(f"/{bucket}/s/") for p in gets), gets
    assert not any("secret" in p or p.endswith((".bak", " ")) for p in gets), gets


# ---- odd object names ------------------------------------------------------------------------------

ODD = ["with space/a b", "ünïcødé/日本語 ✓", "percent%41%2Fname", "q?x=1&y#frag", "-leading-dash",
       "tab\tand\nnewline", "x" * 1000]


ODD_IDS = ["space", "unicode", "percent", "query-chars", "dash", "control", "long-1000"]
ODD_DATA = blob(3000, 7)


@pytest.fixture(scope="module")
def odd_names(s3_server, tmp_path_factory):
    """put, cat and ls of every odd name, each in a bucket of its own, in one batch."""
    import os
    import uuid

    from s3pipefs.config import S3Config
    from s3pipefs.s3 import Store

    store = Store(S3Config(endpoint_url=s3_server.endpoint))
    buckets = {}
    jobs = []
    for name in ODD:
        b = buckets[name] = "rel-odd-" + uuid.uuid4().hex[:8]
        store.create_bucket(b)
        url = f"s3://{b}/{name}"
        jobs += [(("put", "--segment-size", "1K", url), ODD_DATA), (("cat", url), b""), (("ls", "--json", url), b"")]
    env = {**environ_without_aws(), **s3_server.env()}
    res = run_batch(env, jobs, tmp_path_factory.mktemp("odd"))
    return store, buckets, {name: res[3 * i:3 * i + 3] for i, name in enumerate(ODD)}


@pytest.mark.parametrize("name", ODD, ids=ODD_IDS)
def test_odd_names_round_trip(name, odd_names):
    store, buckets, results = odd_names
    put, cat, ls = results[name]
    assert put.returncode == 0, put
    assert cat.returncode == 0 and cat.stdout == ODD_DATA, cat
    keys = {o.key for o in store.list(buckets[name], "")}
    assert keys == {f"{name}/.manifest"} | {f"{name}/{seg_key(i)}" for i in (1, 2, 3)}
    assert [e["key"] for e in json.loads(ls.stdout)] == [name]


@pytest.mark.parametrize("name", ["dots/../up", "a/./b", "../escape"])
def test_dot_components_never_write_elsewhere(name, s3_env, store, bucket):
    """'.' and '..' are literal on AWS; SeaweedFS refuses them. Either way: the data goes
    under exactly that name or nowhere, with a clear line, never to a normalised path."""
    url = f"s3://{bucket}/{name}"
    r = run(s3_env, "put", url, input=b"data")
    keys = {o.key for o in store.list(bucket, "")}
    if r.returncode == 0:
        assert keys == {f"{name}/.manifest", f"{name}/{seg_key(1)}"}
        assert run(s3_env, "cat", url).stdout == b"data"
    else:
        assert r.returncode == 1 and name in r.last_line()
        assert keys == set()


@pytest.mark.parametrize("length", [1010, 1100])
def test_names_too_long_for_s3_fail_clearly_without_debris(length, s3_env, store, bucket):
    """A stream's keys are its name plus '/000000000000001' (16 bytes): S3 allows 1024."""
    name = "n" * length
    r = run(s3_env, "put", f"s3://{bucket}/{name}", input=b"data")
    assert r.returncode in (1, 2), r
    line = r.last_line()
    assert "too long" in line.lower()
    assert not list(store.list(bucket, "")), "a stream that can never be written left objects behind"


# ---- a bucket the credentials cannot read ------------------------------------------------------------

class TwoUserServer(LocalServer):
    """A SeaweedFS whose second identity may only touch bucket 'theirs'."""

    LIMITED = ("RELLIMITEDKEY0000001", "rel-limited-secret-do-not-print-7c1e")

    def _prepare_files(self) -> None:
        super()._prepare_files()
        cfg = json.loads((self.data_dir / "s3.json").read_text())
        ak, sk = self.LIMITED
        cfg["identities"].append({"name": "limited", "credentials": [{"accessKey": ak, "secretKey": sk}],
                                  "actions": ["Read:theirs", "List:theirs", "Write:theirs"]})
        (self.data_dir / "s3.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def two_users(tmp_path_factory):
    import os

    srv = TwoUserServer(str(tmp_path_factory.mktemp("two-users")), access_key=os.environ["AWS_ACCESS_KEY_ID"],
                        secret_key=os.environ["AWS_SECRET_ACCESS_KEY"]).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(srv.env())
    assert run(env, "put", "s3://theirs/x", input=b"no").returncode == 1  # bucket missing: sanity
    from s3pipefs.config import S3Config
    from s3pipefs.s3 import Store
    admin = Store(S3Config(endpoint_url=srv.endpoint))
    admin.create_bucket("private")
    admin.create_bucket("theirs")
    assert run(env, "put", "s3://private/stream", input=b"private data").returncode == 0
    limited = {**env, "AWS_ACCESS_KEY_ID": TwoUserServer.LIMITED[0],
               "AWS_SECRET_ACCESS_KEY": TwoUserServer.LIMITED[1]}
    yield limited
    srv.kill()


DENIED_COMMANDS = [("cat",), ("put",), ("info",), ("ls",), ("verify",), ("rm",), ("put", "--append"),
                   ("put", "--resume")]


@pytest.fixture(scope="module")
def denied(two_users, tmp_path_factory):
    jobs = [((*cmd, "s3://private/stream"), b"attempt") for cmd in DENIED_COMMANDS]
    return dict(zip(DENIED_COMMANDS, run_batch(two_users, jobs, tmp_path_factory.mktemp("denied"))))


@pytest.mark.parametrize("cmd", DENIED_COMMANDS, ids=" ".join)
def test_bucket_the_credentials_cannot_read_gives_access_denied(cmd, denied):
    r = denied[cmd]
    assert r.returncode == 1, r
    line = r.last_line()
    assert "access denied" in line and "s3://private" in line, line
    assert r.elapsed < 30
    assert TwoUserServer.LIMITED[1] not in r.err and b"private data" not in r.stdout


def test_limited_user_still_works_in_its_own_bucket(two_users):
    """The denial above is about the bucket, not broken credentials."""
    assert run(two_users, "put", "s3://theirs/mine", input=b"ok").returncode == 0
    assert run(two_users, "cat", "s3://theirs/mine").stdout == b"ok"
