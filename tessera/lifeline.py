"""A child process's tie to its parent: it must not outlive it.

`die_with_parent(parent_pid)`, called first thing by the engine core and worker processes
(their parent's pid comes on their command line, so it is known before any slow import):
on Linux the kernel sends SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG); if the
parent is already gone (it died before the call), the process exits at once. Elsewhere,
their loops still poll `parent_alive(parent_pid)`. Ctrl-C reaches every process of the
terminal's group: the children ignore SIGINT and leave the stopping to their parent (a
Shutdown message, or the parent's death), so one Ctrl-C stops everything once, cleanly.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the loops' polling still holds
            pass
    if not parent_alive(parent_pid):
        os._exit(1)


def parent_alive(parent_pid: int) -> bool:
    return os.getppid() == parent_pid
