"""The launcher's command side for the integration tests, built by the launcher's own
wiring (launcher.wiring.build) on a libvirt URI with no daemons of ours (libvirt's
test:///default driver, shared by the whole process: each test gives its domain its own
name)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import libvirt

from launcher import flags
from launcher._proto.kubevirt.cmd.v1 import cmd_pb2, cmd_pb2_grpc
from launcher.flags import Options
from launcher.libvirt.connection import Connection, ensure_event_loop
from launcher.notify.notifier import Notifier
from launcher.notify.relay import DomainRelay
from launcher.paths import derive
from launcher.wiring import Components, build

TEST_URI = "test:///default"
NAMESPACE = "pvl"
UID = "uid-1"
CALL_TIMEOUT_S = 20.0
CMD = cmd_pb2.DESCRIPTOR.services_by_name["Cmd"]


@contextlib.asynccontextmanager
async def serving(opts: Options, *, uri: str = TEST_URI,
                  **build_kwargs: Any) -> AsyncIterator[Components]:
    """The components, both libvirt connections up, the command server serving at
    paths.cmd_socket (the notifier is not run: it only queues); all closed afterwards."""
    ensure_event_loop()
    paths = derive(opts)
    for d in paths.dirs_to_create():
        os.makedirs(d, exist_ok=True)
    parts = build(opts, paths, uri=uri, with_daemons=False, **build_kwargs)
    started = False
    try:
        await parts.conn.connect()
        await parts.agent_conn.connect()
        await asyncio.wait_for(parts.cmd_server.start(), 20)
        started = True
        yield parts
    finally:
        if started:
            await parts.cmd_server.stop(0)
        await parts.commands.close()
        await parts.freeze.close()
        await parts.conn.close()
        await parts.agent_conn.close()
        parts.shutdown_executors()


@contextlib.asynccontextmanager
async def operator(uri: str = TEST_URI, *,
                   setup: Callable[[Any], object] | None = None,
                   domain: str | None = None) -> AsyncIterator[Any]:
    """A libvirt connection of the test's own (what a person with virsh does); `setup`
    runs on it first; `domain` is destroyed and undefined afterwards."""
    loop = asyncio.get_running_loop()
    conn = await loop.run_in_executor(None, libvirt.open, uri)
    try:
        if setup is not None:
            await loop.run_in_executor(None, setup, conn)
        yield conn
    finally:
        def cleanup() -> None:
            if domain is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    dom = conn.lookupByName(domain)
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.destroy()
                    dom.undefine()
            conn.close()

        await loop.run_in_executor(None, cleanup)


def method_path(rpc: str) -> str:
    return f"/{CMD.full_name}/{rpc}"


def small_vmi(name: str) -> dict[str, Any]:
    """A small VMI that converts: 128Mi, a cloud-init disk, no NIC, no graphics."""
    return {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": UID},
        "spec": {
            "domain": {"resources": {"requests": {"memory": "128Mi"}},
                       "devices": {"autoattachGraphicsDevice": False,
                                   "disks": [{"name": "cloudinit", "disk": {"bus": "virtio"}}]}},
            "volumes": [{"name": "cloudinit",
                         "cloudInitNoCloud": {"userData": "#cloud-config\n"}}],
        },
    }


@dataclass
class SyncedRig:
    name: str
    domain: str
    root: str
    socket: str
    channel: Any
    operator: Any

    def vmi(self, doc: dict[str, Any] | None = None) -> Any:
        return cmd_pb2.VMI(vmiJson=json.dumps(doc or small_vmi(self.name)).encode())

    async def raw(self, rpc: str, payload: bytes,
                  channel: Any = None) -> bytes | grpc.aio.AioRpcError:
        """Send `payload` as the request body of `rpc`; the answer's bytes or the error."""
        call = (channel or self.channel).unary_unary(
            method_path(rpc), request_serializer=None, response_deserializer=None)
        try:
            answer: bytes = await call(payload, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            return exc
        return answer

    async def restore(self) -> None:
        """A running, persistent domain again: resumed when paused, otherwise synced."""
        def look() -> tuple[int, bool] | None:
            try:
                dom = self.operator.lookupByName(self.domain)
            except libvirt.libvirtError:
                return None
            state = dom.state()[0]
            if state == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
                state = libvirt.VIR_DOMAIN_RUNNING
            return state, bool(dom.isPersistent())

        found = await asyncio.get_running_loop().run_in_executor(None, look)
        if found == (libvirt.VIR_DOMAIN_RUNNING, True):
            return
        resp = await cmd_pb2_grpc.CmdStub(self.channel).SyncVirtualMachine(
            cmd_pb2.VMIRequest(vmi=self.vmi()), timeout=CALL_TIMEOUT_S)
        assert resp.success is True, resp.message

    async def ping(self) -> None:
        resp = await cmd_pb2_grpc.CmdStub(self.channel).Ping(cmd_pb2.EmptyRequest(),
                                                              timeout=5)
        assert resp.success is True


@contextlib.asynccontextmanager
async def synced_rig() -> AsyncIterator[SyncedRig]:
    """A launcher's command side (commands, syncer, freeze, relay) on test:///default with
    a running domain of its own, made by a Sync of vmi_doc (test:///default is shared by
    the whole process: each rig has its own name)."""
    ensure_event_loop()
    name = f"vm-{uuid.uuid4().hex[:10]}"
    domain = f"{NAMESPACE}_{name}"
    root = tempfile.mkdtemp(dir="/tmp", prefix="pvl-b-")  # sun_path holds 108 bytes
    opts = flags.parse(["--name", name, "--namespace", NAMESPACE, "--uid", UID,
                        "--runtime-root", root, "--allow-emulation"], environ={})
    try:
        async with operator(TEST_URI, domain=domain) as virsh, \
                serving(opts, uri=TEST_URI, freeze_options={"auto_thaw_retry_s": 0.1},
                        syncer_options={"kvm_probe": lambda: (False, "not on this host")}
                        ) as parts, \
                grpc.aio.insecure_channel(f"unix:{parts.paths.cmd_socket}") as channel:
            # The domain comes from a real Sync (converter, disks, define, start).
            resp = await cmd_pb2_grpc.CmdStub(channel).SyncVirtualMachine(
                cmd_pb2.VMIRequest(vmi=cmd_pb2.VMI(
                    vmiJson=json.dumps(small_vmi(name)).encode())), timeout=CALL_TIMEOUT_S)
            assert (resp.success, resp.message) == (True,
                                                     f"domain {domain} defined and started")
            yield SyncedRig(name, domain, root, parts.paths.cmd_socket, channel, virsh)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_domain_xml(name: str) -> str:
    return (f"<domain type='test'><name>{name}</name><uuid>{uuid.uuid4()}</uuid>"
            "<memory>1024</memory><os><type>hvm</type></os>"
            "<devices><disk type='file' device='disk'><source file='/guest/d1'/>"
            "<target dev='vda' bus='virtio'/></disk></devices></domain>")


@dataclass
class RelayRig:
    domain: str
    conn: Connection
    notifier: Notifier
    relay: DomainRelay
    operator: Any  # a separate libvirt connection: the "virt-handler"/user acting on it

    async def op(self, action: str) -> None:
        """Act on the domain from the operator's connection, off the loop."""
        loop = asyncio.get_running_loop()

        def act() -> None:
            if action == "define":
                self.operator.defineXML(test_domain_xml(self.domain))
            else:
                getattr(self.operator.lookupByName(self.domain), action)()

        await loop.run_in_executor(None, act)


@contextlib.asynccontextmanager
async def relay_rig(socket_path: str) -> AsyncIterator[RelayRig]:
    ensure_event_loop()
    name = f"pvl-{uuid.uuid4().hex[:10]}"
    root = os.path.dirname(socket_path)
    opts = flags.parse(["--name", name, "--namespace", "default", "--uid", "uid-1",
                        "--runtime-root", root], environ={})
    # The launcher's own wiring (launcher.wiring); only the relay's part is run here.
    parts = build(opts, derive(opts), uri=TEST_URI, with_daemons=False, notify_socket=socket_path)
    domain, conn, notifier, relay = opts.domain_name, parts.conn, parts.notifier, parts.relay
    await conn.connect()
    await relay.attach(conn.conn)
    try:
        async with operator(TEST_URI, domain=domain) as op:
            tasks = [asyncio.create_task(notifier.run()), asyncio.create_task(conn.run())]
            try:
                yield RelayRig(domain, conn, notifier, relay, op)
            finally:
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
                await notifier.close()
                await relay.detach()
                await conn.close()
    finally:
        parts.shutdown_executors()
