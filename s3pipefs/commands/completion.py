"""`s3pipefs completion bash|zsh|fish`: print a shell completion script.

The script is generated from the parsers themselves (cli.build_parser and each command's
``add_arguments``), so a new command, alias or option is completed without touching this
file. What is completed:

* the command (and s3pipe2's aliases) at the command position;
* after a command, its options when the word starts with ``-`` (the common ones too);
* the value of an option: the alternatives its metavar lists (``path|virtual``) or its
  choices, else file names (the shell's default);
* positional arguments: the choices of a command that has them (``completion``'s shell),
  else file names, and ``s3://bucket/prefix...`` words from ``s3pipefs ls`` of the
  prefix's directory: one listing, at most 5 s and 1000 entries, nothing on an error.

argparse has no public way to list a parser's arguments; ``_arguments`` below reads
``parser._actions`` (present since Python 3.2, checked up to 3.13). Without it the
scripts still complete commands and files, just no options.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

HELP = "print a shell completion script (bash, zsh or fish)"
SHELLS = ("bash", "zsh", "fish")
# Bounds of the s3:// completion: one `s3pipefs ls` with this timeout, this many lines.
LS_TIMEOUT = 5
LS_LINES = 1000

EPILOG = """\
Load it in the running shell, or install it for every new one:
  bash   source <(s3pipefs completion bash)
         s3pipefs completion bash > ~/.local/share/bash-completion/completions/s3pipefs
  zsh    s3pipefs completion zsh > "${fpath[1]}/_s3pipefs"   (then: compinit)
  fish   s3pipefs completion fish > ~/.config/fish/completions/s3pipefs.fish
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")


def run(a: argparse.Namespace) -> int:
    spec = read_parsers()
    sys.stdout.write({"bash": bash_script, "zsh": zsh_script, "fish": fish_script}[a.shell](spec))
    return 0


# -- what the parsers accept ---------------------------------------------------------------------

@dataclass(frozen=True)
class Opt:
    flags: tuple[str, ...]
    takes_value: bool
    values: tuple[str, ...]  # the alternatives of its value, () for any (a file name)
    help: str


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]  # the name, then its aliases
    help: str
    options: tuple[Opt, ...]
    positional_values: tuple[str, ...]  # () for file names and s3:// URLs


@dataclass(frozen=True)
class Spec:
    prog: str
    top: tuple[Opt, ...]  # options before the command
    commands: tuple[Command, ...]


def _arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's arguments (see the module docstring), or [] where argparse hides them."""
    actions = getattr(parser, "_actions", None)
    if not isinstance(actions, list) or not all(isinstance(a, argparse.Action) for a in actions):
        return []
    return actions


def _options(parser: argparse.ArgumentParser) -> tuple[Opt, ...]:
    found = []
    for a in _arguments(parser):
        if not a.option_strings or a.help == argparse.SUPPRESS:
            continue
        values = tuple(a.choices or ())
        if not values and isinstance(a.metavar, str) and "|" in a.metavar:
            values = tuple(a.metavar.split("|"))
        help_text = " ".join((a.help or "").split()).split(" (default")[0]
        found.append(Opt(tuple(a.option_strings), a.nargs != 0, tuple(map(str, values)), help_text))
    return tuple(found)


def read_parsers() -> Spec:
    from s3pipefs import cli
    from s3pipefs.commands.common import PROG

    commands = []
    for name, aliases in cli.COMMANDS:
        mod = cli.command_module(name)
        p = argparse.ArgumentParser(prog=f"{PROG} {name}")
        mod.add_arguments(p)
        positional = [a for a in _arguments(p) if not a.option_strings]
        values = tuple(map(str, positional[0].choices or ())) if positional else ()
        commands.append(Command((name, *aliases), mod.HELP, _options(p), values))
    return Spec(PROG, _options(cli.build_parser([])), tuple(commands))


def _valued(opts) -> str:
    return " ".join(f for o in opts if o.takes_value for f in o.flags)


def _flags(opts) -> str:
    return " ".join(f for o in opts for f in o.flags)


def _sq(text: str) -> str:
    """Single-quoted for bash, zsh and fish alike (no quote inside)."""
    return "'" + text.replace("'", "") + "'"


# -- bash --------------------------------------------------------------------------------------------

