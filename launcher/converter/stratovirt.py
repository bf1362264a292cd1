"""--hypervisor stratovirt: refuse what StratoVirt cannot run, then rewrite the KubeVirt-shaped
domain into the XML StratoVirt's libvirt driver accepts.

StratoVirt's libvirt support (seed 004, openEuler "对接 libvirt") covers a small subset of
the QEMU driver's XML: domain type kvm; a name of letters, digits, "_", "-" and ":"; a vCPU
count and memory without CPU topology; iothreads; hugepages; the q35 machine on x86_64
(virt on aarch64) booting from a read-only pflash UEFI loader (with NVRAM on x86_64),
optionally with a direct kernel and command line; ACPI (required) and GICv3 on aarch64;
and virtio devices only, each on a PCIe root port of its own: raw file disks on the virtio
bus, NICs, the balloon, one virtio console behind a virtio-serial controller, rng and
vsock.

check() names the VMI field of anything outside that subset: software emulation, names
outside StratoVirt's character set, CPU models, features, topology with threads or with
both sockets and cores, vCPU pinning, BIOS boot, secure boot, an SMBIOS serial, machine
types other than q35/virt, disabling ACPI, Hyper-V / kvm / pvspinlock / SMM features,
clock offsets and timers, cdrom and lun disks, non-virtio disk buses and NIC models,
explicit PCI addresses, qcow2-backed volumes (containerDisk, emptyDisk, ephemeral),
user-mode and passthrough networking, and devices StratoVirt has no model for (inputs,
video, watchdog, TPM, sound, host devices, GPUs, filesystems, USB redirection).

adjust() then rewrites what KubeVirt adds by default: no sysinfo, CPU model, pinning or
clock; the machine becomes plain q35/virt; the loader is a non-secure pflash UEFI one
(added when the VMI chose no firmware, since StratoVirt has no BIOS); features are ACPI
(+ GICv3); the emulator is the StratoVirt binary; the serial console socket becomes the
virtio console (so `virtctl console` keeps its socket, the guest uses hvc0); devices with
no StratoVirt model (agent channel, graphics, video, USB/SCSI controllers, ...) are
dropped; virtio models lose their (non-)transitional variants; and every PCI device gets
an explicit address on its own pcie-root-port, as in the seed's examples.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from launcher.converter import cpu as cpu_mod
from launcher.converter import machine
from launcher.converter.context import Context
from launcher.converter.errors import ConversionError
from launcher.converter.spec import Node

_NAME_RE = re.compile(r"[A-Za-z0-9_:-]+")
MAX_NAME = 255
MAX_BUS = 0xFF
RAW_ONLY = (("containerDisk", "a containerDisk runs from a qcow2 overlay"),
            ("emptyDisk", "an emptyDisk is a qcow2 image"),
            ("ephemeral", "an ephemeral volume runs from a qcow2 overlay"))
UNSUPPORTED_BINDINGS = ("slirp", "sriov", "macvtap", "passt")
UNSUPPORTED_DEVICES = ("inputs", "video", "watchdog", "tpm", "sound", "hostDevices", "gpus",
                       "filesystems", "clientPassthrough")
UNSUPPORTED_FEATURES = ("hyperv", "hypervPassthrough", "kvm", "pvspinlock")
# Device elements StratoVirt's driver has no model for; the console is rebuilt.
DROPPED_DEVICES = frozenset((
    "serial", "console", "channel", "input", "graphics", "video", "watchdog", "sound",
    "audio", "redirdev", "smartcard", "hub", "tpm", "filesystem", "hostdev", "panic",
    "shmem", "memory", "iommu", "lease", "parallel", "controller"))
DISK_DRIVER_ATTRS = ("name", "type", "iothread")
# Devices that sit on a PCI slot, in the order the seed's examples number the buses.
PCI_DEVICES = ("disk", "interface", "controller", "memballoon", "rng", "vsock")


def _unsupported(node: Node, key: str, why: str = "") -> None:
    node.fail("not supported by StratoVirt" + (f": {why}" if why else ""), key)


def _arm(ctx: Context) -> bool:
    return ctx.opts.arch in ("aarch64", "arm64")


# --- check ----------------------------------------------------------------------------------
def check(ctx: Context) -> None:
    """Raise ConversionError naming the first field StratoVirt cannot honour."""
    if ctx.opts.emulation:
        ctx.domain_spec.fail("StratoVirt runs on KVM only; software emulation "
                             "(--allow-emulation without KVM) is not available")
    _check_names(ctx)
    _check_cpu(ctx)
    _check_firmware(ctx)
    _check_machine(ctx)
    _check_features(ctx)
    _check_clock(ctx)
    _check_disks(ctx)
    _check_volumes(ctx)
    _check_interfaces(ctx)
    for key in UNSUPPORTED_DEVICES:
        if ctx.devices.child(key).value not in (None, [], {}):
            _unsupported(ctx.devices, key)


def _check_names(ctx: Context) -> None:
    meta = ctx.vmi.obj("metadata")
    for key, value in (("namespace", ctx.namespace), ("name", ctx.name)):
        if _NAME_RE.fullmatch(value) is None:
            meta.fail(f'"{value}" is not a StratoVirt domain name (letters, digits, "_", '
                      f'"-" and ":" only)', key)
    if len(ctx.domain_name) > MAX_NAME:
        meta.fail(f"the domain name {ctx.domain_name} is longer than StratoVirt's "
                  f"{MAX_NAME} characters", "name")


def _check_cpu(ctx: Context) -> None:
    cpu = ctx.domain_spec.obj("cpu")
    model = cpu.str("model")
    if model not in (None, "", cpu_mod.HOST_MODEL, cpu_mod.HOST_PASSTHROUGH):
        _unsupported(cpu, "model", "the guest always sees the host CPU (use host-model or "
                                   "host-passthrough)")
    if cpu.items("features"):
        _unsupported(cpu, "features", "the guest always sees the host CPU")
    if cpu.bool("dedicatedCpuPlacement", False):
        _unsupported(cpu, "dedicatedCpuPlacement", "its libvirt driver has no vCPU pinning")
    sockets, cores, threads = (cpu.int(key, 0, minimum=0) or 0
                               for key in ("sockets", "cores", "threads"))
    why = "it has no CPU topology, only a number of vCPUs (set sockets or cores)"
    if threads > 1:
        _unsupported(cpu, "threads", why)
    if sockets > 1 and cores > 1:
        _unsupported(cpu, "cores", why)


def _check_firmware(ctx: Context) -> None:
    firmware = ctx.domain_spec.obj("firmware")
    bootloader = firmware.obj("bootloader")
    if bootloader.obj("bios").present:
        _unsupported(bootloader, "bios", "its standard VMs boot from a pflash UEFI loader "
                                         "(use efi)")
    efi = bootloader.obj("efi")
    if efi.present and efi.bool("secureBoot", not _arm(ctx)):
        _unsupported(efi, "secureBoot", "it has no SMM, so no secure boot (set secureBoot: "
                                        "false)")
    if firmware.str("serial"):
        _unsupported(firmware, "serial", "its libvirt driver passes no SMBIOS to the guest")


def _check_machine(ctx: Context) -> None:
    family = "virt" if _arm(ctx) else "q35"
    if ctx.opts.arch not in ("x86_64", "aarch64", "arm64"):
        ctx.domain_spec.fail(f"StratoVirt runs x86_64 and aarch64 guests, not "
                             f"{ctx.opts.arch}")
    node = ctx.domain_spec.obj("machine")
    chosen = node.str("type")
    prefix = "virt-" if family == "virt" else "pc-q35-"
    if chosen and chosen != family and not chosen.startswith(prefix):
        _unsupported(node, "type", f"it emulates only the {family} machine on "
                                   f"{ctx.opts.arch}")


def _check_features(ctx: Context) -> None:
    features = ctx.domain_spec.obj("features")
    acpi = features.obj("acpi")
    if acpi.bool("enabled", True) is False:
        _unsupported(acpi, "enabled", "its standard VMs need ACPI")
    for key in UNSUPPORTED_FEATURES:
        if features.obj(key).present:
            _unsupported(features, key)
    smm = features.obj("smm")
    if smm.present and smm.bool("enabled", True):
        _unsupported(features, "smm", "it has no System Management Mode")


def _check_clock(ctx: Context) -> None:
    clock = ctx.domain_spec.obj("clock")
    why = "the guest clock is always UTC"
    if clock.str("timezone"):
        _unsupported(clock, "timezone", why)
    if clock.obj("utc").int("offsetSeconds") is not None:
        _unsupported(clock.obj("utc"), "offsetSeconds", why)
    if clock.obj("timer").value not in (None, {}):
        _unsupported(clock, "timer", "its timers cannot be configured")


def _check_disks(ctx: Context) -> None:
    for disk in ctx.devices.items("disks"):
        for kind in ("cdrom", "lun"):
            if disk.has(kind):
                _unsupported(disk, kind, "its only disk is virtio-blk (use disk)")
        target = disk.obj("disk")
        bus = target.str("bus")
        if bus not in (None, "", "virtio"):
            _unsupported(target, "bus", f'"{bus}" (its only disk bus is virtio)')
        if target.str("pciAddress"):
            _unsupported(target, "pciAddress", "PCI addresses are assigned for StratoVirt")


def _check_volumes(ctx: Context) -> None:
    for volume in ctx.spec.items("volumes"):
        for kind, why in RAW_ONLY:
            if volume.has(kind):
                _unsupported(volume, kind, f"it reads raw images only, and {why}")


def _check_interfaces(ctx: Context) -> None:
    for iface in ctx.devices.items("interfaces"):
        model = iface.str("model")
        if model not in (None, "", "virtio"):
            _unsupported(iface, "model", f'"{model}" (its only NIC is virtio-net)')
        for key in UNSUPPORTED_BINDINGS:
            if iface.has(key):
                _unsupported(iface, key, "it needs a tap device (use bridge or masquerade)")
        if iface.str("pciAddress"):
            _unsupported(iface, "pciAddress", "PCI addresses are assigned for StratoVirt")


# --- adjust ---------------------------------------------------------------------------------
def adjust(ctx: Context, dom: ET.Element) -> None:
    """Rewrite the domain built for QEMU into StratoVirt's subset (see the module doc)."""
    dom.set("type", "kvm")
    for tag in ("sysinfo", "cpu", "cputune", "clock"):
        for el in dom.findall(tag):
            dom.remove(el)
    _adjust_os(ctx, dom)
    _adjust_features(ctx, dom)
    devices = dom.find("devices")
    if devices is None:
        devices = ET.SubElement(dom, "devices")
    _adjust_devices(ctx, devices)


