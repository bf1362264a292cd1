#!/usr/bin/env python3
"""`make demo`: a VM's life under py-virt-launcher, end to end, with real parts.

virt-launcher-monitor starts virt-launcher in a temporary runtime root; the launcher brings
up virtlogd and libvirtd, relays libvirt events to a notify receiver (virt-launcher-events,
standing in for virt-handler), and serves KubeVirt's command API. The tiny test guest is
defined and started as virt-handler's Sync would; we watch the snapshots, ask GetDomain,
pause/resume, kill -9 libvirtd under the running VM, then SIGTERM: ACPI shutdown, final
snapshot, clean exit, nothing left running.

Run as a module from the repository root: python -m hack.demo
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import libvirt
import psutil

from hack.guestvm import AGENT_CHANNEL, domain_xml, guest_env
from launcher import flags
from launcher._proto.kubevirt.cmd.v1 import cmd_pb2, cmd_pb2_grpc
from launcher.paths import Paths, derive

BIN = Path(sys.executable).parent


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def step(text: str) -> None:
    say(f"\n==> {text}")


class Events:
    """The receiver's stdout: one JSON line per notify event, echoed as they arrive."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            rec = json.loads(raw)
            with self._lock:
                self.lines.append(rec)
            say("    notify <- " + describe(rec))

    def last_domain(self) -> dict[str, Any] | None:
        with self._lock:
            doms = [r for r in self.lines if r["kind"] == "domain"]
        return doms[-1] if doms else None

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.last_domain()
            if last is not None and pred(last):
                return
            time.sleep(0.05)
        raise SystemExit(f"timed out waiting for {what}")


def describe(rec: dict[str, Any]) -> str:
    if rec["kind"] == "k8s":
        e = rec["event"]
        return f"K8s event {e.get('type')}/{e.get('reason')}: {e.get('message')}"
    d = rec["domain"]
    st = d["Status"]
    agent = agent_state(rec) or "-"
    deleting = " deletionTimestamp=" + d["ObjectMeta"]["deletionTimestamp"] \
        if "deletionTimestamp" in d["ObjectMeta"] else ""
    return f"{rec['eventType']:<8} {st['Status']}/{st['Reason']} agent={agent}{deleting}"


def agent_state(rec: dict[str, Any]) -> str | None:
    for ch in rec["domain"].get("Spec", {}).get("Devices", {}).get("Channels", []):
        if ch.get("Target", {}).get("Name") == AGENT_CHANNEL:
            state: str | None = ch["Target"].get("State")
            return state
    return None


def launcher_log(log: Path, seen: int) -> int:
    lines = log.read_text(errors="replace").splitlines()
    for line in lines[seen:]:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("source") in ("daemon-output", "qemu-log") or rec.get("level") == "debug":
            continue  # the daemons' and QEMU's own chatter stays in the log file
        extra = {k: v for k, v in rec.items() if k not in (
            "msg", "level", "timestamp", "component", "argv", "uri", "domain", "part",
            "subsystem", "args", "binary")}
        say(f"    [{rec.get('component')}] {rec.get('msg')} {extra or ''}")
    return len(lines)


