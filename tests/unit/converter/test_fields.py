"""launcher/converter/fields.py, the table of every KubeVirt VMI spec field: complete
against KubeVirt's field list (committed, extracted once by hack/kubevirt_fields.py: no
KubeVirt source needed here), README's section generated from it, and true of the
converter, checked generically per entry:

- refused: a VMI setting the field yields a ConversionError naming that field (or, for a
  field inside a refused subtree, a path inside that subtree);
- honoured: some plausible value converts and changes the result (XML or disk
  preparations, or refused <-> converted) compared with the same VMI without the field;
- ignored: plausible values change nothing compared with the VMI without the field.

The plausible values come from the field's Go type (booleans, numbers, empty structs)
unless CASES gives them (enums, names, paths, and the context a field needs: a lun needs
a claim, a cloud-init field a cloud-init volume...). The entries a generic check cannot
cover are listed in EXCEPTIONS with the reason, each checked by its own assertion.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from hack import gen_field_table
from launcher.converter import ConversionError, ConvertOptions, convert, fields

COMMIT, KUBEVIRT = gen_field_table.kubevirt_fields()
TYPES = {line.split("\t")[0]: line.split("\t")[1]
         for line in gen_field_table.KUBEVIRT_FIELDS.read_text().splitlines()
         if line and not line.startswith("#")}

BASE: dict[str, Any] = {
    "apiVersion": "kubevirt.io/v1",
    "kind": "VirtualMachineInstance",
    "metadata": {"name": "testvmi", "namespace": "default",
                 "uid": "7ac26e32-a799-4eec-9a2a-cc8ae86621b0"},
    "spec": {
        "domain": {
            "resources": {"requests": {"memory": "1Gi"}},
            "devices": {"disks": [{"name": "rootdisk", "disk": {"bus": "virtio"}}],
                        "interfaces": [{"name": "default", "masquerade": {}}]},
        },
        "networks": [{"name": "default", "pod": {}}],
        "volumes": [{"name": "rootdisk", "containerDisk": {"image": "example/disk"}}],
    },
}

# Keys of which an object has exactly one: setting one removes the others, so a field
# can be tried on the base VMI's disk, volume, interface and network.
ONE_OF = (
    frozenset({"containerDisk", "persistentVolumeClaim", "dataVolume", "ephemeral",
               "hostDisk", "emptyDisk", "configMap", "secret", "downwardAPI",
               "serviceAccount", "sysprep", "cloudInitNoCloud", "cloudInitConfigDrive",
               "downwardMetrics", "memoryDump", "containerPath"}),
    frozenset({"disk", "cdrom", "lun"}),
    frozenset({"bridge", "masquerade", "slirp", "sriov", "macvtap", "passt", "passtBinding",
               "binding"}),
    frozenset({"pod", "multus", "resourceClaim"}),
    frozenset({"bios", "efi"}),
    frozenset({"utc", "timezone"}),
)

PVC = {"claimName": "claim"}
CLOUD = {"userData": "#cloud-config\n"}
KERNEL = {"container": {"image": "example/kernel", "kernelPath": "/boot/vmlinuz"}}


DEFAULT_OPTS = ConvertOptions()


@dataclass(frozen=True)
class Case:
    """How to try one field: values to set, other fields set in both conversions
    (context), and the options."""

    values: Sequence[Any]
    context: dict[str, Any] = field(default_factory=dict)
    opts: ConvertOptions = DEFAULT_OPTS


def _case(*values: Any, opts: ConvertOptions = DEFAULT_OPTS, **context: Any) -> Case:
    # Context keys are field paths with "." written as "__" (keyword arguments).
    return Case(values, {key.replace("__", "."): value for key, value in context.items()},
                opts)


D, DEV, DISK, IFACE, VOL = ("spec.domain", "spec.domain.devices",
                            "spec.domain.devices.disks[]",
                            "spec.domain.devices.interfaces[]", "spec.volumes[]")
HV = f"{D}.features.hyperv"
X = {f"{DEV}.disks[]": [{"name": "rootdisk", "disk": {"bus": "virtio"}}]}
ONE_GI = 2**30
_BRIDGE: list[dict[str, Any]] = [{"name": "default", "bridge": {}}]
MULTUS_CTX: dict[str, Any] = {"spec.networks[]": [{"name": "default"}], f"{IFACE}": _BRIDGE}
MULTUS_NAD_CTX: dict[str, Any] = {"spec.networks[]": [{"name": "default", "multus": {}}],
                                  f"{IFACE}": _BRIDGE}
SRIOV_CTX: dict[str, Any] = {
    "spec.networks[]": [{"name": "default", "multus": {"networkName": "n"}}],
    f"{IFACE}": [{"name": "default"}]}
MULTUS_DEFAULT_CTX: dict[str, Any] = {
    "spec.networks[]": [{"name": "default", "multus": {"networkName": "n"}}],
    f"{IFACE}": _BRIDGE}

CASES: dict[str, Case] = {
    "spec.startStrategy": _case("Paused"),
    "spec.terminationGracePeriodSeconds": _case(5),
    "spec.hostname": Case(["myhost"], {f"{VOL}.cloudInitNoCloud": CLOUD}),
    "spec.architecture": _case("arm64"),
    "spec.nodeSelector": _case({"kubernetes.io/hostname": "node1"}),
    "spec.affinity": _case({"nodeAffinity": {}}),
    "spec.tolerations[]": _case([{"key": "k", "operator": "Exists"}]),
    "spec.topologySpreadConstraints[]": _case([{"maxSkew": 1, "topologyKey": "zone"}]),
    "spec.evictionStrategy": _case("LiveMigrate"),
    "spec.subdomain": _case("sub"),
    "spec.dnsPolicy": _case("None"),
    "spec.dnsConfig": _case({"nameservers": ["192.0.2.1"]}),
    "spec.priorityClassName": _case("high"),
    "spec.schedulerName": _case("other"),
    "spec.serviceAccountName": _case("account"),
    "spec.networks[].name": _case("default"),
    "spec.networks[].pod.vmNetworkCIDR": _case("10.10.10.0/24"),
    "spec.networks[].pod.vmIPv6NetworkCIDR": _case("fd10::/120"),
    "spec.networks[].multus": _case({"networkName": "n"}, **MULTUS_CTX),
    f"{IFACE}.sriov": _case({}, **SRIOV_CTX),
    "spec.networks[].multus.networkName": _case("net", **MULTUS_NAD_CTX),
    "spec.networks[].multus.default": _case(True, **MULTUS_DEFAULT_CTX),
    "spec.networks[].resourceClaim.claimName": _case("claim"),
    "spec.networks[].resourceClaim.requestName": _case("req"),
    f"{D}.resources.requests": _case({"memory": "2Gi"}, {"memory": "1Gi", "cpu": "4"}),
    f"{D}.resources.limits": _case({"cpu": "4"}),
    f"{D}.cpu.cores": _case(2),
    f"{D}.cpu.sockets": _case(2),
    f"{D}.cpu.threads": _case(2),
    f"{D}.cpu.maxSockets": _case(4),
    f"{D}.cpu.model": _case("Skylake-Client"),
    f"{D}.cpu.features[]": _case([{"name": "vmx"}]),
    f"{D}.cpu.features[].name": _case("vmx"),
    f"{D}.cpu.features[].policy": Case(["disable"], {f"{D}.cpu.features[].name": "vmx"}),
    f"{D}.cpu.dedicatedCpuPlacement": _case(True, opts=ConvertOptions(dedicated_cpus=(2, 3))),
    f"{D}.cpu.isolateEmulatorThread": Case(
        [True], {f"{D}.cpu.dedicatedCpuPlacement": True},
        ConvertOptions(dedicated_cpus=(2, 3, 4))),
    f"{D}.cpu.realtime": Case([{}], {f"{D}.cpu.dedicatedCpuPlacement": True},
                              ConvertOptions(dedicated_cpus=(2, 3))),
    f"{D}.cpu.realtime.mask": Case(["0"], {f"{D}.cpu.dedicatedCpuPlacement": True},
                                   ConvertOptions(dedicated_cpus=(2, 3))),
    f"{D}.memory.hugepages.pageSize": _case("2Mi"),
    f"{D}.memory.hugepages": _case({"pageSize": "2Mi"}),
    f"{D}.memory.guest": _case("2Gi"),
    f"{D}.memory.maxGuest": _case("4Gi", spec__domain__memory__guest="1Gi"),
    f"{D}.memory.reservedOverhead": _case({"addedOverhead": "100Mi"}),
    f"{D}.memory.reservedOverhead.addedOverhead": _case("100Mi"),
    f"{D}.memory.reservedOverhead.memLock": _case("Required"),
    f"{D}.machine.type": _case("pc-q35-8.2"),
    f"{D}.ioThreadsPolicy": _case("auto"),
    f"{D}.ioThreads.supplementalPoolThreadCount": _case(2),
    f"{D}.firmware.uuid": _case("5d307ca9-b3ef-428c-8861-06e72d69f223"),
    f"{D}.firmware.serial": _case("abc"),
    f"{D}.firmware.kernelBoot": _case(KERNEL),
    f"{D}.firmware.kernelBoot.kernelArgs": Case(["console=ttyS0"],
                                                {f"{D}.firmware.kernelBoot": KERNEL}),
    f"{D}.firmware.kernelBoot.container": _case(KERNEL["container"]),
    f"{D}.firmware.kernelBoot.container.kernelPath": Case(
        ["/boot/vmlinuz"], {f"{D}.firmware.kernelBoot.container": {"image": "k"}}),
    f"{D}.firmware.kernelBoot.container.initrdPath": Case(
        ["/boot/initrd"], {f"{D}.firmware.kernelBoot": KERNEL}),
    f"{D}.firmware.kernelBoot.container.image": Case(
        ["example/kernel", "example/other"],
        {f"{D}.firmware.kernelBoot.container.kernelPath": "/boot/vmlinuz"}),
    f"{D}.firmware.kernelBoot.container.imagePullSecret": Case(
        ["pull"], {f"{D}.firmware.kernelBoot": KERNEL}),
    f"{D}.firmware.kernelBoot.container.imagePullPolicy": Case(
        ["Always"], {f"{D}.firmware.kernelBoot": KERNEL}),
    f"{D}.firmware.acpi": Case([{"slicNameRef": "tables"}],
                               {"spec.volumes": [*BASE["spec"]["volumes"],
                                                 {"name": "tables", "secret": {}}]}),
    f"{D}.firmware.acpi.slicNameRef": Case(["tables"], {
        "spec.volumes": [*BASE["spec"]["volumes"], {"name": "tables", "secret": {}}]}),
    f"{D}.firmware.acpi.msdmNameRef": _case("tables"),
    f"{D}.clock.utc.offsetSeconds": _case(60),
    f"{D}.clock.timezone": _case("Europe/Berlin"),
    f"{D}.clock.timer.hpet.tickPolicy": _case("delay"),
    f"{D}.clock.timer.pit.tickPolicy": _case("discard"),
    f"{D}.clock.timer.rtc.tickPolicy": _case("catchup"),
    f"{D}.clock.timer.rtc.track": _case("guest"),
    f"{HV}.spinlocks.spinlocks": _case(8191),
    f"{HV}.vendorid": _case({"vendorid": "myvendor"}),
    f"{HV}.vendorid.enabled": Case([False], {f"{HV}.vendorid.vendorid": "myvendor"}),
    f"{HV}.vendorid.vendorid": _case("myvendor"),
    f"{D}.features.kvm.hidden": _case(True),
    f"{D}.chassis.manufacturer": _case("ACME"),
    f"{D}.chassis.version": _case("1"),
    f"{D}.chassis.serial": _case("s"),
    f"{D}.chassis.asset": _case("a"),
    f"{D}.chassis.sku": _case("k"),
    f"{D}.rebootPolicy": _case("Terminate"),
    f"{DISK}.name": _case("rootdisk"),
    f"{DISK}.disk.bus": _case("sata"),
    f"{DISK}.disk.readonly": _case(True),
    f"{DISK}.disk.pciAddress": _case("0000:00:0a.0"),
    f"{DISK}.lun": Case([{}], {f"{VOL}.persistentVolumeClaim": PVC}),
    f"{DISK}.lun.bus": Case(["scsi"], {f"{VOL}.persistentVolumeClaim": PVC}),
    f"{DISK}.lun.readonly": Case([True], {f"{VOL}.persistentVolumeClaim": PVC}),
    f"{DISK}.lun.reservation": Case([True], {f"{VOL}.persistentVolumeClaim": PVC}),
    f"{DISK}.cdrom.bus": _case("scsi"),
    f"{DISK}.cdrom.readonly": _case(False),
    f"{DISK}.cdrom.tray": _case("open"),
    f"{DISK}.serial": _case("SERIAL1"),
    f"{DISK}.cache": _case("writethrough"),
    f"{DISK}.io": _case("native"),
    f"{DISK}.tag": _case("root"),
    f"{DISK}.blockSize.custom": _case({"logical": 512, "physical": 4096}),
    f"{DISK}.blockSize.custom.logical": Case([512], {f"{DISK}.blockSize.custom.physical":
                                                     4096}),
    f"{DISK}.blockSize.custom.physical": Case([4096], {f"{DISK}.blockSize.custom.logical":
                                                       512}),
    f"{DISK}.blockSize.custom.discardGranularity": Case(
        [4096], {f"{DISK}.blockSize.custom": {"logical": 512, "physical": 4096}}),
    f"{DISK}.errorPolicy": _case("report"),
    f"{DEV}.watchdog": _case({"name": "wd", "i6300esb": {}}),
    f"{DEV}.watchdog.name": Case(["wd"], {f"{DEV}.watchdog.i6300esb": {}}),
    f"{DEV}.watchdog.i6300esb": Case([{}], {f"{DEV}.watchdog.name": "wd"}),
    f"{DEV}.watchdog.i6300esb.action": Case(["poweroff"], {f"{DEV}.watchdog.name": "wd"}),
    f"{DEV}.watchdog.diag288.action": _case("reset"),
    f"{IFACE}.name": _case("default"),
    f"{IFACE}.model": _case("e1000"),
    f"{IFACE}.binding": Case([{"name": "plugin"}], {},
                             ConvertOptions(interface_attachment={"default": "tap"})),
    f"{IFACE}.binding.name": Case(["plugin"], {},
                                  ConvertOptions(interface_attachment={"default": "tap"})),
    f"{IFACE}.ports[]": _case([{"port": 80}]),
    f"{IFACE}.ports[].name": _case("http"),
    f"{IFACE}.ports[].protocol": _case("TCP"),
    f"{IFACE}.ports[].port": _case(80),
    f"{IFACE}.portRanges[]": _case([{"start": 80, "end": 90}]),
    f"{IFACE}.portRanges[].protocol": _case("TCP"),
    f"{IFACE}.portRanges[].start": _case(80),
    f"{IFACE}.portRanges[].end": _case(90),
    f"{IFACE}.macAddress": _case("02:00:00:00:00:01"),
    f"{IFACE}.bootOrder": _case(2),
    f"{IFACE}.pciAddress": _case("0000:00:0b.0"),
    f"{IFACE}.dhcpOptions.bootFileName": _case("boot"),
    f"{IFACE}.dhcpOptions.tftpServerName": _case("tftp"),
    f"{IFACE}.dhcpOptions.ntpServers[]": _case(["192.0.2.1"]),
    f"{IFACE}.dhcpOptions.privateOptions[].option": _case(240),
    f"{IFACE}.dhcpOptions.privateOptions[].value": _case("x"),
    f"{IFACE}.tag": _case("nic"),
    f"{IFACE}.acpiIndex": _case(3),
    f"{IFACE}.state": _case("down"),
    f"{DEV}.inputs[]": _case([{"type": "tablet", "name": "tablet0"}]),
    f"{DEV}.inputs[].bus": Case(["virtio"], {f"{DEV}.inputs[]": [{"type": "tablet",
                                                                  "name": "tablet0"}]}),
    f"{DEV}.inputs[].type": Case(["tablet", "keyboard"], {f"{DEV}.inputs[].name": "i0"}),
    f"{DEV}.inputs[].name": Case(["tablet0"], {f"{DEV}.inputs[].type": "tablet"}),
    f"{DEV}.autoattachPodInterface": _case(False, spec__networks=[],
                                           spec__domain__devices__interfaces=[]),
    f"{DEV}.autoattachVSOCK": _case(True, status__VSOCKCID=3),
    f"{DEV}.gpus[].name": _case("gpu"),
    f"{DEV}.gpus[].deviceName": _case("nvidia.com/GP102"),
    f"{DEV}.gpus[].claimName": _case("claim"),
    f"{DEV}.gpus[].requestName": _case("req"),
    f"{DEV}.gpus[].tag": _case("gpu"),
    f"{DEV}.hostDevices[].name": _case("dev"),
    f"{DEV}.hostDevices[].deviceName": _case("vendor.com/dev"),
    f"{DEV}.hostDevices[].claimName": _case("claim"),
    f"{DEV}.hostDevices[].requestName": _case("req"),
    f"{DEV}.hostDevices[].tag": _case("dev"),
    f"{DEV}.filesystems[].name": _case("fs"),
    f"{DEV}.sound.name": _case("audio"),
    f"{DEV}.sound.model": _case("ich9"),
    f"{DEV}.panicDevices[].model": _case("hyperv"),
    f"{DEV}.video.type": _case("virtio"),
    f"{DEV}.video": _case({"type": "virtio"}),
    f"{VOL}.name": _case("rootdisk"),
    f"{VOL}.hostDisk": _case({"path": "/data/disk.img", "type": "Disk"}),
    f"{VOL}.hostDisk.path": Case(["/data/disk.img"], {f"{VOL}.hostDisk.type": "Disk"}),
    f"{VOL}.hostDisk.type": Case(["Disk"], {f"{VOL}.hostDisk.path": "/data/disk.img"}),
    f"{VOL}.hostDisk.capacity": Case(["1Gi"], {f"{VOL}.hostDisk": {
        "path": "/data/disk.img", "type": "DiskOrCreate"}}),
    f"{VOL}.hostDisk.shared": Case([True], {f"{VOL}.hostDisk": {"path": "/data/disk.img",
                                                                "type": "Disk"}}),
    f"{VOL}.persistentVolumeClaim": _case(PVC),
    f"{VOL}.persistentVolumeClaim.claimName": _case("claim", "other"),
    f"{VOL}.persistentVolumeClaim.readOnly": Case([True, False],
                                                  {f"{VOL}.persistentVolumeClaim": PVC}),
    f"{VOL}.persistentVolumeClaim.hotpluggable": Case(
        [True, False], {f"{VOL}.persistentVolumeClaim": PVC}),
    f"{VOL}.sysprep": _case({"configMap": {"name": "unattend"}}),
    f"{VOL}.sysprep.secret": _case({"name": "unattend"}),
    f"{VOL}.sysprep.configMap": _case({"name": "unattend"}),
    f"{VOL}.containerDisk": _case({"image": "example/disk"}),
    f"{VOL}.containerDisk.image": _case("example/disk", "example/other"),
    f"{VOL}.containerDisk.imagePullSecret": _case("pull"),
    f"{VOL}.containerDisk.path": _case("/disk/disk.img"),
    f"{VOL}.containerDisk.imagePullPolicy": _case("Always"),
    f"{VOL}.ephemeral": _case({"persistentVolumeClaim": PVC}),
    f"{VOL}.ephemeral.persistentVolumeClaim": _case(PVC),
    f"{VOL}.emptyDisk": _case({"capacity": "1Gi"}),
    f"{VOL}.emptyDisk.capacity": _case("1Gi"),
    f"{VOL}.dataVolume": _case({"name": "dv"}),
    f"{VOL}.dataVolume.name": _case("dv", "other"),
    f"{VOL}.dataVolume.hotpluggable": Case([True, False], {f"{VOL}.dataVolume.name": "dv"}),
    f"{VOL}.configMap.name": _case("cm"),
    f"{VOL}.configMap.optional": _case(True),
    f"{VOL}.configMap.volumeLabel": _case("OEMDRV"),
    f"{VOL}.secret.secretName": _case("s"),
    f"{VOL}.secret.optional": _case(True),
    f"{VOL}.secret.volumeLabel": _case("OEMDRV"),
    f"{VOL}.downwardAPI.fields[]": _case([{"path": "labels",
                                           "fieldRef": {"fieldPath": "metadata.labels"}}]),
    f"{VOL}.downwardAPI.volumeLabel": _case("OEMDRV"),
    f"{VOL}.serviceAccount.serviceAccountName": _case("default", "other"),
    f"{VOL}.memoryDump.claimName": _case("claim"),
    f"{VOL}.containerPath.path": _case("/data"),
    "spec.accessCredentials[].sshPublicKey.source.secret.secretName": _case("keys"),
    "spec.accessCredentials[].sshPublicKey.propagationMethod.qemuGuestAgent.users[]":
        _case(["root"]),
    "spec.accessCredentials[].userPassword.source.secret.secretName": _case("pw"),
    f"{D}.launchSecurity.sev.session": _case("s"),
    f"{D}.launchSecurity.sev.dhCert": _case("c"),
    "spec.resourceClaims[].name": _case("claim"),
    "spec.resourceClaims[].resourceClaimName": _case("claim"),
    "spec.resourceClaims[].resourceClaimTemplateName": _case("tmpl"),
    "spec.utilityVolumes[].name": _case("dump"),
    "spec.utilityVolumes[].claimName": _case("claim"),
    "spec.utilityVolumes[].type": _case("MemoryDump"),
    **{f"{VOL}.{kind}.{key}": Case([value], {f"{VOL}.{kind}": {"networkData": "version: 2\n"}
                                             if key.startswith(("userData", "secretRef"))
                                             else CLOUD})
       for kind in ("cloudInitNoCloud", "cloudInitConfigDrive")
       for key, value in (("userData", "#cloud-config\n"),
                          ("userDataBase64", "I2Nsb3VkLWNvbmZpZwo="),
                          ("secretRef", {"name": "userdata"}),
                          ("networkData", "version: 2\n"),
                          ("networkDataBase64", "dmVyc2lvbjogMgo="),
                          ("networkDataSecretRef", {"name": "netdata"}))},
    **{f"{VOL}.{kind}": _case(CLOUD) for kind in ("cloudInitNoCloud", "cloudInitConfigDrive")},
}

# Entries no generic check covers, with the reason; each is asserted below.
EXCEPTIONS = {
    f"{DISK}.lun.bus": "scsi is the only lun bus and the default: setting it changes "
                       "nothing, another bus is refused (test_lun_bus)",
    "spec.architecture": "a check, not a setting: the launcher's own architecture changes "
                         "nothing, another is refused (test_architecture)",
}
# Honoured structs whose fields carry the behaviour: set empty, they change nothing
# (their defaults are the domain's defaults); each of their fields is checked itself.
CONTAINERS_BY_FIELDS = "a struct honoured through its fields, each checked on its own"


def _steps(path: str) -> list[tuple[str, bool]]:
    return [(part.removesuffix("[]"), part.endswith("[]")) for part in path.split(".")]


def _put(obj: dict[str, Any], key: str, value: Any) -> None:
    for group in ONE_OF:
        if key in group:
            for other in group - {key}:
                obj.pop(other, None)
    obj[key] = value


def set_field(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set `path` (a table path; `[]` is element 0, created when missing) in `doc`."""
    node: Any = doc
    steps = _steps(path)
    for key, listed in steps[:-1]:
        if listed:
            items = node.get(key)
            if not isinstance(items, list) or not items:
                _put(node, key, [{}])
            node = node[key][0]
        else:
            if not isinstance(node.get(key), dict):
                _put(node, key, {})
            node = node[key]
    _put(node, steps[-1][0], value)


