"""machine.build: everything on <domain> outside <devices>. Each case converts a VMI
fragment, checks the result against libvirt's schema (support.tree) and then the elements
it is about; error cases check the exact field path."""

from __future__ import annotations

import copy
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher.converter import ConversionError, ConvertOptions, SMBios, convert
from launcher.converter.cpu import IOThreads
from launcher.converter.plan import ExistingFile
from launcher.notify.domain_json import kubevirt_metadata
from tests.unit.converter import support

DATA = Path(__file__).parent / "data"
UID = support.MINIMAL["metadata"]["uid"]
KV_FIRMWARE_NS = uuid.UUID("6a1a24a1-4061-4607-8bf4-a3963d0c5895")
SECBOOT: dict[str, Any] = {"bootloader": {"efi": {}}}
TCG = ConvertOptions(emulation=True)


def attrs(root: ET.Element, path: str) -> dict[str, str]:
    el = root.find(path)
    assert el is not None, f"no {path} in\n{ET.tostring(root, encoding='unicode')}"
    return dict(el.attrib)


def text(root: ET.Element, path: str) -> str | None:
    el = root.find(path)
    assert el is not None, f"no {path}"
    return el.text


def children(root: ET.Element, path: str) -> list[ET.Element]:
    el = root.find(path)
    return [] if el is None else list(el)


def error(doc: dict[str, Any], opts: ConvertOptions | None = None) -> ConversionError:
    with pytest.raises(ConversionError) as info:
        convert(doc, opts or ConvertOptions())
    return info.value


def with_metadata(**meta: Any) -> dict[str, Any]:
    doc = support.vmi()
    doc["metadata"].update(meta)
    return doc


def with_spec(**spec: Any) -> dict[str, Any]:
    doc = support.vmi()
    doc["spec"].update(spec)
    return doc


# --- identity and metadata --------------------------------------------------------------------
@pytest.mark.parametrize(("opts", "kind"), [(ConvertOptions(), "kvm"), (TCG, "qemu")])
def test_domain_type(opts: ConvertOptions, kind: str) -> None:
    root = support.tree(support.vmi(), opts)
    assert root.get("type") == kind
    assert text(root, "name") == "default_testvmi"
    assert [(el.tag, el.text) for el in root if el.tag.startswith("on_")] == [
        ("on_poweroff", "destroy"), ("on_reboot", "restart"), ("on_crash", "destroy")]


@pytest.mark.parametrize(("doc", "expected"), [
    (support.vmi(firmware={"uuid": "D3C2DAC2-71B8-5A49-A5A6-7F3BDB93E2C3"}),
     "d3c2dac2-71b8-5a49-a5a6-7f3bdb93e2c3"),
    (support.vmi(firmware={"uuid": "d3c2dac271b85a49a5a67f3bdb93e2c3"}),
     "d3c2dac2-71b8-5a49-a5a6-7f3bdb93e2c3"),
    (support.vmi(), UID),
    (with_metadata(uid="not-a-uuid"), str(uuid.uuid5(KV_FIRMWARE_NS, "not-a-uuid"))),
    # No uid: the firmware UUID KubeVirt's VM controller gives a VM named "testvmi".
    (with_metadata(uid=""), str(uuid.uuid5(KV_FIRMWARE_NS, "testvmi"))),
], ids=["firmware-uuid", "firmware-uuid-32-hex", "vmi-uid", "uid-not-uuid", "no-uid"])
def test_uuid(doc: dict[str, Any], expected: str) -> None:
    result = support.conversion(doc)
    root = ET.fromstring(result.xml)
    assert result.uuid == expected
    assert text(root, "uuid") == expected
    # libvirt refuses an SMBIOS uuid that differs from the domain's.
    assert text(root, "sysinfo/system/entry[@name='uuid']") == expected


def test_seed_firmware_uuid_is_kubevirts_derivation() -> None:
    assert str(uuid.uuid5(KV_FIRMWARE_NS, "ubuntu-amd")) == "d3c2dac2-71b8-5a49-a5a6-7f3bdb93e2c3"


