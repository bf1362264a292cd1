"""What the converter needs besides the VMI: the launcher's settings and virt-handler's
VirtualMachineOptions, as plain frozen values (no protobuf, no flags parsing here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

HYPERVISOR_KVM = "kvm"
HYPERVISOR_STRATOVIRT = "stratovirt"


@dataclass(frozen=True)
class SMBios:
    """virt-handler's SMBios options (KubeVirt's defaults)."""

    manufacturer: str = "KubeVirt"
    product: str = "None"
    family: str = "KubeVirt"
    version: str = ""
    sku: str = ""


@dataclass(frozen=True)
class ClusterConfig:
    """The KubeVirt cluster settings virt-handler passes in VirtualMachineOptions."""

    expand_disks: bool = False
    free_page_reporting_disabled: bool = False
    bochs_display_for_efi_guests: bool = False
    serial_console_log_disabled: bool = False


@dataclass(frozen=True)
class DiskInfo:
    """virt-handler's inspection of a container disk image (qemu-img info)."""

    format: str = ""
    backing_file: str = ""
    actual_size: int = 0
    virtual_size: int = 0


@dataclass(frozen=True)
class ConvertOptions:
    # type='qemu' (TCG) instead of 'kvm': --allow-emulation and KVM unusable on this host.
    emulation: bool = False
    # The CPU modes libvirt supports for TCG domains (domcapabilities, virttype qemu);
    # host-model and host-passthrough are used as KubeVirt uses them when listed here.
    tcg_cpu_modes: frozenset[str] = frozenset({"host-model", "maximum"})
    # <maxMemory slots>: KubeVirt writes 0 (virtio-mem needs no DIMM slot); libvirt before
    # 10.0 refuses a maximum without slots ("both maximum memory size and memory slot count
    # must be specified", measured on 9.0), so the syncer asks for 1 there.
    max_memory_slots: int = 0
    hypervisor: str = HYPERVISOR_KVM
    arch: str = "x86_64"
    smbios: SMBios = SMBios()
    cluster: ClusterConfig = ClusterConfig()
    mem_balloon_stats_period: int = 10
    ovmf_path: str = "/usr/share/OVMF"
    # Directories, already under the runtime root (launcher.paths): the converter only
    # joins names onto them.
    private_dir: str = "/var/run/kubevirt-private"
    ephemeral_disk_dir: str = "/var/run/kubevirt-ephemeral-disks"
    container_disk_dir: str = "/var/run/kubevirt/container-disks"
    hotplug_disk_dir: str = "/var/run/kubevirt/hotplug-disks"
    # Where the pod has block-mode PVCs (/dev/<volume>) and the service account's token.
    block_device_dir: str = "/dev"
    service_account_dir: str = "/var/run/secrets/kubernetes.io/serviceaccount"
    # The launcher's probe (launcher.vm.disks.block_volumes): PVC / DataVolume volumes whose
    # <block_device_dir>/<volume> is a block device (KubeVirt's IsBlockPVC / IsBlockDV).
    block_volumes: frozenset[str] = frozenset()
    # The launcher's probe for hotplug volumes (KubeVirt's isHotplugBlockDeviceVolume): the
    # names of spec.volumes[] whose <hotplug_disk_dir>/<volume> is a block device (stat,
    # S_ISBLK; anything else or missing: leave the name out). A hotplug volume is one with
    # a status.volumeStatus[] entry of its name that has a hotplugVolume object; the
    # converter looks a name up here only for such a volume (persistentVolumeClaim,
    # dataVolume or hostDisk), so probing every volume name is harmless. Listed: <disk
    # type='block'> on <hotplug_disk_dir>/<volume>; not listed: the file
    # <hotplug_disk_dir>/<volume>.img. Non-hotplug volumes go by block_volumes.
    hotplug_block_volumes: frozenset[str] = frozenset()
    disks_info: Mapping[str, DiskInfo] = field(default_factory=dict)
    preallocated_volumes: frozenset[str] = frozenset()
    # SR-IOV: interface name -> the host PCI address of its VF in the pod (the launcher
    # reads the pod's network-info for the interfaces Multus reports and checks that the
    # device is there: launcher.vm.hostdevices). An SR-IOV interface not listed is left
    # out, as KubeVirt does; HotplugHostDevices attaches it once it is reported.
    sriov_addresses: Mapping[str, str] = field(default_factory=dict)
    # interface name -> "tap" | "managedTap" (virt-handler's pod network setup)
    interface_attachment: Mapping[str, str] = field(default_factory=dict)
    # The pod's exclusive host CPUs (its cgroup cpuset, KubeVirt's ConverterContext.CPUSet):
    # what spec.domain.cpu.dedicatedCpuPlacement pins vCPUs (and the emulator) to.
    dedicated_cpus: tuple[int, ...] = ()
    # The StratoVirt binary, the domain's <emulator> under --hypervisor stratovirt.
    stratovirt_emulator: str = "/usr/bin/stratovirt"
