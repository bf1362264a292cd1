"""The guest agent cache, the command API and virt-freezer against a real VM (the test
guest with qemu-ga, its ext4 data disk mounted, a NIC with a static address)."""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from launcher._proto.kubevirt.cmd.v1 import cmd_pb2
from tests.e2e.contract_client import ContractClient
from tests.support.guest import BOOT_TO_AGENT_TIMEOUT_S, Cmd, Receiver, agent_state, boot, status
from tests.support.guestvm import GUEST_IP, GUEST_MAC
from tests.support.harness import VENV_BIN, Instance, wait_for

pytestmark = pytest.mark.e2e


def freezer(inst: Instance, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "virt-freezer"), "--name", inst.name, "--namespace", inst.namespace,
         "--socket", inst.paths.cmd_socket, *args],
        capture_output=True, text=True, timeout=120, check=False)


def fs_status(cmd: Cmd) -> str:
    value: str = cmd.guest_info().get("fsFreezeStatus", "")
    return value


def test_agent_cache_freeze_exec_and_a_contract_only_client(
    make_instance: Callable[..., Instance], receiver_for: Callable[..., Receiver]
) -> None:
    inst = make_instance(nonroot=False)
    receiver = receiver_for(inst, virt_handler=True)  # it ends the VM on SIGTERM
    boot(inst, receiver, nic=True)
    cmd = Cmd.of(inst)

    # The cache fills from the agent: OS, hostname, filesystems; interfaces in the domain.
    # fsInfo is always present (disks null until the agent lists one), and the first fsinfo
    # poll can run before the guest's init has mounted /mnt/data: wait for that mount.
    def filled() -> dict[str, Any] | None:
        info = cmd.guest_info()
        mounts = [d.get("mountPoint") for d in info.get("fsInfo", {}).get("disks") or []]
        return info if info.get("guestAgentVersion") and info.get("hostname") \
            and "/mnt/data" in mounts else None
    info = wait_for(filled, 90, interval=0.2, what="agent data with /mnt/data in the cache")
    assert info["hostname"] == "testguest"
    assert info["os"]["id"] == "pvlguest" and info["os"]["name"] == "PVL Test Guest"
    disks = info["fsInfo"]["disks"]
    assert any(d["mountPoint"] == "/mnt/data" and d["fileSystemType"] == "ext4" for d in disks)
    assert info["fsFreezeStatus"] == "thawed"
    ifaces = wait_for(lambda: cmd.domain()["Status"].get("Interfaces"), 150, interval=0.5,
                      what="interfaces in the domain status")
    eth0 = [i for i in ifaces if i.get("Mac") == GUEST_MAC]
    assert eth0 and eth0[0]["Ip"] == GUEST_IP, ifaces
    assert not any(i.get("InterfaceName") == "lo" for i in ifaces)
    # ... and the notify receiver saw them too
    receiver.wait_domain(lambda e: any(i.get("Ip") == GUEST_IP for i in
                                       e["domain"]["Status"].get("Interfaces") or []),
                         10, "interfaces in a notify snapshot")

    # virt-freezer, as a Velero hook calls it
    r = freezer(inst, "--freeze", "--unfreezeTimeoutSeconds", "300")
    assert r.returncode == 0, r.stdout + r.stderr
    r = freezer(inst, "--status")
    assert r.returncode == 0 and json.loads(r.stdout)["fsFreezeStatus"] == "frozen", r.stdout
    assert fs_status(cmd) == "frozen"
    # a frozen guest: Ping and GetGuestInfo still answer at once, from the cache
    ping_ms = cmd.timed(lambda: cmd.stub.Ping(cmd_pb2.EmptyRequest(), timeout=5))
    info_ms = cmd.timed(cmd.guest_info)
    print(f"frozen: ping p50 {statistics.median(ping_ms):.2f} ms max {max(ping_ms):.2f}; "
          f"guestinfo p50 {statistics.median(info_ms):.2f} ms max {max(info_ms):.2f}")
    assert statistics.median(ping_ms) < 10 and statistics.median(info_ms) < 10
    r = freezer(inst, "--unfreeze")
    assert r.returncode == 0, r.stdout + r.stderr
    assert fs_status(cmd) == "thawed"

    # idempotent and repeatable
    for _ in range(5):
        assert cmd.freeze(0).success
        assert cmd.freeze(0).success  # freeze while frozen
        assert fs_status(cmd) == "frozen"
        assert cmd.vmi_call("UnfreezeVirtualMachine").success
        assert cmd.vmi_call("UnfreezeVirtualMachine").success  # thaw while thawed
        assert fs_status(cmd) == "thawed"

    # automatic thaw after unfreezeTimeoutSeconds
    t0 = time.monotonic()
    assert cmd.freeze(3).success
    assert fs_status(cmd) == "frozen"
    wait_for(lambda: fs_status(cmd) == "thawed", 20, interval=0.2, what="automatic thaw")
    print(f"auto-thaw after {time.monotonic() - t0:.1f}s")
    assert time.monotonic() - t0 >= 3

    # Exec: stdout and exit code; a non-zero exit is not an error
    out = cmd.exec("/bin/cat", "/mnt/data/hello.txt")
    assert out.response.success and out.exitCode == 0 and out.stdOut == "hello\n", out
    out = cmd.exec("/bin/sh", "-c", "echo out; exit 3")
    assert out.response.success and out.exitCode == 3 and out.stdOut == "out\n", out

    # A client that knows only the contract (names, field numbers), not our generated code.
    cc = ContractClient(inst.paths.cmd_socket)
    try:
        assert cc.info_versions() == [1]
        assert cc.ping() == (True, "")
        ok, msg, domain = cc.get_domain()
        assert ok, msg
        assert json.loads(domain)["ObjectMeta"]["name"] == inst.name
        vmi_json = cmd.vmi.vmiJson
        assert cc.freeze(vmi_json, 0) == (True, "")
        assert fs_status(cmd) == "frozen"
        assert cc.unfreeze(vmi_json) == (True, "")
        assert fs_status(cmd) == "thawed"
    finally:
        cc.close()

    # Stop the agent inside the guest: the launcher keeps answering from its cache.
    out = cmd.exec("/bin/sh", "-c", "(sleep 1; kill -STOP $(pidof qemu-ga)) >/dev/null 2>&1 &")
    assert out.response.success, out

    def agent_stopped() -> bool:
        try:
            cmd.stub.GuestPing(cmd_pb2.GuestPingRequest(
                domainName=f"{inst.namespace}_{inst.name}", timeoutSeconds=1), timeout=15)
        except grpc.RpcError:
            return True
        return False

    wait_for(agent_stopped, 30, interval=0.2, what="the guest agent stopped (GuestPing fails)")
    ping_ms = cmd.timed(lambda: cmd.stub.Ping(cmd_pb2.EmptyRequest(), timeout=5))
    info_ms = cmd.timed(cmd.guest_info)
    print(f"agent stopped: ping p50 {statistics.median(ping_ms):.2f} ms; "
          f"guestinfo p50 {statistics.median(info_ms):.2f} ms")
    assert statistics.median(ping_ms) < 10 and statistics.median(info_ms) < 10
    assert cmd.guest_info()["hostname"] == "testguest"

    cmd.channel.close()
    inst.signal()
    assert inst.wait_exit(timeout=90) == 0, inst.tail()


