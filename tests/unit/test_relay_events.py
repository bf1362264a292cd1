"""DomainRelay's event handling: which snapshots and K8s events an event produces.
The notifier is a recording stand-in (unit level); the gRPC path is tested in integration."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from launcher.events import (
    AGENT_LIFECYCLE,
    IO_ERROR,
    LIFECYCLE,
    WATCHDOG,
    DomainEvent,
)
from launcher.libvirt_conn import Connection
from launcher.notifier import Notifier
from launcher.relay import DomainRelay

DOM = "default_vm"


class RecordingNotifier:
    def __init__(self) -> None:
        self.snapshots: list[tuple[str, Any]] = []
        self.k8s: list[dict[str, Any]] = []

    def submit_domain(self, key: str, build: Any) -> None:
        self.snapshots.append((key, build))

    def submit_k8s_event(self, event: dict[str, Any]) -> None:
        self.k8s.append(event)


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
    r.on_event(ev(LIFECYCLE, 0, 0))
    r.on_event(ev(AGENT_LIFECYCLE, state="connected", reason="channel"))
    assert [k for k, _ in rec.snapshots] == [DOM, DOM]
    r.resync()
    assert len(rec.snapshots) == 3


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


def test_mark_deleting_is_sticky(relay: tuple[DomainRelay, RecordingNotifier]) -> None:
    r, _ = relay
    r.mark_deleting()
    first = r.deletion_timestamp
    assert first is not None and first.endswith("Z")
    r.mark_deleting()
    assert r.deletion_timestamp == first