def unset_field(doc: dict[str, Any], path: str) -> None:
    """The VMI without `path`, its parents kept."""
    set_field(doc, path, None)
    node: Any = doc
    for key, listed in _steps(path)[:-1]:
        node = node[key][0] if listed else node[key]
    node.pop(_steps(path)[-1][0], None)


def outcome(doc: dict[str, Any], opts: ConvertOptions) -> tuple[Any, ...]:
    try:
        result = convert(doc, opts)
    except ConversionError as exc:
        return ("error", exc.path, exc.reason)
    return ("ok", result.xml, result.preps)


def normal(path: str) -> str:
    """A path with list indices and `[]` dropped: spec.volumes[0].name -> spec.volumes.name."""
    return re.sub(r"\[\d*\]", "", path)


def has_children(path: str) -> bool:
    return any(p.startswith(path + ".") for p in KUBEVIRT)


def generic_values(path: str) -> list[Any]:
    """Values of the field's Go type; a refused boolean is only tried turned on (false is
    KubeVirt's "off", which the converter accepts)."""
    gotype = TYPES[path]
    if gotype.startswith("[]"):
        return [[{}]] if gotype[2:3].isupper() or "." in gotype else [["x"]]
    base = gotype.lstrip("*")
    if base == "bool":
        return [True] if _status(path) == fields.REFUSED else [True, False]
    if re.fullmatch(r"u?int(8|16|32|64)?", base):
        return [1, 4096]
    if base == "string":
        return ["x"]
    if base in ("resource.Quantity",):
        return ["1Gi"]
    return [{}]


