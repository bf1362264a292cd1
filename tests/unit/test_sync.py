"""launcher.vm.sync's pure parts: VirtualMachineOptions -> ConvertOptions, the KVM probe (fake
cpuinfo text, fake devices), STANDALONE_VMI parsing and identity, the restart diff; and the
Syncer's decisions against a scripted fake libvirt (what test:///default cannot do: a start
that fails, and the roll-back that must follow)."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import libvirt
import pytest

from launcher import flags
from launcher._proto.kubevirt.cmd.v1 import cmd_pb2
from launcher.converter import (
    ClusterConfig,
    Conversion,
    ConversionError,
    ConvertOptions,
    DiskInfo,
    SMBios,
    defaults,
)
from launcher.converter.plan import ExistingFile, Prep
from launcher.libvirt.connection import Connection
from launcher.paths import derive
from launcher.vm.errors import StandaloneError, SyncAborted, SyncError
from launcher.vm.identity import uid_mismatch
from launcher.vm.kvm import cpu_virt_missing, kvm_device_problem, kvm_usable, use_emulation
from launcher.vm.options import disk_directories, options_from_request, pod_cpus
from launcher.vm.standalone import adopt_identity, parse_standalone
from launcher.vm.sync import Syncer
from launcher.vm.xmldiff import keep_generated_macs, restart_needed

ARGS = ["--runtime-root", "/tmp/pvl-u", "--name", "vm1", "--namespace", "ns1", "--uid", "u-1"]
OPTS = flags.parse(ARGS, environ={})
PATHS = derive(OPTS)

CPUINFO_VMX = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme de pse tsc msr pae mce vmx sse sse2 hypervisor
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu vme de pse tsc msr pae mce vmx sse sse2 hypervisor
"""
CPUINFO_SVM = "processor : 0\nflags : fpu svm lm\n"
CPUINFO_PVM = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae hypervisor lm\n"


# --- options -----------------------------------------------------------------------------------
def test_no_options_means_defaults_with_the_launchers_dirs() -> None:
    got = options_from_request(None, opts=OPTS, paths=PATHS, emulation=True, arch="x86_64")
    assert got == ConvertOptions(
        emulation=True, hypervisor="kvm", arch="x86_64", ovmf_path="/usr/share/OVMF",
        private_dir="/tmp/pvl-u/var/run/kubevirt-private",
        ephemeral_disk_dir="/tmp/pvl-u/var/run/kubevirt-ephemeral-disks",
        container_disk_dir="/tmp/pvl-u/var/run/kubevirt/container-disks",
        hotplug_disk_dir="/tmp/pvl-u/var/run/kubevirt/hotplug-disks",
        # block-mode PVCs and the service account token, re-rooted like every path
        block_device_dir="/tmp/pvl-u/dev",
        service_account_dir="/tmp/pvl-u/var/run/secrets/kubernetes.io/serviceaccount")
    assert got.mem_balloon_stats_period == 10
    assert got.smbios == SMBios()
    assert got.dedicated_cpus == ()
    assert pod_cpus() == tuple(sorted(os.sched_getaffinity(0)))


def test_every_virtual_machine_option_is_mapped() -> None:
    sent = cmd_pb2.VirtualMachineOptions(
        VirtualMachineSMBios=cmd_pb2.SMBios(manufacturer="Acme", product="P", version="1.0",
                                            sku="S", family="F"),
        MemBalloonStatsPeriod=0,
        PreallocatedVolumes=["pvc1", "dv2"],
        DisksInfo={"containerdisk": cmd_pb2.DiskInfo(format="qcow2", backingFile="base.img",
                                                     actualSize=100, virtualSize=2048)},
        clusterConfig=cmd_pb2.ClusterConfig(FreePageReportingDisabled=True,
                                            BochsDisplayForEFIGuests=True,
                                            SerialConsoleLogDisabled=True),
        ExpandDisksEnabled=True,
        interfaceDomainAttachment={"default": "tap", "blue": "managedTap"})
    opts = OPTS._replace(hypervisor="stratovirt", ovmf_path="/fw")
    got = options_from_request(sent, opts=opts, paths=PATHS, emulation=False, arch="aarch64",
                               dedicated_cpus=(2, 3))
    assert got.dedicated_cpus == (2, 3)
    assert got.emulation is False and got.hypervisor == "stratovirt" and got.arch == "aarch64"
    assert got.ovmf_path == "/fw"  # firmware is part of the image: never re-rooted
    assert got.smbios == SMBios(manufacturer="Acme", product="P", family="F", version="1.0",
                                sku="S")
    assert got.mem_balloon_stats_period == 0  # sent as 0: statistics off, as in KubeVirt
    assert got.preallocated_volumes == frozenset({"pvc1", "dv2"})
    assert got.disks_info == {"containerdisk": DiskInfo(format="qcow2", backing_file="base.img",
                                                        actual_size=100, virtual_size=2048)}
    assert got.cluster == ClusterConfig(expand_disks=True, free_page_reporting_disabled=True,
                                        bochs_display_for_efi_guests=True,
                                        serial_console_log_disabled=True)
    assert got.interface_attachment == {"default": "tap", "blue": "managedTap"}