@pytest.mark.parametrize(("doc", "grace"), [
    (support.vmi(), 30), (with_spec(terminationGracePeriodSeconds=120), 120),
    (with_spec(terminationGracePeriodSeconds=0), 0)])
def test_kubevirt_metadata_reads_back(doc: dict[str, Any], grace: int) -> None:
    root = support.tree(doc)
    assert kubevirt_metadata(root) == {
        "UID": UID, "GracePeriod": {"DeletionGracePeriodSeconds": grace}}


@pytest.mark.parametrize(("doc", "path"), [
    (support.vmi(firmware={"uuid": "1234"}), "spec.domain.firmware.uuid"),
    (with_spec(terminationGracePeriodSeconds=-1), "spec.terminationGracePeriodSeconds"),
    (with_spec(terminationGracePeriodSeconds="30"), "spec.terminationGracePeriodSeconds"),
    (with_metadata(uid="a\nb"), "metadata.uid"),
    (with_metadata(name="bad\x01name"), "metadata.name"),
], ids=["bad-uuid", "negative-grace", "string-grace", "uid-newline", "name-control-char"])
def test_identity_errors(doc: dict[str, Any], path: str) -> None:
    assert error(doc).path == path


# --- memory -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "size"), [
    ({}, 128 * 2**20),
    ({"memory": {"guest": "1Gi"}}, 2**30),
    ({"resources": {"limits": {"memory": "512M"}}}, 512 * 10**6),
    ({"resources": {"requests": {"memory": "1.5Gi"}, "limits": {"memory": "4Gi"}}},
     3 * 2**29),
])
def test_memory(spec: dict[str, Any], size: int) -> None:
    doc = support.vmi()
    if "resources" in spec:
        doc["spec"]["domain"]["resources"] = spec["resources"]
    if "memory" in spec:
        doc["spec"]["domain"]["memory"] = spec["memory"]
    root = support.tree(doc)
    for tag in ("memory", "currentMemory"):
        assert attrs(root, tag) == {"unit": "b"}
        assert text(root, tag) == str(size)
    assert root.find("memoryBacking") is None


@pytest.mark.parametrize(("page", "guest", "kib"), [("2Mi", "128Mi", "2048"),
                                                     ("1Gi", "2Gi", "1048576"),
                                                     ("2048Ki", "4Mi", "2048")])
def test_hugepages(page: str, guest: str, kib: str) -> None:
    root = support.tree(support.vmi(memory={"guest": guest, "hugepages": {"pageSize": page}}))
    assert attrs(root, "memoryBacking/hugepages/page") == {"size": kib, "unit": "KiB"}


@pytest.mark.parametrize(("spec", "path", "reason"), [
    ({"resources": {}}, "spec.domain.resources.requests.memory", "required"),
    ({"resources": {"requests": {"memory": "1Ki"}}}, "spec.domain.resources.requests.memory",
     "too little"),
    ({"memory": {"guest": "2Pi"}}, "spec.domain.memory.guest", "at most 1Pi"),
    ({"memory": {"guest": "1.5"}}, "spec.domain.memory.guest", "whole number"),
    ({"memory": {"hugepages": {"pageSize": "4Ki"}}}, "spec.domain.memory.hugepages.pageSize",
     "expected one of: 2Mi, 1Gi"),
    ({"memory": {"hugepages": {}}}, "spec.domain.memory.hugepages.pageSize", "required"),
    ({"memory": {"guest": "1000Mi", "hugepages": {"pageSize": "1Gi"}}},
     "spec.domain.memory.hugepages.pageSize", "spec.domain.memory.guest = 1000Mi"),
])
def test_memory_errors(spec: dict[str, Any], path: str, reason: str) -> None:
    exc = error(support.vmi(**spec))
    assert exc.path == path
    assert reason in exc.reason


