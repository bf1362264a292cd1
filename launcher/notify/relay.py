"""Domain events -> notify: a full domain snapshot per event, K8s events for I/O-error pauses,
guest panics/crashes and watchdog actions; a fresh snapshot after every libvirt reconnect.

What virt-handler concludes from the snapshots (pkg/virt-handler/controller.go, vm.go) shapes
what is sent:
- `ObjectMeta.deletionTimestamp` means "the domain is gone" (controller.go's
  getDomainFromCache drops such a domain). It is set only when the re-read finds no domain
  (NonExistent): after an UNDEFINED event, or the STOPPED event of a transient domain, as
  KubeVirt's notify client does - never while QEMU runs, never on a signal.
- The pod's shutdown is announced with the domain's gracePeriod metadata
  (`Spec.Metadata.KubeVirt.GracePeriod.MarkedForGracefulShutdown`), to which virt-handler
  answers with ShutdownVirtualMachine and, after the grace period, KillVirtualMachine.
- Lifecycle milestones keep their order and their state: a newly defined domain is sent as
  ADDED Shutoff/Unknown (what it is at define time, even when it has started by the time
  the snapshot leaves), a STOPPED event as Shutoff with the event's reason; a started
  migration target as ADDED. Milestones are never coalesced away; every other event only
  asks for "the latest truth", built when it is sent, and those coalesce.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import libvirt
import structlog

from launcher.libvirt.connection import Connection
from launcher.libvirt.domain import DomainAccess
from launcher.notify import domain_json
from launcher.notify.domain_state import (
    ALIVE_STATES,
    DEFINED_ADDED,
    NON_EXISTENT,
    Lifecycle,
    event_type_for,
    lifecycle_name,
    status_and_reason,
    stopped_reason,
)
from launcher.notify.events import (
    AGENT_LIFECYCLE,
    IO_ERROR,
    LIFECYCLE,
    WATCHDOG,
    DomainEvent,
    Subscription,
)
from launcher.notify.notifier import Notifier
from launcher.notify.queues import EventType

# A snapshot needs libvirt; while it is reconnecting, wait this long before giving up on
# this one (a fresh snapshot follows the reconnect anyway).
SNAPSHOT_CONN_WAIT_S = 5.0


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
    """The domain's state as virt-handler gets to see it, and the events that carry it.

    It owns that state: whether the guest agent is connected, what our QEMU watch knows
    before libvirt does, the graceful-shutdown mark and when the domain was found gone.
    The supervisor and the rpcs change it only through the methods below."""

    def __init__(self, *, conn: Connection, notifier: Notifier, domain: str, name: str,
                 namespace: str, uid: str, grace_period_s: int = 30) -> None:
        self.conn = conn
        self._access = DomainAccess(conn, domain)
        self.notifier = notifier
        self.domain = domain
        self.name = name
        self.namespace = namespace
        self.uid = uid
        # Used when the domain's own metadata has no grace period (a domain defined by
        # hand): the launcher's --grace-period-seconds.
        self.grace_period_s = grace_period_s
        self.agent_connected = False
        # Until our domain has been seen there is nothing to report: a "does not exist"
        # snapshot before virt-handler's Sync would read as a deletion.
        self.domain_seen = False
        self.events_seen = 0
        self.changed = asyncio.Event()  # pulsed on every event of our domain
        self.listeners: list[Callable[[DomainEvent], None]] = []
        # The agent cache's contribution to Status (Interfaces, OSInfo, FSFreezeStatus).
        self.guest_status: Callable[[], dict[str, Any]] | None = None
        # Spec.Metadata.KubeVirt.Migration as the migration source holds it (KubeVirt's
        # metadata cache): during a migration job libvirt refuses metadata writes, and
        # virt-handler must still see an abort's progress. None: the domain's own.
        self.migration_metadata: Callable[[], dict[str, Any] | None] | None = None
        # Set when our QEMU watch saw QEMU exit before libvirt reports it: snapshots then
        # say Shutoff with this reason instead of libvirt's stale "Running".
        self._qemu_exit_reason: str | None = None
        # When the domain was first found gone (deletionTimestamp); None while it exists.
        self._gone_at: str | None = None
        self._marked_for_shutdown = False
        self._destroy_noted = False
        self._shutdown_signalled_at: str | None = None  # GracePeriod.DeletionTimestamp
        self._active = False  # the domain is running (or paused...), as last seen
        self._last_read: DomainRead | None = None
        self._milestones = 0
        self._io_error_disks: set[str] = set()
        self._callback_ids: list[int] = []
        self._subscription: Subscription | None = None
        self._log = structlog.get_logger().bind(domain=domain)

    # --- state changes from the supervisor and the rpcs -------------------------------
    def mark_for_graceful_shutdown(self) -> None:
        """The pod is being stopped (SIGTERM): virt-handler learns it from the gracePeriod
        metadata of the next snapshot, sent now (KubeVirt's MarkGracefulShutdownVMI)."""
        if not self._marked_for_shutdown:
            self._marked_for_shutdown = True
            self.resync()

    def graceful_shutdown_signalled(self) -> None:
        """The guest was first asked to power off: GracePeriod.DeletionTimestamp, from which
        virt-handler counts the grace period (KubeVirt's SignalShutdownVMI)."""
        if self._shutdown_signalled_at is None:
            self._shutdown_signalled_at = domain_json.now_rfc3339()
            self.resync()

    @property
    def marked_for_shutdown(self) -> bool:
        return self._marked_for_shutdown

    def note_destroy(self) -> None:
        """A destroy was asked for (the Kill rpc, or our own forced stop): when QEMU's end
        is seen before libvirt reports it, it is reported as Destroyed, not as the end of
        a graceful shutdown (virt-handler's phase rule tells them apart)."""
        self._destroy_noted = True

    @property
    def destroy_noted(self) -> bool:
        return self._destroy_noted

    def qemu_exited(self, reason: str) -> None:
        """Our QEMU watch saw QEMU end (typically before libvirt): report it now."""
        self._qemu_exit_reason = reason
        self.resync()

    def libvirt_caught_up(self) -> None:
        """libvirt's own state is the truth again (or we waited long enough for it)."""
        if self._qemu_exit_reason is not None:
            self._qemu_exit_reason = None
            self.resync()

    def adopt_agent_connected(self) -> None:
        """The agent connected before our subscription: no CONNECTED event will come."""
        self.agent_connected = True

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
            self._submit_latest()
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
        if ev.kind == LIFECYCLE:
            self._lifecycle(ev.event, ev.detail)
        else:
            self._submit_latest()
        if ev.kind == AGENT_LIFECYCLE:
            self.agent_connected = ev.info.get("state") == "connected"
        self._k8s_events(ev)
        for listener in self.listeners:
            listener(ev)
        self._pulse()

    def _lifecycle(self, event: int | None, detail: int | None) -> None:
        event_type: EventType = "ADDED" if event_type_for(event, detail) == "ADDED" \
            else "MODIFIED"
        frozen: tuple[str, str] | None = None
        if event == Lifecycle.DEFINED and detail == DEFINED_ADDED and not self._active:
            frozen = ("Shutoff", "Unknown")  # what a new definition is, until it starts
        elif event == Lifecycle.STOPPED:
            frozen = ("Shutoff", stopped_reason(detail))
            self._active = False
        elif event in (Lifecycle.STARTED, Lifecycle.RESUMED, Lifecycle.SUSPENDED):
            self._active = True
        if event_type == "ADDED" or frozen is not None:
            self._submit_milestone(event_type, frozen)
        else:
            self._submit_latest()

    def _submit_latest(self) -> None:
        # One pending "latest truth" per domain (key = domain name): coalesces.
        async def build() -> tuple[EventType, bytes]:
            return await self.snapshot("MODIFIED")
        self.notifier.submit_domain(self.domain, build)

    def _submit_milestone(self, event_type: EventType, frozen: tuple[str, str] | None) -> None:
        # A pending "latest" snapshot would be built when it leaves, ahead of this
        # milestone, showing a state from after it: drop it, the one re-queued below (or
        # the next event's) comes after the milestone.
        self.notifier.discard_domain(self.domain)
        self._milestones += 1
        sent: list[bytes] = []

        async def build() -> tuple[EventType, bytes]:
            built = await self.snapshot(event_type, frozen)
            sent.append(built[1])
            return built

        self.notifier.submit_domain(f"{self.domain}#{self._milestones}", build)
        if frozen is None:
            return  # built when it leaves: it is the latest truth itself

        async def latest() -> tuple[EventType, bytes] | None:
            built = await self.snapshot("MODIFIED")
            # The usual case: nothing changed since the milestone; do not say it twice.
            return None if sent and sent[-1] == built[1] else built
        self.notifier.submit_domain(self.domain, latest)

    def _pulse(self) -> None:
        # Wake everyone waiting for "something changed", then re-arm.
        self.changed.set()
        self.changed = asyncio.Event()

    def _k8s_events(self, ev: DomainEvent) -> None:
        if ev.kind == IO_ERROR and ev.info.get("action") == "pause":
            alias = str(ev.info.get("alias", ""))
            if alias not in self._io_error_disks:  # one per failing disk per pause
                self._io_error_disks.add(alias)
                self.k8s_warning("IOerror", f"VM Paused due to IO error at the volume: {alias} "
                                            f"({ev.info.get('path', '')}: "
                                            f"{ev.info.get('reason', '')})")
        elif ev.kind == WATCHDOG:
            self.k8s_warning("WatchdogFired",
                             f"guest watchdog fired; action: {ev.info.get('action')}")
        elif ev.kind == LIFECYCLE and ev.event == Lifecycle.CRASHED:
            self.k8s_warning("GuestPanicked",
                             f"the guest crashed ({lifecycle_name(ev.event, ev.detail or 0)})")
        elif ev.kind == LIFECYCLE and ev.event == Lifecycle.STOPPED and ev.detail in (2, 5):
            # STOPPED/CRASHED or STOPPED/FAILED: QEMU died under the guest.
            self.k8s_warning("QemuCrashed", f"the VM stopped unexpectedly "
                                            f"({lifecycle_name(ev.event, ev.detail or 0)})")
        elif ev.kind == LIFECYCLE and ev.event == Lifecycle.RESUMED:
            self._io_error_disks.clear()

    def k8s_warning(self, reason: str, message: str) -> None:
        self._log.warning("k8s event", reason=reason, message=message)
        self.notifier.submit_k8s_event(k8s_event(
            name=self.name, namespace=self.namespace, uid=self.uid, reason=reason,
            message=message))

    # --- snapshots --------------------------------------------------------------------
    async def read(self) -> DomainRead | None:
        """The domain as libvirt has it now (None: no such domain). Changes nothing here."""
        try:
            async with asyncio.timeout(SNAPSHOT_CONN_WAIT_S):
                await self.conn.wait_connected()
        except TimeoutError:
            raise ConnectionError("libvirt is not connected") from None
        # Through the one accessor: a connection lost on the way is LibvirtDisconnected
        # (a ConnectionError), never an AttributeError on a None virConnect.
        read: DomainRead | None = await self._access.call_conn(
            lambda virconn: read_domain(virconn, self.domain))
        return read

    async def refresh(self) -> DomainRead | None:
        """read(), and remember what it shows: that the domain exists (from then on it is
        reported), whether it is active (a definition's milestone depends on it), and the
        last state (the final snapshot when libvirt is gone but QEMU's end was seen)."""
        read = await self.read()
        if read is not None:
            self.domain_seen = True
            self._active = read.state in ALIVE_STATES
            self._last_read = read
        return read

    async def snapshot(self, event_type: EventType = "MODIFIED",
                       frozen: tuple[str, str] | None = None) -> tuple[EventType, bytes]:
        """(eventType, domain JSON) from a fresh read; `frozen` replaces the read's status
        (a milestone's own state) while the domain exists."""
        try:
            read = await self.refresh()
        except ConnectionError:
            if self._qemu_exit_reason is None or self._last_read is None:
                raise
            # libvirt is down, but our watch saw QEMU end: the domain as last read, stopped
            # (the final snapshot must not be lost to a daemon that is not coming back).
            read, frozen = self._last_read, ("Shutoff", self._qemu_exit_reason)
        deletion: str | None = None
        if read is None:
            # Gone: the only case virt-handler may read as "deleted". The time it was
            # first found gone stays the same on every later snapshot.
            status, reason = NON_EXISTENT
            spec: dict[str, Any] = {"Name": self.domain}
            if self._gone_at is None:
                self._gone_at = domain_json.now_rfc3339()
            deletion = self._gone_at
            event_type = "MODIFIED"
        else:
            self._gone_at = None
            status, reason = status_and_reason(read.state, read.reason)
            if frozen is not None:
                status, reason = frozen
            elif self._qemu_exit_reason is not None and read.state in ALIVE_STATES:
                status, reason = "Shutoff", self._qemu_exit_reason
            spec = domain_json.spec_from_xml(read.xml)
            self._grace_period(spec)
            migration = self.migration_metadata() if self.migration_metadata else None
            if migration is not None:
                spec.setdefault("Metadata", {}).setdefault("KubeVirt", {})[
                    "Migration"] = migration
        uid = self.uid or spec.get("Metadata", {}).get("KubeVirt", {}).get("UID", "")
        guest = self.guest_status() if self.guest_status is not None else None
        doc = domain_json.build(name=self.name, namespace=self.namespace, uid=uid,
                                status=status, reason=reason, spec=spec,
                                deletion_timestamp=deletion, guest=guest)
        return event_type, domain_json.dumps(doc)

    def _grace_period(self, spec: dict[str, Any]) -> None:
        """Spec.Metadata.KubeVirt.GracePeriod as KubeVirt's metadata cache holds it: the
        domain's grace period plus the launcher's shutdown mark and its start."""
        kubevirt = spec.setdefault("Metadata", {}).setdefault("KubeVirt", {})
        grace = dict(kubevirt.get("GracePeriod") or {})
        if not grace and not self._marked_for_shutdown and not self._shutdown_signalled_at:
            if not kubevirt:
                del spec["Metadata"]
            return
        grace.setdefault("DeletionGracePeriodSeconds", self.grace_period_s)
        if self._shutdown_signalled_at is not None:
            grace.setdefault("DeletionTimestamp", self._shutdown_signalled_at)
        if self._marked_for_shutdown:
            grace["MarkedForGracefulShutdown"] = True
        kubevirt["GracePeriod"] = grace

    async def detach(self) -> None:
        conn = self.conn.conn
        if conn is not None and self._subscription is not None and self._callback_ids:
            with contextlib.suppress(libvirt.libvirtError):
                await self.conn.call(self._subscription.deregister, conn, self._callback_ids)
        self._callback_ids = []
