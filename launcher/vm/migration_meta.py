"""The migration metadata in the domain (KubeVirt's api.MigrationMetadata): the element
<kubevirt:migration> inside the domain's <kubevirt:kubevirt> metadata, which virt-handler
reads from the notify snapshots (Spec.Metadata.KubeVirt.Migration) to follow a migration
on both sides. Written live (and into the persistent definition) with setMetadata, the way
the launcher already keeps the uid and grace period there."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

import libvirt

from launcher.libvirt.domain import DomainAccess
from launcher.vm.xmldiff import KUBEVIRT_NS, kubevirt_metadata

Q = f"{{{KUBEVIRT_NS}}}"
PRE_COPY = "PreCopy"
POST_COPY = "PostCopy"
PAUSED = "Paused"  # KubeVirt's MigrationPaused: the guest paused so the migration completes
ABORTING = "Aborting"
ABORT_SUCCEEDED = "Succeeded"
ABORT_FAILED = "Failed"


def now() -> str:
    """metav1.Time as KubeVirt marshals it (RFC 3339, seconds, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class MigrationMeta:
    uid: str
    start_timestamp: str = ""
    end_timestamp: str = ""
    failed: bool = False
    failure_reason: str = ""
    abort_status: str = ""
    mode: str = PRE_COPY

    def with_(self, **changes: Any) -> MigrationMeta:
        return replace(self, **changes)

    @property
    def ended(self) -> bool:
        return bool(self.end_timestamp)


# (python field, XML element): KubeVirt's xml tags (the JSON: launcher.notify.domain_json)
_FIELDS = (("uid", "uid"), ("start_timestamp", "startTimestamp"),
           ("end_timestamp", "endTimestamp"), ("failed", "failed"),
           ("failure_reason", "failureReason"), ("abort_status", "abortStatus"),
           ("mode", "mode"))
assert {f.name for f in fields(MigrationMeta)} == {f[0] for f in _FIELDS}


def to_element(meta: MigrationMeta) -> ET.Element:
    el = ET.Element(f"{Q}migration")
    for attr, tag in _FIELDS:
        value = getattr(meta, attr)
        if value in ("", False):
            continue  # omitempty
        ET.SubElement(el, f"{Q}{tag}").text = "true" if value is True else str(value)
    return el


def from_element(el: ET.Element | None) -> MigrationMeta | None:
    if el is None:
        return None
    values: dict[str, Any] = {}
    for attr, tag in _FIELDS:
        child = el.find(f"{Q}{tag}")
        text = (child.text or "").strip() if child is not None else ""
        values[attr] = text == "true" if attr == "failed" else text
    return MigrationMeta(**values)


def read(xml: str) -> MigrationMeta | None:
    meta = kubevirt_metadata(xml)
    return None if meta is None else from_element(meta.find(f"{Q}migration"))


def patched(xml: str, meta: MigrationMeta) -> str:
    """The domain's <kubevirt> metadata element with `meta` as its migration, as the text
    setMetadata takes (the namespace as the default one: libvirt adds the prefix)."""
    kv = kubevirt_metadata(xml)
    if kv is None:
        kv = ET.Element(f"{Q}kubevirt")
    for old in kv.findall(f"{Q}migration"):
        kv.remove(old)
    kv.append(to_element(meta))
    return ET.tostring(kv, encoding="unicode", default_namespace=KUBEVIRT_NS)


async def write(access: DomainAccess, meta: MigrationMeta) -> None:
    """Store `meta` in the domain: live when it runs, and in the persistent definition."""
    def run(dom: Any) -> None:
        active = bool(dom.isActive())
        persistent = bool(dom.isPersistent())
        xml = dom.XMLDesc(0 if active else libvirt.VIR_DOMAIN_XML_INACTIVE)
        text = patched(xml, meta)
        flags = 0
        if active:
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        if persistent:
            flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, text, "kubevirt", KUBEVIRT_NS,
                        flags)

    await access.call(run)
