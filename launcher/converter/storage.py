"""Disks: spec.domain.devices.disks paired by name with spec.volumes, as <disk> elements
plus the files they need (launcher.converter.plan records in ctx.preps), built the way
KubeVirt's converter builds them (pkg/virt-launcher/virtwrap/converter/converter.go:
Convert_v1_Disk_To_api_Disk, Convert_v1_Volume_To_api_Disk; pkg/container-disk,
pkg/ephemeral-disk, pkg/emptydisk, pkg/host-disk, pkg/cloud-init).

Matched KubeVirt behaviour
- Targets: virtio -> vda, vdb, ...; sata, scsi and usb share one sd counter (sda, sdb, ...),
  in disk order (makeDeviceName / FormatDeviceName, so vdz is followed by vdaa). Targets
  virt-handler recorded in status.volumeStatus[].target are kept, as newDeviceNamer does.
  scsi disks get drive address unit = their sd index on controller 0.
- Defaults: no target type -> disk; disk bus virtio; cdrom bus sata (scsi off x86_64, as
  KubeVirt's arch defaults), cdrom read-only; lun bus scsi. <alias name='ua-NAME'/>,
  <boot order>, error_policy (stop unless errorPolicy), model=ctx.virtio_model on virtio,
  serial and shareable (disk devices only, like KubeVirt), blockSize.custom -> <blockio>,
  dedicatedIOThread / ioThreadsPolicy -> driver iothread (machine.iothreads numbers them
  as setIOThreads does),
  blockMultiQueue -> driver queues = vCPUs. discard='unmap' on disk and lun devices and on
  containerDisk, emptyDisk and PVC / DataVolume sources.
- Volumes (where the data comes from): launcher.converter.volumes and, for cloud-init,
  launcher.converter.cloudinit.
- A cdrom without a volume is an empty tray (Convert_v1_Missing_Volume_To_api_Disk).
- Hotplug volumes, as KubeVirt's disk loop (storage/configurator.go) and
  generateConverterContext: status.volumeStatus[] entries with a hotplugVolume object are
  hotplug volumes, the others permanent. A disk is in the domain when its volume is
  permanent or there is no permanent entry at all (a VMI without volumeStatus converts
  with every disk), when its hotplug volume's phase is MountedToPod or Ready, or when it
  is an empty cdrom; otherwise it is still built and checked, and keeps its target name
  and iothread, but left out. The hotplug volume's data: volumes.hotplug (no
  preparation). A hotplug disk device must be on bus scsi or virtio (virt-api's
  ValidateHotplugDiskConfiguration); a hotplug cdrom may be on any cdrom bus (media
  inserted into an existing drive). Controllers follow all the disks, included or not
  (disk_buses): a scsi hotplug disk gets the virtio-scsi controller even
  with disableHotplug, as KubeVirt's requiresSCSIController.
- Validation as virt-api's admitter: disk names are DNS-1123 labels, unique; one target
  type; bus ide / virtio cdroms / read-only sata disks refused; pciAddress only on virtio;
  serial [A-Za-z0-9_.+-]{1,256}; boot orders >= 1 and unique; every volume used by a disk
  (or a filesystem); one source per volume; base64 data must decode.

Deliberate differences
- cache: KubeVirt probes O_DIRECT at start and falls back to writethrough; a pure
  conversion cannot, so an unset cache is 'none' (what KubeVirt picks on any real
  filesystem, and what shareable requires). Set cache: writethrough for volumes on a
  filesystem without O_DIRECT (tmpfs). io: native when cache is none and the volume is
  preallocated (opts.preallocated_volumes) or a block device (SetOptimalIOMode).
- A containerDisk whose format virt-handler did not report gets no <backingStore>: libvirt
  then reads the chain from the overlay, which launcher.vm.disks writes with the probed
  format (libvirt's schema requires a format in <backingStore>).
- Not supported (a field error, never a silently different guest): floppy, lun
  reservation, blockSize.matchVolume (needs probing the device) and
  blockSize.custom.discardGranularity (libvirt 9's schema lacks it); the volume sources
  volumes.UNSUPPORTED_SOURCES lists.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from launcher.converter import cloudinit, cpu, machine, volumes
from launcher.converter.context import Context
from launcher.converter.spec import DNS1123_LABEL, Node
from launcher.converter.volumes import (
    CLAIM_SOURCES,
    CLOUD_INIT_SOURCES,
    CONFIG_SOURCES,
    SUPPORTED_SOURCES,
    UNSUPPORTED_SOURCES,
    Source,
    Volume,
    source_kind,
)

__all__ = ["SUPPORTED_SOURCES", "UNSUPPORTED_SOURCES", "build", "disk_buses"]

DISK_BUSES = ("virtio", "sata", "scsi", "usb")
CDROM_BUSES = ("sata", "scsi", "usb")
LUN_BUSES = ("scsi",)
HOTPLUG_DISK_BUSES = ("scsi", "virtio")
CACHE_MODES = ("none", "writethrough", "writeback")
IO_MODES = ("native", "threads")
ERROR_POLICIES = ("stop", "ignore", "report", "enospace")
TRAY_STATES = ("open", "closed")
SERIAL_RE = re.compile(r"[A-Za-z0-9_.+-]{1,256}")
PCI_RE = re.compile(r"([0-9A-Fa-f]{4}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})\.([0-7])")
STATUS_TARGET_RE = re.compile(r"(vd|sd)([a-z]{1,3})")
BLOCK_SIZE_MIN = 512
BLOCK_SIZE_MAX = 2 * 1024 * 1024  # KubeVirt's maxCustomBlockSize


def _q(value: str) -> str:
    return json.dumps(value)


# --- the pieces of one disk -----------------------------------------------------------------
@dataclass(frozen=True)
class _Target:
    """What the guest sees: disks[i].disk | cdrom | lun."""

    device: str  # disk | cdrom | lun
    node: Node
    bus: str
    readonly: bool


@dataclass(frozen=True)
class _Disk:
    node: Node  # spec.domain.devices.disks[i]
    name: str
    target: _Target
    source: Source


@dataclass
class _Names:
    """KubeVirt's device namer: one counter per prefix, names virt-handler already gave
    (status.volumeStatus[].target) reserved for their disks."""

    assigned: dict[str, str] = field(default_factory=dict)  # disk name -> dev

    def target(self, disk: str, bus: str) -> tuple[str, int]:
        prefix = _prefix(bus)
        known = self.assigned.get(disk)
        if known is not None:
            return known, _letters_index(known[len(prefix):])
        used = set(self.assigned.values())
        index = 0
        while prefix + _letters(index) in used:
            index += 1
        dev = prefix + _letters(index)
        self.assigned[disk] = dev
        return dev, index


def _prefix(bus: str) -> str:
    return "vd" if bus == "virtio" else "sd"


def _letters(index: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa: Linux's sd naming (KubeVirt's FormatDeviceName)."""
    name = ""
    while index >= 0:
        name = chr(ord("a") + index % 26) + name
        index = index // 26 - 1
    return name


