#!/usr/bin/env python3
"""Soak: N whole VM lifetimes, one JSON object on stdout.

KubeVirt's launcher runs one VM per lifetime (one pod, one VMI), so a cycle here is one
pod's life: a fresh runtime root, a notify receiver (virt-handler's end), the monitor
starting the launcher with the test guest as STANDALONE_VMI (converted, disks and ISO
prepared, defined, started by the launcher), the guest agent connected (the cache filled),
a freeze and a thaw over the command socket, SIGTERM to the monitor, exit 0; then the
runtime root is removed, as the kubelet removes a pod's volumes.

Measured per cycle: the phases' times; the launcher's RSS, open fds and threads at the same
point of every cycle (right after the thaw); the monitor's RSS. Checked per cycle: exit
code 0, a Shutoff/Shutdown snapshot then the final one (the domain deleted by virt-handler's
stand-in, deletionTimestamp), no process left
that references the cycle's root (QEMU, libvirtd, virtlogd, anything), no mount left, no
socket or QEMU pid file left in the root, and the root removable. Checked across cycles
(the first 10 against the last 10): no growth of the launcher's RSS (median, <= 2 MiB),
fds and threads (max, <= 1), or of the cycle time (median, <= 25 %); after the last
cycle no process or mount of the soak's left, no more QEMU processes on the host than
after the first cycle, and the soak's own fds back to that count. The host's process and
mount counts are reported (other work on the machine moves them).

    python -m hack.soak [--cycles N] [--keep-failed]        (root; make soak)

Exits 0 when every check held, 1 otherwise (the JSON says which); progress on stderr.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psutil

from hack.bench_cmd import (
    BenchError,
    agent_connected,
    guest_info,
    has_log,
    json_lines,
    launcher_pid,
    log,
    stop_all,
    wait_for,
)
from launcher import flags
from launcher._proto.kubevirt.cmd.v1 import cmd_pb2, cmd_pb2_grpc
from launcher.paths import Paths, derive
from tests.support.guestvm import stage, vmi
from tests.support.harness import processes_referencing

BIN = Path(sys.executable).parent
PREFIX = "pvl-soak-"
NAME = "soak"
NAMESPACE = "default"
GRACE_S = 30
MIB = 1024 * 1024
COMPARE = 10  # first N vs last N cycles
RSS_GROWTH_LIMIT_MIB = 2.0
FD_GROWTH_LIMIT = 1
THREAD_GROWTH_LIMIT = 1
TIME_GROWTH_LIMIT = 0.25


class CycleError(BenchError):
    """A cycle's check failed."""


def mounts_with(marker: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if marker in line]


def host_counts() -> dict[str, int]:
    qemu = sum(1 for p in psutil.process_iter(["name"])
               if (p.info["name"] or "").startswith("qemu-system"))
    with open("/proc/self/mountinfo") as f:
        mounts = sum(1 for _ in f)
    return {"processes": len(psutil.pids()), "qemu_processes": qemu, "mounts": mounts,
            "soak_fds": len(os.listdir("/proc/self/fd"))}


def stub(paths: Paths) -> tuple[grpc.Channel, Any]:
    channel = grpc.insecure_channel(f"unix:{paths.cmd_socket}")
    return channel, cmd_pb2_grpc.CmdStub(channel)


def vmi_request(uid: str) -> Any:
    doc = {"metadata": {"name": NAME, "namespace": NAMESPACE, "uid": uid}}
    return cmd_pb2.VMI(vmiJson=json.dumps(doc).encode())


def freeze_thaw(paths: Paths, uid: str) -> None:
    channel, cmd = stub(paths)
    with channel:
        resp = cmd.FreezeVirtualMachine(cmd_pb2.FreezeRequest(
            vmi=vmi_request(uid), unfreezeTimeoutSeconds=60), timeout=90)
        if not resp.success:
            raise CycleError(f"freeze failed: {resp.message}")
        if guest_info(paths).get("fsFreezeStatus") != "frozen":
            raise CycleError("not frozen after the freeze")
        resp = cmd.UnfreezeVirtualMachine(cmd_pb2.VMIRequest(vmi=vmi_request(uid)),
                                          timeout=60)
        if not resp.success:
            raise CycleError(f"thaw failed: {resp.message}")
        if guest_info(paths).get("fsFreezeStatus") != "thawed":
            raise CycleError("not thawed after the thaw")


def last_snapshot(events: Path) -> dict[str, Any] | None:
    doms = [r for r in json_lines(events) if r.get("kind") == "domain"]
    return doms[-1] if doms else None