def test_lifecycle_rpcs_move_the_real_domain(
    make_instance: Callable[..., Instance], receiver_for: Callable[..., Receiver]
) -> None:
    inst = make_instance(nonroot=True)
    receiver = receiver_for(inst)
    boot(inst, receiver)
    cmd = Cmd.of(inst)

    assert cmd.vmi_call("PauseVirtualMachine").success
    receiver.wait_last(lambda e: status(e) == ("Paused", "User"), 10, "Paused")
    assert cmd.vmi_call("PauseVirtualMachine").success  # already paused: fine
    # freeze needs a running guest: refused, explicitly, and nothing changes
    refused = cmd.freeze(0)
    assert not refused.success and "paused" in refused.message.lower(), refused
    assert cmd.vmi_call("UnpauseVirtualMachine").success
    receiver.wait_last(lambda e: status(e) == ("Running", "Unknown"), 10, "Running")

    # a VMI naming another domain is refused and the VM is untouched
    other = cmd_pb2.VMI(vmiJson=json.dumps(
        {"metadata": {"name": "someone-else", "namespace": inst.namespace}}).encode())
    resp = cmd.stub.PauseVirtualMachine(cmd_pb2.VMIRequest(vmi=other), timeout=10)
    assert not resp.success and "someone-else" in resp.message
    assert cmd.domain()["Status"]["Status"] == "Running"

    # soft reboot (through the agent) and reset: each time the guest reboots, its agent
    # goes away and comes back
    for rpc in ("SoftRebootVirtualMachine", "ResetVirtualMachine"):
        n = len(receiver.domains())
        assert cmd.vmi_call(rpc).success
        wait_for(lambda n=n: any(agent_state(e) == "disconnected"  # type: ignore[misc]
                                 for e in receiver.domains()[n:]), 30,
                 what=f"agent down after {rpc}")
        receiver.wait_last(lambda e: agent_state(e) == "connected", BOOT_TO_AGENT_TIMEOUT_S,
                           f"agent back after {rpc}")

    # ACPI shutdown: the guest powers off, QEMU exits, so does the launcher. One press is
    # the rpc's contract; like virt-handler, press again while the guest has not reacted
    # (a press during early boot, before acpid listens, is lost).
    deadline = time.monotonic() + 60
    while True:
        # the guest may go down, and the launcher with it, between two presses
        with contextlib.suppress(grpc.RpcError):
            assert cmd.vmi_call("ShutdownVirtualMachine").success
        try:
            receiver.wait_last(lambda e: status(e) == ("Shutoff", "Shutdown"), 5, "Shutoff")
            break
        except TimeoutError:
            assert time.monotonic() < deadline, "the guest never shut down"
    # Off, but not gone: the launcher waits for virt-handler's Delete (KubeVirt's
    # waitForFinalNotify), which ends it.
    assert inst.proc is not None and inst.proc.poll() is None, inst.tail()
    assert cmd.vmi_call("DeleteVirtualMachine").success
    receiver.wait_last(lambda e: status(e) == ("NoState", "NonExistent")
                       and "deletionTimestamp" in e["domain"]["ObjectMeta"], 15, "deleted")
    cmd.channel.close()
    assert inst.wait_exit(timeout=60) == 0, inst.tail()


