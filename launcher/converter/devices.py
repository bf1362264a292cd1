"""<devices>: everything the guest sees besides what storage.build adds (disks, volumes,
cloud-init), built the way KubeVirt's converter builds it
(pkg/virt-launcher/virtwrap/converter: network/, compute/ and converter.go).

Matched KubeVirt behaviour
- Interfaces pair with spec.networks by name. bridge / masquerade on the pod network get
  KubeVirt's tap attachment: <interface type='ethernet'> on the pre-created tap0 (the pod
  network is KubeVirt's primary interface, whose tap is always "tap0") with
  managed='no', <rom enabled='no'/> unless the interface has a bootOrder (PXE needs the
  ROM), <alias name='ua-NAME'/>, the model (virtio -> ctx.virtio_model), the macAddress,
  pciAddress, acpiIndex, link state and, with networkInterfaceMultiqueue, vhost queues =
  vCPUs (capped at 256, virtio only). A binding plugin whose domain attachment virt-handler
  reports as "tap" or "managedTap" gets the same element: virt-handler hands managedTap to
  the domain as tap (it creates the tap and bridge itself). With no interfaces and no
  networks and autoattachPodInterface not false, the default interface KubeVirt's webhook
  would add ("default", bridge, pod network) is added here.
- Serial console: unix socket <private>/<uid>/virt-serial0, optional log file, and a pty
  console targeting serial port 0; the virtio-serial controller with it. Logging follows
  spec.domain.devices.logSerialConsole, else the cluster's SerialConsoleLogDisabled.
- Guest agent channel without a source path (libvirt picks one); VNC on a unix socket;
  vga (vram 16 MiB, 1 head) or bochs for EFI guests when the cluster asks for it, or
  spec.domain.devices.video.type; inputs with ua- aliases; the usb controller qemu-xhci
  only when something is on USB (else model='none'); virtio-scsi controller unless
  disableHotplug and no disk of the spec on scsi (in the domain or waiting for its
  hotplug volume); rng from /dev/urandom; memballoon with stats period and free page
  reporting unless the cluster disables it, the balloon is off, the VMI is
  high-performance (dedicated CPUs, realtime, hugepages) or annotated
  kubevirt.io/free-page-reporting-disabled; i6300esb watchdog; vsock with the CID
  virt-controller put in status.VSOCKCID (always virtio-non-transitional: vhost-vsock
  needs virtio 1); tpm-tis with an emulator backend (TPM 2.0).
- Hotplug reserve: KubeVirt defines the domain once with placeholder interfaces up to 4
  interfaces, keeps the PCIe root ports libvirt created for them and drops the
  placeholders, then adds direct ports so that max(8 - ports in use, 3) stay free (16 and
  6 above 2 GiB of memory; none with kubevirt.io/placePCIDevicesOnRootComplex). This
  module is pure, so it writes the ports itself on PCIe machines (q35, virt): one per
  device libvirt will put on a root port, plus the reserve, plus the spare libvirt adds
  when it creates ports itself. libvirt fills empty ports with unaddressed devices first,
  so the reserve alone would be used up. KubeVirt counts the devices from libvirt's
  addresses; this module counts the devices that take a root port.

Deliberate differences
- slirp: {} becomes <interface type='user'> (libvirt's user-mode network). KubeVirt built
  slirp from QEMU command-line arguments and has since removed it; we keep it because a
  standalone pod here may have no tap device for the VM.
- No <mtu>: KubeVirt copies the pod interface's MTU when it sets up the network at run
  time; a pure conversion cannot know it, and the tap device already carries it.
- No <mac> unless macAddress is set (libvirt generates one); KubeVirt copies the pod
  interface's MAC at run time.
- Inputs may be keyboards as well as tablets; video vram only for models that use it.
- macvtap, passt, other binding plugins, a Multus default network, sound, hostDevices,
  gpus, filesystems, downwardMetrics, clientPassthrough and persistent TPM fail the
  conversion ("not supported by this launcher"): nothing in a standalone pod provides
  them. Secondary Multus networks take the bridge binding (a tap virt-handler creates) or
  sriov (a PCI <hostdev> on the VF the launcher found in the pod's network-info).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from launcher.converter import memory, network, storage
from launcher.converter.context import Context
from launcher.converter.devbuild import Build, absent, choice, device_name
from launcher.converter.spec import Node

UINT32_MAX = 2**32 - 1
RESERVED_INTERFACES = 4  # KubeVirt's ReservedInterfaces (nichotplug.go)
# KubeVirt's calculateHotplugPortCountV2 (manager.go): (total ports, minimum free ports),
# the larger pair above 2 GiB of memory.
HOTPLUG_PORTS = (8, 3)
HOTPLUG_PORTS_LARGE = (16, 6)
HOTPLUG_LARGE_MEMORY = 2 * 2**30
MAX_PCI_BUS_INDEX = 31
PLACE_ON_ROOT_COMPLEX = "kubevirt.io/placePCIDevicesOnRootComplex"
VIDEO_VRAM_KIB = "16384"
# KubeVirt's PanicDeviceModel values libvirt 9 knows (its schema has no pvpanic).
PANIC_MODELS = ("hyperv", "isa")
VIDEO_MODELS = {"x86": ("vga", "cirrus", "virtio", "ramfb", "bochs"),
                "arm": ("virtio", "ramfb")}
WATCHDOG_ACTIONS = ("reset", "poweroff", "shutdown")
UNSUPPORTED_DEVICES = ("sound", "hostDevices", "gpus", "filesystems", "downwardMetrics",
                       "clientPassthrough")
FREE_PAGE_REPORTING_OFF = "kubevirt.io/free-page-reporting-disabled"
STORAGE_DEVICES = "spec.domain.devices.disks"  # who owns aliases storage.build wrote


def build(ctx: Context, dom: ET.Element) -> None:
    """Append <devices> to `dom` and fill it: storage first, then KubeVirt's devices."""
    devices = ET.SubElement(dom, "devices")
    storage.build(ctx, devices)
    disk_buses = storage.disk_buses(ctx)
    b = Build(ctx, dom, devices)
    for alias in devices.iter("alias"):
        b.aliases.setdefault(alias.get("name", ""), STORAGE_DEVICES)
    _refuse_unsupported(ctx.devices)
    interface_count = network.build(b)
    usb_inputs = _inputs(b)
    serial = ctx.devices.bool("autoattachSerialConsole", True)
    _controllers(b, usb_needed=b.arm or usb_inputs or "usb" in disk_buses,
                 scsi_disk="scsi" in disk_buses, serial=bool(serial))
    if serial:
        _serial_console(b)
    _guest_agent_channel(b)
    _graphics(b)
    _watchdog(b)
    _rng(b)
    _tpm(b)
    _vsock(b)
    _memballoon(b)
    _panic_devices(b)
    memory.hotplug_device(ctx, devices)
    _hotplug_root_ports(b, interface_count)


