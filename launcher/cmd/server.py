"""KubeVirt's command API (kubevirt.cmd.v1.Cmd + kubevirt.cmd.info.CmdInfo) over gRPC on a
UNIX socket, never TCP.

Readiness is KubeVirt's: serve on <share>/sockets/launcher-init-sock, ping ourselves, then
rename the socket to launcher-sock. The gRPC server is created here, after every fork the
launcher does (gRPC core does not survive fork()).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog

from launcher._proto.kubevirt.cmd.info import info_pb2 as cmd_info_pb2
from launcher._proto.kubevirt.cmd.info import info_pb2_grpc as cmd_info_grpc
from launcher._proto.kubevirt.cmd.v1 import cmd_pb2, cmd_pb2_grpc

SUPPORTED_CMD_VERSIONS = [1]
SELF_PING_INTERVAL_S = 1.0  # as KubeVirt
SELF_PING_TIMEOUT_S = 15.0
# rpcs whose errors KubeVirt reports as gRPC status codes rather than Response{success}
STATUS_CODE_RPCS = frozenset({"Exec", "GuestPing", "GetVMStats"})
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def failure(rpc: str, message: str) -> Any:
    """The rpc's response type carrying Response{success: false, message}."""
    method = cmd_pb2.DESCRIPTOR.services_by_name["Cmd"].methods_by_name[rpc]
    out_cls = getattr(cmd_pb2, method.output_type.name)
    resp = cmd_pb2.Response(success=False, message=message)
    if method.output_type.name == "Response":
        return resp
    return out_cls(response=resp)


class CmdInfoService(cmd_info_grpc.CmdInfoServicer):  # type: ignore[misc]
    async def Info(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return cmd_info_pb2.CmdInfoResponse(supportedCmdVersions=SUPPORTED_CMD_VERSIONS)


class CmdService(cmd_pb2_grpc.CmdServicer):  # type: ignore[misc]
    """Every rpc of the contract answers. The launcher's `handlers` cover all of them
    (launcher.cmd.commands checks that); a server given fewer (a test's canned set) says
    specifically that it does not serve the rest (never a crash, never a hang)."""

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self._handlers = handlers
        self._log = structlog.get_logger().bind(part="cmd-server")
        service = cmd_pb2.DESCRIPTOR.services_by_name["Cmd"]
        for method in service.methods:
            setattr(self, method.name, self._dispatcher(method.name))

    def _dispatcher(self, rpc: str) -> Handler:
        handler = self._handlers.get(rpc)

        async def dispatch(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if handler is None:
                if rpc in STATUS_CODE_RPCS:
                    await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                        f"{rpc} is not served by this command server")
                return failure(rpc, f"{rpc} is not served by this command server")
            try:
                return await handler(request, context)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            # Task boundary: a handler bug must not kill the server; logged with traceback.
            except Exception as exc:  # noqa: BLE001
                self._log.exception("rpc failed", rpc=rpc)
                if rpc in STATUS_CODE_RPCS:
                    await context.abort(grpc.StatusCode.INTERNAL, f"{rpc}: {exc}")
                return failure(rpc, f"{rpc}: internal error: {exc}")

        return dispatch


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class CmdServer:
    def __init__(self, *, init_socket: str, ready_socket: str, nonroot: bool,
                 handlers: dict[str, Handler]) -> None:
        self.init_socket = init_socket
        self.ready_socket = ready_socket
        self.nonroot = nonroot
        self.handlers = handlers
        self._server: grpc.aio.Server | None = None
        self._log = structlog.get_logger().bind(part="cmd-server")

    async def start(self) -> None:
        for path in (self.init_socket, self.ready_socket):
            _unlink(path)  # a previous launcher's leftovers would refuse connections
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ])
        cmd_pb2_grpc.add_CmdServicer_to_server(CmdService(self.handlers), server)
        cmd_info_grpc.add_CmdInfoServicer_to_server(CmdInfoService(), server)
        server.add_insecure_port(f"unix:{self.init_socket}")
        await server.start()
        self._server = server
        # The process umask (0077) already made it private; be explicit about the contract:
        # owner only, or owner+group when non-root (the pod's group may connect).
        os.chmod(self.init_socket, 0o660 if self.nonroot else 0o600)
        await self._self_ping()
        os.rename(self.init_socket, self.ready_socket)
        self._log.info("command server ready", socket=self.ready_socket)

    async def _self_ping(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SELF_PING_TIMEOUT_S
        async with grpc.aio.insecure_channel(f"unix:{self.init_socket}") as channel:
            stub = cmd_pb2_grpc.CmdStub(channel)
            while True:
                try:
                    resp = await stub.Ping(cmd_pb2.EmptyRequest(), timeout=SELF_PING_INTERVAL_S)
                except grpc.aio.AioRpcError as exc:
                    problem = exc.details() or exc.code().name
                else:
                    if resp.success:
                        return
                    problem = f"Ping answered success=false: {resp.message}"
                if loop.time() > deadline:
                    raise RuntimeError(f"command server self-ping failed: {problem}")
                await asyncio.sleep(SELF_PING_INTERVAL_S)

    async def stop(self, grace_s: float = 2.0) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace_s)
        for path in (self.init_socket, self.ready_socket):
            _unlink(path)
        self._log.info("command server stopped")
