"""Helpers for the PID-1 tier: the monitor as PID 1 of its own PID namespace, as it is in a
pod without a shared process namespace (`unshare --pid --fork --mount-proc`), looked at
from the host: host pids of the namespace's processes, their pids inside, zombies, and
commands run inside (`nsenter`)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import psutil

from tests.support.harness import Instance, wait_for

# --fork: the monitor, not unshare, must be PID 1 (unshare itself stays in the host's
# namespace, waits, and exits with the monitor's status). --mount-proc: the monitor scans
# /proc for leftover QEMU and children; it must see its own namespace there.
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]
ZOMBIE_GRACE_S = 0.5  # a zombie is normal until its parent's SIGCHLD wake-up reaps it


def proc_status(pid: int) -> dict[str, str] | None:
    """/proc/PID/status as a dict (None when the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def pid_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        # PermissionError: even root may not look into processes of an outer sandbox
        # (this machine's own PID 1); those are never in a test's namespace.
        return None


def ns_pid(pid: int) -> int | None:
    """The pid of host process `pid` inside its own (innermost) PID namespace."""
    st = proc_status(pid)
    return int(st["NSpid"].split()[-1]) if st is not None else None


def state(pid: int) -> str | None:
    """One-letter state (R, S, D, Z, ...), None when gone."""
    st = proc_status(pid)
    return st["State"].split()[0] if st is not None else None


def alive(pid: int) -> bool:
    """Exists and is not a zombie (a zombie is dead, only not yet reaped)."""
    return state(pid) not in (None, "Z", "X")


def members(ns: str) -> list[int]:
    """Host pids of every process in PID namespace `ns` (zombies included)."""
    return [p for p in psutil.pids() if pid_ns(p) == ns]


def host_pid(ns: str, inner: int) -> int:
    """The host pid of the process that is `inner` inside namespace `ns`."""
    for p in members(ns):
        if ns_pid(p) == inner:
            return p
    raise LookupError(f"no pid {inner} in {ns}")


@dataclass
class Pid1:
    """The monitor of `inst`, started under `unshare`, as seen from the host."""

    inst: Instance
    monitor: int = 0  # host pid
    ns: str = ""

    @classmethod
    def attach(cls, inst: Instance) -> Pid1:
        assert inst.proc is not None and inst.wrapper == UNSHARE
        wrapper = psutil.Process(inst.proc.pid)

        def forked_monitor() -> int | None:
            # unshare's one child; it is the monitor once it has exec'd.
            for child in wrapper.children():
                if any("virt-launcher-monitor" in a for a in child.cmdline()):
                    return child.pid
            return None

        monitor: int = wait_for(forked_monitor, 10, what="the monitor under unshare")
        ns = pid_ns(monitor)
        assert ns is not None and ns != pid_ns(os.getpid()), "not in a new PID namespace"
        return cls(inst, monitor, ns)

    def children(self) -> list[int]:
        """Host pids of the monitor's children (zombies included)."""
        return [c.pid for c in psutil.Process(self.monitor).children()]

    def by_name(self, name: str) -> int:
        """Host pid of the live namespace member whose comm starts with `name`."""
        found = []
        for p in members(self.ns):
            # Short-lived helpers (libvirtd forks some) may vanish while we look.
            with contextlib.suppress(psutil.NoSuchProcess):
                if alive(p) and psutil.Process(p).name().startswith(name):
                    found.append(p)
        assert len(found) == 1, (name, found)
        return found[0]

    def launcher(self) -> int:
        kids = [p for p in self.children() if psutil.Process(p).name() == "virt-launcher"]
        assert len(kids) == 1, kids
        return kids[0]

    def run_inside(self, *argv: str) -> str:
        """Run argv in the monitor's PID and mount namespaces (nsenter forks: the command
        is a process of the namespace whose parent, nsenter, is outside it); its stdout."""
        done = subprocess.run(
            ["nsenter", "--target", str(self.monitor), "--pid", "--mount", "--", *argv],
            capture_output=True, text=True, timeout=10, check=True)
        return done.stdout

    def monitor_records(self, msg: str) -> list[dict[str, object]]:
        return [r for r in self.inst.logged(msg) if r.get("component") == "virt-launcher-monitor"]


@dataclass
class ZombieWatch:
    """Samples the monitor's children; a child seen as a zombie for longer than
    ZOMBIE_GRACE_S was not reaped (a reaper that misses coalesced SIGCHLDs leaves those)."""

    pid1: Pid1
    first_seen: dict[int, float] = field(default_factory=dict)
    lingering: dict[int, float] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)

    def sample(self) -> None:
        now = time.monotonic()
        zombies = set()
        for child in self.pid1.children():
            self.seen.add(child)
            if state(child) == "Z":
                zombies.add(child)
                since = self.first_seen.setdefault(child, now)
                if now - since > ZOMBIE_GRACE_S:
                    self.lingering[child] = now - since
        # A pid that stopped being a zombie was reaped; it may come back as a new process.
        for pid in set(self.first_seen) - zombies:
            del self.first_seen[pid]

    def run(self, seconds: float, interval: float = 0.05) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.sample()
            time.sleep(interval)


def gone(pids: Iterable[int]) -> bool:
    return all(state(p) is None for p in pids)