# --- vCPUs, pinning, iothreads ----------------------------------------------------------------
@pytest.mark.parametrize(("spec", "vcpus", "topology"), [
    ({}, 1, ("1", "1", "1")),
    ({"cpu": {"sockets": 2, "cores": 3, "threads": 2}}, 12, ("2", "3", "2")),
    ({"cpu": {"cores": 4}}, 4, ("1", "4", "1")),
    ({"cpu": {"sockets": 0, "cores": 0}}, 1, ("1", "1", "1")),
    ({"resources": {"requests": {"memory": "128Mi", "cpu": "1500m"}}}, 2, ("2", "1", "1")),
    ({"resources": {"requests": {"memory": "128Mi", "cpu": "2"}, "limits": {"cpu": "3"}}},
     3, ("3", "1", "1")),
    ({"cpu": {"threads": 2}, "resources": {"requests": {"memory": "128Mi", "cpu": "8"}}},
     2, ("1", "1", "2")),
], ids=["default", "explicit", "cores", "zeros-are-unset", "request-rounded-up",
        "limit-first", "topology-wins"])
def test_vcpus(spec: dict[str, Any], vcpus: int, topology: tuple[str, str, str]) -> None:
    root = support.tree(support.vmi(**spec))
    assert attrs(root, "vcpu") == {"placement": "static"}
    assert text(root, "vcpu") == str(vcpus)
    sockets, cores, threads = topology
    assert attrs(root, "cpu/topology") == {"sockets": sockets, "dies": "1", "cores": cores,
                                           "threads": threads}


@pytest.mark.parametrize(("cpu", "cpus", "vcpupins", "emulator", "iothreadpins"), [
    ({"cores": 2, "dedicatedCpuPlacement": True}, (4, 5), {"0": "4", "1": "5"}, None,
     {"1": "4,5"}),
    ({"cores": 2, "dedicatedCpuPlacement": True, "isolateEmulatorThread": True}, (4, 5, 6, 7),
     {"0": "4", "1": "5"}, "6", {"1": "6"}),
])
def test_dedicated_cpus(cpu: dict[str, Any], cpus: tuple[int, ...], vcpupins: dict[str, str],
                        emulator: str | None, iothreadpins: dict[str, str]) -> None:
    doc = support.vmi(cpu=cpu, devices={"disks": [{"name": "d", "disk": {"bus": "virtio"}}]})
    doc["spec"]["volumes"] = [{"name": "d", "hostDisk": {"path": "/d.img", "type": "Disk"}}]
    root = support.tree(doc, ConvertOptions(dedicated_cpus=cpus))
    assert {p.get("vcpu"): p.get("cpuset") for p in root.iterfind("cputune/vcpupin")} == vcpupins
    pin = root.find("cputune/emulatorpin")
    assert (pin.get("cpuset") if pin is not None else None) == emulator
    assert {p.get("iothread"): p.get("cpuset")
            for p in root.iterfind("cputune/iothreadpin")} == iothreadpins


def test_no_cputune_without_dedicated_placement() -> None:
    assert support.tree(support.vmi(), ConvertOptions(dedicated_cpus=(1, 2))).find(
        "cputune") is None


@pytest.mark.parametrize(("cpu", "cpus", "path"), [
    ({"cores": 4, "dedicatedCpuPlacement": True}, (0, 1, 2), "dedicatedCpuPlacement"),
    ({"dedicatedCpuPlacement": True, "isolateEmulatorThread": True}, (0,),
     "dedicatedCpuPlacement"),
    ({"isolateEmulatorThread": True}, (0, 1), "isolateEmulatorThread"),
    ({"sockets": 64, "cores": 64, "threads": 2}, (), ""),
    ({"cores": -1}, (), "cores"),
    ({"cores": "2"}, (), "cores"),
])
def test_cpu_errors(cpu: dict[str, Any], cpus: tuple[int, ...], path: str) -> None:
    exc = error(support.vmi(cpu=cpu), ConvertOptions(dedicated_cpus=cpus))
    assert exc.path == "spec.domain.cpu" + (f".{path}" if path else "")


def test_vcpus_from_a_huge_cpu_request() -> None:
    exc = error(support.vmi(resources={"requests": {"memory": "1Gi", "cpu": "5000"}}))
    assert exc.path == "spec.domain.resources.requests.cpu"


