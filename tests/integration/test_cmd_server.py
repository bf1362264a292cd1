"""The command server (kubevirt.cmd.v1.Cmd + kubevirt.cmd.info.CmdInfo) as virt-handler sees
it: a real grpc.aio server on a real UNIX socket in a short temp dir, real clients.

Each test runs its asyncio part with asyncio.run (no pytest-asyncio) and stops the server in
`finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message_factory import GetMessageClass

from launcher._proto.kubevirt.cmd.info import info_pb2, info_pb2_grpc
from launcher._proto.kubevirt.cmd.v1 import cmd_pb2, cmd_pb2_grpc
from launcher.cmd import server as cmd_server
from launcher.cmd.server import CmdServer, Handler

pytestmark = pytest.mark.timeout(120)

CMD = cmd_pb2.DESCRIPTOR.services_by_name["Cmd"]
STATUS_CODE_RPCS = {"Exec", "GuestPing", "GetVMStats"}
CALL_TIMEOUT_S = 5.0  # KubeVirt's short-call deadline


@dataclass
class Paths:
    init: str
    ready: str


@pytest.fixture
def paths() -> Iterator[Paths]:
    # Short paths: sun_path holds 108 bytes including the NUL.
    d = tempfile.mkdtemp(dir="/tmp", prefix="pvl-c-")
    p = Paths(init=os.path.join(d, "launcher-init-sock"), ready=os.path.join(d, "launcher-sock"))
    assert len(os.fsencode(p.init)) <= 107
    try:
        yield p
    finally:
        shutil.rmtree(d, ignore_errors=True)


def present(path: str) -> bool:
    """A file (even a dangling link) at path. A sync helper: a local stat is instant."""
    return os.path.lexists(path)


async def ping_ok(request: Any, context: Any) -> Any:
    return cmd_pb2.Response(success=True)


@contextlib.asynccontextmanager
async def serving(paths: Paths, handlers: dict[str, Handler] | None = None,
                  nonroot: bool = False) -> AsyncIterator[CmdServer]:
    server = CmdServer(init_socket=paths.init, ready_socket=paths.ready, nonroot=nonroot,
                       handlers={"Ping": ping_ok, **(handlers or {})})
    try:
        await asyncio.wait_for(server.start(), 20)
        yield server
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def dial(path: str) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
        yield channel


def method_path(rpc: str) -> str:
    return f"/{CMD.full_name}/{rpc}"


def typed_call(channel: Any, rpc: str) -> tuple[Any, Any, Any]:
    """(multicallable, request class, response class) for any Cmd rpc."""
    method = CMD.methods_by_name[rpc]
    in_cls = GetMessageClass(method.input_type)
    out_cls = GetMessageClass(method.output_type)
    call = channel.unary_unary(method_path(rpc), request_serializer=in_cls.SerializeToString,
                               response_deserializer=out_cls.FromString)
    return call, in_cls, out_cls


def inner_response(resp: Any) -> Any:
    """The Response itself, or the `response` field of a wrapper type."""
    return resp if resp.DESCRIPTOR.name == "Response" else resp.response


async def assert_pings(channel: Any) -> None:
    resp = await cmd_pb2_grpc.CmdStub(channel).Ping(cmd_pb2.EmptyRequest(),
                                                    timeout=CALL_TIMEOUT_S)
    assert resp.success is True


# --- start-up: readiness rename, permissions, stale sockets ----------------------------


@pytest.mark.parametrize(("nonroot", "mode"), [(False, 0o600), (True, 0o660)])
def test_start_renames_to_ready_socket(paths: Paths, nonroot: bool, mode: int) -> None:
    async def scenario() -> None:
        async with serving(paths, nonroot=nonroot):
            assert not present(paths.init)
            st = os.stat(paths.ready)
            assert stat.S_ISSOCK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == mode
            assert st.st_uid == os.getuid()
            async with dial(paths.ready) as channel:
                await assert_pings(channel)

    asyncio.run(scenario())


def test_stale_files_are_replaced(paths: Paths) -> None:
    # A previous launcher's leftovers: a regular file at the init path and a dead socket
    # (bound, then closed: nobody accepts on it) at the ready path.
    Path(paths.init).write_text("stale")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(paths.ready)
    dead.close()
    assert present(paths.ready)

    async def scenario() -> None:
        async with serving(paths):
            assert not present(paths.init)
            assert stat.S_ISSOCK(os.stat(paths.ready).st_mode)
            async with dial(paths.ready) as channel:
                await assert_pings(channel)

    asyncio.run(scenario())


def test_stop_removes_sockets(paths: Paths) -> None:
    async def scenario() -> None:
        server = CmdServer(init_socket=paths.init, ready_socket=paths.ready, nonroot=False,
                           handlers={"Ping": ping_ok})
        try:
            await server.start()
            assert present(paths.ready)
        finally:
            await server.stop(0)
        assert not present(paths.ready)
        assert not present(paths.init)
        await server.stop(0)  # idempotent
        async with dial(paths.ready) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await cmd_pb2_grpc.CmdStub(channel).Ping(cmd_pb2.EmptyRequest(), timeout=2)
            assert err.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                        grpc.StatusCode.DEADLINE_EXCEEDED)

    asyncio.run(scenario())


@pytest.mark.parametrize("ping", ["unregistered", "answers-failure"])
def test_start_does_not_spin_when_self_ping_answers_failure(
        paths: Paths, monkeypatch: pytest.MonkeyPatch, ping: str) -> None:
    """A self-ping answered with success=false (no Ping handler, or a failing one) must end
    start() within the self-ping timeout (ready or an error) instead of re-pinging forever."""
    monkeypatch.setattr(cmd_server, "SELF_PING_TIMEOUT_S", 0.5)

    async def ping_fails(request: Any, context: Any) -> Any:
        return cmd_pb2.Response(success=False, message="not yet")

    handlers: dict[str, Handler] = {} if ping == "unregistered" else {"Ping": ping_fails}

    async def scenario() -> None:
        server = CmdServer(init_socket=paths.init, ready_socket=paths.ready, nonroot=False,
                           handlers=handlers)
        try:
            await asyncio.wait_for(server.start(), 5)
        except RuntimeError:
            assert not present(paths.ready), "not ready, yet renamed to ready"
        except TimeoutError:
            pytest.fail("CmdServer.start() kept self-pinging for 5 s with a 0.5 s self-ping "
                        "timeout: a success=false Ping answer never reaches the deadline check")
        finally:
            await server.stop(0)

    asyncio.run(scenario())


# --- the handshake and implemented rpcs -------------------------------------------------


def test_info_ping_and_registered_handler(paths: Paths) -> None:
    calls: list[tuple[Any, Any]] = []
    domain = '{"kind":"Domain","apiVersion":"1.2.2"}'

    async def get_domain(request: Any, context: Any) -> Any:
        calls.append((request, context))
        return cmd_pb2.DomainResponse(response=cmd_pb2.Response(success=True), domain=domain)

    async def scenario() -> None:
        async with serving(paths, {"GetDomain": get_domain}), dial(paths.ready) as channel:
            info = await info_pb2_grpc.CmdInfoStub(channel).Info(
                info_pb2.CmdInfoRequest(), timeout=CALL_TIMEOUT_S)
            assert list(info.supportedCmdVersions) == [1]
            await assert_pings(channel)
            resp = await cmd_pb2_grpc.CmdStub(channel).GetDomain(
                cmd_pb2.EmptyRequest(), timeout=CALL_TIMEOUT_S)
            assert resp.response.success is True
            assert resp.response.message == ""
            assert resp.domain == domain

    asyncio.run(scenario())
    ((request, context),) = calls
    assert request == cmd_pb2.EmptyRequest()
    assert context is not None


def test_unknown_request_fields_are_tolerated(paths: Paths) -> None:
    async def scenario() -> None:
        async with serving(paths), dial(paths.ready) as channel:
            raw_ping = channel.unary_unary(method_path("Ping"), request_serializer=None,
                                           response_deserializer=cmd_pb2.Response.FromString)
            # field 1 varint 1, field 15 string "x": EmptyRequest has neither
            resp = await raw_ping(b"\x08\x01\x7a\x01x", timeout=CALL_TIMEOUT_S)
            assert resp.success is True

    asyncio.run(scenario())


# --- every rpc of the contract answers -------------------------------------------------


def test_every_cmd_rpc_answers(paths: Paths) -> None:
    rpcs = [m.name for m in CMD.methods]
    assert set(rpcs) >= STATUS_CODE_RPCS
    assert {"SyncVirtualMachine", "GetDomain", "Ping", "Exec"} <= set(rpcs)
    seen: dict[str, str] = {}

    async def scenario() -> None:
        async with serving(paths), dial(paths.ready) as channel:
            for rpc in rpcs:
                call, in_cls, out_cls = typed_call(channel, rpc)
                if rpc in STATUS_CODE_RPCS:
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await call(in_cls(), timeout=CALL_TIMEOUT_S)
                    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED, rpc
                    assert rpc in err.value.details()
                    seen[rpc] = "UNIMPLEMENTED"
                    continue
                resp = await call(in_cls(), timeout=CALL_TIMEOUT_S)
                assert isinstance(resp, out_cls)
                inner = inner_response(resp)
                if rpc == "Ping":
                    assert inner.success is True
                else:
                    assert inner.success is False, rpc
                    assert inner.message == f"{rpc} is not served by this command server"
                seen[rpc] = "OK"
            await assert_pings(channel)

    asyncio.run(scenario())
    assert set(seen) == set(rpcs)


def test_unknown_method_is_unimplemented(paths: Paths) -> None:
    async def scenario() -> None:
        async with serving(paths), dial(paths.ready) as channel:
            for path in (method_path("NoSuchRpc"), "/kubevirt.cmd.v2.Cmd/Ping"):
                call = channel.unary_unary(path, request_serializer=None,
                                           response_deserializer=None)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call(b"", timeout=CALL_TIMEOUT_S)
                assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            await assert_pings(channel)

    asyncio.run(scenario())


# --- robustness ------------------------------------------------------------------------

GARBAGE = [b"\xff\xff\xff", b"\x0a\x05ab", b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"]
BAD_REQUEST_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT,
                     grpc.StatusCode.UNKNOWN}


@pytest.mark.parametrize("rpc", ["SyncVirtualMachine", "GetDomain", "Ping", "Exec",
                                 "CmdInfo.Info"])
def test_garbage_request_bytes(paths: Paths, rpc: str) -> None:
    called: list[str] = []

    async def get_domain(request: Any, context: Any) -> Any:
        called.append("GetDomain")
        return cmd_pb2.DomainResponse(response=cmd_pb2.Response(success=True))

    path = ("/kubevirt.cmd.info.CmdInfo/Info" if rpc == "CmdInfo.Info" else method_path(rpc))

    async def scenario() -> None:
        async with serving(paths, {"GetDomain": get_domain}), dial(paths.ready) as channel:
            call = channel.unary_unary(path, request_serializer=None,
                                       response_deserializer=None)
            for garbage in GARBAGE:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call(garbage, timeout=CALL_TIMEOUT_S)
                assert err.value.code() in BAD_REQUEST_CODES, (garbage, err.value)
                await assert_pings(channel)

    asyncio.run(scenario())
    assert called == []  # undecodable requests never reach a handler


def test_raising_handler_answers_internal_error(paths: Paths) -> None:
    calls: list[str] = []

    async def boom(request: Any, context: Any) -> Any:
        calls.append("boom")
        raise RuntimeError("boom")

    async def scenario() -> None:
        handlers: dict[str, Handler] = {"GetDomain": boom, "PauseVirtualMachine": boom,
                                        "Exec": boom}
        async with serving(paths, handlers), dial(paths.ready) as channel:
            stub = cmd_pb2_grpc.CmdStub(channel)
            for _ in range(3):
                resp = await stub.GetDomain(cmd_pb2.EmptyRequest(), timeout=CALL_TIMEOUT_S)
                assert resp.response.success is False
                assert resp.response.message == "GetDomain: internal error: boom"
                assert resp.domain == ""
                resp = await stub.PauseVirtualMachine(cmd_pb2.VMIRequest(),
                                                      timeout=CALL_TIMEOUT_S)
                assert resp.success is False
                assert resp.message == "PauseVirtualMachine: internal error: boom"
                # status-code rpcs report the failure as gRPC INTERNAL
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Exec(cmd_pb2.ExecRequest(), timeout=CALL_TIMEOUT_S)
                assert err.value.code() == grpc.StatusCode.INTERNAL
                assert "boom" in err.value.details()
                await assert_pings(channel)

    asyncio.run(scenario())
    assert len(calls) == 9


def test_handler_abort_status_passes_through(paths: Paths) -> None:
    async def guest_ping(request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "agent did not answer")

    async def scenario() -> None:
        async with serving(paths, {"GuestPing": guest_ping}), dial(paths.ready) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await cmd_pb2_grpc.CmdStub(channel).GuestPing(
                    cmd_pb2.GuestPingRequest(domainName="ns_vm", timeoutSeconds=1),
                    timeout=CALL_TIMEOUT_S)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert err.value.details() == "agent did not answer"
            await assert_pings(channel)

    asyncio.run(scenario())


def test_concurrent_pings(paths: Paths) -> None:
    async def scenario() -> None:
        async with serving(paths), dial(paths.ready) as channel:
            stub = cmd_pb2_grpc.CmdStub(channel)
            results = await asyncio.wait_for(asyncio.gather(*(
                stub.Ping(cmd_pb2.EmptyRequest(), timeout=10) for _ in range(50))), 30)
            assert len(results) == 50
            assert all(r.success for r in results)

    asyncio.run(scenario())


# --- never TCP ---------------------------------------------------------------------------


def own_socket_inodes() -> set[int]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if m := re.fullmatch(r"socket:\[(\d+)\]", target):
            inodes.add(int(m.group(1)))
    return inodes


def tcp_listen_inodes() -> set[int]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    inodes.add(int(fields[9]))
    return inodes


def unix_listen_paths(inodes: set[int]) -> set[str]:
    paths = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        # Flags __SO_ACCEPTCON (0x10000) marks a listening socket
        if len(fields) >= 8 and int(fields[6]) in inodes and int(fields[3], 16) & 0x10000:
            paths.add(fields[7])
    return paths


def test_tcp_check_detects_a_listener() -> None:
    # the check below is not vacuous: our own TCP listener is found
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert own_socket_inodes() & tcp_listen_inodes()


def test_listens_on_no_tcp_port(paths: Paths) -> None:
    async def scenario() -> None:
        async with serving(paths), dial(paths.ready) as channel:
            await assert_pings(channel)
            ours = own_socket_inodes()
            assert ours, "no socket fds at all: /proc/self/fd not readable?"
            assert not ours & tcp_listen_inodes(), "the command server listens on TCP"
            # ...and it does listen on its UNIX socket (bound under the init name, renamed)
            assert unix_listen_paths(ours) & {paths.init, paths.ready}

    asyncio.run(scenario())
