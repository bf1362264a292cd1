"""The guest's memory: <memory>, <currentMemory>, hugepages backing, and memory hotplug
(spec.domain.memory.maxGuest), as KubeVirt's converter does it (compute/memory.go,
compute/memory_backing.go, pkg/liveupdate/memory).

Matched KubeVirt behaviour
- Memory: spec.domain.memory.guest, else resources.requests.memory, else
  resources.limits.memory, in bytes (<memory unit='b'>).
- maxGuest above the guest memory: <maxMemory slots='0' unit='b'> (KubeVirt's
  MaxMemory, slots always 0: virtio-mem needs no DIMM slots), the boot memory in
  <memory>, and the pluggable memory as one virtio-mem device on NUMA node 0 (size
  maxGuest - guest, block 2 MiB, or 1 GiB with 1Gi hugepages; requested 0 at boot:
  KubeVirt attaches the same device at start with the requested size). With
  status.memory.guestAtBoot below the guest memory (memory hot-plugged since the start),
  the boot memory is guestAtBoot and virtio-mem requests the rest, as
  SyncVirtualMachineMemory set it live (KubeVirt's BuildMemoryDevice), so a running
  domain's re-sync keeps its layout. maxGuest equal to
  the guest memory is no hotplug, as in KubeVirt. The checks are virt-api's
  (ValidateLiveUpdateMemory): x86_64 only, guest memory set, at least 1 GiB, both
  aligned to the block size, maxGuest >= guest, not with realtime, NUMA passthrough or
  launchSecurity.
- Realtime with hugepages: <nosharepages/> (vcpu.go).

Deliberate differences
- virtio-mem needs a guest NUMA node: libvirt refuses the device without one. KubeVirt
  adds it elsewhere in its launcher; here <cpu><numa> gets one cell with every vCPU and
  the boot memory (cpu.build_cpu calls numa_cell).
- Hugepages carry their page size (<page size unit='KiB'/>) instead of KubeVirt's bare
  <hugepages/> plus memfd backing and a NUMA cell.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from launcher.converter.context import Context
from launcher.converter.xmlutil import arch, human, q, sub

MIN_MEMORY = 2**20
MAX_MEMORY = 2**50  # 1Pi: far above any host, far below libvirt's unsigned long long KiB
HUGEPAGE_SIZES = {"x86_64": (2 * 2**20, 2**30),
                  "aarch64": (64 * 2**10, 2 * 2**20, 32 * 2**20, 2**30)}
HOTPLUG_BLOCK = 2 * 2**20  # KubeVirt's HotplugBlockAlignmentBytes
HOTPLUG_BLOCK_1G = 2**30  # with 1Gi hugepages
HOTPLUG_MIN_GUEST = 2**30  # KubeVirt's requiredMinGuestMemory


def guest_memory(ctx: Context) -> tuple[int, str]:
    """The guest's memory in bytes and the field it came from."""
    resources = ctx.domain_spec.obj("resources")
    sources = ((ctx.domain_spec.obj("memory"), "guest"),
               (resources.obj("requests"), "memory"), (resources.obj("limits"), "memory"))
    for node, key in sources:
        size = node.byte_size(key)
        if size is None:
            continue
        if size < MIN_MEMORY:
            node.fail(f"{q(node.child(key).value)} is too little memory (at least 1Mi)", key)
        if size > MAX_MEMORY:
            node.fail(f"{q(node.child(key).value)} is more memory than supported (at most "
                      f"1Pi)", key)
        return size, node.child(key).path
    resources.obj("requests").fail("required: the guest's memory (or set "
                                   "spec.domain.memory.guest)", "memory")


@dataclass(frozen=True)
class Hotplug:
    """Memory hotplug: the boot memory, the maximum and the virtio-mem block size."""

    guest: int
    max_guest: int
    block: int
    boot: int  # the memory the guest booted with (status.memory.guestAtBoot)

    @property
    def pluggable(self) -> int:
        return self.max_guest - self.boot

    @property
    def requested(self) -> int:
        return self.guest - self.boot