def case_of(path: str) -> Case:
    return CASES.get(path) or Case(generic_values(path))


def runs(path: str) -> list[tuple[Any, tuple[Any, ...], tuple[Any, ...]]]:
    """For each value: (value, outcome with it, outcome without the field)."""
    case = case_of(path)
    base = copy.deepcopy(BASE)
    for key, value in case.context.items():
        set_field(base, key, copy.deepcopy(value))
    without = copy.deepcopy(base)
    unset_field(without, path)
    before = outcome(without, case.opts)
    out = []
    for value in case.values:
        doc = copy.deepcopy(base)
        set_field(doc, path, copy.deepcopy(value))
        out.append((value, outcome(doc, case.opts), before))
    return out


def _status(path: str) -> str:
    entry = fields.covering(path)
    assert entry is not None
    return entry.status


# --- the table against KubeVirt's list and the README -----------------------------------
def test_field_list_notes_the_kubevirt_commit() -> None:
    assert re.fullmatch(r"[0-9a-f]{40}", COMMIT), COMMIT
    assert len(KUBEVIRT) == len(set(KUBEVIRT)) > 300


def test_every_kubevirt_field_is_in_the_table() -> None:
    missing = [path for path in KUBEVIRT if fields.covering(path) is None]
    assert missing == []


