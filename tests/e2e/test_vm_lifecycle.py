"""A real VM (the test guest under TCG) under the monitor and launcher: notify snapshots,
daemon restarts under a running VM, graceful and forced shutdown, QEMU crash, a guest's own
poweroff, qemu-timeout. A virt-handler stand-in (launcher.notify.handler_standin) drives the end of
life over the command socket as virt-handler does, and every snapshot sequence is judged by
tests/support/virt_handler.py: what virt-handler's code would conclude from it."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from collections.abc import Callable
from datetime import datetime

import grpc
import psutil
import pytest

from launcher._proto.kubevirt.cmd.v1 import cmd_pb2, cmd_pb2_grpc
from launcher.exitcodes import ExitCode
from tests.support.guest import (
    Cmd,
    Receiver,
    agent_state,
    boot,
    domain_xml,
    get_domain,
    qemu_pid,
    status,
    with_domain,
)
from tests.support.harness import Instance, wait_for
from tests.support.virt_handler import VirtHandlerView, replay

pytestmark = pytest.mark.e2e


class QemuGone:
    """When QEMU's process vanished (polled every 5 ms), to check no snapshot said
    "deleted" while it ran."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.at: float | None = None
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while psutil.pid_exists(self.pid) and psutil.Process(self.pid).status() != \
                psutil.STATUS_ZOMBIE:
            time.sleep(0.005)
        self.at = time.time()


def judged(receiver: Receiver, qemu: QemuGone) -> VirtHandlerView:
    """virt-handler's view of every snapshot, checking on the way that none said "deleted"
    before QEMU was gone, and that a deletion is never taken back."""
    events = receiver.domains()
    view = replay([e["domain"] for e in events])
    deleted = [i for i, v in enumerate(view.verdicts) if not v.exists]
    if deleted:
        first = deleted[0]
        assert qemu.at is not None and events[first]["received_at"] >= qemu.at, \
            (view.verdicts[first], qemu.at)
        assert all(not v.exists for v in view.verdicts[first:]), view.verdicts[first:]
        # virt-handler saw the final state before the deletion
        assert first > 0 and not view.verdicts[first - 1].alive, view.verdicts[:first]
    return view


