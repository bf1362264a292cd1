"""Guest agent rpcs: Exec and GuestPing (real gRPC status codes, as KubeVirt, whose handlers
return the Go error there), GetGuestInfo / GetUsers / GetFilesystems (from the agent cache,
never the agent), Freeze / Unfreeze (launcher.guest.freeze.FreezeManager).

Beyond KubeVirt: Exec arguments JSON-encoded (KubeVirt splices them into a string) and a
signal-killed command reported as 128+signal; GuestPing honours timeoutSeconds.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import libvirt

from launcher._proto.kubevirt.cmd.v1 import cmd_pb2
from launcher.cmd.base import (
    RUNNING,
    CmdContext,
    RpcStatus,
    compact,
    ok,
    query,
    status_name,
    vmi_rpc,
)
from launcher.cmd.server import Handler
from launcher.cmd.vmi import VMI
from launcher.guest import info as guest_info
from launcher.guest.agent_command import AGENT_TIMEOUT_S, AgentTimeout, agent_command
from launcher.guest.agent_command import request as agent_request
from launcher.libvirt.errors import libvirt_message
from launcher.notify.domain_state import ALIVE_STATES, status_and_reason
from launcher.notify.relay import DomainRead

EXEC_POLL_S = 0.1


def _status_code(exc: libvirt.libvirtError) -> grpc.StatusCode:
    """gRPC status for a libvirt error in Exec/GuestPing (KubeVirt: always UNKNOWN, its
    handlers return the bare Go error; virt-handler only checks err != nil)."""
    code = exc.get_error_code()
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return grpc.StatusCode.NOT_FOUND
    if code == libvirt.VIR_ERR_AGENT_UNRESPONSIVE:
        return grpc.StatusCode.UNAVAILABLE
    if code in (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
                libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED):
        # domain not running / agent not configured / driver without an agent
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.UNKNOWN


class Agent:
    def __init__(self, ctx: CmdContext) -> None:
        self.ctx = ctx
        self.domain = ctx.domain
        self._log = ctx.log
        # GetGuestInfo's JSON, rebuilt only when the cache or the agent's presence changes.
        self._guest_info_json: tuple[tuple[int, bool], str] | None = None

    def handlers(self) -> dict[str, Handler]:
        return {
            "FreezeVirtualMachine": vmi_rpc(self.ctx, "FreezeVirtualMachine", self._freeze),
            "UnfreezeVirtualMachine": vmi_rpc(self.ctx, "UnfreezeVirtualMachine",
                                              self._unfreeze),
            "GetGuestInfo": query("GetGuestInfo", self._get_guest_info),
            "GetUsers": query("GetUsers", self._get_users),
            "GetFilesystems": query("GetFilesystems", self._get_filesystems),
            "Exec": self._exec,
            "GuestPing": self._guest_ping,
        }

    # --- freeze / thaw ----------------------------------------------------------------------
    async def _freeze(self, vmi: VMI, request: Any) -> None:
        await self.ctx.freeze.freeze(int(request.unfreezeTimeoutSeconds))

    async def _unfreeze(self, vmi: VMI, request: Any) -> None:
        await self.ctx.freeze.thaw()

    # --- from the agent cache -----------------------------------------------------------------
    async def _get_guest_info(self) -> Any:
        agent, relay = self.ctx.agent, self.ctx.relay
        key = (agent.version, relay.agent_connected)
        if self._guest_info_json is None or self._guest_info_json[0] != key:
            raw = agent.raw()
            if not relay.agent_connected:
                # The agent is gone (now): no agent version, so virt-freezer reports "No
                # guest agent" and a backup hook succeeds instead of failing on a freeze that
                # cannot work. The rest of what it last said stays (no flapping).
                raw.pop("guest-info", None)
            self._guest_info_json = (key, compact(guest_info.guest_info_json(raw)))
        return cmd_pb2.GuestInfoResponse(response=cmd_pb2.Response(success=True),
                                         guestInfoResponse=self._guest_info_json[1])

    async def _get_users(self) -> Any:
        return cmd_pb2.GuestUserListResponse(
            response=cmd_pb2.Response(success=True),
            guestUserListResponse=compact(guest_info.users_json(self.ctx.agent.raw())))

    async def _get_filesystems(self) -> Any:
        return cmd_pb2.GuestFilesystemsResponse(
            response=cmd_pb2.Response(success=True),
            guestFilesystemsResponse=compact(guest_info.filesystems_json(self.ctx.agent.raw())))

    # --- Exec and GuestPing (real gRPC status codes) ------------------------------------------
    def _check_domain_name(self, rpc: str, name: str) -> None:
        if not name:
            raise RpcStatus(grpc.StatusCode.INVALID_ARGUMENT, f"{rpc}: domainName: required")
        if name != self.domain:
            raise RpcStatus(grpc.StatusCode.NOT_FOUND,
                            f'{rpc}: domain "{name}" is not this launcher\'s domain '
                            f'"{self.domain}"')

    async def _agent_command(self, command: str, timeout_s: int) -> str:
        try:
            return await agent_command(self.ctx.agent_libvirt, command, timeout_s=timeout_s)
        except AgentTimeout:
            raise RpcStatus(grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"the guest agent did not answer within {timeout_s}s") from None

    async def _agent_rpc(self, rpc: str, context: grpc.aio.ServicerContext,
                         body: Callable[[], Awaitable[Any]],
                         on_failure: Callable[[], None] | None = None) -> Any:
        try:
            return await body()
        except RpcStatus as exc:
            problem: tuple[grpc.StatusCode, str] = (exc.code, exc.message)
        except libvirt.libvirtError as exc:
            problem = (_status_code(exc), f"{rpc}: {libvirt_message(exc)}")
        except ConnectionError as exc:
            problem = (grpc.StatusCode.UNAVAILABLE, f"{rpc}: {exc}")
        self._log.info("agent rpc failed", rpc=rpc, code=problem[0].name, error=problem[1])
        if on_failure is not None:
            on_failure()
        await context.abort(*problem)

    async def _agent_domain(self, rpc: str) -> DomainRead:
        read = await self.ctx.relay.read()
        if read is None:
            raise RpcStatus(grpc.StatusCode.NOT_FOUND, f"{rpc}: domain {self.domain} not found")
        return read

    async def _exec(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def body() -> Any:
            self._check_domain_name("Exec", request.domainName)
            if not request.Command:
                raise RpcStatus(grpc.StatusCode.INVALID_ARGUMENT, "Exec: Command: required")
            if request.timeoutSeconds <= 0:
                raise RpcStatus(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Exec: timeoutSeconds must be > 0, got {request.timeoutSeconds}")
            read = await self._agent_domain("Exec")
            if read.state not in RUNNING:
                raise RpcStatus(grpc.StatusCode.FAILED_PRECONDITION,
                                f"Exec: domain {self.domain} is {status_name(read)}; the "
                                "guest agent can only run commands in a running guest")
            exit_code, out = await self._guest_exec(request.Command, list(request.Args),
                                                    int(request.timeoutSeconds))
            # A non-zero exit is the command's answer, not an rpc error.
            return cmd_pb2.ExecResponse(response=cmd_pb2.Response(success=True),
                                        exitCode=exit_code, stdOut=out)

        return await self._agent_rpc("Exec", context, body)

    async def _guest_exec(self, path: str, args: list[str], timeout_s: int) -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s

        def agent_timeout() -> int:
            return max(1, min(AGENT_TIMEOUT_S, math.ceil(deadline - loop.time())))

        # JSON-encoded, not spliced (KubeVirt's): quotes in arguments stay arguments.
        start = agent_request("guest-exec", {"path": path, "arg": args, "capture-output": True})
        answer = await self._agent_command(start, agent_timeout())
        try:
            pid = json.loads(answer)["return"]["pid"]
        except (ValueError, KeyError, TypeError):
            pid = None
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            raise RpcStatus(grpc.StatusCode.UNKNOWN,
                            f"Exec: invalid pid returned by the guest agent: {answer[:200]}")
        status_cmd = agent_request("guest-exec-status", {"pid": pid})
        while True:
            answer = await self._agent_command(status_cmd, agent_timeout())
            try:
                ret = json.loads(answer)["return"]
            except (ValueError, KeyError, TypeError):
                ret = None
            if not isinstance(ret, dict):
                raise RpcStatus(grpc.StatusCode.UNKNOWN,
                                f"Exec: unexpected guest-exec-status answer: {answer[:200]}")
            if ret.get("exited") is True:
                return self._exec_result(ret)
            if loop.time() >= deadline:
                raise RpcStatus(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"Exec: timed out after {timeout_s}s waiting for guest pid "
                                f"[{pid}] for command [{path}] to exit")
            await asyncio.sleep(min(EXEC_POLL_S, max(0.0, deadline - loop.time())))

    @staticmethod
    def _exec_result(ret: dict[str, Any]) -> tuple[int, str]:
        try:
            out = base64.b64decode(ret.get("out-data") or "", validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise RpcStatus(grpc.StatusCode.UNKNOWN,
                            "Exec: the guest agent returned undecodable output") from None
        code = ret.get("exitcode")
        if not isinstance(code, int) or isinstance(code, bool):
            # Killed by a signal: qemu-ga reports "signal" instead; the shell's convention
            # (KubeVirt would report 0 here).
            signal = ret.get("signal")
            code = 128 + signal if isinstance(signal, int) and not isinstance(signal, bool) \
                else 0
        return code, out.decode("utf-8", errors="replace")

    async def _guest_ping(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """As KubeVirt's: the agent command goes to libvirt whatever the domain's state, so
        a paused (or shut-off) domain fails with libvirt's own error ("domain is not
        running"): the guest-agent readiness probe and virt-probe rely on failing there.
        Every failure also raises a Warning K8s event GuestAgentPingFailed."""
        async def body() -> Any:
            self._check_domain_name("GuestPing", request.domainName)
            read = await self._agent_domain("GuestPing")
            status, reason = status_and_reason(read.state, read.reason)
            if read.state not in ALIVE_STATES:
                raise RpcStatus(grpc.StatusCode.FAILED_PRECONDITION,
                                f"GuestPing: domain {self.domain} is {status} ({reason})")
            # Beyond KubeVirt: the request's timeout is honoured (KubeVirt uses libvirt's
            # default whatever the probe asked for).
            timeout = request.timeoutSeconds if request.timeoutSeconds > 0 else AGENT_TIMEOUT_S
            await self._agent_command('{"execute":"guest-ping"}', int(timeout))
            return ok("GuestPing")

        def failed() -> None:
            self.ctx.relay.k8s_warning("GuestAgentPingFailed",
                                       f"GuestAgentPing probe failed for VMI {self.ctx.opts.name}")

        return await self._agent_rpc("GuestPing", context, body, on_failure=failed)