def test_every_table_entry_is_a_kubevirt_field() -> None:
    paths = [entry.path for entry in fields.FIELDS]
    assert len(paths) == len(set(paths)), "duplicate entries"
    assert [path for path in paths if path not in KUBEVIRT] == []
    for entry in fields.FIELDS:
        assert entry.status in (fields.HONOURED, fields.REFUSED, fields.IGNORED), entry
        assert entry.reason, entry
        if entry.subtree:
            assert has_children(entry.path) or TYPES[entry.path].startswith(
                ("[]", "*")), entry


def test_readme_section_is_up_to_date() -> None:
    readme = gen_field_table.README.read_text()
    assert gen_field_table.replace(readme, gen_field_table.section()) == readme, \
        "run: python3 -m hack.gen_field_table"


def test_cases_name_kubevirt_fields() -> None:
    for path in (*CASES, *EXCEPTIONS):
        assert path in KUBEVIRT, path
    for case in CASES.values():
        for key in case.context:
            assert normal(key).split(".")[0] in ("spec", "status"), key


# --- the table against the converter --------------------------------------------------
REFUSED = [p for p in KUBEVIRT if _status(p) == fields.REFUSED and p not in EXCEPTIONS]
HONOURED = [p for p in KUBEVIRT if _status(p) == fields.HONOURED and p not in EXCEPTIONS]
IGNORED = [p for p in KUBEVIRT if _status(p) == fields.IGNORED and p not in EXCEPTIONS]


