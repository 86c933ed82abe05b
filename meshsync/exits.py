"""meshsync's exit codes, one meaning each (cli/main.py's epilog, which `meshsync help
exit-codes` prints, says the same to the operator; the systemd units rely on them:
``RestartPreventExitStatus=2 6``).

Their own module because both the command line and the daemon exit with them, and the
daemon must not import the command line.
"""

from __future__ import annotations

EXIT_OK = 0  # done
EXIT_PROBLEMS = 1  # done, but some files or rows were skipped (see `meshsync status`)
EXIT_USAGE = 2  # bad arguments or configuration (or the wrong user); nothing was changed
EXIT_UNAVAILABLE = 3  # the share is unavailable (not mounted, no marker, unreadable)
EXIT_NOT_FOUND = 4  # the item does not exist
EXIT_BUSY = 5  # another meshsync process (the daemon) holds the index
EXIT_FAULT = 6  # the index or a local folder cannot be used (damaged, deleted, full, locked)
EXIT_REFUSED = 7  # the write was refused (e.g. a secret): kept in this node's index only