def _disks(*dedicated: bool) -> list[dict[str, Any]]:
    return [{"name": f"d{i}", "disk": {"bus": "virtio"}, "dedicatedIOThread": own}
            for i, own in enumerate(dedicated)]


@pytest.mark.parametrize(("policy", "cpu", "dedicated", "count"), [
    (None, None, (), None),
    (None, None, (False, False, False), 1),
    ("shared", None, (False, False), 1),
    ("shared", None, (False, True, True), 3),
    ("auto", "2", (False,) * 6, 4),
    ("auto", "2", (False, False), 2),
    ("auto", None, (False,) * 3, 2),
    ("auto", "1", (True, True, True), 4),
], ids=["no-disks", "default-shared", "shared", "shared-plus-dedicated", "auto-capped",
        "auto-per-disk", "auto-default-cpu", "auto-all-dedicated"])
def test_iothreads(policy: str | None, cpu: str | None, dedicated: tuple[bool, ...],
                   count: int | None) -> None:
    spec: dict[str, Any] = {"devices": {"disks": _disks(*dedicated)}}
    if policy:
        spec["ioThreadsPolicy"] = policy
    if cpu:
        spec["resources"] = {"requests": {"memory": "128Mi", "cpu": cpu}}
    doc = support.vmi(**spec)
    doc["spec"]["volumes"] = [{"name": f"d{i}", "hostDisk": {"path": f"/d{i}.img",
                                                            "type": "Disk"}}
                              for i in range(len(dedicated))]
    root = support.tree(doc)
    el = root.find("iothreads")
    assert (int(el.text or "") if el is not None else None) == count


def test_iothread_assignment_is_kubevirts_round_robin() -> None:
    assert IOThreads(count=4, shared=2).assign([False, True, False, False, True]) == [
        1, 3, 2, 1, 4]
    assert IOThreads(count=1, shared=1).assign([False, False]) == [1, 1]


def test_iothreads_policy_error() -> None:
    exc = error(support.vmi(ioThreadsPolicy="supplementalPool"))
    assert exc.path == "spec.domain.ioThreadsPolicy"
    assert "expected one of: shared, auto" in exc.reason


# --- CPU model ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("cpu", "opts", "mode", "model"), [
    ({}, ConvertOptions(), "host-model", None),
    ({"model": ""}, ConvertOptions(), "host-model", None),
    ({"model": "host-passthrough"}, ConvertOptions(), "host-passthrough", None),
    ({"model": "Skylake-Client-IBRS"}, ConvertOptions(), "custom", "Skylake-Client-IBRS"),
    # KubeVirt's default stays under TCG (libvirt expands host-model to a model TCG
    # runs); a mode libvirt refuses for TCG domains falls back to maximum.
    ({}, TCG, "host-model", None),
    ({"model": "host-passthrough"}, TCG, "maximum", None),
    ({}, ConvertOptions(emulation=True, tcg_cpu_modes=frozenset({"maximum"})), "maximum",
     None),
    ({"model": "qemu64"}, TCG, "custom", "qemu64"),
])
def test_cpu_model(cpu: dict[str, Any], opts: ConvertOptions, mode: str,
                   model: str | None) -> None:
    root = support.tree(support.vmi(cpu=cpu), opts)
    assert attrs(root, "cpu")["mode"] == mode
    el = root.find("cpu/model")
    if model is None:
        assert el is None
        assert root.find("cpu/feature") is None
    else:
        assert el is not None
        assert (el.text, el.attrib) == (model, {"fallback": "allow"})
        assert attrs(root, "cpu")["match"] == "exact"
        # KubeVirt disables mpx on named x86 models.
        assert attrs(root, "cpu/feature[@name='mpx']") == {"policy": "disable", "name": "mpx"}


def test_cpu_features() -> None:
    features = [{"name": "vmx", "policy": "force"}, {"name": "pcid"},
                {"name": "mpx", "policy": "optional"}, {"name": "x2apic", "policy": ""}]
    root = support.tree(support.vmi(cpu={"model": "Haswell", "features": features}))
    assert [(f.get("name"), f.get("policy")) for f in root.iterfind("cpu/feature")] == [
        ("vmx", "force"), ("pcid", "require"), ("mpx", "optional"), ("x2apic", "require")]


