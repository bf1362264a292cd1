"""Domain events -> notify: a full domain snapshot per event (built when it is sent, so it
is always the latest truth), K8s events for I/O-error pauses, guest panics/crashes and
watchdog actions; a fresh snapshot after every libvirt reconnect."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import libvirt
import structlog

from launcher import domain_json
from launcher.domain_state import (
    NON_EXISTENT,
    Lifecycle,
    State,
    event_type_for,
    lifecycle_name,
    status_and_reason,
)
from launcher.events import (
    AGENT_LIFECYCLE,
    IO_ERROR,
    LIFECYCLE,
    WATCHDOG,
    DomainEvent,
    Subscription,
)
from launcher.libvirt_conn import Connection
from launcher.notifier import Notifier

# A snapshot needs libvirt; while it is reconnecting, wait this long before giving up on
# this one (a fresh snapshot follows the reconnect anyway).
SNAPSHOT_CONN_WAIT_S = 5.0
ALIVE_STATES = (State.RUNNING, State.BLOCKED, State.PAUSED, State.SHUTDOWN, State.PMSUSPENDED)


@dataclass(frozen=True)
class DomainRead:
    state: int
    reason: int
    xml: str
    uuid: str


def read_domain(conn: Any, name: str) -> DomainRead | None:
    """Blocking: run in the executor. None when the domain does not exist (any more)."""
    try:
        dom = conn.lookupByName(name)
        state, reason = dom.state()
        xml = dom.XMLDesc(0)
        return DomainRead(state, reason, xml, dom.UUIDString())
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def k8s_event(*, name: str, namespace: str, uid: str, reason: str, message: str,
              event_type: str = "Warning") -> dict[str, Any]:
    """A core/v1 Event about the VMI, as KubeVirt's notify client sends it; virt-handler
    records type/reason/message on the VMI."""
    now = domain_json.now_rfc3339()
    return {
        "kind": "Event", "apiVersion": "v1",
        "metadata": {"creationTimestamp": None},
        "involvedObject": {"kind": "VirtualMachineInstance", "apiVersion": "kubevirt.io/v1",
                           "namespace": namespace, "name": name, "uid": uid},
        "reason": reason, "message": message,
        "source": {"component": "virt-launcher"},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1, "type": event_type,
        "eventTime": None, "reportingComponent": "", "reportingInstance": "",
    }


class DomainRelay:
    def __init__(self, *, conn: Connection, notifier: Notifier, domain: str, name: str,
                 namespace: str, uid: str) -> None:
        self.conn = conn
        self.notifier = notifier
        self.domain = domain
        self.name = name
        self.namespace = namespace
        self.uid = uid
        self.deletion_timestamp: str | None = None
        # Set when our QEMU watcher saw QEMU exit before libvirt reports it: the snapshot
        # then says Shutoff with this reason instead of libvirt's stale "Running".
        self.qemu_exit_reason: str | None = None
        self.agent_connected = False
        # Until our domain has been seen there is nothing to report: a "does not exist"
        # snapshot before virt-handler's Sync would read as a deletion.
        self.domain_seen = False
        self.events_seen = 0
        self.changed = asyncio.Event()  # pulsed on every event of our domain
        self.listeners: list[Callable[[DomainEvent], None]] = []
        # The agent cache's contribution to Status (Interfaces, OSInfo, FSFreezeStatus).
        self.guest_status: Callable[[], dict[str, Any]] | None = None
        self._io_error_disks: set[str] = set()
        self._added_pending = False
        self._callback_ids: list[int] = []
        self._subscription: Subscription | None = None
        self._log = structlog.get_logger().bind(domain=domain)

    # --- subscription -----------------------------------------------------------------
    async def attach(self, conn: Any) -> None:
        """Subscribe on a (new) connection and send a fresh snapshot: after a reconnect the
        receiver must not be left with state from before the gap."""
        loop = asyncio.get_running_loop()
        self._subscription = Subscription(loop, self.on_event)
        self._callback_ids = await self.conn.call(self._subscription.register, conn)
        self._log.info("subscribed to libvirt events", callbacks=len(self._callback_ids))
        self.resync()

    def resync(self) -> None:
        if self.domain_seen:
            self.notifier.submit_domain(self.domain, self._builder("MODIFIED"))
        self._pulse()

    # --- events -----------------------------------------------------------------------
    def on_event(self, ev: DomainEvent) -> None:
        """On the asyncio loop (handed over from libvirt's thread)."""
        if ev.domain != self.domain:
            return
        self.domain_seen = True
        self.events_seen += 1
        # Cheap fields only: this runs for every event of a burst, debug enabled or not.
        self._log.debug("domain event", kind=ev.kind, lifecycle=(ev.event, ev.detail))
        event_type = event_type_for(ev.event, ev.detail) if ev.kind == LIFECYCLE else "MODIFIED"
        if event_type == "ADDED":
            # Sticky: a MODIFIED coalescing over a pending ADDED must not hide the add.
            self._added_pending = True
        self.notifier.submit_domain(self.domain, self._builder(event_type))
        if ev.kind == AGENT_LIFECYCLE:
            self.agent_connected = ev.info.get("state") == "connected"
        self._k8s_events(ev)
        for listener in self.listeners:
            listener(ev)
        self._pulse()

    def _pulse(self) -> None:
        # Wake everyone waiting for "something changed", then re-arm.
        self.changed.set()
        self.changed = asyncio.Event()

    def _k8s_events(self, ev: DomainEvent) -> None:
        def send(reason: str, message: str) -> None:
            self._log.warning("k8s event", reason=reason, message=message)
            self.notifier.submit_k8s_event(k8s_event(
                name=self.name, namespace=self.namespace, uid=self.uid, reason=reason,
                message=message))

        if ev.kind == IO_ERROR and ev.info.get("action") == "pause":
            alias = str(ev.info.get("alias", ""))
            if alias not in self._io_error_disks:  # one per failing disk per pause
                self._io_error_disks.add(alias)
                send("IOerror", f"VM Paused due to IO error at the volume: {alias} "
                                f"({ev.info.get('path', '')}: {ev.info.get('reason', '')})")
        elif ev.kind == WATCHDOG:
            send("WatchdogFired", f"guest watchdog fired; action: {ev.info.get('action')}")
        elif ev.kind == LIFECYCLE and ev.event == Lifecycle.CRASHED:
            send("GuestPanicked", f"the guest crashed ({lifecycle_name(ev.event, ev.detail or 0)})")
        elif ev.kind == LIFECYCLE and ev.event == Lifecycle.STOPPED and ev.detail in (2, 5):
            # STOPPED/CRASHED or STOPPED/FAILED: QEMU died under the guest.
            send("QemuCrashed", f"the VM stopped unexpectedly "
                                f"({lifecycle_name(ev.event, ev.detail or 0)})")
        elif ev.kind == LIFECYCLE and ev.event == Lifecycle.RESUMED:
            self._io_error_disks.clear()

    # --- snapshots --------------------------------------------------------------------
    def _builder(self, event_type: str) -> Callable[[], Any]:
        async def build() -> tuple[Any, bytes]:
            etype = "ADDED" if self._added_pending else event_type
            result = await self.snapshot(etype)
            self._added_pending = False
            return result
        return build

    async def read(self) -> DomainRead | None:
        try:
            async with asyncio.timeout(SNAPSHOT_CONN_WAIT_S):
                await self.conn.wait_connected()
        except TimeoutError:
            raise ConnectionError("libvirt is not connected") from None
        read: DomainRead | None = await self.conn.call(read_domain, self.conn.conn, self.domain)
        if read is not None and not self.domain_seen:
            self.domain_seen = True
        return read

    async def snapshot(self, event_type: str = "MODIFIED") -> tuple[Any, bytes]:
        read = await self.read()
        deletion: str | None
        if read is None:
            status, reason = NON_EXISTENT
            spec: dict[str, Any] = {"Name": self.domain}
            deletion = self.deletion_timestamp or domain_json.now_rfc3339()
            event_type = "MODIFIED"
        else:
            status, reason = status_and_reason(read.state, read.reason)
            if self.qemu_exit_reason is not None and read.state in ALIVE_STATES:
                status, reason = "Shutoff", self.qemu_exit_reason
            spec = domain_json.spec_from_xml(read.xml)
            deletion = self.deletion_timestamp
        uid = self.uid or spec.get("Metadata", {}).get("KubeVirt", {}).get("UID", "")
        guest = self.guest_status() if self.guest_status is not None else None
        doc = domain_json.build(name=self.name, namespace=self.namespace, uid=uid,
                                status=status, reason=reason, spec=spec,
                                deletion_timestamp=deletion, guest=guest)
        return event_type, domain_json.dumps(doc)

    def mark_deleting(self) -> None:
        """The pod is going away: every snapshot from now on carries deletionTimestamp."""
        if self.deletion_timestamp is None:
            self.deletion_timestamp = domain_json.rfc3339(datetime.now(UTC))
            self.resync()

    async def detach(self) -> None:
        conn = self.conn.conn
        if conn is not None and self._subscription is not None and self._callback_ids:
            with contextlib.suppress(libvirt.libvirtError):
                await self.conn.call(self._subscription.deregister, conn, self._callback_ids)
        self._callback_ids = []
