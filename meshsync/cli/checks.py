"""One line of ``meshsync doctor``: a named check, its result, what was found, what to do.

Its own module because the checks come from more than one place (cli/doctor.py, and
cli/doctor_syncthing.py for a share Syncthing keeps) and each must build the same line.
"""

from __future__ import annotations

from dataclasses import dataclass

PASS, WARN, FAIL = "pass", "warn", "fail"


@dataclass
class Check:
    name: str
    result: str  # PASS, WARN or FAIL
    detail: str
    hint: str = ""
