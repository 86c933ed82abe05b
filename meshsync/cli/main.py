"""The ``meshsync`` command line: the parser, ``main()`` and the exit codes.

The commands live in modules named after what they act on: ``setup`` (init, sync,
run), ``doctor``, ``status`` (status and each item's sync state), ``memory`` (get, put,
rm, ls), ``search``, ``conflicts`` (conflicts, restore), ``skills`` (skill
put/get/rm/ls), ``completion`` and ``helptopics`` (help), which need no configuration;
``common`` holds what they share.  None of them runs SQL: they read the index through
``meshsync.replicas.index.queries`` and write through the engine.

Exit codes (also in ``meshsync --help``):
  0  done
  1  done, but some files or rows were skipped (see ``meshsync status``)
  2  bad arguments or configuration; nothing was changed
  3  the share is unavailable (not mounted, no marker, unreadable); nothing was changed
  4  the item does not exist
  5  another meshsync process (the daemon) holds the index
  6  the index or a local folder cannot be used (damaged, deleted, disk full, locked); see `meshsync doctor`
  7  the write was refused (e.g. it looks like a secret): kept in this node's index only
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Callable

from meshsync import __version__, config, logs
from meshsync.cli import access
from meshsync.cli.common import CliError, fault_problem
from meshsync.cli.completion import SHELLS, cmd_completion
from meshsync.cli.conflicts import cmd_conflicts, cmd_conflicts_restore, cmd_deleted, cmd_restore
from meshsync.cli.deletes import cmd_deletes, cmd_deletes_confirm
from meshsync.cli.doctor import FAIL, Check, cmd_doctor, print_checks
from meshsync.cli.helptopics import GUIDES, cmd_help
from meshsync.cli.memory import cmd_get, cmd_ls, cmd_put, cmd_rm
from meshsync.cli.reload import cmd_reload, refused_before_asking
from meshsync.cli.repair import cmd_repair_future_stamps
from meshsync.cli.search import cmd_search
from meshsync.cli.setup import cmd_init, cmd_run, cmd_sync
from meshsync.cli.skills import cmd_skill_get, cmd_skill_ls, cmd_skill_put, cmd_skill_rm
from meshsync.cli.status import cmd_status
from meshsync.exits import EXIT_FAULT, EXIT_OK, EXIT_USAGE
from meshsync.replicas.index.store import IndexError_

EPILOG = """exit codes:
  0  done
  1  done, but some files or rows were skipped (see `meshsync status`)
  2  bad arguments or configuration; nothing was changed
  3  the share is unavailable (not mounted, no marker, unreadable); nothing was changed
  4  the item does not exist
  5  another meshsync process (the daemon) holds the index
  6  the index or a local folder cannot be used (damaged, deleted, disk full, locked); see `meshsync doctor`
  7  the write was refused (e.g. it looks like a secret): kept in this node's index only

