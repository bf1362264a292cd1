"""The launcher defines the VM itself: STANDALONE_VMI at start-up under the monitor, and
SyncVirtualMachine over gRPC on an empty launcher, each booting the test guest (as a
KubeVirt VMI: kernel boot, containerDisk, cloud-init, slirp NIC) to a connected guest
agent; bad VMIs are refused cleanly (over gRPC the launcher keeps serving; at start-up it
exits with its own code and leaves nothing running)."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from launcher._proto.kubevirt.cmd.v1 import cmd_pb2
from launcher.exitcodes import ExitCode
from tests.support.guest import Receiver, status
from tests.support.guestvm import vmi
from tests.support.harness import Instance, wait_for
from tests.support.standalone import (
    EMULATION,
    guest,
    guest_info,
    stop_cleanly,
    stub,
    sync,
    wait_agent,
)

pytestmark = pytest.mark.e2e


def test_standalone_vmi_boots_the_guest_to_its_agent(
    make_instance: Callable[..., Instance], receiver_for: Callable[..., Receiver]
) -> None:
    inst = make_instance(nonroot=False, extra_args=EMULATION)
    receiver = receiver_for(inst)
    doc = guest(inst)
    # YAML, as a pod spec would carry it (JSON is a subset; both are accepted)
    import yaml  # noqa: PLC0415 - only this test needs it

    inst.start(env={"STANDALONE_VMI": yaml.safe_dump(doc)})
    running = wait_agent(receiver)
    assert running["domain"]["Spec"]["Name"] == f"{inst.namespace}_{inst.name}"
    assert inst.logged("synced")[0]["message"] == (
        f"domain {inst.namespace}_{inst.name} defined and started")
    info = guest_info(inst)
    assert info["hostname"] == "testguest" and info["os"]["id"] == "pvlguest"
    # the kernel command line from the VMI reached the guest, and its console is logged
    console = Path(inst.paths.private_dir) / f"uid-{inst.root.name}" / "virt-serial0-log"
    wait_for(lambda: "PVL: sysinit done" in console.read_text(errors="replace"), 30,
             what="the guest's console log")
    assert "PVL: eth0 address 192.0.2.10/24" in console.read_text(errors="replace")
    # the same VMI over gRPC: nothing to do
    resp = sync(inst, doc)
    assert (resp.success, resp.message) == (True, "no change")
    # What virt-handler reads and shows of the domain, as KubeVirt's launcher has it.
    dom = json.loads(stub(inst).GetDomain(cmd_pb2.EmptyRequest(), timeout=5).domain)
    spec = dom["Spec"]
    entries = {e["Name"]: e["Value"] for e in spec["SysInfo"]["System"]}
    assert entries["uuid"] == spec["UUID"]  # SMBIOS: virt-handler's defaults, standalone too
    assert (entries["manufacturer"], entries["product"], entries["family"]) == \
        ("KubeVirt", "None", "KubeVirt")
    assert spec["OnReboot"] == "restart"
    datadisk = next(d for d in spec["Devices"]["Disks"] if d["Target"]["Device"] == "vda")
    assert datadisk["Driver"]["Discard"] == "unmap"
    # the containerDisk image under the overlay
    assert datadisk["BackingStore"]["Source"]["File"].endswith("/disk_0.img"), datadisk
    # KubeVirt's host-model under TCG too, which libvirt expands to a named model
    assert spec["CPU"]["Mode"] == "custom" and spec["CPU"].get("Model"), spec["CPU"]
    stop_cleanly(inst, receiver)
    assert inst.logged("no Delete came (STANDALONE_VMI: no virt-handler); deleting the "
                       "domain")


def test_sync_over_grpc_on_an_empty_launcher(
    make_instance: Callable[..., Instance], receiver_for: Callable[..., Receiver]
) -> None:
    inst = make_instance(nonroot=False, extra_args=EMULATION)
    receiver = receiver_for(inst, virt_handler=True)  # synced over gRPC: a cluster's pod
    inst.start()
    inst.wait_running()
    doc = guest(inst)
    domain = f"{inst.namespace}_{inst.name}"

    # refused cleanly, the launcher keeps serving, nothing is defined
    bad = json.loads(json.dumps(doc))
    bad["spec"]["domain"]["devices"]["disks"][0]["disk"]["bus"] = "ide"
    other = vmi(name="someone-else", namespace=inst.namespace, uid=f"uid-{inst.root.name}")
    for request, message in ((bad, "spec.domain.devices.disks[0].disk.bus: "),
                             (other, f'vmi "{inst.namespace}/someone-else" does not match'),
                             (b"{not json", "vmi: invalid JSON: ")):
        resp = sync(inst, request)
        assert resp.success is False and resp.message.startswith(message), resp.message
        assert stub(inst).Ping(cmd_pb2.EmptyRequest(), timeout=5).success
    assert "default_" not in inst.virsh("list", "--all", "--name").stdout

    resp = sync(inst, doc)
    assert (resp.success, resp.message) == (True, f"domain {domain} defined and started")
    wait_agent(receiver)
    info = guest_info(inst)
    assert info["hostname"] == "testguest"
    # a change that needs a restart is saved and reported; the guest keeps running
    more = json.loads(json.dumps(doc))
    more["spec"]["domain"]["resources"]["requests"]["memory"] = "320Mi"
    resp = sync(inst, more)
    assert resp.success, resp.message
    assert resp.message.endswith("take effect after a restart: currentMemory, memory"), \
        resp.message
    assert "<memory unit='KiB'>327680</memory>" in inst.virsh("dumpxml", "--inactive",
                                                              domain).stdout
    assert "<memory unit='KiB'>262144</memory>" in inst.virsh("dumpxml", domain).stdout
    last = receiver.last_domain()
    assert last is not None and status(last) == ("Running", "Unknown")
    stop_cleanly(inst, receiver)


@pytest.mark.parametrize("case", ["yaml", "field", "disk", "kvm"])
def test_a_bad_standalone_vmi_exits_with_its_code_and_leaves_nothing(
    make_instance: Callable[..., Instance], case: str
) -> None:
    inst = make_instance(nonroot=False, extra_args=[] if case == "kvm" else EMULATION)
    doc = guest(inst)
    if case == "field":
        doc["spec"]["domain"]["devices"]["disks"][1]["disk"]["bus"] = "ide"
    if case == "disk":
        (Path(inst.paths.container_disk_dir) / "disk_0.img").unlink()
    text = "metadata: [" if case == "yaml" else json.dumps(doc)
    inst.start(env={"STANDALONE_VMI": text})
    code = inst.wait_exit(timeout=60)
    assert code == ExitCode.STANDALONE_VMI_FAILED, inst.tail()
    assert code == 14
    errors = [r for r in inst.log_records()
              if r.get("level") == "error" and r.get("component") == "virt-launcher"
              and r.get("source") != "daemon-output"]  # libvirtd's own complaints
    assert len(errors) == 1, errors
    error = errors[0]
    assert "exc_info" not in error and "exception" not in error  # no traceback
    expected = {
        "yaml": ("STANDALONE_VMI rejected; exiting", None,
                 "STANDALONE_VMI: invalid YAML at line 2, column 1: "),
        "field": ("STANDALONE_VMI could not be synced; exiting",
                  "spec.domain.devices.disks[1].disk.bus", "spec.domain.devices.disks[1]"),
        "disk": ("STANDALONE_VMI could not be synced; exiting", None,
                 'volume "datadisk": container disk image '),
        "kvm": ("STANDALONE_VMI could not be synced; exiting", None,
                "KVM is not usable on this host ("),
    }[case]
    assert (error["msg"], error.get("field")) == expected[:2], error
    assert error["error"].startswith(expected[2]), error
    if case != "yaml":
        assert inst.logged("launcher exited cleanly") == []
        assert inst.logged("stopping")  # the orderly teardown ran: daemons stopped
    wait_for(lambda: not inst.leftovers(), 10, what="no processes left")


def test_sigterm_during_the_standalone_sync_starts_no_qemu(
    make_instance: Callable[..., Instance], receiver_for: Callable[..., Receiver]
) -> None:
    """The signal comes while STANDALONE_VMI is being converted and its disks prepared:
    no domain is defined or started (it used to start QEMU, then shut it down again), the
    launcher exits 0 and leaves nothing. The disk preparation (a worker process running
    qemu-img and building the ISO) is the window; when the sync beats the signal, the
    attempt is repeated."""
    for attempt in range(3):
        inst = make_instance(nonroot=False, extra_args=EMULATION)
        doc = guest(inst)
        inst.start(env={"STANDALONE_VMI": json.dumps(doc)})
        wait_for(lambda i=inst: i.logged("syncing STANDALONE_VMI"), 30, interval=0.005,  # type: ignore[misc]
                 what="the sync's start")
        inst.signal(signal.SIGTERM)
        assert inst.wait_exit(timeout=60) == 0, inst.tail()
        if inst.logged("synced"):
            print(f"attempt {attempt}: the sync finished before the signal; again")
            continue
        assert inst.logged("STANDALONE_VMI not started: the launcher is shutting down"), \
            inst.tail()
        assert not inst.logged("watching QEMU")
        assert not list(Path(inst.paths.qemu_log_dir).glob("*.log")), "QEMU was started"
        wait_for(lambda i=inst: not i.leftovers(), 10, what="no processes left")  # type: ignore[misc]
        return
    pytest.fail("the sync finished before the signal in every attempt")
