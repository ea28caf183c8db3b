"""Packaging: the manual pages, the mount helper installer, and the fstab and systemd examples.

The pages are hand-written man(7) source (packaging/man/). They are checked against the
code, not against a list kept here: the options of every command are read from what
``s3pipefs COMMAND --help`` prints (the argparse parser of s3pipefs.cli, so hidden options
stay out), and the mount options from the ``OPTIONS`` table. A new option fails these tests
until it is documented.

The installer is run the way an administrator runs it, twice, into a temporary prefix
(``--sbin`` and ``--mandir``), with PATH deciding which ``mount.s3pipefs`` it finds.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from s3pipefs import cli
from s3pipefs.fs import mount_helper, options

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
INSTALLER = PACKAGING / "install-mount-helper.sh"
CLI_PAGE = PACKAGING / "man" / "s3pipefs.1"
MOUNT_PAGE = PACKAGING / "man" / "mount.s3pipefs.8"
UNITS = ("mnt-s3.mount", "mnt-s3.automount")
# The venv's console script: what `pip install s3pipefs` puts on PATH.
CONSOLE_SCRIPT = Path(sys.executable).with_name("mount.s3pipefs")
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


# -- reading man(7) source and argparse help ---------------------------------------------------

def roff_text(src: str) -> str:
    """The words of roff source as a reader sees them: font escapes gone, \\- a dash."""
    src = re.sub(r"\\f(\[[^\]]*\]|\(..|.)", "", src)
    return src.replace("\\-", "-").replace("\\&", "").replace("\\(em", "--").replace("\\(mu", "x")


def sections(src: str, *, sub: bool) -> dict[str, str]:
    """Heading -> body of each .SH section of a page, or with ``sub`` of each .SH and .SS."""
    heading = r"^\.S[HS] .*$" if sub else r"^\.SH .*$"
    parts = re.split(f"({heading})", src, flags=re.M)
    return {roff_text(h.split(" ", 1)[1]).strip('"'): body for h, body in zip(parts[1::2], parts[2::2])}


def mentions(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def help_text(parser_for, argv: list[str]) -> str:
    """What `PROG ARGV --help` prints, from the parser itself (no subprocess)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parser_for(argv + ["--help"]).parse_args(argv + ["--help"])
    return out.getvalue()


def listed_options(help_output: str) -> set[str]:
    """Every option string of the options lines of argparse help: '  --workers N, -n N  ...'."""
    found = set()
    for line in help_output.splitlines():
        m = re.match(r"^  (-\S.*)$", line)
        if m:
            invocation = re.split(r"\s{2,}", m.group(1))[0]
            found.update(re.findall(r"(?:^|, )(--?[A-Za-z0-9][\w-]*)", invocation))
    return found


def cli_commands() -> dict[str, str | None]:
    """Command -> its alias (or None), as `s3pipefs --help` lists them."""
    top = help_text(cli.build_parser, [])
    return {m.group(1): m.group(2) for m in re.finditer(r"^    ([a-z][\w-]*)(?: \((\w+)\))?(?:\s|$)", top, re.M)}


# -- the pages render --------------------------------------------------------------------------

@pytest.mark.parametrize("page", [CLI_PAGE, MOUNT_PAGE], ids=lambda p: p.name)
def test_man_renders_the_page_without_a_warning(page):
    if shutil.which("man") is None:
        pytest.fail("man is missing: install man-db and groff-base (make deps)")
    r = subprocess.run(["man", "--warnings=w", "-l", str(page)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": "", "MANPAGER": "cat",
                            "PAGER": "cat"})
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", f"groff warnings for {page.name}:\n{r.stderr}"
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "ENVIRONMENT", "EXIT STATUS", "FILES", "EXAMPLES",
                    "SEE ALSO"):
        assert re.search(rf"^{heading}$", r.stdout, re.M), f"{page.name} has no {heading} section"


# -- s3pipefs(1) documents every command and option ----------------------------------------------

def test_the_cli_page_documents_every_option_of_every_command():
    src = CLI_PAGE.read_text()
    by_heading = sections(src, sub=True)
    common_text = roff_text(sections(src, sub=False)["COMMON OPTIONS"])
    command_sections = {title.split()[1]: (title, roff_text(body))
                        for title, body in by_heading.items() if title.startswith("s3pipefs ")}
    common = listed_options(help_text(cli.build_parser, []))
    assert {"--endpoint-url", "--workers", "-n", "--version"} <= common  # the help parsing works
    missing = sorted(o for o in common if not mentions(common_text, o))
    assert not missing, f"common options missing from COMMON OPTIONS in s3pipefs.1: {missing}"

    commands = cli_commands()
    assert {"put", "cat", "ls", "cp", "sync", "mount", "serve"} <= set(commands)
    for name, alias in commands.items():
        assert name in command_sections, f"s3pipefs.1 has no section `.SS \"s3pipefs {name} ...\"`"
        title, text = command_sections[name]
        if alias:
            assert f"alias: {alias}" in title, f"the {name} section does not name its alias {alias}"
        own = listed_options(help_text(cli.build_parser, [name])) - common
        assert own or name == "completion", f"no options parsed from `s3pipefs {name} --help`"
        missing = sorted(o for o in own if not mentions(text, o))
        assert not missing, f"options of `s3pipefs {name}` missing from its section in s3pipefs.1: {missing}"


