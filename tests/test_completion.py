"""`s3pipefs completion bash|zsh|fish`: each script is valid in its shell and completes
commands, aliases, options and option values as the parsers define them, and s3:// URLs
from a listing of the real server.

bash is driven through its completion function (as readline calls it: COMP_LINE and
COMP_POINT), fish through ``complete -C``, zsh with compadd/_describe/_files replaced by
functions that print what would be offered (compsys needs a terminal).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from s3pipefs import cli
from s3pipefs.config import TransferConfig
from s3pipefs.engine import Engine


def script(shell: str) -> str:
    r = subprocess.run([sys.executable, "-m", "s3pipefs", "completion", shell], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def shell_path(shell: str) -> str:
    path = shutil.which(shell)
    if path is None:
        pytest.fail(f"{shell} is missing: install it (make deps) to check its completion script")
    return path


@pytest.fixture
def on_path(tmp_path, s3_env):
    """An environment whose PATH has an `s3pipefs` running this tree (the scripts call it)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "s3pipefs"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m s3pipefs "$@"\n')
    exe.chmod(0o755)
    return {**s3_env, "PATH": f"{bindir}:{os.environ['PATH']}"}


# -- bash ------------------------------------------------------------------------------------------

BASH_DRIVER = r"""
source "$1"
complete -p s3pipefs
shift
for line in "$@"; do
    COMP_LINE=$line; COMP_POINT=${#line}
    read -r -a COMP_WORDS <<< "$line"; COMP_CWORD=${#COMP_WORDS[@]}
    _s3pipefs
    printf '%s\n' "${COMPREPLY[*]}"
done
"""


def bash_complete(tmp_path, *lines: str, env=None) -> list[str]:
    path = tmp_path / "s3pipefs.bash"
    path.write_text(script("bash"))
    r = subprocess.run([shell_path("bash"), "-c", BASH_DRIVER, "driver", str(path), *lines], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == "complete -o default -F _s3pipefs s3pipefs"
    return [sorted(o.split()) for o in out[1:]]


def test_bash_script_is_valid_and_completes_commands_options_and_values(tmp_path):
    path = tmp_path / "s3pipefs.bash"
    path.write_text(script("bash"))
    assert subprocess.run([shell_path("bash"), "-n", str(path)], capture_output=True).returncode == 0
    got = bash_complete(tmp_path, "s3pipefs sy", "s3pipefs cat --no-", "s3pipefs t", "s3pipefs fr",
                        "s3pipefs --workers 4 c", "s3pipefs --addressing v", "s3pipefs ls --j",
                        "s3pipefs completion ", "s3pipefs rm --rec", "s3pipefs du --")
    assert got[0] == ["sync"]
    assert got[1] == ["--no-follow"]
    assert got[2] == ["to"] and got[3] == ["from"]  # s3pipe2's aliases
    assert got[4] == ["cat", "completion", "cp"]  # a top-level option's value is skipped
    assert got[5] == ["virtual"]
    assert got[6] == ["--json"]
    assert got[7] == ["bash", "fish", "zsh"]
    assert got[8] == ["--recursive"]
    assert "--json" in got[9] and "--endpoint-url" in got[9] and "--resume" not in got[9]


def test_every_command_and_alias_is_offered(tmp_path):
    (every,) = bash_complete(tmp_path, "s3pipefs ")
    assert every == sorted(w for name, aliases in cli.COMMANDS for w in (name, *aliases))


def test_bash_completes_s3_urls_from_a_listing(tmp_path, store, bucket, on_path):
    engine = Engine(store, TransferConfig(staging_dir=str(tmp_path / "staging")))
    for key in ("dir/alpha", "dir/beta", "dir/sub/x", "other"):  # streams, as `put` writes them
        with engine.open_writer(bucket, key) as w:
            w.write(b"x")
    (urls, streams) = bash_complete(tmp_path, f"s3pipefs cat s3://{bucket}/dir/", f"s3pipefs cat s3://{bucket}/dir/a",
                                    env=on_path)
    # readline replaces what follows the last ':' of the word
    assert urls == [f"//{bucket}/dir/alpha", f"//{bucket}/dir/beta", f"//{bucket}/dir/sub/"]
    assert streams == [f"//{bucket}/dir/alpha"]


# -- fish ------------------------------------------------------------------------------------------

def fish_complete(tmp_path, line: str, env=None) -> list[str]:
    path = tmp_path / "s3pipefs.fish"
    path.write_text(script("fish"))
    r = subprocess.run([shell_path("fish"), "-c", f"source {path}; complete -C '{line}'"], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    return sorted(o.split("\t")[0] for o in r.stdout.splitlines())


def test_fish_script_is_valid_and_completes(tmp_path, cli, bucket, on_path):
    path = tmp_path / "s3pipefs.fish"
    path.write_text(script("fish"))
    assert subprocess.run([shell_path("fish"), "--no-execute", str(path)], capture_output=True).returncode == 0
    assert fish_complete(tmp_path, "s3pipefs sy") == ["sync"]
    assert fish_complete(tmp_path, "s3pipefs cat --no-") == ["--no-follow"]
    assert fish_complete(tmp_path, "s3pipefs completion ") == ["bash", "fish", "zsh"]
    assert fish_complete(tmp_path, "s3pipefs --addressing ") == ["path", "virtual"]
    cli("put", f"s3://{bucket}/d/one", input=b"1", check=True)
    assert fish_complete(tmp_path, f"s3pipefs cat s3://{bucket}/d/", env=on_path) == [f"s3://{bucket}/d/one"]


# -- zsh -------------------------------------------------------------------------------------------

ZSH_DRIVER = r"""
compdef() { print -r -- "compdef $*" }
source $1
shift
# What would be offered, filtered by the word as compsys would.
compadd() {
    while [[ $1 == -* && $1 != -- ]]; do [[ $1 == -S ]] && shift; shift; done
    [[ $1 == -- ]] && shift
    local w; for w; do [[ $w == ${words[CURRENT]}* ]] && print -r -- $w; done
}
_describe() { local -a entries=(${(P)${@[-1]}}); compadd -- ${entries%%:*} }
_files() { print -r -- "(files)" }
for line in "$@"; do
    words=(${(z)line}); [[ $line == *' ' ]] && words+=('')
    CURRENT=$#words
    print -r -- "== $line"
    _s3pipefs
done
"""


def test_zsh_script_is_valid_and_completes(tmp_path):
    zsh = shell_path("zsh")
    path = tmp_path / "_s3pipefs"
    path.write_text(script("zsh"))
    assert path.read_text().startswith("#compdef s3pipefs\n")
    assert subprocess.run([zsh, "-n", str(path)], capture_output=True).returncode == 0
    lines = ["s3pipefs sy", "s3pipefs cat --no-", "s3pipefs completion ", "s3pipefs --addressing p",
             "s3pipefs cat ", "s3pipefs --staging "]
    r = subprocess.run([zsh, "-f", "-c", ZSH_DRIVER, "driver", str(path), *lines], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout.split("== ")
    assert out[0] == "compdef _s3pipefs s3pipefs\n"
    got = {block.split("\n", 1)[0]: sorted(block.split("\n", 1)[1].split()) for block in out[1:]}
    assert got == {"s3pipefs sy": ["sync"], "s3pipefs cat --no-": ["--no-follow"],
                   "s3pipefs completion ": ["bash", "fish", "zsh"], "s3pipefs --addressing p": ["path"],
                   "s3pipefs cat ": ["(files)"], "s3pipefs --staging ": ["(files)"]}
