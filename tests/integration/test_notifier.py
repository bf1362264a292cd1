"""The Notifier against a real virt-launcher-events process over a real UNIX socket.

The receiver prints one JSON line per event on stdout; a reader thread collects them. Each
test runs its asyncio part with asyncio.run (no pytest-asyncio), waits with deadlines, and
kills its receivers in `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from launcher.notify.notifier import Notifier
from launcher.notify.queues import EventType, SnapshotBuilder
from tests.integration.notify_support import EVENTS_CMD, ReceiverProc, running, until

KEY = "default_vmi"


def snapshot(seq: int, key: str = KEY, event_type: EventType = "MODIFIED",
             **extra: Any) -> SnapshotBuilder:
    payload = json.dumps({"key": key, "seq": seq, **extra}).encode()

    async def build() -> tuple[EventType, bytes]:
        return event_type, payload

    return build


def non_decreasing(values: list[int]) -> bool:
    return all(a <= b for a, b in itertools.pairwise(values))


def accounted(n: Notifier) -> int:
    s = n.stats
    return s.domain_sent + s.domain_coalesced + s.rejected + s.build_errors


# ---------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_basic_latest_snapshot_and_k8s_event(
        workdir: Path, receivers: Callable[..., ReceiverProc]) -> None:
    rec = receivers()
    rec.wait_ready()

    async def scenario() -> Notifier:
        n = Notifier(rec.socket_path)
        for seq in (1, 2, 3):
            n.submit_domain(KEY, snapshot(seq))
        n.submit_k8s_event({"kind": "Event", "reason": "Started", "message": "VMI started"})
        async with running(n) as task:
            await until(lambda: rec.events("k8s"), 15, "the K8s event", task)
            assert await n.flush(5)
        return n

    n = asyncio.run(scenario())
    domains = rec.events("domain")
    # Submitted before the sender ran: coalesced into the newest.
    assert [d["domain"]["seq"] for d in domains] == [3]
    assert domains[0]["eventType"] == "MODIFIED"
    assert isinstance(domains[0]["received_at"], float)
    (k8s,) = rec.events("k8s")
    assert k8s["event"] == {"kind": "Event", "reason": "Started", "message": "VMI started"}
    # Submission order across the two queues: the snapshot (first pending) went first.
    assert [r["kind"] for r in rec.events()] == ["domain", "k8s"]
    assert n.stats.domain_sent == 1
    assert n.stats.domain_coalesced == 2
    assert n.stats.k8s_sent == 1
    assert n.stats.handshakes == 1
    assert n.stats.rejected == 0
    assert n.pending_count() == 0


@pytest.mark.timeout(60)
def test_receiver_down_then_up_delivers_final_state(
        workdir: Path, receivers: Callable[..., ReceiverProc]) -> None:
    sock = str(workdir / "notify.sock")
    down_s = 10.0
    holder: dict[str, ReceiverProc] = {}

    async def scenario() -> tuple[Notifier, int]:
        n = Notifier(sock)
        seq = 0
        async with running(n) as task:
            t_end = time.monotonic() + down_s
            while time.monotonic() < t_end:
                seq += 1
                n.submit_domain(KEY, snapshot(seq))
                assert n.pending_count() <= 1
                await asyncio.sleep(0.05)
            assert n.stats.domain_sent == 0
            assert not n.stats.connected
            holder["rec"] = rec = receivers()
            await until(lambda: rec.seqs()[-1:] == [seq], 15, f"seq {seq}", task)
            assert await n.flush(5)
        return n, seq

    n, final = asyncio.run(scenario())
    seqs = holder["rec"].seqs()
    assert seqs[-1] == final
    assert non_decreasing(seqs), seqs
    assert n.stats.retries > 0
    assert n.stats.handshakes >= 1
    assert n.stats.rejected == 0
    assert accounted(n) == final  # every submission sent or superseded, none lost


@pytest.mark.timeout(80)
def test_receiver_killed_mid_burst(workdir: Path, receivers: Callable[..., ReceiverProc]) -> None:
    total = 10_000
    keys = [KEY, "ns_cold-0", "ns_cold-1", "ns_cold-2"]
    first = receivers()
    first.wait_ready()
    holder: dict[str, ReceiverProc] = {}
    last_submitted: dict[str, int] = {}

    async def scenario() -> tuple[Notifier, int]:
        n = Notifier(first.socket_path)
        max_pending = 0
        async with running(n) as task:
            for seq in range(1, total + 1):
                # The last submission (seq 10000) is for the hot key.
                key = keys[1 + (seq // 1000) % 3] if seq % 1000 == 500 else KEY
                n.submit_domain(key, snapshot(seq, key))
                last_submitted[key] = seq
                max_pending = max(max_pending, n.pending_count())
                if seq % 10 == 0:
                    # Fast, but slow enough for hundreds of deliveries to be in flight
                    # around the kill (without pauses the burst coalesces into a handful).
                    await asyncio.sleep(0.001)
                if seq == total // 2:
                    await until(lambda: first.events(), 15, "the first receiver's events",
                                task)
                    first.stop(signal.SIGKILL)
                    holder["second"] = receivers()
            second = holder["second"]
            await until(lambda: second.seqs()[-1:] == [total], 20, f"seq {total}", task)
            assert await n.flush(10)
        return n, max_pending

    n, max_pending = asyncio.run(scenario())
    second = holder["second"]
    print(f"received: first {len(first.events())}, second {len(second.events())}; {n.stats}")
    assert second.seqs()[-1] == total
    for key in keys:
        for rec in (first, second):
            assert non_decreasing(rec.seqs(key)), (key, rec.seqs(key))
        # Across the restart as well: the second receiver never sees an older state.
        both = first.seqs(key) + second.seqs(key)
        assert non_decreasing(both), (key, both)
        assert both[-1] == last_submitted[key]
    # Bounded memory: one pending snapshot per key at most, whatever the burst.
    assert max_pending <= len(keys)
    assert n.pending_count() == 0
    assert accounted(n) == total
    assert n.stats.rejected == 0
    assert n.stats.handshakes >= 2


@pytest.mark.timeout(60)
def test_k8s_queue_keeps_newest_and_counts_drops(
        workdir: Path, receivers: Callable[..., ReceiverProc]) -> None:
    sock = str(workdir / "notify.sock")
    holder: dict[str, ReceiverProc] = {}

    async def scenario() -> Notifier:
        n = Notifier(sock, k8s_queue_size=100, backoff_max_s=0.5)
        async with running(n) as task:
            n.submit_k8s_event({"reason": "Test", "n": 0})
            await until(lambda: n.stats.retries >= 1, 10, "a failed handshake", task)
            for i in range(1, 1000):
                n.submit_k8s_event({"reason": "Test", "n": i})
                if i % 50 == 0:
                    await asyncio.sleep(0)
            assert n.k8s_pending_count() == 100
            holder["rec"] = rec = receivers()
            await until(lambda: len(rec.events("k8s")) >= 100, 15, "100 K8s events", task)
            assert await n.flush(5)
        return n

    with capture_logs() as logs:
        n = asyncio.run(scenario())
    got = [r["event"]["n"] for r in holder["rec"].events("k8s")]
    assert got == list(range(900, 1000))
    assert n.stats.k8s_dropped == 900
    assert n.stats.k8s_sent == 100
    drops = [e for e in logs if e["log_level"] == "warning" and "dropped" in e["event"]]
    # Rate-limited: the first drop at once, the rest summed up a second later (or at close).
    assert 1 <= len(drops) <= 3, drops
    assert sum(e["dropped"] for e in drops) == 900
    assert drops[-1]["dropped_total"] == 900
    unavailable = [e for e in logs if e["log_level"] == "warning" and "unavailable" in e["event"]]
    assert len(unavailable) == 1, unavailable  # one warning per outage, not per retry
    back = [e for e in logs if e["event"].startswith("notify receiver is back")]
    assert len(back) == 1 and back[0]["failed_attempts"] >= 1


@pytest.mark.timeout(60)
def test_version_mismatch_keeps_state_until_v1_receiver(
        workdir: Path, receivers: Callable[..., ReceiverProc]) -> None:
    v2 = receivers("--supported-versions", "2")
    v2.wait_ready()
    holder: dict[str, ReceiverProc] = {}

    async def scenario(logs: list[MutableMapping[str, Any]]) -> Notifier:
        n = Notifier(v2.socket_path, backoff_max_s=0.3)
        for seq in (1, 2):
            n.submit_domain(KEY, snapshot(seq))
        n.submit_k8s_event({"reason": "Queued"})
        async with running(n) as task:
            await until(lambda: any(e["log_level"] == "error" for e in logs), 15,
                        "the version error", task)
            await until(lambda: n.stats.retries >= 3, 10, "retries", task)
            n.submit_domain(KEY, snapshot(3))
            assert not await n.flush(0.2)
            assert v2.events() == []
            assert n.stats.handshakes == 0
            # virt-handler restarts with a version the launcher speaks.
            assert v2.stop(signal.SIGTERM) == 0
            holder["v1"] = v1 = receivers()
            await until(lambda: len(v1.events()) >= 2, 15, "the queued state", task)
            assert await n.flush(5)
        return n

    with capture_logs() as logs:
        n = asyncio.run(scenario(logs))
    errors = [e for e in logs if e["log_level"] == "error"]
    assert errors[0]["event"].startswith(
        "notify receiver does not support notify version 1 (supports [2])")
    assert len(errors) == 1  # repeated at most every 30 s, not per retry
    v1 = holder["v1"]
    assert [r["domain"]["seq"] for r in v1.events("domain")] == [3]
    assert [r["event"] for r in v1.events("k8s")] == [{"reason": "Queued"}]
    assert [r["kind"] for r in v1.events()] == ["domain", "k8s"]
    assert n.stats.handshakes == 1
    assert n.stats.rejected == 0


@pytest.mark.timeout(60)
def test_rejections_are_counted_and_sender_keeps_going(
        workdir: Path, receivers: Callable[..., ReceiverProc]) -> None:
    rec = receivers("--reject-every", "1")
    rec.wait_ready()

    async def failing() -> tuple[EventType, bytes]:
        raise RuntimeError("libvirt went away")

    async def scenario() -> Notifier:
        n = Notifier(rec.socket_path)
        async with running(n) as task:
            for i in range(5):
                n.submit_domain(f"ns_vm{i}", snapshot(i, f"ns_vm{i}"))
            n.submit_domain("ns_broken", failing)
            n.submit_k8s_event({"reason": "Rejected"})
            n.submit_domain("ns_last", snapshot(99, "ns_last", "DELETED"))
            await until(lambda: len(rec.events()) >= 7, 15, "seven events", task)
            assert await n.flush(5)
            assert not task.done()
        return n

    with capture_logs() as logs:
        n = asyncio.run(scenario())
    events = rec.events()
    assert len(events) == 7
    assert all(r.get("rejected") is True for r in events)
    assert events[-1]["eventType"] == "DELETED"
    assert n.stats.rejected == 7
    assert n.stats.domain_sent == 0
    assert n.stats.k8s_sent == 0
    assert n.stats.build_errors == 1
    assert n.stats.retries == 0  # a rejection is an answer, not a reason to retry
    assert n.pending_count() == 0
    rejected_logs = [e for e in logs if "rejected" in e["event"]]
    assert len(rejected_logs) == 7
    build_logs = [e for e in logs if e["event"] == "building the domain snapshot failed"]
    assert len(build_logs) == 1 and build_logs[0]["exc_info"]


@pytest.mark.timeout(60)
def test_flush(workdir: Path, receivers: Callable[..., ReceiverProc]) -> None:
    sock = str(workdir / "notify.sock")

    async def scenario() -> None:
        n = Notifier(sock)
        assert await n.flush(0.1)  # nothing submitted: flushed
        async with running(n):
            n.submit_domain(KEY, snapshot(1))
            n.submit_k8s_event({"reason": "Pending"})
            t0 = time.monotonic()
            assert not await n.flush(0.5)  # the receiver is down
            assert 0.45 <= time.monotonic() - t0 < 2.0
            assert n.pending_count() == 1
            assert n.k8s_pending_count() == 1
            rec = receivers()
            assert await n.flush(15)
            # The receiver answers after writing the line; our reader thread may lag.
            await until(lambda: len(rec.events()) >= 2, 5, "two event lines")
            assert [r["kind"] for r in rec.events()] == ["domain", "k8s"]
            assert n.pending_count() == 0
            assert n.k8s_pending_count() == 0

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_hung_receiver_deadlines_and_cancelled_sender_keep_state(
        workdir: Path, receivers: Callable[..., ReceiverProc]) -> None:
    """A receiver that stops answering (SIGSTOP) costs deadlines, not state; cancelling
    run() mid-send (a launcher restarting the task) puts the snapshot back."""
    rec = receivers()
    rec.wait_ready()

    async def scenario() -> Notifier:
        n = Notifier(rec.socket_path, rpc_timeout_s=0.3, backoff_max_s=0.2)
        task = asyncio.create_task(n.run())
        try:
            n.submit_domain(KEY, snapshot(1))
            await until(lambda: rec.seqs() == [1], 15, "seq 1", task)
            os.kill(rec.proc.pid, signal.SIGSTOP)
            n.submit_domain(KEY, snapshot(2))
            await until(lambda: n.stats.retries >= 2, 10, "deadline retries", task)
            n.submit_domain(KEY, snapshot(3))
            assert n.pending_count() == 1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert n.pending_count() == 1  # nothing lost with the cancelled sender
        async with running(n) as task:
            os.kill(rec.proc.pid, signal.SIGCONT)
            await until(lambda: rec.seqs()[-1:] == [3], 15, "seq 3", task)
            assert await n.flush(5)
        return n

    n = asyncio.run(scenario())
    assert non_decreasing(rec.seqs()), rec.seqs()
    assert n.stats.retries >= 2
    assert n.stats.rejected == 0
    assert n.stats.handshakes >= 2


def test_events_receiver_cli(workdir: Path) -> None:
    sock = workdir / "notify.sock"
    # A stale socket left behind by a killed receiver is replaced.
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(sock))
    rec = ReceiverProc(str(sock), log_dir=workdir)
    try:
        rec.wait_ready()
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600

        async def send() -> None:
            n = Notifier(str(sock))

            async def raw() -> tuple[EventType, bytes]:
                return "ADDED", b"not json"

            n.submit_domain(KEY, raw)
            async with running(n):
                assert await n.flush(10)
                await until(rec.events, 5, "the event line")

        asyncio.run(send())
        (event,) = rec.events()
        assert event["domain"] == "not json"
        assert event["eventType"] == "ADDED"
        log_lines = [json.loads(line) for line in rec.stderr_text().splitlines()]
        assert all(line["component"] == "virt-launcher-events" for line in log_lines)
        assert rec.stop(signal.SIGTERM) == 0
        assert not sock.exists()
    finally:
        rec.stop()


def test_events_receiver_refuses_to_remove_a_regular_file(workdir: Path) -> None:
    path = workdir / "notify.sock"
    path.write_text("precious")
    proc = subprocess.run([str(EVENTS_CMD), "--socket", str(path)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode != 0
    assert "is not a socket" in proc.stderr
    assert proc.stdout == ""
    assert path.read_text() == "precious"
