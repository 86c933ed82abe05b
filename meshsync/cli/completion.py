"""``meshsync completion bash|zsh|fish``: shell completion generated from the parser.

The scripts are written from ``build_parser()`` each time they are printed, so they
cannot drift from the command line: a new command or option completes as soon as it is
in the parser.  No completion library is added: argcomplete (the usual one) runs the
Python program on every Tab press (a second or so to import meshsync on a small node)
and needs its own hook installed; these scripts are plain shell, answer at once, and
the command line changes only with a new meshsync (re-run the command after upgrading).

What the scripts know: the commands and their subcommands (``skill put``, ``conflicts
restore``), each command's options, which options take a value (so ``-c FILE status``
still finds ``status``), the values an option or argument allows (``--log-level``,
``completion SHELL``, ``help TOPIC``), and that ``-c/--config`` and ``skill put NAME
FILE`` take files.  Item scopes and keys are not completed (that would read the index).

argparse has no public API to list a parser's actions; ``_actions`` and
``_SubParsersAction`` are read here (read only), as the stdlib's own help formatter does.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, field

from meshsync import __version__, config
from meshsync.exits import EXIT_OK

SHELLS = ("bash", "zsh", "fish")
FILE = "@file"  # the value list of an option or argument that takes a file


@dataclass
class Option:
    """One option of one command: its spellings, whether it takes a value, which values."""

    names: list[str]
    help: str
    takes_value: bool
    values: list[str] | None  # None: any value; [FILE]: a file


@dataclass
class Command:
    """A command (``()`` is meshsync itself) with its options, positional arguments'
    value lists (in order) and subcommands."""

    path: tuple[str, ...]
    help: str = ""
    options: list[Option] = field(default_factory=list)
    positionals: list[list[str] | None] = field(default_factory=list)
    subcommands: dict[str, Command] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The command as the scripts name it: words joined by one space ("" for the top)."""
        return " ".join(self.path)


def _values(act: argparse.Action) -> list[str] | None:
    if act.choices is not None and not isinstance(act, argparse._SubParsersAction):
        return [str(c) for c in act.choices]
    if act.metavar == "FILE" or act.dest in ("config", "file"):
        return [FILE]
    return None


def model(parser: argparse.ArgumentParser, path: tuple[str, ...] = (), help: str = "") -> Command:
    """The command tree of ``parser``, as the completion scripts need it."""
    cmd = Command(path, help)
    for act in parser._actions:
        if isinstance(act, argparse._SubParsersAction):
            helps = {c.dest: c.help or "" for c in act._choices_actions}
            for name, sp in act.choices.items():
                cmd.subcommands[name] = model(sp, (*path, name), helps.get(name, ""))
        elif act.option_strings:
            if act.help == argparse.SUPPRESS:
                continue
            cmd.options.append(Option(list(act.option_strings), act.help or "", act.nargs != 0, _values(act)))
        else:
            cmd.positionals.append(_values(act))
    return cmd


def walk(cmd: Command) -> list[Command]:
    """``cmd`` and every command under it, parents first."""
    out = [cmd]
    for sub in cmd.subcommands.values():
        out += walk(sub)
    return out


# --- bash (and zsh, through bashcompinit) ---------------------------------------------------

_BASH_MAIN = r"""
_meshsync() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="" path="" w i skip=0 npos=0 opt="" values
    ((COMP_CWORD > 0)) && prev="${COMP_WORDS[COMP_CWORD-1]}"
    # Which command the words so far name; an option's value is not a word of it.
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${COMP_WORDS[i]}"
        if ((skip)); then skip=0; continue; fi
        case "$w" in
            =) ;;
            -*) _meshsync_takes_value "$path" "$w" && skip=1 ;;
            *) if _meshsync_is_command "${path:+$path }$w"; then path="${path:+$path }$w"; npos=0
               else npos=$((npos + 1)); fi ;;
        esac
    done
    # --opt VALUE, --opt=VALUE (bash splits the word at '=').
    if [[ $cur == = && $prev == -* ]]; then opt="$prev"; cur=""
    elif [[ $prev == = ]] && ((COMP_CWORD > 1)); then opt="${COMP_WORDS[COMP_CWORD-2]}"
    elif [[ $prev == -* ]]; then opt="$prev"; fi
    if [[ -n $opt ]] && _meshsync_takes_value "$path" "$opt"; then
        values="$(_meshsync_option_values "$path" "$opt")"
    elif [[ $cur == -* ]]; then
        values="$(_meshsync_options "$path")"
    else
        values="$(_meshsync_subcommands "$path") $(_meshsync_positional_values "$path" "$npos")"
    fi
    if [[ $values == *@file* ]]; then
        type compopt >/dev/null 2>&1 && compopt -o filenames 2>/dev/null
        local IFS=$'\n'  # one file name a line, spaces kept
        COMPREPLY=($(compgen -f -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$values" -- "$cur"))
    fi
    return 0
}
complete -o default -F _meshsync meshsync
"""