def wait_log(log: Path, msg: str, proc: subprocess.Popen[bytes], timeout: float,
             seen: int) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = launcher_log(log, seen)
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{") and json.loads(line).get("msg") == msg:
                return seen
        if proc.poll() is not None:
            raise SystemExit(f"monitor exited early with {proc.returncode}")
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {msg!r}")


def get_domain(paths: Paths) -> dict[str, Any]:
    with grpc.insecure_channel(f"unix:{paths.cmd_socket}") as channel:
        resp = cmd_pb2_grpc.CmdStub(channel).GetDomain(cmd_pb2.EmptyRequest(), timeout=5)
    doc: dict[str, Any] = json.loads(resp.domain)
    return doc


def main() -> int:
    if os.geteuid() != 0:
        say("make demo runs as root (system-mode libvirt in a private mount namespace)")
        return 1
    base = Path(tempfile.mkdtemp(prefix="pvl-demo-", dir="/tmp"))
    root = base / "root"
    root.mkdir()
    log = base / "launcher.log"
    args = ["--runtime-root", str(root), "--name", "demo", "--namespace", "default",
            "--uid", "0b8f-demo", "--grace-period-seconds", "30"]
    paths = derive(flags.parse(args, environ={}))
    ok = False
    procs: list[subprocess.Popen[bytes]] = []
    try:
        step("notify receiver (virt-handler's side): virt-launcher-events")
        os.makedirs(os.path.dirname(paths.notify_socket), mode=0o755)
        receiver = subprocess.Popen(
            [str(BIN / "virt-launcher-events"), "--socket", paths.notify_socket],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        procs.append(receiver)
        events = Events(receiver)

        step(f"virt-launcher-monitor {' '.join(args)}")
        with open(log, "wb") as out:
            monitor = subprocess.Popen([str(BIN / "virt-launcher-monitor"), *args],
                                       stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        procs.append(monitor)
        t0 = time.monotonic()
        seen = wait_log(log, "launcher running", monitor, 30, 0)
        say(f"    ready (launcher-sock present) in {time.monotonic() - t0:.2f}s")

        step(f"virsh -c '{paths.uri}' list --all")
        r = subprocess.run(["virsh", "-c", paths.uri, "list", "--all"], capture_output=True,
                           text=True, check=True)
        for line in r.stdout.strip().splitlines():
            say(f"    {line}")

        step("define + start the test guest (what virt-handler's Sync does), wait for the agent")
        disk = root / "data.ext4"
        shutil.copy(guest_env()["GUEST_DATA_DISK"], disk)
        conn = libvirt.open(paths.uri)
        dom = conn.defineXML(domain_xml(domain=paths.domain, uid="0b8f-demo", disk=disk,
                                        agent_socket=root / "qga.sock",
                                        console_log=root / "console.log"))
        t1 = time.monotonic()
        dom.create()
        events.wait(lambda e: agent_state(e) == "connected", 120, "agent connected")
        say(f"    Running with the guest agent connected after {time.monotonic() - t1:.1f}s")
        seen = launcher_log(log, seen)

        step("Cmd.GetDomain over launcher-sock (as virt-handler asks)")
        d = get_domain(paths)
        say(f"    {d['ObjectMeta']['namespace']}/{d['ObjectMeta']['name']}: "
            f"{d['Status']['Status']}/{d['Status']['Reason']}, uuid {d['Spec']['UUID']}")

        step("pause and resume through libvirt")
        dom.suspend()
        events.wait(lambda e: e["domain"]["Status"]["Status"] == "Paused", 10, "Paused")
        dom.resume()
        events.wait(lambda e: e["domain"]["Status"]["Status"] == "Running", 10, "Running")

        step(f"kill -9 {paths.daemon} under the running VM")
        qemu_pid = int(Path(paths.qemu_pidfile).read_text())
        mon = psutil.Process(monitor.pid)
        daemon = next(p for p in mon.children(recursive=True) if p.name() == paths.daemon)
        conn.close()
        daemon.kill()
        n = len(events.lines)
        deadline = time.monotonic() + 15
        while len(events.lines) == n and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = launcher_log(log, seen)
        say(f"    QEMU pid {qemu_pid} still alive: {psutil.pid_exists(qemu_pid)}; "
            "a fresh snapshot arrived after the reconnect")
        events.wait(lambda e: agent_state(e) == "connected", 30, "agent re-connected")

        step("SIGTERM to the monitor: ACPI shutdown, final notify, clean exit")
        t2 = time.monotonic()
        monitor.send_signal(signal.SIGTERM)
        code = monitor.wait(timeout=90)
        launcher_log(log, seen)
        time.sleep(0.2)
        say(f"    monitor exited with {code} after {time.monotonic() - t2:.2f}s")
        receiver.terminate()
        receiver.wait(10)
        left = [p for p in psutil.process_iter(["cmdline"])
                if any(str(root) in a for a in p.info["cmdline"] or ())]
        say(f"    processes left referencing the runtime root: {len(left)}")
        final = events.last_domain()
        ok = (code == 0 and not left and final is not None
              and final["domain"]["Status"]["Status"] == "Shutoff"
              and "deletionTimestamp" in final["domain"]["ObjectMeta"])
        step("demo " + ("succeeded" if ok else "FAILED") + f" (full log: {log})")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if ok:
            shutil.rmtree(base, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