@pytest.mark.parametrize("path", REFUSED)
def test_refused_field_names_itself(path: str) -> None:
    entry = fields.covering(path)
    assert entry is not None
    for value, result, _ in runs(path):
        assert result[0] == "error", f"{path}={value!r} converted"
        # The field itself, or (inside a refused subtree) a field of that subtree.
        scope = normal(entry.path) if entry.subtree else normal(path)
        got = normal(result[1])
        assert got == scope or got.startswith(scope + ".") or (
            entry.subtree and normal(path).startswith(got) and
            got.startswith(scope)), f"{path}={value!r}: {result[1]}: {result[2]}"


@pytest.mark.parametrize("path", HONOURED)
def test_honoured_field_changes_the_domain(path: str) -> None:
    results = runs(path)
    changed = [(value, result) for value, result, before in results
               if result[0] == "ok" and result != before]
    if not changed and has_children(path) and path not in CASES:
        # CONTAINERS_BY_FIELDS
        children = [p for p in KUBEVIRT if p.startswith(path + ".")]
        assert any(_status(p) == fields.HONOURED for p in children), path
        return
    assert changed, f"{path}: no value changed the result: " + "; ".join(
        f"{value!r} -> {result[:1] + tuple(str(r)[:200] for r in result[1:2])}"
        f"{' ' + str(result[2]) if result[0] == 'error' else ''}"
        for value, result, _ in results)


