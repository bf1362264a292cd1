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
  disableHotplug and no scsi disk; rng from /dev/urandom; memballoon with stats period and
  free page reporting unless the cluster disables it, the balloon is off, the VMI is
  high-performance (dedicated CPUs, realtime, hugepages) or annotated
  kubevirt.io/free-page-reporting-disabled; i6300esb watchdog; vsock with the CID
  virt-controller put in status.VSOCKCID (always virtio-non-transitional: vhost-vsock
  needs virtio 1); tpm-tis with an emulator backend (TPM 2.0).
- Hotplug reserve: KubeVirt defines the domain once with placeholder interfaces up to 4
  interfaces, keeps the PCIe root ports libvirt created for them and drops the
  placeholders. This module is pure, so it writes the ports itself on PCIe machines
  (q35, virt): one per device libvirt will put on a root port, plus the reserve, plus the
  spare libvirt adds when it creates ports itself. libvirt fills empty ports with
  unaddressed devices first, so the reserve alone would be used up.

Deliberate differences
- slirp: {} becomes <interface type='user'> (libvirt's user-mode network). KubeVirt built
  slirp from QEMU command-line arguments and has since removed it; we keep it because a
  standalone pod here may have no tap device for the VM.
- No <mtu>: KubeVirt copies the pod interface's MTU when it sets up the network at run
  time; a pure conversion cannot know it, and the tap device already carries it.
- No <mac> unless macAddress is set (libvirt generates one); KubeVirt copies the pod
  interface's MAC at run time.
- Inputs may be keyboards as well as tablets; video vram only for models that use it.
- sriov, macvtap, passt, other binding plugins, multus networks, sound, hostDevices, gpus,
  filesystems, downwardMetrics, clientPassthrough and persistent TPM fail the conversion
  ("not supported by this launcher"): nothing in a standalone pod provides them.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from launcher.converter import storage
from launcher.converter.context import Context
from launcher.converter.cpu import cpu_topology
from launcher.converter.errors import ConversionError
from launcher.converter.spec import Node, join

UINT32_MAX = 2**32 - 1
POD_TAP = "tap0"  # KubeVirt's tap for the primary (pod network) interface
DEFAULT_NETWORK = "default"  # name KubeVirt's webhook gives the auto-attached interface
RESERVED_INTERFACES = 4  # KubeVirt's ReservedInterfaces (nichotplug.go)
MULTIQUEUE_MAX = 256  # KubeVirt's MultiQueueMaxQueues: the tap device's queue limit
VIDEO_VRAM_KIB = "16384"
NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139", "pcnet", "ne2k_pci")
VIDEO_MODELS = {"x86": ("vga", "cirrus", "virtio", "ramfb", "bochs"),
                "arm": ("virtio", "ramfb")}
WATCHDOG_ACTIONS = ("reset", "poweroff", "shutdown")
TAP_ATTACHMENTS = ("tap", "managedTap")
UNSUPPORTED_BINDINGS = ("sriov", "macvtap", "passt")
UNSUPPORTED_DEVICES = ("sound", "hostDevices", "gpus", "filesystems", "downwardMetrics",
                       "clientPassthrough")
# libvirt's aliasName pattern: the device name becomes part of the ua- alias.
NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
MAC_RE = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}")
PCI_RE = re.compile(r"([0-9A-Fa-f]{4}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})\.([0-7])")
FREE_PAGE_REPORTING_OFF = "kubevirt.io/free-page-reporting-disabled"
STORAGE_DEVICES = "spec.domain.devices.disks"  # who owns aliases storage.build wrote


def _q(value: str) -> str:
    return json.dumps(value)


