"""Query rpcs: GetDomain (the domain JSON with the agent's OS info and interfaces), Ping,
GetQemuVersion."""

from __future__ import annotations

import json
from typing import Any

import grpc

from launcher._proto.kubevirt.cmd.v1 import cmd_pb2
from launcher.cmd.base import CmdContext, compact, query
from launcher.cmd.server import Handler
from launcher.guest import info as guest_info


class Queries:
    def __init__(self, ctx: CmdContext) -> None:
        self.ctx = ctx

    def handlers(self) -> dict[str, Handler]:
        return {
            "GetDomain": query("GetDomain", self._get_domain),
            "GetQemuVersion": query("GetQemuVersion", self._get_qemu_version),
            "Ping": self._ping,
        }

    async def _ping(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return cmd_pb2.Response(success=True)

    async def _get_domain(self) -> Any:
        relay = self.ctx.relay
        read = await relay.read()
        if read is None:
            # KubeVirt answers success with no domain when it does not exist.
            return cmd_pb2.DomainResponse(response=cmd_pb2.Response(success=True))
        _, raw = await relay.snapshot()
        doc = json.loads(raw)
        status = doc.get("Status")
        if isinstance(status, dict) and status.get("Reason") != "NonExistent":
            # KubeVirt's GetDomain adds the agent's OS info and interfaces.
            status.update(guest_info.domain_status_fields(self.ctx.agent.raw()))
        return cmd_pb2.DomainResponse(response=cmd_pb2.Response(success=True),
                                      domain=compact(doc))

    async def _get_qemu_version(self) -> Any:
        def version(conn: Any) -> int:
            value: int = conn.getVersion()
            return value

        value = await self.ctx.libvirt.call_conn(version)
        # KubeVirt's format: major*1000000 + minor*1000 + release -> "QEMU x.y.z"
        major, rest = divmod(value, 1_000_000)
        minor, release = divmod(rest, 1_000)
        return cmd_pb2.QemuVersionResponse(response=cmd_pb2.Response(success=True),
                                           version=f"QEMU {major}.{minor}.{release}")
