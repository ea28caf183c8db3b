"""The one option table: the same knob through a CLI flag and through -o, and the shape of
every command module. Pure (no S3): parsers and config objects, plus a few `--help` and
usage-error runs of the real program."""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import subprocess
import sys

import pytest

from s3pipefs import cli, options
from s3pipefs.commands import common
from s3pipefs.commands import mount as mount_cmd
from s3pipefs.config import MiB, S3Config, TransferConfig
from s3pipefs.fs.mount import connection_pool_size
from s3pipefs.fs.options import OPTIONS, MountOptions, parse_options

# A valid value for every option both spellings take, different from its default, so an
# option that is parsed but dropped on the way to its config field fails below.
SAMPLES = {
    "endpoint": "http://127.0.0.1:9",
    "profile": "backup",
    "region": "eu-west-1",
    "retries": "3",
    "bwlimit": "10M",
    "addressing": "virtual",
    "segment_size": "8M",
    "workers": "3",
    "staging": "/var/tmp/s3pipefs-test",
    "cache_size": "16M",
    "read_ahead": "64M",
    "prefetch": "2",
    "max_inflight": "12",
    "tries": "7",
    "follow_timeout": "2m",
    "poll_interval": "250ms",
    "poll_max": "2s",
    "stale_after": "30s",
    "heartbeat": "2s",
    "flush_interval": "3s",
}
SHARED = [o for o in options.CLI_OPTIONS if o.mount]


def parse_cli(*argv: str) -> argparse.Namespace:
    return cli.build_parser(list(argv)).parse_args(list(argv))


def cli_config(args: argparse.Namespace, target: str):
    return common.s3_config(args) if target == "s3" else common.transfer_config(args)


def mount_config(opts: MountOptions, target: str):
    return getattr(opts, target)


def run(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="500")  # help lines unwrapped (argparse breaks at hyphens)
    return subprocess.run([sys.executable, "-m", "s3pipefs", *argv], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=env, timeout=60)


def flat(text: str) -> str:
    return " ".join(text.split())  # argparse wraps help lines


def test_every_shared_option_has_a_sample_and_the_table_is_consistent():
    assert {o.name for o in SHARED} == set(SAMPLES)
    names = [o.name for o in options.CLI_OPTIONS]
    assert len(names) == len(set(names)), "two command-line entries share a destination"
    spellings = [f for o in options.CLI_OPTIONS for f in o.flags]
    assert len(spellings) == len(set(spellings))
    assert len({o.name for o in OPTIONS}) == len(OPTIONS), "two -o options share a name"
    assert all(o in OPTIONS for o in SHARED), "the mount's table must use the shared entries themselves"


@pytest.mark.parametrize("opt", SHARED, ids=lambda o: o.name)
def test_flag_and_mount_option_land_in_the_same_field_with_the_same_value(opt):
    text = SAMPLES[opt.name]
    default = getattr(S3Config() if opt.target == "s3" else TransferConfig(), opt.field)
    by_o, warnings = parse_options([f"{opt.name}={text}"])
    assert not warnings
    want = getattr(mount_config(by_o, opt.target), opt.field)
    assert want != default
    for flag in opt.flags:
        before = parse_cli(flag, text, "put", "s3://b/k")  # before the command, as s3pipe2 has it
        after = parse_cli("ls", flag, text, "s3://b/k")
        for args in (before, after):
            assert getattr(cli_config(args, opt.target), opt.field) == want, flag
    # `s3pipefs --flag VALUE mount ...` feeds the mount too, and -o overrides it.
    args = parse_cli(opt.flags[0], text, "mount", "bucket", "/mnt")
    assert getattr(mount_config(mount_cmd.mount_options(args), opt.target), opt.field) == want
    assert mount_cmd.mount_options(args) == by_o


def test_o_overrides_a_flag_given_before_mount():
    args = parse_cli("--workers", "3", "--addressing", "virtual", "mount", "b", "/mnt", "-o", "workers=5")
    opts = mount_cmd.mount_options(args)
    assert (opts.transfer.workers, opts.s3.path_style) == (5, False)


