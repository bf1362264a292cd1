"""A real VM (the test guest under TCG) under the monitor and launcher: notify snapshots,
daemon restarts under a running VM, graceful and forced shutdown, QEMU crash, qemu-timeout."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import grpc
import psutil
import pytest

from launcher._proto.kubevirt.cmd.v1 import cmd_pb2, cmd_pb2_grpc
from launcher.exitcodes import ExitCode
from tests.e2e.guest import (
    BOOT_TO_AGENT_TIMEOUT_S,
    Receiver,
    agent_state,
    define_and_start,
    status,
    with_domain,
)
from tests.e2e.harness import Instance, wait_for

pytestmark = pytest.mark.e2e


def get_domain(sock: str) -> dict[str, Any]:
    """Cmd.GetDomain over the launcher's socket, as virt-handler calls it."""
    with grpc.insecure_channel(f"unix:{sock}") as channel:
        resp = cmd_pb2_grpc.CmdStub(channel).GetDomain(cmd_pb2.EmptyRequest(), timeout=5)
    assert resp.response.success, resp.response.message
    doc: dict[str, Any] = json.loads(resp.domain)
    return doc


def qemu_pid(inst: Instance) -> int:
    with open(inst.paths.qemu_pidfile) as f:
        return int(f.read().strip())


def boot(inst: Instance, receiver: Receiver, **kwargs: Any) -> dict[str, Any]:
    inst.start()
    inst.wait_running()
    define_and_start(inst, **kwargs)
    return receiver.wait_domain(
        lambda e: status(e) == ("Running", "Unknown") and agent_state(e) == "connected",
        BOOT_TO_AGENT_TIMEOUT_S, "Running snapshot with the agent connected")


def test_lifecycle_snapshots_daemon_restart_and_graceful_shutdown(
    make_instance: Callable[..., Instance], receiver_for: Callable[[Instance], Receiver]
) -> None:
    inst = make_instance(nonroot=False, extra_args=["--grace-period-seconds", "60"])
    receiver = receiver_for(inst)
    running = boot(inst, receiver)
    events = receiver.domains()
    assert events[0]["eventType"] == "ADDED", events[0]
    assert {e["eventType"] for e in events} <= {"ADDED", "MODIFIED"}
    dom = running["domain"]
    assert dom["kind"] == "Domain" and dom["ObjectMeta"]["name"] == inst.name
    assert dom["ObjectMeta"]["namespace"] == inst.namespace
    assert dom["Spec"]["Name"] == f"{inst.namespace}_{inst.name}"
    assert "deletionTimestamp" not in dom["ObjectMeta"]

    # Readiness: the command socket was renamed to launcher-sock, private, and answers.
    sock = inst.paths.cmd_socket
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert not os.path.exists(inst.paths.cmd_init_socket)
    got = get_domain(sock)
    assert got["Status"]["Status"] == "Running" and got["ObjectMeta"]["name"] == inst.name

    with_domain(inst, "suspend")
    receiver.wait_domain(lambda e: status(e) == ("Paused", "User"), 10, "Paused snapshot")
    with_domain(inst, "resume")
    receiver.wait_last(lambda e: status(e)[0] == "Running", 10, "Running again")

    # kill -9 the libvirt daemon: the VM keeps running, the launcher reconnects, sends a
    # fresh snapshot, and events flow again.
    pid_before = qemu_pid(inst)
    n_before = len(receiver.domains())
    daemon_pid = inst.daemon_pid(inst.paths.daemon)
    assert daemon_pid is not None
    os.kill(daemon_pid, signal.SIGKILL)
    wait_for(lambda: len(inst.logged("libvirt connected")) >= 2, 15, what="reconnect")
    wait_for(lambda: len(receiver.domains()) > n_before, 15, what="fresh snapshot")
    receiver.wait_last(lambda e: status(e)[0] == "Running", 15, "fresh Running snapshot")
    assert psutil.pid_exists(pid_before) and qemu_pid(inst) == pid_before
    # The restarted daemon re-adopts QEMU; acting before the agent reconnects races it.
    receiver.wait_last(lambda e: agent_state(e) == "connected", 30, "agent back")
    with_domain(inst, "suspend")
    receiver.wait_domain(lambda e: status(e) == ("Paused", "User"), 10, "events resumed")
    with_domain(inst, "resume")
    receiver.wait_last(lambda e: status(e)[0] == "Running", 10, "Running after the restart")

    # SIGTERM: ACPI shutdown well within the grace period, final Shutoff snapshot with
    # deletionTimestamp, clean exit, nothing left.
    t0 = time.monotonic()
    inst.signal(signal.SIGTERM)
    assert inst.wait_exit(timeout=90) == 0, inst.tail()
    elapsed = time.monotonic() - t0
    final = receiver.last_domain()
    assert final is not None
    assert status(final) == ("Shutoff", "Shutdown"), final
    assert final["domain"]["ObjectMeta"]["deletionTimestamp"]
    assert inst.logged("asked the guest to shut down")[0]["via"] == "acpi"
    assert not inst.logged("grace period expired; destroying the domain")
    assert elapsed < 60, elapsed
    receiver.stop()
    wait_for(lambda: not inst.leftovers(), 10, what="no processes left")


