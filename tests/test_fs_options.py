"""Mount option and source parsing: pure functions, table-driven and property-tested."""
from __future__ import annotations

import dataclasses
import os
import re
import string
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from s3pipefs import options as table
from s3pipefs.config import MiB, parse_duration, parse_size
from s3pipefs.errors import UsageError
from s3pipefs.fs import options
from s3pipefs.fs.mount_helper import build_parser
from s3pipefs.fs.options import OPTIONS, MountOptions, parse_options, parse_source, render, split_options

DOCS = Path(__file__).resolve().parent.parent / "docs" / "mount.md"


def parse(*texts, **kw) -> MountOptions:
    opts, warnings = parse_options(texts, **kw)
    assert not warnings
    return opts


def test_every_option_lands_in_its_config_object():
    o = parse("ro,allow_other,uid=1000,gid=0,umask=027,endpoint=http://127.0.0.1:9000,profile=p,region=eu-west-1",
              "segment_size=8M,workers=3,staging=/var/tmp/s,cache_size=16M,read_ahead=64M,prefetch=2",
              "follow_timeout=2m,poll_interval=250ms,tries=3,stale_after=30s,heartbeat=2s,metadata_ttl=1s",
              "max_writers=2,direct_io,max_threads=20,shutdown_timeout=5,retries=3,addressing=virtual",
              "kernel_read_ahead=4M",
              "credentials=/etc/s3pipefs/creds,log=/var/log/x.log,debug,verbose,foreground,fsname=backups")
    assert o.fs.read_only and o.fs.allow_other and (o.fs.uid, o.fs.gid, o.fs.umask) == (1000, 0, 0o027)
    assert (o.fs.metadata_ttl, o.fs.max_writers, o.fs.direct_io, o.fs.max_threads) == (1.0, 2, True, 20)
    assert o.fs.shutdown_timeout == 5.0 and o.fs.kernel_read_ahead == 4 * MiB
    assert (o.s3.endpoint_url, o.s3.profile, o.s3.region, o.s3.max_attempts, o.s3.path_style) == \
        ("http://127.0.0.1:9000", "p", "eu-west-1", 3, False)
    t = o.transfer
    assert (t.segment_size, t.workers, t.staging_dir, t.cache_size, t.read_ahead, t.prefetch) == \
        (8 * MiB, 3, "/var/tmp/s", 16 * MiB, 64 * MiB, 2)
    assert (t.follow_timeout, t.poll_interval, t.tries, t.stale_after, t.heartbeat_interval) == (120.0, 0.25, 3, 30.0, 2.0)
    assert o.credentials == "/etc/s3pipefs/creds"
    assert (o.daemon.log, o.daemon.debug, o.daemon.verbose, o.daemon.foreground, o.daemon.fsname) == \
        ("/var/log/x.log", True, True, True, "backups")


def test_defaults_are_the_engine_defaults():
    o = parse()
    assert o == MountOptions() and not o.fs.read_only and o.fs.uid is None


def test_later_options_override_earlier_like_mount8():
    assert parse("ro,rw").fs.read_only is False
    assert parse("rw", "ro").fs.read_only is True
    assert parse("workers=2,workers=5").transfer.workers == 5


@pytest.mark.parametrize("opt", ["_netdev", "nofail", "auto", "noauto", "defaults", "user", "users", "nouser",
                                 "x-systemd.automount", "x-systemd.requires=network-online.target",
                                 "x-systemd.mount-timeout=30", "comment=systemd.automount", "user=alice",
                                 "relatime", "lazytime",
                                 "_rnetdev", "rw"])
def test_options_of_mount8_and_systemd_are_accepted(opt):
    o = parse(f"endpoint=http://h:1,{opt}")
    assert o.s3.endpoint_url == "http://h:1"
    if opt != "rw":
        assert opt in o.ignored


