"""The child's undertaker: a tiny process that stops a stage's process group when the wrapper dies, however.

Signal forwarding covers Ctrl-C and SIGTERM, but nothing runs in a process killed by SIGKILL (or the OOM
killer), and `accelerate launch` starts its trainer as a grandchild that no parent-death signal reaches. So
`run_child` starts this watchdog first, in a session of its own (the terminal's Ctrl-C does not reach it),
with the read end of a pipe whose write end only the wrapper holds, and the run directory's lock descriptor:

    wrapper --pipe--> watchdog          "<pgid>\\n" once the child started, "done\\n" when the wrapper reaped it

End of file without "done" means the wrapper is gone: the watchdog sends SIGTERM to the group, SIGKILL after
`GRACE_S`, and exits once no process of the group is left. It holds the lock descriptor until then, so the
kernel releases the run directory's lock only when the last process of the stage is gone, not with the wrapper.

Run as `python -m kohya_1to2.launch.watchdog READ_FD`; only the standard library, so it starts in ~20 ms.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

GRACE_S = 2.0
"""SIGTERM to SIGKILL: an orphaned trainer has nobody to report to, so it gets little time."""
GONE_TIMEOUT_S = 30.0
"""How long the watchdog waits, after SIGKILL, for the group to disappear (an unkillable D-state process)."""
POLL_S = 0.05


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` is still running (zombies do not count: they hold nothing)."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: zombies count, the timeout bounds the wait
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after the command name: state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def stop_group(pgid: int, grace: float = GRACE_S, timeout: float = GONE_TIMEOUT_S) -> None:
    """SIGTERM to the group, SIGKILL after `grace`, then wait (up to `timeout`) until none of it runs."""
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, timeout)):
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        if not group_alive(pgid):
            return


def read_lines(fd: int) -> tuple[list[str], bool]:
    """Everything the wrapper writes until it closes the pipe: (lines, whether the pipe ended cleanly)."""
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
        if data.endswith(b"done\n"):
            return data.decode().split(), True
    return data.decode().split(), False


def main(argv: list[str]) -> int:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # it must outlive whatever stops the wrapper
    words, clean = read_lines(int(argv[1]))
    if not clean:
        for word in words:
            if word.isdigit():
                stop_group(int(word))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
