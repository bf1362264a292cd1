"""The launcher's event path with libvirt's own test driver: libvirt event -> event thread ->
DomainRelay -> Notifier -> gRPC over a UNIX socket -> a real `virt-launcher-events`.

test:///default is one shared instance per process, so each test works on a domain of its
own (unique name) and the relay only follows that one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import psutil

from tests.integration.notify_support import ReceiverProc, run_uvloop, until
from tests.support.rigs import RelayRig
from tests.support.rigs import relay_rig as rig

URI = "test:///default"


run = run_uvloop








def domain_events(rec: ReceiverProc) -> list[dict[str, Any]]:
    return rec.events("domain")


def last_status(rec: ReceiverProc) -> tuple[str, str] | None:
    events = domain_events(rec)
    if not events:
        return None
    st = events[-1]["domain"]["Status"]
    return st["Status"], st["Reason"]


# (operation, libvirt event it causes, eventType sent, Status, Reason, deletionTimestamp?)
MAPPING = [
    ("define", "DEFINED/ADDED", "ADDED", "Shutoff", "Unknown", False),
    ("create", "STARTED/BOOTED", "MODIFIED", "Running", "Unknown", False),
    ("suspend", "SUSPENDED/PAUSED", "MODIFIED", "Paused", "User", False),
    ("resume", "RESUMED/UNPAUSED", "MODIFIED", "Running", "Unknown", False),
    ("shutdown", "STOPPED/SHUTDOWN", "MODIFIED", "Shutoff", "Shutdown", False),
    ("create", "STARTED/BOOTED", "MODIFIED", "Running", "Unknown", False),
    ("destroy", "STOPPED/DESTROYED", "MODIFIED", "Shutoff", "Destroyed", False),
    ("undefine", "UNDEFINED/REMOVED", "MODIFIED", "NoState", "NonExistent", True),
]


def test_event_mapping_table(workdir: Path, receivers: Callable[..., ReceiverProc]) -> None:
    rec = receivers()
    rec.wait_ready()

    async def scenario() -> None:
        async with rig(rec.socket_path) as r:
            for action, _event, event_type, status, reason, deleted in MAPPING:
                before = len(domain_events(rec))
                await r.op(action)

                def arrived(b: int = before, want: tuple[str, str] = (status, reason)) -> bool:
                    return len(domain_events(rec)) > b and last_status(rec) == want

                await until(arrived, 10, f"{action} -> {status}/{reason}")
                last = domain_events(rec)[-1]
                assert last["eventType"] == event_type, (action, last)
                meta = last["domain"]["ObjectMeta"]
                assert ("deletionTimestamp" in meta) == deleted, (action, meta)
                assert f"{meta['namespace']}_{meta['name']}" == r.domain  # <namespace>_<name>
                assert meta["namespace"] == "default"
                if not deleted:
                    assert last["domain"]["Spec"]["Name"] == r.domain
                    disks = last["domain"]["Spec"]["Devices"]["Disks"]
                    assert disks[0]["Target"] == {"Bus": "virtio", "Device": "vda"}

    run(scenario())


def test_burst_with_receiver_restart_ends_in_true_state_with_bounded_memory(
    workdir: Path, receivers: Callable[..., ReceiverProc]
) -> None:
    """10,000 lifecycle events; the receiver is killed in the middle and a new one starts on
    the same socket. The last snapshot the new receiver gets equals libvirt's final state;
    the queue never holds more than one snapshot; RSS does not grow with the burst."""
    first = receivers()
    first.wait_ready()
    pairs = 5000

    async def scenario() -> tuple[RelayRig, int, int, float]:
        async with rig(first.socket_path) as r:
            await r.op("define")
            await r.op("create")
            await until(lambda: last_status(first) == ("Running", "Unknown"), 10, "running")
            rss_before = psutil.Process().memory_info().rss
            dom = r.operator.lookupByName(r.domain)
            done = threading.Event()
            restarted: list[ReceiverProc] = []

            def burst() -> None:
                for i in range(pairs):
                    if i == pairs // 2:
                        first.stop()  # SIGKILL mid-burst; a new receiver on the same socket
                        restarted.append(receivers())
                    dom.suspend()
                    dom.resume()
                dom.suspend()  # final state: Paused
                done.set()

            worker = threading.Thread(target=burst)
            max_pending = 0
            t0 = time.monotonic()
            worker.start()
            while not done.is_set() or r.relay.events_seen < 2 * pairs + 3:
                max_pending = max(max_pending, r.notifier.pending_count())
                await asyncio.sleep(0.001)
                assert time.monotonic() - t0 < 60, "burst did not finish"
            worker.join()
            second = restarted[0]
            await until(lambda: last_status(second) == ("Paused", "User"), 15,
                        "final state at the new receiver")
            # Nothing older may arrive after the final state: once everything queued is
            # delivered, the last word is still the truth.
            assert await r.notifier.flush(10)
            assert last_status(second) == ("Paused", "User")
            truth = dom.state()
            assert truth == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER]
            growth = psutil.Process().memory_info().rss - rss_before
            return r, max_pending, growth, time.monotonic() - t0

    r, max_pending, growth, elapsed = run(scenario())
    stats = r.notifier.stats
    print(f"burst: {r.relay.events_seen} events in {elapsed:.2f}s, sent {stats.domain_sent}, "
          f"coalesced {stats.domain_coalesced}, max pending {max_pending}, "
          f"rss growth {growth / 2**20:.1f} MiB")
    assert r.relay.events_seen == 2 * pairs + 1 + 2  # + define, create
    assert max_pending <= 1
    assert stats.domain_coalesced > 0
    assert stats.domain_sent + stats.domain_coalesced + stats.rejected >= r.relay.events_seen
    assert growth < 32 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"


def test_reconnect_resubscribes_and_sends_a_fresh_snapshot(
    workdir: Path, receivers: Callable[..., ReceiverProc]
) -> None:
    rec = receivers()
    rec.wait_ready()

    async def scenario() -> None:
        async with rig(rec.socket_path) as r:
            await r.op("define")
            await r.op("create")
            await until(lambda: last_status(rec) == ("Running", "Unknown"), 10, "running")
            before = len(domain_events(rec))
            await r.conn.reset()  # as when the daemon restarts: the reconnect path runs
            await until(lambda: r.conn.connects == 2, 10, "reconnected")
            # the fresh snapshot after the reconnect, with no libvirt event behind it
            await until(lambda: len(domain_events(rec)) > before, 10, "fresh snapshot")
            assert last_status(rec) == ("Running", "Unknown")
            # and the new connection's callbacks deliver events
            await r.op("suspend")
            await until(lambda: last_status(rec) == ("Paused", "User"), 10, "events flow")

    run(scenario())


def test_receiver_down_for_10s_then_up_gets_the_final_state(
    workdir: Path, receivers: Callable[..., ReceiverProc]
) -> None:
    sock = str(workdir / "notify.sock")

    async def scenario() -> ReceiverProc:
        async with rig(sock) as r:
            await r.op("define")
            await r.op("create")
            await r.op("suspend")
            # The outage itself (not a wait for a condition): no receiver for 10 s.
            await asyncio.sleep(10)
            assert not r.notifier.stats.connected
            # The definition (a milestone: ADDED, never coalesced away) and the newest
            # state; the start and the suspend in between coalesced into the latter.
            assert r.notifier.pending_count() == 2
            rec = receivers()
            await until(lambda: last_status(rec) == ("Paused", "User"), 15, "final state")
            assert r.notifier.stats.retries > 0
            return rec

    rec = run(scenario())
    assert [(e["eventType"], e["domain"]["Status"]["Status"]) for e in domain_events(rec)] \
        == [("ADDED", "Shutoff"), ("MODIFIED", "Paused")]