def _child(parent: ET.Element, tag: str) -> ET.Element:
    found = parent.find(tag)
    return found if found is not None else ET.SubElement(parent, tag)


def _adjust_os(ctx: Context, dom: ET.Element) -> None:
    os_el = _child(dom, "os")
    _child(os_el, "type").set("machine", "virt" if _arm(ctx) else "q35")
    for tag in ("smbios", "bios", "bootmenu", "boot"):
        for el in os_el.findall(tag):
            os_el.remove(el)
    loader = os_el.find("loader")
    if loader is not None:
        loader.attrib.pop("secure", None)  # check() refused secure boot
    else:
        # No firmware chosen: StratoVirt has no BIOS, so boot UEFI without secure boot.
        code, template = machine.efi_firmware(ctx, secure=False)
        ET.SubElement(os_el, "loader", readonly="yes", type="pflash").text = code
        ET.SubElement(os_el, "nvram", template=template).text = machine.nvram_path(ctx)
    if _arm(ctx):
        # The seed's aarch64 domains carry the loader alone.
        for el in os_el.findall("nvram"):
            os_el.remove(el)


def _adjust_features(ctx: Context, dom: ET.Element) -> None:
    features = _child(dom, "features")
    for el in list(features):
        if el.tag != "acpi":
            features.remove(el)
    _child(features, "acpi")
    if _arm(ctx):
        ET.SubElement(features, "gic", version="3")


