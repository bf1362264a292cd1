"""libvirt domain events -> the asyncio loop.

One Python callback per event id (libvirt-python tracks only one per (connection, id,
domain)), all multiplexed into DomainEvent records. Callbacks run on libvirt's event thread:
they only read what the virDomain object already holds (name, UUID: no RPC) and hand the
record to the loop with call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import libvirt
import structlog

from launcher.notify.domain_state import (
    AGENT_REASONS,
    AGENT_STATES,
    IO_ERROR_ACTIONS,
    WATCHDOG_ACTIONS,
)

LIFECYCLE = "lifecycle"
REBOOT = "reboot"
DEVICE_ADDED = "device-added"
DEVICE_REMOVED = "device-removed"
DEVICE_REMOVAL_FAILED = "device-removal-failed"
MEMORY_DEVICE_SIZE_CHANGE = "memory-device-size-change"
JOB_COMPLETED = "job-completed"
AGENT_LIFECYCLE = "agent-lifecycle"
IO_ERROR = "io-error-reason"
WATCHDOG = "watchdog"
CONTROL_ERROR = "control-error"


@dataclass(frozen=True)
class DomainEvent:
    kind: str
    domain: str
    uuid: str
    event: int | None = None  # lifecycle: virDomainEventType
    detail: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)


Sink = Callable[[DomainEvent], None]


def _dom(dom: Any) -> tuple[str, str]:
    return dom.name(), dom.UUIDString()


class Subscription:
    """Registers every callback on a connection; undone with deregister()."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sink: Sink) -> None:
        self._loop = loop
        self._sink = sink
        self._log = structlog.get_logger().bind(part="events")

    def _emit(self, ev: DomainEvent) -> None:
        # libvirt's event thread. call_soon_threadsafe raises RuntimeError once the loop is
        # closed (launcher exiting): then there is nobody left to tell.
        try:
            self._loop.call_soon_threadsafe(self._sink, ev)
        except RuntimeError:
            return

    # One method per callback signature (libvirt-python passes conn, dom, ..., opaque).
    def _lifecycle(self, _c: Any, dom: Any, event: int, detail: int, _o: Any) -> None:
        self._emit(DomainEvent(LIFECYCLE, *_dom(dom), event=event, detail=detail))

    def _reboot(self, _c: Any, dom: Any, _o: Any) -> None:
        self._emit(DomainEvent(REBOOT, *_dom(dom)))

    def _device(self, kind: str) -> Callable[..., None]:
        def cb(_c: Any, dom: Any, alias: str, _o: Any) -> None:
            self._emit(DomainEvent(kind, *_dom(dom), info={"alias": alias}))
        return cb

    def _memory_size(self, _c: Any, dom: Any, alias: str, size: int, _o: Any) -> None:
        self._emit(DomainEvent(MEMORY_DEVICE_SIZE_CHANGE, *_dom(dom),
                               info={"alias": alias, "size": size}))

    def _job_completed(self, _c: Any, dom: Any, params: dict[str, Any], _o: Any) -> None:
        self._emit(DomainEvent(JOB_COMPLETED, *_dom(dom), info={"params": dict(params)}))

    def _agent(self, _c: Any, dom: Any, state: int, reason: int, _o: Any) -> None:
        self._emit(DomainEvent(AGENT_LIFECYCLE, *_dom(dom), info={
            "state": AGENT_STATES.get(state, str(state)),
            "reason": AGENT_REASONS.get(reason, str(reason))}))

    def _io_error(self, _c: Any, dom: Any, src: str, alias: str, action: int, reason: str,
                  _o: Any) -> None:
        self._emit(DomainEvent(IO_ERROR, *_dom(dom), info={
            "path": src, "alias": alias, "action": IO_ERROR_ACTIONS.get(action, str(action)),
            "reason": reason}))

    def _watchdog(self, _c: Any, dom: Any, action: int, _o: Any) -> None:
        self._emit(DomainEvent(WATCHDOG, *_dom(dom),
                               info={"action": WATCHDOG_ACTIONS.get(action, str(action))}))

    def _control_error(self, _c: Any, dom: Any, _o: Any) -> None:
        self._emit(DomainEvent(CONTROL_ERROR, *_dom(dom)))

    def callbacks(self) -> list[tuple[str, int, Callable[..., None]]]:
        table: list[tuple[str, str, Callable[..., None]]] = [
            (LIFECYCLE, "VIR_DOMAIN_EVENT_ID_LIFECYCLE", self._lifecycle),
            (REBOOT, "VIR_DOMAIN_EVENT_ID_REBOOT", self._reboot),
            (DEVICE_ADDED, "VIR_DOMAIN_EVENT_ID_DEVICE_ADDED", self._device(DEVICE_ADDED)),
            (DEVICE_REMOVED, "VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED",
             self._device(DEVICE_REMOVED)),
            (DEVICE_REMOVAL_FAILED, "VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED",
             self._device(DEVICE_REMOVAL_FAILED)),
            (MEMORY_DEVICE_SIZE_CHANGE, "VIR_DOMAIN_EVENT_ID_MEMORY_DEVICE_SIZE_CHANGE",
             self._memory_size),
            (JOB_COMPLETED, "VIR_DOMAIN_EVENT_ID_JOB_COMPLETED", self._job_completed),
            (AGENT_LIFECYCLE, "VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE", self._agent),
            (IO_ERROR, "VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON", self._io_error),
            (WATCHDOG, "VIR_DOMAIN_EVENT_ID_WATCHDOG", self._watchdog),
            (CONTROL_ERROR, "VIR_DOMAIN_EVENT_ID_CONTROL_ERROR", self._control_error),
        ]
        # Bindings built against an older libvirt may lack newer ids.
        return [(kind, int(getattr(libvirt, const)), cb) for kind, const, cb in table
                if hasattr(libvirt, const)]

    def register(self, conn: Any) -> list[int]:
        """Blocking (an RPC per id): call from the executor. Returns the callback ids."""
        ids = []
        for kind, event_id, cb in self.callbacks():
            try:
                ids.append(conn.domainEventRegisterAny(None, event_id, cb, None))
            except libvirt.libvirtError as exc:
                # e.g. a daemon too old for this event id: the others still matter.
                self._log.warning("cannot subscribe to event", event_id=kind, error=str(exc))
        return ids

    def deregister(self, conn: Any, ids: list[int]) -> None:
        for cb_id in ids:
            try:
                conn.domainEventDeregisterAny(cb_id)
            except libvirt.libvirtError as exc:
                self._log.debug("deregister failed", error=str(exc))
