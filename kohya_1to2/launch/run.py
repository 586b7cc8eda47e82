"""Run one stage's child process: stream its output to the terminal and the log, forward signals, no orphans.

The child starts in its own process group (accelerate and its worker share it); SIGINT/SIGTERM to the
wrapper are forwarded to the whole group, the wrapper waits, escalates to SIGKILL after a timeout, and
reports `Interrupted` (exit 130). A SIGKILL of the wrapper runs none of that: the watchdog (watchdog.py),
started before the child, then stops the group and holds the run directory's lock until it is gone.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

from kohya_1to2.errors import Interrupted
from kohya_1to2.launch import watchdog

KILL_TIMEOUT_S = 20.0
TAIL_LINES = 30

LineCheck = Callable[[str], str | None]
"""Called with each complete output line; a returned message stops the child (e.g. a bad weights report)."""


@dataclass
class ChildResult:
    """How the child ended: its exit code, the reason we stopped it (if we did) and the last lines."""

    returncode: int
    stopped_because: str | None
    tail: list[str]


class _Tee:
    """Split the byte stream into lines (tqdm uses \\r) for checks and the tail, while passing bytes through."""

    def __init__(self, sinks: list[IO[bytes]], check: LineCheck | None) -> None:
        self.sinks = sinks
        self.check = check
        self.partial = b""
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.problem: str | None = None

    def feed(self, chunk: bytes) -> None:
        for sink in self.sinks:
            sink.write(chunk)
            sink.flush()
        self.partial += chunk
        *lines, self.partial = self.partial.replace(b"\r", b"\n").split(b"\n")
        for raw in lines:
            self._line(raw)

    def close(self) -> None:
        if self.partial:
            self._line(self.partial)
            self.partial = b""

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip()
        if not line:
            return
        self.tail.append(line)
        if self.check is not None and self.problem is None:
            self.problem = self.check(line)


@contextmanager
def _forward_signals(proc: subprocess.Popen[bytes], kill_timeout: float) -> Iterator[list[int]]:
    """While the child runs, SIGINT/SIGTERM go to its process group; SIGKILL follows after a timeout."""
    received: list[int] = []
    timers: list[threading.Timer] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        _signal_group(proc, signum)
        if not timers:
            timer = threading.Timer(kill_timeout, _signal_group, args=(proc, signal.SIGKILL))
            timer.daemon = True
            timer.start()
            timers.append(timer)

    in_main = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, forward)
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for timer in timers:
            timer.cancel()


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    if proc.poll() is not None and signum != signal.SIGKILL:
        return
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def stop_group(proc: subprocess.Popen[bytes], kill_timeout: float) -> None:
    """Terminate the child's whole group, escalating to SIGKILL; always reap the child."""
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=kill_timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
    _signal_group(proc, signal.SIGKILL)  # stragglers that ignored SIGTERM but left the leader


@contextmanager
def _watchdog(hold: tuple[int, ...]) -> Iterator[Callable[[int], None]]:
    """A watchdog for the block's child: yields `watch(pgid)`; on a normal exit the watchdog is told "done".

    Started before the child, so no moment exists where the child runs unwatched but for the instant
    between its start and `watch`. The pipe's write end is not inheritable: only this process holds it.
    """
    read_end, write_end = os.pipe()
    try:
        dog = subprocess.Popen([sys.executable, "-S", watchdog.__file__, str(read_end)], pass_fds=(read_end, *hold),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    finally:
        os.close(read_end)

    def watch(pgid: int) -> None:
        os.write(write_end, f"{pgid}\n".encode())

    try:
        yield watch
    finally:
        with suppress(OSError):
            os.write(write_end, b"done\n")
        os.close(write_end)
        try:
            dog.wait(timeout=10)
        except subprocess.TimeoutExpired:
            dog.kill()
            dog.wait()


def run_child(
    argv: list[str] | tuple[str, ...],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    check: LineCheck | None = None,
    echo: IO[bytes] | None = None,
    kill_timeout: float = KILL_TIMEOUT_S,
    header: str = "",
    hold: tuple[int, ...] = (),
) -> ChildResult:
    """Run `argv` to completion, teeing output to `echo` (default: our stdout) and `log_path`.

    `hold`: descriptors (the run directory's lock) the watchdog keeps open until the child's group is gone.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = echo if echo is not None else sys.stdout.buffer
    with log_path.open("wb") as log, _watchdog(hold) as guard:
        if header:
            log.write(header.encode("utf-8"))
            log.flush()
        tee = _Tee([out, log], check)
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        guard(proc.pid)
        stream = proc.stdout
        assert isinstance(stream, io.BufferedReader)
        stopped: str | None = None
        with _forward_signals(proc, kill_timeout) as received:
            try:
                while chunk := stream.read1(65536):
                    tee.feed(chunk)
                    if tee.problem and stopped is None:
                        stopped = tee.problem
                        stop_group(proc, kill_timeout)
            finally:
                tee.close()
                if proc.poll() is None:
                    stop_group(proc, kill_timeout)
                proc.wait()
                _signal_group(proc, signal.SIGKILL)  # no member of the group outlives the stage
        if received:
            name = signal.Signals(received[0]).name
            log.write(f"\n[kohya-1to2] stopped by {name}\n".encode())
            raise Interrupted(
                f"interrupted by {name}; the child process group was stopped (log: {log_path})",
                hint="re-run `launch`; a completed stage is skipped",
            )
        return ChildResult(proc.returncode, stopped, list(tee.tail))
