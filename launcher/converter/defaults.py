"""KubeVirt's admission defaults for a STANDALONE_VMI (pure).

In a cluster every VMI passes virt-api's mutating webhook before virt-handler sends it to
the launcher (pkg/virt-api/webhooks/mutating-webhook/mutators/vmi-mutator.go ->
pkg/defaults SetDefaultVirtualMachineInstance, v1.SetObjectDefaults_VirtualMachineInstance).
A STANDALONE_VMI never did, so the launcher applies the same defaults to it before
converting; a VMI received over SyncVirtualMachine came through the webhook and is not
touched. `apply` returns a defaulted copy; anything of the wrong shape is left alone for
the converter to refuse naming the field.

Applied, with KubeVirt's default cluster configuration:
- spec.architecture: the launcher's (amd64 / arm64);
- spec.domain.machine.type: q35 (amd64), virt (arm64);
- resources.requests.cpu from resources.limits.cpu when only the limit is set;
- spec.domain.memory.guest from requests.memory, else limits.memory, else the hugepage
  size;
- spec.domain.cpu sockets/cores/threads: sockets from the CPU limit, else the request
  (else 1), cores = threads = 1, when none is set; cpu.model host-model
  (host-passthrough on arm64);
- the pod network: interface "default" (bridge) on network "default" (pod) when there are
  neither interfaces nor networks and autoattachPodInterface is not false;
- a disk for every volume without a disk or filesystem of its name
  (util.SetDefaultVolumeDisk), a disk with no target type becomes `disk: {}`;
- disk, cdrom and lun buses left empty: sata on amd64, virtio on arm64; cdrom readOnly
  true and tray closed; inputs bus usb, type tablet;
- arm64: UEFI (secureBoot false) when no bootloader is set;
- watchdog i6300esb action reset (amd64);
- Hyper-V dependencies (SetHypervFeatureDependencies): synic, ipi and tlbflush turn on
  vpindex, synictimer turns on synic, evmcs turns on vapic and requires the vmx CPU
  feature, each only when the user did not set the dependency;
- spec.domain.features.hyperv.spinlocks.spinlocks 4096 when enabled without a count.

Not applied: the cluster-configured ones with no cluster here (vCPU / memory hotplug
maxima under the LiveUpdate rollout strategy, a cluster CPU model or CPU request, eviction
strategy, presets), the random firmware UUID (the converter derives a stable one) and
status fields (the converter does not read them).
"""

from __future__ import annotations

import copy
from decimal import ROUND_CEILING
from typing import Any

from launcher.converter.spec import parse_quantity

ARM64 = ("arm64", "aarch64")
HYPERV_REQUIRES = (("evmcs", "vapic"), ("ipi", "vpindex"), ("tlbflush", "vpindex"),
                   ("synictimer", "synic"), ("synic", "vpindex"))  # leaves first, as KubeVirt


def _obj(parent: dict[str, Any], key: str) -> dict[str, Any] | None:
    """parent[key] as an object, created when absent; None when it is something else."""
    value = parent.get(key)
    if value is None:
        value = parent[key] = {}
    return value if isinstance(value, dict) else None


def _list(parent: dict[str, Any], key: str) -> list[Any]:
    value = parent.get(key)
    return value if isinstance(value, list) else []


def apply(vmi: Any, arch: str) -> Any:
    """A defaulted copy of `vmi` for a guest of architecture `arch` (Go or libvirt name)."""
    if not isinstance(vmi, dict):
        return vmi
    doc = copy.deepcopy(vmi)
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return doc
    given = spec.get("architecture")
    arm = (given if isinstance(given, str) and given else arch) in ARM64
    spec.setdefault("architecture", "arm64" if arm else "amd64")
    domain = spec.get("domain")
    if not isinstance(domain, dict):
        return doc
    _machine(domain, arm)
    _resources(domain)
    _cpu(domain, arm)
    devices = _obj(domain, "devices")
    if devices is not None:
        _network(spec, devices)
        _volume_disks(spec, devices)
        _disks(devices, "virtio" if arm else "sata")
        _inputs(devices)
        if not arm:
            _watchdog(devices)
    if arm:
        _arm_firmware(domain)
    _hyperv(domain)
    return doc


def _machine(domain: dict[str, Any], arm: bool) -> None:
    machine = _obj(domain, "machine")
    if machine is not None and not machine.get("type"):
        machine["type"] = "virt" if arm else "q35"


def _quantity(section: Any, key: str) -> Any:
    return section.get(key) if isinstance(section, dict) else None


def _resources(domain: dict[str, Any]) -> None:
    resources = domain.get("resources")
    if not isinstance(resources, dict):
        return
    requests, limits = resources.get("requests"), resources.get("limits")
    limit_cpu = _quantity(limits, "cpu")
    if limit_cpu is not None and _quantity(requests, "cpu") is None:
        requests = _obj(resources, "requests")
        if requests is not None:
            requests["cpu"] = limit_cpu
    memory = _obj(domain, "memory")
    if memory is None or memory.get("guest") is not None:
        return
    for value in (_quantity(requests, "memory"), _quantity(limits, "memory")):
        if value is not None:
            memory["guest"] = value
            return
    hugepages = memory.get("hugepages")
    if isinstance(hugepages, dict) and hugepages.get("pageSize") is not None:
        memory["guest"] = hugepages["pageSize"]


