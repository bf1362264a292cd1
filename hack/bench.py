"""Every benchmark, one JSON: `make bench` -> bench-results.json at the repository root
(also printed on stdout; progress goes to stderr).

Reuses the single benchmarks (hack/bench_monitor_rss.py, hack/bench_relay.py,
hack/bench_cmd.py) and adds what they do not measure:

- ready_s: monitor exec -> <share>/sockets/launcher-sock present (polled every 1 ms), with
  virtlogd + libvirtd started by the launcher in a fresh runtime root;
- ready_overhead_s: ready_s minus the daemons' own start in the same run, taken from the
  launcher's log ("daemon ready" startup_s of virtlogd + libvirtd: spawn -> socket accepts,
  as the launcher's supervisor sees it); daemons_alone_ready_s cross-checks it: the same
  DaemonSet (same configs, namespace wrapper, readiness probe, uvloop) started on its own;
- qemu_exit_detect_ms: SIGKILL to the running VM's QEMU -> the launcher's "QEMU exited" log
  timestamp (qemu_exit_notify_ms: -> the Shutoff snapshot's received_at at the receiver);
- shutdown_forced_overshoot_s: a guest ignoring ACPI (pvl.ignore_acpi=1), booted to its
  agent, --grace-period-seconds N: SIGTERM -> monitor exit, minus N;
- shutdown_graceful_s: SIGTERM -> monitor exit with a guest that honours ACPI (the end of
  each bench_cmd run, the guest booted to its agent).

Each figure is the median of several runs (`runs` says how many; `samples` has them).
Exits 0 when the benchmark ran, whatever the targets say (`targets_met`), 1 when it could
not run (a required figure is missing; `errors` says why).

Run as root from the repository root: python -m hack.bench
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import libvirt
import uvloop

from hack import bench_hotplug, bench_migration, bench_monitor_rss, bench_relay
from hack.bench_cmd import (
    BenchError,
    agent_connected,
    json_lines,
    kill_strays,
    stop_all,
    wait_for,
)
from hack.bench_cmd import run as bench_cmd_run
from launcher import flags, logs
from launcher.libvirt.daemons import DaemonSet
from launcher.paths import Paths, derive
from launcher.setup import prepare
from tests.support.guestvm import domain_xml, guest_env

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench-results.json"
BIN = Path(sys.executable).parent
NAME = "bench"
UID = "bench-uid"
SOCKET_POLL_S = 0.001
QEMU_SETTLE_S = 1.0  # after "watching QEMU", before the kill: the watch is armed
DEFAULT_GRACE_S = 3


# --------------------------------------------------------------------------------------
# Figures, targets, assembly (pure; tests/unit/test_bench_suite.py).


@dataclass(frozen=True)
class Target:
    figure: str
    limit: float | None  # None: computed from other figures (the relay's)
    rule: str
    kubevirt_budget: float | None = None
    kubevirt_rule: str = ""


TARGETS: tuple[Target, ...] = (
    Target("monitor_rss_mib", 15.0, "monitor VmRSS <= 15 MiB", 25.0,
           "KubeVirt budgets 25 MiB for virt-launcher-monitor"),
    Target("launcher_rss_mib", 60.0, "launcher VmRSS (VM running, agent polled) <= 60 MiB",
           100.0, "KubeVirt budgets 100 MiB for virt-launcher"),
    Target("ready_overhead_s", 0.5, "ready_s minus the daemons' own start <= 0.5 s"),
    Target("relay_p99_ms", None, "relay p99 <= 3 x grpc_uds_rtt_p99_ms + 2 ms"),
    Target("qemu_exit_detect_ms", 100.0, "QEMU exit noticed <= 100 ms", 1000.0,
           "KubeVirt checks QEMU once a second (1 s tick)"),
    Target("shutdown_forced_overshoot_s", 2.0, "forced shutdown exit - grace period <= 2 s"),
    Target("ping_p50_ms", 1.0, "Ping p50 <= 1 ms, 1 client"),
    Target("guestinfo_p50_ms", 1.0, "GetGuestInfo p50 <= 1 ms, 1 client"),
    Target("ping_16_clients_paced_p50_ms", 1.0,
           "Ping p50 <= 1 ms, 16 concurrent clients at 20 calls/s each"),
    Target("guestinfo_16_clients_paced_p50_ms", 1.0,
           "GetGuestInfo p50 <= 1 ms, 16 concurrent clients at 20 calls/s each"),
    Target("migration_downtime_ms", 300.0, "live migration downtime <= 300 ms", 300.0,
           "QEMU's default maximum downtime, which KubeVirt keeps"),
    Target("migration_total_s", 10.0, "live migration of the 256 MiB test guest (TCG) "
           "<= 10 s"),
)

# The figures the brief requires; the run "could not run" when one is missing.
REQUIRED_FIGURES: tuple[str, ...] = (
    "monitor_rss_mib", "launcher_rss_mib", "launcher_idle_rss_mib", "ready_s",
    "ready_overhead_s", "relay_p50_ms", "relay_p99_ms", "grpc_uds_rtt_p50_ms",
    "grpc_uds_rtt_p99_ms", "ping_p50_ms", "guestinfo_p50_ms", "qemu_exit_detect_ms",
    "burst_events_per_s", "shutdown_graceful_s", "shutdown_forced_overshoot_s",
)
EXTRA_FIGURES: tuple[str, ...] = (
    "daemons_ready_s", "daemons_alone_ready_s", "ping_p99_ms", "ping_16_clients_p50_ms",
    "guestinfo_p99_ms", "guestinfo_16_clients_p50_ms", "qemu_exit_notify_ms",
    "ping_16_clients_paced_p50_ms", "guestinfo_16_clients_paced_p50_ms",
    "shutdown_forced_s", "migration_total_s", "migration_downtime_ms",
    "migration_postcopy_total_s", "hotplug_disk_attach_ms", "hotplug_disk_detach_ms",
    "hotplug_disk_attach_rpc_ms", "hotplug_disk_detach_rpc_ms", "hotplug_exec_rtt_ms",
)
FIGURES = REQUIRED_FIGURES + EXTRA_FIGURES
REQUIRED_KEYS: tuple[str, ...] = (
    *REQUIRED_FIGURES, "runs", "samples", "targets", "targets_met", "kubevirt_budgets_met",
    "machine", "methods", "errors",
)

METHODS: dict[str, str] = {
    "monitor_rss_mib": "hack/bench_monitor_rss.py one_run: the real monitor with a fake "
                       "launcher (sleep), VmRSS after 1 s settle",
    "launcher_rss_mib": "hack/bench_cmd.py: max of 10 VmRSS samples (1/s) of virt-launcher "
                        "with the test VM running and the agent poller polling",
    "launcher_idle_rss_mib": "hack/bench_cmd.py: VmRSS at 'launcher running', no VM",
    "ready_s": "monitor Popen -> launcher-sock exists (1 ms poll), fresh runtime root, "
               "virtlogd + libvirtd started by the launcher; samples from the crash and "
               "forced-shutdown runs",
    "ready_overhead_s": "per run: ready_s - (virtlogd + libvirtd 'daemon ready' startup_s "
                        "from the same run's launcher log: spawn -> socket accepts)",
    "daemons_ready_s": "the subtrahend above: virtlogd + libvirtd startup_s from the log",
    "daemons_alone_ready_s": "cross-check: launcher.libvirt.daemons.DaemonSet alone (same configs, "
                             "namespace wrapper, 20 ms readiness probe, uvloop) in this "
                             "process: run() -> all_ready()",
    "relay_p50_ms": "hack/bench_relay.py: libvirt test driver event -> DomainRelay -> "
                    "Notifier -> virt-launcher-events received_at, 300 events per run",
    "grpc_uds_rtt_p50_ms": "hack/bench_relay.py, same run: raw grpc.aio NotifyInfo.Info "
                           "round trip over the same UNIX socket, 2,000 calls",
    "relay_p99_ms": "as relay_p50_ms",
    "grpc_uds_rtt_p99_ms": "as grpc_uds_rtt_p50_ms",
    "ping_p50_ms": "hack/bench_cmd.py: Ping over launcher-sock, 1 client x 500 calls (the "
                   "service time); ping_16_clients_paced_p50_ms: 16 concurrent clients at "
                   "20 calls/s each (a virt-handler-like load); ping_16_clients_p50_ms: 16 "
                   "clients back to back (saturated: queueing, p50 ~ 16 / throughput)",
    "guestinfo_p50_ms": "hack/bench_cmd.py: GetGuestInfo, as Ping",
    "qemu_exit_detect_ms": "SIGKILL to QEMU (time.time() just before) -> timestamp of the "
                           "launcher's 'QEMU exited' log line (pidfd on the loop)",
    "qemu_exit_notify_ms": "the same kill -> received_at of the first Shutoff snapshot at "
                           "the notify receiver",
    "burst_events_per_s": "hack/bench_relay.py: 5,000 suspend/resume pairs, lifecycle "
                          "events seen by the relay per second",
    "shutdown_graceful_s": "hack/bench_cmd.py: SIGTERM to the monitor -> monitor exit, "
                           "guest honouring ACPI, booted to its agent",
    "migration_total_s": "hack/bench_migration.py: two pods on this machine (the tests' "
                         "target pod namespace, a stand-in proxy), the test guest booted "
                         "to its agent: MigrateVirtualMachine -> the source's "
                         "Shutoff/Migrated snapshot with EndTimestamp; block migration",
    "migration_downtime_ms": "the same runs: libvirt's completed job statistics "
                             "(downtime), from the source's 'migration completed' line",
    "migration_postcopy_total_s": "hack/bench_migration.py: a guest dirtying a tmpfs in a "
                                  "loop, 2 MiB/s, CompletionTimeoutPerGiB 3, AllowPostCopy "
                                  "and AllowWorkloadDisruption -> post-copy and its end",
    "hotplug_disk_attach_ms": "hack/bench_hotplug.py: the test guest booted to its agent "
                              "through the launcher, a hotplug volume (MountedToPod, scsi) "
                              "added by SyncVirtualMachine -> an agent Exec (one every 50 ms "
                              "after the last answered) found its marker at the head of a "
                              "/sys/block/sd* device; includes up to 50 ms + one Exec round "
                              "trip (hotplug_exec_rtt_ms); samples: every round of every run "
                              "(checks: each run's max)",
    "hotplug_disk_detach_ms": "the same rounds: SyncVirtualMachine without it -> an Exec "
                              "found the device gone from /sys/block",
    "hotplug_disk_attach_rpc_ms": "the same rounds: the attaching rpc's own latency",
    "hotplug_disk_detach_rpc_ms": "the same rounds: the detaching rpc's own latency",
    "hotplug_exec_rtt_ms": "the same runs: p50 of 20 Execs of the attach poll (no disk) "
                           "before the rounds: the polling's round trip",
    "shutdown_forced_overshoot_s": "guest with pvl.ignore_acpi=1 booted to its agent, "
                                   "--grace-period-seconds N: SIGTERM -> monitor exit, "
                                   "minus N (shutdown_forced_s: without minus N)",
}


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def digits(figure: str) -> int:
    if figure.endswith("_per_s"):
        return 0
    if figure.endswith("_mib"):
        return 2
    return 3


def figures_from(samples: Mapping[str, Sequence[float]]) -> dict[str, float | None]:
    """Every figure: the median of its samples, rounded; None without samples."""
    out: dict[str, float | None] = {}
    for name in FIGURES:
        m = median(samples.get(name, ()))
        if m is None:
            out[name] = None
        else:
            n = digits(name)
            out[name] = round(m, n) if n else round(m)
    return out


def target_limit(target: Target, figures: Mapping[str, float | None]) -> float | None:
    if target.limit is not None:
        return target.limit
    if target.figure == "relay_p99_ms":
        floor = figures.get("grpc_uds_rtt_p99_ms")
        return None if floor is None else round(3 * floor + 2, 3)
    raise KeyError(target.figure)


def evaluate(figures: Mapping[str, float | None]) -> dict[str, dict[str, Any]]:
    """Per target: the value, the limit, met (None when the figure is missing), and
    KubeVirt's published budget where there is one."""
    out: dict[str, dict[str, Any]] = {}
    for t in TARGETS:
        value = figures.get(t.figure)
        limit = target_limit(t, figures)
        entry: dict[str, Any] = {
            "value": value, "limit": limit, "rule": t.rule,
            "met": None if value is None or limit is None else value <= limit,
        }
        if t.kubevirt_budget is not None:
            entry["kubevirt_budget"] = t.kubevirt_budget
            entry["kubevirt_rule"] = t.kubevirt_rule
            entry["kubevirt_budget_met"] = None if value is None else value <= t.kubevirt_budget
        out[t.figure] = entry
    return out


