"""Watching QEMU: its pid comes from libvirt's pid file; its exit is noticed through a pidfd
registered with the event loop (no polling delay; KubeVirt checks /proc once a second).

QEMU is not our child (libvirt daemonizes it; the monitor, as subreaper, reaps it), so there
is no wait status; a pidfd becomes readable the moment the process exits, zombie or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from launcher.qemu_identity import is_qemu_comm


def proc_stat(pid: int) -> tuple[str, str] | None:
    """(comm, state) from /proc/<pid>/stat, or None when there is no such process.
    comm may contain spaces and parentheses: split at the last ')'."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    lpar, rpar = raw.find("("), raw.rfind(")")
    if lpar < 0 or rpar < 0:
        return None
    return raw[lpar + 1:rpar], raw[rpar + 2:rpar + 3]


def read_pid(pidfile: str) -> int | None:
    """The live QEMU pid named by libvirt's pid file, or None (no file yet, stale pid,
    recycled pid that is not QEMU, or a zombie)."""
    try:
        with open(pidfile) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    if not text.isdigit():
        return None
    pid = int(text)
    if pid <= 1:
        return None
    stat = proc_stat(pid)
    if stat is None or stat[1] in ("Z", "X") or not is_qemu_comm(stat[0]):
        return None
    return pid


async def wait_exit(pid: int) -> None:
    """Return when process `pid` has exited (or is already gone)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    try:
        # Checked after opening: a process that died (even as an unreaped zombie) between
        # read_pid() and pidfd_open() must not leave us waiting for a readiness that came
        # before we registered; a pidfd of an exited process is readable at once anyway.
        loop.add_reader(fd, readable)
        try:
            await done
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)


def signal_qemu(pid: int, sig: int) -> bool:
    """Signal QEMU by pid: never pid <= 1 (0 is our process group, -1 everything, 1 init),
    and only if it still is QEMU (pid reuse)."""
    if pid <= 1 or pid == os.getpid():
        return False
    stat = proc_stat(pid)
    if stat is None or not is_qemu_comm(stat[0]):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
        return True
    return False