def test_addressing_and_retries_reach_the_s3_config():
    cfg = common.s3_config(parse_cli("cat", "--addressing", "virtual", "--retries", "3", "s3://b/k"))
    assert (cfg.path_style, cfg.max_attempts) == (False, 3)
    cfg = common.s3_config(parse_cli("cat", "--addressing", "path", "s3://b/k"))
    assert (cfg.path_style, cfg.max_attempts) == (True, S3Config().max_attempts)


def test_tries_bounds_every_request_unless_retries_is_given():
    cfg = common.s3_config(parse_cli("cat", "--tries", "3", "s3://b/k"))
    assert cfg.max_attempts == 3
    args = parse_cli("-t", "3", "cat", "--retries", "7", "s3://b/k")
    assert (common.s3_config(args).max_attempts, common.transfer_config(args).tries) == (7, 3)


def test_new_transfer_flags_reach_the_transfer_config():
    t = common.transfer_config(parse_cli("cat", "--cache-size", "4M", "--prefetch", "3", "--poll-interval", "100ms",
                                         "--stale-after", "2m", "--heartbeat", "1s", "s3://b/k"))
    assert (t.cache_size, t.prefetch, t.poll_interval, t.stale_after, t.heartbeat_interval) == \
        (4 * MiB, 3, 0.1, 120.0, 1.0)


def test_s3pipe2_spellings_keep_their_meaning():
    args = parse_cli("-m", "2", "-b", "64", "-n", "3", "-t", "2", "-p", "/var/tmp", "-r", "eu-west-1", "-v",
                     "to", "s3://b/k")
    t, s = common.transfer_config(args), common.s3_config(args)
    assert (t.segment_size, t.workers, t.tries, t.staging_dir, t.verbose) == (2_000_000, 3, 2, "/var/tmp", True)
    assert s.region == "eu-west-1" and args.buffer_kb == 64 and args.run is cli.command_module("put").run
    # -m wins over --segment-size wherever each is given, as it always did.
    args = parse_cli("-m", "1", "put", "--segment-size", "4M", "s3://b/k")
    assert common.transfer_config(args).segment_size == 1_000_000
    assert parse_cli("from", "s3://b/k").run is cli.command_module("cat").run


def test_nothing_given_is_the_config_defaults():
    args = parse_cli("cat", "s3://b/k")
    assert common.transfer_config(args) == TransferConfig()
    s = common.s3_config(args)
    assert (s.path_style, s.max_attempts, s.region, s.profile) == (True, 5, None, None)


@pytest.mark.parametrize("argv,message", [
    (["put", "--addressing", "dns", "s3://b/k"], "argument --addressing: must be 'path' or 'virtual', not 'dns'"),
    (["put", "--retries", "0", "s3://b/k"], "argument --retries: 0 is out of range 1..100"),
    (["cat", "--cache-size", "lots", "s3://b/k"], "argument --cache-size: not a size: 'lots'"),
    (["cat", "--prefetch", "many", "s3://b/k"], "argument --prefetch: not a whole number: 'many'"),
    (["cat", "--poll-interval", "soon", "s3://b/k"], "argument --poll-interval: not a duration: 'soon'"),
    (["--stale-after", "1y", "ls", "s3://b/k"], "argument --stale-after: not a duration: '1y'"),
    (["put", "--heartbeat", "", "s3://b/k"], "argument --heartbeat: not a duration: ''"),
    (["put", "--endpoint-url", "localhost:9000", "s3://b/k"], "argument --endpoint-url: not an http(s) URL"),
    (["-m", "0", "to", "s3://b/k"], "argument -m: 0 is out of range"),
    (["put", "--segment-size", "10", "s3://b/k"], "segment size 10 bytes is too small"),
])
def test_a_bad_value_is_one_clear_line_and_exit_2(argv, message):
    r = run(*argv)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("s3pipefs") and message in last