def test_empty_smbios_fields_take_kubevirts_defaults() -> None:
    sent = cmd_pb2.VirtualMachineOptions(VirtualMachineSMBios=cmd_pb2.SMBios(sku="x"),
                                         MemBalloonStatsPeriod=5)
    got = options_from_request(sent, opts=OPTS, paths=PATHS, emulation=False)
    assert got.smbios == SMBios(manufacturer="KubeVirt", product="None", family="KubeVirt",
                                sku="x")
    assert got.mem_balloon_stats_period == 5
    assert got.arch == os.uname().machine
    # the new cluster flag counts as well as the deprecated top-level one
    sent = cmd_pb2.VirtualMachineOptions(
        clusterConfig=cmd_pb2.ClusterConfig(ExpandDisksEnabled=True))
    got = options_from_request(sent, opts=OPTS, paths=PATHS, emulation=False)
    assert got.cluster.expand_disks is True
    assert got.smbios == SMBios()


# --- KVM probe -------------------------------------------------------------------------------
@pytest.mark.parametrize(("arch", "cpuinfo", "problem"), [
    ("x86_64", CPUINFO_VMX, None),
    ("x86_64", CPUINFO_SVM, None),
    ("x86_64", CPUINFO_PVM, "neither vmx nor svm"),
    ("x86_64", "processor : 0\n", "no CPU flags"),
    ("x86_64", "", "no CPU flags"),
    ("x86_64", "flags : fpu vmxnet\n", "neither vmx nor svm"),  # whole flags only
    ("aarch64", "Features : fp asimd\n", None),  # only x86 shows it in cpuinfo
    ("s390x", "", None),
])
def test_cpu_virtualization_from_cpuinfo(arch: str, cpuinfo: str, problem: str | None) -> None:
    got = cpu_virt_missing(arch, cpuinfo)
    if problem is None:
        assert got is None
    else:
        assert got is not None and problem in got


def test_kvm_device_problems(tmp_path: Path) -> None:
    assert kvm_device_problem(str(tmp_path / "nope")) == f"{tmp_path / 'nope'} does not exist"
    plain = tmp_path / "plain"
    plain.write_text("")
    got = kvm_device_problem(str(plain))
    assert got is not None and "is not a KVM device (KVM_GET_API_VERSION" in got
    got = kvm_device_problem("/dev/null")
    assert got is not None and "/dev/null is not a KVM device" in got
    if os.geteuid() != 0:
        plain.chmod(0)
        got = kvm_device_problem(str(plain))
        assert got is not None and "cannot be opened" in got


def test_kvm_usable_combines_cpu_and_device(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO_PVM)
    usable, reason = kvm_usable(arch="x86_64", cpuinfo_path=str(cpuinfo), device="/dev/kvm")
    assert not usable and "neither vmx nor svm" in reason  # PVM: /dev/kvm opens, yet no KVM
    cpuinfo.write_text(CPUINFO_VMX)
    usable, reason = kvm_usable(arch="x86_64", cpuinfo_path=str(cpuinfo),
                                device=str(tmp_path / "kvm"))
    assert not usable and reason.endswith("kvm does not exist")
    usable, reason = kvm_usable(arch="x86_64", cpuinfo_path=str(tmp_path / "missing"))
    assert not usable and reason.startswith("cannot read ")
    host_cpu = Path("/proc/cpuinfo").read_text()
    if (os.uname().machine == "x86_64" and cpu_virt_missing("x86_64", host_cpu) is None
            and kvm_device_problem() is None):
        assert kvm_usable() == (True, "")


