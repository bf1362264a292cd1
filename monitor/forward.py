"""Signal recording for the monitor's synchronous main loop.

Handlers record and nothing else. The record is the wakeup pipe: for every delivery the
C-level handler writes the signal number to it (signal.set_wakeup_fd), and the main loop
select()s on its read end. Counting bytes, not Python handler calls, matters: CPython runs
a Python-level handler once per *batch* of pending deliveries of the same signal, so a
second SIGTERM arriving before the first was handled would otherwise be lost, and every
SIGTERM is to be forwarded.
"""

from __future__ import annotations

import os
import select
import signal
from types import FrameType

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)
WATCHED = (*FORWARDED, signal.SIGCHLD)
# Reset to SIG_DFL in the launcher. Python itself ignores SIGPIPE and SIGXFSZ, and ignored
# dispositions survive exec: a launcher started with them ignored would not die of them.
CHILD_DEFAULT_SIGNALS = frozenset(
    s for s in signal.Signals if s not in (signal.SIGKILL, signal.SIGSTOP)
)


def _record(signum: int, frame: FrameType | None) -> None:
    # Deliberately empty: the wakeup fd already holds the record. The handler may run
    # between any two bytecodes of the main loop (even inside the logger's write), so it
    # must not log, do I/O or touch shared state.
    del signum, frame


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class SignalPipe:
    """Install with install(); then wait() returns the signals delivered, in order."""

    def __init__(self) -> None:
        # Non-blocking both ends: the C handler must never block on a full pipe, and
        # draining must stop when empty. CLOEXEC: the launcher must not inherit them.
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def install(self) -> None:
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in WATCHED:
            signal.signal(signum, _record)
        # A parent (container runtime, shell, test harness) may have started us with these
        # blocked; then they would never be delivered at all.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WATCHED)

    def wait(self, timeout: float | None) -> list[int]:
        """Block until a signal arrives or `timeout` seconds pass (None: no limit)."""
        if timeout is not None and timeout < 0:
            timeout = 0.0
        # select() restarts itself after EINTR (PEP 475): a delivered signal makes it
        # return because the wakeup byte made the pipe readable, not because of EINTR.
        select.select([self._read_fd], [], [], timeout)
        return self.drain()

    def drain(self) -> list[int]:
        received: list[int] = []
        while True:
            try:
                data = os.read(self._read_fd, 512)
            except BlockingIOError:
                break
            if not data:
                break
            received.extend(data)
        return received


def ensure_std_fds() -> None:
    """Open /dev/null on any of fds 0-2 that is closed. Otherwise the next pipe we create
    takes that number, and log lines written to "stdout" land in the signal wakeup pipe."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            # open() returns the lowest free descriptor: this one.
            os.open(os.devnull, os.O_RDWR)


def install_signals() -> SignalPipe:
    """The monitor's handlers, the first thing it does: as PID 1 a signal that comes
    before they exist is dropped by the kernel (init ignores what it does not handle).
    The window left is the interpreter's start-up and this module's import."""
    ensure_std_fds()
    signals = SignalPipe()
    signals.install()
    return signals
