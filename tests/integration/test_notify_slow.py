"""A slow and flapping notify receiver during a long libvirt event burst.

libvirt's test:///default driver produces the burst (suspend/resume loops on a domain of
our own, real events through libvirt's event loop thread), the launcher's own relay and
notifier send it, and the receiver is a real process serving kubevirt.notify.v1 that takes
1 s per call and is killed (SIGKILL) and restarted several times during the burst. What
must hold: the last snapshot the (last) receiver gets is libvirt's true final state, and
nothing older arrives after it; the notifier never holds more than one pending snapshot;
the Python heap (tracemalloc) and RSS do not grow with the burst.

The receiver is this module run as a program (`python -m tests.integration.test_notify_slow
--socket PATH --delay 1.0`): virt-launcher-events' servicer with a delay in every call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import IO, Any

import grpc
import libvirt
import psutil
import pytest

from launcher import logs
from launcher._proto.kubevirt.notify.info import info_pb2_grpc
from launcher._proto.kubevirt.notify.v1 import notify_pb2, notify_pb2_grpc
from launcher.notify import receiver as events_receiver
from launcher.notify.notifier import grpc_target

REPO = Path(__file__).resolve().parents[2]
CALL_DELAY_S = 1.0
BURST_S = 12.0
FLAPS = 4  # receiver kills (each followed by a restart) during the burst
SEED = int(os.environ.get("PVL_FAULT_SEED", "0") or "0") or random.SystemRandom().randrange(
    1, 2**31)
HEAP_GROWTH_LIMIT = 4 * 2**20  # tracemalloc: peak over the baseline during the burst
RSS_GROWTH_LIMIT = 32 * 2**20
MAX_LAG = 1000  # events the producer may be ahead of the relay


# --- the slow receiver (run as a program) ----------------------------------------------------
class SlowReceiver(events_receiver.Receiver):
    """virt-launcher-events' servicer, `delay_s` per call before it answers."""

    def __init__(self, printer: events_receiver.EventPrinter, delay_s: float) -> None:
        super().__init__(printer, [1], 0)
        self.delay_s = delay_s

    async def HandleDomainEvent(self, request: notify_pb2.DomainEventRequest,
                                context: Any) -> notify_pb2.Response:
        await asyncio.sleep(self.delay_s)
        return await super().HandleDomainEvent(request, context)

    async def HandleK8sEvent(self, request: notify_pb2.K8sEventRequest,
                             context: Any) -> notify_pb2.Response:
        await asyncio.sleep(self.delay_s)
        return await super().HandleK8sEvent(request, context)


async def _serve(path: str, delay_s: float) -> None:
    printer = events_receiver.EventPrinter(sys.stdout)
    receiver = SlowReceiver(printer, delay_s)
    server = grpc.aio.server()
    notify_pb2_grpc.add_NotifyServicer_to_server(receiver, server)
    info_pb2_grpc.add_NotifyInfoServicer_to_server(receiver, server)
    server.add_insecure_port(grpc_target(path))
    await server.start()
    sys.stderr.write("listening\n")
    sys.stderr.flush()
    await server.wait_for_termination()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--delay", type=float, default=CALL_DELAY_S)
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):
        logs.configure("slow-receiver", 2)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.socket)  # a killed predecessor's
    asyncio.run(_serve(args.socket, args.delay))


class SlowReceiverProc:
    """The slow receiver as a subprocess and the event lines it printed."""

    def __init__(self, socket_path: str, log_dir: Path, delay_s: float = CALL_DELAY_S) -> None:
        self.socket_path = socket_path
        self.lines: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.stderr_path = log_dir / f"slow-receiver-{time.monotonic_ns()}.err"
        self._stderr: IO[bytes] = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.test_notify_slow", "--socket",
             socket_path, "--delay", str(delay_s)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=self._stderr, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with contextlib.suppress(ValueError):  # a line cut by SIGKILL
                record = json.loads(raw)
                with self._lock:
                    self.lines.append(record)

    def wait_ready(self, within_s: float = 15.0) -> None:
        deadline = time.monotonic() + within_s
        while "listening" not in self.stderr_path.read_text(errors="replace"):
            assert self.proc.poll() is None, self.stderr_path.read_text(errors="replace")
            assert time.monotonic() < deadline, "slow receiver did not start"
            time.sleep(0.02)

    def statuses(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(r["domain"]["Status"]["Status"], r["domain"]["Status"]["Reason"])
                    for r in self.lines if r.get("kind") == "domain"]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._stderr.close()