def bash_script(spec: Spec) -> str:
    fn = "_" + spec.prog
    cases, values = [], []
    for c in spec.commands:
        pattern = "|".join(c.words)
        cases.append(f"        {pattern}) opts={_sq(_flags(c.options))}; valued={_sq(_valued(c.options))}; "
                     f"positional={_sq(' '.join(c.positional_values))} ;;")
    for o in [*spec.top, *(o for c in spec.commands for o in c.options)]:
        if o.values:
            values.append(f"        {'|'.join(o.flags)}) COMPREPLY=($(compgen -W {_sq(' '.join(o.values))} "
                          f"-- \"$cur\")); return ;;")
    values = list(dict.fromkeys(values))
    return f"""\
# bash completion for {spec.prog}; generated by `{spec.prog} completion bash`.
{fn}_s3urls() {{  # S3 URLs starting with $1, from `{spec.prog} ls` of its directory
    local dir="${{1%/*}}/" line
    [[ $1 == s3://?*/* ]] || return 0
    while IFS= read -r line; do
        [[ $line == *"  s3://"* ]] && printf '%s\\n' "s3://${{line##*  s3://}}"
    done < <(timeout {LS_TIMEOUT} "$2" ls --quiet -- "$dir" 2>/dev/null | head -n {LS_LINES})
}}

{fn}() {{
    # Words from the line itself: COMP_WORDS splits s3://... at the ':'.
    local line="${{COMP_LINE:0:COMP_POINT}}" cur prev cmd="" opts valued positional skip=0 w
    local -a words
    read -r -a words <<< "$line"
    if [[ $line == *[[:space:]] ]]; then cur=""; else cur="${{words[-1]}}"; unset 'words[-1]'; fi
    prev="${{words[-1]}}"
    local top_opts={_sq(_flags(spec.top))} top_valued={_sq(_valued(spec.top))}
    for w in "${{words[@]:1}}"; do
        if ((skip)); then skip=0; continue; fi
        if [[ " $top_valued " == *" $w "* ]]; then skip=1; continue; fi
        [[ $w == -* ]] && continue
        cmd=$w; break
    done
    COMPREPLY=()
    case "$prev" in
{chr(10).join(values)}
    esac
    if [[ -z $cmd ]]; then
        [[ " $top_valued " == *" $prev "* ]] && return
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "$top_opts" -- "$cur"))
        else
            COMPREPLY=($(compgen -W {_sq(' '.join(w for c in spec.commands for w in c.words))} -- "$cur"))
        fi
        return
    fi
    case "$cmd" in
{chr(10).join(cases)}
        *) return ;;
    esac
    [[ " $valued " == *" $prev "* ]] && return
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    elif [[ -n $positional ]]; then
        COMPREPLY=($(compgen -W "$positional" -- "$cur"))
    elif [[ $cur == s3://* ]]; then
        local IFS=$'\\n'
        COMPREPLY=($(compgen -W "$({fn}_s3urls "$cur" "${{words[0]}}")" -- "$cur"))
        # readline replaces the word after the last ':' only
        COMPREPLY=("${{COMPREPLY[@]#s3:}}")
        compopt -o nospace 2>/dev/null
    fi
}}
complete -o default -F {fn} {spec.prog}
"""


# -- zsh ----------------------------------------------------------------------------------------------

