"""Hotplug on a running VM, end to end: the test guest under a real libvirt daemon and QEMU,
changed through SyncVirtualMachine / SyncVirtualMachineCPUs / SyncVirtualMachineMemory as
virt-handler calls them. Every change is checked from inside the guest through the agent's
Exec (/sys/block, the disk's bytes, /sys/class/net, /sys/devices/system/cpu/online,
/proc/meminfo), and in GetDomain and the notify stream."""

from __future__ import annotations

import copy
import hashlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from launcher._proto.kubevirt.cmd.v1 import cmd_pb2
from tests.support.guest import Cmd, Receiver
from tests.support.harness import Instance, wait_for
from tests.support.standalone import EMULATION, guest, stop_cleanly, sync, wait_agent

pytestmark = pytest.mark.e2e

MiB = 2**20
GUEST_SEES_S = 60  # a hot-plugged device shows up in the guest (TCG, a loaded machine)


# --- reading the guest through the agent ------------------------------------------------------
def sh(cmd: Cmd, script: str, timeout_s: int = 20) -> str:
    out = cmd.exec("/bin/sh", "-c", script, timeout_s=timeout_s)
    assert out.response.success, out.response.message
    return str(out.stdOut)


def block_devices(cmd: Cmd) -> set[str]:
    return set(sh(cmd, "ls /sys/block").split())


def net_devices(cmd: Cmd) -> set[str]:
    return set(sh(cmd, "ls /sys/class/net").split())


def head(cmd: Cmd, device: str, n: int) -> str:
    return sh(cmd, f"dd if=/dev/{device} bs=512 count=1 2>/dev/null | head -c {n}")


def scsi_disks(cmd: Cmd) -> set[str]:
    return {d for d in block_devices(cmd) if d.startswith("sd")}


def disk_with(cmd: Cmd, marker: str) -> str | None:
    """The guest's SCSI disk that starts with `marker`, if any."""
    for dev in sorted(scsi_disks(cmd)):
        if head(cmd, dev, len(marker)) == marker:
            return dev
    return None


def domain_disks(cmd: Cmd) -> dict[str, str]:
    """target device -> source file, as GetDomain reports them."""
    disks = cmd.domain()["Spec"]["Devices"].get("Disks") or []
    return {d["Target"]["Device"]: (d.get("Source") or {}).get("File", "") for d in disks}


def wait_guest(cmd: Cmd, read: Callable[[Cmd], Any], pred: Callable[[Any], bool],
               what: str) -> Any:
    seen: list[Any] = []

    def check() -> bool:
        value = read(cmd)
        if pred(value):
            seen.append(value)
            return True
        return False
    wait_for(check, GUEST_SEES_S, interval=0.5, what=what)
    return seen[-1]


# --- the VMI as virt-handler sends it ---------------------------------------------------------
def hotplug_volume(doc: dict[str, Any], name: str, *, phase: str = "MountedToPod",
                   cdrom: bool = False) -> dict[str, Any]:
    """`doc` with the hotplugged PVC `name` (a scsi disk, or the media of the cdrom of
    that name) and the volume status virt-handler writes for it."""
    doc = copy.deepcopy(doc)
    spec = doc["spec"]
    spec["volumes"].append({"name": name, "persistentVolumeClaim": {
        "claimName": f"{name}-claim", "hotpluggable": True}})
    if not cdrom:
        spec["domain"]["devices"]["disks"].append({"name": name, "disk": {"bus": "scsi"}})
    statuses = doc.setdefault("status", {}).setdefault("volumeStatus", [])
    statuses.append({"name": name, "phase": phase,
                     "hotplugVolume": {"attachPodName": "hp-volume-pod", "attachPodUID": "x"},
                     "persistentVolumeClaimInfo": {"claimName": f"{name}-claim"}})
    return doc


def unplug_volume(doc: dict[str, Any], name: str, *, cdrom: bool = False) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    spec = doc["spec"]
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] != name]
    if not cdrom:
        spec["domain"]["devices"]["disks"] = [
            d for d in spec["domain"]["devices"]["disks"] if d["name"] != name]
    doc["status"]["volumeStatus"] = [s for s in doc["status"]["volumeStatus"]
                                     if s["name"] != name]
    return doc