def test_guest_ignoring_acpi_is_destroyed_at_the_grace_deadline(
    make_instance: Callable[..., Instance], receiver_for: Callable[[Instance], Receiver]
) -> None:
    grace = 6
    inst = make_instance(nonroot=True, extra_args=["--grace-period-seconds", str(grace)])
    receiver = receiver_for(inst)
    boot(inst, receiver, ignore_acpi=True)
    t0 = time.monotonic()
    inst.signal(signal.SIGTERM)
    assert inst.wait_exit(timeout=90) == 0, inst.tail()
    elapsed = time.monotonic() - t0
    final = receiver.last_domain()
    assert final is not None
    assert status(final) == ("Shutoff", "Destroyed"), final
    assert final["domain"]["ObjectMeta"]["deletionTimestamp"]
    assert inst.logged("grace period expired; destroying the domain")
    assert grace <= elapsed < grace + 20, elapsed
    receiver.stop()
    wait_for(lambda: not inst.leftovers(), 10, what="no processes left")


def test_qemu_killed_is_noticed_at_once_reported_crashed_and_the_launcher_exits(
    make_instance: Callable[..., Instance], receiver_for: Callable[[Instance], Receiver]
) -> None:
    inst = make_instance(nonroot=False)
    receiver = receiver_for(inst)
    boot(inst, receiver)
    pid = qemu_pid(inst)
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    assert inst.wait_exit(timeout=60) == 0, inst.tail()
    noticed = inst.logged("QEMU exited")
    assert noticed and noticed[0]["reason"] == "Crashed", inst.tail()
    noticed_at = datetime.fromisoformat(noticed[0]["timestamp"]).timestamp()
    print(f"QEMU exit noticed after {(noticed_at - killed_at) * 1000:.1f} ms")
    assert noticed_at - killed_at < 0.1
    crashed = receiver.wait_domain(lambda e: status(e) == ("Shutoff", "Crashed"), 5,
                                   "Crashed snapshot")
    assert crashed["domain"]["ObjectMeta"]["deletionTimestamp"]
    k8s = [e for e in receiver.events() if e.get("kind") == "k8s"]
    assert any(e["event"]["reason"] == "QemuCrashed" for e in k8s), k8s
    receiver.stop()
    wait_for(lambda: not inst.leftovers(), 10, what="no processes left")


def test_qemu_timeout_without_a_domain_exits_with_a_diagnosis(
    make_instance: Callable[..., Instance], receiver_for: Callable[[Instance], Receiver]
) -> None:
    inst = make_instance(nonroot=False, extra_args=["--qemu-timeout", "3s"])
    inst.start()
    code = inst.wait_exit(timeout=60)
    assert code == ExitCode.QEMU_TIMEOUT, inst.tail()
    diag = inst.logged("timed out waiting for domain to be defined")
    assert diag, inst.tail()
    d = diag[0]
    assert d["libvirt_daemon_up"] is True and d["libvirt_connected"] is True
    assert d["domains_defined"] == []
    assert d["domain_expected"] == f"{inst.namespace}_{inst.name}"
    assert "daemon_last_lines" in d and "qemu_log_tail" in d
    wait_for(lambda: not inst.leftovers(), 10, what="no processes left")


def test_second_signal_skips_the_rest_of_the_grace_period(
    make_instance: Callable[..., Instance], receiver_for: Callable[[Instance], Receiver]
) -> None:
    inst = make_instance(nonroot=False, extra_args=["--grace-period-seconds", "60"])
    receiver = receiver_for(inst)
    boot(inst, receiver, ignore_acpi=True)
    t0 = time.monotonic()
    inst.signal(signal.SIGTERM)
    wait_for(lambda: inst.logged("asked the guest to shut down"), 10, what="graceful phase")
    inst.signal(signal.SIGTERM)  # the monitor forwards every signal
    assert inst.wait_exit(timeout=60) == 0, inst.tail()
    elapsed = time.monotonic() - t0
    assert inst.logged("second signal; destroying the domain now")
    assert not inst.logged("grace period expired; destroying the domain")
    assert elapsed < 30, elapsed  # far from the 60 s grace period
    final = receiver.last_domain()
    assert final is not None and status(final) == ("Shutoff", "Destroyed"), final
    receiver.stop()
    wait_for(lambda: not inst.leftovers(), 10, what="no processes left")
