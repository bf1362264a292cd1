"""Fault injection for the e2e fault table (tests/e2e/test_faults.py): reach a moment of a
VM's life by waiting for the log line or event that marks it, kill -9 (or SIGSTOP) one
component there, and check what must hold afterwards.

Moments are found by events, never by sleeping; the random part is only a small extra
delay inside the moment's window, drawn from a seeded RNG whose seed is printed, so a
failure reproduces with PVL_FAULT_SEED=<seed>.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from launcher._proto.kubevirt.cmd.v1 import cmd_pb2
from tests.support import guest
from tests.support.guest import Receiver, agent_state, status
from tests.support.harness import Instance, socket_accepts, wait_for

SEED_ENV = "PVL_FAULT_SEED"
_BASE_SEED = int(os.environ.get(SEED_ENV, "0") or "0") or random.SystemRandom().randrange(
    1, 2**31)


def case_rng(case_id: str) -> tuple[random.Random, int]:
    """The case's RNG and its seed: the session's base seed (PVL_FAULT_SEED, else random)
    mixed with the case id, so each case draws its own moments and any failure is
    reproduced by setting PVL_FAULT_SEED to the base seed printed with it."""
    seed = _BASE_SEED ^ zlib.crc32(case_id.encode())
    return random.Random(seed), _BASE_SEED


class LogTail:
    """The instance's JSON log (monitor, launcher and daemon lines), read incrementally."""

    def __init__(self, inst: Instance) -> None:
        self.inst = inst
        self.records: list[dict[str, Any]] = []
        self._pos = 0
        self._partial = b""

    def poll(self) -> list[dict[str, Any]]:
        try:
            with open(self.inst.log_path, "rb") as f:
                f.seek(self._pos)
                data = f.read()
        except FileNotFoundError:
            return self.records
        self._pos += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if isinstance(rec, dict):
                    self.records.append(rec)
        return self.records

    def wait(self, msg: str, timeout: float, *, start: int = 0,
             pred: Callable[[dict[str, Any]], bool] = lambda _r: True) -> dict[str, Any]:
        """The first record with `msg` (and `pred`) at index >= start; fails early if the
        monitor exited meanwhile."""
        def found() -> dict[str, Any] | None:
            for rec in self.poll()[start:]:
                if rec.get("msg") == msg and pred(rec):
                    return rec
            proc = self.inst.proc
            if proc is not None and proc.poll() is not None:
                # one last read: the line may have been written just before the exit
                for rec in self.poll()[start:]:
                    if rec.get("msg") == msg and pred(rec):
                        return rec
                raise AssertionError(f"monitor exited ({proc.returncode}) before "
                                     f"{msg!r} was logged")
            return None
        rec: dict[str, Any] = wait_for(found, timeout, interval=0.01, what=f"log {msg!r}")
        return rec

    def count(self, msg: str) -> int:
        return sum(1 for r in self.poll() if r.get("msg") == msg)


class Cmd(guest.Cmd):
    """The command API, plus what the fault cases ask of it."""

    def ping(self, timeout: float = 5) -> bool:
        return bool(self.stub.Ping(cmd_pb2.EmptyRequest(), timeout=timeout).success)

    def domain_status(self) -> tuple[str, str]:
        st = self.domain()["Status"]
        return st["Status"], st["Reason"]

    def exec_retrying(self, command: str, *args: str, within_s: float = 30,
                      timeout_s: int = 10) -> tuple[cmd_pb2.ExecResponse, int]:
        """Exec, retried while the agent is transiently unresponsive (UNAVAILABLE: a
        loaded TCG guest's qemu-ga can miss libvirt's 5 s guest-sync right after boot);
        the answer and how many attempts failed."""
        deadline = time.monotonic() + within_s
        failed = 0
        while True:
            try:
                return self.exec(command, *args, timeout_s=timeout_s), failed
            except grpc.RpcError as exc:
                if (exc.code() != grpc.StatusCode.UNAVAILABLE
                        or time.monotonic() > deadline):
                    raise
                failed += 1
                time.sleep(0.5)

    def guest_ping(self, timeout_s: int = 3) -> bool:
        try:
            self.stub.GuestPing(cmd_pb2.GuestPingRequest(
                domainName=f"{self.namespace}_{self.name}",
                timeoutSeconds=timeout_s), timeout=timeout_s + 10)
        except grpc.RpcError:
            return False
        return True


@dataclass
class Background:
    """A blocking call on a thread: its result or exception, and when it ended."""

    fn: Callable[[], Any]
    result: Any = None
    error: BaseException | None = None
    ended_at: float | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Background:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed to the test
            self.error = exc
        finally:
            self.ended_at = time.monotonic()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"call still running after {timeout}s"


def agent_fsfreeze_status(inst: Instance, timeout_s: int = 5) -> str:
    """guest-fsfreeze-status asked of the guest agent directly (our own libvirt
    connection, not the launcher's cache): "frozen", "thawed", or "error: <why>"."""
    import libvirt  # noqa: PLC0415 - only the e2e tests need it
    import libvirt_qemu  # noqa: PLC0415

    try:
        conn = libvirt.open(inst.paths.uri)
    except libvirt.libvirtError as exc:
        return f"error: {exc}"
    try:
        dom = conn.lookupByName(f"{inst.namespace}_{inst.name}")
        answer = libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-fsfreeze-status"}',
                                               timeout_s, 0)
        return str(json.loads(answer)["return"])
    except libvirt.libvirtError as exc:
        return f"error: {exc}"
    finally:
        conn.close()


def wait_fsfreeze(inst: Instance, want: tuple[str, ...], timeout: float) -> str:
    """Until the agent reports one of `want`; fails with the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        got = agent_fsfreeze_status(inst)
        if got in want:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"fsfreeze status {got!r} after {timeout}s, want {want}")
        time.sleep(0.5)


def libvirt_state(inst: Instance) -> str:
    """`virsh domstate --reason` of our domain, e.g. "running (booted)"."""
    out = inst.virsh("domstate", "--reason", f"{inst.namespace}_{inst.name}")
    return out.stdout.strip() if out.returncode == 0 else f"error: {out.stderr.strip()}"


def qemu_pid(inst: Instance) -> int | None:
    try:
        with open(inst.paths.qemu_pidfile) as f:
            return int(f.read().strip())
    except (FileNotFoundError, ValueError):
        return None


def sigkill(pid: int) -> None:
    assert pid > 1
    os.kill(pid, signal.SIGKILL)


def restart_receiver(receiver: Receiver) -> None:
    """A new virt-launcher-events on the same socket (it removes the stale one); ready when
    the socket accepts connections."""
    receiver.proc = None
    receiver.start()
    sock = receiver.inst.paths.notify_socket
    wait_for(lambda: socket_accepts(sock), 10, what="restarted receiver accepting")


def snapshots_after(receiver: Receiver, t_wall: float) -> list[dict[str, Any]]:
    return [e for e in receiver.domains() if e.get("received_at", 0) >= t_wall]


def running_with_agent(e: dict[str, Any]) -> bool:
    return status(e) == ("Running", "Unknown") and agent_state(e) == "connected"