def test_hidden_options_stay_out_of_the_option_lists():
    # -a/-s (s3pipe2's keys on the command line) are accepted but hidden from --help; the
    # page names them only in its compatibility section.
    put = listed_options(help_text(cli.build_parser, ["put"]))
    assert "-a" not in put and "-s" not in put and "--resume" in put


# -- mount.s3pipefs(8) documents every mount option with its default ------------------------------

def option_entries(src: str) -> dict[str, str]:
    """Mount option name -> the text of its .TP entry in the MOUNT OPTIONS section."""
    body = sections(src, sub=False)["MOUNT OPTIONS"]
    entries = {}
    for block in re.split(r"^\.TP\n", body, flags=re.M)[1:]:
        block = re.split(r"^\.S[HS] ", block, flags=re.M)[0]
        m = re.match(r"\.B[IR]?\s+([a-z_]+)", block)
        assert m, f"a .TP entry that names no option: {block[:60]!r}"
        entries[m.group(1)] = roff_text(block)
    return entries


def test_the_mount_page_lists_every_mount_option_with_its_default():
    src = MOUNT_PAGE.read_text()
    entries = option_entries(src)
    names = {o.name for o in options.OPTIONS}
    assert names - set(entries) == set(), "mount options missing from mount.s3pipefs.8"
    assert set(entries) - names == set(), "mount.s3pipefs.8 lists options that do not exist"
    for opt in options.OPTIONS:
        text = " ".join(entries[opt.name].split())
        assert "Default: " in text, f"{opt.name}: no default stated"
        default = options.default_of(opt)
        if default is not None:
            assert f"Default: {default}" in text, f"{opt.name}: the page does not say its default is {default}"
    page = roff_text(src)
    for name in sorted(options.KERNEL_FLAGS | options.PASSED_BY_MOUNT):
        assert mentions(page, name), f"mount.s3pipefs.8 does not mention the accepted option {name}"


def test_the_mount_page_documents_the_helper_arguments():
    text = roff_text(sections(MOUNT_PAGE.read_text(), sub=False)["OPTIONS"])
    listed = listed_options(help_text(lambda argv: mount_helper.build_parser(), []))
    assert {"-o", "-s", "-f", "-n", "-v"} <= listed
    missing = sorted(o for o in listed if not mentions(text, o))
    assert not missing, f"mount.s3pipefs arguments missing from OPTIONS in mount.s3pipefs.8: {missing}"


# -- the installer ------------------------------------------------------------------------------------