def _adjust_devices(ctx: Context, devices: ET.Element) -> None:
    socket = _serial_socket(devices)
    for el in list(devices):
        if el.tag in DROPPED_DEVICES or el.tag == "emulator":
            devices.remove(el)
    emulator = ET.Element("emulator")
    emulator.text = ctx.opts.stratovirt_emulator
    devices.insert(0, emulator)
    for disk in devices.findall("disk"):
        _adjust_disk(ctx, disk)
    for iface in devices.findall("interface"):
        _set_virtio(iface.find("model"), "type")
        for rom in iface.findall("rom"):
            iface.remove(rom)
    for balloon in devices.findall("memballoon"):
        _adjust_balloon(devices, balloon)
    for el in devices.findall("rng") + devices.findall("vsock"):
        _set_virtio(el, "model")
    if socket is not None:
        _virtio_console(devices, socket)
    _place_on_root_ports(devices)


def _set_virtio(el: ET.Element | None, attr: str) -> None:
    # StratoVirt's virtio devices are virtio 1.0 on PCIe: it knows no transitional variants.
    if el is not None and el.get(attr, "").startswith("virtio"):
        el.set(attr, "virtio")


def _serial_socket(devices: ET.Element) -> str | None:
    """The unix socket of KubeVirt's serial console (what virtctl console connects to), or
    of a console already rewritten."""
    for el in devices.findall("serial") + devices.findall("console"):
        source = el.find("source")
        if el.get("type") == "unix" and source is not None and source.get("path"):
            return source.get("path")
    return None


