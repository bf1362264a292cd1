"""What must exist on disk before the domain is defined: the converter's output beside the
XML. The converter decides names and sizes (pure); launcher.vm.disks carries them out."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ContainerDiskOverlay:
    """A containerDisk, or an `ephemeral` volume's PVC: a qcow2 overlay at `path` on the
    read-only image or block device `backing`, so the backing is never written (KubeVirt's
    ephemeral disk)."""

    volume: str
    path: str
    backing: str
    backing_format: str  # "" -> probe it with qemu-img info


@dataclass(frozen=True)
class FileDisk:
    """A persistentVolumeClaim / hostDisk image. `create_size` (bytes) when the VMI asks
    for it to be created if missing (hostDisk DiskOrCreate); None: it must exist."""

    volume: str
    path: str
    create_size: int | None = None


@dataclass(frozen=True)
class EmptyDisk:
    """An emptyDisk: a fresh sparse qcow2 of `size` bytes, recreated on every start."""

    volume: str
    path: str
    size: int


@dataclass(frozen=True)
class CloudInitIso:
    """A cloud-init data source ISO: NoCloud (label "cidata": user-data, meta-data,
    network-config) or ConfigDrive (label "config-2": openstack/latest/...)."""

    volume: str
    path: str
    kind: str  # "noCloud" | "configDrive"
    user_data: bytes
    meta_data: bytes
    network_data: bytes | None = None
    # secretRef / networkDataSecretRef: the data is read at preparation time from
    # the first of these files that exists (the secret's keys as KubeVirt mounts them);
    # it replaces user_data / network_data.
    user_data_files: tuple[str, ...] = ()
    network_data_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConfigIso:
    """A configMap, secret, serviceAccount, downwardAPI or sysprep volume as a disk: an
    ISO 9660 image at `path` of the files in the mounted directory `source_dir`, volume
    label `label`. `unattend`: a sysprep volume, which must hold autounattend.xml or
    unattend.xml."""

    volume: str
    path: str
    source_dir: str
    label: str
    unattend: bool = False


@dataclass(frozen=True)
class ExistingFile:
    """A file the domain reads that something else provides (a kernel boot artifact)."""

    volume: str
    path: str


Prep = ContainerDiskOverlay | FileDisk | EmptyDisk | CloudInitIso | ConfigIso | ExistingFile


@dataclass(frozen=True)
class Conversion:
    name: str  # libvirt domain name, <namespace>_<name>
    uuid: str
    xml: str
    preps: tuple[Prep, ...]
