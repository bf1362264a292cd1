"""convert(): a KubeVirt VirtualMachineInstance (decoded JSON/YAML) -> libvirt domain XML
plus the disk preparations the XML relies on. Pure: no I/O, no libvirt."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from launcher.converter import devices, machine, stratovirt
from launcher.converter.context import Context
from launcher.converter.errors import ConversionError
from launcher.converter.options import ConvertOptions
from launcher.converter.plan import Conversion
from launcher.converter.spec import Node, json_kind

KUBEVIRT_NS = "http://kubevirt.io"


def _metadata(vmi: Node) -> tuple[str, str, str]:
    meta = vmi.obj("metadata", required=True)
    name = meta.req_str("name", nonempty=True)
    namespace = meta.req_str("namespace", nonempty=True)
    uid = meta.str("uid", "") or ""
    for key, value in (("name", name), ("namespace", namespace)):
        # Kubernetes names are DNS labels/subdomains; "_" separates them in the domain name
        # and "/" would escape paths built from them.
        if "/" in value or "_" in value or value in (".", ".."):
            meta.fail(f"{value!r} is not a valid Kubernetes name".replace("'", '"'), key)
    if "/" in uid or uid in (".", ".."):
        meta.fail(f"{uid!r} is not a valid uid".replace("'", '"'), "uid")
    return name, namespace, uid


def convert(vmi: Mapping[str, Any], opts: ConvertOptions) -> Conversion:
    """The domain for `vmi`. Raises ConversionError naming the field for anything invalid
    or unsupported; never anything else for any JSON-shaped input."""
    if not isinstance(vmi, Mapping):
        raise ConversionError("", f"expected a VirtualMachineInstance object, got "
                                  f"{json_kind(vmi)}")
    root = Node(dict(vmi), "")
    kind = root.str("kind")
    if kind is not None and kind != "VirtualMachineInstance":
        root.fail(f'expected "VirtualMachineInstance", got "{kind}"', "kind")
    name, namespace, uid = _metadata(root)
    ctx = Context(vmi=root, opts=opts, name=name, namespace=namespace, uid=uid)
    if ctx.stratovirt:
        stratovirt.check(ctx)  # refuse what StratoVirt cannot do before building anything
    dom = ET.Element("domain")
    uuid = machine.build(ctx, dom)
    devices.build(ctx, dom)
    if ctx.stratovirt:
        stratovirt.adjust(ctx, dom)
    ET.indent(dom)
    xml = ET.tostring(dom, encoding="unicode")
    return Conversion(name=ctx.domain_name, uuid=uuid, xml=xml, preps=tuple(ctx.preps))
