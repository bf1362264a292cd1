"""After the launcher exits: dump QEMU's logs, terminate leftover QEMU, then every other
child still attached to the monitor (daemons re-parented to us when the launcher died).

KubeVirt only SIGTERMs a leftover QEMU and gives up after 10 s; here the ladder escalates
to SIGKILL, and orphaned daemons are stopped too, so the pod never exits with a live QEMU
writing to disks another pod may already be using.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable

from launcher.qemu_identity import is_qemu_comm
from monitor import log, procfs
from monitor.procfs import ProcStat

QEMU_TERM_TIMEOUT_S = 10.0  # as KubeVirt waits for QEMU after SIGTERM
QEMU_KILL_TIMEOUT_S = 5.0
CHILD_TERM_TIMEOUT_S = 5.0
CHILD_KILL_TIMEOUT_S = 2.0
POLL_INTERVAL_S = 0.1
CHILD_SWEEP_ROUNDS = 3  # a child may fork while being stopped; bounded, not forever
QEMU_LOG_TAIL_LINES = 200
QEMU_LOG_TAIL_BYTES = 256 * 1024  # read at most this much of a (possibly huge) log

# Blocks at most `timeout` seconds, reaping children and handling signals meanwhile.
WaitFn = Callable[[float], None]


def safe_kill(pid: int, signum: int) -> bool:
    """kill() that refuses pids naming more than one process (0: our process group, -1:
    everything we may signal, -N: group N), PID 1, and ourselves.
    Returns whether the signal was sent."""
    if pid <= 1 or pid == os.getpid():
        log.error("refusing to signal pid", pid=pid, signal=signum)
        return False
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("not permitted to signal process", pid=pid, signal=signum)
        return False
    return True


def _still_there(st: ProcStat) -> bool:
    """Alive, or a zombie of ours not yet reaped. Our own zombies must count: a dead child
    we stop waiting for is never reaped, and becomes init's zombie once we exit."""
    now = procfs.read_stat(st.pid)
    if now is None or now.starttime != st.starttime:
        return False
    return not now.dead or now.ppid == os.getpid()


def _wait_gone(targets: dict[int, ProcStat], timeout: float, wait: WaitFn,
               clock: Callable[[], float]) -> dict[int, ProcStat]:
    deadline = clock() + timeout
    while True:
        targets = {pid: st for pid, st in targets.items() if _still_there(st)}
        remaining = deadline - clock()
        if not targets or remaining <= 0:
            return targets
        wait(min(POLL_INTERVAL_S, remaining))


def terminate_ladder(targets: Iterable[ProcStat], what: str, *, term_timeout: float,
                     kill_timeout: float, wait: WaitFn,
                     clock: Callable[[], float] = time.monotonic) -> list[int]:
    """SIGTERM, wait up to term_timeout, SIGKILL, wait up to kill_timeout.
    Returns the pids still alive at the end (e.g. stuck in uninterruptible sleep)."""
    alive = {st.pid: st for st in targets
             if st.pid > 1 and st.pid != os.getpid() and procfs.same_process_alive(st)}
    if not alive:
        return []
    log.info(f"terminating leftover {what}", pids=sorted(alive),
             comms=[alive[pid].comm for pid in sorted(alive)])
    alive = {pid: st for pid, st in alive.items() if safe_kill(pid, signal.SIGTERM)}
    alive = _wait_gone(alive, term_timeout, wait, clock)
    if not alive:
        return []
    log.warning(f"leftover {what} did not exit {term_timeout:g}s after SIGTERM; sending SIGKILL",
                pids=sorted(alive))
    for pid, st in alive.items():
        # Re-check identity right before the kill: a non-child may have exited and its pid
        # been reused during the wait (our own children's pids cannot be: we reap them).
        if procfs.same_process_alive(st):
            safe_kill(pid, signal.SIGKILL)
    alive = _wait_gone(alive, kill_timeout, wait, clock)
    if alive:
        log.error(f"leftover {what} still alive after SIGKILL", pids=sorted(alive),
                  states=[alive[pid].state for pid in sorted(alive)])
    return sorted(alive)


def _pidfile_pids(pid_dir: str) -> list[int]:
    try:
        names = sorted(os.listdir(pid_dir))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    pids = []
    for name in names:
        if not name.endswith(".pid"):
            continue
        try:
            with open(os.path.join(pid_dir, name), "rb") as f:
                text = f.read(64)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            continue
        try:
            pids.append(int(text.strip() or b"0"))
        except ValueError:
            log.warning("ignoring malformed QEMU pid file", file=name)
    return pids


def find_leftover_qemu(pid_dir: str, own_pid: int, proc: str = procfs.PROC) -> list[ProcStat]:
    """Live QEMU processes to stop: our children; those named by libvirt's pid files (only
    if the pid still names a QEMU: a stale file's pid may be reused by anything); and,
    when we are PID 1 of a pid namespace, every QEMU we can see (all of it is our pod's)."""
    found: dict[int, ProcStat] = {}
    for st in procfs.scan(proc):
        if st.dead or not is_qemu_comm(st.comm):
            continue
        if own_pid in (st.ppid, 1):
            found[st.pid] = st
    for pid in _pidfile_pids(pid_dir):
        listed = procfs.read_stat(pid, proc)
        if listed is not None and not listed.dead and is_qemu_comm(listed.comm):
            found[pid] = listed
    return [found[pid] for pid in sorted(found) if pid > 1 and pid != own_pid]


def find_children(own_pid: int, proc: str = procfs.PROC) -> list[ProcStat]:
    return [st for st in procfs.scan(proc)
            if st.ppid == own_pid and not st.dead and st.pid != own_pid]


def stop_leftover_qemu(pid_dir: str, wait: WaitFn) -> list[int]:
    qemus = find_leftover_qemu(pid_dir, os.getpid())
    return terminate_ladder(qemus, "QEMU", term_timeout=QEMU_TERM_TIMEOUT_S,
                            kill_timeout=QEMU_KILL_TIMEOUT_S, wait=wait)


def stop_children(wait: WaitFn) -> list[int]:
    survivors: list[int] = []
    for _ in range(CHILD_SWEEP_ROUNDS):
        children = [st for st in find_children(os.getpid()) if st.pid not in survivors]
        if not children:
            break
        survivors += terminate_ladder(children, "child processes",
                                      term_timeout=CHILD_TERM_TIMEOUT_S,
                                      kill_timeout=CHILD_KILL_TIMEOUT_S, wait=wait)
    return survivors


def _tail_lines(path: str, max_lines: int, max_bytes: int) -> list[str]:
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        start = max(0, size - max_bytes)
        f.seek(start)
        data = f.read(max_bytes)
    lines = data.splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # began mid-line
    return [line.decode("utf-8", "replace") for line in lines[-max_lines:]]


def dump_qemu_logs(log_dir: str) -> None:
    """Copy the tail of every QEMU log into the monitor's log: after the pod is gone these
    files are too, and they hold QEMU's last words (why it failed to start, or died)."""
    try:
        names = sorted(n for n in os.listdir(log_dir) if n.endswith(".log"))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        log.debug("no QEMU log directory", dir=log_dir)
        return
    for name in names:
        path = os.path.join(log_dir, name)
        try:
            lines = _tail_lines(path, QEMU_LOG_TAIL_LINES, QEMU_LOG_TAIL_BYTES)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            log.warning("cannot read QEMU log", file=name, error=str(exc))
            continue
        log.info("QEMU log", file=name, lines=len(lines))
        for line in lines:
            log.info(line, source="qemu-log", file=name)
