"""Property-based tests over random VMIs: the converter returns XML that libvirt's own
schema accepts, or a ConversionError naming a field; it never raises anything else.

Random documents are built from realistic fragments (so many of them convert), then
mutated at random paths with random JSON values (so the error paths are explored too).
Each produced XML goes through virt-xml-validate, which costs a process per example: the
example count is kept modest and the test is deterministic per run (derandomize) so CI
failures reproduce.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher.converter import ConversionError, ConvertOptions, convert
from tests.unit.converter import support

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

NAMES = st.sampled_from(["rootdisk", "data", "cloudinit", "cd", "x"])
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
    doc = copy.deepcopy(support.MINIMAL)
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
        _set(doc, path, value)
    return doc


def _set(doc: Any, path: list[Any], value: Any) -> None:
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


def _check(doc: Any, opts: ConvertOptions) -> None:
    try:
        result = convert(doc, opts)
    except ConversionError as exc:
        assert str(exc).startswith(exc.path), exc
        assert exc.reason, exc
        return
    support.validate(result.xml)
    assert result.name.endswith("_" + doc["metadata"]["name"])


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(vmis(), st.booleans())
def test_random_vmis_convert_to_valid_xml_or_a_field_error(doc: dict[str, Any],
                                                           emulation: bool) -> None:
    _check(doc, ConvertOptions(emulation=emulation))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(JSON)
def test_arbitrary_json_is_a_field_error_never_a_crash(doc: Any) -> None:
    try:
        convert(doc, ConvertOptions())
    except ConversionError:
        return
    raise AssertionError(f"converted arbitrary JSON: {json.dumps(doc)[:200]}")


# A VMI using many of the fields the converter reads as text: every string in it, one at
# a time, replaced by arbitrary text (the converter's promise must hold for each).
RICH: dict[str, Any] = {
    "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
    "metadata": {"name": "rich", "namespace": "ns", "uid": "3f1f8b52-52f4-4e0d-9b0f-2f5d8c0e1a11",
                 "annotations": {"kubevirt.io/instancetype-name": "u1.small"}},
    "spec": {
        "hostname": "rich-host", "startStrategy": "Paused", "evictionStrategy": "None",
        "domain": {
            "resources": {"requests": {"memory": "1Gi", "cpu": "1"}},
            "memory": {"guest": "1Gi", "maxGuest": "2Gi"},
            "machine": {"type": "q35"},
            "cpu": {"model": "host-model", "features": [{"name": "x2apic", "policy": "require"}]},
            "clock": {"timezone": "Europe/Berlin",
                      "timer": {"hpet": {"present": False}, "rtc": {"tickPolicy": "catchup",
                                                                    "track": "guest"}}},
            "firmware": {"serial": "serial-1", "bootloader": {"bios": {"useSerial": True}},
                         "kernelBoot": {"kernelArgs": "console=ttyS0",
                                        "container": {"image": "k:1",
                                                      "kernelPath": "/boot/vmlinuz"}}},
            "chassis": {"manufacturer": "m", "asset": "a"},
            "rebootPolicy": "Terminate",
            "features": {"hyperv": {"vendorid": {"vendorid": "KVMKVMKVM"}}},
            "devices": {
                "disks": [{"name": "root", "disk": {"bus": "virtio"}, "serial": "S1",
                           "cache": "none", "errorPolicy": "stop"},
                          {"name": "cfg", "cdrom": {"bus": "sata", "tray": "closed"}},
                          {"name": "ci", "disk": {"bus": "virtio"}},
                          {"name": "blk", "disk": {"bus": "scsi"}},
                          {"name": "eph", "disk": {"bus": "virtio"}}],
                "interfaces": [{"name": "default", "masquerade": {}, "model": "virtio",
                                "macAddress": "02:00:00:00:00:01",
                                "pciAddress": "0000:02:01.0"}],
                "inputs": [{"name": "tab", "type": "tablet", "bus": "usb"}],
                "video": {"type": "vga"},
                "panicDevices": [{"model": "isa"}],
                "watchdog": {"name": "wd", "i6300esb": {"action": "poweroff"}},
            },
        },
        "networks": [{"name": "default", "pod": {}}],
        "volumes": [
            {"name": "root", "containerDisk": {"image": "registry/img:1", "path": "/disk"}},
            {"name": "cfg", "configMap": {"name": "cm", "volumeLabel": "CFG"}},
            {"name": "ci", "cloudInitNoCloud": {"userData": "#cloud-config\n",
                                                "networkData": "version: 2\n"}},
            {"name": "blk", "persistentVolumeClaim": {"claimName": "claim"}},
            {"name": "eph", "ephemeral": {"persistentVolumeClaim": {"claimName": "c2"}}},
        ],
    },
}


def _string_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, str):
        return [path]
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _string_paths(item, (*path, key))]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _string_paths(item, (*path, i))]
    return []


STRING_PATHS = _string_paths(RICH)


def test_the_rich_vmi_converts() -> None:
    _check(copy.deepcopy(RICH), ConvertOptions(block_volumes=frozenset({"blk"})))
    assert len(STRING_PATHS) > 60


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(STRING_PATHS), ANY_TEXT, st.booleans())
def test_any_text_in_any_string_field(path: tuple[Any, ...], value: str,
                                      emulation: bool) -> None:
    doc = copy.deepcopy(RICH)
    _set(doc, list(path), value)
    _check(doc, ConvertOptions(emulation=emulation, block_volumes=frozenset({"blk"})))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(vmis())
def test_stratovirt_profile_valid_or_field_error(doc: dict[str, Any]) -> None:
    _check(doc, ConvertOptions(hypervisor="stratovirt"))