def cycle(n: int, keep_failed: bool) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix=PREFIX, dir="/tmp"))
    root = base / "r"
    root.mkdir()
    mon_log, events = base / "launcher.log", base / "events.jsonl"
    uid = f"soak-uid-{n}"
    args = ["--runtime-root", str(root), "--name", NAME, "--namespace", NAMESPACE,
            "--uid", uid, "--allow-emulation", "--grace-period-seconds", str(GRACE_S)]
    paths = derive(flags.parse(args, environ={}))
    res: dict[str, Any] = {"cycle": n}
    procs: list[subprocess.Popen[bytes]] = []
    ok = False
    t0 = time.monotonic()
    try:
        stage(paths.container_disk_dir)
        os.makedirs(os.path.dirname(paths.notify_socket), mode=0o755, exist_ok=True)
        with events.open("wb") as out:
            procs.append(subprocess.Popen(
                [str(BIN / "virt-launcher-events"), "--socket", paths.notify_socket,
                 "--act-as-virt-handler", paths.cmd_socket],  # virt-handler's part
                stdout=out, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL))
        wait_for(lambda: os.path.exists(paths.notify_socket), 10, "notify receiver")
        standalone = json.dumps(vmi(name=NAME, namespace=NAMESPACE, uid=uid))
        t_start = time.monotonic()
        with mon_log.open("wb") as out:
            monitor = subprocess.Popen(
                [str(BIN / "virt-launcher-monitor"), *args], stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "STANDALONE_VMI": standalone})
        procs.append(monitor)
        wait_for(lambda: has_log(mon_log, "launcher running"), 30, "launcher running",
                 monitor)
        res["running_s"] = round(time.monotonic() - t_start, 2)
        wait_for(lambda: agent_connected(events), 120, "agent connected", monitor, 0.1)
        wait_for(lambda: bool(guest_info(paths).get("guestAgentVersion")), 60, "agent cache",
                 monitor, 0.1)
        res["agent_s"] = round(time.monotonic() - t_start, 2)
        t = time.monotonic()
        freeze_thaw(paths, uid)
        res["freeze_thaw_s"] = round(time.monotonic() - t, 3)
        launcher = psutil.Process(launcher_pid(monitor))
        with launcher.oneshot():
            res["launcher_rss_mib"] = round(launcher.memory_info().rss / MIB, 2)
            res["launcher_fds"] = launcher.num_fds()
            res["launcher_threads"] = launcher.num_threads()
        res["monitor_rss_mib"] = round(psutil.Process(monitor.pid).memory_info().rss / MIB, 2)
        t = time.monotonic()
        monitor.send_signal(signal.SIGTERM)
        try:
            code = monitor.wait(GRACE_S + 30)
        except subprocess.TimeoutExpired:
            raise CycleError("the monitor did not exit after SIGTERM") from None
        res["shutdown_s"] = round(time.monotonic() - t, 2)
        if code != 0:
            raise CycleError(f"monitor exited {code}")
        final = last_snapshot(events)
        st = (final or {}).get("domain", {}).get("Status", {})
        if (st.get("Status"), st.get("Reason")) != ("NoState", "NonExistent") or not (
                final or {}).get("domain", {}).get("ObjectMeta", {}).get("deletionTimestamp"):
            raise CycleError(f"final snapshot (want the domain deleted): {st}")
        stops = [e["domain"]["Status"] for e in json_lines(events) if e.get("kind") == "domain"
                 and e["domain"]["Status"].get("Status") == "Shutoff"]
        if not stops or (stops[-1].get("Reason")) != "Shutdown":
            raise CycleError(f"no Shutoff/Shutdown before the deletion: {stops}")
        receiver = procs[0]
        receiver.terminate()
        receiver.wait(10)
        wait_for(lambda: not processes_referencing(str(base)), 10, "no process left")
        if mounts_with(str(base)):
            raise CycleError(f"mounts left: {mounts_with(str(base))}")
        residue = [p for p in root.rglob("*") if p.is_socket() or p.name.endswith(".pid")]
        if residue:
            raise CycleError(f"sockets or pid files left: {[str(p) for p in residue]}")
        left_files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        res["files_left_in_root"] = len(left_files)
        if n == 1:
            res["files_left_in_root_list"] = left_files
        ok = True
    except (BenchError, OSError, grpc.RpcError, psutil.Error) as exc:
        res["error"] = f"{type(exc).__name__}: {exc}"
        log(f"cycle {n} failed: {res['error']}")
        for line in mon_log.read_text(errors="replace").splitlines()[-40:] \
                if mon_log.exists() else ():
            log(f"    | {line}")
    finally:
        strays = stop_all(procs, base)
        if strays:
            res.setdefault("error", f"processes left: {strays}")
            ok = False
        if ok or not keep_failed:
            # the pod's volumes go away with the pod
            shutil.rmtree(base)
            res["root_removed"] = not base.exists()
        else:
            log(f"logs kept in {base}")
    res["total_s"] = round(time.monotonic() - t0, 2)
    res["ok"] = ok
    return res


def growth(cycles: list[dict[str, Any]], key: str, agg: Callable[[list[float]], float]) -> \
        dict[str, float]:
    first = [c[key] for c in cycles[:COMPARE] if key in c]
    last = [c[key] for c in cycles[-COMPARE:] if key in c]
    a, b = agg(first), agg(last)
    return {"first": round(a, 3), "last": round(b, 3), "growth": round(b - a, 3)}