def assemble(samples: Mapping[str, Sequence[float]], *, machine: Mapping[str, Any],
             checks: Mapping[str, Any], errors: Sequence[str], wall_s: float,
             grace_s: int) -> dict[str, Any]:
    """The whole result: figures (medians) at the top level, then runs, samples, targets,
    machine, methods, checks, errors."""
    figures = figures_from(samples)
    targets = evaluate(figures)
    missing = [f for f in REQUIRED_FIGURES if figures[f] is None]
    met = {k: v["met"] for k, v in targets.items()}
    floor_ready = figures["daemons_alone_ready_s"]
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        **figures,
        "ready_overhead_vs_alone_s": (
            None if figures["ready_s"] is None or floor_ready is None
            else round(figures["ready_s"] - floor_ready, 3)),
        "grace_period_seconds": grace_s,
        "runs": {f: len(samples.get(f, ())) for f in FIGURES},
        "samples": {f: [round(v, digits(f) + 1) for v in samples.get(f, ())]
                    for f in FIGURES},
        "targets": targets,
        "targets_met": met,
        "all_targets_met": all(v is True for v in met.values()),
        "kubevirt_budgets_met": {k: v["kubevirt_budget_met"] for k, v in targets.items()
                                 if "kubevirt_budget_met" in v},
        "complete": not missing,
        "missing": missing,
        "machine": dict(machine),
        "methods": METHODS,
        "checks": dict(checks),
        "errors": list(errors),
        "wall_s": round(wall_s, 1),
    }