def test_kernel_flags_pass_through_and_dedupe():
    o = parse("noexec,nosuid,noexec")
    assert o.fs.kernel_flags == ("nosuid", "noexec")


@pytest.mark.parametrize("text,msg", [
    ("bogus", "unknown mount option 'bogus'"),
    ("bogus=1", "unknown mount option 'bogus=1'"),
    ("workers", "needs a value"),
    ("ro=1", "takes no value"),
    ("workers=zero", "not a whole number"),
    ("workers=0", "out of range"),
    ("umask=999", "not an octal mask"),
    ("segment_size=lots", "not a size"),
    ("segment_size=10", "too small"),
    ("follow_timeout=soon", "not a duration"),
    ("endpoint=localhost:9000", "not an http(s) URL"),
    ("addressing=dns", "'path' or 'virtual'"),
    ("uid=nosuchuser_s3pipefs", "no such user"),
    ("log=relative.log", "absolute file path"),
    ("allow_other,allow_root", "exclude each other"),
    ('endpoint="http://h:1', "unbalanced quote"),
])
def test_bad_options_are_one_clear_usage_error(text, msg):
    with pytest.raises(UsageError) as e:
        parse_options([text])
    assert msg in str(e.value)
    assert "\n" not in str(e.value)


def test_sloppy_turns_unknown_options_into_warnings():
    o, warnings = parse_options(["ro,frobnicate,x=1"], sloppy=True)
    assert o.fs.read_only
    assert warnings == ["ignoring unknown mount option 'frobnicate'", "ignoring unknown mount option 'x=1'"]


def test_quotes_protect_commas_as_in_fstab():
    assert split_options('a,b="c,d",e') == ["a", "b=c,d", "e"]
    assert parse('fsname="a,b"').daemon.fsname == "a,b"


def test_user_and_group_names_resolve():
    o = parse("uid=root,gid=root")
    assert (o.fs.uid, o.fs.gid) == (0, 0)


@pytest.mark.parametrize("src,want", [
    ("bucket", ("bucket", "")),
    ("bucket/", ("bucket", "")),
    ("bucket/a/b", ("bucket", "a/b/")),
    ("bucket//a//b/", ("bucket", "a/b/")),
    ("s3://bucket/x", ("bucket", "x/")),
    ("s3pipefs#bucket/x", ("bucket", "x/")),
    ("my.bucket-1", ("my.bucket-1", "")),
])
def test_sources(src, want):
    assert parse_source(src) == want


@pytest.mark.parametrize("src", ["", "/x", "b", "bu cket", "bucket/../x", "s3://"])
def test_bad_sources(src):
    with pytest.raises(UsageError):
        parse_source(src)


# -- properties -------------------------------------------------------------------------------

_text = st.text(alphabet=string.ascii_letters + string.digits + "._-/:,=", min_size=1, max_size=20)
_values = {
    options._octal: st.integers(0, 0o777),
    options._user: st.integers(0, 65534),
    options._group: st.integers(0, 65534),
    parse_duration: st.floats(0.001, 1e6, allow_nan=False).map(lambda f: round(f, 3)),
    table.nonempty: _text,
    table.http_url: st.from_regex(r"\Ahttps?://[a-z0-9.]{1,20}(:[0-9]{1,5})?\Z"),
    table.addressing: st.booleans(),
    options._log: st.sampled_from(["auto", "syslog", "stderr", "/var/log/s.log", "/tmp/a,b.log"]),
    options._small_files: st.sampled_from(["object", "stream"]),
}


def _value_for(opt):
    if opt.name == "segment_size":
        return st.integers(1024, 1 << 30)
    if opt.parse is parse_size:
        return st.integers(1, 1 << 40)
    if hasattr(opt.parse, "bounds"):
        return st.integers(*opt.parse.bounds)
    return _values[opt.parse]