def hotplug(ctx: Context) -> Hotplug | None:
    """spec.domain.memory.maxGuest, checked as virt-api does; None: no memory hotplug."""
    memory = ctx.domain_spec.obj("memory")
    max_guest = memory.byte_size("maxGuest")
    if max_guest is None:
        return None
    spec = ctx.domain_spec
    if not memory.has("guest"):
        memory.fail("memory hotplug needs spec.domain.memory.guest", "maxGuest")
    guest, _ = guest_memory(ctx)
    if max_guest == guest:
        return None  # KubeVirt: no hotplug when they are equal
    if max_guest < guest:
        memory.fail(f"must not be less than the guest memory ({human(guest)})", "maxGuest")
    for node, key, what in ((spec.obj("cpu"), "realtime", "realtime VMs"),
                            (spec.obj("cpu").obj("numa"), "guestMappingPassthrough",
                             "guest NUMA mapping passthrough"),
                            (spec, "launchSecurity", "encrypted VMs")):
        if node.has(key):
            memory.fail(f"memory hotplug is not compatible with {what} ({node.path}.{key})",
                        "maxGuest")
    if arch(ctx) != "x86_64":
        memory.fail("memory hotplug is only available on x86_64", "maxGuest")
    if guest < HOTPLUG_MIN_GUEST:
        memory.fail("memory hotplug needs at least 1Gi of guest memory", "maxGuest")
    block = HOTPLUG_BLOCK_1G if memory.obj("hugepages").str("pageSize") == "1Gi" \
        else HOTPLUG_BLOCK
    for key, size in (("guest", guest), ("maxGuest", max_guest)):
        if size % block:
            memory.fail(f"must be {human(block)} aligned for memory hotplug", key)
    return Hotplug(guest=guest, max_guest=max_guest, block=block,
                   boot=_guest_at_boot(ctx, guest, block))


def _guest_at_boot(ctx: Context, guest: int, block: int) -> int:
    """status.memory.guestAtBoot: virt-controller's record of the boot memory (the guest
    memory at the first start). The running domain's layout: boot memory in the NUMA cell,
    the rest requested from virtio-mem (KubeVirt's BuildMemoryDevice); equal to the guest
    memory at a start. One that cannot be the boot memory (above the guest memory, below
    the minimum or not block aligned) is ignored."""
    at_boot = ctx.vmi.obj("status").obj("memory").byte_size("guestAtBoot")
    if at_boot is None or at_boot > guest or at_boot < HOTPLUG_MIN_GUEST or at_boot % block:
        return guest
    return at_boot


def build(ctx: Context, dom: ET.Element) -> None:
    """<maxMemory>, <memory>, <currentMemory> and <memoryBacking>."""
    size, source = guest_memory(ctx)
    plug = hotplug(ctx)
    if plug is not None:
        sub(dom, "maxMemory", str(plug.max_guest), slots=str(ctx.opts.max_memory_slots),
            unit="b")
        size = plug.boot
    sub(dom, "memory", str(size), unit="b")
    sub(dom, "currentMemory", str(size), unit="b")
    memory = ctx.domain_spec.obj("memory")
    hugepages = memory.obj("hugepages")
    if not hugepages.present:
        return
    page = hugepages.byte_size("pageSize", required=True)
    assert page is not None
    allowed = HUGEPAGE_SIZES.get(arch(ctx), HUGEPAGE_SIZES["x86_64"])
    if page not in allowed:
        hugepages.fail(f"{q(hugepages.child('pageSize').value)} is not supported on "
                       f"{arch(ctx)} (expected one of: "
                       f"{', '.join(human(p) for p in allowed)})", "pageSize")
    if size % page:
        hugepages.fail(f"the guest memory ({source} = {human(size)}) is not a multiple of "
                       f"the page size {human(page)}", "pageSize")
    backing = sub(dom, "memoryBacking")
    sub(sub(backing, "hugepages"), "page", size=str(page // 1024), unit="KiB")
    if ctx.domain_spec.obj("cpu").has("realtime"):
        sub(backing, "nosharepages")  # KubeVirt's realtime setting with hugepages


def numa_cell(ctx: Context, cpu_el: ET.Element, vcpus: int) -> None:
    """The one guest NUMA node virtio-mem plugs into (memory hotplug only)."""
    plug = hotplug(ctx)
    if plug is None:
        return
    sub(sub(cpu_el, "numa"), "cell", id="0", cpus=f"0-{vcpus - 1}", memory=str(plug.boot),
        unit="b")


def hotplug_device(ctx: Context, devices: ET.Element) -> None:
    """The virtio-mem device holding the pluggable memory, requesting what the guest has
    beyond its boot memory (nothing at a start)."""
    plug = hotplug(ctx)
    if plug is None:
        return
    target = sub(sub(devices, "memory", model="virtio-mem"), "target")
    sub(target, "size", str(plug.pluggable), unit="b")
    sub(target, "node", "0")
    sub(target, "block", str(plug.block), unit="b")
    sub(target, "requested", str(plug.requested), unit="b")