def test_lifecycle_snapshots_daemon_restart_and_graceful_shutdown(
    make_instance: Callable[..., Instance], receiver_for: Callable[..., Receiver]
) -> None:
    inst = make_instance(nonroot=False, extra_args=["--grace-period-seconds", "60"])
    receiver = receiver_for(inst, virt_handler=True)
    running = boot(inst, receiver)
    events = receiver.domains()
    # KubeVirt's event flow: ADDED for the new definition (Shutoff/Unknown, not yet
    # started), then the started states.
    assert events[0]["eventType"] == "ADDED", events[0]
    assert status(events[0]) == ("Shutoff", "Unknown"), events[0]
    assert {e["eventType"] for e in events} <= {"ADDED", "MODIFIED"}
    dom = running["domain"]
    assert dom["kind"] == "Domain" and dom["ObjectMeta"]["name"] == inst.name
    assert dom["ObjectMeta"]["namespace"] == inst.namespace
    assert dom["Spec"]["Name"] == f"{inst.namespace}_{inst.name}"
    assert "deletionTimestamp" not in dom["ObjectMeta"]
    qemu = QemuGone(qemu_pid(inst))
    view = judged(receiver, qemu)
    assert view.verdicts[0].action == "defer"  # Shutoff/Unknown: it may still be starting
    assert view.phase == "Running" and view.verdicts[-1].exists, view.verdicts

    # Readiness: the command socket was renamed to launcher-sock, private, and answers.
    sock = inst.paths.cmd_socket
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert not os.path.exists(inst.paths.cmd_init_socket)
    got = get_domain(sock)
    assert got["Status"]["Status"] == "Running" and got["ObjectMeta"]["name"] == inst.name
    with grpc.insecure_channel(f"unix:{sock}") as channel:
        stats = cmd_pb2_grpc.CmdStub(channel).GetDomainStats(cmd_pb2.EmptyRequest(),
                                                             timeout=10)
    doc = json.loads(stats.domainStats)
    # KubeVirt's GetVcpuPinInfo: one row of host CPUs per vCPU
    assert doc["CPUMapSet"] is True and len(doc["CPUMap"]) == 1, doc
    assert len(doc["CPUMap"][0]) == os.cpu_count() and any(doc["CPUMap"][0]), doc

    with_domain(inst, "suspend")
    receiver.wait_domain(lambda e: status(e) == ("Paused", "User"), 10, "Paused snapshot")
    # GuestPing on a paused domain fails with libvirt's own error (the guest agent
    # readiness probe relies on it), and says so in a Warning event.
    with grpc.insecure_channel(f"unix:{sock}") as channel, \
            pytest.raises(grpc.RpcError) as failed:
        cmd_pb2_grpc.CmdStub(channel).GuestPing(cmd_pb2.GuestPingRequest(
            domainName=f"{inst.namespace}_{inst.name}", timeoutSeconds=2), timeout=10)
    assert "domain is not running" in (failed.value.details() or ""), failed.value
    wait_for(lambda: any(e.get("kind") == "k8s" and e["event"]["reason"] ==
                         "GuestAgentPingFailed" for e in receiver.events()), 10,
             what="GuestAgentPingFailed event")
    assert judged(receiver, qemu).phase == "Running"
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
    receiver.wait_last(lambda e: agent_state(e) == "connected", 60, "agent back")
    with_domain(inst, "suspend")
    receiver.wait_domain(lambda e: status(e) == ("Paused", "User"), 10, "events resumed")
    with_domain(inst, "resume")
    receiver.wait_last(lambda e: status(e)[0] == "Running", 10, "Running after the restart")
    view = judged(receiver, qemu)
    assert view.phase == "Running" and not any(v.graceful_shutdown for v in view.verdicts)

    # SIGTERM: the domain is marked for graceful shutdown at once (virt-handler's cue), it
    # stays "existing" while QEMU runs; virt-handler's Shutdown and our own ACPI press
    # stop the guest; Shutoff/Shutdown (the VMI Succeeded); virt-handler deletes it; the
    # launcher was still there for that, then exits 0.
    n_before = len(receiver.domains())
    t0 = time.time()
    inst.signal(signal.SIGTERM)
    marked = receiver.wait_domain(
        lambda e: bool(e["domain"]["Spec"].get("Metadata", {}).get("KubeVirt", {})
                       .get("GracePeriod", {}).get("MarkedForGracefulShutdown")),
        10, "snapshot marked for graceful shutdown")
    print(f"graceful-shutdown mark received {marked['received_at'] - t0:.3f} s after SIGTERM")
    assert marked["received_at"] - t0 < 2.0
    assert status(marked)[0] == "Running" and "deletionTimestamp" not in \
        marked["domain"]["ObjectMeta"]
    assert inst.wait_exit(timeout=90) == 0, inst.tail()
    elapsed = time.time() - t0
    view = judged(receiver, qemu)
    after = view.verdicts[n_before:]
    assert any(v.graceful_shutdown and v.alive and v.action == "shutdown" for v in after)
    assert view.phase == "Succeeded", view.verdicts[n_before:]
    assert not view.verdicts[-1].exists
    stopped = [e for e in receiver.domains() if status(e)[0] == "Shutoff"
               and status(e)[1] != "Unknown"]  # not the new definition
    assert stopped and status(stopped[0]) == ("Shutoff", "Shutdown"), stopped
    calls = receiver.handler_calls()
    assert any(c["action"] == "Shutdown" and c["success"] for c in calls), calls
    deletes = [c for c in calls if c["action"] == "Delete"]
    assert deletes and deletes[0]["success"], calls  # the launcher was still serving
    assert not any(c["action"] == "Kill" for c in calls), calls
    assert inst.logged("asked the guest to shut down")[0]["via"] == "acpi"
    assert not inst.logged("grace period expired; destroying the domain")
    assert inst.logged("domain deleted")
    assert elapsed < 60, elapsed
    receiver.stop()
    wait_for(lambda: not inst.leftovers(), 10, what="no processes left")


