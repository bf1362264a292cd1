"""DomainRelay's event handling: which snapshots and K8s events an event produces.
The notifier is a recording stand-in (unit level); the gRPC path is tested in integration."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest

from launcher.libvirt.connection import Connection
from launcher.notify import relay as relay_mod
from launcher.notify.domain_state import State
from launcher.notify.events import (
    AGENT_LIFECYCLE,
    IO_ERROR,
    LIFECYCLE,
    WATCHDOG,
    DomainEvent,
)
from launcher.notify.notifier import Notifier
from launcher.notify.relay import DomainRead, DomainRelay

DOM = "default_vm"


class RecordingNotifier:
    """Records submissions in the notifier's order: one pending builder per key, a key
    keeps its place when resubmitted, discard_domain forgets it."""

    def __init__(self) -> None:
        self.snapshots: list[tuple[str, Any]] = []  # every submission, in order
        self.pending: dict[str, Any] = {}
        self.k8s: list[dict[str, Any]] = []

    def submit_domain(self, key: str, build: Any) -> None:
        self.snapshots.append((key, build))
        self.pending[key] = build

    def discard_domain(self, key: str) -> None:
        self.pending.pop(key, None)

    def submit_k8s_event(self, event: dict[str, Any]) -> None:
        self.k8s.append(event)

    async def send_all(self) -> list[tuple[str, dict[str, Any]]]:
        """Build the pending snapshots in queue order: (eventType, domain) of those sent."""
        out = []
        while self.pending:
            key = next(iter(self.pending))
            built = await self.pending.pop(key)()
            if built is not None:
                out.append((built[0], json.loads(built[1])))
        return out


class FakeConn:
    """What DomainRelay.read() needs of the connection: the domain as libvirt has it now."""

    def __init__(self) -> None:
        self.conn = object()
        self.domain: DomainRead | None = None
        self.down = asyncio.Event()  # set: the daemon is gone; nothing connects

    async def wait_connected(self) -> None:
        if self.down.is_set():
            await asyncio.Event().wait()  # never

    async def call(self, fn: Any, *args: Any) -> Any:
        return self.domain


@pytest.fixture
def relay() -> tuple[DomainRelay, RecordingNotifier]:
    rec = RecordingNotifier()

    async def make() -> DomainRelay:  # asyncio.Event needs no loop in 3.11, but be safe
        return DomainRelay(conn=cast(Connection, None), notifier=cast(Notifier, rec),
                           domain=DOM, name="vm", namespace="default", uid="u-1")

    return asyncio.run(make()), rec


def ev(kind: str, event: int | None = None, detail: int | None = None, domain: str = DOM,
       **info: Any) -> DomainEvent:
    return DomainEvent(kind, domain, "uuid", event=event, detail=detail, info=info)


def reasons(rec: RecordingNotifier) -> list[str]:
    return [e["reason"] for e in rec.k8s]


def test_every_event_of_our_domain_submits_a_snapshot_others_are_ignored(
    relay: tuple[DomainRelay, RecordingNotifier]
) -> None:
    r, rec = relay
    r.resync()
    assert rec.snapshots == []  # nothing to report before the domain was ever seen
    r.on_event(ev(LIFECYCLE, 0, 0, domain="other_vm"))
    assert rec.snapshots == [] and not r.domain_seen
    r.on_event(ev(LIFECYCLE, 0, 0))  # DEFINED/ADDED: a milestone, then the latest state
    r.on_event(ev(AGENT_LIFECYCLE, state="connected", reason="channel"))
    assert [k for k, _ in rec.snapshots] == [f"{DOM}#1", DOM, DOM]
    r.resync()
    assert len(rec.snapshots) == 4


def test_agent_state_follows_agent_lifecycle(relay: tuple[DomainRelay, RecordingNotifier]) -> None:
    r, _ = relay
    r.on_event(ev(AGENT_LIFECYCLE, state="connected", reason="channel"))
    assert r.agent_connected
    r.on_event(ev(AGENT_LIFECYCLE, state="disconnected", reason="channel"))
    assert not r.agent_connected


def test_io_error_pause_raises_one_event_per_failing_disk_until_resumed(
    relay: tuple[DomainRelay, RecordingNotifier]
) -> None:
    r, rec = relay
    r.on_event(ev(IO_ERROR, action="pause", alias="virtio-disk0", path="/d0", reason="enospc"))
    r.on_event(ev(IO_ERROR, action="pause", alias="virtio-disk0", path="/d0", reason="enospc"))
    r.on_event(ev(IO_ERROR, action="pause", alias="virtio-disk1", path="/d1", reason="eio"))
    r.on_event(ev(IO_ERROR, action="report", alias="virtio-disk2", path="/d2", reason="eio"))
    assert reasons(rec) == ["IOerror", "IOerror"]
    assert "virtio-disk0" in rec.k8s[0]["message"] and "enospc" in rec.k8s[0]["message"]
    assert "virtio-disk1" in rec.k8s[1]["message"]
    r.on_event(ev(LIFECYCLE, 4, 0))  # RESUMED/UNPAUSED
    r.on_event(ev(IO_ERROR, action="pause", alias="virtio-disk0", path="/d0", reason="enospc"))
    assert reasons(rec) == ["IOerror", "IOerror", "IOerror"]


def test_watchdog_panic_and_qemu_crash_events(relay: tuple[DomainRelay, RecordingNotifier]) -> None:
    r, rec = relay
    r.on_event(ev(WATCHDOG, action="reset"))
    r.on_event(ev(LIFECYCLE, 8, 0))  # CRASHED/PANICKED
    r.on_event(ev(LIFECYCLE, 5, 5))  # STOPPED/FAILED: QEMU died
    r.on_event(ev(LIFECYCLE, 5, 2))  # STOPPED/CRASHED
    r.on_event(ev(LIFECYCLE, 5, 0))  # STOPPED/SHUTDOWN: a normal stop, no event
    r.on_event(ev(LIFECYCLE, 5, 1))  # STOPPED/DESTROYED: ours, no event
    assert reasons(rec) == ["WatchdogFired", "GuestPanicked", "QemuCrashed", "QemuCrashed"]
    e = rec.k8s[0]
    assert e["kind"] == "Event" and e["type"] == "Warning"
    assert e["involvedObject"] == {"kind": "VirtualMachineInstance",
                                   "apiVersion": "kubevirt.io/v1", "namespace": "default",
                                   "name": "vm", "uid": "u-1"}
    assert "reset" in e["message"]


XML = (f"<domain type='qemu'><name>{DOM}</name><uuid>0b3c1a9e-0000-4000-8000-000000000001"
       "</uuid><metadata><kubevirt xmlns='http://kubevirt.io'><uid>u-1</uid><graceperiod>"
       "<deletionGracePeriodSeconds>45</deletionGracePeriodSeconds></graceperiod></kubevirt>"
       "</metadata></domain>")


def read(state: State, reason: int = 0, xml: str = XML) -> DomainRead:
    return DomainRead(int(state), reason, xml, "0b3c1a9e-0000-4000-8000-000000000001")


def in_loop(scenario: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """A test running `scenario` on a fresh event loop (the relay's Events need one)."""
    def test() -> None:
        asyncio.run(scenario())
    test.__name__ = scenario.__name__
    return test


def make_relay(domain: DomainRead | None) -> tuple[DomainRelay, RecordingNotifier, FakeConn]:
    rec, conn = RecordingNotifier(), FakeConn()
    conn.domain = domain
    r = DomainRelay(conn=cast(Connection, conn), notifier=cast(Notifier, rec), domain=DOM,
                    name="vm", namespace="default", uid="u-1", grace_period_s=30)
    return r, rec, conn


def status(dom: dict[str, Any]) -> tuple[str, str]:
    return dom["Status"]["Status"], dom["Status"]["Reason"]


def grace(dom: dict[str, Any]) -> dict[str, Any]:
    grace: dict[str, Any] = dom["Spec"]["Metadata"]["KubeVirt"]["GracePeriod"]
    return grace


@in_loop
async def test_the_graceful_shutdown_mark_is_metadata_never_a_deletion() -> None:
    r, rec, _ = make_relay(read(State.RUNNING))
    r.on_event(ev(LIFECYCLE, 2, 0))  # STARTED/BOOTED
    (etype, dom), = await rec.send_all()
    assert "MarkedForGracefulShutdown" not in grace(dom)
    r.mark_for_graceful_shutdown()  # SIGTERM
    r.mark_for_graceful_shutdown()  # idempotent: one snapshot
    sent = await rec.send_all()
    assert len(sent) == 1
    etype, dom = sent[0]
    assert etype == "MODIFIED" and status(dom) == ("Running", "Unknown")
    assert "deletionTimestamp" not in dom["ObjectMeta"]
    assert grace(dom) == {"DeletionGracePeriodSeconds": 45, "MarkedForGracefulShutdown": True}
    # The guest is asked to power off: the grace period's start, set once.
    r.graceful_shutdown_signalled()
    (_, dom), = await rec.send_all()
    started = grace(dom)["DeletionTimestamp"]
    assert started.endswith("Z") and "deletionTimestamp" not in dom["ObjectMeta"]
    r.graceful_shutdown_signalled()
    assert await rec.send_all() == []
    r.resync()
    (_, dom), = await rec.send_all()
    assert grace(dom)["DeletionTimestamp"] == started


@in_loop
async def test_a_domain_without_grace_metadata_gets_the_launchers_grace_period() -> None:
    bare = f"<domain type='qemu'><name>{DOM}</name></domain>"
    r, rec, _ = make_relay(read(State.RUNNING, xml=bare))
    r.on_event(ev(LIFECYCLE, 2, 0))
    (_, dom), = await rec.send_all()
    assert "Metadata" not in dom["Spec"]
    r.mark_for_graceful_shutdown()
    (_, dom), = await rec.send_all()
    assert grace(dom) == {"DeletionGracePeriodSeconds": 30, "MarkedForGracefulShutdown": True}


@in_loop
async def test_deletion_timestamp_only_when_the_domain_is_gone() -> None:
    r, rec, conn = make_relay(read(State.SHUTOFF, 3))  # Shutoff/Crashed
    r.mark_for_graceful_shutdown()
    r.on_event(ev(LIFECYCLE, 5, 2))  # STOPPED/CRASHED
    for _, dom in await rec.send_all():
        assert "deletionTimestamp" not in dom["ObjectMeta"], dom
    conn.domain = None
    r.on_event(ev(LIFECYCLE, 1, 0))  # UNDEFINED
    (etype, dom), = await rec.send_all()
    assert etype == "MODIFIED" and status(dom) == ("NoState", "NonExistent")
    gone_at = dom["ObjectMeta"]["deletionTimestamp"]
    r.resync()  # e.g. after a reconnect: the same time, not a new one
    (_, dom), = await rec.send_all()
    assert dom["ObjectMeta"]["deletionTimestamp"] == gone_at
    conn.domain = read(State.SHUTOFF, 0)  # defined again
    r.resync()
    (_, dom), = await rec.send_all()
    assert "deletionTimestamp" not in dom["ObjectMeta"]


@in_loop
async def test_a_new_definition_is_added_as_shutoff_even_if_it_started_meanwhile() -> None:
    r, rec, _ = make_relay(read(State.PAUSED, 11))  # Paused/StartingUp by send time
    r.on_event(ev(LIFECYCLE, 0, 0))  # DEFINED/ADDED
    r.on_event(ev(LIFECYCLE, 2, 0))  # STARTED/BOOTED
    sent = await rec.send_all()
    assert [(t, status(d)) for t, d in sent] == [
        ("ADDED", ("Shutoff", "Unknown")), ("MODIFIED", ("Paused", "StartingUp"))]


@in_loop
async def test_a_stop_keeps_its_reason_and_its_place_before_later_states() -> None:
    r, rec, conn = make_relay(read(State.RUNNING))
    r.on_event(ev(LIFECYCLE, 2, 0))  # STARTED: a "latest" snapshot is pending
    conn.domain = read(State.RUNNING)  # ... restarted by the time anything is built
    r.on_event(ev(LIFECYCLE, 5, 0))  # STOPPED/SHUTDOWN
    r.on_event(ev(LIFECYCLE, 2, 0))  # STARTED again
    sent = await rec.send_all()
    # The pending "latest" before the stop was dropped: built now it would have shown
    # the restarted domain ahead of the stop.
    assert [(t, status(d)) for t, d in sent] == [
        ("MODIFIED", ("Shutoff", "Shutdown")), ("MODIFIED", ("Running", "Unknown"))]


@in_loop
async def test_after_a_stop_the_same_state_is_not_sent_twice() -> None:
    r, rec, _ = make_relay(read(State.SHUTOFF, 2))  # Shutoff/Destroyed
    r.on_event(ev(LIFECYCLE, 5, 1))  # STOPPED/DESTROYED
    sent = await rec.send_all()
    assert [(t, status(d)) for t, d in sent] == [("MODIFIED", ("Shutoff", "Destroyed"))]


@in_loop
async def test_a_started_migration_target_is_added_and_never_coalesced_away() -> None:
    r, rec, _ = make_relay(read(State.RUNNING))
    r.on_event(ev(LIFECYCLE, 2, 1))  # STARTED/MIGRATED
    r.on_event(ev(AGENT_LIFECYCLE, state="connected", reason="channel"))
    r.on_event(ev(LIFECYCLE, 4, 0))  # RESUMED
    sent = await rec.send_all()
    assert [(t, status(d)) for t, d in sent] == [
        ("ADDED", ("Running", "Unknown")), ("MODIFIED", ("Running", "Unknown"))]


@in_loop
async def test_qemu_exit_seen_first_is_reported_until_libvirt_catches_up() -> None:
    r, rec, _ = make_relay(read(State.RUNNING))
    r.on_event(ev(LIFECYCLE, 2, 0))
    await rec.send_all()
    r.qemu_exited("Crashed")
    (_, dom), = await rec.send_all()
    assert status(dom) == ("Shutoff", "Crashed") and "deletionTimestamp" not in dom["ObjectMeta"]
    r.libvirt_caught_up()
    (_, dom), = await rec.send_all()
    assert status(dom) == ("Running", "Unknown")  # what libvirt says (stale here)


def test_the_final_snapshot_survives_a_libvirt_daemon_that_is_gone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay_mod, "SNAPSHOT_CONN_WAIT_S", 0.05)

    async def scenario() -> None:
        r, rec, conn = make_relay(read(State.RUNNING))
        r.on_event(ev(LIFECYCLE, 2, 0))
        (_, dom), = await rec.send_all()
        conn.down.set()  # libvirtd killed and not coming back
        r.resync()
        with pytest.raises(ConnectionError):  # nothing to say without libvirt...
            await rec.send_all()
        r.qemu_exited("Destroyed")  # ... until our QEMU watch saw the end
        (_, dom), = await rec.send_all()
        assert status(dom) == ("Shutoff", "Destroyed")
        assert dom["Spec"]["Name"] == DOM and "deletionTimestamp" not in dom["ObjectMeta"]

    asyncio.run(scenario())


