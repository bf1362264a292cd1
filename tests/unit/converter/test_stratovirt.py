"""--hypervisor stratovirt: check() refuses, with the field path, what StratoVirt's libvirt
driver cannot run (seed 004); adjust() rewrites the rest into its XML subset, still valid
for libvirt's schema (support.tree)."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import pytest

from launcher.converter import ConversionError, ConvertOptions, convert, stratovirt
from launcher.converter.context import Context
from launcher.converter.spec import Node
from tests.unit.converter import support

SV = ConvertOptions(hypervisor="stratovirt", ovmf_path="/fw", private_dir="/run/kvp",
                    stratovirt_emulator="/opt/stratovirt")
Doc = dict[str, Any]


def error(doc: Doc, opts: ConvertOptions = SV) -> ConversionError:
    with pytest.raises(ConversionError) as info:
        convert(doc, opts)
    return info.value


def attrs(root: ET.Element, path: str) -> dict[str, str]:
    el = root.find(path)
    assert el is not None, f"no {path} in\n{ET.tostring(root, encoding='unicode')}"
    return dict(el.attrib)


def rich_vmi() -> Doc:
    """A VMI StratoVirt can run, with something on every kind of PCI device."""
    doc = support.vmi(
        cpu={"sockets": 2},
        memory={"guest": "1Gi", "hugepages": {"pageSize": "2Mi"}},
        ioThreadsPolicy="shared",
        firmware={"bootloader": {"efi": {"secureBoot": False}}},
        devices={"disks": [{"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1,
                            "dedicatedIOThread": True},
                           {"name": "ci", "disk": {}}],
                 "rng": {}, "autoattachVSOCK": True})
    doc["spec"]["volumes"] = [
        {"name": "root", "hostDisk": {"path": "/data/root.img", "type": "Disk"}},
        {"name": "ci", "cloudInitNoCloud": {"userData": "#cloud-config\n"}}]
    doc["status"] = {"VSOCKCID": 7}
    return doc


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        node = doc
        *parents, last = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return mutate


def _disk(disk: Doc, volume: Doc) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        doc["spec"]["domain"]["devices"]["disks"] = [{"name": "d", **disk}]
        doc["spec"]["volumes"] = [{"name": "d", **volume}]
    return mutate


HOST_DISK = {"hostDisk": {"path": "/d.img", "type": "Disk"}}


def _interface(**iface: Any) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        doc["spec"]["domain"]["devices"]["interfaces"] = [{"name": "default", **iface}]
        doc["spec"]["networks"] = [{"name": "default", "pod": {}}]
    return mutate


# --- check ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("mutate", "path"), [
    (_set("metadata.name", "my.vm"), "metadata.name"),
    (_set("metadata.namespace", "team.a"), "metadata.namespace"),
    (_set("metadata.name", "x" * 250), "metadata.name"),
    (_set("spec.domain.cpu", {"model": "Haswell"}), "spec.domain.cpu.model"),
    (_set("spec.domain.cpu", {"features": [{"name": "vmx"}]}), "spec.domain.cpu.features"),
    (_set("spec.domain.cpu", {"dedicatedCpuPlacement": True}),
     "spec.domain.cpu.dedicatedCpuPlacement"),
    (_set("spec.domain.cpu", {"cores": 2, "threads": 2}), "spec.domain.cpu.threads"),
    (_set("spec.domain.cpu", {"sockets": 2, "cores": 2}), "spec.domain.cpu.cores"),
    (_set("spec.domain.firmware", {"bootloader": {"bios": {}}}),
     "spec.domain.firmware.bootloader.bios"),
    (_set("spec.domain.firmware", {"bootloader": {"efi": {}}}),
     "spec.domain.firmware.bootloader.efi.secureBoot"),
    (_set("spec.domain.firmware", {"serial": "SN1"}), "spec.domain.firmware.serial"),
    (_set("spec.domain.machine", {"type": "pc-i440fx-7.2"}), "spec.domain.machine.type"),
    (_set("spec.domain.features", {"acpi": {"enabled": False}}),
     "spec.domain.features.acpi.enabled"),
    (_set("spec.domain.features", {"hyperv": {"relaxed": {}}}), "spec.domain.features.hyperv"),
    (_set("spec.domain.features", {"kvm": {"hidden": True}}), "spec.domain.features.kvm"),
    (_set("spec.domain.features", {"smm": {}}), "spec.domain.features.smm"),
    (_set("spec.domain.clock", {"timezone": "Asia/Shanghai"}), "spec.domain.clock.timezone"),
    (_set("spec.domain.clock", {"utc": {"offsetSeconds": 60}}),
     "spec.domain.clock.utc.offsetSeconds"),
    (_set("spec.domain.clock", {"timer": {"hpet": {"enabled": False}}}),
     "spec.domain.clock.timer"),
    (_disk({"cdrom": {"bus": "sata"}}, HOST_DISK), "spec.domain.devices.disks[0].cdrom"),
    (_disk({"lun": {}}, {"persistentVolumeClaim": {"claimName": "block-pvc"}}),
     "spec.domain.devices.disks[0].lun"),
    (_disk({"disk": {"bus": "sata"}}, HOST_DISK), "spec.domain.devices.disks[0].disk.bus"),
    (_disk({"disk": {"pciAddress": "0000:05:00.0"}}, HOST_DISK),
     "spec.domain.devices.disks[0].disk.pciAddress"),
    (_disk({"disk": {}}, {"containerDisk": {"image": "registry/img:1"}}),
     "spec.volumes[0].containerDisk"),
    (_disk({"disk": {}}, {"emptyDisk": {"capacity": "1Gi"}}), "spec.volumes[0].emptyDisk"),
    (_interface(bridge={}, model="e1000"), "spec.domain.devices.interfaces[0].model"),
    (_interface(slirp={}), "spec.domain.devices.interfaces[0].slirp"),
    (_interface(masquerade={}, pciAddress="0000:02:00.0"),
     "spec.domain.devices.interfaces[0].pciAddress"),
    (_set("spec.domain.devices.inputs", [{"name": "t", "type": "tablet", "bus": "usb"}]),
     "spec.domain.devices.inputs"),
    (_set("spec.domain.devices.watchdog", {"name": "w", "i6300esb": {}}),
     "spec.domain.devices.watchdog"),
    (_set("spec.domain.devices.video", {"type": "vga"}), "spec.domain.devices.video"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_check_refuses_with_the_field_path(mutate: Callable[[Doc], None], path: str) -> None:
    doc = support.vmi()
    mutate(doc)
    exc = error(doc)
    assert exc.path == path
    assert "StratoVirt" in exc.reason
    # The QEMU profile takes it: the refusal is StratoVirt's.
    convert(doc, ConvertOptions(dedicated_cpus=(0, 1)))


def test_check_refuses_emulation_and_other_arches() -> None:
    assert error(support.vmi(), ConvertOptions(hypervisor="stratovirt", emulation=True)
                 ).path == "spec.domain"
    assert error(support.vmi(), ConvertOptions(hypervisor="stratovirt", arch="s390x")
                 ).path == "spec.domain"


@pytest.mark.parametrize("spec", [
    {"cpu": {"cores": 4, "sockets": 1, "threads": 1, "model": "host-model"}},
    {"cpu": {"sockets": 4, "model": "host-passthrough"}},
    {"machine": {"type": "pc-q35-rhel9.2.0"}},
    {"features": {"acpi": {"enabled": True}, "apic": {}, "smm": {"enabled": False}}},
    {"clock": {"utc": {}}},
    {"firmware": {"uuid": "d3c2dac2-71b8-5a49-a5a6-7f3bdb93e2c3",
                  "kernelBoot": {"kernelArgs": "console=hvc0",
                                 "container": {"image": "k:1", "kernelPath": "/vmlinuz"}}}},
], ids=["flat-cores", "flat-sockets", "q35-variant", "harmless-features", "plain-utc",
        "kernel-boot"])
def test_check_accepts(spec: Doc) -> None:
    support.tree(support.vmi(**spec), SV)


# --- adjust ---------------------------------------------------------------------------------
def test_minimal_vmi_becomes_stratovirts_subset() -> None:
    root = support.tree(support.vmi(), SV)
    assert root.get("type") == "kvm"
    for gone in ("sysinfo", "cpu", "cputune", "clock", "os/smbios", "os/bios"):
        assert root.find(gone) is None, gone
    assert attrs(root, "os/type") == {"arch": "x86_64", "machine": "q35"}
    # StratoVirt has no BIOS: UEFI from pflash without secure boot.
    assert attrs(root, "os/loader") == {"readonly": "yes", "type": "pflash"}
    assert root.findtext("os/loader") == "/fw/OVMF_CODE.fd"
    assert attrs(root, "os/nvram") == {"template": "/fw/OVMF_VARS.fd"}
    assert root.findtext("os/nvram") == "/run/kvp/libvirt/qemu/nvram/testvmi_VARS.fd"
    assert [el.tag for el in root.iterfind("features/*")] == ["acpi"]
    devices = root.find("devices")
    assert devices is not None
    assert devices[0].tag == "emulator"
    assert devices[0].text == "/opt/stratovirt"
    assert sorted({el.tag for el in devices}) == [
        "console", "controller", "emulator", "interface", "memballoon"]
    assert root.find("metadata") is not None
    assert root.findtext("vcpu") == "1"


def test_serial_console_becomes_the_virtio_console() -> None:
    root = support.tree(support.vmi(), SV)
    consoles = root.findall("devices/console")
    assert len(consoles) == 1
    assert consoles[0].get("type") == "unix"
    socket = f"/run/kvp/{support.MINIMAL['metadata']['uid']}/virt-serial0"
    assert attrs(root, "devices/console/source") == {"mode": "bind", "path": socket}
    assert attrs(root, "devices/console/target") == {"type": "virtio", "port": "0"}
    assert root.find("devices/controller[@type='virtio-serial']") is not None
    assert root.find("devices/serial") is None
    assert root.find("devices/channel") is None


def test_every_pci_device_on_its_own_root_port() -> None:
    root = support.tree(rich_vmi(), SV)
    devices = root.find("devices")
    assert devices is not None
    pci = [el for el in devices if el.find("address") is not None]
    assert [el.tag for el in pci] == ["disk", "disk", "interface", "rng", "vsock",
                                      "memballoon", "controller"]
    buses = [attrs(el, "address")["bus"] for el in pci]
    assert buses == [f"0x{n:02x}" for n in range(1, len(pci) + 1)]
    for el in pci:
        assert attrs(el, "address") | {"bus": ""} == {
            "type": "pci", "domain": "0x0000", "bus": "", "slot": "0x00", "function": "0x0"}
    ports = {(c.get("index"), c.get("model")) for c in devices.iterfind("controller[@type='pci']")}
    assert ports == {("0", "pcie-root")} | {(str(n), "pcie-root-port")
                                             for n in range(1, len(pci) + 1)}


def test_devices_lose_what_stratovirt_rejects() -> None:
    root = support.tree(rich_vmi(), SV)
    for disk in root.iterfind("devices/disk"):
        assert "model" not in disk.attrib
        driver = attrs(disk, "driver")
        assert set(driver) <= {"name", "type", "iothread"}
        assert driver["type"] == "raw"
    assert [d.get("iothread") for d in root.iterfind("devices/disk/driver")] == ["2", "1"]
    assert root.findtext("iothreads") == "2"
    assert attrs(root, "devices/interface/model") == {"type": "virtio"}
    assert root.find("devices/interface/rom") is None
    assert attrs(root, "devices/memballoon") == {"model": "virtio"}
    assert root.find("devices/memballoon/stats") is None
    assert attrs(root, "devices/rng")["model"] == "virtio"
    assert attrs(root, "devices/vsock")["model"] == "virtio"
    for tag in ("graphics", "video", "input", "serial", "channel"):
        assert root.find(f"devices/{tag}") is None, tag
    assert {c.get("type") for c in root.iterfind("devices/controller")} == {
        "pci", "virtio-serial"}


def test_what_stratovirt_supports_is_kept() -> None:
    root = support.tree(rich_vmi(), SV)
    assert attrs(root, "memoryBacking/hugepages/page") == {"size": "2048", "unit": "KiB"}
    assert root.findtext("vcpu") == "2"
    assert attrs(root, "os/loader") == {"readonly": "yes", "type": "pflash"}
    assert attrs(root, "devices/disk/boot") == {"order": "1"}


def test_no_console_or_balloon_when_the_vmi_turns_them_off() -> None:
    doc = support.vmi(devices={"autoattachSerialConsole": False,
                               "autoattachMemBalloon": False})
    root = support.tree(doc, SV)
    assert root.find("devices/console") is None
    assert root.find("devices/memballoon") is None
    assert root.find("devices/controller[@type='virtio-serial']") is None


def test_kernel_boot_keeps_kernel_and_loader() -> None:
    doc = support.vmi(firmware={"kernelBoot": {
        "kernelArgs": "console=hvc0 root=/dev/vda",
        "container": {"image": "k:1", "kernelPath": "/boot/vmlinux"}}})
    root = support.tree(doc, SV)
    assert root.findtext("os/cmdline") == "console=hvc0 root=/dev/vda"
    assert root.findtext("os/kernel", "").endswith("/kernel-boot/vmlinux")
    assert attrs(root, "os/loader")["type"] == "pflash"


def test_aarch64() -> None:
    opts = ConvertOptions(hypervisor="stratovirt", arch="aarch64", ovmf_path="/fw")
    root = support.tree(support.vmi(machine={"type": "virt-7.2"}), opts)
    assert attrs(root, "os/type") == {"arch": "aarch64", "machine": "virt"}
    assert root.findtext("os/loader") == "/fw/AAVMF_CODE.fd"
    assert root.find("os/nvram") is None
    assert [(el.tag, el.attrib) for el in root.iterfind("features/*")] == [
        ("acpi", {}), ("gic", {"version": "3"})]


def _ctx(doc: Doc) -> Context:
    meta = doc["metadata"]
    return Context(vmi=Node(doc, ""), opts=SV, name=meta["name"],
                   namespace=meta["namespace"], uid=meta["uid"])


def test_adjust_refuses_a_non_raw_disk_naming_it() -> None:
    doc = support.vmi(devices={"disks": [{"name": "root", "disk": {}},
                                         {"name": "data", "disk": {}}]})
    dom = ET.fromstring(
        "<domain><os><type>hvm</type></os><devices>"
        "<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        "<target dev='vda' bus='virtio'/><alias name='ua-root'/></disk>"
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        "<target dev='vdb' bus='virtio'/><alias name='ua-data'/></disk>"
        "</devices></domain>")
    with pytest.raises(ConversionError) as info:
        stratovirt.adjust(_ctx(doc), copy.deepcopy(dom))
    assert info.value.path == "spec.domain.devices.disks[1]"
    assert "qcow2" in info.value.reason


def test_adjust_is_idempotent() -> None:
    doc = rich_vmi()
    ctx = _ctx(doc)
    root = support.tree(doc, SV)
    once = ET.tostring(root, encoding="unicode")
    stratovirt.adjust(ctx, root)
    ET.indent(root)
    assert ET.tostring(root, encoding="unicode") == once
