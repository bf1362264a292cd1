"""What the converter is given besides the VMI: virt-handler's VirtualMachineOptions, the
launcher's flags and paths, the pod's CPUs, libvirt's CPU modes for TCG."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import replace
from typing import Any

from launcher.converter import ClusterConfig, ConvertOptions, DiskInfo, SMBios
from launcher.flags import Options
from launcher.paths import Paths, reroot

# Where Kubernetes mounts the pod's service account token (a serviceAccount volume's data).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def pod_cpus() -> tuple[int, ...]:
    """The CPUs this pod may run on: the kernel applies the pod's cgroup cpuset to our
    affinity, so this is KubeVirt's GetPodCPUSet without parsing cgroup files."""
    return tuple(sorted(os.sched_getaffinity(0)))


def tcg_cpu_modes(domcapabilities_xml: str) -> frozenset[str]:
    """The CPU modes libvirt's domain capabilities (for virttype 'qemu') mark supported."""
    root = ET.fromstring(domcapabilities_xml)
    return frozenset(mode.get("name", "") for mode in root.iterfind("cpu/mode")
                     if mode.get("supported") == "yes")


def options_from_request(options: Any | None, *, opts: Options, paths: Paths,
                         emulation: bool, arch: str | None = None,
                         dedicated_cpus: tuple[int, ...] = (),
                         tcg_modes: frozenset[str] | None = None) -> ConvertOptions:
    """ConvertOptions from virt-handler's VirtualMachineOptions (None: not sent, e.g.
    STANDALONE_VMI) and the launcher's flags and paths.

    - SMBios fields left empty by virt-handler get KubeVirt's defaults (KubeVirt itself
      sends an empty SMBios for STANDALONE_VMI).
    - MemBalloonStatsPeriod is taken as sent (0 switches the statistics off, as in
      KubeVirt) when options are sent at all; without options the default (10 s).
    - The directories are the runtime-root ones (launcher.paths); the OVMF path is not
      re-rooted: firmware is part of the image, like QEMU itself."""
    base = ConvertOptions()
    fields: dict[str, Any] = {
        "emulation": emulation,
        "hypervisor": opts.hypervisor,
        "arch": arch or os.uname().machine,
        "ovmf_path": opts.ovmf_path,
        "private_dir": paths.private_dir,
        "ephemeral_disk_dir": paths.ephemeral_disk_dir,
        "container_disk_dir": paths.container_disk_dir,
        "hotplug_disk_dir": paths.hotplug_disk_dir,
        "block_device_dir": reroot(paths.root, "/dev"),
        "service_account_dir": reroot(paths.root, SERVICE_ACCOUNT_DIR),
        "dedicated_cpus": dedicated_cpus,
    }
    if tcg_modes is not None:
        fields["tcg_cpu_modes"] = tcg_modes
    if options is None:
        return replace(base, **fields)
    if options.HasField("VirtualMachineSMBios"):
        sent = options.VirtualMachineSMBios
        default = SMBios()
        fields["smbios"] = SMBios(
            manufacturer=sent.manufacturer or default.manufacturer,
            product=sent.product or default.product,
            family=sent.family or default.family,
            version=sent.version or default.version,
            sku=sent.sku or default.sku)
    cluster = options.clusterConfig
    fields["cluster"] = ClusterConfig(
        expand_disks=bool(cluster.ExpandDisksEnabled or options.ExpandDisksEnabled),
        free_page_reporting_disabled=bool(cluster.FreePageReportingDisabled),
        bochs_display_for_efi_guests=bool(cluster.BochsDisplayForEFIGuests),
        serial_console_log_disabled=bool(cluster.SerialConsoleLogDisabled))
    fields["mem_balloon_stats_period"] = int(options.MemBalloonStatsPeriod)
    fields["disks_info"] = {
        name: DiskInfo(format=info.format, backing_file=info.backingFile,
                       actual_size=int(info.actualSize), virtual_size=int(info.virtualSize))
        for name, info in options.DisksInfo.items()}
    fields["preallocated_volumes"] = frozenset(options.PreallocatedVolumes)
    fields["interface_attachment"] = dict(options.interfaceDomainAttachment)
    return replace(base, **fields)


def disk_directories(paths: Paths) -> tuple[str, ...]:
    """Where the converter puts the files a domain uses (launcher.converter.volumes,
    machine): PVC / DataVolume / hostDisk mounts, ephemeral disks, container disks and
    kernel-boot artifacts, the mounted configMap / secret / downwardAPI / sysprep
    directories and their ISOs, the service account token, and /dev for block-mode PVCs."""
    private = [os.path.join(paths.private_dir, sub) for sub in (
        "vmi-disks", "config-map", "config-map-disks", "secret", "secret-disks",
        "downwardapi", "downwardapi-disks", "sysprep", "sysprep-disks",
        "service-account-disk")]
    return (*private, paths.ephemeral_disk_dir, paths.container_disk_dir,
            reroot(paths.root, SERVICE_ACCOUNT_DIR), reroot(paths.root, "/dev"))
