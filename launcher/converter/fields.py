"""What the converter does with every field of KubeVirt's VirtualMachineInstanceSpec
(kubevirt.io/v1: spec and everything reachable from it, as users write the paths; `[]`
is any list element).

Each field is honoured (it shapes the domain or the files prepared for it), refused (a
ConversionError naming the field and why) or ignored on purpose (with the reason: mostly
fields virt-handler, virt-controller or the kubelet act on, never the launcher). A
`subtree` entry also covers every field below it, with the same status and reason.

This is data: README's "VMI fields" section is generated from it
(hack/gen_field_table.py), and tests/unit/converter/test_fields.py checks it is complete
against KubeVirt's field list (tests/unit/converter/data/kubevirt_vmi_fields.txt, extracted
by hack/kubevirt_fields.py) and that the converter really honours, refuses or ignores each.
"""

from __future__ import annotations

from dataclasses import dataclass

HONOURED = "honoured"
REFUSED = "refused"
IGNORED = "ignored"


@dataclass(frozen=True)
class Field:
    path: str
    status: str
    reason: str
    subtree: bool = False


def _h(path: str, reason: str) -> Field:
    return Field(path, HONOURED, reason)


def _r(path: str, reason: str, *, subtree: bool = False) -> Field:
    return Field(path, REFUSED, reason, subtree)


def _i(path: str, reason: str, *, subtree: bool = False) -> Field:
    return Field(path, IGNORED, reason, subtree)


CLUSTER = "virt-handler/virt-controller/kubelet act on it, not the launcher"
SCHEDULING = f"scheduling of the pod: {CLUSTER}"
PROBE = (f"{CLUSTER}: the kubelet runs exec/httpGet/tcpSocket probes, virt-handler "
         "guestAgentPing (through the launcher's GuestPing rpc)")
ENABLED = "enabled: false turns it off (state='off'), unset or true on"
NOT_HERE = "not supported by this launcher"
D = "spec.domain"
DEV = f"{D}.devices"
DISK = f"{DEV}.disks[]"
IFACE = f"{DEV}.interfaces[]"
HV = f"{D}.features.hyperv"
VOL = "spec.volumes[]"
HOTPLUGGABLE = ("virt-controller's: it attaches the claim through a hotplug pod; the "
                "converter goes by status.volumeStatus[]: an entry with hotplugVolume makes "
                "the volume <hotplug-disks>/<volume>.img (or the block device "
                "<hotplug-disks>/<volume>), in the domain once its phase is MountedToPod or "
                "Ready")


def _hyperv(name: str, element: str) -> tuple[Field, Field]:
    return (_h(f"{HV}.{name}", f"<hyperv><{element}>"),
            _h(f"{HV}.{name}.enabled", f"<{element} state>: {ENABLED}"))


def _timer(name: str, element: str, tick: bool) -> tuple[Field, ...]:
    base = f"{D}.clock.timer.{name}"
    out = [_h(base, f"<timer name='{element}'>"),
           _h(f"{base}.present", "<timer present>: false gives present='no' (KubeVirt's "
                                 "JSON key is present)")]
    if tick:
        out.append(_h(f"{base}.tickPolicy", "<timer tickpolicy>, KubeVirt's allowed values"))
    return tuple(out)


def _cloud_init(kind: str, iso: str) -> tuple[Field, ...]:
    base = f"{VOL}.{kind}"
    return (
        _h(base, f"a {iso} ISO in <ephemeral>/cloud-init-data/<ns>/<name>/; one "
                 "cloud-init volume (a second is refused by name)"),
        _h(f"{base}.userData", "user-data of the ISO"),
        _h(f"{base}.userDataBase64", "user-data of the ISO, base64-decoded"),
        _h(f"{base}.secretRef", "user-data read from the secret KubeVirt mounts at "
                                "<private>/secret/<volume>/userdata (else userData)"),
        _h(f"{base}.networkData", "network-config of the ISO"),
        _h(f"{base}.networkDataBase64", "network-config of the ISO, base64-decoded"),
        _h(f"{base}.networkDataSecretRef", "network-config read from the mounted secret "
                                           "(networkdata, else networkData)"),
    )


