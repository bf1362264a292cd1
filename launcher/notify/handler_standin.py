"""A stand-in for virt-handler's part in the end of a VM pod's life, for a launcher with no
cluster around it (the demo, the tests, a standalone pod): `virt-launcher-events
--act-as-virt-handler CMD_SOCKET`.

From the newest domain snapshot it decides as virt-handler's sync does
(pkg/virt-handler/vm.go) for a VMI that exists and is not being deleted:
- the domain is marked for graceful shutdown (gracePeriod metadata) and alive:
  ShutdownVirtualMachine, again every 5 s while it has not reached ShuttingDown
  (handleVMIShutdown re-queues, "a booting OS can miss ACPI signals"), and
  KillVirtualMachine once the grace period, counted from GracePeriod.DeletionTimestamp
  (the first shutdown request), is over (hasGracePeriodExpired; a grace period of 0 kills
  at once);
- the domain exists but is not alive (Shutoff or Crashed) with a reason:
  DeleteVirtualMachine ("Deleting inactive domain", or the final VMI's cleanup); Shutoff
  with no reason yet is a domain that may still be starting, left alone as virt-handler
  defers it;
- the domain is gone (deletionTimestamp): nothing left to do.
Every call and its answer is reported through `emit` (a JSON line on stdout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import grpc
import structlog

from launcher._proto.kubevirt.cmd.v1 import cmd_pb2, cmd_pb2_grpc

RESHUTDOWN_S = 5.0  # virt-handler re-sends the graceful shutdown at most every 5 s
TICK_S = 0.5  # grace expiry and retries are looked at this often besides every snapshot
CALL_TIMEOUT_S = 20.0  # KubeVirt's deadline for VMI commands
MIN_REPEAT_S = 1.0  # the same call for the same state, at most this often

Emit = Callable[[dict[str, Any]], Awaitable[None]]


def _grace(domain: dict[str, Any]) -> dict[str, Any]:
    meta = domain.get("Spec", {}).get("Metadata", {}).get("KubeVirt", {})
    grace = meta.get("GracePeriod") if isinstance(meta, dict) else None
    return grace if isinstance(grace, dict) else {}


def _epoch(rfc3339: str) -> float | None:
    try:
        return datetime.fromisoformat(rfc3339).timestamp()
    except ValueError:
        return None


def decide(domain: dict[str, Any], now: float) -> str | None:
    """The rpc virt-handler would call for this snapshot ("Shutdown", "Kill", "Delete"),
    or None."""
    if domain.get("ObjectMeta", {}).get("deletionTimestamp"):
        return None  # gone
    status = domain.get("Status", {})
    state, reason = status.get("Status", ""), status.get("Reason", "")
    if state in ("Shutoff", "Crashed", ""):
        return "Delete" if state and reason not in ("", "Unknown") else None
    grace = _grace(domain)
    if not grace.get("MarkedForGracefulShutdown"):
        return None
    seconds = grace.get("DeletionGracePeriodSeconds") or 0
    started = _epoch(grace["DeletionTimestamp"]) if grace.get("DeletionTimestamp") else None
    if seconds <= 0 or (started is not None and now - started >= seconds):
        return "Kill"
    if state == "ShuttingDown":
        return None  # handleVMIShutdown: "already shutting down"
    return "Shutdown"


class HandlerStandIn:
    def __init__(self, cmd_socket: str, emit: Emit) -> None:
        self.cmd_socket = cmd_socket
        self._emit = emit
        self._latest: dict[str, Any] | None = None
        self._wake = asyncio.Event()
        self._last: dict[str, float] = {}  # rpc -> when it was last called
        self._channel: Any = None
        self._log = structlog.get_logger().bind(part="virt-handler-standin",
                                                socket=cmd_socket)

    def observe(self, domain: dict[str, Any]) -> None:
        """A snapshot the launcher sent (called from the notify handler: only records)."""
        self._latest = domain
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        # Created here, on the running loop: grpc.aio objects bind to it.
        self._channel = grpc.aio.insecure_channel(f"unix:{self.cmd_socket}")
        stub = cmd_pb2_grpc.CmdStub(self._channel)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await self._wake.wait()
            self._wake.clear()
            domain = self._latest
            if domain is None:
                continue
            rpc = decide(domain, time.time())
            if rpc is None or not self._due(rpc):
                continue
            await self._call(stub, rpc, domain)

    def _due(self, rpc: str) -> bool:
        repeat = RESHUTDOWN_S if rpc == "Shutdown" else MIN_REPEAT_S
        return time.monotonic() - self._last.get(rpc, -repeat) >= repeat

    async def _call(self, stub: Any, rpc: str, domain: dict[str, Any]) -> None:
        self._last[rpc] = time.monotonic()
        meta = domain.get("ObjectMeta", {})
        vmi = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
               "metadata": {k: meta[k] for k in ("name", "namespace", "uid") if meta.get(k)}}
        request = cmd_pb2.VMIRequest(vmi=cmd_pb2.VMI(vmiJson=json.dumps(vmi).encode()))
        method = getattr(stub, f"{rpc}VirtualMachine")
        record: dict[str, Any] = {"kind": "handler", "action": rpc,
                                  "status": domain.get("Status", {}).get("Status", ""),
                                  "at": time.time()}
        try:
            response = await method(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            # virt-handler ignores a launcher that went away during the call.
            record.update(success=False, message=f"{exc.code().name}: {exc.details()}")
        else:
            record.update(success=response.success, message=response.message)
        self._log.info("virt-handler call", action=rpc, success=record["success"],
                       message=record["message"])
        await self._emit(record)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