def test_guest_ignoring_acpi_is_destroyed_at_the_grace_deadline(
    make_instance: Callable[..., Instance], receiver_for: Callable[..., Receiver]
) -> None:
    grace = 6
    inst = make_instance(nonroot=True, extra_args=["--grace-period-seconds", str(grace)])
    receiver = receiver_for(inst, virt_handler=True)
    boot(inst, receiver, ignore_acpi=True)
    qemu = QemuGone(qemu_pid(inst))
    t0 = time.monotonic()
    inst.signal(signal.SIGTERM)
    assert inst.wait_exit(timeout=90) == 0, inst.tail()
    elapsed = time.monotonic() - t0
    view = judged(receiver, qemu)
    stopped = [e for e in receiver.domains() if status(e)[0] == "Shutoff"
               and status(e)[1] != "Unknown"]  # not the new definition
    assert stopped and status(stopped[0]) == ("Shutoff", "Destroyed"), stopped
    # ACPI was there and did not stop the guest within the grace period: virt-handler
    # calls that a failure.
    assert view.phase == "Failed" and not view.verdicts[-1].exists, view.verdicts
    assert any(v.graceful_shutdown and v.alive for v in view.verdicts)
    calls = receiver.handler_calls()
    assert [c["action"] for c in calls if c["success"]][:1] == ["Shutdown"], calls
    assert any(c["action"] == "Delete" and c["success"] for c in calls), calls
    # Either side may destroy first at the deadline (virt-handler's Kill, or our own).
    assert any(c["action"] == "Kill" for c in calls) or \
        inst.logged("grace period expired; destroying the domain"), calls
    # virt-handler's Kill counts the grace period from GracePeriod.DeletionTimestamp, whole
    # seconds on the wire (metav1.Time), so it may come up to 1 s before SIGTERM + grace.
    assert grace - 1 <= elapsed < grace + 20, elapsed
    receiver.stop()
    wait_for(lambda: not inst.leftovers(), 10, what="no processes left")


def test_qemu_killed_is_noticed_at_once_reported_crashed_and_the_launcher_exits(
    make_instance: Callable[..., Instance], receiver_for: Callable[..., Receiver]
) -> None:
    inst = make_instance(nonroot=False)
    receiver = receiver_for(inst, virt_handler=True)
    boot(inst, receiver)
    pid = qemu_pid(inst)
    qemu = QemuGone(pid)
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
    # Crashed, not yet deleted: the reason reaches virt-handler's phase rule.
    assert "deletionTimestamp" not in crashed["domain"]["ObjectMeta"]
    view = judged(receiver, qemu)
    assert view.phase == "Failed" and not view.verdicts[-1].exists, view.verdicts
    k8s = [e for e in receiver.events() if e.get("kind") == "k8s"]
    assert any(e["event"]["reason"] == "QemuCrashed" for e in k8s), k8s
    assert any(c["action"] == "Delete" and c["success"] for c in receiver.handler_calls())
    receiver.stop()
    wait_for(lambda: not inst.leftovers(), 10, what="no processes left")