@pytest.mark.parametrize(("cpu", "path"), [
    ({"model": "Sky lake"}, "spec.domain.cpu.model"),
    ({"features": [{"name": "vmx", "policy": "maybe"}]}, "spec.domain.cpu.features[0].policy"),
    ({"features": [{"policy": "require"}]}, "spec.domain.cpu.features[0].name"),
    ({"features": [{"name": "a b"}]}, "spec.domain.cpu.features[0].name"),
    ({"features": [{"name": "vmx"}, {"name": "vmx"}]}, "spec.domain.cpu.features[1].name"),
    ({"features": ["vmx"]}, "spec.domain.cpu.features[0]"),
])
def test_cpu_model_errors(cpu: dict[str, Any], path: str) -> None:
    assert error(support.vmi(cpu=cpu)).path == path


def test_cpu_policy_error_lists_the_policies() -> None:
    exc = error(support.vmi(cpu={"features": [{"name": "vmx", "policy": "maybe"}]}))
    assert "force, require, optional, disable, forbid" in exc.reason


# --- SMBIOS -------------------------------------------------------------------------------------
def test_sysinfo() -> None:
    opts = ConvertOptions(smbios=SMBios(manufacturer="Acme", product="", family="Fam",
                                        version="1.0", sku="S1"))
    root = support.tree(support.vmi(firmware={"serial": "SN-42"},
                                    chassis={"asset": "A-1", "manufacturer": "Box"}), opts)
    assert attrs(root, "sysinfo") == {"type": "smbios"}
    assert {e.get("name"): e.text for e in root.iterfind("sysinfo/system/entry")} == {
        "manufacturer": "Acme", "version": "1.0", "serial": "SN-42", "uuid": UID,
        "sku": "S1", "family": "Fam"}
    assert {e.get("name"): e.text for e in root.iterfind("sysinfo/chassis/entry")} == {
        "manufacturer": "Box", "asset": "A-1"}
    assert attrs(root, "os/smbios") == {"mode": "sysinfo"}


def test_serial_with_control_characters() -> None:
    assert error(support.vmi(firmware={"serial": "a\x01"})).path == "spec.domain.firmware.serial"


# --- OS and firmware ----------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "machine"), [({}, "q35"), ({"machine": {"type": ""}}, "q35"),
                                              ({"machine": {"type": "pc-q35-7.2"}}, "pc-q35-7.2"),
                                              ({"machine": {"type": "pc"}}, "pc")])
def test_machine_type(spec: dict[str, Any], machine: str) -> None:
    root = support.tree(support.vmi(**spec))
    assert attrs(root, "os/type") == {"arch": "x86_64", "machine": machine}
    assert text(root, "os/type") == "hvm"


def test_bios_use_serial() -> None:
    root = support.tree(support.vmi(firmware={"bootloader": {"bios": {"useSerial": True}}}))
    assert attrs(root, "os/bios") == {"useserial": "yes"}
    assert root.find("os/loader") is None


@pytest.mark.parametrize(("efi", "secure", "code", "template"), [
    ({}, "yes", "OVMF_CODE.secboot.fd", "OVMF_VARS.secboot.fd"),
    ({"secureBoot": True, "persistent": False}, "yes", "OVMF_CODE.secboot.fd",
     "OVMF_VARS.secboot.fd"),
    ({"secureBoot": False}, "no", "OVMF_CODE.fd", "OVMF_VARS.fd"),
])
def test_efi(efi: dict[str, Any], secure: str, code: str, template: str) -> None:
    opts = ConvertOptions(ovmf_path="/ovmf", private_dir="/run/kv-private")
    root = support.tree(support.vmi(firmware={"bootloader": {"efi": efi}}), opts)
    assert attrs(root, "os/loader") == {"readonly": "yes", "secure": secure, "type": "pflash"}
    assert text(root, "os/loader") == f"/ovmf/{code}"
    assert attrs(root, "os/nvram") == {"template": f"/ovmf/{template}"}
    assert text(root, "os/nvram") == "/run/kv-private/libvirt/qemu/nvram/testvmi_VARS.fd"
    # Secure boot needs SMM.
    assert (root.find("features/smm") is not None) == (secure == "yes")