def image(directory: Path, name: str, marker: str, size: int = 8 * MiB) -> Path:
    path = directory / f"{name}.img"
    path.write_bytes(marker.encode().ljust(size, b"\0"))
    return path


def synced(inst: Instance, doc: dict[str, Any]) -> str:
    resp = sync(inst, doc)
    assert resp.success, resp.message
    return str(resp.message)


def tap_name(network: str) -> str:
    return "tap" + hashlib.sha256(network.encode()).hexdigest()[:11]


@pytest.fixture
def tap() -> Iterator[Callable[[str], str]]:
    """A tap device as virt-handler creates one in the pod for a secondary network."""
    made: list[str] = []

    def make(network: str) -> str:
        name = tap_name(network)
        subprocess.run(["ip", "tuntap", "add", "dev", name, "mode", "tap"], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        made.append(name)
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "link", "del", name], check=False)


def boot_guest(make_instance: Callable[..., Instance],
               receiver_for: Callable[..., Receiver],
               **vmi: Any) -> tuple[Instance, Receiver, Cmd, dict[str, Any]]:
    inst = make_instance(nonroot=False, extra_args=EMULATION)
    receiver = receiver_for(inst, virt_handler=True)  # it deletes the domain at the end
    doc = guest(inst, **vmi)
    inst.start()
    inst.wait_running()
    synced(inst, doc)
    wait_agent(receiver)
    return inst, receiver, Cmd.of(inst), doc


