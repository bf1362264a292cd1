"""The command API while libvirt is down or goes away under an rpc (a daemon restart): every
rpc that needs libvirt answers "libvirt is not connected" - Response{success: false} or,
for Exec and GuestPing, gRPC UNAVAILABLE - and nothing logs a traceback (never
"internal error: 'NoneType' ...").

The launcher is assembled by launcher.wiring.build (two libvirt connections, as in the
pod) on libvirt's test:///default driver; its Connections are never `run()`, so a lost
connection stays lost. Losing one goes through Connection.reset(), the reconnect path's own
way in (the close callback of a dying daemon takes the same path).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import grpc
import libvirt
import pytest
from google.protobuf.message_factory import GetMessageClass
from structlog.testing import capture_logs

from launcher import flags
from launcher._proto.kubevirt.cmd.v1 import cmd_pb2
from launcher.libvirt.connection import Connection, ensure_event_loop
from launcher.libvirt.errors import NOT_CONNECTED
from launcher.paths import derive
from launcher.wiring import Components
from tests.integration.notify_support import run_uvloop
from tests.support.rigs import operator, serving
from tests.support.rigs import small_vmi as vmi_doc

pytestmark = pytest.mark.timeout(120)

URI = "test:///default"
NAMESPACE = "pvl"
UID = "uid-1"
CMD = cmd_pb2.DESCRIPTOR.services_by_name["Cmd"]
CALL_TIMEOUT_S = 20.0  # the relay waits 5 s for a reconnect before it gives up
STATUS_RPCS = ("Exec", "GuestPing")
# Every rpc that touches the domain or libvirt. The others answer from memory (Ping, the
# agent cache's GetGuestInfo/GetUsers/GetFilesystems) or refuse without looking
# (unsupported rpcs).
DOMAIN_RPCS = (
    "SyncVirtualMachine", "PauseVirtualMachine", "UnpauseVirtualMachine",
    "FreezeVirtualMachine", "UnfreezeVirtualMachine", "ResetVirtualMachine",
    "SoftRebootVirtualMachine", "ShutdownVirtualMachine", "KillVirtualMachine",
    "DeleteVirtualMachine", "GetScreenshot", "VirtualMachineMemoryDump", "GetDomain",
    "GetDomainStats", "GetQemuVersion", "GetDomainDirtyRateStats", "Exec", "GuestPing",
)
# The domain's XML as libvirt's test driver takes it.
DOMAIN_XML = ("<domain type='test'><name>{name}</name><uuid>{uuid}</uuid><memory>1024</memory>"
              "<vcpu>1</vcpu><os><type>hvm</type></os><devices/></domain>")

run = run_uvloop


class Launcher:
    def __init__(self, parts: Components, channel: Any, name: str) -> None:
        self.parts = parts
        self.channel = channel
        self.name = name
        self.domain = f"{NAMESPACE}_{name}"
        self.dump_path = os.path.join(parts.opts.hotplug_disk_dir, "memvol", "memory.dump")

    def request(self, rpc: str) -> Any:
        in_cls = GetMessageClass(CMD.methods_by_name[rpc].input_type)
        if rpc == "SyncVirtualMachine":
            return in_cls(vmi=cmd_pb2.VMI(vmiJson=json.dumps(vmi_doc(self.name)).encode()))
        if rpc == "Exec":
            return in_cls(domainName=self.domain, Command="/bin/true", timeoutSeconds=5)
        if rpc == "GuestPing":
            return in_cls(domainName=self.domain, timeoutSeconds=1)
        fields: dict[str, Any] = {}
        if rpc == "VirtualMachineMemoryDump":
            fields["dumpPath"] = self.dump_path
        if "vmi" in in_cls.DESCRIPTOR.fields_by_name:
            meta = {"metadata": {"name": self.name, "namespace": NAMESPACE, "uid": UID}}
            fields["vmi"] = cmd_pb2.VMI(vmiJson=json.dumps(meta).encode())
        return in_cls(**fields)

    async def call(self, rpc: str) -> tuple[bool, str, grpc.StatusCode | None]:
        """(success, message, gRPC status code when the rpc failed with one)."""
        method = CMD.methods_by_name[rpc]
        out_cls = GetMessageClass(method.output_type)
        stub = self.channel.unary_unary(
            f"/{CMD.full_name}/{rpc}",
            request_serializer=GetMessageClass(method.input_type).SerializeToString,
            response_deserializer=out_cls.FromString)
        try:
            resp = await stub(self.request(rpc), timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            return False, exc.details() or "", exc.code()
        inner = resp if resp.DESCRIPTOR.name == "Response" else resp.response
        return inner.success, inner.message, None


@contextlib.asynccontextmanager
async def launcher() -> AsyncIterator[Launcher]:
    ensure_event_loop()
    name = f"vm-{uuid.uuid4().hex[:10]}"
    root = tempfile.mkdtemp(dir="/tmp", prefix="pvl-d-")  # sun_path holds 108 bytes
    opts = flags.parse(["--name", name, "--namespace", NAMESPACE, "--uid", UID,
                        "--runtime-root", root, "--allow-emulation"], environ={})
    domain = f"{NAMESPACE}_{name}"
    os.makedirs(os.path.join(derive(opts).hotplug_disk_dir, "memvol"))  # the dump volume

    def define(conn: Any) -> None:
        conn.defineXML(DOMAIN_XML.format(name=domain, uuid=uuid.uuid4())).create()

    try:
        async with operator(URI, setup=define, domain=domain), \
                serving(opts, uri=URI, syncer_options={
                    "kvm_probe": lambda: (False, "not on this test host")}) as parts, \
                grpc.aio.insecure_channel(f"unix:{parts.paths.cmd_socket}") as channel:
            yield Launcher(parts, channel, name)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def tracebacks(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [r for r in logs if r.get("exc_info") or r.get("exception")
            or r.get("log_level") in ("error", "critical")]


def assert_not_connected(rpc: str, answer: tuple[bool, str, grpc.StatusCode | None]) -> None:
    success, message, code = answer
    if rpc in STATUS_RPCS:
        assert (code, message) == (grpc.StatusCode.UNAVAILABLE, f"{rpc}: {NOT_CONNECTED}"), rpc
    elif rpc == "SyncVirtualMachine":  # the Syncer says which step needed libvirt
        assert (success, message, code) == (False, f"reading the domain: {NOT_CONNECTED}",
                                            None), rpc
    else:
        assert (success, message, code) == (False, NOT_CONNECTED, None), rpc


def test_every_rpc_answers_not_connected_while_libvirt_is_down() -> None:
    async def scenario() -> None:
        async with launcher() as pod:
            assert (await pod.call("GetDomain"))[0] is True  # up: it answers
            # The daemon goes away (both connections lost) and does not come back.
            await pod.parts.conn.reset()
            await pod.parts.agent_conn.reset()
            assert pod.parts.conn.conn is None and pod.parts.agent_conn.conn is None
            with capture_logs() as logs:
                # Concurrently: the rpcs that read the domain's state first wait for a
                # reconnect (the relay's 5 s) before they give up.
                answers = await asyncio.gather(*(pod.call(rpc) for rpc in DOMAIN_RPCS))
                ping = await pod.call("Ping")
            for rpc, answer in zip(DOMAIN_RPCS, answers, strict=True):
                assert_not_connected(rpc, answer)
            assert ping == (True, "", None)  # the server itself is fine
            assert tracebacks(logs) == []

    run(scenario())


class DyingDaemon:
    """A virConnect whose daemon dies right after answering the first domain lookup made
    once `armed`: the connection is lost (Connection.reset(), as the close callback of a
    dead daemon does) and closed before the lookup returns, so whatever the rpc does next
    with libvirt finds it gone."""

    def __init__(self, real: Any, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self._real = real
        self._conn = conn
        self._loop = loop
        self.armed = False
        self.died = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def lookupByName(self, name: str) -> Any:
        dom = self._real.lookupByName(name)
        if self.armed and not self.died:
            self.died = True
            # From the executor thread: the loss happens on the loop, as libvirt's close
            # callback would make it happen; wait for it so the race is deterministic.
            asyncio.run_coroutine_threadsafe(self._conn.reset(), self._loop).result(10)
        return dom

    def close(self) -> int:
        closed: int = self._real.close()
        return closed


async def reconnect_to_dying_daemon(pod: Launcher,
                                    monkeypatch: pytest.MonkeyPatch) -> DyingDaemon:
    loop = asyncio.get_running_loop()
    conn = pod.parts.conn
    made: list[DyingDaemon] = []
    real_open = libvirt.open

    def open_dying(uri: str) -> Any:
        made.append(DyingDaemon(real_open(uri), conn, loop))
        return made[-1]

    with monkeypatch.context() as patch:
        patch.setattr(libvirt, "open", open_dying)  # the module Connection.connect calls
        await conn.connect()
    daemon = made[-1]
    relay = pod.parts.relay
    read = type(relay).read

    async def read_then_arm() -> Any:
        # The daemon dies after the rpc has read the domain's state, before its action.
        result = await read(relay)
        daemon.armed = True
        return result

    monkeypatch.setattr(relay, "read", read_then_arm)
    return daemon


def test_libvirt_lost_during_the_rpc_answers_not_connected(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The rpcs that make a connection-level call after finding the domain (bulk stats, a
    screenshot stream): they use the connection they found the domain on, never the
    current one - None by then (before: "internal error: 'NoneType' object has no
    attribute ..." and a traceback). With the test driver a closed connection still
    answers calls that only need the domain (the bulk stats): those succeed; what needs
    the connection itself (a stream) is "libvirt is not connected"."""
    async def scenario() -> None:
        async with launcher() as pod:
            for rpc, expected in (("GetDomainStats", None),
                                  ("GetScreenshot", (False, NOT_CONNECTED, None))):
                daemon = await reconnect_to_dying_daemon(pod, monkeypatch)
                with capture_logs() as logs:
                    answer = await pod.call(rpc)
                assert daemon.died, rpc
                assert pod.parts.conn.conn is None, rpc
                assert "internal error" not in answer[1], (rpc, answer)
                if expected is None:
                    assert answer[0] is True, (rpc, answer)
                else:
                    assert answer == expected, rpc
                assert tracebacks(logs) == [], rpc

    run(scenario())