@pytest.mark.parametrize("arch", ["aarch64", "arm64"])
def test_aarch64_boots_uefi_without_secure_boot(arch: str) -> None:
    opts = ConvertOptions(arch=arch, ovmf_path="/aavmf")
    root = support.tree(support.vmi(), opts)
    assert attrs(root, "os/type") == {"arch": "aarch64", "machine": "virt"}
    assert text(root, "os/loader") == "/aavmf/AAVMF_CODE.fd"
    assert attrs(root, "os/loader")["secure"] == "no"
    assert root.find("os/smbios") is None
    assert attrs(root, "cpu")["mode"] == "host-passthrough"


def test_kernel_boot() -> None:
    kernel_boot = {"kernelArgs": "console=ttyS0 panic=-1",
                   "container": {"image": "registry/kernel:1", "kernelPath": "/boot/vmlinuz",
                                 "initrdPath": "/boot/initramfs.cpio.gz"}}
    opts = ConvertOptions(container_disk_dir="/run/cd")
    result = support.conversion(support.vmi(firmware={"kernelBoot": kernel_boot}), opts)
    root = ET.fromstring(result.xml)
    assert text(root, "os/kernel") == "/run/cd/kernel-boot/vmlinuz"
    assert text(root, "os/initrd") == "/run/cd/kernel-boot/initramfs.cpio.gz"
    assert text(root, "os/cmdline") == "console=ttyS0 panic=-1"
    assert [p for p in result.preps if isinstance(p, ExistingFile)] == [
        ExistingFile("kernel-boot", "/run/cd/kernel-boot/vmlinuz"),
        ExistingFile("kernel-boot", "/run/cd/kernel-boot/initramfs.cpio.gz")]


@pytest.mark.parametrize(("firmware", "path"), [
    ({"bootloader": {"bios": {}, "efi": {}}}, "spec.domain.firmware.bootloader"),
    ({"bootloader": {"efi": {"persistent": True}}},
     "spec.domain.firmware.bootloader.efi.persistent"),
    ({"bootloader": {"bios": {"useSerial": "yes"}}},
     "spec.domain.firmware.bootloader.bios.useSerial"),
    ({"kernelBoot": {"kernelArgs": "quiet"}}, "spec.domain.firmware.kernelBoot.kernelArgs"),
    ({"kernelBoot": {"container": {"image": "i", "initrdPath": "/initrd"}}},
     "spec.domain.firmware.kernelBoot.container.initrdPath"),
    ({"kernelBoot": {"container": {"image": "i", "kernelPath": "boot/vmlinuz"}}},
     "spec.domain.firmware.kernelBoot.container.kernelPath"),
    ({"kernelBoot": {"container": {"image": "i", "kernelPath": "/boot/../../etc/shadow"}}},
     "spec.domain.firmware.kernelBoot.container.kernelPath"),
    ({"kernelBoot": {"container": {"image": "i", "kernelPath": "/boot/"}}},
     "spec.domain.firmware.kernelBoot.container.kernelPath"),
    ({"kernelBoot": {"container": {"kernelPath": "/vmlinuz"}}},
     "spec.domain.firmware.kernelBoot.container.image"),
    ({"kernelBoot": {"container": {"image": "i"}}}, "spec.domain.firmware.kernelBoot.container"),
])
def test_firmware_errors(firmware: dict[str, Any], path: str) -> None:
    assert error(support.vmi(firmware=firmware)).path == path


def test_aarch64_secure_boot_is_an_error() -> None:
    doc = support.vmi(firmware={"bootloader": {"efi": {"secureBoot": True}}})
    exc = error(doc, ConvertOptions(arch="aarch64"))
    assert exc.path == "spec.domain.firmware.bootloader.efi.secureBoot"