def _bash_case(fn: str, args: str, arms: dict[str, str], test: bool = False) -> str:
    """A shell function that prints the words of the arm whose pattern matches ARGS (or,
    with ``test``, succeeds when one matches)."""
    lines = [f"{fn}() {{", f'    case "{args}" in']
    for pattern, words in arms.items():
        if words:
            lines.append(f"        {shlex.quote(pattern)}) " + ("return 0" if test else f"echo {shlex.quote(words)}")
                         + " ;;")
    lines += [f"        *) return {1 if test else 0} ;;", "    esac", "}"]
    return "\n".join(lines)


def bash_script(top: Command) -> str:
    """The bash completion script: a table per question, then one function using them."""
    cmds = walk(top)
    subs = {c.key: " ".join(c.subcommands) for c in cmds}
    known = {c.key: "yes" for c in cmds if c.path}
    opts = {c.key: " ".join(n for o in c.options for n in o.names) for c in cmds}
    with_value = {f"{c.key}|{n}": "yes" for c in cmds for o in c.options if o.takes_value for n in o.names}
    values = {f"{c.key}|{n}": " ".join(o.values) for c in cmds for o in c.options if o.values for n in o.names}
    pos = {f"{c.key}|{i}": " ".join(v) for c in cmds for i, v in enumerate(c.positionals) if v}
    parts = [
        f"# bash completion for meshsync {__version__}, generated by `meshsync completion bash`.\n"
        "# Load it with: source <(meshsync completion bash)   (or see `meshsync help completion`)",
        _bash_case("_meshsync_is_command", "$1", known, test=True),
        _bash_case("_meshsync_subcommands", "$1", subs),
        _bash_case("_meshsync_options", "$1", opts),
        _bash_case("_meshsync_takes_value", "$1|$2", with_value, test=True),
        _bash_case("_meshsync_option_values", "$1|$2", values),
        _bash_case("_meshsync_positional_values", "$1|$2", pos),
    ]
    return "\n\n".join(parts) + "\n" + _BASH_MAIN


def zsh_script(top: Command) -> str:
    """zsh runs the bash script through its own bashcompinit (part of every zsh): one
    script to keep right instead of two."""
    return ("# zsh completion for meshsync, generated by `meshsync completion zsh`.\n"
            "# Load it after compinit with: source <(meshsync completion zsh)\n"
            "autoload -U +X compinit && { (( ${+_comps} )) || compinit; }\n"
            "autoload -U +X bashcompinit && bashcompinit\n"
            + bash_script(top))


# --- fish --------------------------------------------------------------------------------------

def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


_FISH_PATH = r"""
# The command the words typed so far name ("" for meshsync itself, "skill put", ...).
function __meshsync_path
    set -l path ""
    set -l skip 0
    for w in (commandline -opc)[2..-1]
        if test $skip = 1
            set skip 0
            continue
        end
        switch $w
            case '-*'
                contains -- "$path|$w" $__meshsync_with_value; and set skip 1
            case '*'
                set -l next (string trim -- "$path $w")
                contains -- "$next" $__meshsync_commands; and set path $next
        end
    end
    echo $path
end

function __meshsync_at
    test (__meshsync_path) = "$argv[1]"
end
"""


def fish_script(top: Command) -> str:
    """fish completions: ``complete`` lines, each for one command (``__meshsync_at``)."""
    cmds = walk(top)
    lines = [f"# fish completion for meshsync {__version__}, generated by `meshsync completion fish`.",
             "# Install: meshsync completion fish > ~/.config/fish/completions/meshsync.fish",
             "complete -c meshsync -e",
             "set -g __meshsync_commands " + " ".join(_fish_quote(c.key) for c in cmds if c.path),
             "set -g __meshsync_with_value "
             + " ".join(_fish_quote(f"{c.key}|{n}") for c in cmds for o in c.options if o.takes_value
                        for n in o.names),
             _FISH_PATH]
    for c in cmds:
        cond = '__meshsync_at "' + c.key + '"'  # command words are plain words
        at = f"-n {_fish_quote(cond)}"
        for name, sub in c.subcommands.items():
            lines.append(f"complete -c meshsync {at} -f -a {_fish_quote(name)} -d {_fish_quote(sub.help)}")
        for o in c.options:
            spell = " ".join(f"-l {n[2:]}" if n.startswith("--") else f"-s {n[1:]}" for n in o.names)
            if o.values == [FILE]:
                arg = " -r -F"
            elif o.values:
                arg = f" -x -a {_fish_quote(' '.join(o.values))}"
            else:
                arg = " -x" if o.takes_value else ""
            lines.append(f"complete -c meshsync {at} {spell}{arg} -d {_fish_quote(o.help)}")
        for v in c.positionals:
            if v and v != [FILE]:
                lines.append(f"complete -c meshsync {at} -f -a {_fish_quote(' '.join(v))}")
    return "\n".join(lines) + "\n"


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    top = model(parser)
    return {"bash": bash_script, "zsh": zsh_script, "fish": fish_script}[shell](top)


def cmd_completion(s: config.Settings | None, a: argparse.Namespace) -> int:
    """Print the completion script for ``a.shell`` (needs no configuration)."""
    sys.stdout.write(script(a.shell, a.parser))
    return EXIT_OK