def _letters_index(letters: str) -> int:
    index = 0
    for char in letters:
        index = index * 26 + (ord(char) - ord("a") + 1)
    return index - 1


# --- entry point ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _VolumeStatus:
    """status.volumeStatus[] as KubeVirt's generateConverterContext splits it: entries with
    a hotplugVolume object are hotplug volumes (name -> phase), the others permanent.
    Malformed entries are skipped: status is KubeVirt's, not the user's to fix."""

    hotplug: dict[str, str]
    permanent: frozenset[str]

    def included(self, name: str, volume: Volume | None) -> bool:
        """KubeVirt's disk loop: a disk is in the domain when its volume is permanent (or
        no permanent volume is reported at all: permReady), when its hotplug volume is
        mounted into the pod (hotplugReady), or when it is an empty cdrom (no volume)."""
        perm_ready = name in self.permanent or not self.permanent
        hotplug_ready = self.hotplug.get(name) in volumes.HOTPLUG_READY_PHASES
        return perm_ready or hotplug_ready or volume is None


def _volume_status(ctx: Context) -> _VolumeStatus:
    hotplug: dict[str, str] = {}
    permanent: set[str] = set()
    for status in ctx.vmi.obj("status").items("volumeStatus"):
        entry = status.value
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        name: str = entry["name"]
        if isinstance(entry.get("hotplugVolume"), dict):
            phase = entry.get("phase")
            hotplug[name] = phase if isinstance(phase, str) else ""
        else:
            permanent.add(name)
    return _VolumeStatus(hotplug, frozenset(permanent))


