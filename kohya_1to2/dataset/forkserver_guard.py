"""Imported only by the build's forkserver (its preload): the forkserver dies with the prepare that started it.

Pool workers hold a copy of the forkserver's "parent alive" pipe, so the forkserver never sees prepare die
and lives on with its workers. With this, the kernel kills the forkserver when prepare dies, and each worker
(which has the same guard for its own parent, see pool._die_with_parent) then dies too: no orphan writes.
There is no getppid() check: prepare may itself be PID 1 (a container). Had prepare died before the guard was
armed, no worker holds the "alive" pipe yet, so the forkserver sees it close and exits by itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1

if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the pool's own shutdown is all there is
        ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