# --- helpers --------------------------------------------------------------------------------
def _refuse_unsupported(devices: Node) -> None:
    for key in UNSUPPORTED_DEVICES:
        if not absent(devices, key):
            devices.fail("not supported by this launcher", key)




# --- inputs and controllers ---------------------------------------------------------------
def _inputs(b: Build) -> bool:
    """User inputs (and aarch64's default tablet/keyboard); True when one is on USB."""
    on_usb = False
    tablet = False
    for node in b.ctx.devices.items("inputs"):
        name = device_name(node)
        kind = choice(node, "type", None, ("tablet", "keyboard"))
        bus = choice(node, "bus", "usb", ("usb", "virtio"))
        el = b.add("input", type=kind, bus=bus)
        if bus == "virtio":
            el.set("model", "virtio")  # input devices exist only as virtio 1.0
        b.alias(el, name, node.path)
        on_usb = on_usb or bus == "usb"
        tablet = tablet or kind == "tablet"
    if b.arm and _graphics_enabled(b.ctx):
        # KubeVirt: aarch64 has no PS/2, so a VNC user needs USB pointer and keyboard.
        if not tablet:
            b.add("input", type="tablet", bus="usb")
        b.add("input", type="keyboard", bus="usb")
        on_usb = True
    return on_usb


def _has_controller(devices: ET.Element, kind: str) -> bool:
    return any(c.get("type") == kind for c in devices.iter("controller"))


def _controllers(b: Build, *, usb_needed: bool, scsi_disk: bool, serial: bool) -> None:
    """`scsi_disk`: a disk of spec.domain.devices.disks is on scsi, in the domain yet or
    not (a hotplug disk waiting for its volume: KubeVirt's requiresSCSIController)."""
    if not _has_controller(b.el, "usb"):
        # No USB device: no controller at all (KubeVirt), saving a PCIe slot.
        b.add("controller", type="usb", index="0", model="qemu-xhci" if usb_needed else "none")
    hotplug = not b.ctx.devices.bool("disableHotplug", False)
    if (hotplug or scsi_disk) and not _has_controller(b.el, "scsi"):
        # Also without scsi disks: hotplugged volumes attach to it.
        b.add("controller", type="scsi", index="0", model=b.ctx.virtio_model)
    if serial:
        b.add("controller", type="virtio-serial", index="0", model=b.ctx.virtio_model)


