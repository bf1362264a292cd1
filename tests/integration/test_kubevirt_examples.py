"""KubeVirt's own example VMIs (the project's shared reference copy, read in place:
../shared/reference/kubevirt-examples, never copied here) through the STANDALONE_VMI path:
KubeVirt's webhook defaults, the converter, libvirt's schema (virt-xml-validate) and a
define in libvirt's test:///default driver. The ones that need hardware these machines
lack, or use layouts KubeVirt itself no longer accepts, are refused naming the field."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from launcher.converter import ConversionError, ConvertOptions, convert, defaults
from tests.unit.converter import support

EXAMPLES = Path(os.environ.get(
    "PVL_KUBEVIRT_EXAMPLES",
    Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "kubevirt-examples"))
# The pod's exclusive CPUs, for the example with dedicatedCpuPlacement (vmi-fedora-isolated:
# 1 vCPU + the isolated emulator thread).
POD_CPUS = (2, 3)

# example -> (the field refused, why it is expected)
REFUSED = {
    "doc-backup-restore-integration-1.json": ("spec.domain", "a fragment without a domain"),
    "doc-backup-restore-integration-2.json": ("spec", "a fragment without a spec"),
    "doc-cloud-init-1.json": ("spec.domain.resources.requests.memory",
                              "no memory: virt-api refuses it too"),
    "doc-cloud-init-2.json": ("spec.domain.resources.requests.memory",
                              "no memory: virt-api refuses it too"),
    "doc-network-network-binding-mechanisms-1.json": (
        "spec.domain.resources.requests.memory", "no memory: virt-api refuses it too"),
    "doc-network-network-binding-plugin-1.json": (
        "spec.domain.resources.requests.memory", "no memory: virt-api refuses it too"),
    "doc-vm-presets-3.json": ("spec.domain.resources.requests.memory",
                              "no memory: it relies on a VirtualMachineInstancePreset"),
    "doc-vm-presets-4.json": ("spec.domain.resources.requests.memory",
                              "no memory: it relies on a VirtualMachineInstancePreset"),
    "doc-container-empty-disks-1.json": ("spec.domain.devices.disks[2].name",
                                         "v1alpha layout (disks[].volumeName)"),
    "doc-devel-virtual-machine-1.json": ("spec.domain.devices.disks[0].name",
                                         "v1alpha layout (disks[].volumeName)"),
    "doc-devel-virtual-machine-2.json": ("spec.domain", "a fragment without a domain"),
    "doc-devel-host-devices-and-device-plugins-1.json": ("metadata.name",
                                                         "a fragment without metadata"),
    "doc-containerpath-volumes-1.json": ("spec.domain.devices.filesystems",
                                         "virtiofs (needs virt-handler's virtiofsd)"),
    "vmi-dra-pgpu.json": ("spec.domain.devices.gpus", "GPU"),
    "vmi-gpu.json": ("spec.domain.devices.gpus", "GPU"),
    "vmi-usb.json": ("spec.domain.devices.hostDevices", "host USB devices"),
}


def _examples() -> list[str]:
    if not EXAMPLES.is_dir():
        return []
    return sorted(p.name for p in EXAMPLES.glob("*.json") if p.name != "index.json")


def _load(name: str) -> Any:
    return defaults.apply(json.loads((EXAMPLES / name).read_text()), "x86_64")


@pytest.fixture(scope="module")
def conn() -> Iterator[Any]:
    connection = libvirt.open("test:///default")
    yield connection
    connection.close()


def test_all_49_examples_are_here() -> None:
    if not EXAMPLES.is_dir():
        pytest.skip(f"{EXAMPLES} is not on this machine (set PVL_KUBEVIRT_EXAMPLES)")
    assert len(_examples()) == 49
    assert set(REFUSED) <= set(_examples())


@pytest.mark.parametrize("name", [n for n in _examples() if n not in REFUSED])
def test_example_converts_validates_and_defines(name: str, conn: Any) -> None:
    opts = ConvertOptions(emulation=True, dedicated_cpus=POD_CPUS)
    conversion = convert(_load(name), opts)
    support.validate(conversion.xml)
    dom = conn.defineXML(conversion.xml)
    try:
        assert dom.name() == conversion.name
        assert dom.UUIDString() == conversion.uuid
    finally:
        dom.undefine()


@pytest.mark.parametrize("name", [n for n in _examples() if n in REFUSED])
def test_example_refused_naming_the_field(name: str) -> None:
    with pytest.raises(ConversionError) as info:
        convert(_load(name), ConvertOptions(emulation=True, dedicated_cpus=POD_CPUS))
    assert info.value.path == REFUSED[name][0], (info.value, REFUSED[name][1])
