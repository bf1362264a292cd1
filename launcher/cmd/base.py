"""What every rpc family of the command API shares: the errors an rpc answers with, the
plumbing that turns them into responses, and the state the families share (CmdContext).

One module per rpc family (launcher.cmd.lifecycle, .agent, .stats, .dumps, .sync,
.queries), each a class built on the CmdContext with a `handlers()` table;
launcher.cmd.commands assembles them. A new family (migration, hotplug, backup) is a new
module of that shape, listed in launcher.cmd.commands.Commands.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc
import libvirt
import structlog

from launcher._proto.kubevirt.cmd.v1 import cmd_pb2
from launcher.cmd.server import Handler, failure
from launcher.cmd.vmi import VMI, VMIError
from launcher.cmd.vmi import parse as parse_vmi
from launcher.flags import Options
from launcher.guest.freeze import FreezeError, FreezeManager
from launcher.guest.poller import AgentCache
from launcher.libvirt.domain import DomainAccess
from launcher.libvirt.errors import libvirt_message, unsupported_flags
from launcher.notify.domain_state import State, status_and_reason
from launcher.notify.relay import DomainRead, DomainRelay
from launcher.paths import Paths
from launcher.vm.errors import SyncError
from launcher.vm.sync import Syncer

T = TypeVar("T")

CMD_SERVICE = cmd_pb2.DESCRIPTOR.services_by_name["Cmd"]
RUNNING = (State.RUNNING, State.BLOCKED)


class RpcFailure(Exception):
    """An rpc refused or failed with a specific message for the client."""


class RpcStatus(Exception):
    """An Exec/GuestPing failure carried as a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def with_flags(fn: Callable[[int], T], preferred: int, fallback: int) -> T:
    """fn(preferred); if the driver rejects those flags, fn(fallback). Blocking.

    Only drivers other than QEMU (libvirt's test driver, used by the integration tests)
    reject the flags KubeVirt passes; each fallback is the conservative choice (undefine
    without flags refuses rather than deletes NVRAM; shutdown without flags lets the
    driver pick its method; stats without NOWAIT waits for a busy domain)."""
    try:
        return fn(preferred)
    except libvirt.libvirtError as exc:
        if not unsupported_flags(exc):
            raise
    return fn(fallback)


def ok(rpc: str, message: str = "") -> Any:
    method = CMD_SERVICE.methods_by_name[rpc]
    resp = cmd_pb2.Response(success=True, message=message)
    if method.output_type.name == "Response":
        return resp
    return getattr(cmd_pb2, method.output_type.name)(response=resp)


def status_name(read: DomainRead) -> str:
    return status_and_reason(read.state, read.reason)[0]


def compact(doc: Any) -> str:
    # Go's encoding/json output: no spaces.
    return json.dumps(doc, separators=(",", ":"))


@dataclass
class CmdContext:
    """The state the rpc families share. `libvirt` reaches the domain on the main
    connection; `agent_libvirt` on the guest agent's own (see launcher.wiring), so a
    silent agent holds up nothing else."""

    opts: Options
    paths: Paths
    libvirt: DomainAccess
    agent_libvirt: DomainAccess
    relay: DomainRelay
    agent: AgentCache
    freeze: FreezeManager
    syncer: Syncer
    # check-then-act on the domain state, one at a time (lifecycle rpcs)
    modify: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Tasks this object owns beyond an rpc (cache refreshes, a memory dump): close() ends them.
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.domain = self.relay.domain
        self.log = structlog.get_logger().bind(part="commands", domain=self.domain)

    def on(self, *, agent: bool = False) -> DomainAccess:
        """`agent`: the call waits for the guest agent, so it runs on the agent connection."""
        return self.agent_libvirt if agent else self.libvirt

    async def read(self) -> DomainRead:
        read = await self.relay.read()
        if read is None:
            raise RpcFailure(f"domain {self.domain} not found")
        return read

    def require(self, read: DomainRead, states: tuple[State, ...], action: str) -> None:
        if read.state in states:
            return
        if read.state == State.PAUSED:
            raise RpcFailure(f"cannot {action}: domain {self.domain} is paused; unpause first")
        raise RpcFailure(f"cannot {action}: domain {self.domain} is not running "
                         f"({status_name(read)})")


class Family(Protocol):
    """One rpc family: the handlers it serves, by rpc name."""

    def handlers(self) -> dict[str, Handler]: ...


# --- rpc plumbing ---------------------------------------------------------------------------
def vmi_rpc(ctx: CmdContext, rpc: str, body: Callable[[VMI, Any], Awaitable[Any]]) -> Handler:
    """An rpc naming a VMI: validated first (malformed JSON or another VMI than ours is
    refused before libvirt is touched); errors become Response{success: false}."""
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            vmi = parse_vmi(request.vmi.vmiJson, domain=ctx.domain)
            result = await body(vmi, request)
        except (VMIError, RpcFailure, FreezeError, SyncError, ConnectionError) as exc:
            ctx.log.warning("rpc refused", rpc=rpc, error=str(exc))
            return failure(rpc, str(exc))
        except libvirt.libvirtError as exc:
            ctx.log.warning("rpc failed", rpc=rpc, error=libvirt_message(exc))
            return failure(rpc, libvirt_message(exc))
        return ok(rpc) if result is None else result

    return handle


def query(rpc: str, body: Callable[[], Awaitable[Any]]) -> Handler:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await body()
        except (RpcFailure, ConnectionError) as exc:
            return failure(rpc, str(exc))
        except libvirt.libvirtError as exc:
            return failure(rpc, libvirt_message(exc))

    return handle


def unsupported(rpc: str) -> Handler:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return failure(rpc, f"{rpc} is not supported by this launcher")

    return handle


def unimplemented(rpc: str) -> Handler:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            f"{rpc} is not supported by this launcher")

    return handle