def _is_pcie_machine(b: Build) -> bool:
    machine = None
    os_type = b.dom.find("os/type")
    if os_type is not None:
        machine = os_type.get("machine")
    if not machine:
        machine = b.ctx.domain_spec.obj("machine").str("type")
    if not machine:
        return True  # KubeVirt's defaults: q35 (x86_64), virt (aarch64)
    return "q35" in machine or machine.startswith("virt")


# Devices libvirt puts on a PCIe root port of their own when they have no address.
# Over-counting (a transitional device behind a PCI bridge) only leaves a spare port.
def _takes_root_port(dev: ET.Element) -> bool:
    if dev.find("address") is not None:
        return False
    tag, kind, model = dev.tag, dev.get("type"), dev.get("model")
    if tag == "disk":
        return dev.find("target[@bus='virtio']") is not None
    if tag == "controller":
        return (kind, model) == ("usb", "qemu-xhci") or kind in ("scsi", "virtio-serial")
    if tag == "memballoon":
        return model != "none"
    if tag == "input":
        return dev.get("bus") == "virtio"
    # The primary video device sits on the root complex (00:01.0); conventional PCI
    # devices (the watchdog) share a pcie-to-pci-bridge, which takes one port.
    if tag == "memory":
        return dev.get("model") == "virtio-mem"
    return tag in ("interface", "rng", "vsock", "watchdog", "hostdev")


def _hotplug_root_ports(b: Build, interface_count: int) -> None:
    """KubeVirt's spare PCIe root ports (allocateHotplugPorts): placeholders for hotplugging
    interfaces up to RESERVED_INTERFACES (only when the VMI has interfaces), and direct
    ports so that max(total - ports in use, minimum free) stay free (8 and 3, or 16 and 6
    above 2 GiB of memory); none with the placePCIDevicesOnRootComplex annotation. Ports
    are numbered after any PCI controller present."""
    if not _is_pcie_machine(b) or b.ctx.vmi.obj("metadata").obj("annotations").str(
            PLACE_ON_ROOT_COMPLEX) == "true":
        return
    placeholders = max(0, RESERVED_INTERFACES - interface_count) if interface_count else 0
    # KubeVirt's CountPCIDevices: the devices libvirt gives a PCI address.
    in_use = sum(1 for dev in b.el if _takes_root_port(dev))
    large = memory.guest_memory(b.ctx)[0] > HOTPLUG_LARGE_MEMORY
    total, min_free = (HOTPLUG_PORTS_LARGE if large else HOTPLUG_PORTS)
    extra = max(0, max(total - in_use, min_free) - placeholders)
    # + 1: the spare port libvirt adds when it creates the ports itself, as it did in
    # KubeVirt's placeholder definition, but not when the XML already has enough.
    needed = in_use + placeholders + extra + 1
    indexes = [int(index) for c in b.el.iter("controller")
               if c.get("type") == "pci" and (index := c.get("index", "0")).isdigit()]
    first = max(indexes, default=0) + 1
    # Root ports take the root bus's slots 1-31 (KubeVirt's maxPCIBusIndex).
    for number in range(first, min(first + needed, MAX_PCI_BUS_INDEX + 1)):
        b.add("controller", type="pci", index=str(number), model="pcie-root-port")


# --- console, agent, graphics -------------------------------------------------------------
def _serial_log_enabled(ctx: Context) -> bool:
    explicit = ctx.devices.bool("logSerialConsole")
    if explicit is not None:
        return explicit
    return not ctx.opts.cluster.serial_console_log_disabled


def _serial_console(b: Build) -> None:
    socket = f"{b.ctx.vmi_private_dir}/virt-serial0"
    serial = b.add("serial", type="unix")
    ET.SubElement(serial, "source", mode="bind", path=socket)
    if _serial_log_enabled(b.ctx):
        # virt-handler's guest-console-log container tails this file.
        ET.SubElement(serial, "log", file=f"{socket}-log", append="on")
    ET.SubElement(serial, "target", port="0")
    console = b.add("console", type="pty")
    ET.SubElement(console, "target", type="serial", port="0")


def _guest_agent_channel(b: Build) -> None:
    # No source: libvirt chooses the socket path and the launcher finds it through libvirt.
    channel = b.add("channel", type="unix")
    ET.SubElement(channel, "target", type="virtio", name="org.qemu.guest_agent.0")


def _graphics_enabled(ctx: Context) -> bool:
    return bool(ctx.devices.bool("autoattachGraphicsDevice", True))


def _is_efi(ctx: Context) -> bool:
    return ctx.domain_spec.obj("firmware").obj("bootloader").obj("efi").present


