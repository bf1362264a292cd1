#!/usr/bin/env python3
"""Benchmark the launcher's event relay: libvirt event -> a real virt-launcher-events receiver.

Prints one JSON object on stdout (logs go to stderr). The headline figures run the launcher's
own components, built by the launcher's own wiring (launcher.wiring: libvirt's default event
loop thread, Connection + executor, DomainRelay, Notifier -> gRPC over a UNIX socket),
against libvirt's test driver (test:///default: in-process, no daemon) and a running domain
of its own ("default_relaybench", defined on the driver):

- grpc_uds_rtt_p50_ms / _p99_ms: the floor, a raw grpc.aio unary round trip
  (NotifyInfo.Info) to the same receiver process over the same UNIX socket, 2,000 calls;
- relay_p50_ms / _p99_ms: suspend()/resume() of the domain on a separate libvirt connection (a
  thread, off the loop) -> lifecycle event on libvirt's event thread -> call_soon_threadsafe
  -> DomainRelay.on_event -> Notifier -> snapshot built by re-reading libvirt in the executor
  (lookupByName, state, XMLDesc) -> HandleDomainEvent -> the receiver's received_at, for a
  snapshot whose Status is the new state; relay_target_p99_ms = 3 * floor p99 + 2;
- burst_*: 5,000 suspend/resume pairs (10,000 lifecycle events) as fast as a thread can issue
  them: events seen by the relay and their rate, snapshots delivered (the rest coalesced),
  whether the last snapshot equals libvirt's final state, and this process's RSS (it hosts the
  relay: the launcher-side code);
- notifier_only: the Notifier alone with precomputed snapshots (no libvirt).

Runs on uvloop, like the launcher. Exits 0 and leaves no receiver behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import grpc
import libvirt
import uvloop

from launcher import flags, logs
from launcher._proto.kubevirt.notify.info import info_pb2, info_pb2_grpc
from launcher.libvirt.connection import Connection, ensure_event_loop
from launcher.notify.domain_state import status_and_reason
from launcher.notify.events import LIFECYCLE, DomainEvent
from launcher.notify.notifier import Notifier, grpc_target
from launcher.notify.queues import EventType, SnapshotBuilder
from launcher.notify.relay import DomainRelay
from launcher.paths import derive
from launcher.wiring import build as build_launcher

EVENTS_CMD = Path(sys.executable).parent / "virt-launcher-events"
URI = "test:///default"
NAME, NAMESPACE = "relaybench", "default"
DOMAIN = f"{NAMESPACE}_{NAME}"  # libvirt's name for it, as the launcher derives it
# Defined and started on the test driver by the operator (the driver is per process).
DOMAIN_XML = (f"<domain type='test'><name>{DOMAIN}</name><memory unit='MiB'>64</memory>"
              "<os><type>hvm</type></os></domain>")
KEY = "bench_vmi"
WAIT_S = 10.0  # for any single expected event; the whole run takes seconds


def pct(values: list[float], q: int) -> float:
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 3)


def spread(values: list[float]) -> dict[str, float]:
    return {"p50": pct(values, 50), "p99": pct(values, 99), "max": round(max(values), 3)}


def vmrss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise KeyError("VmRSS")


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def thread_cpu_ms() -> dict[str, float]:
    """CPU time (ms) of every thread of this process, from /proc/self/task/*/schedstat (ns),
    named after the Python thread running on it; native threads (grpc's) are summed."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            ns = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        name = names.get(int(task.name), "native (grpc, libvirt)")
        out[name] = out.get(name, 0.0) + ns / 1e6
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    delta = {k: round(v - before.get(k, 0.0), 1) for k, v in after.items()}
    return dict(sorted(((k, v) for k, v in delta.items() if v >= 0.5),
                       key=lambda kv: -kv[1]))


def status_of(record: dict[str, Any]) -> tuple[str, str] | None:
    domain = record.get("domain")
    if record.get("kind") != "domain" or not isinstance(domain, dict):
        return None
    st = domain.get("Status", {})
    return st.get("Status"), st.get("Reason")


def machine() -> dict[str, Any]:
    ver = libvirt.getVersion()
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "libvirt": ver,
        "libvirt_version": f"{ver // 1_000_000}.{ver // 1000 % 1000}.{ver % 1000}",
        "libvirt_python": importlib.metadata.version("libvirt-python"),
        "grpcio": importlib.metadata.version("grpcio"),
        "uvloop": importlib.metadata.version("uvloop"),
    }


class Receiver:
    """virt-launcher-events as a subprocess; its event lines arrive on an asyncio queue."""

    def __init__(self, sock: str, workdir: Path, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._stderr_path = workdir / "receiver.err"
        self._stderr: IO[bytes] = self._stderr_path.open("wb")
        self.proc = subprocess.Popen([str(EVENTS_CMD), "--socket", sock],
                                     stdout=subprocess.PIPE, stderr=self._stderr,
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._read, name="receiver-stdout",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            record = json.loads(raw)  # parsed here, off the loop
            try:
                self._loop.call_soon_threadsafe(self.events.put_nowait, record)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                return

    def drain(self) -> list[dict[str, Any]]:
        out = []
        while not self.events.empty():
            out.append(self.events.get_nowait())
        return out

    def wait_listening(self, within_s: float = 15.0) -> None:
        deadline = time.monotonic() + within_s
        while '"msg": "listening"' not in self._stderr_path.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("receiver did not start: "
                                   + self._stderr_path.read_text(errors="replace"))
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._stderr.close()


# --------------------------------------------------------------------------------------
# The floor: a raw grpc.aio round trip to the receiver.


async def floor_rtt(sock: str, calls: int) -> list[float]:
    channel = grpc.aio.insecure_channel(grpc_target(sock))
    try:
        stub = info_pb2_grpc.NotifyInfoStub(channel)
        request = info_pb2.NotifyInfoRequest()
        for _ in range(100):  # warm-up: connection, HTTP/2 settings, code paths
            await stub.Info(request, timeout=5, wait_for_ready=True)
        samples = []
        for _ in range(calls):
            t0 = time.perf_counter()
            await stub.Info(request, timeout=5)
            samples.append((time.perf_counter() - t0) * 1000)
        return samples
    finally:
        await channel.close()


# --------------------------------------------------------------------------------------
# The launcher's path: libvirt (test driver) -> DomainRelay -> Notifier -> receiver.


class Operator:
    """A separate libvirt connection acting on the domain (as virt-handler or a user would),
    on a thread of its own so the asyncio loop stays free."""

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-operator")
        self._conn: Any = None
        self._dom: Any = None

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _open(self) -> None:
        self._conn = libvirt.open(URI)
        try:
            self._dom = self._conn.lookupByName(DOMAIN)
        except libvirt.libvirtError:
            self._dom = self._conn.defineXML(DOMAIN_XML)
        if not self._dom.isActive():
            self._dom.create()

    async def open(self) -> None:
        await self._run(self._open)

    def _act(self, action: str) -> tuple[float, float]:
        op = getattr(self._dom, action)
        t_wall, t_mono = time.time(), time.monotonic()
        op()
        return t_wall, t_mono

    async def act(self, action: str) -> tuple[float, float]:
        """suspend/resume; returns (time.time(), time.monotonic()) taken right before it."""
        result: tuple[float, float] = await self._run(self._act, action)
        return result

    def _state(self) -> tuple[int, int]:
        state, reason = self._dom.state()
        return int(state), int(reason)

    async def state(self) -> tuple[int, int]:
        result: tuple[int, int] = await self._run(self._state)
        return result

    def _burst(self, pairs: int) -> dict[str, float]:
        dom = self._dom
        t_first = time.monotonic()
        for _ in range(pairs - 1):
            dom.suspend()
            dom.resume()
        dom.suspend()
        t_last_wall, t_last_mono = time.time(), time.monotonic()
        dom.resume()  # the last op
        return {"first_mono": t_first, "last_wall": t_last_wall, "last_mono": t_last_mono,
                "end_mono": time.monotonic()}

    async def burst(self, pairs: int) -> dict[str, float]:
        result: dict[str, float] = await self._run(self._burst, pairs)
        return result

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = self._dom = None

    async def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            await self._run(self._close)
        self._thread.shutdown(wait=True)


@dataclass
class EventClock:
    """A relay listener (the hook the supervisor uses too): when each lifecycle event of our
    domain was created on libvirt's event thread (DomainEvent.at) and handled on the loop."""

    seen: list[tuple[float, float]] = field(default_factory=list)
    count: int = 0
    last_mono: float = 0.0  # handled on the loop
    last_at: float = 0.0  # created on libvirt's event thread
    until: int = 0  # set `reached` once count gets there (0: never)
    reached: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, ev: DomainEvent) -> None:
        if ev.kind != LIFECYCLE:
            return
        now = time.monotonic()
        self.count += 1
        self.last_mono = now
        self.last_at = ev.at
        if self.until and self.count >= self.until:
            self.reached.set()
        if len(self.seen) < 8:  # only the latency loop reads these (one event per op)
            self.seen.append((ev.at, now))


@dataclass
class Rig:
    conn: Connection
    notifier: Notifier
    relay: DomainRelay
    operator: Operator
    clock: EventClock


async def next_with_status(rec: Receiver, want: str, skipped: list[dict[str, Any]]
                           ) -> dict[str, Any]:
    async with asyncio.timeout(WAIT_S):
        while True:
            record = await rec.events.get()
            st = status_of(record)
            if st is not None and st[0] == want:
                return record
            skipped.append(record)


async def relay_latency(rig: Rig, rec: Receiver, events: int, warmup: int
                        ) -> dict[str, Any]:
    """One op at a time, alternating suspend/resume; waits for the snapshot with the new
    Status before the next op."""
    paused = (await rig.operator.state())[0] == libvirt.VIR_DOMAIN_PAUSED
    total: list[float] = []
    op_to_callback: list[float] = []
    callback_to_loop: list[float] = []
    loop_to_receiver: list[float] = []
    skipped: list[dict[str, Any]] = []
    for i in range(-warmup, events):  # negative: warm-up, not measured
        action, want = ("resume", "Running") if paused else ("suspend", "Paused")
        skipped.extend(rec.drain())
        rig.clock.seen.clear()
        t_wall, t_mono = await rig.operator.act(action)
        record = await next_with_status(rec, want, skipped)
        paused = not paused
        if i < 0:
            continue
        latency = record["received_at"] - t_wall
        total.append(latency * 1000)
        if rig.clock.seen:
            created, handled = rig.clock.seen[0]
            op_to_callback.append((created - t_mono) * 1000)
            callback_to_loop.append((handled - created) * 1000)
            loop_to_receiver.append((latency - (handled - t_mono)) * 1000)
    if paused:  # leave it running: the burst starts with suspend()
        await rig.operator.act("resume")
        await next_with_status(rec, "Running", skipped)
    skipped_ws = [r for r in skipped if r.get("kind") == "domain"]
    return {
        "samples": total,
        "breakdown": {
            "op_to_libvirt_callback": spread(op_to_callback),
            "libvirt_callback_to_relay_on_loop": spread(callback_to_loop),
            "relay_to_receiver": spread(loop_to_receiver),
        },
        # Snapshots other than the one waited for (there should be none: one op, one event).
        "unexpected_snapshots": len(skipped_ws),
    }


async def snapshot_build(rig: Rig, calls: int) -> list[float]:
    """DomainRelay.snapshot() alone: the libvirt re-read in the executor + domain JSON."""
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await rig.relay.snapshot("MODIFIED")
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


async def relay_burst(rig: Rig, rec: Receiver, pairs: int) -> dict[str, Any]:
    rec.drain()
    if not await rig.notifier.flush(WAIT_S):
        raise RuntimeError("notifier not idle before the burst")
    expected = 2 * pairs
    seen0, count0 = rig.relay.events_seen, rig.clock.count
    sent0 = rig.notifier.stats.domain_sent
    coalesced0 = rig.notifier.stats.domain_coalesced
    rss_before = vmrss_mib()
    cpu_before = thread_cpu_ms()
    rig.clock.until = count0 + expected
    rig.clock.reached.clear()
    times = await rig.operator.burst(pairs)
    with contextlib.suppress(TimeoutError):  # reported below as events missing
        async with asyncio.timeout(30):
            await rig.clock.reached.wait()
    rig.clock.until = 0
    cpu_burst = cpu_delta(cpu_before, thread_cpu_ms())
    events_seen = rig.relay.events_seen - seen0
    lifecycle_seen = rig.clock.count - count0
    flushed = await rig.notifier.flush(30)
    sent = rig.notifier.stats.domain_sent - sent0
    delivered: list[dict[str, Any]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(WAIT_S):  # the lines already sent, through the pipe
            while len(delivered) < sent:
                delivered.append(await rec.events.get())
    await asyncio.sleep(0.2)  # nothing else may arrive after the final snapshot
    delivered.extend(rec.drain())
    state, reason = await rig.operator.state()
    truth = status_and_reason(state, reason)
    final = delivered[-1] if delivered else None
    final_status = status_of(final) if final is not None else None
    span_s = rig.clock.last_mono - times["first_mono"]
    return {
        "burst_pairs": pairs,
        "burst_ops": expected,
        "burst_issue_s": round(times["end_mono"] - times["first_mono"], 3),
        "burst_events": events_seen,
        "burst_lifecycle_events_expected": expected,
        "burst_lifecycle_events_seen": lifecycle_seen,
        "burst_events_per_s": round(lifecycle_seen / span_s) if span_s > 0 else None,
        # Where a backlog builds: on libvirt's event thread (callback created late) or
        # between it and the loop (handled late).
        "burst_last_callback_after_last_op_ms": round(
            (rig.clock.last_at - times["last_mono"]) * 1000, 3),
        "burst_last_event_after_last_op_ms": round(
            (rig.clock.last_mono - times["last_mono"]) * 1000, 3),
        "burst_delivered": len(delivered),
        "burst_notifier_sent": sent,
        "burst_coalesced": rig.notifier.stats.domain_coalesced - coalesced0,
        "burst_flushed": flushed,
        "burst_final_truth": {"Status": truth[0], "Reason": truth[1],
                              "libvirt": [state, reason]},
        "burst_final_received": (None if final_status is None else
                                 {"Status": final_status[0], "Reason": final_status[1]}),
        "burst_final_correct": final_status == truth,
        "burst_final_latency_ms": (None if final is None else
                                   round((final["received_at"] - times["last_wall"]) * 1000,
                                         3)),
        # CPU per thread from the first op to the last event seen.
        "burst_thread_cpu_ms": cpu_burst,
        "burst_peak_rss_mib": peak_rss_mib(),
        "rss_before_mib": rss_before,
        "rss_after_mib": vmrss_mib(),
    }


async def launcher_path(sock: str, rec: Receiver, args: argparse.Namespace) -> dict[str, Any]:
    # Built by the launcher's own wiring (launcher.wiring), on the test driver, no daemons:
    # the event loop thread registered before the first connection, the connection on its
    # executor, the notifier, the relay attached; only those are run here.
    ensure_event_loop()
    root = tempfile.mkdtemp(prefix="pvl-rb-")
    opts = flags.parse(["--name", NAME, "--namespace", NAMESPACE, "--uid", "bench",
                        "--runtime-root", root], environ={})
    parts = build_launcher(opts, derive(opts), uri=URI, with_daemons=False,
                           notify_socket=sock)
    conn, notifier, relay = parts.conn, parts.notifier, parts.relay
    operator = Operator()
    tasks: list[asyncio.Task[None]] = []
    attached = False
    try:
        await operator.open()  # the domain exists before the relay subscribes
        await conn.connect()
        tasks.append(asyncio.create_task(conn.run(), name="libvirt-connection"))
        tasks.append(asyncio.create_task(notifier.run(), name="notifier"))
        clock = EventClock()
        relay.listeners.append(clock)
        await relay.attach(conn.conn)
        attached = True
        rig = Rig(conn, notifier, relay, operator, clock)

        lat = await relay_latency(rig, rec, args.relay_events, args.relay_warmup)
        build_times = await snapshot_build(rig, args.build_calls)
        burst = await relay_burst(rig, rec, args.burst_pairs)
        return {"latency": lat, "build": build_times, "burst": burst,
                "notifier_stats": dict(vars(notifier.stats))}
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await notifier.close()
        if attached:
            await relay.detach()
        await conn.close()
        await operator.close()
        parts.shutdown_executors()
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------------------
# The Notifier alone: precomputed snapshots, no libvirt.


def precomputed(payload: bytes) -> SnapshotBuilder:
    async def build() -> tuple[EventType, bytes]:
        return "MODIFIED", payload

    return build


async def notifier_latency(n: Notifier, rec: Receiver, events: int) -> list[float]:
    samples = []
    for seq in range(-20, events):  # negative seqs: warm-up, not measured
        submitted_at = time.time()
        payload = json.dumps({"seq": seq, "submitted_at": submitted_at}).encode()
        n.submit_domain(KEY, precomputed(payload))
        async with asyncio.timeout(WAIT_S):
            record = await rec.events.get()
        assert record["domain"]["seq"] == seq, record
        if seq >= 0:
            samples.append((record["received_at"] - record["domain"]["submitted_at"]) * 1000)
    return samples


async def notifier_burst(n: Notifier, rec: Receiver, total: int, yield_every: int
                         ) -> dict[str, Any]:
    key = KEY + "-burst"
    payloads = [json.dumps({"key": key, "seq": i}).encode() for i in range(1, total + 1)]
    builders = [precomputed(p) for p in payloads]
    # The last latency sample's RPC may still be counting: its line can beat its response.
    if not await n.flush(WAIT_S):
        raise RuntimeError("notifier not idle before the burst")
    sent0 = n.stats.domain_sent
    t0 = time.perf_counter()
    for i, build in enumerate(builders, 1):
        n.submit_domain(key, build)
        if i % yield_every == 0:
            await asyncio.sleep(0)
    submit_s = time.perf_counter() - t0
    t_last = time.perf_counter()
    if not await n.flush(30):
        raise RuntimeError("burst not flushed within 30 s")
    flushed_ms = round((time.perf_counter() - t_last) * 1000, 3)
    delivered: list[int] = []
    async with asyncio.timeout(WAIT_S):
        while len(delivered) < n.stats.domain_sent - sent0:
            delivered.append((await rec.events.get())["domain"]["seq"])
    return {
        "burst_submitted": total,
        "burst_submitted_per_s": round(total / submit_s),
        "burst_delivered": len(delivered),
        "burst_final_seq_delivered": delivered[-1] if delivered else None,
        "burst_final_correct": bool(delivered) and delivered[-1] == total,
        "burst_flushed_after_last_submit_ms": flushed_ms,
        "burst_yield_every": yield_every,
    }


async def notifier_only(sock: str, rec: Receiver, args: argparse.Namespace) -> dict[str, Any]:
    rec.drain()
    n = Notifier(sock)
    task = asyncio.create_task(n.run(), name="notifier-only")
    try:
        lat = await notifier_latency(n, rec, args.notifier_events)
        burst = await notifier_burst(n, rec, args.notifier_burst, args.yield_every)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await n.close()
    return {
        "what": ("Notifier alone: submit_domain() with a precomputed snapshot (no libvirt, no "
                 "snapshot build) -> the receiver's received_at; burst = 10,000 submissions "
                 "for one key, yielding to the loop every yield_every"),
        "relay_p50_ms": pct(lat, 50),
        "relay_p99_ms": pct(lat, 99),
        "relay_events": len(lat),
        **burst,
        "notifier_stats": dict(vars(n.stats)),
    }


# --------------------------------------------------------------------------------------

NOTES = (
    "libvirt is the test driver (test:///default), in this process: no libvirtd, no RPC to a "
    "daemon, so the libvirt share of the latency (the op, the event dispatch, the snapshot's "
    "re-read: lookupByName, state, XMLDesc) is smaller than against a real daemon. "
    "grpc_uds_rtt: a raw grpc.aio NotifyInfo.Info round trip to the same receiver process over "
    "the same UNIX socket (the floor). relay_*: one-way, time.time() right before "
    "suspend()/resume() on a separate libvirt connection (a thread) -> the receiver's "
    "received_at (time.time() in its HandleDomainEvent, before the stdout line) of a snapshot "
    "with the new Status; it covers the test driver's op and event dispatch on libvirt's "
    "event thread, call_soon_threadsafe to the uvloop loop, DomainRelay.on_event, the "
    "Notifier building the snapshot (executor re-read + domain JSON) and HandleDomainEvent "
    "over gRPC/UDS. relay_breakdown_ms splits that at DomainEvent.at (created on libvirt's "
    "event thread) and at the relay listener on the loop (monotonic clock, this process). "
    "snapshot_build: DomainRelay.snapshot() alone. burst_*: 5,000 suspend/resume pairs "
    "issued back to back from a thread while the relay runs; burst_events = "
    "DomainRelay.events_seen during it; burst_events_per_s = lifecycle events seen / (first "
    "op -> last event seen on the loop); burst_delivered = snapshots the receiver got (each "
    "newer event supersedes a queued snapshot); burst_final_correct: the last one equals "
    "libvirt's state read after the burst; burst_final_latency_ms: the last op -> that "
    "snapshot's received_at. RSS is of this benchmark process, which hosts the relay and the "
    "notifier (the launcher-side code) plus the operator thread and the test driver; not of "
    "the receiver; burst_peak_rss_mib is ru_maxrss (process lifetime peak, measured after "
    "the burst, before notifier_only runs). notifier_only: the Notifier alone with "
    "precomputed snapshots."
)


async def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    sock = str(workdir / "notify.sock")
    rec = Receiver(sock, workdir, asyncio.get_running_loop())
    try:
        await asyncio.to_thread(rec.wait_listening)
        floor = await floor_rtt(sock, args.rtt_calls)
        real = await launcher_path(sock, rec, args)
        only = await notifier_only(sock, rec, args)
    finally:
        await asyncio.to_thread(rec.stop)
    floor_p99 = pct(floor, 99)
    lat: dict[str, Any] = real["latency"]
    relay = lat["samples"]
    relay_p99 = pct(relay, 99)
    target = round(3 * floor_p99 + 2, 3)
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "libvirt_uri": URI,
        "loop": "uvloop",
        "grpc_uds_rtt_p50_ms": pct(floor, 50),
        "grpc_uds_rtt_p99_ms": floor_p99,
        "grpc_uds_rtt_calls": len(floor),
        "relay_p50_ms": pct(relay, 50),
        "relay_p99_ms": relay_p99,
        "relay_max_ms": round(max(relay), 3),
        "relay_events": len(relay),
        "relay_target_p99_ms": target,
        "relay_within_target": relay_p99 <= target,
        "relay_breakdown_ms": lat["breakdown"],
        "relay_unexpected_snapshots": lat["unexpected_snapshots"],
        "snapshot_build_p50_ms": pct(real["build"], 50),
        "snapshot_build_p99_ms": pct(real["build"], 99),
        **real["burst"],
        "relay_notifier_stats": real["notifier_stats"],
        "notifier_only": only,
        "notes": NOTES,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-calls", type=int, default=2000)
    parser.add_argument("--relay-events", type=int, default=300)
    parser.add_argument("--relay-warmup", type=int, default=20)
    parser.add_argument("--build-calls", type=int, default=300)
    parser.add_argument("--burst-pairs", type=int, default=5000)
    parser.add_argument("--notifier-events", type=int, default=500)
    parser.add_argument("--notifier-burst", type=int, default=10_000)
    parser.add_argument("--yield-every", type=int, default=100)
    parser.add_argument("-v", "--verbosity", type=int, default=2,
                        help="launcher log verbosity; logs go to stderr")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One whole run (receiver, floor, launcher path, notifier alone) in a temporary
    directory on a fresh uvloop loop; the result as main() prints it."""
    workdir = Path(tempfile.mkdtemp(dir="/tmp", prefix="pvl-bench-"))
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(bench(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    args = build_parser().parse_args()
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON result
        logs.configure("bench-relay", args.verbosity)
    result = run(args)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