# --- volumes and a cdrom ----------------------------------------------------------------------
def test_volume_hotplug_reaches_the_guest(
    make_instance: Callable[..., Instance], receiver_for: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    inst = make_instance(nonroot=False, extra_args=EMULATION)
    receiver = receiver_for(inst, virt_handler=True)  # it deletes the domain at the end
    base = guest(inst)
    # An empty cdrom on scsi from the start: its media are hot-plugged below.
    base["spec"]["domain"]["devices"]["disks"].append({"name": "cd", "cdrom": {"bus": "scsi"}})
    inst.start()
    inst.wait_running()
    synced(inst, base)
    wait_agent(receiver)
    cmd = Cmd.of(inst)
    hp_dir = Path(inst.paths.hotplug_disk_dir)
    hp_dir.mkdir(parents=True, exist_ok=True)
    wait_guest(cmd, block_devices, lambda b: "vda" in b, "the guest's disks")
    assert scsi_disks(cmd) == set()

    # Attach: the guest sees a new block device holding the image's bytes. (libvirt's
    # target names: the cdrom is sda, so the hotplugged disks are sdb, sdc, ...; the guest
    # names its SCSI disks itself, so it is found by its content.)
    image(hp_dir, "hp1", "PVL-HOTPLUG-ONE")
    with_hp1 = hotplug_volume(base, "hp1")
    message = synced(inst, with_hp1)
    assert "applied live: attached disk sdb (volume hp1)" in message, message
    wait_for(lambda: disk_with(cmd, "PVL-HOTPLUG-ONE"), GUEST_SEES_S, interval=0.5,
             what="the hotplugged disk in the guest")
    assert domain_disks(cmd)["sdb"] == str(hp_dir / "hp1.img")
    receiver.wait_domain(lambda e: any(d.get("Target", {}).get("Device") == "sdb" for d in
                                       e["domain"]["Spec"]["Devices"].get("Disks") or []),
                         15, "sdb in a notify snapshot")
    # A re-sync changes nothing (and calls for no restart).
    assert synced(inst, with_hp1) == "no change"

    # A volume whose file is not there yet waits; the next sync attaches it.
    with_hp2 = hotplug_volume(with_hp1, "hp2")
    message = synced(inst, with_hp2)
    assert "waiting for their source" in message and "disk sdc (volume hp2)" in message, \
        message
    assert "sdc" not in domain_disks(cmd)
    image(hp_dir, "hp2", "PVL-HOTPLUG-TWO")
    assert "attached disk sdc (volume hp2)" in synced(inst, with_hp2)
    wait_for(lambda: disk_with(cmd, "PVL-HOTPLUG-TWO"), GUEST_SEES_S, interval=0.5,
             what="the second hotplugged disk in the guest")
    disks_before = scsi_disks(cmd)

    # A hotplug "volume" that is a symlink out of the hotplug directory: refused by name,
    # nothing attached, what was there stays.
    secret = tmp_path / "host-secret.img"
    secret.write_bytes(b"HOST-SECRET".ljust(MiB, b"\0"))
    (hp_dir / "evil.img").symlink_to(secret)
    resp = sync(inst, hotplug_volume(with_hp2, "evil"))
    assert not resp.success
    assert "disk sdd (volume evil)" in resp.message and "outside" in resp.message, resp.message
    assert "sdd" not in domain_disks(cmd)
    time.sleep(2)
    assert scsi_disks(cmd) == disks_before
    assert not disk_with(cmd, "HOST-SECRET")

    # Detach: gone from the guest and the domain; attach again: back.
    message = synced(inst, unplug_volume(with_hp2, "hp1"))
    assert "detached disk sdb (volume hp1)" in message, message
    wait_for(lambda: not disk_with(cmd, "PVL-HOTPLUG-ONE"), GUEST_SEES_S, interval=0.5,
             what="the detached disk gone from the guest")
    assert "sdb" not in domain_disks(cmd)
    assert "attached disk sdb (volume hp1)" in synced(inst, with_hp2)
    wait_for(lambda: disk_with(cmd, "PVL-HOTPLUG-ONE"), GUEST_SEES_S, interval=0.5,
             what="the disk back in the guest")

    # CD-ROM: insert media into the empty tray, eject them.
    cd_before = {d for d in block_devices(cmd) if d.startswith("sr")}
    assert len(cd_before) == 1, cd_before
    (cd,) = cd_before
    image(hp_dir, "cd", "PVL-CDROM-MEDIA", size=2 * MiB)
    with_cd = hotplug_volume(with_hp2, "cd", cdrom=True)
    message = synced(inst, with_cd)
    assert "updated media of disk" in message, message
    wait_for(lambda: head(cmd, cd, 15) == "PVL-CDROM-MEDIA", GUEST_SEES_S, interval=0.5,
             what="the cdrom's media in the guest")
    message = synced(inst, unplug_volume(with_cd, "cd", cdrom=True))
    assert "updated media of disk" in message, message
    wait_for(lambda: head(cmd, cd, 15) == "", GUEST_SEES_S, interval=0.5,
             what="the cdrom empty in the guest")
    stop_cleanly(inst, receiver)


# --- a second NIC -----------------------------------------------------------------------------
def with_nic(doc: dict[str, Any], name: str, *, state: str | None = None) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    iface: dict[str, Any] = {"name": name, "bridge": {}}
    if state:
        iface["state"] = state
    doc["spec"]["domain"]["devices"]["interfaces"].append(iface)
    doc["spec"]["networks"].append({"name": name, "multus": {"networkName": f"{name}-nad"}})
    return doc


def test_nic_hotplug_and_a_detach_the_guest_does_not_complete(
    make_instance: Callable[..., Instance], receiver_for: Callable[..., Receiver],
    tap: Callable[[str], str],
) -> None:
    inst, receiver, cmd, base = boot_guest(make_instance, receiver_for)
    nets = wait_guest(cmd, net_devices, lambda n: "eth0" in n, "eth0 in the guest")
    assert "eth1" not in nets

    # The tap virt-handler creates for the secondary network is not there yet: waiting.
    plugged = with_nic(base, "net1")
    message = synced(inst, plugged)
    assert "waiting for their source" in message and "interface net1" in message, message
    tap("net1")
    assert "attached interface net1" in synced(inst, plugged)
    wait_guest(cmd, net_devices, lambda n: "eth1" in n, "eth1 in the guest")
    ifaces = cmd.domain()["Spec"]["Devices"]["Interfaces"]
    assert any(i.get("Alias", {}).get("Name") == "net1" for i in ifaces), ifaces
    assert synced(inst, plugged) == "no change"

    # state: absent -> detached, gone from the guest.
    message = synced(inst, with_nic(base, "net1", state="absent"))
    assert "detached interface net1" in message, message
    wait_guest(cmd, net_devices, lambda n: "eth1" not in n, "eth1 gone from the guest")

    # A paused guest cannot complete a PCI unplug: the sync says the detach is requested,
    # not done; once the guest runs again it completes and the device-removed event
    # relays a domain without it.
    assert "attached interface net1" in synced(inst, plugged)
    wait_guest(cmd, net_devices, lambda n: "eth1" in n, "eth1 back in the guest")
    assert cmd.vmi_call("PauseVirtualMachine").success
    message = synced(inst, with_nic(base, "net1", state="absent"))
    assert "detach requested, not yet completed by the guest: interface net1" in message, \
        message
    assert any(i.get("Alias", {}).get("Name") == "net1"
               for i in cmd.domain()["Spec"]["Devices"]["Interfaces"])
    assert cmd.vmi_call("UnpauseVirtualMachine").success
    wait_for(lambda: not any(i.get("Alias", {}).get("Name") == "net1"
                             for i in cmd.domain()["Spec"]["Devices"]["Interfaces"]),
             GUEST_SEES_S, interval=0.5, what="net1 removed once the guest ran")
    wait_guest(cmd, net_devices, lambda n: "eth1" not in n, "eth1 gone from the guest")
    assert synced(inst, with_nic(base, "net1", state="absent")) == "no change"
    stop_cleanly(inst, receiver)


# --- vCPUs and memory -------------------------------------------------------------------------
def resized(doc: dict[str, Any], *, sockets: int | None = None,
            guest_mem: str | None = None) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    if sockets is not None:
        doc["spec"]["domain"]["cpu"]["sockets"] = sockets
    if guest_mem is not None:
        doc["spec"]["domain"]["memory"]["guest"] = guest_mem
    return doc


def online_cpus(cmd: Cmd) -> str:
    return sh(cmd, "cat /sys/devices/system/cpu/online").strip()


def mem_total_mib(cmd: Cmd) -> int:
    line = sh(cmd, "grep MemTotal /proc/meminfo")
    return int(line.split()[1]) // 1024


def test_vcpu_and_memory_hotplug_reach_the_guest(
    make_instance: Callable[..., Instance], receiver_for: Callable[..., Receiver],
) -> None:
    inst = make_instance(nonroot=False, extra_args=EMULATION)
    receiver = receiver_for(inst, virt_handler=True)  # it deletes the domain at the end
    doc = guest(inst, memory="1Gi")
    domain = doc["spec"]["domain"]
    domain["cpu"] = {"sockets": 1, "cores": 1, "threads": 1, "maxSockets": 2}
    domain["memory"] = {"guest": "1Gi", "maxGuest": "2Gi"}
    doc["status"] = {"memory": {"guestAtBoot": "1Gi"}}
    inst.start()
    inst.wait_running()
    synced(inst, doc)
    wait_agent(receiver)
    cmd = Cmd.of(inst)
    assert wait_guest(cmd, online_cpus, lambda c: c == "0", "one CPU online") == "0"

    # Memory first: on QEMU 7.2 under TCG a vCPU unplug leaves QEMU unable to take
    # further hotplug (see the end), so it comes last.
    boot_total = wait_guest(cmd, mem_total_mib, lambda m: m > 800, "MemTotal")

    def memory(guest_mem: str) -> cmd_pb2.Response:
        return cmd.vmi_call("SyncVirtualMachineMemory", resized(doc, guest_mem=guest_mem))

    resp = memory("1536Mi")
    assert resp.success and resp.message == "virtio-mem requested 0 MiB -> 512 MiB", \
        resp.message
    grown = wait_guest(cmd, mem_total_mib, lambda m: m >= boot_total + 500,
                       "MemTotal grown by 512 MiB")
    # virt-handler's periodic SyncVirtualMachine with the grown VMI: the memory runs as the
    # VMI asks (guestAtBoot + virtio-mem), so nothing waits for a restart.
    message = synced(inst, resized(doc, guest_mem="1536Mi"))
    assert message == "no change", message
    resp = memory("1Gi")
    assert resp.success and resp.message == "virtio-mem requested 512 MiB -> 0 MiB", \
        resp.message
    wait_guest(cmd, mem_total_mib, lambda m: m <= boot_total + 12, "MemTotal back")
    resp = memory("3Gi")
    assert not resp.success and "spec.domain.memory" in resp.message, resp.message
    print(f"MemTotal: boot {boot_total} MiB, plugged {grown} MiB")

    def vcpus(sockets: int) -> cmd_pb2.Response:
        return cmd.vmi_call("SyncVirtualMachineCPUs", resized(doc, sockets=sockets))

    resp = vcpus(2)
    assert resp.success and resp.message == "vCPUs 1 -> 2", resp.message
    wait_guest(cmd, online_cpus, lambda c: c == "0-1", "two CPUs online in the guest")
    message = synced(inst, resized(doc, sockets=2))
    assert message == "no change", message
    resp = vcpus(3)
    assert not resp.success and "spec.domain.cpu.maxSockets" in resp.message, resp.message
    assert online_cpus(cmd) == "0-1"
    # Unplug: the guest offlines and ejects the vCPU. QEMU 7.2 under TCG never sends the
    # DEVICE_DELETED event for the vCPU itself (only for its lapic child), so libvirt
    # 9.0 answers "vcpu unplug request timed out" after 5 s and still counts 2; the rpc
    # passes that error on instead of claiming success (measured with
    # hack/guest/smoke_hotplug.py; newer QEMU completes it).
    resp = vcpus(1)
    assert resp.success or "vcpu unplug request timed out" in resp.message, resp.message
    wait_guest(cmd, online_cpus, lambda c: c == "0", "back to one CPU in the guest")
    print(f"vCPU unplug: success={resp.success} {resp.message}")
    stop_cleanly(inst, receiver)


# --- faults -----------------------------------------------------------------------------------
def test_libvirt_daemon_killed_during_an_attach_converges(
    make_instance: Callable[..., Instance], receiver_for: Callable[..., Receiver],
) -> None:
    inst, receiver, cmd, base = boot_guest(make_instance, receiver_for)
    hp_dir = Path(inst.paths.hotplug_disk_dir)
    hp_dir.mkdir(parents=True, exist_ok=True)
    image(hp_dir, "hp1", "PVL-HOTPLUG-ONE")
    doc = hotplug_volume(base, "hp1")
    daemon = inst.daemon_pid(inst.paths.daemon)
    assert daemon is not None
    t0 = time.monotonic()
    resp_box: list[Any] = []

    def send() -> None:
        resp_box.append(sync(inst, doc))

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.05)
    os.kill(daemon, signal.SIGKILL)
    sender.join(90)
    assert resp_box, "the sync never answered"
    first = resp_box[0]
    # Either the attach made it before the kill or the sync failed cleanly, naming libvirt.
    assert first.success or "libvirt" in first.message, first.message
    # The launcher restarts the daemon; repeated syncs converge on one attached disk.
    wait_for(lambda: inst.daemon_pid(inst.paths.daemon) not in (None, daemon), 60,
             what="the libvirt daemon restarted")

    def converged() -> bool:
        resp = sync(inst, doc)
        return resp.success and "sda" in domain_disks(cmd)
    wait_for(converged, 90, interval=1, what="a repeated sync converges")
    wait_guest(cmd, block_devices, lambda b: "sda" in b, "sda in the guest")
    assert head(cmd, "sda", 15) == "PVL-HOTPLUG-ONE"
    targets = [d["Target"]["Device"] for d in cmd.domain()["Spec"]["Devices"]["Disks"]]
    assert targets.count("sda") == 1, targets
    print(f"daemon killed; converged after {time.monotonic() - t0:.1f} s")
    stop_cleanly(inst, receiver)