def _graphics(b: Build) -> None:
    if not _graphics_enabled(b.ctx):
        return  # headless: no VNC, no video
    graphics = b.add("graphics", type="vnc")
    ET.SubElement(graphics, "listen", type="socket", socket=f"{b.ctx.vmi_private_dir}/virt-vnc")
    video = b.ctx.devices.obj("video")
    arch = "arm" if b.arm else "x86"
    if video.present:
        model = choice(video, "type", None, VIDEO_MODELS[arch])
    elif b.arm:
        model = "virtio"  # qemu offers only virtio-gpu on aarch64
    elif _is_efi(b.ctx) and b.ctx.opts.cluster.bochs_display_for_efi_guests:
        model = "bochs"  # no legacy VGA needed under UEFI
    else:
        model = "vga"
    attrs = {"type": model, "heads": "1"}
    if model in ("vga", "cirrus"):
        attrs["vram"] = VIDEO_VRAM_KIB
    ET.SubElement(b.add("video"), "model", attrs)


# --- other devices ------------------------------------------------------------------------
def _watchdog(b: Build) -> None:
    node = b.ctx.devices.obj("watchdog")
    if not node.present:
        return
    if b.arm:
        node.fail("watchdog is not supported on aarch64")
    if node.has("diag288"):
        node.fail("diag288 is the s390x watchdog; this launcher runs x86_64 and aarch64 "
                  "guests (use i6300esb)", "diag288")
    name = device_name(node)
    if not node.has("i6300esb"):
        node.fail("required: the watchdog type (i6300esb)", "i6300esb")
    action = choice(node.obj("i6300esb"), "action", "reset", WATCHDOG_ACTIONS)
    el = b.add("watchdog", model="i6300esb", action=action)
    b.alias(el, name, node.path)


def _rng(b: Build) -> None:
    if not b.ctx.devices.obj("rng").present:
        return
    rng = b.add("rng", model=b.ctx.virtio_model)
    ET.SubElement(rng, "backend", model="random").text = "/dev/urandom"


def _tpm(b: Build) -> None:
    node = b.ctx.devices.obj("tpm")
    if not node.present or node.bool("enabled", True) is False:
        return
    if node.bool("persistent", False):
        node.fail("persistent TPM state is not supported by this launcher (it needs "
                  "backend storage)", "persistent")
    tpm = b.add("tpm", model="tpm-tis")
    ET.SubElement(tpm, "backend", type="emulator", version="2.0")


def _vsock(b: Build) -> None:
    if not b.ctx.devices.bool("autoattachVSOCK", False):
        return
    status = b.ctx.vmi.obj("status")
    # KubeVirt's JSON name is "VSOCKCID"; accept the camel-case spelling people write.
    key = "VSOCKCID" if status.has("VSOCKCID") or not status.has("vsockCID") else "vsockCID"
    # CIDs 0-2 are the hypervisor, local and host; virt-controller allocates from 3.
    cid = status.int(key, minimum=3, maximum=UINT32_MAX - 1)
    if cid is None:
        status.fail("required by spec.domain.devices.autoattachVSOCK: the CID "
                    "virt-controller allocated", key)
    vsock = b.add("vsock", model="virtio-non-transitional")
    ET.SubElement(vsock, "cid", auto="no", address=str(cid))


def _panic_devices(b: Build) -> None:
    """spec.domain.devices.panicDevices (KubeVirt's PanicDevicesDomainConfigurator): one
    <panic> each; no model is libvirt's default (isa on x86_64)."""
    for node in b.ctx.devices.items("panicDevices"):
        model = node.str("model")
        if model == "pvpanic":
            node.fail('"pvpanic" is not supported by this launcher (libvirt 9 has no '
                      'pvpanic panic model; use "isa" or "hyperv")', "model")
        el = b.add("panic")
        if model:
            el.set("model", choice(node, "model", None, PANIC_MODELS))


def _free_page_reporting(ctx: Context) -> bool:
    """KubeVirt's isFreePageReportingEnabled: off for high-performance VMIs, whose memory
    should not be handed back and forth."""
    if ctx.opts.cluster.free_page_reporting_disabled:
        return False
    cpu = ctx.domain_spec.obj("cpu")
    if cpu.bool("dedicatedCpuPlacement", False) or cpu.obj("realtime").present:
        return False
    if ctx.domain_spec.obj("memory").obj("hugepages").present:
        return False
    annotations = ctx.vmi.obj("metadata").obj("annotations")
    return annotations.str(FREE_PAGE_REPORTING_OFF) != "true"


def _memballoon(b: Build) -> None:
    if not b.ctx.devices.bool("autoattachMemBalloon", True):
        # Without this libvirt would add a default balloon.
        b.add("memballoon", model="none")
        return
    balloon = b.add("memballoon", model=b.ctx.virtio_model,
                    freePageReporting="on" if _free_page_reporting(b.ctx) else "off")
    period = b.ctx.opts.mem_balloon_stats_period
    if period > 0:
        ET.SubElement(balloon, "stats", period=str(period))