def test_main_help_lists_every_command_and_every_option():
    r = run("--help")
    assert r.returncode == 0, r.stderr
    text = flat(r.stdout)
    for name, aliases in cli.COMMANDS:
        assert f" {name} " in text and cli.command_module(name).HELP in text
    for opt in options.CLI_OPTIONS:
        for flag in opt.flags:
            shown = f"[{flag}" in text or f"{flag} " in text or f"{flag}," in text
            assert shown != opt.hidden, flag
    assert "(default 32M)" in text and "(default 0.5s)" in text  # --cache-size, --poll-interval


@pytest.mark.parametrize("name", [name for name, _ in cli.COMMANDS if name not in ("serve", "mount", "completion", "status")])
def test_each_s3_command_help_lists_the_table_with_its_defaults(name):
    r = run(name, "--help")
    assert r.returncode == 0, r.stderr
    text = flat(r.stdout)
    for opt in options.CLI_OPTIONS:
        if opt.hidden:
            assert f"[{opt.flags[0]}" not in text and f" {opt.flags[0]} " not in text
            continue
        assert opt.flags[0] in text, opt.flags[0]
        default = options.render_default(opt, getattr(S3Config() if opt.target == "s3" else TransferConfig(),
                                                      opt.field, None))
        if name == "sync" and opt.name == "workers":  # sync's own default, as it runs
            default = str(cli.command_module("sync").DEFAULT_WORKERS)
        if default:
            assert flat(opt.help) + f" (default {default})" in text, opt.name


def test_mount_help_lists_every_o_option():
    r = run("mount", "--help")
    assert r.returncode == 0, r.stderr
    for opt in OPTIONS:
        assert f"\n  {opt.name}" in r.stdout, opt.name


def test_every_command_module_has_the_same_shape():
    for name, _aliases in cli.COMMANDS:
        mod = cli.command_module(name)
        assert mod.__doc__ and mod.__doc__.strip(), name
        assert isinstance(mod.HELP, str) and mod.HELP and "\n" not in mod.HELP, name
        assert len(inspect.signature(mod.add_arguments).parameters) == 1, name
        assert len(inspect.signature(mod.run).parameters) == 1, name
        parser = argparse.ArgumentParser(prog=name)
        mod.add_arguments(parser)  # builds without the registry's help


def test_put_and_cat_start_without_fuse_sync_or_the_store():
    code = ("import sys; from s3pipefs import cli\n"
            "for argv in (['cat', 's3://b/k'], ['put', '--retries', '2', 's3://b/k'], ['from', 's3://b/k']):\n"
            "    cli.build_parser(argv).parse_args(argv)\n"
            "heavy = [m for m in sys.modules if m == 's3pipefs.s3' or m.startswith(('s3pipefs.fs', 's3pipefs.engine', 's3pipefs.s3.',"
            " 's3pipefs.server', 's3pipefs.commands.sync', 's3pipefs.commands.mount', 'mfusepy', 'botocore',"
            " 'boto3', 'tqdm'))]\n"
            "print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_the_mount_connection_pool_fits_its_writers_and_readers():
    default = MountOptions()
    # 16 shared upload threads, the read budget's 512M / 16M segments, 8 for metadata.
    assert connection_pool_size(default) == 16 + 32 + 8
    more_writers = dataclasses.replace(default, fs=dataclasses.replace(default.fs, upload_threads=40))
    assert connection_pool_size(more_writers) == 40 + 32 + 8
    one_reader = dataclasses.replace(default, fs=dataclasses.replace(default.fs, read_memory=16 * MiB),
                                     transfer=dataclasses.replace(default.transfer, prefetch=12))
    assert connection_pool_size(one_reader) == 16 + 12 + 8  # one reader's window
    tiny, _ = parse_options(["upload_threads=1,workers=1,prefetch=1,read_memory=16M"])
    assert connection_pool_size(tiny) == S3Config().max_pool_connections
    huge, _ = parse_options(["upload_threads=256,workers=64"])
    assert connection_pool_size(huge) == 256