def test_emulation_rule() -> None:
    assert use_emulation(False, (True, "")) is False
    assert use_emulation(True, (True, "")) is False  # KVM when usable, allowed or not
    assert use_emulation(True, (False, "no vmx")) is True
    with pytest.raises(SyncError) as err:
        use_emulation(False, (False, "no vmx"))
    assert str(err.value) == ("KVM is not usable on this host (no vmx); start the launcher "
                              "with --allow-emulation to run the VM under software emulation "
                              "(TCG)")


# --- STANDALONE_VMI --------------------------------------------------------------------------
VMI_DOC = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
           "metadata": {"name": "vm1", "namespace": "ns1", "uid": "u-1"},
           "spec": {"domain": {"devices": {}}}}

VMI_YAML = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: vm1
  namespace: ns1
  uid: u-1
  creationTimestamp: 2024-10-28T10:43:42Z
spec:
  domain:
    devices: {}
    resources:
      requests:
        memory: 256Mi
"""


def test_standalone_json_and_yaml() -> None:
    # Parsed, then given KubeVirt's webhook defaults (launcher.converter.defaults).
    defaulted = defaults.apply(VMI_DOC, "x86_64")
    assert parse_standalone(json.dumps(VMI_DOC), "x86_64") == defaulted
    assert parse_standalone("  \n" + json.dumps(VMI_DOC, indent=2), "x86_64") == defaulted
    doc = parse_standalone(VMI_YAML)
    assert doc["metadata"]["name"] == "vm1"
    # JSON has no timestamps: it stays the string Kubernetes would decode
    assert doc["metadata"]["creationTimestamp"] == "2024-10-28T10:43:42Z"
    assert doc["spec"]["domain"]["resources"]["requests"]["memory"] == "256Mi"
    # flow-style YAML that is not JSON (KubeVirt's YAML decoder takes it too)
    assert parse_standalone("{metadata: {name: a, namespace: b}}") == {
        "metadata": {"name": "a", "namespace": "b"}}
    assert parse_standalone('{"a": 1,}') == {"a": 1}


@pytest.mark.parametrize(("text", "message"), [
    ("", "STANDALONE_VMI: is set but empty"),
    ("   \n", "STANDALONE_VMI: is set but empty"),
    ('{"metadata": ', "STANDALONE_VMI: invalid JSON: Expecting value: line 1 column 14 "
                      "(char 13)"),
    ("metadata: [unclosed", "STANDALONE_VMI: invalid YAML at line 2, column 1: did not find "
                            "expected ',' or ']'"),
    ("a: b\n c: d", "STANDALONE_VMI: invalid YAML at line 2, column 3: mapping values are "
                    "not allowed in this context"),
    ('{"a": 1 "b": 2}', "STANDALONE_VMI: invalid JSON: Expecting ',' delimiter: line 1 "
                        "column 9 (char 8)"),
    ("- 1\n- 2\n", "STANDALONE_VMI: expected a VirtualMachineInstance object, got array"),
    ("just text", "STANDALONE_VMI: expected a VirtualMachineInstance object, got string"),
    ("null", "STANDALONE_VMI: expected a VirtualMachineInstance object, got null"),
    ("a: 1\n---\nb: 2\n", None),  # two documents
    ("metadata:\n  1: x\n", "STANDALONE_VMI: metadata: key 1 is not a string"),
    ("spec:\n  data: !!binary aGVsbG8=\n", "STANDALONE_VMI: spec.data: bytes is not a JSON "
                                           "value"),
    ("a: !!python/object:os.system {}\n", None),  # not a safe tag
    ("[" * 100_000, None),
])
def test_standalone_garbage(text: str, message: str | None) -> None:
    with pytest.raises(StandaloneError) as err:
        parse_standalone(text)
    if message is None:
        assert str(err.value).startswith("STANDALONE_VMI: ")
    else:
        assert str(err.value) == message


def test_standalone_identity() -> None:
    empty = OPTS._replace(name="", namespace="", uid="")
    adopted = adopt_identity(empty, VMI_DOC)
    assert (adopted.name, adopted.namespace, adopted.uid) == ("vm1", "ns1", "u-1")
    assert adopted.domain_name == "ns1_vm1"
    assert adopt_identity(OPTS, VMI_DOC) == OPTS  # all given and equal
    no_uid = {"metadata": {"name": "vm1", "namespace": "ns1"}}
    assert adopt_identity(OPTS, no_uid).uid == "u-1"
    cases: list[tuple[Any, str, str]] = [
        ({"metadata": {"name": "vm2", "namespace": "ns1"}}, "metadata.name",
         'STANDALONE_VMI: metadata.name: "vm2" does not match --name "vm1"'),
        ({"metadata": {"name": "vm1", "namespace": "x"}}, "metadata.namespace",
         'STANDALONE_VMI: metadata.namespace: "x" does not match --namespace "ns1"'),
        ({"metadata": {"name": "vm1", "namespace": "ns1", "uid": "u-2"}}, "metadata.uid",
         'STANDALONE_VMI: metadata.uid: "u-2" does not match --uid "u-1"'),
        ({}, "metadata", "STANDALONE_VMI: metadata: required"),
        ({"metadata": []}, "metadata", "STANDALONE_VMI: metadata: expected an object, got array"),
        ({"metadata": {"namespace": "ns1"}}, "metadata.name",
         "STANDALONE_VMI: metadata.name: required"),
        ({"metadata": {"name": 3, "namespace": "ns1"}}, "metadata.name",
         "STANDALONE_VMI: metadata.name: expected a string, got number"),
    ]
    for doc, field, message in cases:
        with pytest.raises(StandaloneError) as err:
            adopt_identity(OPTS, doc)
        assert (str(err.value), err.value.field) == (message, field)


def test_uid_mismatch() -> None:
    assert uid_mismatch("", "u-1") is None
    assert uid_mismatch("u-1", "") is None
    assert uid_mismatch("u-1", "u-1") is None
    assert uid_mismatch("u-2", "u-1") == ('metadata.uid: "u-2" does not match this '
                                          'launcher\'s --uid "u-1"')


# --- what needs a restart -----------------------------------------------------------------
BASE = """<domain type='qemu'>
  <name>ns1_vm1</name>
  <uuid>d3c2dac2-71b8-5a49-a5a6-7f3bdb93e2c3</uuid>
  <metadata>
    <kubevirt:kubevirt xmlns:kubevirt="http://kubevirt.io"><kubevirt:uid>u-1</kubevirt:uid></kubevirt:kubevirt>
  </metadata>
  <memory unit='KiB'>262144</memory>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><source file='/a.img'/><target dev='vda' bus='virtio'/></disk>
    <interface type='user'><mac address='52:54:00:fe:a5:01'/></interface>
    <memballoon model='virtio'><stats period='10'/></memballoon>
  </devices>