def test_guest_poweroff_waits_for_the_delete_then_exits(
    make_instance: Callable[..., Instance], receiver_for: Callable[..., Receiver]
) -> None:
    # No virt-handler stand-in: the test plays virt-handler's Delete itself, late.
    inst = make_instance(nonroot=False)
    receiver = receiver_for(inst)
    boot(inst, receiver)
    qemu = QemuGone(qemu_pid(inst))
    resp = Cmd.of(inst).exec("/bin/sh", "-c", "(sleep 1; poweroff) >/dev/null 2>&1 &")
    assert resp.response.success, resp.response.message
    receiver.wait_domain(lambda e: status(e) == ("Shutoff", "Shutdown"), 60,
                         "Shutoff/Shutdown after the guest's own poweroff")
    view = judged(receiver, qemu)
    assert view.phase == "Succeeded" and view.verdicts[-1].exists, view.verdicts
    assert view.verdicts[-1].action == "delete"
    # The launcher stays: virt-handler's Delete must find it (KubeVirt's
    # waitForFinalNotify), and nothing says "deleted" before it.
    wait_for(lambda: inst.logged("waiting for the domain to be deleted"), 10,
             what="the launcher waiting for virt-handler's Delete")
    assert inst.proc is not None and inst.proc.poll() is None, inst.tail()
    assert os.path.exists(inst.paths.cmd_socket)
    last = receiver.last_domain()
    assert last is not None and "deletionTimestamp" not in last["domain"]["ObjectMeta"]
    assert Cmd.of(inst).vmi_call("DeleteVirtualMachine").success
    assert inst.wait_exit(timeout=30) == 0, inst.tail()
    view = judged(receiver, qemu)
    assert view.phase == "Succeeded" and not view.verdicts[-1].exists
    assert status(receiver.domains()[-1]) == ("NoState", "NonExistent")
    receiver.stop()
    wait_for(lambda: not inst.leftovers(), 10, what="no processes left")


def test_qemu_timeout_without_a_domain_exits_with_a_diagnosis(
    make_instance: Callable[..., Instance], receiver_for: Callable[..., Receiver]
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


def test_qemu_timeout_tears_down_in_order(
    make_instance: Callable[..., Instance], receiver_for: Callable[..., Receiver]
) -> None:
    """A domain defined but never started: the timeout ends the launcher through the same
    teardown as a signal, the last snapshots delivered and the command server stopped
    before the daemons. (The timeout used to fail a task of the TaskGroup, which stopped
    the daemons at once, in parallel with the teardown.)"""
    import libvirt  # noqa: PLC0415 - only the e2e tests need it

    inst = make_instance(nonroot=False, extra_args=["--qemu-timeout", "6s"])
    receiver = receiver_for(inst)
    inst.start()
    inst.wait_running()
    conn = libvirt.open(inst.paths.uri)
    try:
        conn.defineXML(domain_xml(inst))
    finally:
        conn.close()
    assert inst.wait_exit(timeout=60) == ExitCode.QEMU_TIMEOUT, inst.tail()
    assert inst.logged("timed out waiting for the domain to start (no QEMU process)")
    added = receiver.wait_domain(lambda e: e["eventType"] == "ADDED", 5, "the definition")
    assert status(added) == ("Shutoff", "Unknown")
    msgs = [r.get("msg") for r in inst.log_records()]
    assert msgs.index("stopping") < msgs.index("command server stopped") \
        < msgs.index("stopping daemon"), [m for m in msgs if "stop" in str(m)]
    receiver.stop()  # ours; it references the runtime root too
    wait_for(lambda: not inst.leftovers(), 10, what="no processes left")


def test_second_signal_skips_the_rest_of_the_grace_period(
    make_instance: Callable[..., Instance], receiver_for: Callable[..., Receiver]
) -> None:
    inst = make_instance(nonroot=False, extra_args=["--grace-period-seconds", "60"])
    receiver = receiver_for(inst, virt_handler=True)
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
    stopped = [e for e in receiver.domains() if status(e)[0] == "Shutoff"
               and status(e)[1] != "Unknown"]  # not the new definition
    assert stopped and status(stopped[0]) == ("Shutoff", "Destroyed"), stopped
    assert status(receiver.domains()[-1]) == ("NoState", "NonExistent")
    receiver.stop()
    wait_for(lambda: not inst.leftovers(), 10, what="no processes left")
