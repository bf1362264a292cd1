"""What the <devices> builders share: the element being filled, ua- alias bookkeeping and
the field readers KubeVirt's zero values need."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from launcher.converter.context import Context
from launcher.converter.errors import ConversionError
from launcher.converter.spec import Node
from launcher.converter.xmlutil import q

# libvirt's aliasName pattern: the device name becomes part of the ua- alias.
NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass
class Build:
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
            raise ConversionError(path, f"{q(name)} gives alias {q(alias)}, already used by "
                                        f"{other}")
        self.aliases[alias] = path
        ET.SubElement(device, "alias", name=alias)

    @property
    def arm(self) -> bool:
        return self.ctx.opts.arch in ("aarch64", "arm64")


def choice(node: Node, key: str, default: str | None, choices: tuple[str, ...]) -> str:
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


def device_name(node: Node) -> str:
    name = node.req_str("name", nonempty=True)
    if not NAME_RE.fullmatch(name):
        node.fail(f'{q(name)} may contain only letters, digits, "_", "-" and "."', "name")
    return name


def absent(node: Node, key: str) -> bool:
    """Unset, or an empty list (Go's nil slice). An empty object is set: `downwardMetrics:
    {}` asks for the device."""
    return node.child(key).value in (None, [])