def _virtio_console(devices: ET.Element, socket: str) -> None:
    ET.SubElement(devices, "controller", type="virtio-serial", index="0")
    console = ET.SubElement(devices, "console", type="unix")
    ET.SubElement(console, "source", mode="bind", path=socket)
    ET.SubElement(console, "target", type="virtio", port="0")


def _disk_path(ctx: Context, disk: ET.Element) -> str:
    """The VMI field of a disk the storage builder wrote (its alias is ua-<name>)."""
    alias = disk.find("alias")
    name = (alias.get("name", "") if alias is not None else "").removeprefix("ua-")
    for node in ctx.devices.items("disks"):
        if isinstance(node.value, dict) and node.value.get("name") == name:
            return node.path
    return ctx.devices.child("disks").path


def _adjust_disk(ctx: Context, disk: ET.Element) -> None:
    driver = disk.find("driver")
    kind = driver.get("type", "raw") if driver is not None else "raw"
    if disk.get("type", "file") != "file" or kind != "raw":
        raise ConversionError(_disk_path(ctx, disk), f"not supported by StratoVirt: it reads "
                                                     f"raw image files only (this disk is a "
                                                     f"{disk.get('type', 'file')} {kind} one)")
    disk.attrib.pop("model", None)
    if driver is not None:
        for attr in list(driver.attrib):
            if attr not in DISK_DRIVER_ATTRS:
                del driver.attrib[attr]


def _adjust_balloon(devices: ET.Element, balloon: ET.Element) -> None:
    if balloon.get("model") == "none":
        devices.remove(balloon)
        return
    balloon.attrib = {"model": "virtio"}
    for stats in balloon.findall("stats"):
        balloon.remove(stats)


def _on_pci(el: ET.Element) -> bool:
    if el.tag == "disk":
        target = el.find("target")
        return target is not None and target.get("bus") == "virtio"
    if el.tag == "controller":
        return el.get("type") == "virtio-serial"
    return el.tag in PCI_DEVICES


def _place_on_root_ports(devices: ET.Element) -> None:
    """Each PCI device on bus N behind pcie-root-port N, like the seed's examples: the
    StratoVirt driver assigns no addresses and creates no ports itself."""
    pci = [el for el in devices if _on_pci(el)]
    if len(pci) > MAX_BUS - 1:
        raise ConversionError("spec.domain.devices", f"StratoVirt: {len(pci)} PCI devices "
                                                     f"do not fit on {MAX_BUS - 1} root ports")
    controllers = [ET.Element("controller", type="pci", index="0", model="pcie-root")]
    for bus, el in enumerate(pci, start=1):
        for address in el.findall("address"):
            el.remove(address)
        ET.SubElement(el, "address", type="pci", domain="0x0000", bus=f"0x{bus:02x}",
                      slot="0x00", function="0x0")
        controllers.append(ET.Element("controller", type="pci", index=str(bus),
                                      model="pcie-root-port"))
    for offset, controller in enumerate(controllers, start=1):
        devices.insert(offset, controller)
