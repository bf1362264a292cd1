"""The notifier's queue logic without gRPC: coalescing per key, FIFO of keys, put-back after
a failed send, the drop-oldest K8s queue, and the Notifier's producer side."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from structlog.testing import capture_logs

from launcher.notify import notifier as notifier_mod
from launcher.notify.notifier import (
    Notifier,
    grpc_target,
)
from launcher.notify.queues import (
    DropOldestQueue,
    EventType,
    PendingEvent,
    PendingSnapshot,
    PendingSnapshots,
    SnapshotBuilder,
)


def builder(tag: int) -> SnapshotBuilder:
    async def build() -> tuple[EventType, bytes]:
        return "MODIFIED", str(tag).encode()

    return build


def test_coalesces_per_key_and_keeps_first_pending_order() -> None:
    q = PendingSnapshots()
    a1, b1, a2, c1, b2 = builder(1), builder(2), builder(3), builder(4), builder(5)
    assert not q.submit("a", a1, 1)
    assert not q.submit("b", b1, 2)
    assert q.submit("a", a2, 3)  # supersedes a1, keeps a's place
    assert not q.submit("c", c1, 4)
    assert q.submit("b", b2, 5)
    assert q.keys() == ["a", "b", "c"]
    assert len(q) == 3
    assert q.coalesced == 2
    taken = q.take()
    assert (taken.key, taken.build, taken.since) == ("a", a2, 1)
    assert q.head_since() == 2


def test_submission_while_in_flight_queues_again_at_the_back() -> None:
    # The in-flight snapshot was built before the new submission: it may be stale.
    q = PendingSnapshots()
    q.submit("a", builder(1), 1)
    q.submit("b", builder(2), 2)
    q.take()  # "a" in flight
    q.submit("a", builder(3), 3)
    assert q.keys() == ["b", "a"]
    assert q.coalesced == 0


def test_put_back_without_newer_returns_to_front() -> None:
    q = PendingSnapshots()
    first = builder(1)
    q.submit("a", first, 1)
    q.submit("b", builder(2), 2)
    snap = q.take()
    assert not q.put_back(snap)
    assert q.keys() == ["a", "b"]
    assert q.take().build is first


def test_put_back_with_newer_abandons_old_and_newer_takes_the_front() -> None:
    q = PendingSnapshots()
    q.submit("a", builder(1), 1)
    q.submit("b", builder(2), 2)
    snap = q.take()
    newer = builder(3)
    q.submit("a", newer, 3)  # arrives while "a" is being retried
    assert q.keys() == ["b", "a"]
    assert q.put_back(snap)
    assert q.keys() == ["a", "b"]
    assert q.head_since() == 1  # the place of the first pending submission
    taken = q.take()
    assert taken.build is newer
    assert q.coalesced == 1


class PendingSnapshotsMachine(RuleBasedStateMachine):
    """One sender (at most one snapshot taken at a time) against random submissions."""

    def __init__(self) -> None:
        super().__init__()
        self.q = PendingSnapshots()
        self.stamp = 0
        self.latest: dict[str, SnapshotBuilder] = {}  # newest submission per key
        self.inflight: PendingSnapshot | None = None
        self.submitted = 0
        self.finished = 0  # sent (or rejected): accounted outside the queue

    @rule(key=st.sampled_from(["a", "b", "c", "d"]))
    def submit(self, key: str) -> None:
        self.stamp += 1
        self.submitted += 1
        build = builder(self.stamp)
        self.latest[key] = build
        self.q.submit(key, build, self.stamp)
        assert key in self.q

    @precondition(lambda self: self.inflight is None and len(self.q) > 0)
    @rule()
    def take(self) -> None:
        head = self.q.head_since()
        snap = self.q.take()
        assert snap.since == head
        assert snap.build is self.latest[snap.key]  # always the newest submission
        self.inflight = snap

    @precondition(lambda self: self.inflight is not None)
    @rule()
    def send_succeeded(self) -> None:
        self.inflight = None
        self.finished += 1

    @precondition(lambda self: self.inflight is not None)
    @rule()
    def send_failed_transiently(self) -> None:
        snap = self.inflight
        assert snap is not None
        had_newer = snap.key in self.q
        assert self.q.put_back(snap) == had_newer
        assert self.q.keys()[0] == snap.key
        assert self.q.head_since() == snap.since
        self.inflight = None

    @invariant()
    def bounded_and_ordered(self) -> None:
        keys = self.q.keys()
        assert len(keys) == len(set(keys)) <= 4
        sinces = [self.q._by_key[k].since for k in keys]
        assert sinces == sorted(sinces)
        for k in keys:  # a queued key always carries its newest submission
            assert self.q._by_key[k].build is self.latest[k]

    @invariant()
    def every_submission_accounted_once(self) -> None:
        outstanding = len(self.q) + (self.inflight is not None)
        assert self.submitted == self.q.coalesced + self.finished + outstanding


TestPendingSnapshotsMachine = PendingSnapshotsMachine.TestCase
TestPendingSnapshotsMachine.settings = settings(max_examples=200, stateful_step_count=60,
                                                deadline=None)


def test_drop_oldest_queue() -> None:
    q = DropOldestQueue(3)
    dropped = [q.push(PendingEvent(str(i).encode(), i)) for i in range(5)]
    assert [d.stamp if d else None for d in dropped] == [None, None, None, 0, 1]
    assert q.payloads() == [b"2", b"3", b"4"]
    item = q.take()
    assert item.stamp == 2
    assert q.put_back(item)  # room again: back at the front
    assert q.head_stamp() == 2
    item = q.take()
    q.push(PendingEvent(b"5", 5))
    assert not q.put_back(item)  # full meanwhile: the taken one is the oldest, dropped
    assert q.payloads() == [b"3", b"4", b"5"]
    with pytest.raises(ValueError, match="at least 1"):
        DropOldestQueue(0)


def test_grpc_target_is_absolute() -> None:
    assert grpc_target("/run/x/domain-notify-pipe.sock") == "unix:///run/x/domain-notify-pipe.sock"
    assert grpc_target("rel.sock").startswith("unix:///")


def test_rejects_socket_path_beyond_sun_path() -> None:
    with pytest.raises(ValueError, match="longer than 107 bytes"):
        Notifier("/tmp/" + "x" * 120)


def test_producer_side_without_sender() -> None:
    async def scenario() -> None:
        n = Notifier("/tmp/pvl-unit-none.sock", k8s_queue_size=5)
        assert await n.flush(0.01)
        for i in range(10):
            n.submit_domain(f"k{i % 3}", builder(i))
        assert n.pending_count() == 3
        assert n.stats.domain_coalesced == 7
        with pytest.raises(TypeError):
            n.submit_k8s_event({"not json": object()})
        assert n.k8s_pending_count() == 0
        assert not await n.flush(0.05)  # pending, and no sender running
        await n.close()

    asyncio.run(scenario())


def test_k8s_drops_are_counted_and_logged_rate_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notifier_mod, "DROP_LOG_INTERVAL_S", 0.2)

    async def scenario(logs: list[Any]) -> Notifier:
        n = Notifier("/tmp/pvl-unit-none.sock", k8s_queue_size=10)
        for i in range(1000):
            n.submit_k8s_event({"n": i})
        assert n.stats.k8s_dropped == 990
        assert len(logs) == 1  # the first drop at once, the rest within the interval...
        deadline = time.monotonic() + 5
        while len(logs) < 2:  # ...summed up by one trailing line
            assert time.monotonic() < deadline, logs
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        assert len(logs) == 2
        await n.close()
        return n

    with capture_logs() as logs:
        n = asyncio.run(scenario(logs))
    assert [e["log_level"] for e in logs] == ["warning", "warning"]
    assert [e["dropped"] for e in logs] == [1, 989]
    assert logs[-1]["dropped_total"] == 990
    assert n.k8s_pending_count() == 10