</domain>"""


def test_restart_needed() -> None:
    assert restart_needed(BASE, BASE) == []
    # whitespace is not a difference
    assert restart_needed(BASE, BASE.replace("\n  ", "\n")) == []
    assert restart_needed(BASE, BASE.replace("262144", "524288")) == ["memory"]
    assert restart_needed(BASE, BASE.replace("/a.img", "/b.img")) == ["devices/disk"]
    assert restart_needed(BASE, BASE.replace("fe:a5:01", "fe:a5:02")
                          .replace(">1</vcpu>", ">2</vcpu>")) == ["devices/interface", "vcpu"]
    # changed live instead: the kubevirt metadata and the balloon's statistics period
    assert restart_needed(BASE, BASE.replace(">u-1<", ">u-2<")) == []
    assert restart_needed(BASE, BASE.replace("period='10'", "period='5'")) == []
    assert restart_needed(BASE, BASE.replace("model='virtio'", "model='none'")) == [
        "devices/memballoon"]
    assert restart_needed(BASE, BASE.replace("type='qemu'", "type='kvm'")) == ["domain@type"]
    # the running instance's id is no configuration
    assert restart_needed(BASE, BASE.replace("<domain ", "<domain id='4' ")) == []
    added = BASE.replace("</devices>", "<rng model='virtio'/></devices>")
    assert restart_needed(BASE, added) == ["devices/rng"]
    assert restart_needed(added, BASE) == ["devices/rng"]


def test_a_generated_mac_is_kept_across_definitions() -> None:
    new = ("<domain><devices><interface type='user'><alias name='ua-default'/></interface>"
           "<interface type='user'><mac address='52:54:00:00:00:09'/>"
           "<alias name='ua-given'/></interface>"
           "<interface type='user'><alias name='ua-added'/></interface></devices></domain>")
    current = ("<domain><devices><interface type='user'><mac address='52:54:00:ab:cd:ef'/>"
               "<alias name='ua-default'/></interface><interface type='user'>"
               "<mac address='52:54:00:00:00:01'/><alias name='ua-given'/></interface>"
               "</devices></domain>")
    kept = ET.fromstring(keep_generated_macs(new, current))
    macs = {i.find("alias").get("name"): (i.find("mac").get("address")  # type: ignore[union-attr]
                                         if i.find("mac") is not None else None)
            for i in kept.iterfind("devices/interface")}
    # the one libvirt generated is kept; a given one stays as given; a new one gets none
    assert macs == {"ua-default": "52:54:00:ab:cd:ef", "ua-given": "52:54:00:00:00:09",
                    "ua-added": None}
    assert keep_generated_macs(new, "") == new
    every_mac = new.replace("<alias name='ua-default'/>",
                            "<mac address='52:54:00:00:00:02'/><alias name='ua-default'/>")
    every_mac = every_mac.replace("<alias name='ua-added'/>",
                                  "<mac address='52:54:00:00:00:03'/><alias name='ua-added'/>")
    assert keep_generated_macs(every_mac, current) == every_mac  # untouched text


# --- the Syncer against a scripted libvirt ------------------------------------------------
class FakeDom:
    def __init__(self, conn: FakeConn, xml: str) -> None:
        self.conn = conn
        self.xml = xml
        self.active = False
        self.domain_id = -1
        self.calls: list[str] = []

    def isActive(self) -> int:
        return int(self.active)

    def isPersistent(self) -> int:
        return 1

    def ID(self) -> int:
        return self.domain_id

    def XMLDesc(self, flags: int = 0) -> str:
        return self.xml

    def createWithFlags(self, flags: int) -> None:
        self.calls.append(f"create:{flags}")
        if self.conn.fail_create:
            raise libvirt.libvirtError("internal error: QEMU unexpectedly closed the monitor")
        self.active, self.domain_id = True, 7

    def undefineFlags(self, flags: int) -> None:
        self.calls.append("undefine")
        self.conn.domains.pop("ns1_vm1", None)

    def setMetadata(self, *args: Any) -> None:
        self.calls.append("setMetadata")

    def setMemoryStatsPeriod(self, period: int, flags: int) -> None:
        self.calls.append(f"period:{period}")


class FakeConn:
    def __init__(self) -> None:
        self.domains: dict[str, FakeDom] = {}
        self.fail_create = False
        self.defined: list[str] = []

    def getLibVersion(self) -> int:
        return 11_003_000

    def lookupByName(self, name: str) -> FakeDom:
        try:
            return self.domains[name]
        except KeyError:
            raise NoDomain() from None

    def getDomainCapabilities(self, emulator: Any, arch: Any, machine: Any, virttype: str,
                              flags: int) -> str:
        # libvirt 9's answer for TCG here, CPU part only
        assert virttype == "qemu"
        return ("<domainCapabilities><cpu><mode name='host-passthrough' supported='no'/>"
                "<mode name='maximum' supported='yes'/><mode name='host-model' "
                "supported='yes'><model>EPYC</model></mode></cpu></domainCapabilities>")

    def defineXML(self, xml: str) -> FakeDom:
        self.defined.append(xml)
        dom = self.domains.get("ns1_vm1")
        if dom is None:
            dom = self.domains["ns1_vm1"] = FakeDom(self, xml)
        dom.xml = xml
        return dom


class NoDomain(libvirt.libvirtError):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__("Domain not found")

    def get_error_code(self) -> int:
        return int(libvirt.VIR_ERR_NO_DOMAIN)


class FakeConnection:
    """launcher.libvirt.connection.Connection's surface the Syncer uses."""

    def __init__(self, conn: FakeConn) -> None:
        self.conn = conn

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