# --- features -----------------------------------------------------------------------------------
OFF = {"state": "off"}


# vmport off on every x86_64 domain: KubeVirt HEAD's HypervisorFeaturesDomainConfigurator.
@pytest.mark.parametrize(("features", "expected"), [
    (None, {"acpi": {}, "vmport": OFF}),
    ({}, {"acpi": {}, "vmport": OFF}),
    ({"acpi": {"enabled": False}, "apic": {}}, {"apic": {}, "vmport": OFF}),
    ({"apic": {"enabled": False}, "smm": {}},
     {"acpi": {}, "smm": {"state": "on"}, "vmport": OFF}),
    ({"kvm": {"hidden": True}, "pvspinlock": {"enabled": False}},
     {"acpi": {}, "kvm": {}, "pvspinlock": {"state": "off"}, "vmport": OFF}),
])
def test_features(features: dict[str, Any] | None, expected: dict[str, dict[str, str]]) -> None:
    spec = {} if features is None else {"features": features}
    root = support.tree(support.vmi(**spec))
    assert {el.tag: el.attrib for el in children(root, "features")} == expected


def test_kvm_hidden() -> None:
    root = support.tree(support.vmi(features={"kvm": {"hidden": True}}))
    assert attrs(root, "features/kvm/hidden") == {"state": "on"}


def test_hyperv() -> None:
    hyperv = {"relaxed": {}, "vapic": {"enabled": True}, "vpindex": {}, "runtime": {},
              "synic": {}, "synictimer": {"direct": {}}, "reset": {"enabled": False},
              "frequencies": {}, "reenlightenment": {}, "tlbflush": {}, "ipi": {},
              "evmcs": {}, "spinlocks": {"spinlocks": 8191},
              "vendorid": {"vendorid": "KubeVirt"}}
    root = support.tree(support.vmi(features={"hyperv": hyperv}))
    el = root.find("features/hyperv")
    assert el is not None
    assert el.get("mode") == "custom"
    states = {child.tag: child.get("state") for child in el}
    assert states == {"relaxed": "on", "vapic": "on", "vpindex": "on", "runtime": "on",
                      "synic": "on", "stimer": "on", "reset": "off", "frequencies": "on",
                      "reenlightenment": "on", "tlbflush": "on", "ipi": "on", "evmcs": "on",
                      "spinlocks": "on", "vendor_id": "on"}
    assert attrs(root, "features/hyperv/spinlocks")["retries"] == "8191"
    assert attrs(root, "features/hyperv/vendor_id")["value"] == "KubeVirt"
    assert attrs(root, "features/hyperv/stimer/direct") == {"state": "on"}


def test_hyperv_defaults_and_passthrough() -> None:
    root = support.tree(support.vmi(features={"hyperv": {"spinlocks": {}}}))
    assert attrs(root, "features/hyperv/spinlocks") == {"state": "on", "retries": "4096"}
    root = support.tree(support.vmi(features={"hypervPassthrough": {"enabled": True}}))
    assert attrs(root, "features/hyperv") == {"mode": "passthrough"}


@pytest.mark.parametrize(("spec", "path"), [
    ({"features": {"hyperv": {"spinlocks": {"spinlocks": 100}}}},
     "spec.domain.features.hyperv.spinlocks.spinlocks"),
    ({"features": {"hyperv": {"vendorid": {}}}}, "spec.domain.features.hyperv.vendorid.vendorid"),
    ({"features": {"hyperv": {"vendorid": {"vendorid": "thirteen-char"}}}},
     "spec.domain.features.hyperv.vendorid.vendorid"),
    ({"features": {"hyperv": {}, "hypervPassthrough": {"enabled": True}}},
     "spec.domain.features.hypervPassthrough"),
    ({"features": {"smm": {"enabled": False}}, "firmware": SECBOOT},
     "spec.domain.features.smm.enabled"),
    ({"features": {"acpi": {"enabled": "no"}}}, "spec.domain.features.acpi.enabled"),
    ({"features": []}, "spec.domain.features"),
])
def test_feature_errors(spec: dict[str, Any], path: str) -> None:
    assert error(support.vmi(**spec)).path == path


