"""The data side of a disk: where spec.volumes[] puts the bytes a <disk> reads, and the
file the launcher must prepare for it (KubeVirt's converter: storage/volume.go;
pkg/config, pkg/container-disk, pkg/ephemeral-disk, pkg/emptydisk, pkg/host-disk).

Matched KubeVirt behaviour
- containerDisk: a qcow2 overlay <ephemeral>/disk-data/VOLUME/disk.qcow2 on
  <container-disks>/disk_N.img, N the volume's index in spec.volumes, backing format from
  virt-handler's DisksInfo.
- persistentVolumeClaim / dataVolume: raw <private>/vmi-disks/VOLUME/disk.img, or, when
  the launcher's probe found <block-device-dir>/VOLUME to be a block device (a block-mode
  PVC: KubeVirt's IsBlockPVC / IsBlockDV), <disk type='block'> on that device.
- Hotplug volumes (status.volumeStatus[] entry of the same name with a hotplugVolume
  object; storage.build decides when the disk is in the domain): a persistentVolumeClaim
  or dataVolume (or hostDisk, which KubeVirt's convert_v1_Hotplug_Volume_To_api_Disk also
  takes) is raw <hotplug-disks>/VOLUME.img, or <disk type='block'> on
  <hotplug-disks>/VOLUME when the launcher's probe found that to be a block device
  (opts.hotplug_block_volumes, KubeVirt's isHotplugBlockDeviceVolume). virt-handler
  mounts them into the pod: no preparation, the launcher neither creates nor touches
  them. Any other source is refused as KubeVirt refuses it ("hotplug disk NAME
  references an unsupported source").
- ephemeral: a qcow2 overlay at the containerDisk overlay path on the PVC (its image or
  its block device) as a read-only raw backing store.
- hostDisk: raw <private>/vmi-disks/VOLUME/<basename of path> (where KubeVirt mounts the
  directory of hostDisk.path); DiskOrCreate creates it at capacity when missing.
- emptyDisk: qcow2 <ephemeral>/empty-disks/VOLUME.qcow2, created fresh at capacity.
- configMap / secret / downwardAPI: an ISO of the directory KubeVirt mounts at
  <private>/{config-map,secret,downwardapi}/VOLUME, at
  <private>/{config-map,secret,downwardapi}-disks/VOLUME.iso, label volumeLabel or
  "cfgdata"; serviceAccount: the token directory
  /var/run/secrets/kubernetes.io/serviceaccount as
  <private>/service-account-disk/service-account.iso; sysprep (configMap or secret): the
  directory <private>/sysprep/VOLUME as <private>/sysprep-disks/VOLUME.iso, label
  "unattendCD", which must hold autounattend.xml or unattend.xml.
- cloudInitNoCloud / cloudInitConfigDrive: launcher.converter.cloudinit.

Deliberate differences
- Config, sysprep and cloud-init ISOs are read-only (except on a sata hard disk, which
  QEMU cannot make read-only); KubeVirt leaves them writable, though it rewrites them
  every start.
- Not supported, naming the field: downwardMetrics (needs virt-handler's vhostmd metrics
  writer), memoryDump (no guest disk: KubeVirt's converter skips it), a file-based volume
  under a lun.
- No changed block tracking (KubeVirt's ApplyCBT qcow2 overlay on a hotplug volume): the
  hotplug disk is always the raw file or device itself.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from launcher.converter.context import Context
from launcher.converter.options import DiskInfo
from launcher.converter.plan import (
    ConfigIso,
    ContainerDiskOverlay,
    EmptyDisk,
    FileDisk,
    Prep,
)
from launcher.converter.spec import Node
from launcher.converter.xmlutil import q

HOST_DISK_TYPES = ("Disk", "DiskOrCreate")
BACKING_FORMATS = ("raw", "qcow2")
CLAIM_SOURCES = ("persistentVolumeClaim", "dataVolume")
CLOUD_INIT_SOURCES = ("cloudInitNoCloud", "cloudInitConfigDrive")
# The sources KubeVirt's convert_v1_Hotplug_Volume_To_api_Disk takes (hostDisk: a PVC
# virt-handler's ReplacePVCByHostDisk rewrote).
HOTPLUG_SOURCES = (*CLAIM_SOURCES, "hostDisk")
# status.volumeStatus[].phase of a hotplug volume whose disk is in the domain (KubeVirt's
# HotplugVolumeMounted and VolumeReady).
HOTPLUG_READY_PHASES = ("MountedToPod", "Ready")
# kind -> (source directory under the private dir, ISO directory under it)
CONFIG_DIRS = {"configMap": ("config-map", "config-map-disks"),
               "secret": ("secret", "secret-disks"),
               "downwardAPI": ("downwardapi", "downwardapi-disks")}
CONFIG_SOURCES = (*CONFIG_DIRS, "serviceAccount", "sysprep")
SUPPORTED_SOURCES = ("containerDisk", *CLAIM_SOURCES, "ephemeral", "hostDisk", "emptyDisk",
                     *CONFIG_SOURCES, *CLOUD_INIT_SOURCES)
UNSUPPORTED_SOURCES = {
    "downwardMetrics": "needs virt-handler's vhostmd metrics writer, which this launcher "
                       "does not have",
    "memoryDump": "a memory dump volume is no guest disk (KubeVirt's converter skips it); "
                  "this converter does not take one in spec.volumes",
    "containerPath": "a container path is shared through virtiofs, which needs KubeVirt's "
                     "virtiofsd container",
}
DEFAULT_CONFIG_LABEL = "cfgdata"  # xorrisofs' -volid in KubeVirt's createIsoConfigImage
SYSPREP_LABEL = "unattendCD"
SERVICE_ACCOUNT_ISO = ("service-account-disk", "service-account.iso")
# ISO 9660 volume identifiers: at most 32 d-characters; Joliet tools accept more, but a
# label is what the guest mounts by, so keep it to what every reader shows.
LABEL_MAX = 32


@dataclass(frozen=True)
class Volume:
    node: Node  # spec.volumes[i]
    name: str
    index: int  # position in spec.volumes: a containerDisk's disk_N.img
    kind: str  # the source's key, e.g. "containerDisk"

    @property
    def source(self) -> Node:
        return self.node.obj(self.kind)


@dataclass(frozen=True)
class Source:
    """Where the data comes from."""

    type: str  # file | block
    path: str | None  # None: an empty cdrom tray
    format: str  # raw | qcow2
    discard: bool
    readonly: bool = False  # forced read-only whatever the disk says
    backing: tuple[str, str, str] | None = None  # (type file|block, path, format)
    prep: Prep | None = None


def source_kind(volume: Node) -> str:
    kinds = [key for key in (*SUPPORTED_SOURCES, *UNSUPPORTED_SOURCES) if volume.has(key)]
    if not kinds:
        volume.fail(f"needs a source (one of: {', '.join(SUPPORTED_SOURCES)})")
    if len(kinds) > 1:
        volume.fail(f"must have exactly one source, got {', '.join(kinds)}")
    if kinds[0] in UNSUPPORTED_SOURCES:
        volume.fail(f"not supported by this launcher: {UNSUPPORTED_SOURCES[kinds[0]]}",
                    kinds[0])
    return kinds[0]


def _join(base: str, *names: str) -> str:
    return posixpath.join(base, *names)


def file_backed(device: str, read_only_capable: bool) -> bool:
    """Whether an ISO / generated disk is made read-only: everywhere but a sata hard disk
    (QEMU's ide-hd cannot be read-only)."""
    return device != "disk" or read_only_capable


def container_disk(ctx: Context, volume: Volume) -> Source:
    source = volume.source
    source.str("image")
    source.str("path")  # where in the image: virt-handler's business, type-checked only
    source.str("imagePullPolicy")  # the kubelet's business
    source.str("imagePullSecret")
    overlay = _overlay_path(ctx, volume)
    image = _join(ctx.opts.container_disk_dir, f"disk_{volume.index}.img")
    fmt = ctx.opts.disks_info.get(volume.name, DiskInfo()).format
    if fmt not in ("", *BACKING_FORMATS):
        source.fail(f"virt-handler reports the image as {q(fmt)}; only raw and qcow2 "
                    f"images are supported")
    return Source("file", overlay, "qcow2", discard=True,
                  backing=("file", image, fmt) if fmt else None,
                  prep=ContainerDiskOverlay(volume.name, overlay, image, fmt))


def _overlay_path(ctx: Context, volume: Volume) -> str:
    """KubeVirt's EphemeraldiskCreator.GetFilePath."""
    return _join(ctx.opts.ephemeral_disk_dir, "disk-data", volume.name, "disk.qcow2")


def is_block(ctx: Context, volume: Volume) -> bool:
    return volume.name in ctx.opts.block_volumes


def block_device(ctx: Context, volume: Volume) -> str:
    """Where KubeVirt's pod has a block-mode claim's device: /dev/VOLUME."""
    return _join(ctx.opts.block_device_dir, volume.name)


def _claim_fields(volume: Volume) -> None:
    source = volume.source
    source.req_str("claimName" if volume.kind == "persistentVolumeClaim" else "name",
                   nonempty=True)
    source.bool("readOnly")
    source.bool("hotpluggable")


def claim(ctx: Context, volume: Volume, device: str) -> Source:
    _claim_fields(volume)
    if is_block(ctx, volume) or device == "lun":
        # A lun needs a device: the block-mode claim's, whatever the probe said.
        dev = block_device(ctx, volume)
        return Source("block", dev, "raw", discard=True, prep=FileDisk(volume.name, dev))
    path = _join(ctx.opts.private_dir, "vmi-disks", volume.name, "disk.img")
    return Source("file", path, "raw", discard=True, prep=FileDisk(volume.name, path))


def hotplug(ctx: Context, volume: Volume, device: str) -> Source:
    """A hotplug volume (KubeVirt's convert_v1_Hotplug_Volume_To_api_Disk without CBT):
    the file or block device virt-handler mounted into the pod's hotplug directory. No
    preparation: the launcher must not create or touch it."""
    if volume.kind not in HOTPLUG_SOURCES:
        volume.node.fail(f"hotplug disk {q(volume.name)} references an unsupported source "
                         f"(a hotplug volume is a persistentVolumeClaim or dataVolume)",
                         volume.kind)
    if volume.kind in CLAIM_SOURCES:
        _claim_fields(volume)
    else:  # hostDisk: KubeVirt reads none of its fields for a hotplug volume
        source = volume.source
        source.str("path")
        source.str("type")
        source.byte_size("capacity")
        source.bool("shared")
    if volume.name in ctx.opts.hotplug_block_volumes or device == "lun":
        # A lun needs a device, as for a permanent claim.
        return Source("block", _join(ctx.opts.hotplug_disk_dir, volume.name), "raw",
                      discard=True)
    return Source("file", _join(ctx.opts.hotplug_disk_dir, f"{volume.name}.img"), "raw",
                  discard=True)


def ephemeral(ctx: Context, volume: Volume) -> Source:
    """KubeVirt's convert_v1_EphemeralVolumeSource_To_api_Disk: the claim read-only under
    a throw-away qcow2 overlay."""
    claim_node = volume.source.obj("persistentVolumeClaim", required=True)
    claim_node.req_str("claimName", nonempty=True)
    claim_node.bool("readOnly")
    overlay = _overlay_path(ctx, volume)
    if is_block(ctx, volume):
        backing = ("block", block_device(ctx, volume), "raw")
    else:
        backing = ("file", _join(ctx.opts.private_dir, "vmi-disks", volume.name, "disk.img"),
                   "raw")
    return Source("file", overlay, "qcow2", discard=True, backing=backing,
                  prep=ContainerDiskOverlay(volume.name, overlay, backing[1], "raw"))


def host_disk(ctx: Context, volume: Volume) -> Source:
    source = volume.source
    node_path: str = source.req_str("path", nonempty=True)
    parts = node_path.split("/")
    if (not node_path.startswith("/") or posixpath.normpath(node_path) != node_path
            or ".." in parts or node_path == "/"):
        source.fail(f"{q(node_path)} must be an absolute, normalized file path", "path")
    kind = source.str("type") or None
    if kind is None:
        source.fail(f"required (one of: {', '.join(HOST_DISK_TYPES)})", "type")
    source.str("type", choices=HOST_DISK_TYPES)
    capacity = source.byte_size("capacity")
    source.bool("shared")
    if kind == "Disk" and capacity:
        source.fail('only allowed with type "DiskOrCreate"', "capacity")
    if kind == "DiskOrCreate" and not capacity:
        source.fail('required (more than 0 bytes) with type "DiskOrCreate"', "capacity")
    path = _join(ctx.opts.private_dir, "vmi-disks", volume.name, posixpath.basename(node_path))
    create = capacity if kind == "DiskOrCreate" else None
    return Source("file", path, "raw", discard=False,
                  prep=FileDisk(volume.name, path, create_size=create))


def empty_disk(ctx: Context, volume: Volume) -> Source:
    source = volume.source
    capacity: int | None = source.byte_size("capacity", required=True)
    if not capacity:
        source.fail("must be more than 0 bytes", "capacity")
    path = _join(ctx.opts.ephemeral_disk_dir, "empty-disks", f"{volume.name}.qcow2")
    return Source("file", path, "qcow2", discard=True,
                  prep=EmptyDisk(volume.name, path, capacity))


def _label(source: Node) -> str:
    label = source.str("volumeLabel") or DEFAULT_CONFIG_LABEL
    if len(label) > LABEL_MAX or not all(c.isalnum() or c in "_-." for c in label):
        source.fail(f"{q(label)} is not an ISO 9660 volume label (at most {LABEL_MAX} "
                    "letters, digits, \"_\", \"-\" or \".\")", "volumeLabel")
    return label


def config_iso(ctx: Context, volume: Volume, readonly: bool) -> Source:
    """configMap, secret, downwardAPI, serviceAccount and sysprep volumes as an ISO of the
    directory the pod mounts for them (KubeVirt's pkg/config)."""
    source = volume.source
    private = ctx.opts.private_dir
    unattend = False
    if volume.kind in CONFIG_DIRS:
        source_dir, iso_dir = CONFIG_DIRS[volume.kind]
        _config_fields(volume)
        src = _join(private, source_dir, volume.name)
        path = _join(private, iso_dir, f"{volume.name}.iso")
        label = _label(source)
    elif volume.kind == "serviceAccount":
        source.str("serviceAccountName")
        src = ctx.opts.service_account_dir
        path = _join(private, *SERVICE_ACCOUNT_ISO)
        label = DEFAULT_CONFIG_LABEL
    else:  # sysprep
        kinds = [key for key in ("configMap", "secret") if source.has(key)]
        if len(kinds) != 1:
            source.fail("needs exactly one of configMap and secret (the data holding "
                        "autounattend.xml or unattend.xml)")
        source.obj(kinds[0]).str("name")
        src = _join(private, "sysprep", volume.name)
        path = _join(private, "sysprep-disks", f"{volume.name}.iso")
        label, unattend = SYSPREP_LABEL, True
    prep = ConfigIso(volume.name, path, src, label, unattend=unattend)
    return Source("file", path, "raw", discard=False, readonly=readonly, prep=prep)


def _config_fields(volume: Volume) -> None:
    """Type-check what the kubelet acts on (it mounts the data; the launcher reads it)."""
    source = volume.source
    name_key = {"configMap": "name", "secret": "secretName"}.get(volume.kind)
    if name_key is not None:
        source.str(name_key)
    source.bool("optional")
    source.items("items" if volume.kind != "downwardAPI" else "fields")