def syncer(conn: FakeConn, *, xml: str = BASE, prepared: list[Sequence[Prep]] | None = None,
           probe: tuple[bool, str] = (False, "no vmx"), allow: bool = True,
           tmp: Path, nonroot: bool = False) -> Syncer:
    def convert(vmi: Mapping[str, Any], opts: ConvertOptions) -> Conversion:
        if vmi.get("bad"):
            raise ConversionError("spec.domain.devices.disks[0].disk.bus", '"ide" is not '
                                  "supported")
        assert opts.emulation is (not probe[0] and allow)
        return Conversion(name="ns1_vm1", uuid="u", xml=xml,
                          preps=(ExistingFile("kernel", "/k"),))

    def prepare(preps: Sequence[Prep], *, confine: Sequence[str]) -> None:
        # Whatever preparation the Syncer is given gets the launcher's disk directories.
        assert confine == disk_directories(derive(opts)), confine
        if prepared is not None:
            prepared.append(preps)

    opts = OPTS._replace(allow_emulation=allow, runtime_root=str(tmp), run_as_nonroot=nonroot)
    return Syncer(opts=opts, paths=derive(opts), conn=cast(Connection, FakeConnection(conn)),
                  domain="ns1_vm1", convert_fn=convert, prepare_fn=prepare,
                  kvm_probe=lambda: probe)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_syncer_defines_starts_then_reports_changes(tmp_path: Path) -> None:
    conn = FakeConn()
    prepared: list[Sequence[Prep]] = []
    s = syncer(conn, prepared=prepared, tmp=tmp_path)
    result = run(s.sync(VMI_DOC))
    assert (result.action, result.message) == ("started", "domain ns1_vm1 defined and started")
    assert prepared == [(ExistingFile("kernel", "/k"),)]
    assert conn.domains["ns1_vm1"].active
    assert (tmp_path / "var/run/kubevirt-private/u-1").is_dir()  # the VMI's private dir
    # the same VMI again: nothing to do, the disks of the running domain are not touched
    result = run(s.sync(VMI_DOC))
    assert (result.action, result.message) == ("unchanged", "no change")
    assert len(prepared) == 1
    # memory and the balloon period changed: one needs a restart, one is applied live
    s2 = syncer(conn, xml=BASE.replace("262144", "524288").replace("'10'", "'3'"),
                tmp=tmp_path)
    s2._started = s._started  # the same launcher, as far as the start goes
    result = run(s2.sync(VMI_DOC))
    assert result.action == "updated"
    assert result.restart_needed == ("memory",)
    assert result.applied_live == ("devices/memballoon stats period",)
    assert result.message == ("domain ns1_vm1 is running; applied live: devices/memballoon "
                              "stats period; the definition is updated; these parts take "
                              "effect after a restart: memory")
    assert "period:3" in conn.domains["ns1_vm1"].calls