def test_an_added_snapshot_stays_added_when_events_arrive_while_it_is_built() -> None:
    """The interleaving that used to turn an ADDED into a MODIFIED: the snapshot for a new
    definition is being built (awaiting libvirt) when another event of the domain comes.
    A milestone is its own queue entry, so the definition still goes out as ADDED, and
    the newer event after it."""
    async def scenario() -> None:
        r, rec, conn = make_relay(read(State.SHUTOFF))
        gate = asyncio.Event()
        real_call = conn.call

        async def slow_call(fn: Any, *args: Any) -> Any:
            await gate.wait()  # libvirt is slow to answer this read
            return await real_call(fn, *args)

        conn.call = slow_call  # type: ignore[method-assign]
        r.on_event(ev(LIFECYCLE, 0, 0))  # DEFINED/ADDED
        key = next(iter(rec.pending))
        building = asyncio.create_task(rec.pending.pop(key)())
        await asyncio.sleep(0)  # the build is now waiting on libvirt
        r.on_event(ev(AGENT_LIFECYCLE, state="connected", reason="channel"))
        gate.set()
        etype, data = await building
        assert (etype, status(json.loads(data))) == ("ADDED", ("Shutoff", "Unknown"))
        later = await rec.send_all()
        assert [t for t, _ in later] == ["MODIFIED"]

    asyncio.run(scenario())