# --- the test ---------------------------------------------------------------------------------
@pytest.mark.timeout(150)
def test_slow_flapping_receiver_gets_the_true_final_state_with_bounded_memory(
    workdir: Path,
) -> None:
    from tests.integration.notify_support import run_uvloop, until  # noqa: PLC0415
    from tests.support.rigs import relay_rig as rig  # noqa: PLC0415

    rng = random.Random(SEED)
    print(f"PVL_FAULT_SEED={SEED}")
    sock = str(workdir / "notify.sock")
    receivers = [SlowReceiverProc(sock, workdir)]
    receivers[0].wait_ready()
    # When the receiver is killed (seconds into the burst) and how long it stays down.
    flaps = sorted(rng.uniform(1.0, BURST_S - 1.5) for _ in range(FLAPS))
    downs = [rng.uniform(0.2, 1.5) for _ in range(FLAPS)]
    stats: dict[str, Any] = {}

    async def scenario() -> None:
        async with rig(sock) as r:
            await r.op("define")
            await r.op("create")
            await until(lambda: ("Running", "Unknown") in receivers[0].statuses(), 15,
                        "running at the first receiver")
            dom = r.operator.lookupByName(r.domain)
            stop = threading.Event()
            pairs = [0]

            def burst() -> None:
                while not stop.is_set():
                    dom.suspend()
                    dom.resume()
                    pairs[0] += 1
                    # Paced to what the relay takes: an in-process producer outruns
                    # libvirt's own dispatch thread, and that backlog would be libvirt's
                    # (C) event queue, not the launcher's.
                    while 2 * pairs[0] - r.relay.events_seen > MAX_LAG and not stop.is_set():
                        time.sleep(0.0005)
                dom.suspend()  # the final state: Paused

            rss_before = psutil.Process().memory_info().rss
            tracemalloc.start()
            heap_base, _ = tracemalloc.get_traced_memory()
            worker = threading.Thread(target=burst)
            t0 = time.monotonic()
            worker.start()
            max_pending = max_k8s = 0
            flap_i = 0
            down_until: float | None = None
            try:
                while worker.is_alive():
                    now = time.monotonic() - t0
                    max_pending = max(max_pending, r.notifier.pending_count())
                    max_k8s = max(max_k8s, r.notifier.k8s_pending_count())
                    if down_until is None and flap_i < FLAPS and now >= flaps[flap_i]:
                        receivers[-1].kill()  # mid-call, most likely: calls take 1 s
                        down_until = now + downs[flap_i]
                        flap_i += 1
                    elif down_until is not None and now >= down_until:
                        receivers.append(SlowReceiverProc(sock, workdir))
                        down_until = None
                    # The burst lasts BURST_S and at least until every flap happened: on
                    # a loaded machine this loop turns less often than planned.
                    all_flapped = flap_i == FLAPS and down_until is None
                    if (now >= BURST_S and all_flapped) or now >= 3 * BURST_S:
                        stop.set()
                    await asyncio.sleep(0.01)
                if down_until is not None:
                    receivers.append(SlowReceiverProc(sock, workdir))
                burst_s = time.monotonic() - t0
                _, heap_peak = tracemalloc.get_traced_memory()
            finally:
                stop.set()
                worker.join(30)
                tracemalloc.stop()
            rss_growth = psutil.Process().memory_info().rss - rss_before
            last = receivers[-1]
            truth = dom.state()
            assert truth == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER]
            # All events the burst caused have been relayed (submitted) ...
            stats.update(pairs=pairs[0], lag_at_end=2 * pairs[0] + 3 - r.relay.events_seen)
            await until(lambda: r.relay.events_seen >= 2 + 2 * pairs[0] + 1, 30,
                        "every event seen by the relay")
            # ... and the last receiver ends with the true state, nothing older after it.
            await until(lambda: last.statuses()[-1:] == [("Paused", "User")], 30,
                        "final state at the last receiver")
            assert await r.notifier.flush(10)
            await asyncio.sleep(2.5 * CALL_DELAY_S)
            assert last.statuses()[-1] == ("Paused", "User")
            stats.update(
                pairs=pairs[0], events=r.relay.events_seen, burst_s=round(burst_s, 1),
                flaps=flap_i, sent=r.notifier.stats.domain_sent,
                coalesced=r.notifier.stats.domain_coalesced,
                retries=r.notifier.stats.retries, handshakes=r.notifier.stats.handshakes,
                rejected=r.notifier.stats.rejected, max_pending=max_pending,
                max_k8s_pending=max_k8s, heap_peak_growth_kib=(heap_peak - heap_base) // 1024,
                rss_growth_mib=round(rss_growth / 2**20, 1),
                received=[len(rec.statuses()) for rec in receivers])

    try:
        run_uvloop(scenario())
    finally:
        for rec in receivers:
            rec.kill()
        print("NOTIFY-SLOW " + json.dumps(stats))
        for rec in receivers:
            sys.stderr.write(f"--- slow receiver {rec.proc.pid} ---\n"
                             f"{rec.stderr_path.read_text(errors='replace')[-2000:]}")
    assert stats["flaps"] == FLAPS
    # a new handshake with every receiver that got something
    assert stats["handshakes"] >= sum(1 for n in stats["received"] if n), stats
    assert stats["rejected"] == 0
    # one pending "latest state" snapshot at most, however long the burst and however slow
    # the receiver; beside it at most the definition's ADDED milestone (never coalesced
    # away), which a 1 s receiver may still be taking when the burst starts
    assert stats["max_pending"] <= 2
    assert stats["max_k8s_pending"] == 0
    # every event either sent or superseded by a newer one: none lost, none queued up
    assert stats["sent"] + stats["coalesced"] >= stats["events"]
    # the receiver's pace bounds the deliveries: about one per second, not one per event
    assert stats["sent"] <= stats["burst_s"] / CALL_DELAY_S + FLAPS + 10
    assert stats["pairs"] > 1000, "the burst was not a burst"
    assert stats["heap_peak_growth_kib"] * 1024 < HEAP_GROWTH_LIMIT, stats
    assert stats["rss_growth_mib"] * 2**20 < RSS_GROWTH_LIMIT, stats


if __name__ == "__main__":
    main(sys.argv[1:])
