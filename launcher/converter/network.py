"""<interface>s: spec.domain.devices.interfaces paired with spec.networks, as KubeVirt's
network converter builds them (pkg/virt-launcher/virtwrap/converter/network/). See the
devices module's doc for what is matched and what differs."""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET

from launcher.converter.context import Context
from launcher.converter.cpu import cpu_topology
from launcher.converter.devbuild import Build, absent, choice, device_name
from launcher.converter.spec import Node, join
from launcher.converter.xmlutil import q

UINT32_MAX = 2**32 - 1
POD_TAP = "tap0"  # KubeVirt's tap for the primary (pod network) interface
DEFAULT_NETWORK = "default"  # name KubeVirt's webhook gives the auto-attached interface
MULTIQUEUE_MAX = 256  # KubeVirt's MultiQueueMaxQueues: the tap device's queue limit
NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139", "pcnet", "ne2k_pci")
TAP_ATTACHMENTS = ("tap", "managedTap")
UNSUPPORTED_BINDINGS = ("macvtap", "passt", "passtBinding")
SRIOV_ALIAS = "sriov-"  # KubeVirt's deviceinfo.SRIOVAliasPrefix
MAC_RE = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}")
PCI_RE = re.compile(r"([0-9A-Fa-f]{4}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})\.([0-7])")


def vcpus(ctx: Context) -> int:
    """The guest's vCPU count as <vcpu> has it (KubeVirt's vcpu.GetCPUTopology), for queue
    counts."""
    return cpu_topology(ctx).vcpus


def secondary_tap(network: str) -> str:
    """The tap virt-handler creates in the pod for a secondary (Multus) network's interface:
    KubeVirt's GenerateTapDeviceName("pod" + sha256(network name)[:11]), "tap" + the hash."""
    return "tap" + hashlib.sha256(network.encode()).hexdigest()[:11]


def _networks(ctx: Context) -> dict[str, Node]:
    """spec.networks by name: the pod network and secondary Multus networks (whose pod
    interface and tap virt-handler sets up)."""
    networks: dict[str, Node] = {}
    pod: str | None = None
    for net in ctx.spec.items("networks"):
        name = device_name(net)
        if name in networks:
            net.fail(f"duplicate network name {q(name)}", "name")
        if net.has("multus"):
            if net.has("pod"):
                net.fail("only one network source may be set, got: pod, multus", "multus")
            multus = net.obj("multus")
            multus.req_str("networkName", nonempty=True)
            if multus.bool("default", False):
                net.fail("a Multus default network (replacing the pod network) is not "
                         "supported by this launcher", "multus.default")
            networks[name] = net
            continue
        if net.has("resourceClaim"):
            net.fail("networks from resource claims (DRA) are not supported by this "
                     "launcher (a standalone pod has only its pod network)", "resourceClaim")
        if not net.has("pod"):
            net.fail("required: a network source (pod or multus; this launcher supports "
                     "no other)", "pod")
        net.obj("pod")
        if pod is not None:
            net.fail(f"only one pod network is allowed ({pod} is one)", "pod")
        pod = net.path
        networks[name] = net
    return networks


