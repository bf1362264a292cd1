"""KubeVirt fields the converter once dropped silently, each now honoured as KubeVirt's
converter writes it or refused naming the field: vCPU and memory hotplug, panic devices,
ACPI tables, realtime, NUMA passthrough, hint-dedicated, vmport, Hyper-V TLB flush extras,
rebootPolicy, launchSecurity, startStrategy's boot menu."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from launcher.converter import ConversionError, ConvertOptions, convert
from launcher.converter.plan import ExistingFile
from tests.unit.converter import support


def make(**domain: Any) -> dict[str, Any]:
    return support.vmi(**domain)


def error(doc: dict[str, Any], opts: ConvertOptions | None = None) -> ConversionError:
    with pytest.raises(ConversionError) as info:
        convert(doc, opts or ConvertOptions())
    return info.value


# --- vCPU hotplug ---------------------------------------------------------------------------
def test_max_sockets_gives_hotpluggable_vcpus() -> None:
    root = support.tree(make(cpu={"sockets": 2, "cores": 2, "maxSockets": 4}))
    vcpu = root.find("vcpu")
    assert vcpu is not None and vcpu.text == "8" and vcpu.get("current") == "4"
    assert [(v.get("id"), v.get("enabled"), v.get("hotpluggable"))
            for v in root.iterfind("vcpus/vcpu")] == [
        ("0", "yes", "no"), ("1", "yes", "no"), ("2", "yes", "yes"), ("3", "yes", "yes"),
        ("4", "no", "yes"), ("5", "no", "yes"), ("6", "no", "yes"), ("7", "no", "yes")]
    topology = root.find("cpu/topology")
    assert topology is not None and topology.get("sockets") == "4"


def test_max_sockets_ignored_off_x86() -> None:
    # KubeVirt's SupportCPUHotplug is amd64 only; arm64 gets the plain topology.
    doc = make(cpu={"sockets": 2, "maxSockets": 4},
               firmware={"bootloader": {"efi": {"secureBoot": False}}})
    root = ET.fromstring(convert(doc, ConvertOptions(arch="aarch64")).xml)
    assert root.find("vcpus") is None and root.findtext("vcpu") == "2"


def test_max_sockets_below_sockets_refused() -> None:
    assert error(make(cpu={"sockets": 4, "maxSockets": 2})).path == \
        "spec.domain.cpu.maxSockets"


def test_max_sockets_with_dedicated_cpus_pins_the_enabled_vcpus() -> None:
    doc = make(cpu={"sockets": 2, "maxSockets": 4, "dedicatedCpuPlacement": True})
    root = support.tree(doc, ConvertOptions(dedicated_cpus=(4, 5)))
    assert [p.get("cpuset") for p in root.iterfind("cputune/vcpupin")] == ["4", "5"]


# --- memory hotplug -------------------------------------------------------------------------
def test_max_guest_gives_max_memory_numa_and_virtio_mem() -> None:
    root = support.tree(make(memory={"guest": "1Gi", "maxGuest": "4Gi"}))
    max_memory = root.find("maxMemory")
    assert max_memory is not None
    assert (max_memory.text, max_memory.get("slots"), max_memory.get("unit")) == \
        (str(4 * 2**30), "0", "b")
    assert root.findtext("memory") == str(2**30)
    cell = root.find("cpu/numa/cell")
    assert cell is not None and cell.attrib == {"id": "0", "cpus": "0-0",
                                                "memory": str(2**30), "unit": "b"}
    device = root.find("devices/memory[@model='virtio-mem']/target")
    assert device is not None
    assert device.findtext("size") == str(3 * 2**30)
    assert device.findtext("node") == "0"
    assert device.findtext("block") == str(2 * 2**20)
    assert device.findtext("requested") == "0"


@pytest.mark.parametrize(("at_boot", "boot", "requested"), [
    ("1Gi", 2**30, 512 * 2**20),  # 512Mi hot-plugged since the start
    ("1536Mi", 1536 * 2**20, 0),  # a start: guestAtBoot is the guest memory
    ("2Gi", 1536 * 2**20, 0),  # cannot be the boot memory (above the guest): ignored
    ("1025Mi", 1536 * 2**20, 0),  # not block aligned: ignored
])
def test_guest_at_boot_keeps_the_running_layout(at_boot: str, boot: int,
                                                requested: int) -> None:
    doc = make(memory={"guest": "1536Mi", "maxGuest": "2Gi"})
    doc["status"] = {"memory": {"guestAtBoot": at_boot}}
    root = support.tree(doc)
    assert root.findtext("memory") == str(boot)
    cell = root.find("cpu/numa/cell")
    assert cell is not None and cell.get("memory") == str(boot)
    device = root.find("devices/memory[@model='virtio-mem']/target")
    assert device is not None
    assert device.findtext("size") == str(2 * 2**30 - boot)
    assert device.findtext("requested") == str(requested)


def test_max_guest_equal_to_guest_is_no_hotplug() -> None:
    root = support.tree(make(memory={"guest": "1Gi", "maxGuest": "1Gi"}))
    assert root.find("maxMemory") is None and root.find("devices/memory") is None


@pytest.mark.parametrize(("memory", "extra", "path"), [
    ({"guest": "2Gi", "maxGuest": "1Gi"}, {}, "spec.domain.memory.maxGuest"),
    ({"guest": "512Mi", "maxGuest": "2Gi"}, {}, "spec.domain.memory.maxGuest"),
    ({"guest": "1Gi", "maxGuest": "3073Mi"}, {}, "spec.domain.memory.maxGuest"),
    ({"maxGuest": "2Gi"}, {}, "spec.domain.memory.maxGuest"),
    ({"guest": "1Gi", "maxGuest": "2Gi"},
     {"cpu": {"realtime": {}, "dedicatedCpuPlacement": True}}, "spec.domain.memory.maxGuest"),
], ids=["below-guest", "small-guest", "unaligned", "no-guest", "realtime"])
def test_max_guest_checks(memory: dict[str, str], extra: dict[str, Any], path: str) -> None:
    assert error(make(memory=memory, **extra), ConvertOptions(dedicated_cpus=(0,))).path == path


# --- panic devices --------------------------------------------------------------------------
def test_panic_devices() -> None:
    root = support.tree(make(devices={"panicDevices": [{"model": "isa"}, {}]}))
    assert [p.attrib for p in root.iterfind("devices/panic")] == [{"model": "isa"}, {}]


def test_pvpanic_refused() -> None:
    exc = error(make(devices={"panicDevices": [{"model": "pvpanic"}]}))
    assert exc.path == "spec.domain.devices.panicDevices[0].model"


# --- ACPI tables ----------------------------------------------------------------------------
def _acpi(acpi: dict[str, str], volume: dict[str, Any] | None) -> dict[str, Any]:
    doc = make(firmware={"acpi": acpi})
    if volume is not None:
        doc["spec"]["volumes"] = [volume]
        doc["spec"]["domain"]["devices"]["disks"] = [{"name": volume["name"]}]
    return doc


def test_slic_table_from_a_secret_volume() -> None:
    conv = support.conversion(_acpi({"slicNameRef": "slic"},
                                    {"name": "slic", "secret": {"secretName": "lic"}}))
    table = ET.fromstring(conv.xml).find("os/acpi/table")
    path = "/var/run/kubevirt-private/secret/slic/slic.bin"
    assert table is not None and table.get("type") == "slic" and table.text == path
    assert ExistingFile(volume="slic", path=path) in conv.preps


@pytest.mark.parametrize(("acpi", "volume", "path"), [
    ({}, None, "spec.domain.firmware.acpi"),
    ({"slicNameRef": "nope"}, None, "spec.domain.firmware.acpi.slicNameRef"),
    ({"slicNameRef": "d"}, {"name": "d", "emptyDisk": {"capacity": "1Mi"}},
     "spec.domain.firmware.acpi.slicNameRef"),
    ({"msdmNameRef": "m"}, {"name": "m", "secret": {"secretName": "m"}},
     "spec.domain.firmware.acpi.msdmNameRef"),
], ids=["none", "missing", "not-secret", "msdm"])
def test_acpi_refusals(acpi: dict[str, str], volume: dict[str, Any] | None, path: str) -> None:
    assert error(_acpi(acpi, volume)).path == path


# --- realtime, NUMA, dedicated CPUs -----------------------------------------------------------
def test_realtime_turns_the_pmu_off() -> None:
    doc = make(cpu={"realtime": {"mask": "0"}, "dedicatedCpuPlacement": True},
               memory={"hugepages": {"pageSize": "2Mi"}})
    root = support.tree(doc, ConvertOptions(dedicated_cpus=(3,)))
    pmu = root.find("features/pmu")
    assert pmu is not None and pmu.get("state") == "off"
    assert root.find("memoryBacking/nosharepages") is not None


def test_realtime_needs_dedicated_cpus() -> None:
    assert error(make(cpu={"realtime": {}})).path == "spec.domain.cpu.realtime"


def test_numa_passthrough_refused() -> None:
    doc = make(cpu={"dedicatedCpuPlacement": True, "numa": {"guestMappingPassthrough": {}}})
    exc = error(doc, ConvertOptions(dedicated_cpus=(0,)))
    assert exc.path == "spec.domain.cpu.numa.guestMappingPassthrough"


def test_hint_dedicated_with_dedicated_cpus_on_kvm_only() -> None:
    doc = make(cpu={"dedicatedCpuPlacement": True})
    kvm = support.tree(doc, ConvertOptions(dedicated_cpus=(0,)))
    hint = kvm.find("features/kvm/hint-dedicated")
    assert hint is not None and hint.get("state") == "on"
    tcg = support.tree(doc, ConvertOptions(dedicated_cpus=(0,), emulation=True))
    assert tcg.find("features/kvm") is None


def test_vmport_off_on_x86_only() -> None:
    vmport = support.tree(make()).find("features/vmport")
    assert vmport is not None and vmport.get("state") == "off"
    doc = make(firmware={"bootloader": {"efi": {"secureBoot": False}}})
    arm = ET.fromstring(convert(doc, ConvertOptions(arch="aarch64")).xml)
    assert arm.find("features/vmport") is None


# --- Hyper-V TLB flush ------------------------------------------------------------------------
def test_tlbflush_direct_and_extended_refused_unless_off() -> None:
    base: dict[str, Any] = {"hyperv": {"vpindex": {}, "tlbflush": {"direct": {}, "extended": {}}}}
    assert error(make(features=base)).path == "spec.domain.features.hyperv.tlbflush.direct"
    off = copy.deepcopy(base)
    off["hyperv"]["tlbflush"] = {"direct": {"enabled": False}, "extended": {"enabled": False}}
    tlb = support.tree(make(features=off)).find("features/hyperv/tlbflush")
    assert tlb is not None and tlb.get("state") == "on" and len(tlb) == 0


# --- lifecycle ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("policy", "on_reboot"), [
    (None, "restart"), ("Reboot", "restart"), ("Terminate", "destroy")])
def test_reboot_policy(policy: str | None, on_reboot: str) -> None:
    doc = make(**({} if policy is None else {"rebootPolicy": policy}))
    assert support.tree(doc).findtext("on_reboot") == on_reboot


def test_unknown_reboot_policy_refused() -> None:
    assert error(make(rebootPolicy="Sometimes")).path == "spec.domain.rebootPolicy"


@pytest.mark.parametrize("kind", ["sev", "snp", "tdx"])
def test_launch_security_refused(kind: str) -> None:
    exc = error(make(launchSecurity={kind: {}}))
    assert exc.path == "spec.domain.launchSecurity" and kind in exc.reason


def test_start_paused_gets_a_boot_menu() -> None:
    doc = make()
    doc["spec"]["startStrategy"] = "Paused"
    menu = support.tree(doc).find("os/bootmenu")
    assert menu is not None and menu.attrib == {"enable": "yes", "timeout": "10000"}
    doc["spec"]["startStrategy"] = "Later"
    assert error(doc).path == "spec.startStrategy"
