"""Example hook sidecar: SMBIOS baseBoard fields from VMI annotations, as KubeVirt's
example sidecar (cmd/sidecars/smbios, cmd/example-hook-sidecar) does.

    smbios.vm.kubevirt.io/baseBoardManufacturer: "Acme"   -> <baseBoard><entry
    name='manufacturer'>Acme</entry>  (also baseBoardProduct, baseBoardVersion,
    baseBoardSerial, baseBoardAsset, baseBoardLocation)

and <os><smbios mode='sysinfo'/>, so QEMU passes them to the guest
(/sys/class/dmi/id/board_vendor). Serves v1alpha1..v1alpha3 on
<socket-dir>/<name>.sock (the sidecar container's /var/run/kubevirt-hooks):

    python -m hack.hooks.smbios [--socket-dir DIR] [--name smbios] [--version v1alpha3 ...]

Without any of the annotations the domain XML is returned unchanged.
"""

from __future__ import annotations

import asyncio
import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from launcher.hooks.sidecar import (
    HookFailed,
    Sidecar,
    arg_parser,
    serve,
    socket_path,
    versions_from,
)
from launcher.logs import configure

# The launcher's metadata keeps its usual prefix when the XML is written back.
ET.register_namespace("kubevirt", "http://kubevirt.io")

PREFIX = "smbios.vm.kubevirt.io/baseBoard"
FIELDS = {"Manufacturer": "manufacturer", "Product": "product", "Version": "version",
          "Serial": "serial", "Asset": "asset", "Location": "location"}
# libvirt's order of <sysinfo type='smbios'> children: baseBoard goes before these.
AFTER_BASEBOARD = ("chassis", "processor", "memory", "oemStrings")


def board_fields(vmi: Mapping[str, Any]) -> dict[str, str]:
    meta = vmi.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    if not isinstance(annotations, dict):
        return {}
    return {entry: str(annotations[PREFIX + suffix]) for suffix, entry in FIELDS.items()
            if PREFIX + suffix in annotations}


def set_base_board(domain_xml: bytes, fields: dict[str, str]) -> bytes:
    root = ET.fromstring(domain_xml)
    os_el = root.find("os")
    if os_el is None:
        os_el = ET.SubElement(root, "os")
    smbios = os_el.find("smbios")
    if smbios is None:
        smbios = ET.SubElement(os_el, "smbios")
    smbios.set("mode", "sysinfo")
    sysinfo = root.find("sysinfo[@type='smbios']")
    if sysinfo is None:
        sysinfo = ET.SubElement(root, "sysinfo", type="smbios")
    board = sysinfo.find("baseBoard")
    if board is None:
        board = ET.Element("baseBoard")
        later = [i for i, child in enumerate(sysinfo) if child.tag in AFTER_BASEBOARD]
        sysinfo.insert(later[0] if later else len(sysinfo), board)
    for name, value in fields.items():
        entry = board.find(f"entry[@name='{name}']")
        if entry is None:
            entry = ET.SubElement(board, "entry", name=name)
        entry.text = value
    return ET.tostring(root, encoding="unicode").encode()


async def on_define_domain(domain_xml: bytes, vmi_json: bytes) -> bytes:
    try:
        vmi = json.loads(vmi_json)
    except ValueError as exc:
        raise HookFailed(f"the VMI is not valid JSON: {exc}") from None
    fields = board_fields(vmi if isinstance(vmi, dict) else {})
    if not fields:
        return domain_xml
    try:
        return set_base_board(domain_xml, fields)
    except ET.ParseError as exc:
        raise HookFailed(f"the domain XML does not parse: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    ns = arg_parser("SMBIOS baseBoard hook sidecar").parse_args(argv)
    configure("smbios-hook-sidecar")
    name = ns.name or "smbios"
    sidecar = Sidecar(name=name, on_define_domain=on_define_domain,
                      versions=versions_from(ns),
                      priorities={"OnDefineDomain": ns.priority})
    asyncio.run(serve(sidecar, socket_path(ns.socket_dir, name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