def disk_buses(ctx: Context) -> frozenset[str]:
    """The buses of all of spec.domain.devices.disks, in the domain or not yet: KubeVirt
    decides on its controllers from the spec (requiresSCSIController)."""
    return frozenset(_target(ctx, disk).bus for disk in ctx.devices.items("disks"))


def build(ctx: Context, devices: ET.Element) -> None:
    """Append a <disk> per spec.domain.devices.disks entry that is in the domain (see
    _VolumeStatus.included) to `devices` and the files they need to ctx.preps."""
    disks = ctx.devices.items("disks")
    names = _disk_names(disks)
    volumes = _volumes(ctx, names)
    targets = [_target(ctx, disk) for disk in disks]
    status = _volume_status(ctx)
    iothreads = _iothread_ids(ctx, disks, targets)
    queues = _block_queues(ctx)
    namer = _Names(_status_targets(ctx, {name: _prefix(target.bus) for name, target
                                          in zip(names, targets, strict=True)}))
    boot_orders: dict[int, str] = {}
    for i, (node, name, target) in enumerate(zip(disks, names, targets, strict=True)):
        volume = volumes.get(name)
        source = _source(node, name, target, volume, ctx, hotplug=name in status.hotplug)
        disk = _Disk(node, name, target, source)
        tuning: dict[str, str] = {}
        if target.bus == "virtio":  # libvirt has iothreads and queues for virtio-blk only
            if i in iothreads:
                tuning["iothread"] = str(iothreads[i])
            if queues:
                tuning["queues"] = str(queues)
        # Built (and checked, and named) whether in the domain or not, as KubeVirt does:
        # a disk waiting for its volume keeps its iothread and target name.
        el = _disk(ctx, disk, namer, tuning)
        _boot_order(node, el, boot_orders)
        if not status.included(name, volume):
            continue
        devices.append(el)
        if disk.source.prep is not None:
            ctx.preps.append(disk.source.prep)


def _disk_names(disks: list[Node]) -> list[str]:
    seen: dict[str, str] = {}
    names = []
    for disk in disks:
        name = disk.req_str("name", nonempty=True)
        if not DNS1123_LABEL.fullmatch(name):
            disk.fail(f"{_q(name)} is not a valid disk name (a DNS-1123 label: lowercase "
                      f'letters, digits and "-", at most 63 characters)', "name")
        if name in seen:
            disk.fail(f"{_q(name)} is already the name of {seen[name]}", "name")
        seen[name] = disk.path
        names.append(name)
    return names


def _volumes(ctx: Context, disk_names: list[str]) -> dict[str, Volume]:
    """spec.volumes by name: each used by a disk, with one supported source."""
    filesystems = {fs.req_str("name") for fs in ctx.devices.items("filesystems")}
    acpi_tables = machine.acpi_table_volumes(ctx)
    seen: dict[str, str] = {}
    volumes: dict[str, Volume] = {}
    cloud_init: str | None = None
    for index, node in enumerate(ctx.spec.items("volumes")):
        name = node.req_str("name", nonempty=True)
        if name in seen:
            node.fail(f"{_q(name)} is already the name of {seen[name]}", "name")
        seen[name] = node.path
        if name not in disk_names:
            if name in filesystems:
                continue  # a filesystem's volume: not a disk, devices.build decides
            if name in acpi_tables:
                source_kind(node)  # machine._acpi_tables reads it, as a secret only
                continue
            node.fail(f"{_q(name)} is not used by any disk in spec.domain.devices.disks",
                      "name")
        volume = Volume(node, name, index, source_kind(node))
        if volume.kind in CLOUD_INIT_SOURCES:
            if cloud_init is not None:
                node.fail(f"only one cloud-init volume is supported ({cloud_init} is one)",
                          volume.kind)
            cloud_init = node.path
        volumes[name] = volume
    return volumes


