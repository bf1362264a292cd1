"""vCPU and memory hotplug on a running domain: SyncVirtualMachineCPUs and
SyncVirtualMachineMemory, as KubeVirt's UpdateVCPUs and UpdateGuestMemory
(virtwrap/manager.go, pkg/liveupdate/memory).

- vCPUs: the VMI's topology (sockets x cores x threads, as the converter's <vcpu current>)
  becomes the live and persistent vCPU count (SetVcpusFlags LIVE|CONFIG); with dedicated
  CPUs the converter's <vcpupin>s are applied to the running domain. The count must fit
  the vCPUs the domain was started with (spec.domain.cpu.maxSockets).
- Memory: the virtio-mem device's requested size becomes spec.domain.memory.guest minus
  status.memory.guestAtBoot (KubeVirt's BuildMemoryDevice), LIVE. Without guestAtBoot the
  boot memory is the guest NUMA cell the converter gave the running domain. It must be
  block aligned, not negative, and fit the device (maxGuest).
Errors name the VMI field; nothing is changed when one is raised.
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from launcher.converter.spec import parse_quantity

UNITS = {"b": 1, "bytes": 1, "KiB": 2**10, "k": 2**10, "MiB": 2**20, "M": 2**20,
         "GiB": 2**30, "G": 2**30, "TiB": 2**40, "T": 2**40, "KB": 10**3, "MB": 10**6,
         "GB": 10**9, "TB": 10**12}


class ResourceError(Exception):
    """A VMI that cannot be applied to the running domain; `path` names the field."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def _mib(size: int) -> str:
    return f"{size / 2**20:g} MiB"


# --- vCPUs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class VcpuCounts:
    current: int
    maximum: int
    hotpluggable: bool = False  # <vcpus> lists vCPUs that can come and go


def vcpu_counts(xml: str) -> VcpuCounts:
    root = ET.fromstring(xml)
    vcpu = root.find("vcpu")
    if vcpu is None or not (vcpu.text or "").strip():
        return VcpuCounts(1, 1)
    maximum = int((vcpu.text or "1").strip())
    pluggable = any(v.get("hotpluggable") == "yes" for v in root.iterfind("vcpus/vcpu"))
    return VcpuCounts(int(vcpu.get("current", maximum)), maximum, pluggable)


def vcpu_pins(xml: str) -> list[tuple[int, str]]:
    return [(int(pin.get("vcpu", "0")), pin.get("cpuset", ""))
            for pin in ET.fromstring(xml).iterfind("cputune/vcpupin")]


def check_vcpus(wanted: VcpuCounts, running: VcpuCounts, live_vcpus: int) -> int | None:
    """The vCPU count to set, None when the domain has it already."""
    if wanted.current == live_vcpus:
        return None
    if not running.hotpluggable:
        raise ResourceError(
            f"the domain runs {live_vcpus} vCPU(s) without hotpluggable vCPUs; changing "
            f"the count to {wanted.current} needs maxSockets at start (or a restart)",
            "spec.domain.cpu.maxSockets")
    if wanted.current > running.maximum:
        raise ResourceError(
            f"{wanted.current} vCPUs requested, the domain was started with room for "
            f"{running.maximum} (maxSockets); more need a restart", "spec.domain.cpu.sockets")
    return wanted.current


def cpu_map(cpuset: str) -> tuple[bool, ...]:
    """libvirt's pinning map for a cpuset like "2" or "2-3,6"."""
    cpus: set[int] = set()
    for part in cpuset.split(","):
        if "-" in part:
            low, high = part.split("-", 1)
            cpus.update(range(int(low), int(high) + 1))
        elif part.strip():
            cpus.add(int(part))
    return tuple(i in cpus for i in range(max(cpus, default=-1) + 1))


# --- memory ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryChange:
    xml: str  # the virtio-mem device with the new requested size
    requested_before: int
    requested: int


def _bytes(elem: ET.Element | None) -> int:
    if elem is None or not (elem.text or "").strip():
        return 0
    return int((elem.text or "0").strip()) * UNITS.get(elem.get("unit", "KiB"), 1)


def _quantity(vmi: Mapping[str, Any], *keys: str) -> int | None:
    node: Any = vmi
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    if node is None:
        return None
    path = ".".join(keys)
    try:
        value = parse_quantity(str(node))
    except ValueError as exc:
        raise ResourceError(str(exc), path) from None
    if value < 0 or value != value.to_integral_value():
        raise ResourceError(f"{node!r} is not a whole number of bytes", path)
    return int(value)


def memory_change(vmi: Mapping[str, Any], live_xml: str) -> MemoryChange | None:
    """The virtio-mem update that gives the guest spec.domain.memory.guest; None when it has
    it already."""
    root = ET.fromstring(live_xml)
    device = next((d for d in root.iterfind("devices/memory")
                   if d.get("model") == "virtio-mem"), None)
    if device is None:
        raise ResourceError("the domain was started without memory hotplug (no virtio-mem "
                            "device); a new guest memory size needs maxGuest at start or a "
                            "restart", "spec.domain.memory.maxGuest")
    guest = _quantity(vmi, "spec", "domain", "memory", "guest")
    if guest is None:
        raise ResourceError("required for memory hotplug", "spec.domain.memory.guest")
    at_boot = _quantity(vmi, "status", "memory", "guestAtBoot")
    if at_boot is None:
        cell = root.find("cpu/numa/cell")
        if cell is None:
            raise ResourceError("unknown, and the domain has no guest NUMA cell to tell it",
                                "status.memory.guestAtBoot")
        at_boot = int(cell.get("memory", "0")) * UNITS.get(cell.get("unit", "KiB"), 1)
    target = device.find("target")
    assert target is not None  # libvirt's live XML of a virtio-mem device has one
    size, block = _bytes(target.find("size")), _bytes(target.find("block"))
    before = _bytes(target.find("requested"))
    requested = guest - at_boot
    path = "spec.domain.memory.guest"
    if requested < 0:
        raise ResourceError(f"{_mib(guest)} is less than the memory the guest booted with "
                            f"({_mib(at_boot)}); memory below it cannot be unplugged", path)
    if requested > size:
        raise ResourceError(f"{_mib(guest)} exceeds what the domain can grow to "
                            f"({_mib(at_boot + size)}, maxGuest)", path)
    if block and requested % block:
        raise ResourceError(f"the change from the boot memory ({_mib(requested)}) must be a "
                            f"multiple of the {_mib(block)} hotplug block", path)
    if requested == before:
        return None
    updated = copy.deepcopy(device)
    new_target = updated.find("target")
    assert new_target is not None
    for old in new_target.findall("requested"):
        new_target.remove(old)
    ET.SubElement(new_target, "requested", unit="KiB").text = str(requested // 1024)
    for current in new_target.findall("current"):
        new_target.remove(current)  # libvirt's read-only figure; refused on input
    return MemoryChange(ET.tostring(updated, encoding="unicode"), before, requested)