def test_delete_then_kill(
    make_instance: Callable[..., Instance], receiver_for: Callable[..., Receiver]
) -> None:
    inst = make_instance(nonroot=False)
    receiver = receiver_for(inst)
    boot(inst, receiver)
    cmd = Cmd.of(inst)
    # Delete undefines (keeping NVRAM): the running domain becomes transient
    assert cmd.vmi_call("DeleteVirtualMachine").success
    assert cmd.vmi_call("DeleteVirtualMachine").success  # idempotent
    assert cmd.domain()["Status"]["Status"] == "Running"
    # Kill destroys it; a transient domain is then gone: the last word is "NonExistent"
    # with deletionTimestamp (KubeVirt's rule for a stopped transient domain), and no
    # snapshot said "deleted" while it was there.
    assert cmd.vmi_call("KillVirtualMachine").success
    receiver.wait_last(lambda e: status(e) == ("NoState", "NonExistent")
                       and "deletionTimestamp" in e["domain"]["ObjectMeta"], 30,
                       "killed, final snapshot with deletionTimestamp")
    assert all(status(e)[0] == "NoState" for e in receiver.domains()
               if "deletionTimestamp" in e["domain"]["ObjectMeta"])
    cmd.channel.close()
    assert inst.wait_exit(timeout=60) == 0, inst.tail()
