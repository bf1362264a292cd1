"""The domain JSON KubeVirt's virt-handler decodes (pkg/virt-launcher/virtwrap/api.Domain).

Go's encoding/json is the contract: api.Domain's Spec and Status carry only xml tags, so the
JSON keys are the Go field names ("Spec", "Status", "Devices", "Interfaces", "MAC", ...),
while TypeMeta and ObjectMeta use their own json tags ("kind", "apiVersion", "ObjectMeta"
with "name", "namespace", "uid", "deletionTimestamp"). Go's decoder matches keys case-
insensitively and leaves absent fields at their zero value, so we emit the fields virt-handler
reads (names, uuid, memory, OS, devices with aliases/MACs/agent channel state, KubeVirt
metadata) faithfully and leave the rest out.

The spec is built from the live domain XML by a small declarative schema below: each Go
struct is a table of (GoField, kind, xml name, sub-schema).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

KUBEVIRT_NS = "http://kubevirt.io"
# TypeMeta KubeVirt puts on every Domain it sends (api.NewDomainReferenceFromName).
TYPE_META = {"kind": "Domain", "apiVersion": "1.2.2"}

# kinds
ATTR = "attr"  # XML attribute -> string
ATTR_INT = "attr_int"  # XML attribute -> number
TEXT = "text"  # element chardata of this element -> string
TEXT_INT = "text_int"  # chardata -> number
CHILD_TEXT = "child_text"  # text of a child element -> string
ELEM = "elem"  # one child element -> object (sub-schema)
ELEMS = "elems"  # repeated child elements -> list (sub-schema)
PRESENT = "present"  # empty child element present -> {} (Go pointer to empty struct)
ALIAS = "alias"  # <alias name='ua-x'/> -> {"Name": "x", "UserDefined": true}

Field = tuple[str, str, str, "Schema | None"]
Schema = list[Field]

ADDRESS: Schema = [(f, ATTR, x, None) for f, x in (
    ("Type", "type"), ("Domain", "domain"), ("Bus", "bus"), ("Slot", "slot"),
    ("Function", "function"), ("Controller", "controller"), ("Target", "target"),
    ("Unit", "unit"))]
BOOT_ORDER: Schema = [("Order", ATTR_INT, "order", None)]
MEMORY: Schema = [("Value", TEXT_INT, "", None), ("Unit", ATTR, "unit", None)]
DISK: Schema = [
    ("Device", ATTR, "device", None), ("Type", ATTR, "type", None),
    ("Source", ELEM, "source", [("Dev", ATTR, "dev", None), ("File", ATTR, "file", None),
                                ("Name", ATTR, "name", None)]),
    ("Target", ELEM, "target", [("Bus", ATTR, "bus", None), ("Device", ATTR, "dev", None),
                                ("Tray", ATTR, "tray", None)]),
    ("Serial", CHILD_TEXT, "serial", None),
    ("Driver", ELEM, "driver", [("Cache", ATTR, "cache", None),
                                ("ErrorPolicy", ATTR, "error_policy", None),
                                ("IO", ATTR, "io", None), ("Name", ATTR, "name", None),
                                ("Type", ATTR, "type", None),
                                ("IOThread", ATTR_INT, "iothread", None),
                                ("Queues", ATTR_INT, "queues", None),
                                ("Discard", ATTR, "discard", None)]),
    ("ReadOnly", PRESENT, "readonly", None),
    ("Alias", ALIAS, "alias", None),
    # The containerDisk's image under its overlay (libvirt fills it in at start).
    ("BackingStore", ELEM, "backingStore", [
        ("Type", ATTR, "type", None),
        ("Format", ELEM, "format", [("Type", ATTR, "type", None)]),
        ("Source", ELEM, "source", [("Dev", ATTR, "dev", None), ("File", ATTR, "file", None),
                                    ("Name", ATTR, "name", None)])]),
    ("BootOrder", ELEM, "boot", BOOT_ORDER),
    ("Address", ELEM, "address", ADDRESS),
    ("Model", ATTR, "model", None),
]
INTERFACE: Schema = [
    ("Type", ATTR, "type", None),
    ("Source", ELEM, "source", [("Network", ATTR, "network", None), ("Device", ATTR, "dev", None),
                                ("Bridge", ATTR, "bridge", None), ("Mode", ATTR, "mode", None)]),
    ("Target", ELEM, "target", [("Device", ATTR, "dev", None)]),
    ("Model", ELEM, "model", [("Type", ATTR, "type", None)]),
    ("MAC", ELEM, "mac", [("MAC", ATTR, "address", None)]),
    ("MTU", ELEM, "mtu", [("Size", ATTR, "size", None)]),
    ("BootOrder", ELEM, "boot", BOOT_ORDER),
    ("LinkState", ELEM, "link", [("State", ATTR, "state", None)]),
    ("Alias", ALIAS, "alias", None),
    ("Address", ELEM, "address", ADDRESS),
]
CHANNEL: Schema = [
    ("Type", ATTR, "type", None),
    ("Source", ELEM, "source", [("Mode", ATTR, "mode", None), ("Path", ATTR, "path", None)]),
    # Target.State is how virt-handler learns that the guest agent is connected.
    ("Target", ELEM, "target", [("Name", ATTR, "name", None), ("Type", ATTR, "type", None),
                                ("State", ATTR, "state", None)]),
]
CHARDEV: Schema = [
    ("Type", ATTR, "type", None),
    ("Target", ELEM, "target", [("Type", ATTR, "type", None), ("Port", ATTR_INT, "port", None)]),
    ("Source", ELEM, "source", [("Mode", ATTR, "mode", None), ("Path", ATTR, "path", None)]),
    ("Alias", ALIAS, "alias", None),
    ("Log", ELEM, "log", [("File", ATTR, "file", None), ("Append", ATTR, "append", None)]),
]
DEVICES: Schema = [
    ("Emulator", CHILD_TEXT, "emulator", None),
    ("Interfaces", ELEMS, "interface", INTERFACE),
    ("Channels", ELEMS, "channel", CHANNEL),
    ("Controllers", ELEMS, "controller", [("Type", ATTR, "type", None),
                                          ("Index", ATTR, "index", None),
                                          ("Model", ATTR, "model", None),
                                          ("Alias", ALIAS, "alias", None)]),
    ("Video", ELEMS, "video", [("Model", ELEM, "model", [("Type", ATTR, "type", None)])]),
    ("Graphics", ELEMS, "graphics", [("Type", ATTR, "type", None),
                                     ("Listen", ELEM, "listen", [("Type", ATTR, "type", None),
                                                                 ("Socket", ATTR, "socket",
                                                                  None)])]),
    ("Ballooning", ELEM, "memballoon", [("Model", ATTR, "model", None),
                                        ("FreePageReporting", ATTR, "freePageReporting", None),
                                        ("Stats", ELEM, "stats",
                                         [("Period", ATTR_INT, "period", None)])]),
    ("Disks", ELEMS, "disk", DISK),
    ("Inputs", ELEMS, "input", [("Type", ATTR, "type", None), ("Bus", ATTR, "bus", None),
                                ("Alias", ALIAS, "alias", None)]),
    ("Serials", ELEMS, "serial", CHARDEV),
    ("Consoles", ELEMS, "console", CHARDEV),
    ("Watchdogs", ELEMS, "watchdog", [("Model", ATTR, "model", None),
                                      ("Action", ATTR, "action", None),
                                      ("Alias", ALIAS, "alias", None)]),
    ("Rng", ELEM, "rng", [("Model", ATTR, "model", None)]),
]
OS: Schema = [
    ("Type", ELEM, "type", [("OS", TEXT, "", None), ("Arch", ATTR, "arch", None),
                            ("Machine", ATTR, "machine", None)]),
    ("BootOrder", ELEMS, "boot", [("Dev", ATTR, "dev", None)]),
    ("Kernel", CHILD_TEXT, "kernel", None),
    ("Initrd", CHILD_TEXT, "initrd", None),
    ("KernelArgs", CHILD_TEXT, "cmdline", None),
]
ENTRY: Schema = [("Name", ATTR, "name", None), ("Value", TEXT, "", None)]
SYSINFO: Schema = [
    ("Type", ATTR, "type", None),
    ("System", ELEMS, "system/entry", ENTRY),
    ("BIOS", ELEMS, "bios/entry", ENTRY),
    ("BaseBoard", ELEMS, "baseBoard/entry", ENTRY),
    ("Chassis", ELEMS, "chassis/entry", ENTRY),
]
SPEC: Schema = [
    ("Type", ATTR, "type", None),
    ("Name", CHILD_TEXT, "name", None),
    ("UUID", CHILD_TEXT, "uuid", None),
    ("Memory", ELEM, "memory", MEMORY),
    ("CurrentMemory", ELEM, "currentMemory", MEMORY),
    ("OS", ELEM, "os", OS),
    ("SysInfo", ELEM, "sysinfo", SYSINFO),
    ("Devices", ELEM, "devices", DEVICES),
    ("Features", ELEM, "features", [("ACPI", PRESENT, "acpi", None),
                                    ("APIC", PRESENT, "apic", None),
                                    ("SMM", PRESENT, "smm", None)]),
    ("CPU", ELEM, "cpu", [("Mode", ATTR, "mode", None), ("Model", CHILD_TEXT, "model", None),
                          ("Topology", ELEM, "topology",
                           [("Sockets", ATTR_INT, "sockets", None),
                            ("Cores", ATTR_INT, "cores", None),
                            ("Threads", ATTR_INT, "threads", None)])]),
    ("VCPU", ELEM, "vcpu", [("Placement", ATTR, "placement", None),
                            ("CPUs", TEXT_INT, "", None)]),
    ("Clock", ELEM, "clock", [("Offset", ATTR, "offset", None),
                              ("Timezone", ATTR, "timezone", None)]),
    ("OnReboot", CHILD_TEXT, "on_reboot", None),
]

USER_ALIAS_PREFIX = "ua-"


def _int(text: str | None) -> int:
    # As Go's strconv: base 10 ("010" is 10, "0x10" is not a number).
    try:
        return int((text or "0").strip(), 10)
    except ValueError:
        return 0


def convert(el: ET.Element, schema: Schema) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, kind, name, sub in schema:
        if kind == ATTR:
            if name in el.attrib:
                out[field] = el.attrib[name]
        elif kind == ATTR_INT:
            if name in el.attrib:
                out[field] = _int(el.attrib[name])
        elif kind == TEXT:
            out[field] = (el.text or "").strip()
        elif kind == TEXT_INT:
            out[field] = _int(el.text)
        elif kind == CHILD_TEXT:
            child = el.find(name)
            if child is not None:
                out[field] = (child.text or "").strip()
        elif kind == PRESENT:
            if el.find(name) is not None:
                out[field] = {}
        elif kind == ALIAS:
            child = el.find(name)
            if child is not None:
                alias = child.attrib.get("name", "")
                user = alias.startswith(USER_ALIAS_PREFIX)
                out[field] = {"Name": alias[len(USER_ALIAS_PREFIX):] if user else alias,
                              "UserDefined": user}
        elif kind == ELEM:
            child = el.find(name)
            if child is not None and sub is not None:
                out[field] = convert(child, sub)
        elif kind == ELEMS and sub is not None:
            items = [convert(c, sub) for c in el.findall(name)]
            if items:
                out[field] = items
    return out


def kubevirt_metadata(root: ET.Element) -> dict[str, Any]:
    """<metadata><kubevirt xmlns='http://kubevirt.io'><uid/><graceperiod>...</metadata>"""
    kv = root.find(f"metadata/{{{KUBEVIRT_NS}}}kubevirt")
    if kv is None:
        return {}
    out: dict[str, Any] = {}
    uid = kv.find(f"{{{KUBEVIRT_NS}}}uid")
    if uid is not None:
        out["UID"] = (uid.text or "").strip()
    grace = kv.find(f"{{{KUBEVIRT_NS}}}graceperiod")
    if grace is not None:
        g: dict[str, Any] = {}
        secs = grace.find(f"{{{KUBEVIRT_NS}}}deletionGracePeriodSeconds")
        if secs is not None:
            g["DeletionGracePeriodSeconds"] = _int(secs.text)
        ts = grace.find(f"{{{KUBEVIRT_NS}}}deletionTimestamp")
        if ts is not None and ts.text:
            g["DeletionTimestamp"] = ts.text.strip()
        marked = grace.find(f"{{{KUBEVIRT_NS}}}markedForGracefulShutdown")
        if marked is not None:
            g["MarkedForGracefulShutdown"] = (marked.text or "").strip() == "true"
        out["GracePeriod"] = g
    migration = kv.find(f"{{{KUBEVIRT_NS}}}migration")
    if migration is not None:
        out["Migration"] = migration_json(migration)
    return out


# KubeVirt's MigrationMetadata: XML tag -> Go field name (its JSON in the snapshots)
MIGRATION_FIELDS = (("uid", "UID"), ("startTimestamp", "StartTimestamp"),
                    ("endTimestamp", "EndTimestamp"), ("failed", "Failed"),
                    ("failureReason", "FailureReason"), ("abortStatus", "AbortStatus"),
                    ("mode", "Mode"))


def migration_json(el: ET.Element) -> dict[str, Any]:
    """<kubevirt:migration>: virt-handler follows a migration by these (Failed is a plain
    bool in Go: always present; the timestamps are *metav1.Time: absent when unset)."""
    out: dict[str, Any] = {"Failed": False}
    for tag, name in MIGRATION_FIELDS:
        child = el.find(f"{{{KUBEVIRT_NS}}}{tag}")
        text = (child.text or "").strip() if child is not None else ""
        if tag == "failed":
            out[name] = text == "true"
        elif text:
            out[name] = text
    return out


def spec_from_xml(xml: str) -> dict[str, Any]:
    root = ET.fromstring(xml)
    spec = convert(root, SPEC)
    meta = kubevirt_metadata(root)
    if meta:
        spec["Metadata"] = {"KubeVirt": meta}
    return spec


def rfc3339(when: datetime) -> str:
    """metav1.Time's JSON form: RFC 3339, second precision, UTC 'Z'."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_rfc3339() -> str:
    return rfc3339(datetime.now(UTC))


def build(*, name: str, namespace: str, uid: str, status: str, reason: str,
          spec: Mapping[str, Any] | None, deletion_timestamp: str | None = None,
          guest: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The whole api.Domain object. `guest` holds agent data for Status (Interfaces,
    OSInfo, FSFreezeStatus) when the agent cache has it."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "creationTimestamp": None}
    if uid:
        meta["uid"] = uid
    if deletion_timestamp:
        meta["deletionTimestamp"] = deletion_timestamp
    status_obj: dict[str, Any] = {"Status": status, "Reason": reason}
    if guest:
        status_obj.update(guest)
    return {**TYPE_META, "ObjectMeta": meta, "Spec": dict(spec or {}), "Status": status_obj}


def dumps(domain: Mapping[str, Any]) -> bytes:
    return json.dumps(domain, separators=(",", ":"), sort_keys=False).encode()
