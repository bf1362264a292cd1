"""A hook sidecar for the tests, run as its own process (`python -m tests.support.hook_sidecar`)
on a real UNIX socket, with launcher.hooks.sidecar's server: what it does to the domain is
chosen by flags, including the faults a real sidecar can have.

    --append TEXT      OnDefineDomain appends TEXT to <description> ("a,b" after two)
    --user-data TEXT   PreCloudInitIso appends TEXT as a line to the cloud-init user data
    --legacy-cloud-init  ... answering with cloudInitNoCloudSource only (older sidecars)
    --fault hang | die | invalid-xml | rename | no-xml   in OnDefineDomain
    --fault libvirt-invalid    well-formed, same name and UUID, but a domain libvirt refuses
    --fault shutdown-hang                                in Shutdown
    --announce V       list V in Info (repeatable) instead of the served versions
    --delay-start S    create the socket only after S seconds
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import xml.etree.ElementTree as ET
from typing import Any

from launcher.hooks import sidecar as lib
from launcher.logs import configure

ET.register_namespace("kubevirt", "http://kubevirt.io")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = lib.arg_parser("test hook sidecar")
    p.add_argument("--append")
    p.add_argument("--user-data")
    p.add_argument("--legacy-cloud-init", action="store_true")
    p.add_argument("--fault", choices=("hang", "die", "invalid-xml", "rename", "no-xml",
                                       "libvirt-invalid", "shutdown-hang"))
    p.add_argument("--announce", action="append")
    p.add_argument("--delay-start", type=float, default=0.0)
    return p.parse_args(argv)


def append_description(xml: bytes, text: str) -> bytes:
    root = ET.fromstring(xml)
    desc = root.find("description")
    if desc is None:
        desc = ET.Element("description")
        root.insert(2, desc)  # after <name> and <uuid>
    desc.text = f"{desc.text},{text}" if desc.text else text
    return ET.tostring(root, encoding="unicode").encode()


def main(argv: list[str] | None = None) -> int:
    ns = parse(argv)
    configure("test-hook-sidecar")
    name = ns.name or "test"

    async def on_define_domain(xml: bytes, vmi: bytes) -> bytes:
        json.loads(vmi)  # the launcher sends the VMI as JSON
        if ns.fault == "hang":
            await asyncio.sleep(3600)
        if ns.fault == "die":
            os._exit(3)
        if ns.fault == "invalid-xml":
            return b"<domain><name>broken"
        if ns.fault == "no-xml":
            return b""
        if ns.fault == "libvirt-invalid":
            root = ET.fromstring(xml)
            ET.SubElement(root.find("devices") or root, "disk", type="no-such-type")
            return ET.tostring(root, encoding="unicode").encode()
        if ns.fault == "rename":
            return xml.replace(b"<name>", b"<name>renamed-", 1)
        return append_description(xml, ns.append) if ns.append else xml

    async def pre_cloud_init_iso(source: bytes, vmi: bytes, data: bytes) -> tuple[bytes, bytes]:
        parsed: dict[str, Any] = json.loads(data)
        if ns.legacy_cloud_init:
            old = json.loads(source)
            old["userData"] = f"{old.get('userData', '')}{ns.user_data}\n"
            return json.dumps(old).encode(), b""
        parsed["UserData"] = f"{parsed['UserData']}{ns.user_data}\n"
        return b"", json.dumps(parsed).encode()

    async def hang() -> None:
        await asyncio.sleep(3600)

    side = lib.Sidecar(
        name=name, versions=lib.versions_from(ns),
        on_shutdown=hang if ns.fault == "shutdown-hang" else None,
        on_define_domain=on_define_domain,
        pre_cloud_init_iso=pre_cloud_init_iso if ns.user_data else None,
        priorities={"OnDefineDomain": ns.priority, "PreCloudInitIso": ns.priority,
                    "Shutdown": ns.priority})
    if ns.announce:
        side.versions = tuple(ns.announce)  # only the known ones among them are served

    async def run() -> None:
        if ns.delay_start:
            await asyncio.sleep(ns.delay_start)
        await lib.serve(side, lib.socket_path(ns.socket_dir, name))

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
