"""KubeVirt's webhook defaults for STANDALONE_VMI (launcher.converter.defaults)."""

from __future__ import annotations

import copy
from typing import Any

from launcher.converter import defaults
from tests.unit.converter import support


def test_volume_without_disk_gets_a_sata_disk_on_amd64() -> None:
    doc = support.vmi()
    doc["spec"]["volumes"] = [{"name": "root", "containerDisk": {"image": "img"}}]
    out = defaults.apply(doc, "x86_64")
    assert out["spec"]["domain"]["devices"]["disks"] == [{"name": "root",
                                                          "disk": {"bus": "sata"}}]
    assert doc["spec"]["domain"]["devices"] == {}  # the input is not changed
    support.validate(support.conversion(out).xml)


def test_arm64_defaults() -> None:
    doc = support.vmi(devices={"disks": [{"name": "d", "cdrom": {}}]})
    out = defaults.apply(doc, "aarch64")["spec"]
    assert out["architecture"] == "arm64"
    assert out["domain"]["machine"] == {"type": "virt"}
    assert out["domain"]["cpu"]["model"] == "host-passthrough"
    assert out["domain"]["firmware"] == {"bootloader": {"efi": {"secureBoot": False}}}
    assert out["domain"]["devices"]["disks"] == [
        {"name": "d", "cdrom": {"bus": "virtio", "readonly": True, "tray": "closed"}}]


def test_amd64_machine_cpu_memory_network_inputs_watchdog() -> None:
    doc = support.vmi(resources={"limits": {"cpu": "2", "memory": "1Gi"}},
                      devices={"inputs": [{"name": "t"}], "watchdog": {"name": "w"}})
    out = defaults.apply(doc, "x86_64")
    dom = out["spec"]["domain"]
    assert dom["machine"] == {"type": "q35"}
    assert dom["resources"]["requests"]["cpu"] == "2"
    assert dom["memory"] == {"guest": "1Gi"}  # no memory request: the limit
    assert dom["cpu"] == {"sockets": 2, "cores": 1, "threads": 1, "model": "host-model"}
    assert dom["devices"]["interfaces"] == [{"name": "default", "bridge": {}}]
    assert out["spec"]["networks"] == [{"name": "default", "pod": {}}]
    assert dom["devices"]["inputs"] == [{"name": "t", "bus": "usb", "type": "tablet"}]
    assert dom["devices"]["watchdog"]["i6300esb"] == {"action": "reset"}


def test_no_pod_interface_when_turned_off() -> None:
    doc = support.vmi(devices={"autoattachPodInterface": False})
    assert "interfaces" not in defaults.apply(doc, "x86_64")["spec"]["domain"]["devices"]


def test_hyperv_dependencies() -> None:
    doc = support.vmi(features={"hyperv": {"synictimer": {}, "evmcs": {},
                                           "ipi": {"enabled": False},
                                           "vpindex": {"enabled": False}}})
    hyperv = defaults.apply(doc, "x86_64")["spec"]["domain"]["features"]["hyperv"]
    assert hyperv["synic"] == {"enabled": True}  # synictimer needs it
    assert hyperv["vapic"] == {"enabled": True}  # evmcs needs it
    assert hyperv["vpindex"] == {"enabled": False}  # set by the user: kept
    out = defaults.apply(doc, "x86_64")["spec"]["domain"]["cpu"]["features"]
    assert out == [{"name": "vmx", "policy": "require"}]


def test_malformed_input_is_left_for_the_converter() -> None:
    docs: list[Any] = [[], {"spec": []}, {"spec": {"domain": 3}},
                       {"spec": {"domain": {"devices": {"disks": "x"}},
                                 "volumes": [{"name": 1}]}}]
    for doc in docs:
        original: Any = copy.deepcopy(doc)
        defaults.apply(doc, "x86_64")
        assert doc == original
