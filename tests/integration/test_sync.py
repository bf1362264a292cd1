"""SyncVirtualMachine as virt-handler meets it: a real CmdServer on a real UNIX socket, real
gRPC clients, the real converter and disk preparation, and libvirt's test:///default
driver underneath. The test driver takes the converter's XML as it is (type='qemu', unix
channels, a user-mode NIC) and "runs" a domain without QEMU, so everything but the boot
is real here; the boot is the e2e tests' (tests/e2e/test_standalone.py).

test:///default is one shared instance per process: each test names its own domain.
Also here: a STANDALONE_VMI the launcher refuses before starting anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import shutil
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import libvirt
import pytest
from structlog.testing import capture_logs

from launcher import flags
from launcher._proto.kubevirt.cmd.v1 import cmd_pb2, cmd_pb2_grpc
from launcher.cmd.commands import Commands
from launcher.converter import defaults
from launcher.exitcodes import ExitCode
from launcher.libvirt.connection import ensure_event_loop
from launcher.notify.domain_state import State
from launcher.paths import derive
from launcher.supervisor import Launcher
from tests.integration.notify_support import run_uvloop
from tests.support.rigs import operator, serving

pytestmark = pytest.mark.timeout(120)

URI = "test:///default"
NAMESPACE = "pvl"
UID = "uid-1"
CALL_TIMEOUT_S = 30.0

run = run_uvloop


def vmi_doc(name: str, **spec_domain: Any) -> dict[str, Any]:
    """A small VMI: 128Mi, a cloud-init disk, a slirp NIC, no graphics."""
    doc: dict[str, Any] = {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": UID},
        "spec": {
            "domain": {
                "resources": {"requests": {"memory": "128Mi"}},
                "devices": {
                    "autoattachGraphicsDevice": False,
                    "disks": [{"name": "cloudinit", "disk": {"bus": "virtio"}}],
                    "interfaces": [{"name": "default", "slirp": {},
                                    "macAddress": "52:54:00:fe:a5:01"}],
                },
            },
            "networks": [{"name": "default", "pod": {}}],
            "volumes": [{"name": "cloudinit",
                         "cloudInitNoCloud": {"userData": "#cloud-config\n"}}],
        },
    }
    doc["spec"]["domain"].update(spec_domain)
    return doc


@dataclass
class Rig:
    name: str
    domain: str
    root: str
    commands: Commands
    stub: Any
    operator: Any  # a separate libvirt connection: the "user" looking at the domain

    def request(self, doc: Any, options: Any = None) -> Any:
        raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        if options is None:
            return cmd_pb2.VMIRequest(vmi=cmd_pb2.VMI(vmiJson=raw))
        return cmd_pb2.VMIRequest(vmi=cmd_pb2.VMI(vmiJson=raw), options=options)

    async def sync(self, doc: Any, options: Any = None) -> Any:
        return await self.stub.SyncVirtualMachine(self.request(doc, options),
                                                  timeout=CALL_TIMEOUT_S)

    async def op(self, fn: Any) -> Any:
        """Look at the domain from the operator's connection, off the loop; None when the
        domain does not exist."""
        def run() -> Any:
            try:
                dom = self.operator.lookupByName(self.domain)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise
            return fn(dom)

        return await asyncio.get_running_loop().run_in_executor(None, run)

    async def state(self) -> int | None:
        result: int | None = await self.op(lambda dom: dom.state()[0])
        return result

    async def xml(self, flags: int = 0) -> ET.Element:
        text = await self.op(lambda dom: dom.XMLDesc(flags))
        assert text is not None, "domain missing"
        return ET.fromstring(text)


@contextlib.asynccontextmanager
async def rig(*, allow_emulation: bool = True,
              kvm: tuple[bool, str] = (False, "not on this test host")) -> AsyncIterator[Rig]:
    ensure_event_loop()
    name = f"vm-{uuid.uuid4().hex[:10]}"
    domain = f"{NAMESPACE}_{name}"
    root = tempfile.mkdtemp(dir="/tmp", prefix="pvl-s-")  # sun_path holds 108 bytes
    args = ["--name", name, "--namespace", NAMESPACE, "--uid", UID, "--runtime-root", root]
    if allow_emulation:
        args.append("--allow-emulation")
    opts = flags.parse(args, environ={})
    # The launcher's own wiring on libvirt's test driver (tests/support/rigs.py).
    try:
        async with operator(URI, domain=domain) as virsh, \
                serving(opts, uri=URI, syncer_options={"kvm_probe": lambda: kvm}) as parts, \
                grpc.aio.insecure_channel(f"unix:{parts.paths.cmd_socket}") as channel:
            yield Rig(name, domain, root, parts.commands, cmd_pb2_grpc.CmdStub(channel),
                      virsh)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def is_file(path: str) -> bool:
    """A sync helper: one local stat."""
    return os.path.isfile(path)


def memory_kib(dom: ET.Element) -> int:
    memory = dom.find("memory")
    assert memory is not None and memory.get("unit") == "KiB", ET.tostring(dom)
    return int(memory.text or "0")


# --- a VMI becomes a running domain ---------------------------------------------------------
def test_sync_defines_starts_and_then_reports_what_needs_a_restart() -> None:
    async def scenario() -> None:
        async with rig() as r:
            doc = vmi_doc(r.name)
            resp = await r.sync(doc)
            assert (resp.success, resp.message) == (
                True, f"domain {r.domain} defined and started"), resp.message
            assert await r.state() == State.RUNNING
            live = await r.xml()
            assert live.get("type") == "qemu"  # KVM unusable + --allow-emulation: TCG
            assert memory_kib(live) == 128 * 1024
            iface = live.find("devices/interface")
            assert iface is not None and iface.get("type") == "user"
            # the cloud-init ISO was written where the XML points
            sources = [s.get("file") for s in live.iterfind("devices/disk/source")]
            assert sources and all(s and is_file(s) for s in sources), sources

            # the same VMI again: nothing to do
            resp = await r.sync(doc)
            assert (resp.success, resp.message) == (True, "no change")

            # the grace period lives in the kubevirt metadata: changed live, no restart
            doc["spec"]["terminationGracePeriodSeconds"] = 77
            resp = await r.sync(doc)
            assert (resp.success, resp.message) == (
                True, f"domain {r.domain} is running; applied live: metadata")
            grace = (await r.xml()).find(
                "metadata/{http://kubevirt.io}kubevirt/{http://kubevirt.io}graceperiod/"
                "{http://kubevirt.io}deletionGracePeriodSeconds")
            assert grace is not None and grace.text == "77"
            assert (await r.sync(doc)).message == "no change"

            # more memory: saved for the next start, reported, the running domain untouched
            more = copy.deepcopy(doc)
            more["spec"]["domain"]["resources"] = {"requests": {"memory": "256Mi"}}
            resp = await r.sync(more)
            assert resp.success, resp.message
            assert resp.message.startswith(f"domain {r.domain} is running; the definition")
            assert "take effect after a restart: " in resp.message
            assert "memory" in resp.message.split("restart: ")[1].split(", ")
            assert memory_kib(await r.xml()) == 128 * 1024
            assert memory_kib(await r.xml(libvirt.VIR_DOMAIN_XML_INACTIVE)) == 256 * 1024
            # ... and asking again says the same: still pending a restart
            again = await r.sync(more)
            assert again.message == resp.message

            # after a restart (by this launcher's Sync) the new definition runs
            await r.op(lambda dom: dom.destroy())
            resp = await r.sync(more)
            assert resp.message == f"domain {r.domain} defined and started"
            assert memory_kib(await r.xml()) == 256 * 1024

    run(scenario())


def test_a_nic_without_a_mac_keeps_the_one_libvirt_generated_across_resyncs() -> None:
    # libvirt picks a random MAC at each define of an interface without one: a periodic
    # re-sync used to save a new MAC each time and report "devices/interface" for a restart.
    async def scenario() -> None:
        async with rig() as r:
            doc = vmi_doc(r.name)
            del doc["spec"]["domain"]["devices"]["interfaces"][0]["macAddress"]
            assert (await r.sync(doc)).success
            mac = (await r.xml()).find("devices/interface/mac")
            assert mac is not None and mac.get("address")
            for _ in range(2):
                resp = await r.sync(doc)
                assert (resp.success, resp.message) == (True, "no change")
            saved = (await r.xml(libvirt.VIR_DOMAIN_XML_INACTIVE)).find(
                "devices/interface/mac")
            assert saved is not None and saved.get("address") == mac.get("address")

    run(scenario())


def test_virtual_machine_options_reach_the_domain() -> None:
    async def scenario() -> None:
        async with rig() as r:
            options = cmd_pb2.VirtualMachineOptions(
                VirtualMachineSMBios=cmd_pb2.SMBios(manufacturer="Acme", family="F"),
                MemBalloonStatsPeriod=7)
            resp = await r.sync(vmi_doc(r.name), options)
            assert resp.success, resp.message
            live = await r.xml()
            entries = {e.get("name"): e.text for e in live.iterfind("sysinfo/system/entry")}
            assert entries.get("manufacturer") == "Acme" and entries.get("family") == "F"
            stats = live.find("devices/memballoon/stats")
            assert stats is not None and stats.get("period") == "7"

    run(scenario())


def test_concurrent_syncs_are_serialized() -> None:
    async def scenario() -> None:
        async with rig() as r:
            doc = vmi_doc(r.name)
            answers = await asyncio.gather(*(r.sync(doc) for _ in range(4)))
            messages = sorted(a.message for a in answers)
            assert all(a.success for a in answers), messages
            assert messages == sorted([f"domain {r.domain} defined and started"]
                                      + ["no change"] * 3)

    run(scenario())


def test_a_vmi_that_ran_already_and_a_failed_start() -> None:
    async def scenario() -> None:
        async with rig() as r:
            ran = vmi_doc(r.name)
            ran["status"] = {"phase": "Succeeded"}
            resp = await r.sync(ran)
            assert resp.success and "not started again" in resp.message, resp.message
            assert await r.state() is None  # nothing defined
            # The test driver cannot start paused (QEMU can): a real failed start, after
            # the define. It is rolled back: no half-defined domain stays.
            paused = vmi_doc(r.name)
            paused["spec"]["startStrategy"] = "Paused"
            resp = await r.sync(paused)
            assert resp.success is False
            assert resp.message == ("starting the domain: libvirt error 8 (VIR_ERR_INVALID_ARG):"
                                    " unsupported flags (0x1) in function "
                                    "testDomainCreateWithFlags")
            assert await r.state() is None
            # a domain that existed (shut off) gets its definition back
            assert (await r.sync(vmi_doc(r.name))).success
            await r.op(lambda dom: dom.destroy())
            before = ET.tostring(await r.xml(libvirt.VIR_DOMAIN_XML_INACTIVE))
            paused["spec"]["domain"]["resources"] = {"requests": {"memory": "64Mi"}}
            resp = await r.sync(paused)
            assert resp.success is False and "unsupported flags" in resp.message
            assert await r.state() == State.SHUTOFF
            assert ET.tostring(await r.xml(libvirt.VIR_DOMAIN_XML_INACTIVE)) == before

    run(scenario())


# --- refusals ------------------------------------------------------------------------------
def test_refusals_name_the_field_and_leave_nothing_behind() -> None:
    async def scenario() -> None:
        async with rig() as r:
            bad_bus = vmi_doc(r.name)
            bad_bus["spec"]["domain"]["devices"]["disks"][0]["disk"]["bus"] = "ide"
            not_vmi = {**vmi_doc(r.name), "kind": "Pod"}
            other = vmi_doc("someone-else")
            other_uid = copy.deepcopy(vmi_doc(r.name))
            other_uid["metadata"]["uid"] = "uid-2"
            cases: list[tuple[Any, str]] = [
                (bad_bus, "spec.domain.devices.disks[0].disk.bus: "),
                (not_vmi, 'kind: expected "VirtualMachineInstance", got "Pod"'),
                (other, f'vmi "{NAMESPACE}/someone-else" does not match this launcher\'s '
                        f'domain "{r.domain}"'),
                (other_uid, f'vmi: metadata.uid: "uid-2" does not match this launcher\'s '
                            f'--uid "{UID}"'),
                (b"", "vmi: vmiJson: required (the request carries no VMI)"),
                (b"{", "vmi: invalid JSON: "),
            ]
            for doc, message in cases:
                resp = await r.sync(doc)
                assert resp.success is False
                assert resp.message.startswith(message), (message, resp.message)
                assert await r.state() is None  # nothing defined
                assert (await r.stub.Ping(cmd_pb2.EmptyRequest(), timeout=5)).success

    run(scenario())


def test_unusable_kvm_without_allow_emulation_is_refused() -> None:
    async def scenario() -> None:
        async with rig(allow_emulation=False, kvm=(False, "no vmx or svm")) as r:
            resp = await r.sync(vmi_doc(r.name))
            assert resp.success is False
            assert resp.message == ("KVM is not usable on this host (no vmx or svm); start "
                                    "the launcher with --allow-emulation to run the VM under "
                                    "software emulation (TCG)")
            assert await r.state() is None
            # a broken VMI is the first thing to fix
            resp = await r.sync({**vmi_doc(r.name), "kind": "Pod"})
            assert resp.message == 'kind: expected "VirtualMachineInstance", got "Pod"'
        async with rig(allow_emulation=False, kvm=(True, "")) as r:
            resp = await r.sync(vmi_doc(r.name))
            assert resp.success, resp.message
            assert (await r.xml()).get("type") == "kvm"  # usable KVM is used

    run(scenario())


def test_ping_is_not_held_up_by_a_sync() -> None:
    async def scenario() -> None:
        async with rig() as r:
            big = vmi_doc(r.name)
            big["metadata"]["annotations"] = {f"k{i}": "v" * 200 for i in range(2000)}
            sync = asyncio.ensure_future(r.sync(big))
            worst = 0.0
            while not sync.done():
                t0 = time.perf_counter()
                assert (await r.stub.Ping(cmd_pb2.EmptyRequest(), timeout=5)).success
                worst = max(worst, time.perf_counter() - t0)
            assert (await sync).success
            assert worst < 0.25, worst

    run(scenario())


# --- STANDALONE_VMI refused before anything starts --------------------------------------------
@pytest.mark.parametrize(("text", "field", "error"), [
    ("metadata: [", None, "STANDALONE_VMI: invalid YAML at line 2, column 1: "),
    ('{"metadata": {"name": "other", "namespace": "pvl"}}', "metadata.name",
     'STANDALONE_VMI: metadata.name: "other" does not match --name "vm1"'),
])
def test_bad_standalone_vmi_exits_before_starting_anything(text: str, field: str | None,
                                                           error: str) -> None:
    root = tempfile.mkdtemp(dir="/tmp", prefix="pvl-s-")
    try:
        opts = flags.parse(["--name", "vm1", "--namespace", NAMESPACE, "--runtime-root", root],
                           environ={})
        launcher = Launcher(opts, derive(opts), environ={"STANDALONE_VMI": text})
        with capture_logs() as logs:
            code = run(launcher.run())
        assert code == ExitCode.STANDALONE_VMI_FAILED
        assert int(code) == 14
        errors = [e for e in logs if e["log_level"] == "error"]
        assert len(errors) == 1, logs
        assert errors[0]["event"] == "STANDALONE_VMI rejected; exiting"
        assert errors[0]["error"].startswith(error) and errors[0]["field"] == field
        assert launcher.daemons.libvirt.pid is None  # no daemon was started
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_standalone_vmi_names_the_domain_when_the_flags_do_not() -> None:
    opts = flags.parse(["--runtime-root", "/tmp/pvl-x"], environ={})
    doc = vmi_doc("vm9")
    launcher = Launcher(opts, derive(opts), environ={"STANDALONE_VMI": json.dumps(doc)})
    assert launcher.opts.domain_name == f"{NAMESPACE}_vm9" and launcher.opts.uid == UID
    assert launcher.paths.domain == f"{NAMESPACE}_vm9"
    assert launcher.relay.domain == launcher.syncer.domain == f"{NAMESPACE}_vm9"
    # the document as parsed, with KubeVirt's webhook defaults (launcher.converter.defaults)
    assert launcher.standalone == defaults.apply(doc, os.uname().machine)
