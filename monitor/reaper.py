"""Reaping every child, including orphans re-parented to us (PID 1 or subreaper)."""

from __future__ import annotations

import os

from monitor import log
from monitor.exitcodes import code_from_wait_status
from monitor.forward import signal_name


def reap_all() -> list[tuple[int, int]]:
    """waitpid(-1, WNOHANG) until nothing is left: one SIGCHLD may stand for many exits
    (standard signals coalesce), so reaping one child per signal leaves zombies."""
    reaped: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        reaped.append((pid, status))
    return reaped


def describe(status: int) -> dict[str, log.Value]:
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        return {"signal": signal_name(signum), "exit_code": code_from_wait_status(status)}
    return {"exit_code": code_from_wait_status(status)}


class Reaper:
    """Reaps everything; keeps the statuses of the pids it was asked to watch."""

    def __init__(self) -> None:
        self._watched: set[int] = set()
        self.exited: dict[int, int] = {}

    def watch(self, pid: int) -> None:
        self._watched.add(pid)

    def reap(self) -> list[int]:
        """Reap all exited children; returns their pids."""
        pids = []
        for pid, status in reap_all():
            pids.append(pid)
            # Match the pid before reading the status: an orphan's exit must never be
            # mistaken for the launcher's.
            if pid in self._watched:
                self._watched.discard(pid)
                self.exited[pid] = status
            else:
                # Orphans re-parented to us: libvirtd's helpers, daemonized QEMU, ...
                log.debug("reaped process", pid=pid, **describe(status))
        return pids