@dataclass
class _Build:
    ctx: Context
    dom: ET.Element
    el: ET.Element  # <devices>
    # ua- alias -> the field that asked for it: libvirt refuses duplicate aliases, and the
    # message should name both devices.
    aliases: dict[str, str] = field(default_factory=dict)

    def add(self, tag: str, **attrs: str) -> ET.Element:
        return ET.SubElement(self.el, tag, attrs)

    def alias(self, device: ET.Element, name: str, path: str) -> None:
        alias = f"ua-{name}"
        other = self.aliases.get(alias)
        if other is not None:
            raise ConversionError(path, f"{_q(name)} gives alias {_q(alias)}, already used by "
                                        f"{other}")
        self.aliases[alias] = path
        ET.SubElement(device, "alias", name=alias)

    @property
    def arm(self) -> bool:
        return self.ctx.opts.arch in ("aarch64", "arm64")


def build(ctx: Context, dom: ET.Element) -> None:
    """Append <devices> to `dom` and fill it: storage first, then KubeVirt's devices."""
    devices = ET.SubElement(dom, "devices")
    storage.build(ctx, devices)
    b = _Build(ctx, dom, devices)
    for alias in devices.iter("alias"):
        b.aliases.setdefault(alias.get("name", ""), STORAGE_DEVICES)
    _refuse_unsupported(ctx.devices)
    interface_count = _interfaces(b)
    usb_inputs = _inputs(b)
    serial = ctx.devices.bool("autoattachSerialConsole", True)
    _controllers(b, usb_needed=b.arm or usb_inputs or _has_disk_on(devices, "usb"),
                 serial=bool(serial))
    if serial:
        _serial_console(b)
    _guest_agent_channel(b)
    _graphics(b)
    _watchdog(b)
    _rng(b)
    _tpm(b)
    _vsock(b)
    _memballoon(b)
    _hotplug_root_ports(b, interface_count)


# --- helpers --------------------------------------------------------------------------------
def _choice(node: Node, key: str, default: str | None, choices: tuple[str, ...]) -> str:
    """`key` from `choices`; absent or "" means `default` (required when None), as Go's
    zero value does in KubeVirt."""
    raw = node.str(key)
    if raw is None or raw == "":
        if default is None:
            node.fail(f"required (one of: {', '.join(choices)})", key)
        return default
    value = node.str(key, choices=choices)
    assert value is not None
    return value


def _device_name(node: Node) -> str:
    name = node.req_str("name", nonempty=True)
    if not NAME_RE.fullmatch(name):
        node.fail(f'{_q(name)} may contain only letters, digits, "_", "-" and "."', "name")
    return name


def _absent(node: Node, key: str) -> bool:
    """Unset, or an empty list (Go's nil slice). An empty object is set: `downwardMetrics:
    {}` asks for the device."""
    return node.child(key).value in (None, [])


def _has_disk_on(devices: ET.Element, bus: str) -> bool:
    return any(target.get("bus") == bus for disk in devices.iter("disk")
               for target in disk.iter("target"))


def vcpus(ctx: Context) -> int:
    """The guest's vCPU count as <vcpu> has it (KubeVirt's vcpu.GetCPUTopology), for queue
    counts: network multiqueue here, block multiqueue in storage."""
    return cpu_topology(ctx).vcpus


def _refuse_unsupported(devices: Node) -> None:
    for key in UNSUPPORTED_DEVICES:
        if not _absent(devices, key):
            devices.fail("not supported by this launcher", key)


# --- interfaces ---------------------------------------------------------------------------
def _networks(ctx: Context) -> dict[str, Node]:
    """spec.networks by name; only the pod network exists in a standalone pod."""
    networks: dict[str, Node] = {}
    pod: str | None = None
    for net in ctx.spec.items("networks"):
        name = _device_name(net)
        if name in networks:
            net.fail(f"duplicate network name {_q(name)}", "name")
        if net.has("multus"):
            net.fail("multus networks are not supported by this launcher (a standalone pod "
                     "has only its pod network)", "multus")
        if not net.has("pod"):
            net.fail("required: the pod network is the only network source this launcher "
                     "supports", "pod")
        net.obj("pod")
        if pod is not None:
            net.fail(f"only one pod network is allowed ({pod} is one)", "pod")
        pod = net.path
        networks[name] = net
    return networks


