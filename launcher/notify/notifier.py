"""The launcher's client of virt-handler's notify endpoint (`<share>/domain-notify-pipe.sock`).

Two kinds of traffic go out, one RPC at a time, on one sender task:
- domain snapshots (Notify.HandleDomainEvent): per key (domain) the newest submission
  supersedes any queued older one, and the snapshot is built at send time, so what reaches
  virt-handler is always the latest truth; memory is O(number of keys);
- Kubernetes events (Notify.HandleK8sEvent): a bounded FIFO that drops the oldest when full,
  counted and logged (rate-limited).

Both queues share one submission counter, and the sender always serves the older head, so
snapshots and events leave in submission order (a coalesced snapshot keeps the place of the
first submission that made its key pending).

Where KubeVirt's Go notifier gives up (a 10-slot queue, 20 s of retries, then the event is
lost), this one retries transient failures forever with exponential backoff, re-handshakes
after every failure, and never loses the final state of a domain across a receiver restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import time
from dataclasses import dataclass
from typing import Any, get_args

import grpc
import structlog

from launcher._proto.kubevirt.notify.info import info_pb2, info_pb2_grpc
from launcher._proto.kubevirt.notify.v1 import notify_pb2, notify_pb2_grpc
from launcher.notify.queues import (
    DropOldestQueue,
    EventType,
    PendingEvent,
    PendingSnapshot,
    PendingSnapshots,
    SnapshotBuilder,
)
from launcher.paths import MAX_SOCKET_PATH  # grpc's own error for a longer path is vague

NOTIFY_VERSION = 1
EVENT_TYPES: frozenset[str] = frozenset(get_args(EventType))
# Codes after which the same request is worth sending again: the receiver is gone,
# restarting, slow or overloaded. CANCELLED is what a call gets when its channel is closed
# under it. Everything else is the receiver's answer about this request (rejected).
TRANSIENT_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
})
DROP_LOG_INTERVAL_S = 1.0
MISMATCH_LOG_INTERVAL_S = 30.0


@dataclass
class NotifierStats:
    domain_sent: int = 0
    domain_coalesced: int = 0  # submissions superseded by a newer one for the same key
    k8s_sent: int = 0
    k8s_dropped: int = 0
    rejected: int = 0  # success=false, a non-transient gRPC code, or an unexpected error
    retries: int = 0  # attempts (handshake or send) repeated after a failure
    handshakes: int = 0
    connected: bool = False
    build_errors: int = 0  # snapshot builders that raised or returned garbage


class _Outcome(enum.Enum):
    SENT = "sent"
    REJECTED = "rejected"  # answered, but not accepted: the receiver is alive, move on
    TRANSIENT = "transient"  # retry with backoff, on a new connection
    SKIPPED = "skipped"  # the builder failed or had nothing new; nothing was sent


def _checked(built: tuple[EventType, bytes] | None) -> tuple[EventType, bytes] | None:
    # Builders are typed, but a wrong value here would become a grpc serialization error
    # (or a bogus eventType at virt-handler); name the culprit instead.
    if built is None:
        return None
    event_type, domain_json = built
    if event_type not in EVENT_TYPES or not isinstance(domain_json, bytes):
        raise TypeError(f"snapshot builder returned ({event_type!r}, "
                        f"{type(domain_json).__name__}), want (EventType, bytes)")
    return built


def grpc_target(socket_path: str) -> str:
    # grpc accepts "unix:<path>" (relative or absolute) and "unix://<absolute path>".
    return "unix://" + os.path.abspath(socket_path)


class Notifier:
    def __init__(self, socket_path: str, *, k8s_queue_size: int = 100,
                 rpc_timeout_s: float = 5.0, backoff_initial_s: float = 0.05,
                 backoff_max_s: float = 2.0) -> None:
        path = os.path.abspath(socket_path)
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise ValueError(f"notify socket path is longer than {MAX_SOCKET_PATH} bytes "
                             f"(the UNIX socket limit): {path}")
        if rpc_timeout_s <= 0 or backoff_initial_s <= 0 or backoff_max_s < backoff_initial_s:
            raise ValueError("rpc_timeout_s and backoff_initial_s must be > 0 and "
                             "backoff_max_s >= backoff_initial_s")
        self.socket_path = path
        self._target = grpc_target(path)
        self._rpc_timeout_s = rpc_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._backoff_s = backoff_initial_s
        self._stats = NotifierStats()
        self._log = structlog.get_logger().bind(subsystem="notifier", socket=path)

        self._domains = PendingSnapshots()
        self._k8s = DropOldestQueue(k8s_queue_size)
        self._stamp = 0  # one submission counter for both queues: their relative order
        self._inflight_key: str | None = None
        self._inflight = False
        # asyncio primitives bind to a loop on first use (3.10+): safe to create here.
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed_event = asyncio.Event()

        # Created in run(), never here: gRPC core objects must not exist across a fork().
        self._channel: Any = None
        self._notify: Any = None  # NotifyStub once the handshake succeeded
        self._running = False
        self._closed = False

        self._outage_since: float | None = None
        self._outage_failures = 0
        self._mismatch_logged_at: float | None = None
        self._drops_unlogged = 0
        self._drop_logged_at = -DROP_LOG_INTERVAL_S
        self._drop_log_timer: asyncio.TimerHandle | None = None

    # ---- producers (event loop thread only) ----------------------------------------

    def submit_domain(self, key: str, build: SnapshotBuilder) -> None:
        self._stamp += 1
        if self._domains.submit(key, build, self._stamp):
            self._stats.domain_coalesced += 1
        self._work_arrived()

    def discard_domain(self, key: str) -> None:
        """Forget the snapshot queued for `key` (a newer submission under another key
        supersedes it); one already in flight is not affected."""
        if self._domains.discard(key):
            self._stats.domain_coalesced += 1

    def submit_k8s_event(self, event: dict[str, Any]) -> None:
        # Serialized now: the caller may reuse or mutate the dict after handing it over,
        # and a non-serializable event must fail at the caller, not later in the sender.
        payload = json.dumps(event, separators=(",", ":")).encode()
        self._stamp += 1
        dropped = self._k8s.push(PendingEvent(payload, self._stamp))
        if dropped is not None:
            self._count_drop()
        self._work_arrived()

    def _work_arrived(self) -> None:
        self._idle.clear()
        self._wakeup.set()

    def _count_drop(self) -> None:
        self._stats.k8s_dropped += 1
        self._drops_unlogged += 1
        now = time.monotonic()
        if now - self._drop_logged_at >= DROP_LOG_INTERVAL_S:
            self._log_drops()
        elif self._drop_log_timer is None:
            # A trailing line, so the count of a burst that ends within the second is
            # still reported.
            with contextlib.suppress(RuntimeError):  # no running loop: the next drop logs
                loop = asyncio.get_running_loop()
                self._drop_log_timer = loop.call_later(
                    self._drop_logged_at + DROP_LOG_INTERVAL_S - now, self._log_drops)

    def _log_drops(self) -> None:
        self._drop_log_timer = None
        if not self._drops_unlogged:
            return
        self._log.warning("K8s event queue full: dropped the oldest events",
                          dropped=self._drops_unlogged, dropped_total=self._stats.k8s_dropped,
                          queue_size=self._k8s.maxsize)
        self._drops_unlogged = 0
        self._drop_logged_at = time.monotonic()

    # ---- observers --------------------------------------------------------------------

    @property
    def stats(self) -> NotifierStats:
        return self._stats

    def pending_count(self) -> int:
        """Keys with a domain snapshot queued or in flight: never more than the keys seen."""
        inflight_extra = (self._inflight_key is not None
                          and self._inflight_key not in self._domains)
        return len(self._domains) + int(inflight_extra)

    def k8s_pending_count(self) -> int:
        return len(self._k8s) + int(self._inflight and self._inflight_key is None)

    async def flush(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    # ---- the sender -------------------------------------------------------------------

    async def run(self) -> None:
        if self._running:
            raise RuntimeError("Notifier.run() is already running")
        self._running = True
        self._log.debug("notifier started")
        try:
            while not self._closed:
                if not len(self._domains) and not len(self._k8s):
                    self._idle.set()
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                try:
                    await self._serve_one()
                except Exception:  # noqa: BLE001 - logged with traceback below
                    # Task boundary of the sender: a bug in one delivery must not stop
                    # every later notification. The item is counted, never silently lost.
                    self._log.exception("unexpected error delivering a notification")
                    self._stats.rejected += 1
                    await self._disconnect()
                    await self._backoff()
        finally:
            self._running = False
            await self._disconnect()

    async def _serve_one(self) -> None:
        if not await self._connect():
            await self._backoff()
            return
        dom, k8s = self._domains.head_since(), self._k8s.head_stamp()
        if dom is not None and (k8s is None or dom < k8s):
            await self._serve_domain(self._domains.take())
        else:
            await self._serve_k8s(self._k8s.take())

    async def _serve_domain(self, snap: PendingSnapshot) -> None:
        self._inflight, self._inflight_key = True, snap.key
        try:
            outcome = await self._send_domain(snap)
        except asyncio.CancelledError:
            # What was taken goes back, so a restarted sender (or the final flush) still
            # has the newest state of this key.
            self._put_back_domain(snap)
            raise
        finally:
            self._inflight, self._inflight_key = False, None
        if outcome is _Outcome.SENT:
            self._stats.domain_sent += 1
        if outcome is _Outcome.TRANSIENT:
            self._put_back_domain(snap)
        await self._after(outcome)

    def _put_back_domain(self, snap: PendingSnapshot) -> None:
        if self._domains.put_back(snap):
            self._stats.domain_coalesced += 1

    async def _send_domain(self, snap: PendingSnapshot) -> _Outcome:
        try:
            built = _checked(await snap.build())
        except Exception:  # noqa: BLE001 - logged with traceback below
            # The builder re-reads libvirt and may fail for reasons of its own; that costs
            # this snapshot (the next event re-reads anyway), never the sender.
            self._log.exception("building the domain snapshot failed", key=snap.key)
            self._stats.build_errors += 1
            return _Outcome.SKIPPED
        if built is None:
            return _Outcome.SKIPPED  # the builder found nothing new to say
        event_type, domain_json = built
        if self._notify is None:
            return _Outcome.TRANSIENT  # disconnected while building (close())
        request = notify_pb2.DomainEventRequest(domainJSON=domain_json, eventType=event_type)
        outcome = await self._call(self._notify.HandleDomainEvent, request,
                                   what="domain event", key=snap.key, event_type=event_type)
        self._log.debug("domain snapshot", outcome=outcome.value, key=snap.key,
                        event_type=event_type)
        return outcome

    async def _serve_k8s(self, item: PendingEvent) -> None:
        self._inflight = True
        try:
            request = notify_pb2.K8sEventRequest(eventJSON=item.payload)
            outcome = await self._call(self._notify.HandleK8sEvent, request, what="K8s event")
        except asyncio.CancelledError:
            self._put_back_k8s(item)
            raise
        finally:
            self._inflight = False
        if outcome is _Outcome.SENT:
            self._stats.k8s_sent += 1
        if outcome is _Outcome.TRANSIENT:
            self._put_back_k8s(item)
        await self._after(outcome)

    def _put_back_k8s(self, item: PendingEvent) -> None:
        if not self._k8s.put_back(item):
            self._count_drop()

    async def _after(self, outcome: _Outcome) -> None:
        if outcome is _Outcome.TRANSIENT:
            await self._backoff()
        elif outcome is not _Outcome.SKIPPED:
            self._backoff_s = self._backoff_initial_s  # the receiver answered

    async def _call(self, rpc: Any, request: Any, *, what: str, **context: Any) -> _Outcome:
        try:
            response = await rpc(request, timeout=self._rpc_timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in TRANSIENT_CODES:
                self._unavailable(exc, what)
                await self._disconnect()
                return _Outcome.TRANSIENT
            self._stats.rejected += 1
            self._log.warning(f"notify receiver failed the {what}; not retrying it",
                              code=exc.code().name, details=exc.details(), **context)
            return _Outcome.REJECTED
        if not response.success:
            self._stats.rejected += 1
            self._log.warning(f"notify receiver rejected the {what}",
                              message=response.message, **context)
            return _Outcome.REJECTED
        return _Outcome.SENT

    # ---- connection -------------------------------------------------------------------

    async def _connect(self) -> bool:
        """Channel + NotifyInfo handshake; True when notify v1 can be used."""
        if self._notify is not None:
            return True
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                self._target,
                # A private subchannel: a fresh channel must dial at once, not inherit a
                # shared subchannel sitting in grpc's own reconnect backoff (up to 120 s).
                options=[("grpc.use_local_subchannel_pool", 1)])
        info = info_pb2_grpc.NotifyInfoStub(self._channel)
        try:
            response = await info.Info(info_pb2.NotifyInfoRequest(),
                                       timeout=self._rpc_timeout_s)
        except grpc.aio.AioRpcError as exc:
            # Any handshake failure (UNIMPLEMENTED included: a receiver without NotifyInfo
            # cannot be trusted with v1) is waited out; everything stays queued.
            self._unavailable(exc, "handshake")
            await self._disconnect()
            return False
        versions = sorted(response.supportedNotifyVersions)
        if NOTIFY_VERSION not in versions:
            now = time.monotonic()
            if (self._mismatch_logged_at is None
                    or now - self._mismatch_logged_at >= MISMATCH_LOG_INTERVAL_S):
                self._mismatch_logged_at = now
                self._log.error(f"notify receiver does not support notify version "
                                f"{NOTIFY_VERSION} (supports {versions}); keeping "
                                f"notifications queued and retrying",
                                supported_versions=versions)
            self._outage_failures += 1
            if self._outage_since is None:
                self._outage_since = now
            await self._disconnect()
            return False
        self._notify = notify_pb2_grpc.NotifyStub(self._channel)
        self._stats.handshakes += 1
        self._stats.connected = True
        self._mismatch_logged_at = None
        if self._outage_since is None:
            self._log.info("connected to notify receiver", notify_version=NOTIFY_VERSION)
        else:
            self._log.info("notify receiver is back; connected",
                           notify_version=NOTIFY_VERSION, failed_attempts=self._outage_failures,
                           outage_s=round(time.monotonic() - self._outage_since, 3))
        self._outage_since, self._outage_failures = None, 0
        return True

    def _unavailable(self, exc: grpc.aio.AioRpcError, what: str) -> None:
        if self._closed:
            return  # our own close() cancelled the call: not an outage
        self._outage_failures += 1
        if self._outage_since is None:
            # One line per outage, not per retry; the count comes with the "back" line.
            self._outage_since = time.monotonic()
            self._log.warning("notify receiver unavailable; retrying with backoff until it "
                              "is back", during=what, code=exc.code().name,
                              details=exc.details())
        else:
            self._log.debug("notify receiver still unavailable", during=what,
                            code=exc.code().name, failures=self._outage_failures)

    async def _disconnect(self) -> None:
        # After any failure the next attempt dials a new channel and handshakes again: the
        # receiver on the other end may be a different process by now.
        channel, self._channel, self._notify = self._channel, None, None
        self._stats.connected = False
        if channel is not None:
            await channel.close()

    async def _backoff(self) -> None:
        self._stats.retries += 1
        delay = self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, self._backoff_max_s)
        # Interruptible by close(): shutdown must not wait out a 2 s backoff.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._closed_event.wait()

    async def close(self) -> None:
        """Close the channel; a running sender stops at its next step (queues are kept)."""
        self._closed = True
        self._closed_event.set()
        self._wakeup.set()
        if self._drop_log_timer is not None:
            self._drop_log_timer.cancel()
            self._log_drops()
        await self._disconnect()