def test_syncer_start_paused_and_ran_phases(tmp_path: Path) -> None:
    conn = FakeConn()
    s = syncer(conn, tmp=tmp_path)
    result = run(s.sync({**VMI_DOC, "status": {"phase": "Succeeded"}}))
    assert result.action == "not-started"
    assert result.message == ('domain ns1_vm1 is not running and the VMI\'s phase is '
                              '"Succeeded": not started again')
    assert conn.defined == []
    result = run(s.sync({**VMI_DOC, "spec": {"startStrategy": "Paused"}}))
    assert result.message == "domain ns1_vm1 defined and started paused (spec.startStrategy)"
    assert conn.domains["ns1_vm1"].calls == [f"create:{libvirt.VIR_DOMAIN_START_PAUSED}"]


def test_syncer_failures_leave_libvirt_as_it_was(tmp_path: Path) -> None:
    conn = FakeConn()
    with pytest.raises(SyncError) as err:
        run(syncer(conn, tmp=tmp_path).sync({**VMI_DOC, "bad": True}))
    assert str(err.value) == 'spec.domain.devices.disks[0].disk.bus: "ide" is not supported'
    assert err.value.field == "spec.domain.devices.disks[0].disk.bus"
    with pytest.raises(SyncError) as err:
        run(syncer(conn, allow=False, tmp=tmp_path).sync(VMI_DOC))
    assert str(err.value).startswith("KVM is not usable on this host (no vmx)")
    # a broken VMI is reported before an unusable KVM: it is the first thing to fix
    with pytest.raises(SyncError) as err:
        run(syncer(conn, allow=False, tmp=tmp_path).sync({**VMI_DOC, "bad": True}))
    assert err.value.field == "spec.domain.devices.disks[0].disk.bus"
    assert conn.defined == []

    # a new domain whose start fails is undefined again
    conn.fail_create = True
    with pytest.raises(SyncError) as err:
        run(syncer(conn, tmp=tmp_path).sync(VMI_DOC))
    assert str(err.value).startswith("starting the domain: libvirt error ")
    assert "QEMU unexpectedly closed the monitor" in str(err.value)
    assert conn.domains == {}

    # an existing (shut off) domain whose restart fails gets its old definition back
    old = BASE.replace("262144", "131072")
    conn.defineXML(old)
    with pytest.raises(SyncError):
        run(syncer(conn, tmp=tmp_path).sync(VMI_DOC))
    assert conn.domains["ns1_vm1"].xml == old
    assert conn.defined[-2:] == [BASE, old]