def _binding(iface: Node) -> str:
    """The interface's one binding method."""
    methods = [key for key in ("bridge", "masquerade", "slirp", "binding",
                               *UNSUPPORTED_BINDINGS) if iface.has(key)]
    if not methods:
        iface.fail("no binding method (expected one of: bridge, masquerade, slirp)")
    if len(methods) > 1:
        iface.fail(f"only one binding method may be set, got: {', '.join(methods)}")
    method = methods[0]
    iface.obj(method)
    if method in UNSUPPORTED_BINDINGS:
        iface.fail("binding is not supported by this launcher", method)
    return method


def _plugin_attachment(ctx: Context, iface: Node, name: str) -> None:
    """A binding plugin works only when virt-handler attaches it as a tap (or managedTap,
    which it hands to the domain as tap): anything else needs a sidecar we do not run."""
    plugin = iface.obj("binding").req_str("name", nonempty=True)
    if ctx.opts.interface_attachment.get(name) not in TAP_ATTACHMENTS:
        iface.fail(f"network binding plugin {_q(plugin)} is not supported by this launcher "
                   f"(only plugins with a tap or managedTap domain attachment)", "binding")


def _interfaces(b: _Build) -> int:
    """Emit the interfaces; return how many the VMI has (KubeVirt's count for the hotplug
    reserve, absent ones included)."""
    devices = b.ctx.devices
    ifaces = devices.items("interfaces")
    networks = _networks(b.ctx)
    if not ifaces and not networks:
        if not devices.bool("autoattachPodInterface", True):
            return 0
        # What KubeVirt's webhook adds: interface "default" (bridge) on pod network "default".
        default = Node({"name": DEFAULT_NETWORK, "bridge": {}},
                       join(devices.path, "autoattachPodInterface"))
        _interface(b, default, "bridge")
        return 1
    used: set[str] = set()
    for iface in ifaces:
        name = _device_name(iface)
        if name in used:
            iface.fail(f"duplicate interface name {_q(name)}", "name")
        used.add(name)
        if name not in networks:
            iface.fail(f"no network named {_q(name)} in spec.networks", "name")
        method = _binding(iface)
        if _choice(iface, "state", "up", ("up", "down", "absent")) == "absent":
            continue  # being hot-unplugged: KubeVirt leaves it out of the domain
        if method == "binding":
            _plugin_attachment(b.ctx, iface, name)
        _interface(b, iface, method)
    for name, net in networks.items():
        if name not in used:
            net.fail("no interface in spec.domain.devices.interfaces uses this network",
                     "name")
    return len(ifaces)


def _interface(b: _Build, iface: Node, method: str) -> None:
    name = _device_name(iface)
    model = _choice(iface, "model", "virtio", NIC_MODELS)
    if method == "slirp":
        if not _absent(iface, "ports"):
            iface.fail("port forwarding with slirp is not supported by this launcher",
                       "ports")
        el = b.add("interface", type="user")
    else:
        el = b.add("interface", type="ethernet")
        # The network setup created the tap; libvirt must not create or delete it.
        ET.SubElement(el, "target", dev=POD_TAP, managed="no")
    mac = _mac(iface)
    if mac is not None:
        ET.SubElement(el, "mac", address=mac)
    ET.SubElement(el, "model", type=b.ctx.virtio_model if model == "virtio" else model)
    if model == "virtio" and b.ctx.devices.bool("networkInterfaceMultiqueue", False):
        # KubeVirt: one queue per vCPU, counted as for <vcpu>.
        queues = min(vcpus(b.ctx), MULTIQUEUE_MAX)
        ET.SubElement(el, "driver", name="vhost", queues=str(queues))
    if iface.str("state") == "down":
        ET.SubElement(el, "link", state="down")
    _boot_or_rom(b, el, iface)
    acpi_index = iface.int("acpiIndex", 0, minimum=0, maximum=16383) or 0
    if acpi_index:
        ET.SubElement(el, "acpi", index=str(acpi_index))
    address = _pci_address(iface, "pciAddress")
    if address is not None:
        ET.SubElement(el, "address", address)
    b.alias(el, name, iface.path)


