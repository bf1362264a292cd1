"""Device hotplug on a running domain: what a SyncVirtualMachine attaches, detaches and
updates live, as KubeVirt's syncDisks and network.Sync do it (virtwrap/manager.go,
virtwrap/network/nichotplug.go).

Disks, keyed by target device as KubeVirt's getAttachedDisks / getDetachedDisks:
- A hotplug disk is one whose source lies in the hotplug disk directory, where virt-handler
  mounts hotplug volumes (<hotplug-disks>/<volume>.img, or the block device
  <hotplug-disks>/<volume>). Only those, on bus virtio or scsi, are attached and detached
  live; any other disk change takes effect at the next start.
- Attach once the source is ready (KubeVirt's checkIfDiskReadyToUse: it exists and opens
  read-write, a block device read-only); not ready yet: skipped now ("waiting"), attached by
  a later Sync. Beyond KubeVirt: the source must resolve inside the hotplug directory (a
  symlink pointing out of it is refused and nothing is attached).
- A cdrom whose source, before or after, is a hotplug volume or empty has its media changed
  live (inject / eject, UpdateDeviceFlags), as KubeVirt's getUpdatedDisks.
Interfaces, keyed by alias as KubeVirt's network.Sync:
- attach what the new definition has and the domain lacks; one backed by a tap that
  virt-handler creates (type ethernet, managed='no') once that tap exists in the pod, as a
  disk waits for its source; detach what the domain has and the definition lacks (a VMI
  interface set to state "absent", or removed); link state changes are updated live.

Every change goes to libvirt alone and LIVE only; the persistent definition is the
Syncer's define of the new XML, adjusted here (`persistent_xml`) so that it holds what
runs: a device not attached (waiting, refused, failed) is left out, one whose detach
failed is kept. A failing change stops the run there and names the device; the changes
before it stay applied (each is atomic in libvirt) and are reported with it. A detach the
guest does not complete (PCI devices need its cooperation; libvirt waits 5 s, then answers
while the unplug goes on) is reported as requested, not as done; libvirt's device-removed
or device-removal-failed event follows through the notify stream.
"""

from __future__ import annotations

import copy
import os
import stat
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import libvirt

from launcher.libvirt.errors import libvirt_message
from launcher.vm.disks import DiskError, confined
from launcher.vm.xmldiff import device_key

HOTPLUG_BUSES = ("virtio", "scsi", "")  # KubeVirt: no bus given counts as hot-pluggable
SYS_NET = "/sys/class/net"


@dataclass(frozen=True)
class Change:
    """One device change: `xml` is what goes to libvirt."""

    action: str  # attach | detach | update | link
    kind: str  # disk | interface
    key: str  # target device (disks) or alias (interfaces)
    label: str  # how messages name it, e.g. "disk sda (volume hp1)"
    xml: str


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...] = ()
    waiting: tuple[str, ...] = ()  # labels of devices whose source is not ready yet
    refused: tuple[str, ...] = ()  # "<label>: <why>" for devices that must not attach
    skipped: frozenset[tuple[str, str]] = frozenset()  # (kind, key) of waiting and refused


@dataclass
class Outcome:
    applied: list[str] = field(default_factory=list)  # "attached disk sda (volume hp1)"
    pending: list[str] = field(default_factory=list)  # detaches the guest has not completed
    failed: Change | None = None
    error: str = ""
    not_applied: list[Change] = field(default_factory=list)  # failed and everything after


# --- reading domain XML ---------------------------------------------------------------------
def _devices(root: ET.Element, tag: str) -> list[ET.Element]:
    return root.findall(f"devices/{tag}")


def _alias(dev: ET.Element) -> str:
    alias = dev.find("alias")
    return alias.get("name", "") if alias is not None else ""


def _target_dev(disk: ET.Element) -> str:
    target = disk.find("target")
    return target.get("dev", "") if target is not None else ""


def _bus(disk: ET.Element) -> str:
    target = disk.find("target")
    return target.get("bus", "") if target is not None else ""


def disk_source(disk: ET.Element) -> str:
    source = disk.find("source")
    if source is None:
        return ""
    return source.get("file") or source.get("dev") or ""


def _under(path: str, directory: str) -> bool:
    if not path or not directory:
        return False
    path, directory = os.path.abspath(path), os.path.abspath(directory)
    return os.path.commonpath([path, directory]) == directory