def _cpus(value: Any) -> int | None:
    """resource.Quantity.Value() of a CPU quantity, None when unreadable."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    try:
        return int(parse_quantity(str(value)).to_integral_value(rounding=ROUND_CEILING))
    except (ValueError, ArithmeticError):
        return None


def _cpu(domain: dict[str, Any], arm: bool) -> None:
    cpu = _obj(domain, "cpu")
    if cpu is None:
        return
    if not any(cpu.get(key) for key in ("sockets", "cores", "threads")):
        resources = domain.get("resources")
        limits = resources.get("limits") if isinstance(resources, dict) else None
        requests = resources.get("requests") if isinstance(resources, dict) else None
        sockets = 1
        for section in (limits, requests):
            if isinstance(section, dict) and "cpu" in section:
                sockets = _cpus(section["cpu"]) or 0
                break
        if sockets:  # a CPU quantity the converter cannot read is its to refuse
            cpu.update(sockets=sockets, cores=1, threads=1)
    if not cpu.get("model"):
        cpu["model"] = "host-passthrough" if arm else "host-model"


def _network(spec: dict[str, Any], devices: dict[str, Any]) -> None:
    if devices.get("autoattachPodInterface") is False:
        return
    if spec.get("networks") or devices.get("interfaces"):
        return
    devices["interfaces"] = [{"name": "default", "bridge": {}}]
    spec["networks"] = [{"name": "default", "pod": {}}]


def _names(items: list[Any]) -> set[str]:
    return {item["name"] for item in items if isinstance(item, dict)
            and isinstance(item.get("name"), str)}


def _volume_disks(spec: dict[str, Any], devices: dict[str, Any]) -> None:
    disks = devices.get("disks")
    if disks is not None and not isinstance(disks, list):
        return
    known = _names(disks or []) | _names(_list(devices, "filesystems"))
    added = [{"name": name} for name in (
        volume.get("name") for volume in _list(spec, "volumes") if isinstance(volume, dict))
        if isinstance(name, str) and name not in known]
    if added:
        devices["disks"] = [*(disks or []), *added]


def _disks(devices: dict[str, Any], bus: str) -> None:
    for disk in _list(devices, "disks"):
        if not isinstance(disk, dict):
            continue
        if all(disk.get(key) is None for key in ("disk", "cdrom", "lun")):
            disk["disk"] = {}
        for key in ("disk", "cdrom", "lun"):
            target = disk.get(key)
            if isinstance(target, dict) and not target.get("bus"):
                target["bus"] = bus
        cdrom = disk.get("cdrom")
        if isinstance(cdrom, dict):
            cdrom.setdefault("readonly", True)
            if not cdrom.get("tray"):
                cdrom["tray"] = "closed"


def _inputs(devices: dict[str, Any]) -> None:
    for item in _list(devices, "inputs"):
        if isinstance(item, dict):
            if not item.get("bus"):
                item["bus"] = "usb"
            if not item.get("type"):
                item["type"] = "tablet"


def _watchdog(devices: dict[str, Any]) -> None:
    watchdog = devices.get("watchdog")
    if not isinstance(watchdog, dict):
        return
    esb = _obj(watchdog, "i6300esb")
    if esb is not None and not esb.get("action"):
        esb["action"] = "reset"


def _arm_firmware(domain: dict[str, Any]) -> None:
    firmware = _obj(domain, "firmware")
    if firmware is None:
        return
    bootloader = firmware.get("bootloader")
    if bootloader is None:
        bootloader = firmware["bootloader"] = {"efi": {}}
    efi = bootloader.get("efi") if isinstance(bootloader, dict) else None
    if isinstance(efi, dict) and efi.get("secureBoot") is None:
        efi["secureBoot"] = False


def _enabled(state: Any) -> bool | None:
    """A FeatureState's enabled (default true when the state is set), None when unset."""
    if not isinstance(state, dict):
        return None
    value = state.get("enabled", True)
    return value if isinstance(value, bool) else None


def _hyperv(domain: dict[str, Any]) -> None:
    features = domain.get("features")
    hyperv = features.get("hyperv") if isinstance(features, dict) else None
    if not isinstance(hyperv, dict):
        return
    for feature, requires in HYPERV_REQUIRES:
        dependency = hyperv.get(requires)
        # Only a dependency the user left unset is turned on; one set to false stays
        # (virt-api's validation would refuse the VMI; here the converter passes it on).
        if _enabled(hyperv.get(feature)) and (
                dependency is None or (isinstance(dependency, dict)
                                       and "enabled" not in dependency)):
            hyperv[requires] = {**(dependency or {}), "enabled": True}
    spinlocks = hyperv.get("spinlocks")
    if _enabled(spinlocks) and isinstance(spinlocks, dict) and spinlocks.get("spinlocks") is None:
        spinlocks["spinlocks"] = 4096
    if _enabled(hyperv.get("evmcs")):
        cpu = _obj(domain, "cpu")
        features_list = cpu.get("features") if cpu is not None else None
        if cpu is None or (features_list is not None and not isinstance(features_list, list)):
            return
        features_list = features_list or []
        for feature in features_list:
            if isinstance(feature, dict) and feature.get("name") == "vmx":
                feature["policy"] = "require"
                break
        else:
            features_list.append({"name": "vmx", "policy": "require"})
        cpu["features"] = features_list