def _status_targets(ctx: Context, prefixes: dict[str, str]) -> dict[str, str]:
    """Targets virt-handler recorded for these disks (name -> target prefix) in an earlier
    domain, kept so a disk keeps its name. Malformed ones, and ones of another bus, are
    ignored: status is KubeVirt's, not the user's to fix."""
    kept: dict[str, str] = {}
    for status in ctx.vmi.obj("status").items("volumeStatus"):
        if not isinstance(status.value, dict):
            continue
        name, target = status.value.get("name"), status.value.get("target")
        if (isinstance(name, str) and name in prefixes and name not in kept
                and isinstance(target, str) and STATUS_TARGET_RE.fullmatch(target)
                and target.startswith(prefixes[name]) and target not in kept.values()):
            kept[name] = target
    return kept


# --- the guest side -------------------------------------------------------------------------
def _choice(node: Node, key: str, default: str | None, choices: tuple[str, ...]) -> str | None:
    """`key` from `choices`; absent or "" (Go's zero value) means `default`."""
    raw = node.str(key)
    if raw is None or raw == "":
        return default
    return node.str(key, choices=choices)


def _target(ctx: Context, disk: Node) -> _Target:
    kinds = [key for key in ("disk", "cdrom", "lun", "floppy") if disk.has(key)]
    if "floppy" in kinds:
        disk.fail("floppy disks are not supported by this launcher", "floppy")
    if len(kinds) > 1:
        disk.fail(f"only one of disk, cdrom, lun may be set, got {', '.join(kinds)}")
    device = kinds[0] if kinds else "disk"  # KubeVirt: no target type means a disk
    node = disk.obj(device)
    if device == "cdrom":
        # KubeVirt's arch defaults: only x86 machines have an AHCI controller.
        default_bus = "sata" if ctx.opts.arch in ("x86_64", "amd64") else "scsi"
        bus = _choice(node, "bus", default_bus, CDROM_BUSES)
        readonly = node.bool("readonly", True)
        _choice(node, "tray", None, TRAY_STATES)
    elif device == "lun":
        bus = _choice(node, "bus", "scsi", LUN_BUSES)
        readonly = node.bool("readonly", False)
        if node.bool("reservation", False):
            node.fail("persistent reservation is not supported by this launcher",
                      "reservation")
    else:
        bus = _choice(node, "bus", "virtio", DISK_BUSES)
        readonly = node.bool("readonly", False)
        if readonly and bus == "sata":
            node.fail("a sata hard disk cannot be read-only (QEMU's ide-hd); use virtio or "
                      "scsi", "readonly")
    assert bus is not None and readonly is not None
    if disk.bool("dedicatedIOThread", False) and bus != "virtio":
        disk.fail(f"IOThreads are only supported on bus virtio, not {_q(bus)}",
                  "dedicatedIOThread")
    return _Target(device, node, bus, readonly)


