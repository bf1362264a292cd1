"""Hook sidecars inside a real Sync: the launcher's own wiring (tests/support/rigs.py) with
`--hook-sidecars`, real sidecar processes on real UNIX sockets, libvirt's test:///default
driver taking the definition. What the sidecars did is read back from libvirt (as
`virsh dumpxml` shows it) and from the cloud-init ISO the launcher built."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import libvirt
import pytest
from structlog.testing import capture_logs

from launcher import flags
from launcher._proto.kubevirt.cmd.v1 import cmd_pb2, cmd_pb2_grpc
from launcher.libvirt.connection import ensure_event_loop
from tests.integration.notify_support import run_uvloop as run
from tests.support.hooks import TEST_SIDECAR, Sidecars, sidecars
from tests.support.rigs import NAMESPACE, TEST_URI, operator, serving, small_vmi

pytestmark = pytest.mark.timeout(120)
CALL_TIMEOUT_S = 30.0


@dataclass
class HookRig:
    name: str
    domain: str
    stub: Any
    operator: Any
    parts: Any

    async def sync(self, doc: dict[str, Any]) -> Any:
        return await self.stub.SyncVirtualMachine(
            cmd_pb2.VMIRequest(vmi=cmd_pb2.VMI(vmiJson=json.dumps(doc).encode())),
            timeout=CALL_TIMEOUT_S)

    async def dumpxml(self, inactive: bool = False) -> ET.Element | None:
        def read() -> str | None:
            try:
                dom = self.operator.lookupByName(self.domain)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise
            text: str = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0)
            return text
        text = await asyncio.get_running_loop().run_in_executor(None, read)
        return None if text is None else ET.fromstring(text)


@contextlib.asynccontextmanager
async def hook_rig(count: int, start: Any, *, qemu_timeout: str = "10s",
                   hook_timeout: str = "2s") -> AsyncIterator[HookRig]:
    """A launcher waiting for `count` sidecars; `start(group, hooks_dir)` starts them."""
    ensure_event_loop()
    name = f"vm-{uuid.uuid4().hex[:10]}"
    domain = f"{NAMESPACE}_{name}"
    root = tempfile.mkdtemp(dir="/tmp", prefix="pvl-k-")
    opts = flags.parse(["--name", name, "--namespace", NAMESPACE, "--uid", "uid-1",
                        "--runtime-root", root, "--allow-emulation", "--hook-sidecars",
                        str(count), "--qemu-timeout", qemu_timeout, "--hook-timeout",
                        hook_timeout], environ={})
    try:
        with sidecars(Path(root) / "var/run/kubevirt-hooks") as group:
            start(group)
            async with operator(TEST_URI, domain=domain) as virsh, \
                    serving(opts, uri=TEST_URI,
                            syncer_options={"kvm_probe": lambda: (False, "test")}) as parts, \
                    grpc.aio.insecure_channel(f"unix:{parts.paths.cmd_socket}") as channel:
                collecting = asyncio.ensure_future(parts.hooks.run())
                try:
                    yield HookRig(name, domain, cmd_pb2_grpc.CmdStub(channel), virsh, parts)
                finally:
                    collecting.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await collecting
                    await parts.hooks.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def two_sidecars(group: Sidecars) -> None:
    group.start(TEST_SIDECAR, "low", "--append", "low", "--priority", "1", subdir="a")
    group.start(TEST_SIDECAR, "high", "--append", "high", "--priority", "10",
                "--user-data", "# from-hook-high", subdir="b")


def test_a_start_and_a_new_definition_go_through_the_sidecars() -> None:
    async def scenario() -> None:
        async with hook_rig(2, two_sidecars) as r:
            doc = small_vmi(r.name)
            with capture_logs() as logs:
                resp = await r.sync(doc)
            assert (resp.success, resp.message) == (
                True, f"domain {r.domain} defined and started"), resp.message
            live = await r.dumpxml()
            assert live is not None and live.findtext("description") == "high,low"
            # PreCloudInitIso's user data is what the ISO holds
            iso = next(s.get("file") for s in live.iterfind("devices/disk/source")
                       if (s.get("file") or "").endswith("noCloud.iso"))
            content = await asyncio.to_thread(Path(str(iso)).read_bytes)
            assert b"#cloud-config\n# from-hook-high\n" in content
            points = [(x["sidecar"], x["hook_point"]) for x in logs
                      if x["event"] == "hook called"]
            assert points == [("high", "PreCloudInitIso"), ("high", "OnDefineDomain"),
                              ("low", "OnDefineDomain")]

            # the same VMI again (virt-handler's periodic re-sync): nobody is called
            with capture_logs() as logs:
                resp = await r.sync(doc)
            assert resp.message == "no change"
            assert not [x for x in logs if x["event"] == "hook called"]

            # a changed VMI on the running domain: the new definition is hooked too
            doc["spec"]["domain"]["resources"] = {"requests": {"memory": "256Mi"}}
            with capture_logs() as logs:
                resp = await r.sync(doc)
            assert resp.success and "take effect after a restart: " in resp.message, \
                resp.message
            assert [x["sidecar"] for x in logs if x["event"] == "hook called"] == \
                ["high", "low"]
            saved = await r.dumpxml(inactive=True)
            assert saved is not None and saved.findtext("description") == "high,low"
    run(scenario())


@pytest.mark.parametrize(("fault", "expected"), [
    ("invalid-xml", "OnDefineDomain returned XML that does not parse"),
    ("hang", "OnDefineDomain did not answer within 2 s"),
    ("libvirt-invalid", "starting the domain (domain XML as modified by hook sidecars "
                        "bad): libvirt error"),
])
def test_a_broken_sidecar_fails_the_sync_and_nothing_is_defined(fault: str,
                                                                  expected: str) -> None:
    def start(group: Sidecars) -> None:
        group.start(TEST_SIDECAR, "bad", "--fault", fault)

    async def scenario() -> None:
        async with hook_rig(1, start) as r:
            resp = await r.sync(small_vmi(r.name))
            assert resp.success is False
            assert expected in resp.message, resp.message
            if fault != "libvirt-invalid":
                assert resp.message.startswith('hook sidecar "bad" ('), resp.message
            assert await r.dumpxml() is None
            # the launcher keeps serving
            assert (await r.stub.Ping(cmd_pb2.EmptyRequest(), timeout=5)).success
    run(scenario())


def test_missing_sidecars_fail_the_sync_after_the_timeout_and_define_nothing() -> None:
    def start(group: Sidecars) -> None:
        group.start(TEST_SIDECAR, "one", "--append", "one")

    async def scenario() -> None:
        async with hook_rig(2, start, qemu_timeout="2s") as r:
            # the command socket answers while the launcher waits for the sidecars
            assert (await r.stub.Ping(cmd_pb2.EmptyRequest(), timeout=5)).success
            resp = await r.sync(small_vmi(r.name))
            assert resp.success is False
            assert resp.message.startswith("1 of 2 hook sidecars answered within 2 s "
                                           "(--qemu-timeout) in "), resp.message
            assert await r.dumpxml() is None
    run(scenario())