def _mac(iface: Node) -> str | None:
    mac = iface.str("macAddress")
    if not mac:
        return None
    if not MAC_RE.fullmatch(mac):
        iface.fail(f"{_q(mac)} is not a MAC address (e.g. 02:00:00:00:00:01)", "macAddress")
    normal = mac.replace("-", ":").lower()
    if int(normal[:2], 16) & 1:
        iface.fail(f"{_q(mac)} is a multicast address; a NIC needs a unicast one",
                   "macAddress")
    return normal


def _boot_or_rom(b: _Build, el: ET.Element, iface: Node) -> None:
    """KubeVirt: a boot order for network boot, else no option ROM (iPXE would only slow
    the boot down)."""
    order = iface.int("bootOrder", minimum=1, maximum=UINT32_MAX)
    if order is None:
        ET.SubElement(el, "rom", enabled="no")
        return
    # libvirt refuses two devices with the same boot order; disks are already in place.
    if any(boot.get("order") == str(order) for boot in b.el.iter("boot")):
        iface.fail(f"boot order {order} is already used by another device", "bootOrder")
    ET.SubElement(el, "boot", order=str(order))


def _pci_address(node: Node, key: str) -> dict[str, str] | None:
    """KubeVirt's pciAddress "DDDD:BB:SS.F" as libvirt <address type='pci'> attributes."""
    text = node.str(key)
    if not text:
        return None
    m = PCI_RE.fullmatch(text)
    if m is None:
        node.fail(f"{_q(text)} is not a PCI address (expected DDDD:BB:SS.F, e.g. "
                  f"0000:81:01.0)", key)
    domain, bus, slot, function = m.groups()
    if int(slot, 16) > 0x1F:
        node.fail(f"{_q(text)}: slot must be at most 1f", key)
    return {"type": "pci", "domain": f"0x{domain.lower()}", "bus": f"0x{bus.lower()}",
            "slot": f"0x{slot.lower()}", "function": f"0x{function}"}


# --- inputs and controllers ---------------------------------------------------------------
def _inputs(b: _Build) -> bool:
    """User inputs (and aarch64's default tablet/keyboard); True when one is on USB."""
    on_usb = False
    tablet = False
    for node in b.ctx.devices.items("inputs"):
        name = _device_name(node)
        kind = _choice(node, "type", None, ("tablet", "keyboard"))
        bus = _choice(node, "bus", "usb", ("usb", "virtio"))
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


def _controllers(b: _Build, *, usb_needed: bool, serial: bool) -> None:
    if not _has_controller(b.el, "usb"):
        # No USB device: no controller at all (KubeVirt), saving a PCIe slot.
        b.add("controller", type="usb", index="0", model="qemu-xhci" if usb_needed else "none")
    hotplug = not b.ctx.devices.bool("disableHotplug", False)
    if (hotplug or _has_disk_on(b.el, "scsi")) and not _has_controller(b.el, "scsi"):
        # Also without scsi disks: hotplugged volumes attach to it.
        b.add("controller", type="scsi", index="0", model=b.ctx.virtio_model)
    if serial:
        b.add("controller", type="virtio-serial", index="0", model=b.ctx.virtio_model)


def _is_pcie_machine(b: _Build) -> bool:
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
    return tag in ("interface", "rng", "vsock", "watchdog")


def _hotplug_root_ports(b: _Build, interface_count: int) -> None:
    """KubeVirt reserves room for hotplugging interfaces up to RESERVED_INTERFACES, but only
    when the VMI has interfaces. Ports are numbered after any PCI controller present."""
    reserve = RESERVED_INTERFACES - interface_count
    if interface_count == 0 or reserve <= 0 or not _is_pcie_machine(b):
        return
    # + 1: the spare port libvirt adds when it creates the ports itself, as it did in
    # KubeVirt's placeholder definition, but not when the XML already has enough.
    needed = sum(1 for dev in b.el if _takes_root_port(dev)) + reserve + 1
    indexes = [int(index) for c in b.el.iter("controller")
               if c.get("type") == "pci" and (index := c.get("index", "0")).isdigit()]
    first = max(indexes, default=0) + 1
    for number in range(first, first + needed):
        b.add("controller", type="pci", index=str(number), model="pcie-root-port")