def install(*args: str, path: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["sh", str(INSTALLER), *args], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PATH": path})
    if check:
        assert r.returncode == 0, f"install-mount-helper.sh {' '.join(args)} failed: {r.stderr}"
    return r


@pytest.fixture
def prefix(tmp_path):
    if not CONSOLE_SCRIPT.exists():
        pytest.fail(f"{CONSOLE_SCRIPT} is missing: install s3pipefs into the venv (pip install -e .)")
    return tmp_path


def places(root: Path) -> list[str]:
    return ["--sbin", str(root / "sbin"), "--mandir", str(root / "man")]


def assert_working_helper(helper: Path) -> None:
    assert f'exec "{CONSOLE_SCRIPT}" "$@"' in helper.read_text(), helper.read_text()
    r = subprocess.run([str(helper), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: mount.s3pipefs"), r.stdout


def test_the_installer_run_twice_leaves_a_working_helper(prefix):
    install(*places(prefix), path=f"{CONSOLE_SCRIPT.parent}:{SYSTEM_PATH}")
    # Again, with only its own helper on PATH (as after `sudo -i`, where /sbin comes first
    # and the virtualenv is not on PATH): the helper must still run the console script.
    install(*places(prefix), path=f"{prefix / 'sbin'}:{SYSTEM_PATH}")
    for name in ("mount.s3pipefs", "mount.fuse.s3pipefs"):
        assert_working_helper(prefix / "sbin" / name)
    # Named explicitly, the installed helper also counts as the console script it runs.
    install(*places(prefix), "--helper", str(prefix / "sbin" / "mount.s3pipefs"), path=SYSTEM_PATH)
    assert_working_helper(prefix / "sbin" / "mount.s3pipefs")


def test_a_helper_that_execs_itself_is_passed_over(prefix):
    sbin = prefix / "sbin"
    sbin.mkdir()
    looping = sbin / "mount.s3pipefs"
    looping.write_text(f'#!/bin/sh\n# installed by s3pipefs packaging/install-mount-helper.sh\nexec "{looping}" "$@"\n')
    looping.chmod(0o755)
    # Nothing else on PATH: a clear error, and the broken helper is not rewritten as itself.
    r = install(*places(prefix), path=f"{sbin}:{SYSTEM_PATH}", check=False)
    assert r.returncode == 1 and "no mount.s3pipefs console script found" in r.stderr, r.stderr
    # The console script further down PATH: the helper is repaired.
    install(*places(prefix), path=f"{sbin}:{CONSOLE_SCRIPT.parent}:{SYSTEM_PATH}")
    assert_working_helper(looping)


def test_the_installer_installs_the_man_pages_and_uninstalls_only_its_own(prefix):
    install(*places(prefix), path=f"{CONSOLE_SCRIPT.parent}:{SYSTEM_PATH}")
    for section, name in (("1", "s3pipefs"), ("8", "mount.s3pipefs")):
        r = subprocess.run(["man", "-M", str(prefix / "man"), "-w", section, name], capture_output=True,
                           text=True, timeout=30)
        assert r.stdout.strip() == str(prefix / "man" / f"man{section}" / f"{name}.{section}"), r.stderr
    installed = (prefix / "man" / "man8" / "mount.s3pipefs.8").read_text()
    assert installed.startswith(MOUNT_PAGE.read_text())
    foreign = prefix / "sbin" / "mount.other"
    foreign.write_text("#!/bin/sh\n")
    install(*places(prefix), "--uninstall", path=SYSTEM_PATH)
    left = sorted(str(p.relative_to(prefix)) for p in prefix.rglob("*") if p.is_file())
    assert left == ["sbin/mount.other"]


def test_the_installer_leaves_a_foreign_helper_alone(prefix):
    sbin = prefix / "sbin"
    sbin.mkdir()
    (sbin / "mount.s3pipefs").write_text("#!/bin/sh\necho someone else's\n")
    r = install(*places(prefix), path=f"{CONSOLE_SCRIPT.parent}:{SYSTEM_PATH}", check=False)
    assert r.returncode == 1 and "was not installed by this script" in r.stderr
    assert (sbin / "mount.s3pipefs").read_text() == "#!/bin/sh\necho someone else's\n"


# -- systemd units and fstab examples --------------------------------------------------------------

def test_systemd_accepts_the_example_units(prefix):
    """`systemd-analyze verify` prints a line for every unknown or misplaced setting (and
    still exits 0), and checks that each man: Documentation= page exists: with MANPATH
    set to what the installer installed, the units must name pages it installs."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: install systemd (make deps) to check the example units")
    install(*places(prefix), path=f"{CONSOLE_SCRIPT.parent}:{SYSTEM_PATH}")
    r = subprocess.run([analyze, "verify", *UNITS], cwd=PACKAGING, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "MANPATH": str(prefix / "man"), "SYSTEMD_LOG_COLOR": "0"})
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr
    for unit in UNITS:
        assert "Documentation=man:mount.s3pipefs(8)" in (PACKAGING / unit).read_text().splitlines(), unit
    mount_unit = (PACKAGING / "mnt-s3.mount").read_text()
    assert re.search(r"^TimeoutSec=", mount_unit, re.M), "the mount unit must bound its stop (TimeoutSec=)"


def option_lists_with_allow_other(text: str) -> list[str]:
    """Comma-separated mount option lists (fstab fields, Options=, -o) that hold allow_other."""
    lists = re.findall(r"[\w=.:/,\"-]*allow_other[\w=.:/,\"-]*", text)
    return [s.removeprefix("Options=") for s in lists if "," in s]


@pytest.mark.parametrize("path", ["packaging/fstab.example", "packaging/mnt-s3.mount",
                                  "packaging/man/mount.s3pipefs.8", "docs/mount.md", "README.md"])
def test_examples_with_allow_other_set_a_tight_umask(path):
    """allow_other opens the mount to every local user, with the mount's credentials: each
    example gives other users nothing, except read-only mounts, which may be read by all."""
    found = option_lists_with_allow_other((REPO / path).read_text())
    for opts in found:
        parsed, _ = options.parse_options([opts.strip('"')], sloppy=True)
        umask_given = re.search(r"(?:^|,)umask=", opts) is not None
        assert umask_given, f"{path}: allow_other without umask= in {opts}"
        needed = 0o002 if parsed.fs.read_only else 0o007
        assert parsed.fs.umask & needed == needed, f"{path}: umask {parsed.fs.umask:03o} too loose in {opts}"
