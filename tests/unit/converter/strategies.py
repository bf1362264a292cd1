"""Hypothesis strategies for VMIs: random, mostly valid KubeVirt VMIs (used by the
converter's property tests and by the bad-input tests of the command API)."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

from tests.unit.converter.support import MINIMAL

NAMES = st.sampled_from(["rootdisk", "data", "cloudinit", "cd", "x"])


# Any text, lone UTF-16 surrogates included (what a JSON "\\ud800" escape or an invalid
# UTF-8 byte of STANDALONE_VMI decodes to), control characters and non-BMP characters.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=24)

JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-5, 2**40),
                      st.floats(allow_nan=True, allow_infinity=True),
                      ANY_TEXT,
                      st.sampled_from(["", "..", "../x", "/abs", "a/b", "1Gi", "virtio"]))

JSON = st.recursive(JSON_LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)


def set_path(doc: Any, path: list[Any], value: Any) -> None:
    node = doc
    for key in path[:-1]:
        in_dict = isinstance(node, dict) and isinstance(key, str) and key in node
        in_list = isinstance(node, list) and isinstance(key, int) and key < len(node)
        if not (in_dict or in_list):
            return
        node = node[key]
    last = path[-1]
    fits_dict = isinstance(node, dict) and isinstance(last, str)
    fits_list = isinstance(node, list) and isinstance(last, int) and last < len(node)
    if fits_dict or fits_list:
        node[last] = value


BUS = st.sampled_from(["virtio", "sata", "scsi", "usb", "ide", ""])


QUANTITY = st.sampled_from(["128Mi", "1Gi", "512M", "1.5Gi", "0", "abc", "3", "-1Gi", 64])


def _volume(name: str, kind: str) -> dict[str, Any]:
    if kind == "containerDisk":
        return {"name": name, "containerDisk": {"image": "registry/img:1"}}
    if kind == "emptyDisk":
        return {"name": name, "emptyDisk": {"capacity": "1Gi"}}
    if kind == "cloudInitNoCloud":
        return {"name": name, "cloudInitNoCloud": {"userData": "#cloud-config\n"}}
    if kind == "hostDisk":
        return {"name": name, "hostDisk": {"path": f"/data/{name}.img", "type": "Disk"}}
    return {"name": name, "persistentVolumeClaim": {"claimName": f"pvc-{name}"}}


@st.composite
def vmis(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(MINIMAL)
    dom = doc["spec"]["domain"]
    if draw(st.booleans()):
        dom["cpu"] = {k: draw(st.integers(0, 4)) for k in
                      draw(st.lists(st.sampled_from(["sockets", "cores", "threads"]),
                                    unique=True))}
        if draw(st.booleans()):
            dom["cpu"]["model"] = draw(st.sampled_from(
                ["host-model", "host-passthrough", "Skylake-Client", "qemu64", ""]))
    if draw(st.booleans()):
        dom["memory"] = {"guest": draw(QUANTITY)}
    if draw(st.booleans()):
        dom["machine"] = {"type": draw(st.sampled_from(["q35", "pc", "pc-q35-7.2", "virt"]))}
    if draw(st.booleans()):
        dom["features"] = {"acpi": {"enabled": draw(st.booleans())}, "apic": {}}
    if draw(st.booleans()):
        dom["clock"] = draw(st.sampled_from([{"utc": {}}, {"timezone": "Europe/Berlin"},
                                             {"utc": {"offsetSeconds": 30}}]))
    disks, volumes = [], []
    for name in draw(st.lists(NAMES, unique=True, max_size=4)):
        kind = draw(st.sampled_from(["disk", "cdrom", "lun"]))
        disk: dict[str, Any] = {"name": name, kind: {"bus": draw(BUS)}}
        if draw(st.booleans()):
            disk["bootOrder"] = draw(st.integers(0, 3))
        disks.append(disk)
        volumes.append(_volume(name, draw(st.sampled_from(
            ["containerDisk", "emptyDisk", "cloudInitNoCloud", "hostDisk", "pvc"]))))
    dom["devices"]["disks"] = disks
    doc["spec"]["volumes"] = volumes
    if draw(st.booleans()):
        dom["devices"]["interfaces"] = [{"name": "default",
                                         draw(st.sampled_from(["bridge", "masquerade",
                                                               "slirp", "sriov"])): {}}]
        doc["spec"]["networks"] = [{"name": "default", "pod": {}}]
    for flag in ("autoattachSerialConsole", "autoattachGraphicsDevice",
                 "autoattachMemBalloon", "useVirtioTransitional"):
        if draw(st.booleans()):
            dom["devices"][flag] = draw(st.booleans())
    if draw(st.booleans()):
        dom["devices"]["inputs"] = [{"name": "tablet1", "type": "tablet",
                                     "bus": draw(st.sampled_from(["usb", "virtio", "ps2"]))}]
    # Mutations: random values at random paths, to walk the error paths.
    for path, value in draw(st.lists(st.tuples(st.lists(st.sampled_from(
            ["spec", "domain", "devices", "disks", "cpu", "memory", "metadata", "name",
             "volumes", "resources", "requests", "firmware", "cloudInitNoCloud", "userData",
             "networkData", "hostname", 0, 1]), min_size=1, max_size=5),
            JSON), max_size=2)):
        set_path(doc, path, value)
    return doc
