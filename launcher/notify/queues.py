"""The notifier's queues, pure (no gRPC, no asyncio; unit-tested on their own): per key at
most one pending domain snapshot, keys in the order they became pending; a bounded FIFO of
K8s events that drops the oldest."""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

EventType = Literal["ADDED", "MODIFIED", "DELETED", "ERROR"]
# -> (eventType, domainJSON), or None when, once built, there is nothing new to say
SnapshotBuilder = Callable[[], Awaitable[tuple[EventType, bytes] | None]]




@dataclass(slots=True)
class PendingSnapshot:
    key: str
    build: SnapshotBuilder
    # The submission stamp of the first submission that made this key pending; the FIFO
    # order of keys and the interleaving with K8s events both follow it.
    since: int


class PendingSnapshots:
    """At most one pending snapshot per key, keys in the order they became pending.

    The sender take()s the oldest key; while it is in flight a new submission for the same
    key is queued again (the snapshot being sent was built before it, so it may be stale).
    If the send fails transiently the sender put_back()s what it took: a newer pending
    submission for the key then wins (the old one is abandoned) and takes the front place.
    """

    def __init__(self) -> None:
        self._by_key: collections.OrderedDict[str, PendingSnapshot] = collections.OrderedDict()
        self.coalesced = 0

    def submit(self, key: str, build: SnapshotBuilder, stamp: int) -> bool:
        """Queue `build` for `key`; True if it superseded a queued submission."""
        queued = self._by_key.get(key)
        if queued is not None:
            queued.build = build  # keeps its place (and `since`): FIFO of keys
            self.coalesced += 1
            return True
        self._by_key[key] = PendingSnapshot(key, build, stamp)
        return False

    def discard(self, key: str) -> bool:
        """Drop the queued (not in-flight) submission for `key`; True if there was one."""
        return self._by_key.pop(key, None) is not None

    def head_since(self) -> int | None:
        for snap in self._by_key.values():
            return snap.since
        return None

    def take(self) -> PendingSnapshot:
        _key, snap = self._by_key.popitem(last=False)
        return snap

    def put_back(self, snap: PendingSnapshot) -> bool:
        """Return a taken snapshot to the front; True if a newer submission superseded it."""
        newer = self._by_key.get(snap.key)
        if newer is not None:
            # The key has been pending since the old submission: the newer one inherits
            # its place, so neither other keys nor K8s events overtake it.
            newer.since = snap.since
            self._by_key.move_to_end(snap.key, last=False)
            self.coalesced += 1
            return True
        self._by_key[snap.key] = snap
        self._by_key.move_to_end(snap.key, last=False)
        return False

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __len__(self) -> int:
        return len(self._by_key)

    def keys(self) -> list[str]:
        return list(self._by_key)


@dataclass(slots=True)
class PendingEvent:
    payload: bytes
    stamp: int


class DropOldestQueue:
    """A bounded FIFO of K8s events that makes room by dropping the oldest."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be at least 1, got {maxsize}")
        self.maxsize = maxsize
        self._items: collections.deque[PendingEvent] = collections.deque()

    def push(self, item: PendingEvent) -> PendingEvent | None:
        """Append; returns the dropped oldest item when the queue was full."""
        dropped = self._items.popleft() if len(self._items) >= self.maxsize else None
        self._items.append(item)
        return dropped

    def head_stamp(self) -> int | None:
        return self._items[0].stamp if self._items else None

    def take(self) -> PendingEvent:
        return self._items.popleft()

    def put_back(self, item: PendingEvent) -> bool:
        """Return a taken item to the front; False (dropped) if the queue filled up meanwhile.

        The taken item is older than everything queued, so when there is no room it is the
        one that "drop the oldest" drops.
        """
        if len(self._items) >= self.maxsize:
            return False
        self._items.appendleft(item)
        return True

    def __len__(self) -> int:
        return len(self._items)

    def payloads(self) -> list[bytes]:
        return [item.payload for item in self._items]