def is_hotplug_disk(disk: ET.Element, hotplug_dir: str) -> bool:
    return _under(disk_source(disk), hotplug_dir)


def _volume(disk: ET.Element) -> str:
    alias = _alias(disk)
    return alias[3:] if alias.startswith("ua-") else alias


def _disk_label(disk: ET.Element) -> str:
    volume = _volume(disk)
    return f"disk {_target_dev(disk)}" + (f" (volume {volume})" if volume else "")


def _iface_label(iface: ET.Element) -> str:
    alias = _alias(iface)
    return f"interface {alias[3:] if alias.startswith('ua-') else alias}"


def _link_state(iface: ET.Element) -> str:
    link = iface.find("link")
    return link.get("state", "up") if link is not None else "up"


def _text(elem: ET.Element) -> str:
    return ET.tostring(elem, encoding="unicode")


# --- readiness ------------------------------------------------------------------------------
def disk_ready(path: str, hotplug_dir: str, volume: str) -> bool:
    """KubeVirt's checkIfDiskReadyToUse, confined to the hotplug directory. False: not there
    yet; raises DiskError for a source that must never be attached."""
    confined(volume, path, [hotplug_dir])
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return False
    flags = os.O_RDONLY if stat.S_ISBLK(mode) else os.O_RDWR
    if not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
        raise DiskError(volume, f"{path} is not a regular file or block device")
    try:
        fd = os.open(path, flags | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False  # KubeVirt: not openable yet is not ready, not an error
    os.close(fd)
    return True


def tap_ready(iface: ET.Element, net_dir: str = SYS_NET) -> bool:
    """A tap-backed interface (type ethernet, managed='no') needs the tap virt-handler
    creates in the pod; every other type is ready."""
    target = iface.find("target")
    if iface.get("type") != "ethernet" or target is None or target.get("managed") != "no":
        return True
    dev = target.get("dev", "")
    return bool(dev) and os.path.exists(os.path.join(net_dir, dev))


# --- the plan -------------------------------------------------------------------------------
def stable_targets(new_xml: str, live_xml: str) -> str:
    """`new_xml` with each disk that runs already (same alias) on the target device it runs
    on, and a disk that does not run yet on a device name no running disk uses. KubeVirt
    keeps targets stable through status.volumeStatus[].target, which virt-handler copies
    from the domain; a VMI without them (or a stale one) renumbers the disks after a
    removed one, and keyed by target device the plan would then detach the wrong disk."""
    new, live = ET.fromstring(new_xml), ET.fromstring(live_xml)
    running = {_alias(d): _target_dev(d) for d in _devices(live, "disk") if _alias(d)}
    owner = {dev: alias for alias, dev in running.items()}
    changed = False
    disks = _devices(new, "disk")
    for disk in disks:
        dev = running.get(_alias(disk))
        target = disk.find("target")
        if dev and target is not None and target.get("dev") != dev:
            target.set("dev", dev)
            changed = True
    used = {_target_dev(d) for d in disks} | set(owner)
    for disk in disks:
        dev, target = _target_dev(disk), disk.find("target")
        holder = owner.get(dev)
        if target is None or holder is None or holder == _alias(disk):
            continue
        prefix = dev[:2]  # sd, vd, hd: the bus prefix KubeVirt names by
        free = next(name for i in range(26 * 27) if (name := _device_name(prefix, i))
                    not in used)
        target.set("dev", free)
        used.add(free)
        changed = True
    return ET.tostring(new, encoding="unicode") if changed else new_xml


def _device_name(prefix: str, index: int) -> str:
    """Linux's (and KubeVirt's formatDeviceName) disk names: sda .. sdz, sdaa, ..."""
    name = ""
    while index >= 0:
        name = chr(ord("a") + index % 26) + name
        index = index // 26 - 1
    return prefix + name


def plan(live_xml: str, new_xml: str, hotplug_dir: str, *,
         ready: Callable[[str, str, str], bool] = disk_ready,
         iface_ready: Callable[[ET.Element], bool] = tap_ready) -> Plan:
    """The device changes that bring the running domain (`live_xml`, libvirt's live XML) to
    `new_xml` (the new definition)."""
    live, new = ET.fromstring(live_xml), ET.fromstring(new_xml)
    changes: list[Change] = []
    waiting: list[str] = []
    refused: list[str] = []
    skipped: set[tuple[str, str]] = set()

    def usable(dev: str, disk: ET.Element) -> bool:
        """The disk's source is ready; else it is recorded as waiting or refused."""
        try:
            if ready(disk_source(disk), hotplug_dir, _volume(disk)):
                return True
            waiting.append(_disk_label(disk))
        except DiskError as exc:
            refused.append(f"{_disk_label(disk)}: {exc}")
        skipped.add(("disk", dev))
        return False

    live_disks = {_target_dev(d): d for d in _devices(live, "disk")}
    new_disks = {_target_dev(d): d for d in _devices(new, "disk")}
    for dev, disk in live_disks.items():
        if (dev not in new_disks and is_hotplug_disk(disk, hotplug_dir)
                and _bus(disk) in HOTPLUG_BUSES and disk.get("device") != "cdrom"):
            changes.append(Change("detach", "disk", dev, _disk_label(disk), _text(disk)))
    for dev, disk in new_disks.items():
        if (dev in live_disks or not is_hotplug_disk(disk, hotplug_dir)
                or _bus(disk) not in HOTPLUG_BUSES or disk.get("device") == "cdrom"):
            continue
        if not usable(dev, disk):
            continue
        changes.append(Change("attach", "disk", dev, _disk_label(disk), _text(disk)))
    for dev, old in live_disks.items():
        update = _media_change(old, new_disks.get(dev), hotplug_dir)
        if update is None:
            continue
        if disk_source(update) and not usable(dev, update):
            continue
        changes.append(Change("update", "disk", dev, _disk_label(update), _text(update)))

    live_ifaces = {_alias(i): i for i in _devices(live, "interface") if _alias(i)}
    new_ifaces = {_alias(i): i for i in _devices(new, "interface") if _alias(i)}
    for alias, iface in live_ifaces.items():
        if alias not in new_ifaces and alias.startswith("ua-"):
            changes.append(Change("detach", "interface", alias, _iface_label(iface),
                                  _text(iface)))
    for alias, iface in new_ifaces.items():
        running = live_ifaces.get(alias)
        if running is None:
            if iface_ready(iface):
                changes.append(Change("attach", "interface", alias, _iface_label(iface),
                                      _text(iface)))
            else:
                waiting.append(_iface_label(iface))
                skipped.add(("interface", alias))
        elif _link_state(running) != _link_state(iface):
            updated = copy.deepcopy(running)
            for link in updated.findall("link"):
                updated.remove(link)
            ET.SubElement(updated, "link", state=_link_state(iface))
            changes.append(Change("link", "interface", alias, _iface_label(iface),
                                  _text(updated)))
    return Plan(tuple(changes), tuple(waiting), tuple(refused), frozenset(skipped))


def _media_change(old: ET.Element, new: ET.Element | None,
                  hotplug_dir: str) -> ET.Element | None:
    """KubeVirt's getUpdatedDisks: the running cdrom with the new media, or None."""
    if old.get("device") != "cdrom" or (new is not None and new.get("device") != "cdrom"):
        return None
    old_source, new_source = disk_source(old), disk_source(new) if new is not None else ""

    def managed(source: str) -> bool:
        return not source or _under(source, hotplug_dir)

    if not managed(old_source) or (new is not None and not managed(new_source)):
        return None
    if old_source == new_source:
        return None
    updated = copy.deepcopy(old)
    for source in updated.findall("source"):
        updated.remove(source)
    if new_source:
        assert new is not None
        new_elem = new.find("source")
        assert new_elem is not None
        updated.insert(0, copy.deepcopy(new_elem))
        updated.set("type", "file" if new_elem.get("file") else "block")
    driver = updated.find("driver")
    if driver is None:
        driver = ET.SubElement(updated, "driver", name="qemu")
    driver.set("type", "raw")
    return updated


# --- applying -------------------------------------------------------------------------------
def apply(dom: Any, changes: Iterable[Change],
          still_attached: Callable[[Change], bool]) -> Outcome:
    """Send each change to libvirt, LIVE only, in order; stop at the first failure."""
    out = Outcome()
    todo = list(changes)
    for i, change in enumerate(todo):
        try:
            if change.action == "attach":
                dom.attachDeviceFlags(change.xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                out.applied.append(f"attached {change.label}")
            elif change.action == "detach":
                dom.detachDeviceFlags(change.xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                if still_attached(change):
                    out.pending.append(change.label)
                else:
                    out.applied.append(f"detached {change.label}")
            else:
                dom.updateDeviceFlags(change.xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                what = ("link state of" if change.action == "link" else "media of")
                out.applied.append(f"updated {what} {change.label}")
        except libvirt.libvirtError as exc:
            if change.action == "detach" and _unplug_in_progress(exc):
                out.pending.append(change.label)  # an earlier Sync's request goes on
                continue
            out.failed, out.error = change, libvirt_message(exc)
            out.not_applied = todo[i:]
            break
    return out


def _unplug_in_progress(exc: libvirt.libvirtError) -> bool:
    """QEMU refuses a second device_del of a device whose unplug the guest has not
    completed; libvirt passes its words on."""
    return "in the process of unplug" in (exc.get_error_message() or "")


def device_present(live_xml: str, change: Change) -> bool:
    root = ET.fromstring(live_xml)
    if change.kind == "disk":
        return any(_target_dev(d) == change.key for d in _devices(root, "disk"))
    return any(_alias(i) == change.key for i in _devices(root, "interface"))


def persistent_xml(new_xml: str, live_xml: str, the_plan: Plan, outcome: Outcome,
                   hotplug_dir: str) -> str:
    """`new_xml` adjusted to what runs: a hotplug disk or interface that is not attached
    (waiting, refused, failed) is left out; a device whose detach or media change did not
    happen is kept as it runs."""
    root = ET.fromstring(new_xml)
    live = ET.fromstring(live_xml)
    devices = root.find("devices")
    if devices is None:
        return new_xml
    live_devices = live.find("devices")
    live_keys = {device_key(d) for d in (live_devices if live_devices is not None else [])}
    unapplied = {(c.kind, c.key): c for c in outcome.not_applied}
    as_running: list[tuple[str, str]] = [k for k, c in unapplied.items()
                                         if c.action in ("detach", "update")]
    for disk in list(devices.findall("disk")):
        key = ("disk", _target_dev(disk))
        if f"disk:{key[1]}" not in live_keys:
            if is_hotplug_disk(disk, hotplug_dir) and (key in the_plan.skipped
                                                       or key in unapplied):
                devices.remove(disk)
        elif disk.get("device") == "cdrom" and (key in the_plan.skipped or key in unapplied):
            devices.remove(disk)
            as_running.append(key)
    for iface in list(devices.findall("interface")):
        key = ("interface", _alias(iface))
        if f"interface:{key[1]}" not in live_keys and (key in the_plan.skipped
                                                       or key in unapplied):
            devices.remove(iface)
    for kind, dev_key in dict.fromkeys(as_running):
        if any(device_key(d) == f"{kind}:{dev_key}" for d in devices):
            devices.remove(next(d for d in devices if device_key(d) == f"{kind}:{dev_key}"))
        elem = ET.fromstring(_live_device(live, kind, dev_key))
        for address in elem.findall("address"):
            elem.remove(address)  # the persistent definition gets its own
        devices.append(elem)
    return ET.tostring(root, encoding="unicode")


def _live_device(live: ET.Element, kind: str, key: str) -> str:
    for disk in _devices(live, kind):
        if (_target_dev(disk) if kind == "disk" else _alias(disk)) == key:
            return _text(disk)
    raise KeyError(key)


def managed_keys(*xmls: str, hotplug_dir: str) -> frozenset[str]:
    """The devices hotplug owns, as xmldiff keys ("disk:sda", "interface:ua-net1"): hotplug
    disks and cdroms with hotplug or no media, and interfaces present in only some of
    `xmls`. Their differences are applied live, so they never call for a restart."""
    keys: set[str] = set()
    aliases: list[set[str]] = []
    for xml in xmls:
        root = ET.fromstring(xml)
        for disk in _devices(root, "disk"):
            source = disk_source(disk)
            if _under(source, hotplug_dir) or (disk.get("device") == "cdrom" and not source):
                keys.add(f"disk:{_target_dev(disk)}")
        aliases.append({_alias(i) for i in _devices(root, "interface")})
    if aliases:
        everywhere = set.intersection(*aliases)
        keys.update(f"interface:{a}" for a in set.union(*aliases) - everywhere)
    return frozenset(keys)
