"""Imported only by the build's forkserver (its preload): the forkserver dies with the prepare that started it.

Pool workers hold a copy of the forkserver's "parent alive" pipe, so the forkserver never sees prepare die
and lives on with its workers. With this, the kernel kills the forkserver when prepare dies, and each worker
(which has the same guard for its own parent, see build._die_with_parent) then dies too: no orphan writes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1

if sys.platform.startswith("linux"):
    try:
        ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not glibc: fall back to the pool's own shutdown
        pass
    else:
        if os.getppid() == 1:  # prepare died before the guard was armed
            os._exit(1)
