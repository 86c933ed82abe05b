"""Loaded (via PYTHONPATH) only by meshsync processes that tests run under libfaketime.

libfaketime 0.9.10 (Debian 12) cannot run Python 3.11 threads and sleeps correctly in
either mode: with the monotonic clock faked, timed waits (``Event.wait``, ``join``,
``queue.get`` with a timeout: ``sem_clockwait`` on CLOCK_MONOTONIC) never time out
(wolfcw/libfaketime#390); with FAKETIME_DONT_FAKE_MONOTONIC=1 those work, but
``time.sleep`` (``clock_nanosleep`` with TIMER_ABSTIME) fails with EINVAL
(wolfcw/libfaketime#426).  The tests use the second mode and route ``time.sleep``
through a timed wait, which works there.  Only the wall clock is shifted, as on a host
whose clock is wrong.
"""

import threading
import time


def _sleep(secs: float) -> None:
    if secs < 0:
        raise ValueError("sleep length must be non-negative")
    threading.Event().wait(secs)


time.sleep = _sleep