def zsh_script(spec: Spec) -> str:
    fn = "_" + spec.prog
    cases, values, described = [], [], []
    for c in spec.commands:
        cases.append(f"        ({'|'.join(c.words)}) opts=({_flags(c.options)}); valued=({_valued(c.options)}); "
                     f"positional=({' '.join(c.positional_values)}) ;;")
        described += [f"{w}:{c.help}" for w in c.words]
    for o in [*spec.top, *(o for c in spec.commands for o in c.options)]:
        if o.values:
            values.append(f"        ({'|'.join(o.flags)}) compadd -- {' '.join(o.values)}; return ;;")
    values = list(dict.fromkeys(values))
    described_lines = "\n".join(f"                {_sq(d)}" for d in described)
    return f"""\
#compdef {spec.prog}
# zsh completion for {spec.prog}; generated by `{spec.prog} completion zsh`.
{fn}() {{
    local cur=${{words[CURRENT]}} prev=${{words[CURRENT-1]}} cmd= w i skip=0
    local -a opts valued positional commands urls
    local -a top_opts=({_flags(spec.top)}) top_valued=({_valued(spec.top)})
    for (( i = 2; i < CURRENT; i++ )); do
        w=${{words[i]}}
        if (( skip )); then skip=0; continue; fi
        if (( ${{top_valued[(Ie)$w]}} )); then skip=1; continue; fi
        [[ $w == -* ]] && continue
        cmd=$w; break
    done
    case $prev in
{chr(10).join(values)}
    esac
    if [[ -z $cmd ]]; then
        (( ${{top_valued[(Ie)$prev]}} )) && {{ _files; return }}
        if [[ $cur == -* ]]; then
            compadd -- $top_opts
        else
            commands=(
{described_lines}
            )
            _describe -t commands command commands
        fi
        return
    fi
    case $cmd in
{chr(10).join(cases)}
        (*) return ;;
    esac
    (( ${{valued[(Ie)$prev]}} )) && {{ _files; return }}
    if [[ $cur == -* ]]; then
        compadd -- $opts
    elif (( $#positional )); then
        compadd -- $positional
    elif [[ $cur == s3://?*/* ]]; then
        urls=(${{(f)"$(timeout {LS_TIMEOUT} ${{words[1]}} ls --quiet -- ${{cur%/*}}/ 2>/dev/null | head -n {LS_LINES})"}})
        urls=(${{(M)urls:#*  s3://*}})
        compadd -S '' -- ${{urls/#*  s3:\\/\\//s3://}}
    else
        _files
    fi
}}
if [[ ${{funcstack[1]}} == {fn} ]]; then
    {fn} "$@"
else
    compdef {fn} {spec.prog}
fi
"""


# -- fish ---------------------------------------------------------------------------------------------

def fish_script(spec: Spec) -> str:
    p = spec.prog
    lines = [
        f"# fish completion for {p}; generated by `{p} completion fish`.",
        f"function __{p}_command --description 'the command word of the line, if any'",
        "    set -l skip 0",
        "    for w in (commandline -opc)[2..-1]",
        "        if test $skip = 1; set skip 0; continue; end",
        f"        if contains -- $w {_valued(spec.top)}; set skip 1; continue; end",
        "        string match -q -- '-*' $w; and continue",
        "        echo $w; return 0",
        "    end",
        "    return 1",
        "end",
        f"function __{p}_using --description 'is the command one of these words'",
        f"    set -l cmd (__{p}_command); or return 1",
        "    contains -- $cmd $argv",
        "end",
        f"function __{p}_s3urls --description 'S3 URLs under the directory of the current word'",
        "    set -l cur (commandline -ct)",
        "    string match -qr '^s3://[^/]+/' -- $cur; or return 0",
        f"    timeout {LS_TIMEOUT} {p} ls --quiet -- (string replace -r '[^/]*$' '' -- $cur) 2>/dev/null \\",
        f"        | head -n {LS_LINES} | string match -r '  s3://.*$' | string sub -s 3",
        "end",
    ]
    for c in spec.commands:
        for w in c.words:
            lines.append(f"complete -c {p} -f -n 'not __{p}_command' -a {w} -d {_sq(c.help)}")
    lines += _fish_options(p, spec.top, f"not __{p}_command")
    for c in spec.commands:
        cond = f"__{p}_using {' '.join(c.words)}"
        lines += _fish_options(p, c.options, cond)
        if c.positional_values:
            lines.append(f"complete -c {p} -f -n {_sq(cond)} -a {_sq(' '.join(c.positional_values))}")
        else:
            lines.append(f"complete -c {p} -n {_sq(cond)} -a '(__{p}_s3urls)'")
    return "\n".join(lines) + "\n"


def _fish_options(prog: str, opts, cond: str) -> list[str]:
    out = []
    for o in opts:
        spellings = " ".join(f"-l {f[2:]}" if f.startswith("--") else f"-s {f[1:]}" for f in o.flags)
        value = ""
        if o.takes_value:
            value = f" -x -a {_sq(' '.join(o.values))}" if o.values else " -r"
        out.append(f"complete -c {prog} -n {_sq(cond)} {spellings}{value} -d {_sq(o.help)}")
    return out