def _disk(ctx: Context, disk: _Disk, namer: _Names, tuning: dict[str, str]) -> ET.Element:
    target, source = disk.target, disk.source
    el = ET.Element("disk", type=source.type, device=target.device)
    if target.bus == "virtio":
        el.set("model", ctx.virtio_model)
    _driver(ctx, disk, el).attrib.update(tuning)
    if source.path is not None:
        ET.SubElement(el, "source", {"file" if source.type == "file" else "dev": source.path})
    if source.backing is not None:
        kind, path, fmt = source.backing
        backing = ET.SubElement(el, "backingStore", type=kind)
        ET.SubElement(backing, "format", type=fmt)
        ET.SubElement(backing, "source", {"file" if kind == "file" else "dev": path})
    dev, index = namer.target(disk.name, target.bus)
    target_el = ET.SubElement(el, "target", dev=dev, bus=target.bus)
    tray = target.node.str("tray") if target.device == "cdrom" else None
    if tray:
        target_el.set("tray", tray)
    if target.readonly or source.readonly:
        ET.SubElement(el, "readonly")
    if target.device == "disk":
        _disk_only(disk.node, el)
    ET.SubElement(el, "alias", name=f"ua-{disk.name}")
    if target.device == "disk":
        _pci_address(target, el)
    if target.bus == "scsi":
        # KubeVirt's assignDiskToSCSIController: unit = the sd index, controller 0.
        ET.SubElement(el, "address", type="drive", controller="0", bus="0", target="0",
                      unit=str(index))
    _block_io(disk.node, el)
    return el


def _disk_only(disk: Node, el: ET.Element) -> None:
    """serial and shareable: KubeVirt reads them for disk devices only."""
    serial = disk.str("serial")
    if serial:
        if not SERIAL_RE.fullmatch(serial):
            disk.fail("must be 1 to 256 of the characters A-Z a-z 0-9 _ . + -", "serial")
        ET.SubElement(el, "serial").text = serial
    if disk.bool("shareable", False):
        ET.SubElement(el, "shareable")


def _pci_address(target: _Target, el: ET.Element) -> None:
    address = target.node.str("pciAddress")
    if not address:
        return
    if target.bus != "virtio":
        target.node.fail("a PCI address can only be set on bus virtio", "pciAddress")
    match = PCI_RE.fullmatch(address)
    if match is None:
        target.node.fail(f"{_q(address)} is not a PCI address (DDDD:BB:SS.F)", "pciAddress")
    domain, bus, slot, function = match.groups()
    ET.SubElement(el, "address", type="pci", domain=f"0x{domain}", bus=f"0x{bus}",
                  slot=f"0x{slot}", function=f"0x{function}")


def _boot_order(disk: Node, el: ET.Element, taken: dict[int, str]) -> None:
    order = disk.int("bootOrder", minimum=1, maximum=2**32 - 1)
    if order is None:
        return
    if order in taken:
        disk.fail(f"boot order {order} is already used by {taken[order]}", "bootOrder")
    taken[order] = disk.path
    # After <target>/<readonly>: libvirt's schema interleaves, this keeps KubeVirt's order.
    position = [child.tag for child in el].index("alias")
    el.insert(position, ET.Element("boot", order=str(order)))


def _block_io(disk: Node, el: ET.Element) -> None:
    block_size = disk.obj("blockSize")
    custom = block_size.obj("custom")
    match = block_size.obj("matchVolume")
    if match.present and match.bool("enabled", True):
        if custom.present:
            block_size.fail("custom and matchVolume cannot both be set")
        block_size.fail("not supported by this launcher (needs probing the volume)",
                        "matchVolume")
    if not custom.present:
        return
    if custom.has("discardGranularity"):
        custom.fail("not supported by this launcher (libvirt 9)", "discardGranularity")
    logical = custom.int("logical", required=True)
    physical = custom.int("physical", required=True)
    assert logical is not None and physical is not None
    if logical > physical:
        custom.fail(f"must not exceed physical ({physical}), got {logical}", "logical")
    for key, size in (("logical", logical), ("physical", physical)):
        if not BLOCK_SIZE_MIN <= size <= BLOCK_SIZE_MAX or size & (size - 1):
            custom.fail(f"must be a power of 2 from {BLOCK_SIZE_MIN} to {BLOCK_SIZE_MAX}, "
                        f"got {size}", key)
    ET.SubElement(el, "blockio", logical_block_size=str(logical),
                  physical_block_size=str(physical))