def _probe(name: str) -> Field:
    return _i(f"spec.{name}", PROBE, subtree=True)


FIELDS: tuple[Field, ...] = (
    # --- spec: the pod and the cluster ---
    _i("spec.priorityClassName", SCHEDULING),
    _i("spec.nodeSelector", SCHEDULING),
    _i("spec.affinity", SCHEDULING),
    _i("spec.schedulerName", SCHEDULING),
    _i("spec.tolerations[]", SCHEDULING),
    _i("spec.topologySpreadConstraints[]", SCHEDULING),
    _i("spec.serviceAccountName", f"the pod's service account: {CLUSTER}"),
    _i("spec.evictionStrategy", f"eviction and live migration: {CLUSTER} (which migrates "
                                'when virt-handler asks: "Live migration")'),
    _h("spec.startStrategy", "Paused: a 10 s <bootmenu> as KubeVirt writes it (the launcher "
                             "starts the domain paused); other values refused"),
    _h("spec.terminationGracePeriodSeconds", "<kubevirt><graceperiod> in the domain "
                                             "metadata (default 30)"),
    _probe("livenessProbe"),
    _probe("readinessProbe"),
    _h("spec.hostname", "the cloud-init local-hostname / hostname (else the VMI name up "
                        "to its first dot)"),
    _i("spec.subdomain", f"the pod's DNS name: {CLUSTER} (KubeVirt's launcher also puts "
                         "it in its DHCP replies; this launcher runs no DHCP server)"),
    _i("spec.dnsPolicy", f"the pod's resolv.conf: {CLUSTER} (KubeVirt's DHCP server hands "
                         "it to the guest; this launcher runs none)"),
    _i("spec.dnsConfig", f"the pod's resolv.conf: {CLUSTER} (KubeVirt's DHCP server hands "
                         "it to the guest; this launcher runs none)"),
    _r("spec.accessCredentials[]", "every propagation needs what this launcher does not "
                                   "do: cloud-init metadata from a secret (noCloud, "
                                   "configDrive) or keys / passwords written through the "
                                   "guest agent (qemuGuestAgent); refused naming the "
                                   "method", subtree=True),
    _h("spec.architecture", "checked against the launcher's architecture: a mismatch is "
                            "refused (KubeVirt schedules the VMI onto a node of its "
                            "architecture, so its launcher never sees one)"),
    _i("spec.resourceClaims[]", f"DRA claims of the pod: {CLUSTER}; the devices that "
                                "consume them (gpus, hostDevices claimName) are refused",
       subtree=True),
    _i("spec.utilityVolumes[]", "PVCs virt-handler hotplugs into the pod for memory dumps "
                                "and backups, never guest devices", subtree=True),
    # --- spec.networks ---
    _h("spec.networks[]", "paired by name with spec.domain.devices.interfaces[]; each must "
                          "be used"),
    _h("spec.networks[].name", "the interface of the same name"),
    _h("spec.networks[].pod", "the pod network; one"),
    _i("spec.networks[].pod.vmNetworkCIDR", "masquerade's guest subnet: virt-handler's "
                                            "network setup (bridge address, NAT), not the "
                                            "domain"),
    _i("spec.networks[].pod.vmIPv6NetworkCIDR", "masquerade's IPv6 guest subnet: "
                                                "virt-handler's network setup, not the "
                                                "domain"),
    _h("spec.networks[].multus", "a secondary network: bridge binding on the tap "
                                 "virt-handler creates (tap + sha256(name)[:11]); hot-"
                                 "pluggable"),
    _i("spec.networks[].multus.networkName", "the NetworkAttachmentDefinition: Multus and "
                                             "virt-handler set up the pod interface"),
    _r("spec.networks[].multus.default", "a Multus default network replacing the pod "
                                         "network"),
    _r("spec.networks[].resourceClaim", "networks from DRA resource claims: a standalone "
                                        "pod has only its pod network", subtree=True),
    # --- spec.domain: resources, CPU, memory ---
    _h(D, "the domain"),
    _h(f"{D}.resources", "memory and CPU count when the domain does not say"),
    _h(f"{D}.resources.requests", "memory: the guest memory when memory.guest is unset; "
                                  "cpu: vCPUs (sockets) when no topology and no limit, "
                                  "the auto iothread pool"),
    _h(f"{D}.resources.limits", "memory: the guest memory when neither memory.guest nor "
                                "the request is set; cpu: vCPUs (sockets) when no "
                                "topology"),
    _i(f"{D}.resources.overcommitGuestOverhead", "the pod's memory request: "
                                                 f"{CLUSTER}"),
    _h(f"{D}.cpu", "<cpu>, <vcpu>"),
    _h(f"{D}.cpu.cores", "<topology cores>, part of the vCPU count"),
    _h(f"{D}.cpu.sockets", "<topology sockets>, part of the vCPU count"),
    _h(f"{D}.cpu.threads", "<topology threads>, part of the vCPU count"),
    _h(f"{D}.cpu.maxSockets", "vCPU hotplug (x86_64): <vcpu current>, <vcpus> enabled / "
                              "hotpluggable, topology sockets = maxSockets"),
    _h(f"{D}.cpu.model", "host-model / host-passthrough as the mode (maximum under TCG), "
                         "another name as a custom model"),
    _h(f"{D}.cpu.features[]", "<cpu><feature>"),
    _h(f"{D}.cpu.features[].name", "<feature name>"),
    _h(f"{D}.cpu.features[].policy", "<feature policy> (default require)"),
    _h(f"{D}.cpu.dedicatedCpuPlacement", "<cputune> vCPU pins to the pod's CPUs, "
                                         "<kvm><hint-dedicated>, no free page reporting"),
    _i(f"{D}.cpu.numa", "empty, it does nothing (in KubeVirt neither); its one field is "
                        "refused"),
    _r(f"{D}.cpu.numa.guestMappingPassthrough", "needs the host's NUMA topology "
                                                "(virt-handler's), which a pure conversion "
                                                "does not have"),
    _h(f"{D}.cpu.isolateEmulatorThread", "<emulatorpin> on one more pod CPU"),
    _h(f"{D}.cpu.realtime", "<pmu state='off'> (and <nosharepages/> with hugepages), as "
                            "KubeVirt's launcher; needs dedicatedCpuPlacement"),
    _i(f"{D}.cpu.realtime.mask", "virt-handler gives the vCPU threads real-time "
                                 "scheduling, not the launcher; validated only"),
    _h(f"{D}.memory", "guest memory, hugepages, hotplug"),
    _h(f"{D}.memory.hugepages", "<memoryBacking><hugepages>"),
    _h(f"{D}.memory.hugepages.pageSize", "<page size>; the guest memory must be a multiple"),
    _h(f"{D}.memory.guest", "<memory>, <currentMemory>"),
    _h(f"{D}.memory.maxGuest", "memory hotplug: <maxMemory slots='0'>, a NUMA cell, a "
                               "virtio-mem device (x86_64, virt-api's checks)"),
    _i(f"{D}.memory.reservedOverhead", f"the pod's memory overhead: {CLUSTER}",
       subtree=True),
    _h(f"{D}.machine", "<os><type machine>"),
    _h(f"{D}.machine.type", "<os><type machine> (default q35 / virt)"),
    _h(f"{D}.ioThreadsPolicy", "shared / auto: the <iothreads> pool and the disks' "
                               "iothread; supplementalPool refused (not a value this "
                               "converter knows)"),
    _i(f"{D}.ioThreads", "only used with ioThreadsPolicy supplementalPool, which is "
                         "refused", subtree=True),
    # --- firmware ---
    _h(f"{D}.firmware", "UUID, SMBIOS serial, bootloader, kernel boot, ACPI tables"),
    _h(f"{D}.firmware.uuid", "<uuid> and the SMBIOS uuid; cloud-init instance id"),
    _h(f"{D}.firmware.serial", "SMBIOS system serial"),
    _h(f"{D}.firmware.bootloader", "BIOS or UEFI"),
    _h(f"{D}.firmware.bootloader.bios", "BIOS boot (the default on x86_64)"),
    _h(f"{D}.firmware.bootloader.bios.useSerial", "<bios useserial='yes'>"),
    _h(f"{D}.firmware.bootloader.efi", "OVMF (AAVMF on aarch64) <loader> and <nvram>"),
    _h(f"{D}.firmware.bootloader.efi.secureBoot", "the secboot OVMF and SMM (default "
                                                  "true on x86_64)"),
    _r(f"{D}.firmware.bootloader.efi.persistent", "persistent EFI variables need "
                                                  "KubeVirt's backend storage"),
    _h(f"{D}.firmware.kernelBoot", "<kernel>, <initrd>, <cmdline>"),
    _h(f"{D}.firmware.kernelBoot.kernelArgs", "<cmdline>"),
    _h(f"{D}.firmware.kernelBoot.container", "the kernel-boot container's files under "
                                             "<container-disks>/kernel-boot"),
    _i(f"{D}.firmware.kernelBoot.container.image", "the kubelet pulls it and virt-handler "
                                                   "mounts its files; required, otherwise "
                                                   "unused"),
    _i(f"{D}.firmware.kernelBoot.container.imagePullSecret", f"image pull: {CLUSTER}"),
    _i(f"{D}.firmware.kernelBoot.container.imagePullPolicy", f"image pull: {CLUSTER}"),
    _h(f"{D}.firmware.kernelBoot.container.kernelPath", "<kernel> (its base name under "
                                                        "the kernel-boot dir)"),
    _h(f"{D}.firmware.kernelBoot.container.initrdPath", "<initrd> (its base name under "
                                                        "the kernel-boot dir)"),
    _h(f"{D}.firmware.acpi", "<os><acpi><table>"),
    _h(f"{D}.firmware.acpi.slicNameRef", "<table type='slic'> from the secret volume's "
                                         "slic.bin"),
    _r(f"{D}.firmware.acpi.msdmNameRef", "libvirt 9 knows only SLIC tables"),
    # --- clock ---
    _h(f"{D}.clock", "<clock>"),
    _h(f"{D}.clock.utc", "<clock offset='utc'>"),
    _h(f"{D}.clock.utc.offsetSeconds", "<clock adjustment> (else reset)"),
    _h(f"{D}.clock.timezone", "<clock offset='timezone' timezone>"),
    _h(f"{D}.clock.timer", "<timer> elements"),
    *_timer("hpet", "hpet", True),
    *_timer("kvm", "kvmclock", False),
    *_timer("pit", "pit", True),
    *_timer("rtc", "rtc", True),
    _h(f"{D}.clock.timer.rtc.track", "<timer track>"),
    *_timer("hyperv", "hypervclock", False),
    # --- features ---
    _h(f"{D}.features", "<features>"),
    _h(f"{D}.features.acpi", "<acpi> (on unless disabled)"),
    _h(f"{D}.features.acpi.enabled", "false drops <acpi>"),
    _h(f"{D}.features.apic", "<apic>"),
    _h(f"{D}.features.apic.enabled", "false drops <apic>"),
    _h(f"{D}.features.apic.endOfInterrupt", "<apic eoi='on'>"),
    _h(f"{D}.features.hypervPassthrough", "<hyperv mode='passthrough'>"),
    _h(f"{D}.features.hypervPassthrough.enabled", "true: <hyperv mode='passthrough'>"),
    _h(HV, "<hyperv mode='custom'>"),
    *_hyperv("relaxed", "relaxed"),
    *_hyperv("vapic", "vapic"),
    *_hyperv("spinlocks", "spinlocks"),
    _h(f"{HV}.spinlocks.spinlocks", "<spinlocks retries> (default 4096, at least 4095)"),
    *_hyperv("vpindex", "vpindex"),
    *_hyperv("runtime", "runtime"),
    *_hyperv("synic", "synic"),
    *_hyperv("synictimer", "stimer"),
    *_hyperv("synictimer.direct", "stimer><direct"),
    *_hyperv("reset", "reset"),
    *_hyperv("vendorid", "vendor_id"),
    _h(f"{HV}.vendorid.vendorid", "<vendor_id value> (at most 12 characters)"),
    *_hyperv("frequencies", "frequencies"),
    *_hyperv("reenlightenment", "reenlightenment"),
    *_hyperv("tlbflush", "tlbflush"),
    _r(f"{HV}.tlbflush.direct", "turned on (present, enabled not false) it is refused: "
                                "libvirt 9 has no element for QEMU's hv-tlbflush-direct; "
                                "enabled: false is QEMU's default and accepted",
       subtree=True),
    _r(f"{HV}.tlbflush.extended", "turned on it is refused: libvirt 9 has no element for "
                                  "QEMU's hv-tlbflush-ext; enabled: false is accepted",
       subtree=True),
    *_hyperv("ipi", "ipi"),
    *_hyperv("evmcs", "evmcs"),
    _h(f"{D}.features.smm", "<smm state='on'> (forced by secure boot)"),
    _h(f"{D}.features.smm.enabled", "false: no <smm> (refused with secure boot)"),
    _h(f"{D}.features.kvm", "<kvm>"),
    _h(f"{D}.features.kvm.hidden", "<kvm><hidden state>"),
    _h(f"{D}.features.pvspinlock", "<pvspinlock>"),
    _h(f"{D}.features.pvspinlock.enabled", f"<pvspinlock state>: {ENABLED}"),
    # --- chassis, launch security, reboot policy ---
    _h(f"{D}.chassis", "<sysinfo><chassis>"),
    *(_h(f"{D}.chassis.{key}", f"<chassis><entry name='{key}'>")
      for key in ("manufacturer", "version", "serial", "asset", "sku")),
    _r(f"{D}.launchSecurity", "SEV / SNP / TDX need the hardware and the launch "
                              "measurement flow, which these hosts lack", subtree=True),
    _h(f"{D}.rebootPolicy", "Terminate: <on_reboot>destroy (QEMU exits, the launcher ends "
                            "the VM); Reboot: restart"),
    # --- devices ---
    _h(DEV, "<devices>"),
    _h(f"{DEV}.useVirtioTransitional", "virtio-transitional models instead of "
                                       "virtio-non-transitional"),
    _h(f"{DEV}.disableHotplug", "no virtio-scsi controller unless a disk is on scsi"),
    _h(DISK, "one <disk> each, paired by name with spec.volumes[]"),
    _h(f"{DISK}.name", "the volume of the same name; <alias name='ua-NAME'>"),
    _h(f"{DISK}.disk", "<disk device='disk'> (also when no target type is set)"),
    _h(f"{DISK}.disk.bus", "<target bus> (virtio, sata, scsi, usb) and the vdX / sdX name"),
    _h(f"{DISK}.disk.readonly", "<readonly/> (refused on sata)"),
    _h(f"{DISK}.disk.pciAddress", "<address type='pci'> (virtio only)"),
    _h(f"{DISK}.lun", "<disk device='lun'> on a block-mode claim"),
    _h(f"{DISK}.lun.bus", "<target bus> (scsi)"),
    _h(f"{DISK}.lun.readonly", "<readonly/>"),
    _r(f"{DISK}.lun.reservation", "persistent reservations need KubeVirt's pr-helper "
                                  "daemon"),
    _h(f"{DISK}.cdrom", "<disk device='cdrom'> (an empty tray without a volume)"),
    _h(f"{DISK}.cdrom.bus", "<target bus> (sata, scsi, usb; default sata on x86_64)"),
    _h(f"{DISK}.cdrom.readonly", "<readonly/> (default true)"),
    _h(f"{DISK}.cdrom.tray", "<target tray>"),
    _h(f"{DISK}.bootOrder", "<boot order>"),
    _h(f"{DISK}.serial", "<serial> (disk devices)"),
    _h(f"{DISK}.dedicatedIOThread", "a dedicated iothread for the disk (virtio)"),
    _h(f"{DISK}.cache", "<driver cache> (default none; see README)"),
    _h(f"{DISK}.io", "<driver io>"),
    _i(f"{DISK}.tag", "KubeVirt publishes tagged devices only in a ConfigDrive's device "
                      "metadata, which this converter does not write; the disk is the same"),
    _h(f"{DISK}.blockSize", "<blockio>"),
    _h(f"{DISK}.blockSize.custom", "<blockio> sizes"),
    _h(f"{DISK}.blockSize.custom.logical", "<blockio logical_block_size>"),
    _h(f"{DISK}.blockSize.custom.physical", "<blockio physical_block_size>"),
    _r(f"{DISK}.blockSize.custom.discardGranularity", "libvirt 9's schema has no "
                                                      "discard_granularity"),
    _r(f"{DISK}.blockSize.matchVolume", "turned on it is refused: it needs probing the "
                                        "volume's block sizes at start", subtree=True),
    _h(f"{DISK}.shareable", "<shareable/> (cache none)"),
    _h(f"{DISK}.errorPolicy", "<driver error_policy> (default stop)"),
    _i(f"{DISK}.changedBlockTracking", "for KubeVirt's backups (BackupVirtualMachine, "
                                       "RedefineCheckpoint), which this launcher refuses; "
                                       "the disk is the same"),
    _h(f"{DEV}.watchdog", "<watchdog>"),
    _h(f"{DEV}.watchdog.name", "<alias name='ua-NAME'>"),
    _h(f"{DEV}.watchdog.i6300esb", "<watchdog model='i6300esb'>"),
    _h(f"{DEV}.watchdog.i6300esb.action", "<watchdog action> (default reset)"),
    _r(f"{DEV}.watchdog.diag288", "the s390x watchdog; this launcher runs x86_64 and "
                                  "aarch64 guests", subtree=True),
    _h(IFACE, "one <interface> each, paired by name with spec.networks[]"),
    _h(f"{IFACE}.name", "the network of the same name; <alias name='ua-NAME'>"),
    _h(f"{IFACE}.model", "<model type> (virtio -> the virtio model)"),
    _h(f"{IFACE}.bridge", "<interface type='ethernet'> on tap0, managed='no'"),
    _h(f"{IFACE}.slirp", "<interface type='user'> (a standalone pod may have no tap)"),
    _h(f"{IFACE}.masquerade", "<interface type='ethernet'> on tap0, managed='no'"),
    _h(f"{IFACE}.sriov", "a PCI <hostdev> on the VF the pod's network-info names (secondary "
                         "networks; left out until Multus reports it)"),
    _r(f"{IFACE}.macvtap", "needs a macvtap device plugin"),
    _r(f"{IFACE}.passt", "needs the passt binary and its sidecar setup"),
    _r(f"{IFACE}.passtBinding", "needs the passt binary and its sidecar setup"),
    _h(f"{IFACE}.binding", "a binding plugin virt-handler attaches as tap or managedTap: "
                           "as bridge; any other plugin refused"),
    _h(f"{IFACE}.binding.name", "the plugin (its attachment comes from virt-handler)"),
    _i(f"{IFACE}.ports[]", "masquerade port forwarding is virt-handler's NAT set-up; with "
                           "slirp (QEMU hostfwd) ports are refused", subtree=True),
    _i(f"{IFACE}.portRanges[]", "masquerade port forwarding is virt-handler's NAT set-up",
       subtree=True),
    _h(f"{IFACE}.macAddress", "<mac address> (else libvirt's)"),
    _h(f"{IFACE}.bootOrder", "<boot order> and the option ROM kept"),
    _h(f"{IFACE}.pciAddress", "<address type='pci'>"),
    _r(f"{IFACE}.dhcpOptions", "KubeVirt's launcher serves them from its DHCP server; "
                               "this launcher runs none", subtree=True),
    _i(f"{IFACE}.tag", "KubeVirt publishes tagged devices only in a ConfigDrive's device "
                       "metadata, which this converter does not write; the NIC is the same"),
    _h(f"{IFACE}.acpiIndex", "<acpi index>"),
    _h(f"{IFACE}.state", "down: <link state='down'>; absent: left out (being unplugged)"),
    _h(f"{DEV}.inputs[]", "<input>"),
    _h(f"{DEV}.inputs[].bus", "<input bus> (usb, virtio)"),
    _h(f"{DEV}.inputs[].type", "<input type> (tablet, keyboard)"),
    _h(f"{DEV}.inputs[].name", "<alias name='ua-NAME'>"),
    _h(f"{DEV}.autoattachPodInterface", "false: no default interface without interfaces"),
    _h(f"{DEV}.autoattachGraphicsDevice", "false: no VNC and no video"),
    _h(f"{DEV}.autoattachSerialConsole", "false: no serial console"),
    _h(f"{DEV}.logSerialConsole", "the serial console's <log> file"),
    _h(f"{DEV}.autoattachMemBalloon", "false: <memballoon model='none'>"),
    _i(f"{DEV}.autoattachInputDevice", "virt-controller's VM controller turns it into an "
                                       "input when it creates the VMI from a VM; on a VMI "
                                       "it does nothing in KubeVirt either"),
    _h(f"{DEV}.autoattachVSOCK", "<vsock> with the CID in status.VSOCKCID"),
    _h(f"{DEV}.rng", "<rng> from /dev/urandom"),
    _h(f"{DEV}.blockMultiQueue", "virtio disks' <driver queues> = vCPUs"),
    _h(f"{DEV}.networkInterfaceMultiqueue", "virtio NICs' <driver queues> = vCPUs"),
    _r(f"{DEV}.gpus[]", "GPUs need host devices a standalone pod does not have",
       subtree=True),
    _r(f"{DEV}.downwardMetrics", "needs virt-handler's vhostmd metrics writer",
       subtree=True),
    _h(f"{DEV}.panicDevices[]", "<panic>"),
    _h(f"{DEV}.panicDevices[].model", "<panic model> (isa, hyperv; pvpanic refused: "
                                      "libvirt 9 has none)"),
    _r(f"{DEV}.filesystems[]", "virtiofs needs KubeVirt's virtiofsd container",
       subtree=True),
    _r(f"{DEV}.hostDevices[]", "host devices are not available to a standalone pod",
       subtree=True),
    _r(f"{DEV}.clientPassthrough", "USB redirection needs virt-handler's client "
                                   "connection", subtree=True),
    _r(f"{DEV}.sound", "no audio device support", subtree=True),
    _h(f"{DEV}.tpm", "<tpm model='tpm-tis'> with an emulator backend"),
    _h(f"{DEV}.tpm.enabled", "false: no TPM"),
    _r(f"{DEV}.tpm.persistent", "persistent TPM state needs KubeVirt's backend storage"),
    _h(f"{DEV}.video", "<video><model>"),
    _h(f"{DEV}.video.type", "<model type> (vga, cirrus, virtio, ramfb, bochs)"),
    # --- volumes ---
    _h(VOL, "the data behind the disk of the same name"),
    _h(f"{VOL}.name", "the disk of the same name; file names under the volume dirs"),
    _h(f"{VOL}.hostDisk", "raw <private>/vmi-disks/<volume>/<base name of path>"),
    _h(f"{VOL}.hostDisk.path", "its base name"),
    _h(f"{VOL}.hostDisk.type", "Disk (must exist) or DiskOrCreate (created at capacity)"),
    _h(f"{VOL}.hostDisk.capacity", "the size DiskOrCreate creates"),
    _i(f"{VOL}.hostDisk.shared", f"migration: {CLUSTER}"),
    _h(f"{VOL}.persistentVolumeClaim", "raw <private>/vmi-disks/<volume>/disk.img, or "
                                       "<disk type='block'> on /dev/<volume> (block mode); "
                                       "hotplugged: <hotplug-disks>/<volume>.img or the "
                                       "block device <hotplug-disks>/<volume>"),
    _i(f"{VOL}.persistentVolumeClaim.claimName", "the kubelet mounts the claim; required, "
                                                 "otherwise unused"),
    _i(f"{VOL}.persistentVolumeClaim.readOnly", "the kubelet's mount; the guest's read-only "
                                                "view is the disk's readonly"),
    _i(f"{VOL}.persistentVolumeClaim.hotpluggable", HOTPLUGGABLE),
    *_cloud_init("cloudInitNoCloud", "NoCloud (cidata)"),
    *_cloud_init("cloudInitConfigDrive", "ConfigDrive (config-2)"),
    _h(f"{VOL}.sysprep", "an ISO (label unattendCD) of <private>/sysprep/<volume>"),
    _i(f"{VOL}.sysprep.secret", "the mounted secret's name (virt-controller mounts it); "
                                "one of secret / configMap must be set", subtree=True),
    _i(f"{VOL}.sysprep.configMap", "the mounted configMap's name (virt-controller mounts "
                                   "it); one of secret / configMap must be set",
       subtree=True),
    _h(f"{VOL}.containerDisk", "a qcow2 overlay on <container-disks>/disk_N.img"),
    _i(f"{VOL}.containerDisk.image", "the kubelet pulls it, virt-handler mounts it as "
                                     "disk_N.img"),
    _i(f"{VOL}.containerDisk.imagePullSecret", f"image pull: {CLUSTER}"),
    _i(f"{VOL}.containerDisk.path", "where in the image: virt-handler's mount"),
    _i(f"{VOL}.containerDisk.imagePullPolicy", f"image pull: {CLUSTER}"),
    _h(f"{VOL}.ephemeral", "a qcow2 overlay on the claim (read-only backing store)"),
    _h(f"{VOL}.ephemeral.persistentVolumeClaim", "the claim behind the overlay "
                                                 "(claimName required, the kubelet mounts "
                                                 "it)", ),
    _h(f"{VOL}.emptyDisk", "a fresh qcow2 <ephemeral>/empty-disks/<volume>.qcow2"),
    _h(f"{VOL}.emptyDisk.capacity", "its size"),
    _h(f"{VOL}.dataVolume", "as persistentVolumeClaim (file or block mode, permanent or "
                            "hotplugged)"),
    _i(f"{VOL}.dataVolume.name", "CDI's DataVolume; the kubelet mounts its claim; "
                                 "required, otherwise unused"),
    _i(f"{VOL}.dataVolume.hotpluggable", HOTPLUGGABLE),
    _h(f"{VOL}.configMap", "an ISO of <private>/config-map/<volume>"),
    _i(f"{VOL}.configMap.name", "the kubelet mounts the configMap"),
    _i(f"{VOL}.configMap.optional", "the kubelet's mount"),
    _h(f"{VOL}.configMap.volumeLabel", "the ISO's volume label (default cfgdata)"),
    _h(f"{VOL}.secret", "an ISO of <private>/secret/<volume>"),
    _i(f"{VOL}.secret.secretName", "the kubelet mounts the secret"),
    _i(f"{VOL}.secret.optional", "the kubelet's mount"),
    _h(f"{VOL}.secret.volumeLabel", "the ISO's volume label (default cfgdata)"),
    _h(f"{VOL}.downwardAPI", "an ISO of <private>/downwardapi/<volume>"),
    _i(f"{VOL}.downwardAPI.fields[]", "the kubelet writes the files"),
    _h(f"{VOL}.downwardAPI.volumeLabel", "the ISO's volume label (default cfgdata)"),
    _h(f"{VOL}.serviceAccount", "an ISO of the pod's token directory"),
    _i(f"{VOL}.serviceAccount.serviceAccountName", "the pod's service account: "
                                                   f"{CLUSTER}"),
    _r(f"{VOL}.downwardMetrics", "needs virt-handler's vhostmd metrics writer",
       subtree=True),
    _r(f"{VOL}.memoryDump", "a memory dump volume is no guest disk (KubeVirt's converter "
                            "skips it); this converter does not take one", subtree=True),
    _r(f"{VOL}.containerPath", "virtiofs needs KubeVirt's virtiofsd container",
       subtree=True),
)


def by_path() -> dict[str, Field]:
    return {field.path: field for field in FIELDS}


def covering(path: str) -> Field | None:
    """The entry for `path` (a KubeVirt field path with `[]`): its own, else the nearest
    subtree entry above it."""
    table = by_path()
    if path in table:
        return table[path]
    parts = path
    while "." in parts:
        parts = parts.rsplit(".", 1)[0]
        entry = table.get(parts)
        if entry is not None and entry.subtree:
            return entry
    return None