# --- clock --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("clock", "expected"), [
    (None, {"offset": "utc"}),
    ({"utc": {}}, {"offset": "utc", "adjustment": "reset"}),
    ({"utc": {"offsetSeconds": -3600}}, {"offset": "utc", "adjustment": "-3600"}),
    ({"timezone": "America/New_York"}, {"offset": "timezone", "timezone": "America/New_York"}),
])
def test_clock(clock: dict[str, Any] | None, expected: dict[str, str]) -> None:
    root = support.tree(support.vmi(**({} if clock is None else {"clock": clock})))
    assert attrs(root, "clock") == expected


def test_timers() -> None:
    # KubeVirt's JSON key is "present" (what its Windows examples set for hpet).
    timer = {"hpet": {"present": False}, "pit": {"tickPolicy": "delay"},
             "rtc": {"tickPolicy": "catchup", "track": "guest"}, "kvm": {"present": False},
             "hyperv": {"present": True}}
    root = support.tree(support.vmi(clock={"utc": {}, "timer": timer}))
    assert [t.attrib for t in root.iterfind("clock/timer")] == [
        {"name": "rtc", "present": "yes", "tickpolicy": "catchup", "track": "guest"},
        {"name": "pit", "present": "yes", "tickpolicy": "delay"},
        {"name": "kvmclock", "present": "no"},
        {"name": "hpet", "present": "no"},
        {"name": "hypervclock", "present": "yes"}]


@pytest.mark.parametrize(("clock", "path"), [
    ({"utc": {}, "timezone": "UTC"}, "spec.domain.clock.timezone"),
    ({"timezone": "Mars Base"}, "spec.domain.clock.timezone"),
    ({"utc": {"offsetSeconds": "1h"}}, "spec.domain.clock.utc.offsetSeconds"),
    ({"timer": {"rtc": {"tickPolicy": "merge"}}}, "spec.domain.clock.timer.rtc.tickPolicy"),
    ({"timer": {"rtc": {"track": "boot"}}}, "spec.domain.clock.timer.rtc.track"),
    ({"timer": {"pit": {"tickPolicy": "merge"}}}, "spec.domain.clock.timer.pit.tickPolicy"),
])
def test_clock_errors(clock: dict[str, Any], path: str) -> None:
    assert error(support.vmi(clock=clock)).path == path


# --- the seed's VMI against the domain KubeVirt produced ----------------------------------------
def test_seed_001_matches_kubevirts_domain_outside_devices() -> None:
    with (DATA / "seed001_vmi.yaml").open() as f:
        doc = yaml.safe_load(f)
    ours = support.tree(copy.deepcopy(doc))
    theirs = ET.parse(DATA / "seed001_domain.xml").getroot()
    for path in ("name", "uuid", "vcpu", "iothreads"):
        assert text(ours, path) == text(theirs, path), path
    assert int(text(ours, "memory") or "") == int(text(theirs, "memory") or "") * 1024
    assert attrs(ours, "cpu/topology") == attrs(theirs, "cpu/topology")
    assert attrs(ours, "sysinfo") == attrs(theirs, "sysinfo")

    def entries(root: ET.Element) -> dict[str | None, str | None]:
        return {e.get("name"): e.text for e in root.iterfind("sysinfo/system/entry")}

    assert entries(ours) == entries(theirs)
    assert attrs(ours, "os/smbios") == attrs(theirs, "os/smbios")
    # + vmport off: KubeVirt HEAD adds it on x86_64; 1.2 (the seed) did not.
    assert [el.tag for el in children(ours, "features")] == ["acpi", "apic", "vmport"]
    assert attrs(ours, "clock") == attrs(theirs, "clock")
    for tag in ("on_poweroff", "on_reboot", "on_crash"):
        assert text(ours, tag) == text(theirs, tag)
    assert kubevirt_metadata(ours)["GracePeriod"] == {"DeletionGracePeriodSeconds": 120}
