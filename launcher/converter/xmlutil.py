"""Small helpers the converter's builders share: element building, XML-safe text reads,
the guest architecture."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

from launcher.converter.context import Context
from launcher.converter.spec import Node

INT64 = 2**63 - 1
UINT32 = 2**32 - 1
# XML 1.0's characters: anything else makes the document unparsable.
XML_CHARS = re.compile("[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*")
ONE_LINE = re.compile("[^\n\r]+")


def q(value: object) -> str:
    return json.dumps(value)


def sub(parent: ET.Element, tag: str, content: str | None = None,
        **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if content is not None:
        el.text = content
    return el


def on_off(value: bool | None) -> str:
    return "on" if value else "off"


def yes_no(value: bool | None) -> str:
    return "yes" if value else "no"


def text(node: Node, key: str, pattern: re.Pattern[str] | None = None,
         expected: str = "") -> str | None:
    """A string the XML will carry: only XML characters, and matching `pattern` when not
    empty ("" is Go's unset)."""
    value = node.str(key)
    if not value:
        return value
    if XML_CHARS.fullmatch(value) is None or (
            pattern is not None and pattern.fullmatch(value) is None):
        node.fail(f"{q(value)} is not valid" + (f" ({expected})" if expected else ""), key)
    return value


def arch(ctx: Context) -> str:
    """libvirt's name for the guest architecture (KubeVirt and Go say arm64)."""
    return "aarch64" if ctx.opts.arch == "arm64" else ctx.opts.arch


def is_arm(ctx: Context) -> bool:
    return arch(ctx) == "aarch64"


def is_x86(ctx: Context) -> bool:
    return ctx.opts.arch == "x86_64"


def human(size: int) -> str:
    for suffix, unit in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)