def _driver(ctx: Context, disk: _Disk, el: ET.Element) -> ET.Element:
    node, target, source = disk.node, disk.target, disk.source
    driver = ET.SubElement(el, "driver", name="qemu", type=source.format)
    if source.path is not None:  # an empty tray has nothing to cache
        cache = _choice(node, "cache", "none", CACHE_MODES)
        assert cache is not None
        if target.device == "disk" and node.bool("shareable", False) and cache != "none":
            node.fail(f'a shareable disk requires cache "none", got {_q(cache)}', "cache")
        driver.set("cache", cache)
        io = _choice(node, "io", None, IO_MODES)
        if io == "native" and cache != "none":
            # QEMU's aio=native needs O_DIRECT, which only cache none gives.
            node.fail(f'io "native" requires cache "none", got {_q(cache)}', "io")
        if io is None and cache == "none" and (
                source.type == "block" or disk.name in ctx.opts.preallocated_volumes):
            io = "native"
        if io is not None:
            driver.set("io", io)
    policy = _choice(node, "errorPolicy", "stop", ERROR_POLICIES)
    assert policy is not None
    driver.set("error_policy", policy)
    if source.discard or target.device in ("disk", "lun"):
        driver.set("discard", "unmap")
    return driver


# --- iothreads and queues -------------------------------------------------------------------
def _iothread_ids(ctx: Context, disks: list[Node], targets: list[_Target]) -> dict[int, int]:
    """Disk index -> iothread id, for virtio disks (libvirt has iothreads for virtio-blk
    only) and only when the VMI asks for iothreads: KubeVirt's UseIOThreads (seed 001 has
    <iothreads>1</iothreads> and no iothread on its disk). The numbering and the count in
    <iothreads> are machine.iothreads'."""
    dedicated = [bool(disk.bool("dedicatedIOThread", False)) for disk in disks]
    if ctx.domain_spec.str("ioThreadsPolicy") in (None, "") and not any(dedicated):
        return {}
    virtio = [i for i, target in enumerate(targets) if target.bus == "virtio"]
    ids = cpu.iothreads(ctx).assign([dedicated[i] for i in virtio])
    return dict(zip(virtio, ids, strict=True))


def _block_queues(ctx: Context) -> int | None:
    """blockMultiQueue: one virtio-blk queue per vCPU of the domain."""
    if not ctx.devices.bool("blockMultiQueue", False):
        return None
    return cpu.cpu_topology(ctx).vcpus


# --- the data side --------------------------------------------------------------------------
def _source(disk: Node, name: str, target: _Target, volume: Volume | None,
            ctx: Context, *, hotplug: bool) -> Source:
    if volume is None:
        if target.device != "cdrom":
            disk.fail(f"no volume named {_q(name)} in spec.volumes", "name")
        return Source("block", None, "raw", discard=False)  # an empty tray
    if target.device == "lun" and volume.kind not in CLAIM_SOURCES:
        disk.fail(f"a lun needs a block-mode persistentVolumeClaim or dataVolume, not "
                  f"{volume.kind}", "lun")
    if hotplug:
        if target.device == "disk" and target.bus not in HOTPLUG_DISK_BUSES:
            # virt-api's ValidateHotplugDiskConfiguration (a lun is on scsi already; a
            # cdrom takes hotplugged media on any bus).
            target.node.fail(f"a hotplug disk must be on bus scsi or virtio, not "
                             f"{_q(target.bus)}", "bus")
        return volumes.hotplug(ctx, volume, target.device)
    # Generated images: read-only but on a sata hard disk (QEMU's ide-hd cannot be).
    readonly = not (target.device == "disk" and target.bus == "sata")
    if volume.kind == "containerDisk":
        return volumes.container_disk(ctx, volume)
    if volume.kind in CLAIM_SOURCES:
        return volumes.claim(ctx, volume, target.device)
    if volume.kind == "ephemeral":
        return volumes.ephemeral(ctx, volume)
    if volume.kind == "hostDisk":
        return volumes.host_disk(ctx, volume)
    if volume.kind == "emptyDisk":
        return volumes.empty_disk(ctx, volume)
    if volume.kind in CONFIG_SOURCES:
        return volumes.config_iso(ctx, volume, readonly)
    return cloudinit.build(ctx, volume, readonly)