def parse_ts(stamp: str) -> float:
    """A launcher log timestamp (ISO 8601, UTC, 'Z') as Unix time."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def daemons_startup_s(records: Sequence[Mapping[str, Any]]) -> float:
    """virtlogd + libvirt daemon startup_s of their first 'daemon ready' lines."""
    seen: dict[str, float] = {}
    for rec in records:
        if rec.get("msg") == "daemon ready" and rec.get("daemon") not in seen:
            seen[str(rec.get("daemon"))] = float(rec["startup_s"])
    if len(seen) != 2:
        raise ValueError(f"expected 2 'daemon ready' lines, found {sorted(seen)}")
    return sum(seen.values())


def first_record(records: Sequence[Mapping[str, Any]], msg: str,
                 after: float | None = None) -> Mapping[str, Any] | None:
    """The first log record with `msg` (timestamped at or after `after`, Unix time)."""
    for rec in records:
        if rec.get("msg") != msg:
            continue
        if after is not None and parse_ts(str(rec.get("timestamp", ""))) < after:
            continue
        return rec
    return None


# --------------------------------------------------------------------------------------
# Running things.

def log(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


class Samples:
    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}
        self.checks: dict[str, list[Any]] = {}
        self.errors: list[str] = []

    def add(self, figure: str, value: float | None) -> None:
        if value is not None:
            self.values.setdefault(figure, []).append(float(value))

    def check(self, name: str, value: Any) -> None:
        self.checks.setdefault(name, []).append(value)

    def section(self, name: str, runs: int, one: Callable[[int], None]) -> None:
        """Run `one(i)` `runs` times; a failing run is recorded and the next one tried."""
        for i in range(runs):
            log(f"==> {name}: run {i + 1}/{runs}")
            t0 = time.monotonic()
            try:
                one(i)
            except Exception as exc:
                msg = f"{name} run {i + 1}: {type(exc).__name__}: {exc}"
                log(f"    FAILED: {msg}")
                self.errors.append(msg)
            log(f"    ({time.monotonic() - t0:.1f} s)")


def machine_info() -> dict[str, Any]:
    info = bench_relay.machine()
    for key, argv in (("qemu", ["qemu-system-x86_64", "--version"]),
                      ("libvirtd", ["libvirtd", "--version"]),
                      ("virtlogd", ["virtlogd", "--version"])):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10,
                                 check=False).stdout
            info[key] = out.splitlines()[0].strip() if out else None
        except OSError:
            info[key] = None
    info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


# --- monitor RSS ----------------------------------------------------------------------

def monitor_rss(s: Samples, runs: int) -> None:
    command = [str(BIN / "virt-launcher-monitor")]

    def one(_i: int) -> None:
        with tempfile.TemporaryDirectory(prefix="pvlB-mon-", dir="/tmp") as tmp:
            rss, _hwm = bench_monitor_rss.one_run(command, Path(tmp), 1.0)
        s.add("monitor_rss_mib", rss)
        log(f"    monitor VmRSS {rss:.2f} MiB")

    s.section("monitor RSS (hack/bench_monitor_rss.py)", runs, one)


# --- relay ------------------------------------------------------------------------------

def relay(s: Samples, runs: int) -> None:
    args = bench_relay.build_parser().parse_args([])

    def one(_i: int) -> None:
        r = bench_relay.run(args)
        for key in ("relay_p50_ms", "relay_p99_ms", "grpc_uds_rtt_p50_ms",
                    "grpc_uds_rtt_p99_ms", "burst_events_per_s"):
            s.add(key, r[key])
        s.check("relay_burst_final_correct", r["burst_final_correct"])
        log(f"    relay p50/p99 {r['relay_p50_ms']}/{r['relay_p99_ms']} ms, floor "
            f"{r['grpc_uds_rtt_p50_ms']}/{r['grpc_uds_rtt_p99_ms']} ms, burst "
            f"{r['burst_events_per_s']} events/s")

    s.section("relay (hack/bench_relay.py)", runs, one)


# --- command socket, launcher RSS, graceful shutdown --------------------------------------

def cmd(s: Samples, runs: int) -> None:
    def one(_i: int) -> None:
        r = bench_cmd_run()
        if not r.get("ok"):
            raise RuntimeError(r.get("error", "bench_cmd failed"))
        s.add("launcher_rss_mib", r["launcher_rss_mib_max"])
        s.add("launcher_idle_rss_mib", r["launcher_idle_rss_mib"])
        for what in ("ping", "guestinfo"):
            s.add(f"{what}_p50_ms", r[f"{what}_single_p50_ms"])
            s.add(f"{what}_p99_ms", r[f"{what}_single_p99_ms"])
            s.add(f"{what}_16_clients_p50_ms", r[f"{what}_p50_ms"])
            s.add(f"{what}_16_clients_paced_p50_ms", r[f"{what}_paced_p50_ms"])
        s.check("graceful_clean_shutdown", r["clean_shutdown"])
        if r["clean_shutdown"]:
            s.add("shutdown_graceful_s", r["shutdown_s"])
        s.check("graceful_monitor_exit_code", r["monitor_exit_code"])

    s.section("command socket, launcher RSS, graceful shutdown (hack/bench_cmd.py)",
              runs, one)


def migration(s: Samples, runs: int) -> None:
    def one(i: int) -> None:
        for key, value in bench_migration.one_run(post_copy=False).items():
            s.add(key, value)
        if i == 0:  # one post-copy run: it takes a while by design
            for key, value in bench_migration.one_run(post_copy=True).items():
                s.add(key, value)

    s.section("live migration (hack/bench_migration.py)", runs, one)


def hotplug(s: Samples, runs: int) -> None:
    def one(_i: int) -> None:
        r = bench_hotplug.one_run(bench_hotplug.ROUNDS)
        for key, values in r["samples"].items():
            for value in values:
                s.add(key, value)
            s.check(key.replace("_ms", "_max_ms"), round(max(values), 1))
        s.add("hotplug_exec_rtt_ms", statistics.median(r["exec_rtt_ms"]))
        s.check("hotplug_poll_interval_ms", round(bench_hotplug.POLL_S * 1000))
        s.check("hotplug_polls_per_round", r["polls_per_round"])
        s.check("hotplug_processes_left", r["processes_left"])
        att, det = r["samples"]["hotplug_disk_attach_ms"], r["samples"]["hotplug_disk_detach_ms"]
        log(f"    attach p50 {statistics.median(att):.0f} ms, detach p50 "
            f"{statistics.median(det):.0f} ms ({len(att)} rounds)")

    s.section("volume hotplug (hack/bench_hotplug.py)", runs, one)


# --- daemons alone --------------------------------------------------------------------------

def daemons_alone(s: Samples, runs: int) -> None:
    async def start_stop(opts: flags.Options, paths: Paths) -> float:
        ds = DaemonSet(opts, paths)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        running = asyncio.create_task(ds.run())
        ready = asyncio.create_task(ds.all_ready())
        try:
            await asyncio.wait({running, ready}, timeout=30,
                               return_when=asyncio.FIRST_COMPLETED)
            elapsed = loop.time() - t0
            if not ready.done():
                raise RuntimeError("the daemons did not become ready within 30 s")
            return elapsed
        finally:
            ready.cancel()
            await ds.stop()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await running

    def one(_i: int) -> None:
        base = Path(tempfile.mkdtemp(prefix="pvlB-", dir="/tmp"))
        root = base / "r"
        root.mkdir()
        try:
            opts = flags.parse(["--runtime-root", str(root), "--name", NAME,
                                "--namespace", "default", "--uid", UID], environ={})
            paths = derive(opts)
            old = os.umask(0o077)  # as the launcher, inherited by the daemons
            try:
                prepare(opts, paths)
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    elapsed = runner.run(start_stop(opts, paths))
            finally:
                os.umask(old)
            s.add("daemons_alone_ready_s", elapsed)
            log(f"    virtlogd + libvirtd connectable after {elapsed:.3f} s")
        finally:
            kill_strays(base)
            shutil.rmtree(base, ignore_errors=True)

    s.section("virtlogd + libvirtd alone (launcher.libvirt.daemons.DaemonSet)", runs, one)


# --- pods: monitor + launcher + daemons + a VM -----------------------------------------------

@dataclass
class Pod:
    base: Path
    root: Path
    paths: Paths
    launcher_log: Path
    events_log: Path
    monitor: subprocess.Popen[bytes]
    receiver: subprocess.Popen[bytes]
    ready_s: float


def wait_text(path: Path, text: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    def seen() -> bool:
        with contextlib.suppress(FileNotFoundError):
            return text in path.read_text(errors="replace")
        return False

    try:
        wait_for(seen, timeout, f"{text!r} in {path.name}", proc, 0.02)
    except BenchError as exc:
        raise BenchError(f"{exc}: {path.read_text(errors='replace')[-500:]}") from None


@contextlib.contextmanager
def pod(s: Samples, extra: Sequence[str]) -> Iterator[Pod]:
    """A notify receiver and virt-launcher-monitor in a fresh runtime root; records ready_s
    and ready_overhead_s; on exit kills whatever is left and removes the directory (kept,
    without the disk, when the run failed)."""
    base = Path(tempfile.mkdtemp(prefix="pvlB-", dir="/tmp"))
    root = base / "r"
    root.mkdir()
    launcher_log = base / "launcher.log"
    events_log = base / "events.jsonl"
    args = ["--runtime-root", str(root), "--name", NAME, "--namespace", "default",
            "--uid", UID, *extra]
    paths = derive(flags.parse(args, environ={}))
    procs: list[subprocess.Popen[bytes]] = []
    ok = False
    try:
        os.makedirs(os.path.dirname(paths.notify_socket), mode=0o755, exist_ok=True)
        with events_log.open("wb") as out, (base / "receiver.err").open("wb") as err:
            receiver = subprocess.Popen(
                [str(BIN / "virt-launcher-events"), "--socket", paths.notify_socket,
                 "--act-as-virt-handler", paths.cmd_socket],  # virt-handler's part
                stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        procs.append(receiver)
        # The receiver's own start must not compete with the launcher's for the CPUs.
        wait_text(base / "receiver.err", '"listening"', 30, receiver)
        with launcher_log.open("wb") as out:
            t0 = time.monotonic()
            monitor = subprocess.Popen([str(BIN / "virt-launcher-monitor"), *args],
                                       stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        procs.append(monitor)
        deadline = t0 + 60
        while not os.path.exists(paths.cmd_socket):
            if monitor.poll() is not None:
                raise BenchError(f"monitor exited {monitor.returncode} before launcher-sock")
            if time.monotonic() > deadline:
                raise BenchError("no launcher-sock within 60 s")
            time.sleep(SOCKET_POLL_S)
        ready_s = time.monotonic() - t0
        wait_text(launcher_log, '"launcher running"', 30, monitor)
        daemons = daemons_startup_s(json_lines(launcher_log))
        s.add("ready_s", ready_s)
        s.add("daemons_ready_s", daemons)
        s.add("ready_overhead_s", ready_s - daemons)
        log(f"    launcher-sock after {ready_s:.3f} s (daemons {daemons:.3f} s, "
            f"overhead {ready_s - daemons:.3f} s)")
        yield Pod(base, root, paths, launcher_log, events_log, monitor, receiver, ready_s)
        ok = True
    finally:
        s.check("processes_left", len(stop_all(procs, base)))
        if ok:
            shutil.rmtree(base, ignore_errors=True)
        else:
            (root / "data.ext4").unlink(missing_ok=True)
            log(f"    logs kept in {base}")


def start_vm(p: Pod, *, ignore_acpi: bool) -> None:
    disk = p.root / "data.ext4"
    shutil.copy(guest_env()["GUEST_DATA_DISK"], disk)
    conn = libvirt.open(p.paths.uri)
    try:
        dom = conn.defineXML(domain_xml(domain=p.paths.domain, uid=UID, disk=disk,
                                        agent_socket=p.root / "qga.sock",
                                        console_log=p.root / "console.log",
                                        ignore_acpi=ignore_acpi))
        dom.create()
    finally:
        conn.close()


def wait_record(p: Pod, msg: str, timeout: float,
                after: float | None = None) -> Mapping[str, Any]:
    found: list[Mapping[str, Any]] = []

    def seen() -> bool:
        rec = first_record(json_lines(p.launcher_log), msg, after)
        if rec is not None:
            found.append(rec)
        return rec is not None

    wait_for(seen, timeout, f"launcher log {msg!r}", None, 0.01)
    return found[0]


def qemu_exit(s: Samples, runs: int) -> None:
    def shutoff_at(events: Path, after: float) -> float | None:
        for rec in json_lines(events):
            if rec.get("kind") != "domain" or rec.get("received_at", 0) < after:
                continue
            dom = rec.get("domain")
            if isinstance(dom, dict) and dom.get("Status", {}).get("Status") == "Shutoff":
                return float(rec["received_at"])
        return None

    def one(_i: int) -> None:
        with pod(s, []) as p:
            start_vm(p, ignore_acpi=False)
            rec = wait_record(p, "watching QEMU", 60)
            pid = int(rec["pid"])
            time.sleep(QEMU_SETTLE_S)
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            if not comm.startswith("qemu"):
                raise BenchError(f"pid {pid} is {comm!r}, not QEMU")
            t_kill = time.time()
            os.kill(pid, signal.SIGKILL)
            exited = wait_record(p, "QEMU exited", 10, after=t_kill)
            detect_ms = (parse_ts(str(exited["timestamp"])) - t_kill) * 1000
            s.add("qemu_exit_detect_ms", detect_ms)
            s.check("qemu_exit_reason", exited.get("reason"))
            got: list[float] = []

            def notified() -> bool:
                at = shutoff_at(p.events_log, t_kill)
                if at is not None:
                    got.append(at)
                return at is not None

            wait_for(notified, 10, "a Shutoff snapshot at the receiver", None, 0.01)
            s.add("qemu_exit_notify_ms", (got[0] - t_kill) * 1000)
            code = p.monitor.wait(60)
            s.check("qemu_exit_monitor_exit_code", code)
            log(f"    QEMU exit noticed after {detect_ms:.1f} ms (log), Shutoff at the "
                f"receiver after {(got[0] - t_kill) * 1000:.1f} ms; monitor exited {code}")

    s.section("QEMU exit detection (kill -9 QEMU)", runs, one)


def forced_shutdown(s: Samples, runs: int, grace_s: int) -> None:
    def one(_i: int) -> None:
        with pod(s, ["--grace-period-seconds", str(grace_s)]) as p:
            start_vm(p, ignore_acpi=True)
            wait_for(lambda: agent_connected(p.events_log), 120, "agent connected",
                     p.monitor, 0.1)
            t_wall = time.time()
            t0 = time.monotonic()
            p.monitor.send_signal(signal.SIGTERM)
            try:
                code = p.monitor.wait(grace_s + 90)
            except subprocess.TimeoutExpired:
                raise BenchError("the monitor did not exit after SIGTERM") from None
            exit_s = time.monotonic() - t0
            records = json_lines(p.launcher_log)
            # At the deadline the launcher destroys the domain, or virt-handler's Kill (the
            # stand-in) does it first: either is the end of the grace period.
            expired = (first_record(records, "grace period expired; destroying the domain")
                       or first_record(records, "destroyed the domain"))
            s.check("forced_destroyed_at_grace", expired is not None)
            s.check("forced_monitor_exit_code", code)
            if expired is None:
                raise BenchError("the guest shut down by itself: it honoured ACPI")
            s.add("shutdown_forced_s", exit_s)
            s.add("shutdown_forced_overshoot_s", exit_s - grace_s)
            qemu_gone = first_record(records, "QEMU exited")
            destroy_s = (None if qemu_gone is None else
                         parse_ts(str(qemu_gone["timestamp"]))
                         - parse_ts(str(expired["timestamp"])))
            s.check("forced_expiry_after_sigterm_s",
                    round(parse_ts(str(expired["timestamp"])) - t_wall, 3))
            s.check("forced_destroy_to_qemu_exit_s",
                    None if destroy_s is None else round(destroy_s, 3))
            log(f"    monitor exited {code} after {exit_s:.3f} s (grace {grace_s} s, "
                f"overshoot {exit_s - grace_s:.3f} s)")

    s.section(f"forced shutdown (pvl.ignore_acpi=1, grace {grace_s} s)", runs, one)


# --------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3,
                        help="runs of the benchmarks that boot a guest to its agent: forced "
                             "shutdown, bench_cmd, migration, volume hotplug (default 3)")
    parser.add_argument("--light-runs", type=int, default=5,
                        help="runs of the cheap ones: monitor RSS, relay, daemons alone, "
                             "QEMU exit (default 5)")
    parser.add_argument("--grace", type=int, default=DEFAULT_GRACE_S,
                        help="--grace-period-seconds of the forced-shutdown runs")
    parser.add_argument("--output", type=Path, default=RESULTS)
    opts = parser.parse_args(argv)
    if os.geteuid() != 0:
        log("hack.bench runs as root (system-mode libvirt in private mount namespaces)")
        return 1
    # The launcher code run in this process (relay, daemons alone) logs into a file, kept
    # only when something failed; stdout carries only the JSON result.
    fd, name = tempfile.mkstemp(prefix="pvlB-inproc-", suffix=".log", dir="/tmp")
    inproc_log = Path(name)
    with os.fdopen(fd, "w") as inproc, contextlib.redirect_stdout(inproc):
        logs.configure("bench", 2)
        t_start = time.monotonic()
        s = Samples()
        try:
            machine = machine_info()
        except Exception as exc:
            machine = {}
            s.errors.append(f"machine: {type(exc).__name__}: {exc}")
        monitor_rss(s, opts.light_runs)
        relay(s, opts.light_runs)
        daemons_alone(s, opts.light_runs)
        qemu_exit(s, opts.light_runs)
        forced_shutdown(s, opts.runs, opts.grace)
        cmd(s, opts.runs)
        migration(s, opts.runs)
        hotplug(s, opts.runs)
    if s.errors:
        log(f"in-process logs (relay, daemons alone) kept in {inproc_log}")
    else:
        inproc_log.unlink(missing_ok=True)
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = assemble(s.values, machine=machine, checks=s.checks, errors=s.errors,
                      wall_s=time.monotonic() - t_start, grace_s=opts.grace)
    text = json.dumps(result, indent=2) + "\n"
    opts.output.write_text(text)
    sys.stdout.write(text)
    sys.stdout.flush()
    log(f"wrote {opts.output} in {result['wall_s']} s; targets met: {result['targets_met']}")
    if result["missing"]:
        log(f"could not measure: {', '.join(result['missing'])}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