def test_syncer_refuses_an_agent_socket_path_too_long_before_preparing_disks(
    tmp_path: Path,
) -> None:
    conn = FakeConn()
    prepared: list[Sequence[Prep]] = []
    deep = tmp_path / ("d" * 40)
    with pytest.raises(SyncError) as err:
        run(syncer(conn, prepared=prepared, tmp=deep, nonroot=True).sync(VMI_DOC))
    assert str(err.value).startswith("--runtime-root: in non-root mode libvirt binds the "
                                     "guest agent socket of domain ns1_vm1 at ")
    assert (prepared, conn.defined) == ([], [])
    # the same root as root (system mode: libvirt's /var/lib path) is fine
    result = run(syncer(conn, prepared=prepared, tmp=deep).sync(VMI_DOC))
    assert result.action == "started" and len(prepared) == 1


def test_a_stop_during_the_disk_preparation_starts_nothing(tmp_path: Path) -> None:
    """A SIGTERM while the disks are prepared (STANDALONE_VMI's sync at start-up): the
    sync stops before define/start, so no QEMU is started only to be stopped again."""
    conn = FakeConn()
    stopping = [False]
    s = syncer(conn, tmp=tmp_path)

    def prepare(preps: Sequence[Prep], *, confine: Sequence[str]) -> None:
        stopping[0] = True  # the signal comes while the disks are being prepared

    s._prepare = prepare
    s._accepting = lambda: not stopping[0]
    with pytest.raises(SyncAborted, match="stopped before defining and starting the domain"):
        run(s.sync(VMI_DOC))
    assert conn.defined == [] and "ns1_vm1" not in conn.domains
    # and once stopping, nothing is even prepared
    with pytest.raises(SyncAborted, match="not syncing the VMI"):
        run(s.sync(VMI_DOC))


def test_a_start_with_an_sriov_vf_missing_from_the_pod_is_refused_naming_it(
    tmp_path: Path,
) -> None:
    """KubeVirt's CreateHostDevices at a start: the SR-IOV interfaces Multus reports need
    their VF in the pod's network-info and in the pod; otherwise nothing is started."""
    conn = FakeConn()
    prepared: list[Sequence[Prep]] = []
    s = syncer(conn, prepared=prepared, tmp=tmp_path)
    doc: dict[str, Any] = copy.deepcopy(VMI_DOC)
    doc["spec"]["domain"]["devices"]["interfaces"] = [{"name": "vf", "sriov": {}}]
    doc["status"] = {"interfaces": [{"name": "vf", "infoSource": "multus-status"}]}
    info = Path(s.paths.network_info)
    info.parent.mkdir(parents=True)
    info.write_text(json.dumps({"interfaces": [
        {"network": "vf", "deviceInfo": {"pci": {"pci-address": "0000:ff:1f.7"}}}]}))
    with pytest.raises(SyncError) as err:
        run(s.sync(doc))
    assert "spec.domain.devices.interfaces[0] (vf): PCI device 0000:ff:1f.7 is not present " \
        "in the pod" in str(err.value)
    assert (prepared, conn.defined) == ([], [])