def _binding(iface: Node) -> str:
    """The interface's one binding method."""
    methods = [key for key in ("bridge", "masquerade", "slirp", "binding", "sriov",
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
        iface.fail(f"network binding plugin {q(plugin)} is not supported by this launcher "
                   f"(only plugins with a tap or managedTap domain attachment)", "binding")


def build(b: Build) -> int:
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
        name = device_name(iface)
        if name in used:
            iface.fail(f"duplicate interface name {q(name)}", "name")
        used.add(name)
        if name not in networks:
            iface.fail(f"no network named {q(name)} in spec.networks", "name")
        method = _binding(iface)
        if networks[name].has("multus") and method not in ("bridge", "sriov"):
            # KubeVirt's admitter: masquerade and slirp serve the pod network only.
            iface.fail(f"a secondary (Multus) network takes the bridge or sriov binding, "
                       f"not {method}", method)
        if method == "sriov" and not networks[name].has("multus"):
            iface.fail("the sriov binding needs a secondary (Multus) network: the VF is "
                       "the device plugin's, not the pod network's", "sriov")
        if iface.has("dhcpOptions"):
            # KubeVirt's launcher serves them from the DHCP server it runs for bridge and
            # masquerade bindings; this launcher runs none, so they would be lost.
            iface.fail("not supported by this launcher (it runs no DHCP server for the "
                       "guest)", "dhcpOptions")
        if choice(iface, "state", "up", ("up", "down", "absent")) == "absent":
            continue  # being hot-unplugged: KubeVirt leaves it out of the domain
        if method == "binding":
            _plugin_attachment(b.ctx, iface, name)
        if method == "sriov":
            _sriov(b, iface, name)
            continue
        _interface(b, iface, method, networks[name])
    for name, net in networks.items():
        if name not in used:
            net.fail("no interface in spec.domain.devices.interfaces uses this network",
                     "name")
    return len(ifaces)


def _interface(b: Build, iface: Node, method: str, network: Node | None = None) -> None:
    name = device_name(iface)
    model = choice(iface, "model", "virtio", NIC_MODELS)
    if method == "slirp":
        if not absent(iface, "ports"):
            iface.fail("port forwarding with slirp is not supported by this launcher",
                       "ports")
        el = b.add("interface", type="user")
    else:
        el = b.add("interface", type="ethernet")
        # The network setup created the tap; libvirt must not create or delete it.
        secondary = network is not None and network.has("multus")
        ET.SubElement(el, "target", dev=secondary_tap(name) if secondary else POD_TAP,
                      managed="no")
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


def sriov_hostdev(name: str, host_pci: str, guest_pci: dict[str, str] | None = None,
                  boot_order: int | None = None) -> ET.Element:
    """The <hostdev> of an SR-IOV interface's VF (KubeVirt's sriov.CreateHostDevices):
    host address `host_pci` (DDDD:BB:SS.F), the interface's guest PCI address and boot
    order, alias ua-sriov-<name>."""
    m = PCI_RE.fullmatch(host_pci)
    if m is None:
        raise ValueError(f"{host_pci!r} is not a PCI address (expected DDDD:BB:SS.F)")
    dev = ET.Element("hostdev", mode="subsystem", type="pci", managed="no")
    domain, bus, slot, function = (g.lower() for g in m.groups())
    ET.SubElement(ET.SubElement(dev, "source"), "address", domain=f"0x{domain}",
                  bus=f"0x{bus}", slot=f"0x{slot}", function=f"0x{function}")
    if boot_order is not None:
        ET.SubElement(dev, "boot", order=str(boot_order))
    if guest_pci is not None:
        ET.SubElement(dev, "address", guest_pci)
    ET.SubElement(dev, "alias", name=f"ua-{SRIOV_ALIAS}{name}")
    return dev


def _sriov(b: Build, iface: Node, name: str) -> None:
    """An SR-IOV interface is a PCI host device, once the launcher found its VF in the pod
    (ConvertOptions.sriov_addresses); until then it is left out, as KubeVirt does."""
    guest_pci = _pci_address(iface, "pciAddress")
    order = iface.int("bootOrder", minimum=1, maximum=UINT32_MAX)
    host_pci = b.ctx.opts.sriov_addresses.get(name)
    if host_pci is None:
        return
    if order is not None and any(boot.get("order") == str(order) for boot in b.el.iter("boot")):
        iface.fail(f"boot order {order} is already used by another device", "bootOrder")
    try:
        dev = sriov_hostdev(name, host_pci, guest_pci, order)
    except ValueError as exc:
        iface.fail(f"the pod's VF address: {exc}", "sriov")
    b.el.append(dev)


def _mac(iface: Node) -> str | None:
    mac = iface.str("macAddress")
    if not mac:
        return None
    if not MAC_RE.fullmatch(mac):
        iface.fail(f"{q(mac)} is not a MAC address (e.g. 02:00:00:00:00:01)", "macAddress")
    normal = mac.replace("-", ":").lower()
    if int(normal[:2], 16) & 1:
        iface.fail(f"{q(mac)} is a multicast address; a NIC needs a unicast one",
                   "macAddress")
    return normal


def _boot_or_rom(b: Build, el: ET.Element, iface: Node) -> None:
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
        node.fail(f"{q(text)} is not a PCI address (expected DDDD:BB:SS.F, e.g. "
                  f"0000:81:01.0)", key)
    domain, bus, slot, function = m.groups()
    if int(slot, 16) > 0x1F:
        node.fail(f"{q(text)}: slot must be at most 1f", key)
    return {"type": "pci", "domain": f"0x{domain.lower()}", "bus": f"0x{bus.lower()}",
            "slot": f"0x{slot.lower()}", "function": f"0x{function}"}