@pytest.mark.parametrize("path", IGNORED)
def test_ignored_field_changes_nothing(path: str) -> None:
    results = runs(path)
    for value, result, before in results:
        assert result[0] == "ok", f"{path}={value!r}: {result}"
        if before[0] == "error":
            # A field the converter requires but does not use (an image, a claim name, one
            # of sysprep's configMap / secret): without it the VMI is refused naming it
            # or the object that needs it; any value gives the same domain.
            assert normal(path).startswith(normal(before[1])), (path, before)
            continue
        assert result == before, f"{path}={value!r} changed the domain"
    assert len({r[1] for _, r, _ in results if r[0] == "ok"}) <= 1


def test_architecture() -> None:
    doc = copy.deepcopy(BASE)
    plain = outcome(doc, ConvertOptions())
    for same in ("amd64", "x86_64"):
        doc["spec"]["architecture"] = same
        assert outcome(doc, ConvertOptions()) == plain
    doc["spec"]["architecture"] = "arm64"
    with pytest.raises(ConversionError, match="not this launcher's architecture") as exc:
        convert(doc, ConvertOptions())
    assert exc.value.path == "spec.architecture"
    assert outcome(doc, ConvertOptions(arch="aarch64"))[0] == "ok"


def test_lun_bus() -> None:
    case = Case(["scsi"], {f"{VOL}.persistentVolumeClaim": PVC})
    base = copy.deepcopy(BASE)
    for key, value in case.context.items():
        set_field(base, key, value)
    set_field(base, f"{DISK}.lun", {})
    plain = outcome(base, ConvertOptions())
    assert plain[0] == "ok" and "device=\"lun\"" in plain[1]
    set_field(base, f"{DISK}.lun.bus", "scsi")
    assert outcome(base, ConvertOptions()) == plain
    set_field(base, f"{DISK}.lun.bus", "virtio")
    assert outcome(base, ConvertOptions())[:2] == (
        "error", "spec.domain.devices.disks[0].lun.bus")