def summarize(cycles: list[dict[str, Any]], before: dict[str, int],
              after: dict[str, int]) -> dict[str, Any]:
    good = [c for c in cycles if c["ok"]]
    summary: dict[str, Any] = {"cycles": len(cycles), "ok": len(good),
                               "failed": [c["cycle"] for c in cycles if not c["ok"]]}
    if good:
        totals = sorted(c["total_s"] for c in good)
        summary["cycle_s"] = {"median": round(statistics.median(totals), 2),
                              "min": totals[0], "max": totals[-1]}
        for key in ("running_s", "agent_s", "freeze_thaw_s", "shutdown_s"):
            vals = [c[key] for c in good]
            summary[key] = {"median": round(statistics.median(vals), 3), "max": max(vals)}
        rss = [c["launcher_rss_mib"] for c in good]
        summary["launcher_rss_mib"] = {"median": round(statistics.median(rss), 2),
                                       "max": max(rss)}
        summary["files_left_in_root"] = sorted({c["files_left_in_root"] for c in good})
    checks: dict[str, bool] = {"every cycle ok": len(good) == len(cycles)}
    if len(good) >= 2 * COMPARE:
        g_rss = growth(good, "launcher_rss_mib", statistics.median)
        g_fds = growth(good, "launcher_fds", lambda v: float(max(v)))
        g_thr = growth(good, "launcher_threads", lambda v: float(max(v)))
        g_time = growth(good, "total_s", statistics.median)
        g_mon = growth(good, "monitor_rss_mib", statistics.median)
        summary["first_vs_last"] = {"launcher_rss_mib_median": g_rss,
                                    "launcher_fds_max": g_fds, "launcher_threads_max": g_thr,
                                    "cycle_s_median": g_time, "monitor_rss_mib_median": g_mon}
        checks[f"launcher RSS growth <= {RSS_GROWTH_LIMIT_MIB} MiB"] = (
            g_rss["growth"] <= RSS_GROWTH_LIMIT_MIB)
        checks[f"launcher fds growth <= {FD_GROWTH_LIMIT}"] = g_fds["growth"] <= FD_GROWTH_LIMIT
        checks[f"launcher threads growth <= {THREAD_GROWTH_LIMIT}"] = (
            g_thr["growth"] <= THREAD_GROWTH_LIMIT)
        checks[f"cycle time growth <= {TIME_GROWTH_LIMIT:.0%}"] = (
            g_time["growth"] <= TIME_GROWTH_LIMIT * g_time["first"])
    else:
        summary["first_vs_last"] = f"needs >= {2 * COMPARE} good cycles"
    summary["host_before"], summary["host_after"] = before, after
    checks["no soak process or mount left"] = (not processes_referencing(PREFIX)
                                               and not mounts_with(PREFIX))
    checks["no QEMU more than before"] = after["qemu_processes"] <= before["qemu_processes"]
    checks["soak's own fds unchanged"] = after["soak_fds"] <= before["soak_fds"]
    summary["checks"] = checks
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=100, help="VM lifetimes (default 100)")
    parser.add_argument("--keep-failed", action="store_true",
                        help="keep a failed cycle's directory (logs)")
    parser.add_argument("--stop-on-failure", action="store_true")
    opts = parser.parse_args(argv)
    if os.geteuid() != 0:
        log("soak runs as root (system-mode libvirt in private mount namespaces)")
        return 1
    if opts.cycles < 1:
        log("--cycles must be >= 1")
        return 2
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    before = host_counts()
    cycles: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for n in range(1, opts.cycles + 1):
        res = cycle(n, opts.keep_failed)
        cycles.append(res)
        if n == 1:
            # after the first cycle: gRPC's own descriptors exist from then on
            before = host_counts()
        log(f"cycle {n}/{opts.cycles}: {'ok' if res['ok'] else 'FAILED'} "
            f"{res['total_s']:.1f}s (agent {res.get('agent_s', '-')}s, shutdown "
            f"{res.get('shutdown_s', '-')}s, launcher RSS {res.get('launcher_rss_mib', '-')} "
            f"MiB, fds {res.get('launcher_fds', '-')}, threads "
            f"{res.get('launcher_threads', '-')})")
        if not res["ok"] and opts.stop_on_failure:
            break
    after = host_counts()
    summary = summarize(cycles, before, after)
    out = {"started": started, "soak_s": round(time.monotonic() - t0, 1),
           "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                       "kernel": platform.release()},
           "model": "one launcher lifetime per cycle (STANDALONE_VMI under the monitor: "
                    "start, sync, agent connected, freeze/thaw, SIGTERM, exit 0)",
           "summary": summary, "cycles": cycles, "ok": all(summary["checks"].values())}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
