"""HotplugHostDevices: the SR-IOV host devices the VMI lists, attached to the running
domain, as KubeVirt's hotPlugHostDevices (virtwrap/manager.go,
device/hostdevice/sriov/hostdev.go).

- The SR-IOV interfaces are the VMI's interfaces with the sriov binding whose status says
  Multus reports them (status.interfaces[].infoSource holds "multus-status").
- Their PCI addresses come from the pod's network-info downward API file
  (/etc/podinfo/network-info: {"interfaces": [{"network": NAME, "deviceInfo": {"pci":
  {"pci-address": ...}}}]}); KubeVirt polls it up to 1 s until it is not empty.
- Each one not in the domain yet (by alias "ua-sriov-<name>") is attached as a PCI
  <hostdev> (managed='no', the guest PCI address and boot order from the interface; the
  converter's launcher.converter.network.sriov_hostdev), LIVE and CONFIG. At a start the
  same addresses go to the converter (`addresses`).
Beyond KubeVirt: its rpc answers at once and logs a failure; here the checks run before
the answer, so virt-handler learns which device is missing: a network without an address
in network-info, an address that is malformed, or a device that is not present in the pod
(/sys/bus/pci/devices/<address>). Nothing is attached unless every device checks out.
"""

from __future__ import annotations

import json
import os
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from launcher.converter.network import SRIOV_ALIAS, sriov_hostdev

USER_ALIAS = "ua-"
MULTUS_STATUS = "multus-status"
PCI_DEVICES = "/sys/bus/pci/devices"
PCI_RE = re.compile(r"([0-9a-fA-F]{4}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])")
NETWORK_INFO_WAIT_S = 1.0


class HostDeviceError(Exception):
    """A host device that cannot be attached; the message names it."""


@dataclass(frozen=True)
class HostDevice:
    name: str  # the VMI interface
    pci: str  # host PCI address, 0000:81:00.2
    xml: str


def _obj(doc: Any, key: str) -> dict[str, Any]:
    value = doc.get(key) if isinstance(doc, Mapping) else None
    return value if isinstance(value, dict) else {}


def sriov_interfaces(vmi: Mapping[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(index, interface) of the SR-IOV interfaces Multus reports for the pod."""
    devices = _obj(_obj(_obj(vmi, "spec"), "domain"), "devices")
    reported = set()
    for entry in _obj(vmi, "status").get("interfaces") or ():
        if isinstance(entry, dict) and MULTUS_STATUS in str(entry.get("infoSource", "")):
            reported.add(entry.get("name"))
    found: list[tuple[int, dict[str, Any]]] = []
    for i, iface in enumerate(devices.get("interfaces") or ()):
        if isinstance(iface, dict) and isinstance(iface.get("sriov"), dict) \
                and iface.get("name") in reported:
            found.append((i, iface))
    return found


def read_network_info(path: str, wait_s: float = NETWORK_INFO_WAIT_S) -> dict[str, str]:
    """network name -> PCI address from the network-info file, polled until not empty."""
    deadline = time.monotonic() + wait_s
    data = b""
    while True:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        if data.strip() or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if not data.strip():
        raise HostDeviceError(f"the pod's network-info file {path} is missing or empty after "
                              f"{wait_s:g} s: no SR-IOV network to PCI address mapping")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise HostDeviceError(f"{path}: not JSON ({exc})") from None
    mapping = {}
    for entry in doc.get("interfaces") or () if isinstance(doc, dict) else ():
        if not isinstance(entry, dict):
            continue
        info = entry.get("deviceInfo")
        pci = info.get("pci") if isinstance(info, dict) else None
        address = pci.get("pci-address") if isinstance(pci, dict) else None
        if isinstance(entry.get("network"), str) and isinstance(address, str) and address:
            mapping[entry["network"]] = address
    return mapping


def attached_aliases(live_xml: str) -> set[str]:
    return {alias.get("name", "") for alias in
            ET.fromstring(live_xml).iterfind("devices/hostdev/alias")}


def addresses(vmi: Mapping[str, Any], network_info: str, *,
              only: frozenset[str] | None = None, pci_devices: str = PCI_DEVICES,
              wait_s: float = NETWORK_INFO_WAIT_S) -> dict[str, str]:
    """interface name -> host PCI address of the VF, for the SR-IOV interfaces Multus
    reports (those in `only`, when given), each checked to be in the pod. Raises
    HostDeviceError naming the interface (and its spec path) that cannot have one."""
    wanted = [(i, iface) for i, iface in sriov_interfaces(vmi)
              if only is None or str(iface["name"]) in only]
    if not wanted:
        return {}
    mapping = read_network_info(network_info, wait_s)
    found = {}
    for i, iface in wanted:
        name = str(iface["name"])
        where = f"spec.domain.devices.interfaces[{i}] ({name})"
        address = mapping.get(name)
        if address is None:
            raise HostDeviceError(f"{where}: PCI address for SR-IOV network {name!r} not "
                                  f"found in {network_info}")
        if PCI_RE.fullmatch(address) is None:
            raise HostDeviceError(f"{where}: PCI address {address!r} in {network_info} is "
                                  "not of the form 0000:00:00.0")
        if not os.path.exists(os.path.join(pci_devices, address.lower())):
            raise HostDeviceError(f"{where}: PCI device {address} is not present in the pod "
                                  f"({os.path.join(pci_devices, address.lower())} does not "
                                  "exist)")
        found[name] = address
    return found


def to_attach(vmi: Mapping[str, Any], live_xml: str, network_info: str, *,
              pci_devices: str = PCI_DEVICES,
              wait_s: float = NETWORK_INFO_WAIT_S) -> list[HostDevice]:
    """The SR-IOV host devices the domain lacks, checked (see `addresses`)."""
    attached = attached_aliases(live_xml)
    ifaces = {str(iface["name"]): iface for _, iface in sriov_interfaces(vmi)}
    missing = frozenset(name for name in ifaces
                        if USER_ALIAS + SRIOV_ALIAS + name not in attached)
    if not missing:
        return []
    found = addresses(vmi, network_info, only=missing, pci_devices=pci_devices,
                      wait_s=wait_s)
    return [HostDevice(name, pci, _hostdev_xml(name, pci, ifaces[name]))
            for name, pci in found.items()]


def _hostdev_xml(name: str, pci: str, iface: Mapping[str, Any]) -> str:
    guest = iface.get("pciAddress")
    guest_pci = None
    if isinstance(guest, str) and (g := PCI_RE.fullmatch(guest)) is not None:
        gd, gb, gs, gf = (x.lower() for x in g.groups())
        guest_pci = {"type": "pci", "domain": f"0x{gd}", "bus": f"0x{gb}",
                     "slot": f"0x{gs}", "function": f"0x{gf}"}
    boot = iface.get("bootOrder")
    order = boot if isinstance(boot, int) and boot > 0 else None
    return ET.tostring(sriov_hostdev(name, pci, guest_pci, order), encoding="unicode")
