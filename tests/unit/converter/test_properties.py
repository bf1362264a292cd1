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
from tests.unit.converter.strategies import ANY_TEXT, JSON, set_path, vmis


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
    set_path(doc, list(path), value)
    _check(doc, ConvertOptions(emulation=emulation, block_volumes=frozenset({"blk"})))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(vmis())
def test_stratovirt_profile_valid_or_field_error(doc: dict[str, Any]) -> None:
    _check(doc, ConvertOptions(hypervisor="stratovirt"))