@st.composite
def mount_options(draw):
    o = MountOptions()
    for opt in draw(st.lists(st.sampled_from(OPTIONS), max_size=12, unique_by=lambda o: o.name)):
        if opt.name == "allow_root" and o.fs.allow_other or opt.name == "allow_other" and o.fs.allow_root:
            continue
        value = opt.value if opt.is_flag else draw(_value_for(opt))
        if opt.target == "top":
            o = dataclasses.replace(o, **{opt.field: value})
        else:
            section = getattr(o, opt.target)
            o = dataclasses.replace(o, **{opt.target: dataclasses.replace(section, **{opt.field: value})})
    flags = draw(st.lists(st.sampled_from(sorted(options.KERNEL_FLAGS)), unique=True, max_size=3))
    ignored = draw(st.lists(st.sampled_from(["_netdev", "nofail", "x-systemd.automount", "noauto"]),
                            unique=True, max_size=3))
    return dataclasses.replace(o, fs=dataclasses.replace(o.fs, kernel_flags=tuple(flags)), ignored=tuple(ignored))


@settings(max_examples=300, deadline=None)
@given(mount_options())
def test_render_then_parse_is_the_identity(o):
    assert parse(render(o)) == o


@settings(max_examples=500, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=4), st.booleans())
def test_any_input_parses_or_is_a_usage_error(texts, sloppy):
    try:
        parse_options(texts, sloppy=sloppy)
    except UsageError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_source_parses_or_is_a_usage_error(text):
    try:
        bucket, prefix = parse_source(text)
    except UsageError:
        return
    assert bucket and "/" not in bucket
    assert prefix == "" or (prefix.endswith("/") and not prefix.startswith("/") and "//" not in prefix)


# -- the documentation and the helper -------------------------------------------------------------

def test_every_option_is_documented_in_docs_mount_md():
    text = DOCS.read_text()
    documented = set(re.findall(r"^### `([a-z_]+)", text, re.M))
    names = {o.name for o in OPTIONS}
    assert names - documented == set(), "options missing from docs/mount.md"
    assert documented - names - options.KERNEL_FLAGS == set(), "docs/mount.md documents options that do not exist"


def test_documented_defaults_are_the_real_defaults():
    """docs/mount.md says "Default `X`." per option; X must parse to the code's default."""
    text = DOCS.read_text()
    sections = dict(re.findall(r"^### `([a-z_]+)`\n(.*?)(?=^### |\Z)", text, re.M | re.S))
    checked = 0
    for opt in OPTIONS:
        m = re.search(r"Default `([^`$]+)`", sections.get(opt.name, ""))
        if opt.is_flag or m is None or options.default_of(opt) is None:
            continue
        assert opt.parse(m.group(1)) == opt.parse(options.default_of(opt)), opt.name
        checked += 1
    assert checked >= 15


def test_helper_takes_the_mount8_argument_convention():
    a = build_parser().parse_args(["bucket/p", "/mnt/s3", "-s", "-f", "-n", "-v", "-o", "ro,_netdev",
                                   "-o", "endpoint=http://h:1", "-t", "s3pipefs"])
    assert (a.source, a.mountpoint, a.sloppy, a.fake, a.no_mtab, a.verbose) == ("bucket/p", "/mnt/s3", True, True, True, True)
    assert a.options == ["ro,_netdev", "endpoint=http://h:1"]


def test_helper_fake_mount_checks_options_and_returns_0(tmp_path):
    from s3pipefs.fs.mount_helper import main

    assert main(["bucket", str(tmp_path), "-f", "-o", "_netdev,nofail,ro,endpoint=http://127.0.0.1:1"]) == 0
    assert main(["bucket", str(tmp_path), "-f", "-o", "nonsense"]) == 1
    assert main(["bucket", str(tmp_path / "missing"), "-f"]) == 1
    assert main(["bucket", str(tmp_path), "-f", "-s", "-o", "nonsense"]) == 0
    assert os.listdir(tmp_path) == []
