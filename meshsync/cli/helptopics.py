"""``meshsync help [TOPIC [SUBCOMMAND]]``: a command's help, or a guide, without the docs.

A node often has only the installed program (no checkout, no browser): the topics are
built from what meshsync itself knows, so they cannot drift from it.  A command's help
is its parser's; ``configuration`` lists every setting from ``config.Settings`` (name,
variable, default, description); ``exit-codes`` is the parser's epilog; ``json`` and
``completion`` say where the shapes are and how to load the completion scripts.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from meshsync import config
from meshsync.cli.common import JSON_SCHEMA_VERSION, CliError
from meshsync.exits import EXIT_OK, EXIT_USAGE

GUIDES = {
    "exit-codes": "what each exit code of meshsync means",
    "configuration": "every setting: YAML name, MESHSYNC_* variable, default, meaning",
    "json": "the --json output: schema_version, units, where the JSON Schemas are",
    "completion": "shell completion for bash, zsh and fish",
}

JSON_TEXT = f"""The --json output (schema version {JSON_SCHEMA_VERSION})

Every command with --json prints one JSON object on stdout, "schema_version" first.
Times are Unix seconds (numbers), a pid is a number, lists are fields of the object.
The version is raised when a field is removed, renamed or changes type or meaning; new
fields may appear without it, so ignore fields you do not know.

Each command's shape is a JSON Schema (draft 2020-12), installed with meshsync in
<prefix>/share/doc/meshsync/schemas/COMMAND.json (e.g. status.json, skill-ls.json) and
described in docs/json.md.
"""

COMPLETION_TEXT = """Shell completion for meshsync

The scripts are generated from meshsync's own command line; re-create them after an
upgrade so that new commands and options complete.

  bash   source <(meshsync completion bash)          in ~/.bashrc, or for everyone:
         meshsync completion bash > /etc/bash_completion.d/meshsync
  zsh    source <(meshsync completion zsh)           in ~/.zshrc (uses zsh's bashcompinit)
  fish   meshsync completion fish > ~/.config/fish/completions/meshsync.fish

They complete commands, subcommands, options and the values an option allows
(--log-level, help TOPIC); -c/--config and skill put's FILE complete file names.
"""


def _settings_lines(model: type[BaseModel], prefix: str = "") -> list[str]:
    """One entry per setting, sections expanded, in the order config.py declares them."""
    out: list[str] = []
    for name, f in model.model_fields.items():
        dotted = f"{prefix}{name}"
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _settings_lines(ann, dotted + ".")
            continue
        var = config.ENV_PREFIX + dotted.upper().replace(".", "__")
        default = "(computed)" if f.default is PydanticUndefined else repr(f.default)
        out.append(f"  {dotted}\n      ${var}, default {default}\n      {f.description or ''}")
    return out


def configuration_text() -> str:
    return ("Configuration\n\n"
            "A YAML file (-c FILE or $MESHSYNC_CONFIG) and MESHSYNC_* variables, which win over the\n"
            "file; a section's setting is named with a dot in YAML (watch: {mode: poll}) and with\n"
            "two underscores in a variable (MESHSYNC_WATCH__MODE=poll).  Lists and sections are\n"
            "given to a variable as JSON.  Unknown names are errors.  More: docs/configuration.md.\n\n"
            + "\n".join(_settings_lines(config.Settings)) + "\n")


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in p._actions if isinstance(a, argparse._SubParsersAction)), {})


def topics_text(parser: argparse.ArgumentParser) -> str:
    cmds = _subparsers(parser)
    width = max(len(t) for t in [*cmds, *GUIDES]) + 2
    helps = {c.dest: c.help or "" for a in parser._actions if isinstance(a, argparse._SubParsersAction)
             for c in a._choices_actions}
    lines = ["usage: meshsync help TOPIC [SUBCOMMAND]", "", "commands (their --help):"]
    lines += [f"  {name:{width}}{helps.get(name, '')}" for name in cmds]
    lines += ["", "guides:"] + [f"  {name:{width}}{text}" for name, text in GUIDES.items()]
    return "\n".join(lines) + "\n"


def topic_text(parser: argparse.ArgumentParser, topic: str | None, sub: str | None) -> str:
    """The text of ``help TOPIC [SUB]``; CliError (exit 2) for a topic that is not one."""
    if topic is None:
        return topics_text(parser)
    if topic in GUIDES:
        if sub:
            raise CliError(f"help {topic} has no subtopic {sub!r}", EXIT_USAGE)
        if topic == "exit-codes":
            return parser.epilog.split("\n\n")[0] + "\n"
        if topic == "configuration":
            return configuration_text()
        return JSON_TEXT if topic == "json" else COMPLETION_TEXT
    p = _subparsers(parser)[topic]  # the parser's choices let only topics through
    if sub:
        subs = _subparsers(p)
        if sub not in subs:
            raise CliError(f"`meshsync {topic}` has no subcommand {sub!r}; `meshsync help {topic}` lists them",
                           EXIT_USAGE)
        p = subs[sub]
    return p.format_help()


def cmd_help(s: config.Settings | None, a: argparse.Namespace) -> int:
    """Print a topic (needs no configuration: help must work when it is broken)."""
    sys.stdout.write(topic_text(a.parser, a.topic, a.subtopic))
    return EXIT_OK
