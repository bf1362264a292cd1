"""launcher.vm.hotplug, .resources and .hostdevices: what a sync or a hotplug rpc changes on
a running domain, decided from XML and files alone (the e2e tests apply it to real QEMU)."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt
import pytest

from launcher.vm import hostdevices, hotplug, resources
from launcher.vm.disks import DiskError
from launcher.vm.xmldiff import (
    keep_addresses,
    keep_root_ports,
    restart_needed,
    with_parts,
    with_virtio_mem_requested,
)

HP = "/var/run/kubevirt/hotplug-disks"


def disk(dev: str, source: str | None, *, bus: str = "scsi", device: str = "disk",
         alias: str | None = None) -> str:
    src = f"<source file='{source}'/>" if source else ""
    name = alias or f"ua-{dev}"
    return (f"<disk type='file' device='{device}'><driver name='qemu' type='raw'/>{src}"
            f"<target dev='{dev}' bus='{bus}'/><alias name='{name}'/></disk>")


def iface(alias: str, *, link: str | None = None, tap: str | None = None) -> str:
    kind = "ethernet" if tap else "user"
    target = f"<target dev='{tap}' managed='no'/>" if tap else ""
    state = f"<link state='{link}'/>" if link else ""
    return (f"<interface type='{kind}'>{target}<model type='virtio'/>{state}"
            f"<alias name='{alias}'/></interface>")


def domain(*devices: str) -> str:
    return f"<domain type='qemu'><name>d</name><devices>{''.join(devices)}</devices></domain>"


ROOT = disk("vda", "/var/run/kubevirt-ephemeral-disks/disk-data/root/disk.qcow2",
            bus="virtio", alias="ua-root")
ready_all = lambda path, root, volume: True  # noqa: E731
ready_none = lambda path, root, volume: False  # noqa: E731


def find(elem: ET.Element, path: str) -> ET.Element:
    found = elem.find(path)
    assert found is not None, path
    return found


def keys(plan: hotplug.Plan) -> list[tuple[str, str, str]]:
    return [(c.action, c.kind, c.key) for c in plan.changes]


def test_new_hotplug_disk_is_attached_and_a_removed_one_detached() -> None:
    live = domain(ROOT, disk("sda", f"{HP}/old.img"))
    new = domain(ROOT, disk("sdb", f"{HP}/new.img", alias="ua-new"))
    plan = hotplug.plan(live, new, HP, ready=ready_all)
    assert keys(plan) == [("detach", "disk", "sda"), ("attach", "disk", "sdb")]
    assert plan.changes[1].label == "disk sdb (volume new)"


def test_disk_whose_source_is_not_ready_waits_and_stays_out_of_the_definition() -> None:
    live = domain(ROOT)
    new = domain(ROOT, disk("sda", f"{HP}/hp.img"))
    plan = hotplug.plan(live, new, HP, ready=ready_none)
    assert plan.changes == () and plan.waiting == ("disk sda (volume sda)",)
    persistent = ET.fromstring(hotplug.persistent_xml(new, live, plan, hotplug.Outcome(), HP))
    assert [t.get("dev") for t in persistent.iterfind("devices/disk/target")] == ["vda"]


def test_non_hotplug_disks_and_other_buses_are_left_to_a_restart() -> None:
    live = domain(ROOT)
    new = domain(ROOT, disk("vdb", "/var/run/kubevirt-private/vmi-disks/pvc/disk.img",
                            bus="virtio"),
                 disk("sdc", f"{HP}/sata.img", bus="sata"))
    plan = hotplug.plan(live, new, HP, ready=ready_all)
    assert plan.changes == ()
    assert restart_needed(live, new, hotplug.managed_keys(live, new, hotplug_dir=HP)) == [
        "devices/disk"]


def test_cdrom_media_inject_and_eject() -> None:
    empty = disk("sda", None, bus="sata", device="cdrom")
    full = disk("sda", f"{HP}/iso.img", bus="sata", device="cdrom")
    inject = hotplug.plan(domain(ROOT, empty), domain(ROOT, full), HP, ready=ready_all)
    assert keys(inject) == [("update", "disk", "sda")]
    updated = ET.fromstring(inject.changes[0].xml)
    assert find(updated, "source").get("file") == f"{HP}/iso.img"
    assert find(updated, "driver").get("type") == "raw"
    eject = hotplug.plan(domain(ROOT, full), domain(ROOT, empty), HP, ready=ready_all)
    assert keys(eject) == [("update", "disk", "sda")]
    assert ET.fromstring(eject.changes[0].xml).find("source") is None
    # A cdrom with a non-hotplug image is not touched live.
    fixed = disk("sda", "/var/run/kubevirt-private/x.iso", bus="sata", device="cdrom")
    assert hotplug.plan(domain(ROOT, fixed), domain(ROOT, empty), HP).changes == ()


def test_symlink_out_of_the_hotplug_dir_is_refused(tmp_path: Path) -> None:
    hp = tmp_path / "hotplug-disks"
    hp.mkdir()
    (tmp_path / "secret.img").write_bytes(b"x" * 512)
    (hp / "evil.img").symlink_to(tmp_path / "secret.img")
    (hp / "good.img").write_bytes(b"y" * 512)
    live = domain(ROOT)
    new = domain(ROOT, disk("sda", f"{hp}/evil.img", alias="ua-evil"),
                 disk("sdb", f"{hp}/good.img", alias="ua-good"))
    plan = hotplug.plan(live, new, str(hp))
    assert keys(plan) == [("attach", "disk", "sdb")]
    assert len(plan.refused) == 1 and "disk sda (volume evil)" in plan.refused[0]
    assert "outside" in plan.refused[0]
    persistent = ET.fromstring(hotplug.persistent_xml(new, live, plan, hotplug.Outcome(),
                                                      str(hp)))
    assert [t.get("dev") for t in persistent.iterfind("devices/disk/target")] == ["vda", "sdb"]


def test_disk_ready_follows_kubevirt(tmp_path: Path) -> None:
    hp = str(tmp_path)
    assert hotplug.disk_ready(f"{hp}/missing.img", hp, "missing") is False
    Path(hp, "ok.img").write_bytes(b"")
    assert hotplug.disk_ready(f"{hp}/ok.img", hp, "ok") is True
    os.mkdir(f"{hp}/dir.img")
    with pytest.raises(DiskError, match="not a regular file or block device"):
        hotplug.disk_ready(f"{hp}/dir.img", hp, "dir")


def test_interfaces_attach_detach_and_link_state() -> None:
    live = domain(ROOT, iface("ua-default"), iface("ua-gone"))
    new = domain(ROOT, iface("ua-default", link="down"), iface("ua-net1", tap="tap123"))
    plan = hotplug.plan(live, new, HP, iface_ready=lambda i: True)
    assert keys(plan) == [("detach", "interface", "ua-gone"), ("link", "interface", "ua-default"),
                          ("attach", "interface", "ua-net1")]
    link = ET.fromstring(plan.changes[1].xml)
    assert find(link, "link").get("state") == "down"
    # The tap virt-handler creates is not there yet: the interface waits.
    waiting = hotplug.plan(live, new, HP, iface_ready=lambda i: False)
    assert waiting.waiting == ("interface net1",)
    # Hot-plugged interfaces and link states never call for a restart.
    managed = hotplug.managed_keys(live, new, hotplug_dir=HP)
    assert restart_needed(live, new, managed) == []


def test_tap_ready_looks_for_the_tap(tmp_path: Path) -> None:
    el = ET.fromstring(iface("ua-n", tap="tapabc"))
    assert hotplug.tap_ready(el, str(tmp_path)) is False
    (tmp_path / "tapabc").mkdir()
    assert hotplug.tap_ready(el, str(tmp_path)) is True
    assert hotplug.tap_ready(ET.fromstring(iface("ua-u")), str(tmp_path)) is True


class FakeDom:
    """Records libvirt calls; fails the ones named in `fail`. A unit-level stand-in: the
    e2e tests drive the same code against real QEMU."""

    def __init__(self, fail: str = "", message: str = "internal error: boom") -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail, self.message = fail, message

    def _do(self, what: str, xml: str) -> None:
        self.calls.append((what, xml))
        if self.fail and self.fail in xml:
            err = libvirt.libvirtError("boom")
            err.err = (libvirt.VIR_ERR_INTERNAL_ERROR, 0, self.message, 2, "", None, None, 0, 0)
            raise err

    def attachDeviceFlags(self, xml: str, flags: int) -> None:
        assert flags == libvirt.VIR_DOMAIN_AFFECT_LIVE
        self._do("attach", xml)

    def detachDeviceFlags(self, xml: str, flags: int) -> None:
        self._do("detach", xml)

    def updateDeviceFlags(self, xml: str, flags: int) -> None:
        self._do("update", xml)


def test_a_failing_attach_stops_there_and_stays_out_of_the_definition() -> None:
    live = domain(ROOT, disk("sda", f"{HP}/a.img"))
    new = domain(ROOT, disk("sdb", f"{HP}/b.img"), disk("sdc", f"{HP}/c.img"))
    plan = hotplug.plan(live, new, HP, ready=ready_all)
    dom = FakeDom(fail="b.img")
    out = hotplug.apply(dom, plan.changes, lambda c: False)
    assert out.applied == ["detached disk sda (volume sda)"]
    assert out.failed is not None and out.failed.key == "sdb"
    assert [c.key for c in out.not_applied] == ["sdb", "sdc"]
    assert [w for w, _ in dom.calls] == ["detach", "attach"]
    persistent = ET.fromstring(hotplug.persistent_xml(new, live, plan, out, HP))
    assert [t.get("dev") for t in persistent.iterfind("devices/disk/target")] == ["vda"]


def test_a_failed_detach_keeps_the_device_in_the_definition() -> None:
    live = domain(ROOT, disk("sda", f"{HP}/a.img"))
    new = domain(ROOT)
    plan = hotplug.plan(live, new, HP)
    out = hotplug.apply(FakeDom(fail="a.img"), plan.changes, lambda c: False)
    assert out.failed is not None
    persistent = ET.fromstring(hotplug.persistent_xml(new, live, plan, out, HP))
    assert [t.get("dev") for t in persistent.iterfind("devices/disk/target")] == ["vda", "sda"]


def test_a_detach_the_guest_has_not_completed_is_pending() -> None:
    live = domain(ROOT, iface("ua-default"), iface("ua-x"))
    plan = hotplug.plan(live, domain(ROOT, iface("ua-default")), HP)
    out = hotplug.apply(FakeDom(), plan.changes, lambda c: True)
    assert out.pending == ["interface x"] and out.applied == []
    busy = "internal error: Device ua-x is already in the process of unplug"
    again = hotplug.apply(FakeDom(fail="ua-x", message=busy), plan.changes, lambda c: True)
    assert again.pending == ["interface x"] and again.failed is None


# --- resources -------------------------------------------------------------------------------
def vcpu_xml(current: int, maximum: int, pins: dict[int, str] | None = None) -> str:
    tune = "".join(f"<vcpupin vcpu='{v}' cpuset='{c}'/>" for v, c in (pins or {}).items())
    vcpus = "".join(f"<vcpu id='{i}' enabled='{'yes' if i < current else 'no'}' "
                    f"hotpluggable='{'no' if i == 0 else 'yes'}'/>" for i in range(maximum))
    return (f"<domain><vcpu current='{current}'>{maximum}</vcpu><vcpus>{vcpus}</vcpus>"
            f"{f'<cputune>{tune}</cputune>' if tune else ''}</domain>")


def test_vcpu_count_within_max_sockets() -> None:
    running = resources.vcpu_counts(vcpu_xml(1, 4))
    assert resources.check_vcpus(resources.vcpu_counts(vcpu_xml(2, 4)), running, 1) == 2
    assert resources.check_vcpus(resources.vcpu_counts(vcpu_xml(1, 4)), running, 1) is None
    # All hotpluggable vCPUs enabled: going down is still possible.
    full = resources.vcpu_counts(vcpu_xml(2, 2))
    assert resources.check_vcpus(resources.vcpu_counts(vcpu_xml(1, 2)), full, 2) == 1
    with pytest.raises(resources.ResourceError) as err:
        resources.check_vcpus(resources.vcpu_counts(vcpu_xml(6, 6)), running, 1)
    assert err.value.path == "spec.domain.cpu.sockets" and "room for 4" in str(err.value)
    fixed = resources.vcpu_counts("<domain><vcpu>2</vcpu></domain>")
    with pytest.raises(resources.ResourceError) as err:
        resources.check_vcpus(resources.vcpu_counts(vcpu_xml(3, 3)), fixed, 2)
    assert err.value.path == "spec.domain.cpu.maxSockets"


def test_cpu_map_and_pins() -> None:
    assert resources.cpu_map("2") == (False, False, True)
    assert resources.cpu_map("0-1,3") == (True, True, False, True)
    assert resources.vcpu_pins(vcpu_xml(1, 2, {0: "2", 1: "3"})) == [(0, "2"), (1, "3")]


def mem_xml(requested_mib: int, *, size_mib: int = 1024, cell_mib: int = 1024) -> str:
    return (f"<domain><cpu><numa><cell id='0' memory='{cell_mib * 1024}' unit='KiB'/></numa>"
            f"</cpu><devices><memory model='virtio-mem'><target>"
            f"<size unit='KiB'>{size_mib * 1024}</size><node>0</node>"
            f"<block unit='KiB'>2048</block><requested unit='KiB'>{requested_mib * 1024}"
            f"</requested><current unit='KiB'>0</current></target>"
            f"<alias name='virtiomem0'/></memory></devices></domain>")


def vmi_mem(guest: str, at_boot: str | None = "1Gi") -> dict[str, Any]:
    vmi: dict[str, Any] = {"spec": {"domain": {"memory": {"guest": guest,
                                                          "maxGuest": "2Gi"}}}}
    if at_boot:
        vmi["status"] = {"memory": {"guestAtBoot": at_boot}}
    return vmi


def test_memory_requested_is_guest_minus_guest_at_boot() -> None:
    change = resources.memory_change(vmi_mem("1536Mi"), mem_xml(0))
    assert change is not None and change.requested == 512 * 2**20
    target = find(ET.fromstring(change.xml), "target")
    assert find(target, "requested").text == str(512 * 1024)
    assert target.find("current") is None  # read-only in libvirt
    assert resources.memory_change(vmi_mem("1536Mi"), mem_xml(512)) is None
    # Without status.memory.guestAtBoot, the boot memory is the NUMA cell.
    down = resources.memory_change(vmi_mem("1Gi", None), mem_xml(512))
    assert down is not None and down.requested == 0


@pytest.mark.parametrize(("guest", "xml", "path", "words"), [
    ("3Gi", mem_xml(0), "spec.domain.memory.guest", "exceeds"),
    ("512Mi", mem_xml(0), "spec.domain.memory.guest", "less than the memory the guest booted"),
    ("1025Mi", mem_xml(0), "spec.domain.memory.guest", "multiple of the 2 MiB"),
    ("1536Mi", "<domain><devices/></domain>", "spec.domain.memory.maxGuest", "virtio-mem"),
    ("lots", mem_xml(0), "spec.domain.memory.guest", "not a Kubernetes quantity"),
])
def test_memory_refusals_name_the_field(guest: str, xml: str, path: str, words: str) -> None:
    with pytest.raises(resources.ResourceError) as err:
        resources.memory_change(vmi_mem(guest), xml)
    assert err.value.path == path and words in str(err.value)


# --- host devices ----------------------------------------------------------------------------
def sriov_vmi(*names: str, reported: bool = True) -> dict[str, Any]:
    return {
        "spec": {"domain": {"devices": {"interfaces": [
            {"name": "default", "masquerade": {}},
            *({"name": n, "sriov": {}, "pciAddress": "0000:0a:00.0"} for n in names)]}}},
        "status": {"interfaces": [{"name": n, "infoSource": "domain, multus-status"}
                                  for n in names if reported]},
    }


def network_info(tmp_path: Path, mapping: dict[str, str]) -> str:
    path = tmp_path / "network-info"
    path.write_text(json.dumps({"interfaces": [
        {"network": n, "deviceInfo": {"type": "pci", "pci": {"pci-address": a}}}
        for n, a in mapping.items()]}))
    return str(path)


def test_host_device_present_in_the_pod_is_attached_once(tmp_path: Path) -> None:
    pci = tmp_path / "pci"
    (pci / "0000:81:00.2").mkdir(parents=True)
    info = network_info(tmp_path, {"sriov1": "0000:81:00.2"})
    devices = hostdevices.to_attach(sriov_vmi("sriov1"), domain(), info,
                                    pci_devices=str(pci))
    assert [(d.name, d.pci) for d in devices] == [("sriov1", "0000:81:00.2")]
    el = ET.fromstring(devices[0].xml)
    assert find(el, "source/address").attrib == {"domain": "0x0000", "bus": "0x81",
                                                "slot": "0x00", "function": "0x2"}
    assert find(el, "alias").get("name") == "ua-sriov-sriov1"
    assert find(el, "address").get("bus") == "0x0a"
    attached = domain(devices[0].xml)
    assert hostdevices.to_attach(sriov_vmi("sriov1"), attached, info,
                                 pci_devices=str(pci)) == []


def test_host_device_not_in_the_pod_is_refused_naming_it(tmp_path: Path) -> None:
    info = network_info(tmp_path, {"sriov1": "0000:81:00.2"})
    with pytest.raises(hostdevices.HostDeviceError) as err:
        hostdevices.to_attach(sriov_vmi("sriov1"), domain(), info,
                              pci_devices=str(tmp_path / "pci"))
    assert "spec.domain.devices.interfaces[1] (sriov1)" in str(err.value)
    assert "0000:81:00.2 is not present in the pod" in str(err.value)
    with pytest.raises(hostdevices.HostDeviceError, match="not found"):
        hostdevices.to_attach(sriov_vmi("other"), domain(), info, pci_devices=str(tmp_path))
    with pytest.raises(hostdevices.HostDeviceError, match="missing or empty"):
        hostdevices.to_attach(sriov_vmi("sriov1"), domain(), str(tmp_path / "none"),
                              wait_s=0.2)


def test_only_interfaces_multus_reports_count() -> None:
    assert hostdevices.sriov_interfaces(sriov_vmi("s1", reported=False)) == []
    assert [i for i, _ in hostdevices.sriov_interfaces(sriov_vmi("s1"))] == [1]


def test_targets_stay_with_their_volumes() -> None:
    """A VMI without status targets renumbers the disks after a removed one: the running
    disks keep their devices and the new one gets a free name, so the right one detaches."""
    live = domain(ROOT, disk("sda", f"{HP}/cd.img", device="cdrom", alias="ua-cd"),
                  disk("sdb", f"{HP}/hp1.img", alias="ua-hp1"),
                  disk("sdc", f"{HP}/hp2.img", alias="ua-hp2"))
    # hp1 removed: the converter names hp2 sdb and a new hp3 sdc.
    new = domain(ROOT, disk("sda", f"{HP}/cd.img", device="cdrom", alias="ua-cd"),
                 disk("sdb", f"{HP}/hp2.img", alias="ua-hp2"),
                 disk("sdc", f"{HP}/hp3.img", alias="ua-hp3"))
    stable = hotplug.stable_targets(new, live)
    targets = {find(d, "alias").get("name"): find(d, "target").get("dev")
               for d in ET.fromstring(stable).iterfind("devices/disk")}
    assert targets == {"ua-root": "vda", "ua-cd": "sda", "ua-hp2": "sdc", "ua-hp3": "sdd"}
    plan = hotplug.plan(live, stable, HP, ready=ready_all)
    assert keys(plan) == [("detach", "disk", "sdb"), ("attach", "disk", "sdd")]
    assert plan.changes[0].label == "disk sdb (volume hp1)"
    assert hotplug.stable_targets(live, live) == live


def test_persistent_definition_keeps_running_addresses_and_root_ports() -> None:
    addr = "<address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>"
    live = ("<domain><devices>"
            "<controller type='pci' index='1' model='pcie-root-port'><alias name='pci.1'/>"
            "</controller><controller type='pci' index='2' model='pcie-root-port'/>"
            f"<interface type='user'><alias name='ua-net1'/>{addr}</interface>"
            f"<memballoon model='virtio'><alias name='balloon0'/>{addr.replace('05', '06')}"
            "</memballoon></devices></domain>")
    new = ("<domain><devices><controller type='pci' index='1' model='pcie-root-port'/>"
           "<interface type='user'><alias name='ua-net1'/></interface>"
           "<memballoon model='virtio'/></devices></domain>")
    kept = ET.fromstring(keep_addresses(keep_root_ports(new, live), live))
    assert [c.get("index") for c in kept.iterfind("devices/controller")] == ["1", "2"]
    assert kept.find("devices/controller/alias") is None
    assert find(kept, "devices/interface/address").get("bus") == "0x05"
    assert find(kept, "devices/memballoon/address").get("bus") == "0x06"


def test_a_device_that_changed_bus_gets_a_new_address() -> None:
    addr = "<address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>"
    live = (f"<domain><devices><disk type='file' device='disk'><target dev='vdb' "
            f"bus='virtio'/><alias name='ua-d'/>{addr}</disk></devices></domain>")
    new = ("<domain><devices><disk type='file' device='disk'><target dev='sda' bus='scsi'/>"
           "<alias name='ua-d'/></disk></devices></domain>")
    assert keep_addresses(new, live) == new


def test_live_cpu_and_memory_changes_update_the_running_base() -> None:
    started = ("<domain><vcpu current='1'>2</vcpu><memory>1</memory><devices>"
               "<memory model='virtio-mem'><target><requested unit='KiB'>0</requested>"
               "</target></memory></devices></domain>")
    persistent = "<domain><vcpu current='2'>2</vcpu><vcpus><vcpu id='0'/></vcpus></domain>"
    after = ET.fromstring(with_parts(started, persistent, ("vcpu", "vcpus")))
    assert find(after, "vcpu").get("current") == "2" and after.find("vcpus") is not None
    assert [c.tag for c in after][:2] == ["vcpu", "memory"]
    mem = ET.fromstring(with_virtio_mem_requested(started, 512 * 2**20))
    requested = find(mem, "devices/memory/target/requested")
    assert (requested.text, requested.get("unit")) == (str(512 * 1024), "KiB")
    assert restart_needed(with_virtio_mem_requested(started, 2**20), started) == [
        "devices/memory"]
