"""What a new definition changes in a running domain: the top-level parts (devices by kind)
that differ from what it was started with, and the parts applied live."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET

KUBEVIRT_NS = "http://kubevirt.io"
# The one top-level part applied live besides the balloon period; never a restart reason.
LIVE_PARTS = ("metadata",)


def canonical(elem: ET.Element) -> str:
    elem = copy.deepcopy(elem)
    for node in elem.iter():
        if node.text is not None and not node.text.strip():
            node.text = None
        node.tail = None
    return ET.tostring(elem, encoding="unicode")


def _without_stats(balloon: ET.Element) -> ET.Element:
    balloon = copy.deepcopy(balloon)
    for stats in balloon.findall("stats"):
        balloon.remove(stats)
    return balloon


def _without_order(vcpus: ET.Element) -> ET.Element:
    vcpus = copy.deepcopy(vcpus)
    for vcpu in vcpus:
        vcpu.attrib.pop("order", None)
        vcpu.attrib.pop("hotpluggable", None)
    return vcpus


def _without_link(iface: ET.Element) -> ET.Element:
    iface = copy.deepcopy(iface)
    for link in iface.findall("link"):
        iface.remove(link)
    return iface


def device_key(dev: ET.Element) -> str:
    """How launcher.vm.hotplug names a device it manages ("disk:sda", "interface:ua-x")."""
    if dev.tag == "disk":
        target = dev.find("target")
        return f"disk:{target.get('dev', '') if target is not None else ''}"
    if dev.tag == "interface":
        alias = dev.find("alias")
        return f"interface:{alias.get('name', '') if alias is not None else ''}"
    return ""


def _parts(xml: str, live_managed: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    root = ET.fromstring(xml)
    parts: dict[str, list[str]] = {}
    for attr, value in sorted(root.attrib.items()):
        if attr != "id":  # the running instance's number, not configuration
            parts[f"domain@{attr}"] = [value]
    for child in root:
        if child.tag in LIVE_PARTS:
            continue
        if child.tag != "devices":
            # <vcpus>: which vCPUs are enabled is what counts. order (the order they were
            # plugged in) and hotpluggable (libvirt turns it off for a vCPU enabled in the
            # configuration by SetVcpusFlags) follow from how the count was reached.
            kept = _without_order(child) if child.tag == "vcpus" else child
            parts.setdefault(child.tag, []).append(canonical(kept))
            continue
        for dev in child:
            if device_key(dev) in live_managed:
                continue
            # The balloon's statistics period and an interface's link state change live.
            kept = (_without_stats(dev) if dev.tag == "memballoon"
                    else _without_link(dev) if dev.tag == "interface" else dev)
            parts.setdefault(f"devices/{dev.tag}", []).append(canonical(kept))
    return parts


def restart_needed(started_with: str, new: str,
                   live_managed: frozenset[str] = frozenset()) -> list[str]:
    """The top-level parts (devices by kind) in which `new` differs from the definition
    the running domain was started with, e.g. ["devices/disk", "memory"]. Both are
    libvirt's own rendering (XMLDesc of the inactive definition), so equal input gives
    equal text. `live_managed`: devices hotplug keeps in line live (launcher.vm.hotplug's
    managed_keys), left out of the comparison."""
    old_parts, new_parts = _parts(started_with, live_managed), _parts(new, live_managed)
    return sorted(k for k in old_parts.keys() | new_parts.keys()
                  if old_parts.get(k) != new_parts.get(k))


def kubevirt_metadata(xml: str) -> ET.Element | None:
    return ET.fromstring(xml).find(f"metadata/{{{KUBEVIRT_NS}}}kubevirt")


def balloon_period(xml: str) -> int | None:
    balloon = ET.fromstring(xml).find("devices/memballoon")
    if balloon is None or balloon.get("model") == "none":
        return None
    stats = balloon.find("stats")
    if stats is None:
        return 0
    try:
        return int(stats.get("period", "0"))
    except ValueError:
        return None


def keep_generated_macs(new: str, current: str) -> str:
    """`new` with each interface that has no <mac> given the MAC of the interface with the
    same alias in `current`. libvirt generates a MAC for such an interface at every define:
    without this each re-sync of a running domain would save a different MAC (and report a
    restart for it), though the guest keeps the one it booted with."""
    root = ET.fromstring(new)
    missing = [i for i in root.iterfind("devices/interface") if i.find("mac") is None]
    if not missing or not current:
        return new
    macs = {}
    for iface in ET.fromstring(current).iterfind("devices/interface"):
        alias, mac = iface.find("alias"), iface.find("mac")
        if alias is not None and mac is not None and alias.get("name"):
            macs[alias.get("name")] = mac.get("address")
    changed = False
    for iface in missing:
        alias = iface.find("alias")
        address = macs.get(alias.get("name") if alias is not None else None)
        if address:
            iface.insert(0, ET.Element("mac", address=address))
            changed = True
    return ET.tostring(root, encoding="unicode") if changed else new


def _address_key(dev: ET.Element, ordinal: int) -> tuple[str, ...]:
    """How a device of a new definition is found in the running domain: user aliases
    (ua-*) for what the converter names, (type, index) for controllers, else the tag and its
    position among the unnamed devices of that tag (memballoon, rng, serial, ...)."""
    alias = dev.find("alias")
    name = alias.get("name", "") if alias is not None else ""
    if name.startswith("ua-"):
        return (dev.tag, name)
    if dev.tag == "controller":
        return (dev.tag, dev.get("type", ""), dev.get("index", ""))
    return (dev.tag, "#", str(ordinal))


def keep_addresses(new: str, live: str) -> str:
    """`new` with each device that has no <address> given the address it runs at. Without
    addresses libvirt assigns them at every define in document order: a device hot-plugged
    (or a reordered one) would shift every later device's PCI slot in the persistent
    definition, so a restart would move them in the guest, and each re-sync would report
    them as changed."""
    root, running = ET.fromstring(new), ET.fromstring(live)
    devices, live_devices = root.find("devices"), running.find("devices")
    if devices is None or live_devices is None:
        return new

    def indexed(parent: ET.Element) -> dict[tuple[str, ...], ET.Element]:
        seen: dict[str, int] = {}
        out = {}
        for dev in parent:
            key = _address_key(dev, seen.get(dev.tag, 0))
            if key[1] == "#":
                seen[dev.tag] = seen.get(dev.tag, 0) + 1
            out[key] = dev
        return out

    def shape(dev: ET.Element) -> tuple[str | None, ...]:
        """What decides the kind of address a device takes: a disk moved to another bus or
        a NIC of another model must get a new one (a PCI address on a SCSI disk is refused)."""
        target, model = dev.find("target"), dev.find("model")
        return (dev.get("model"), target.get("bus") if target is not None else None,
                model.get("type") if model is not None else None)

    live_by_key = indexed(live_devices)
    changed = False
    for key, dev in indexed(devices).items():
        source = live_by_key.get(key)
        if source is None:
            continue
        address = source.find("address")
        if address is not None and dev.find("address") is None and shape(dev) == shape(
                source):
            dev.append(copy.deepcopy(address))
            changed = True
    return ET.tostring(root, encoding="unicode") if changed else new


def keep_root_ports(new: str, live: str) -> str:
    """`new` with the running domain's pcie-root-port controllers instead of its own. The
    converter sizes the spare ports for hotplug from the VMI's interfaces at define time
    (KubeVirt's placeholders); a NIC hot-plugged later must not change the slot layout of
    the persistent definition, or a restart would move devices in the guest."""
    root, running = ET.fromstring(new), ET.fromstring(live)
    devices, live_devices = root.find("devices"), running.find("devices")
    if devices is None or live_devices is None:
        return new
    ports = [c for c in live_devices.iterfind("controller")
             if c.get("model") == "pcie-root-port"]
    mine = [c for c in devices.iterfind("controller") if c.get("model") == "pcie-root-port"]
    if not ports or [canonical(c) for c in mine] == [canonical(c) for c in ports]:
        return new
    at = list(devices).index(mine[0]) if mine else len(devices)
    for c in mine:
        devices.remove(c)
    for i, running_port in enumerate(ports):
        port = copy.deepcopy(running_port)
        for alias in port.findall("alias"):
            port.remove(alias)  # libvirt's own name for it, not configuration
        devices.insert(at + i, port)
    return ET.tostring(root, encoding="unicode")


def with_parts(xml: str, source: str, tags: tuple[str, ...]) -> str:
    """`xml` with its top-level `tags` elements taken from `source` (what a live change
    made of them), so a later comparison sees them as running."""
    root, src = ET.fromstring(xml), ET.fromstring(source)
    for tag in tags:
        mine, theirs = root.find(tag), src.find(tag)
        at = list(root).index(mine) if mine is not None else len(root)
        if mine is not None:
            root.remove(mine)
        if theirs is not None:
            root.insert(at, copy.deepcopy(theirs))
    return ET.tostring(root, encoding="unicode")


def with_virtio_mem_requested(xml: str, requested: int) -> str:
    """`xml` with its virtio-mem device requesting `requested` bytes."""
    root = ET.fromstring(xml)
    target = next((d.find("target") for d in root.iterfind("devices/memory")
                   if d.get("model") == "virtio-mem"), None)
    if target is None:
        return xml
    for old in target.findall("requested"):
        target.remove(old)
    # As libvirt renders it (KiB), so the comparison with its own XML holds.
    ET.SubElement(target, "requested", unit="KiB").text = str(requested // 1024)
    return ET.tostring(root, encoding="unicode")