configuration: -c FILE or $MESHSYNC_CONFIG (YAML), and MESHSYNC_* variables,
e.g. MESHSYNC_SHARE, MESHSYNC_NODE_ID, MESHSYNC_WATCH__POLL_INTERVAL.
"""


# --- parser -----------------------------------------------------------------------------------


AddCommand = Callable[..., argparse.ArgumentParser]
LOG_LEVELS = ["debug", "info", "warning", "error"]


def _add_global_options(p: argparse.ArgumentParser, top: bool) -> None:
    """``-c/--config`` and ``--log-level``, accepted before the command and after it
    (operators type ``meshsync status -c FILE``).  On a command's own parser the default
    is SUPPRESS: an option not given there leaves the value given before the command;
    one given there wins.  The level is taken in any case, as the YAML's log_level is."""
    default = None if top else argparse.SUPPRESS
    p.add_argument("-c", "--config", metavar="FILE", default=default,
                   help="YAML configuration file (default: $MESHSYNC_CONFIG)")
    p.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default=default,
                   help="override log_level (any case)")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; each command's function comes from the module of what it
    acts on (setup, doctor, status, memory, conflicts, skills)."""
    p = argparse.ArgumentParser(
        prog="meshsync",
        description="Keep a shared folder, this node's SQLite index and its OpenClaw cache in step.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_global_options(p, top=True)
    p.add_argument("--version", action="version", version=f"meshsync {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, fn, help: str, desc: str | None = None) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=desc or help, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_global_options(sp, top=False)
        sp.set_defaults(fn=fn)
        return sp

    _add_node_commands(add)  # in the order `meshsync --help` lists them
    _add_memory_commands(add)
    _add_conflict_commands(add)
    _add_delete_commands(add)
    _add_skill_commands(sub)
    _add_help_commands(add, sub)
    return p


def _add_node_commands(add: AddCommand) -> None:
    sp = add("init", cmd_init, "create the share layout, its .meshsync/ marker and the index (idempotent)",
             "Create the share layout and marker (idempotent) and this node's index. Refuses a folder that "
             "already holds files but no marker: that is usually an unmounted NAS.")
    sp.add_argument("--force", action="store_true", help="initialise a non-empty folder that has no marker")
    add("run", cmd_run, "run the daemon in the foreground (systemd runs this)")
    sp = add("reload", cmd_reload, "make the running daemon re-read its configuration; fail if it refuses it",
             "Send the running daemon SIGHUP and wait for its verdict: exit 0 when it applied the "
             "configuration, 2 when it refused it (it keeps its previous settings). The systemd units "
             "run this as ExecReload=, so that `systemctl reload` fails on a bad configuration.")
    sp.add_argument("--pid", type=int, help="the daemon's pid (default: the one holding the index; "
                    "systemd passes $MAINPID)")
    sp.add_argument("--timeout", type=float, default=90.0,
                    help="seconds to wait for the daemon's answer (default 90)")
    sp = add("doctor", cmd_doctor, "check the set-up: share, clocks, watch limits, index, cache, systemd",
             "Check this node's set-up, one line per check with a hint. Exit 0 when all pass, "
             "1 when some warn, 2 when any fails.")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp = add("sync", cmd_sync, "one full two-way pass, then exit (exit 3 if the share is unavailable)")
    sp.add_argument("--full", action="store_true", help="also re-read every index row, not just the changed ones")
    sp.add_argument("--json", action="store_true", help="print the pass's figures as JSON")
    sp = add("status", cmd_status, "share availability, counts, last sync, per-file errors, conflicts")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    add("repair-future-stamps", cmd_repair_future_stamps,
        "re-stamp items stamped in the future (by a clock far ahead) at the file server's time",
        "Write every item whose updated_at is more than an hour ahead of the file server's clock again, "
        "unchanged, as a new write of this node stamped with the file server's time; it is exported like any "
        "write. Fix the wrong clock first (meshsync doctor names the node).")


def _add_memory_commands(add: AddCommand) -> None:
    sp = add("get", cmd_get, "print a memory item's value", "Print the value of memory item SCOPE KEY.")
    sp.add_argument("scope", help="node, mesh or user:<id>")
    sp.add_argument("key")
    sp.add_argument("--json", action="store_true", help="print the whole row as JSON")
    sp = add("put", cmd_put, "write a memory item",
             "Write memory item SCOPE KEY with the JSON VALUE (`-`: read it from stdin).")
    sp.add_argument("scope", help="node, mesh or user:<id>")
    sp.add_argument("key")
    sp.add_argument("value", help="a JSON value, e.g. '{\"shortAnswers\": true}' or '\"text\"'; "
                    "- reads it from stdin (for values over 128 KiB)")
    sp = add("rm", cmd_rm, "delete a memory item everywhere")
    sp.add_argument("scope")
    sp.add_argument("key")
    sp = add("ls", cmd_ls, "list memory items (scope, key, node, time)")
    sp.add_argument("scope", nargs="?", help="only this scope")
    sp.add_argument("--json", action="store_true")
    sp = add("search", cmd_search, "full-text search of memory items (keys and values)",
             "Find memory items whose key or value holds every word of TEXT (a trailing * "
             "matches a prefix), best match first, in the scopes this node may read. "
             "Exit 4 when nothing matches.")
    sp.add_argument("text", metavar="TEXT", nargs="+", help="words to find (with --fts: an FTS5 query)")
    sp.add_argument("--scope", help="only this scope (node, mesh or user:<id>)")
    sp.add_argument("--limit", type=int, default=20, help="how many to show (default 20)")
    sp.add_argument("--fts", action="store_true",
                    help="TEXT is an SQLite FTS5 query (OR, NOT, NEAR, column:word)")
    sp.add_argument("--json", action="store_true", help="machine-readable output, with the values")


def _add_conflict_commands(add: AddCommand) -> None:
    cf = add("conflicts", cmd_conflicts, "list beaten versions kept in the share's history (R2, R11)",
             "List the versions that lost a conflict (newest first), with both sides, as kept on the share: "
             "the same on every node. `meshsync restore ID` writes one back as a new write.")
    cf.add_argument("--json", action="store_true", help="machine-readable output, with the beaten values")
    cf.add_argument("--limit", type=int, default=50, help="how many to show (default 50)")
    csub = cf.add_subparsers(dest="conflicts_command", metavar="SUBCOMMAND")
    sp = csub.add_parser("restore", help="write a beaten version back as a new write (same as `meshsync restore`)",
                         description="Write the version kept as record ID back as a new write; "
                         "it then wins everywhere like any newer write.")
    _add_global_options(sp, top=False)
    sp.add_argument("id", help="the record's ID (or a unique prefix of at least 4 characters)")
    sp.set_defaults(fn=cmd_conflicts_restore)
    sp = add("deleted", cmd_deleted, "list deleted items whose last value is kept in the share's history (R11)",
             "List deleted items (newest first) with the last value each had and who deleted it, as kept "
             "on the share: the same on every node. `meshsync restore ID` brings one back.")
    sp.add_argument("--json", action="store_true", help="machine-readable output, with the last values")
    sp.add_argument("--limit", type=int, default=50, help="how many to show (default 50)")
    sp = add("restore", cmd_restore, "write a version kept in the history (beaten or deleted) back as a new write",
             "Write the version kept as record ID (from `meshsync conflicts` or `meshsync deleted`) back as "
             "a new write; it then wins everywhere like any newer write.")
    sp.add_argument("id", help="the record's ID (or a unique prefix of at least 4 characters)")


def _add_delete_commands(add: AddCommand) -> None:
    dl = add("deletes", cmd_deletes, "show a held mass delete (R11): how many, why, which items",
             "Show the deletes the last passes held because most of the items' files are gone from the share "
             "(a folder removed, a share emptied or put back from an old backup): nothing was deleted. "
             "`meshsync deletes confirm` applies them. Exit 1 while deletes are held.")
    dl.add_argument("--json", action="store_true", help="machine-readable output")
    dsub = dl.add_subparsers(dest="deletes_command", metavar="SUBCOMMAND")
    sp = dsub.add_parser("confirm", help="apply the held deletes on this node; the other nodes follow",
                         description="Apply exactly the deletes held now (their last values are kept in "
                         "`meshsync deleted`); the other nodes follow this node's tombstones.")
    _add_global_options(sp, top=False)
    sp.set_defaults(fn=cmd_deletes_confirm)


def _add_skill_commands(sub: argparse._SubParsersAction) -> None:
    sk = sub.add_parser("skill", help="skills: put, get, rm, ls", description="Manage shared skills.")
    _add_global_options(sk, top=False)
    ssub = sk.add_subparsers(dest="skill_command", metavar="SUBCOMMAND", required=True)

    def sadd(name: str, fn, help: str) -> argparse.ArgumentParser:
        sp = ssub.add_parser(name, help=help, description=help)
        _add_global_options(sp, top=False)
        sp.set_defaults(fn=fn)
        return sp

    sp = sadd("put", cmd_skill_put, "store a skill's SKILL.md content from FILE (or - for stdin)")
    sp.add_argument("name")
    sp.add_argument("file")
    sp = sadd("get", cmd_skill_get, "print a skill's content")
    sp.add_argument("name")
    sp.add_argument("--json", action="store_true")
    sp = sadd("rm", cmd_skill_rm, "delete a skill everywhere")
    sp.add_argument("name")
    sp = sadd("ls", cmd_skill_ls, "list skills")
    sp.add_argument("--json", action="store_true")


def _add_help_commands(add: AddCommand, sub: argparse._SubParsersAction) -> None:
    """``completion`` and ``help``: they read no configuration (needs_settings False), so
    they work on a node whose configuration is broken or missing."""
    sp = add("completion", cmd_completion, "print a shell completion script (bash, zsh or fish)",
             "Print the completion script for SHELL, generated from this command line; "
             "`meshsync help completion` says how to load it.")
    sp.add_argument("shell", metavar="SHELL", choices=SHELLS, help="bash, zsh or fish")
    sp.set_defaults(needs_settings=False)
    sp = add("help", cmd_help, "help on a command or a guide (exit codes, configuration, json, completion)",
             "Print the help of command TOPIC (and SUBCOMMAND), or a guide; without TOPIC, list them.")
    sp.add_argument("topic", metavar="TOPIC", nargs="?", choices=list(dict.fromkeys([*sub.choices, *GUIDES])),
                    help="a command or a guide (`meshsync help` lists them)")
    sp.add_argument("subtopic", metavar="SUBCOMMAND", nargs="?", help="e.g. `meshsync help skill put`")
    sp.set_defaults(needs_settings=False)


# Commands that only read: a user who does not own the index may run them (read-only).
READS_ONLY = frozenset({cmd_status, cmd_doctor, cmd_get, cmd_ls, cmd_skill_get, cmd_skill_ls, cmd_conflicts,
                        cmd_deleted, cmd_deletes, cmd_search})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "needs_settings", True):
        a.parser = parser  # completion and help are written from the parser itself
        try:
            return a.fn(None, a)
        except CliError as exc:
            print(f"meshsync: {exc}", file=sys.stderr)
            return exc.code
    try:
        overrides = {"log_level": a.log_level} if a.log_level else {}
        settings = config.load(a.config, **overrides)
    except config.ConfigError as exc:
        if getattr(a, "fn", None) is cmd_reload:
            return refused_before_asking(a, exc)
        if getattr(a, "fn", None) is cmd_doctor:
            # doctor reports a bad configuration as its first (failed) check, in its own format.
            hint = "fix the setting named above (docs/configuration.md); meshsync stops with exit 2 until then"
            return print_checks([Check("configuration", FAIL, str(exc), hint)], a.json)
        print(f"meshsync: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logs.setup(settings.log_level)
    try:
        # Before the command touches anything: the index's node id (R11), its owner.
        access.check_user(settings, a.fn in READS_ONLY, sys.argv[1:] if argv is None else argv)
        if a.fn is not cmd_doctor:  # doctor reports it as a failed check instead
            access.check_owner(settings)
        return a.fn(settings, a)
    except CliError as exc:
        print(f"meshsync: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `meshsync status | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except PermissionError as exc:  # a file of another user (R11): run as the right user
        print(f"meshsync: {access.explain(exc, settings)}", file=sys.stderr)
        return EXIT_USAGE
    except (sqlite3.Error, OSError) as exc:
        # A resource fault no command could get past (R12): one line, never a traceback.
        print(f"meshsync: {fault_problem(exc, settings)}", file=sys.stderr)
        return EXIT_FAULT
    except IndexError_ as exc:  # e.g. the index deleted while the command ran
        print(f"meshsync: {exc}", file=sys.stderr)
        return EXIT_FAULT


if __name__ == "__main__":
    sys.exit(main())