# --- console, agent, graphics -------------------------------------------------------------
def _serial_log_enabled(ctx: Context) -> bool:
    explicit = ctx.devices.bool("logSerialConsole")
    if explicit is not None:
        return explicit
    return not ctx.opts.cluster.serial_console_log_disabled


def _serial_console(b: _Build) -> None:
    socket = f"{b.ctx.vmi_private_dir}/virt-serial0"
    serial = b.add("serial", type="unix")
    ET.SubElement(serial, "source", mode="bind", path=socket)
    if _serial_log_enabled(b.ctx):
        # virt-handler's guest-console-log container tails this file.
        ET.SubElement(serial, "log", file=f"{socket}-log", append="on")
    ET.SubElement(serial, "target", port="0")
    console = b.add("console", type="pty")
    ET.SubElement(console, "target", type="serial", port="0")


def _guest_agent_channel(b: _Build) -> None:
    # No source: libvirt chooses the socket path and the launcher finds it through libvirt.
    channel = b.add("channel", type="unix")
    ET.SubElement(channel, "target", type="virtio", name="org.qemu.guest_agent.0")


def _graphics_enabled(ctx: Context) -> bool:
    return bool(ctx.devices.bool("autoattachGraphicsDevice", True))


def _is_efi(ctx: Context) -> bool:
    return ctx.domain_spec.obj("firmware").obj("bootloader").obj("efi").present


def _graphics(b: _Build) -> None:
    if not _graphics_enabled(b.ctx):
        return  # headless: no VNC, no video
    graphics = b.add("graphics", type="vnc")
    ET.SubElement(graphics, "listen", type="socket", socket=f"{b.ctx.vmi_private_dir}/virt-vnc")
    video = b.ctx.devices.obj("video")
    arch = "arm" if b.arm else "x86"
    if video.present:
        model = _choice(video, "type", None, VIDEO_MODELS[arch])
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
def _watchdog(b: _Build) -> None:
    node = b.ctx.devices.obj("watchdog")
    if not node.present:
        return
    if b.arm:
        node.fail("watchdog is not supported on aarch64")
    name = _device_name(node)
    if not node.has("i6300esb"):
        node.fail("required: the watchdog type (i6300esb)", "i6300esb")
    action = _choice(node.obj("i6300esb"), "action", "reset", WATCHDOG_ACTIONS)
    el = b.add("watchdog", model="i6300esb", action=action)
    b.alias(el, name, node.path)


def _rng(b: _Build) -> None:
    if not b.ctx.devices.obj("rng").present:
        return
    rng = b.add("rng", model=b.ctx.virtio_model)
    ET.SubElement(rng, "backend", model="random").text = "/dev/urandom"


def _tpm(b: _Build) -> None:
    node = b.ctx.devices.obj("tpm")
    if not node.present or node.bool("enabled", True) is False:
        return
    if node.bool("persistent", False):
        node.fail("persistent TPM state is not supported by this launcher (it needs "
                  "backend storage)", "persistent")
    tpm = b.add("tpm", model="tpm-tis")
    ET.SubElement(tpm, "backend", type="emulator", version="2.0")


def _vsock(b: _Build) -> None:
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


def _memballoon(b: _Build) -> None:
    if not b.ctx.devices.bool("autoattachMemBalloon", True):
        # Without this libvirt would add a default balloon.
        b.add("memballoon", model="none")
        return
    balloon = b.add("memballoon", model=b.ctx.virtio_model,
                    freePageReporting="on" if _free_page_reporting(b.ctx) else "off")
    period = b.ctx.opts.mem_balloon_stats_period
    if period > 0:
        ET.SubElement(balloon, "stats", period=str(period))
