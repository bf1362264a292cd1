#!/usr/bin/env python3
"""`make demo`: a VM's life under py-virt-launcher, end to end, with real parts.

virt-launcher-monitor starts virt-launcher in a temporary runtime root with
STANDALONE_VMI set to the demo VMI (the tiny test guest as a KubeVirt VMI: kernel boot from
a kernel-boot container, a containerDisk data disk, a cloud-init NoCloud ISO, a slirp NIC,
the guest agent channel), with a hook sidecar: the SMBIOS example (hack/hooks/smbios.py) as
its own process, setting the board vendor from the VMI's annotation; the guest reads it
back. The launcher brings up virtlogd and libvirtd, relays libvirt
events to a notify receiver (virt-launcher-events --act-as-virt-handler, standing in for
virt-handler: it receives the snapshots and drives the end of the VM's life over the command
socket as virt-handler does), serves KubeVirt's command API, and syncs the VMI itself:
converts it to a domain, prepares the disks, defines and starts it. We wait for the guest
agent, ask GetDomain and GetGuestInfo, Sync the VMI again over gRPC, live-migrate it to a
second pod (the target pod in its own mount namespace with the same paths and its own
libvirtd, virt-handler's migration proxy stood in for: tests/support/migration.py; the
guest's uptime goes on there, the source pod ends) and go on with it there: freeze/thaw with
virt-freezer, pause/resume, kill -9 libvirtd under the running VM, then end the pod as a
cluster does: SIGTERM -> the domain is marked for graceful shutdown -> virt-handler's
Shutdown -> the guest powers off (Shutoff/Shutdown: the VMI Succeeded) -> virt-handler's
Delete -> the final "deleted" snapshot -> the launcher exits 0, nothing left running.
virt-handler's verdict on every snapshot comes from tests/support/virt_handler.py.
Exit status 0 only when every step worked.

Run as a module from the repository root: python -m hack.demo
"""

from __future__ import annotations

import contextlib
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

import psutil
import yaml

from launcher import flags
from launcher._proto.kubevirt.cmd.v1 import cmd_pb2
from launcher.paths import Paths, derive
from tests.support import guest
from tests.support.guestvm import AGENT_CHANNEL, stage, vmi
from tests.support.harness import Instance, kill_all, processes_referencing, wait_for
from tests.support.migration import MigrationProxy, migrating, target_pod
from tests.support.virt_handler import Verdict, replay

BIN = Path(sys.executable).parent
SMBIOS_ANNOTATION = "smbios.vm.kubevirt.io/baseBoardManufacturer"
BOARD_VENDOR = "py-virt-launcher demo"


HOTPLUG_MARKER = b"PVL-DEMO-HOTPLUG"


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

    def domains(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.lines if r["kind"] == "domain"]

    def handler_calls(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.lines if r["kind"] == "handler"]

    def last_domain(self) -> dict[str, Any] | None:
        doms = self.domains()
        return doms[-1] if doms else None

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str,
             since: int | None = None) -> None:
        """Until the last domain event matches; with `since`, any from that index on (a
        state the next event replaces at once, e.g. Shutoff/Migrated before the Delete)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doms = self.domains()
            candidates = doms[since:] if since is not None else doms[-1:]
            if any(pred(d) for d in candidates):
                return
            time.sleep(0.05)
        raise SystemExit(f"timed out waiting for {what}")


def describe(rec: dict[str, Any]) -> str:
    if rec["kind"] == "k8s":
        e = rec["event"]
        return f"K8s event {e.get('type')}/{e.get('reason')}: {e.get('message')}"
    if rec["kind"] == "handler":
        return (f"(virt-handler calls {rec['action']}VirtualMachine: "
                f"{'ok' if rec['success'] else 'failed ' + rec['message']})")
    d = rec["domain"]
    st = d["Status"]
    agent = agent_state(rec) or "-"
    grace = d.get("Spec", {}).get("Metadata", {}).get("KubeVirt", {}).get("GracePeriod", {})
    marked = " markedForGracefulShutdown" if grace.get("MarkedForGracefulShutdown") else ""
    deleting = " deletionTimestamp=" + d["ObjectMeta"]["deletionTimestamp"] \
        if "deletionTimestamp" in d["ObjectMeta"] else ""
    return (f"{rec['eventType']:<8} {st['Status']}/{st['Reason']} agent={agent}"
            f"{marked}{deleting}")


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


class Cmd(guest.Cmd):
    """virt-handler's side of the command socket (tests.support.guest.Cmd); a failed rpc
    ends the demo."""

    def vmi_call(self, rpc: str, doc: dict[str, Any] | None = None,
                 timeout: float = 60) -> Any:
        resp = super().vmi_call(rpc, doc, timeout)
        if not resp.success:
            raise SystemExit(f"{rpc} failed: {resp.message}")
        return resp


def wait(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    """tests.support.harness.wait_for; a timeout ends the demo."""
    try:
        return wait_for(pred, timeout, interval=0.1, what=what)
    except TimeoutError as exc:
        raise SystemExit(str(exc)) from None


def to_yaml(doc: dict[str, Any]) -> str:
    """YAML as a pod spec would carry it; multi-line strings (user data) as blocks."""
    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(doc, Dumper=Dumper, sort_keys=False)


def freezer(paths: Paths, *args: str) -> str:
    r = subprocess.run([str(BIN / "virt-freezer"), "--name", "demo", "--namespace", "default",
                        "--socket", paths.cmd_socket, *args],
                       capture_output=True, text=True, timeout=120, check=False)
    # stdout: --status's JSON; stderr: JSON log lines (their messages are shown)
    msgs = [json.loads(line).get("msg", line) if line.startswith("{") else line
            for line in r.stderr.splitlines() if line.strip()]
    output = "; ".join([*r.stdout.splitlines(), *msgs])
    say(f"    $ virt-freezer {' '.join(args)} -> exit {r.returncode}: {output}")
    if r.returncode != 0:
        raise SystemExit(f"virt-freezer {' '.join(args)} failed")
    return r.stdout


def main() -> int:
    if os.geteuid() != 0:
        say("make demo runs as root (system-mode libvirt in a private mount namespace)")
        return 1
    base = Path(tempfile.mkdtemp(prefix="pvl-demo-", dir="/tmp"))
    root = base / "root"
    root.mkdir()
    log = base / "launcher.log"
    uid = "0b8f-demo"  # short: the console socket lives under <root>/.../<uid>/
    # --allow-emulation: KVM is unusable on these machines; the launcher probes it and
    # falls back to TCG (<domain type='qemu'>).
    args = ["--runtime-root", str(root), "--name", "demo", "--namespace", "default",
            "--uid", uid, "--grace-period-seconds", "30", "--allow-emulation",
            "--hook-sidecars", "1"]
    paths = derive(flags.parse(args, environ={}))
    doc = vmi(name="demo", namespace="default", uid=uid)
    doc["metadata"]["annotations"] = {SMBIOS_ANNOTATION: BOARD_VENDOR}
    ok = False
    procs: list[subprocess.Popen[bytes]] = []
    stack = contextlib.ExitStack()
    t_start = time.monotonic()
    try:
        step("the demo VMI (STANDALONE_VMI), its files staged as virt-handler mounts them")
        stage(paths.container_disk_dir)
        text = to_yaml(doc)
        for line in text.splitlines():
            say(f"    {line}")

        step("virt-handler's side: virt-launcher-events --act-as-virt-handler (notify "
             "receiver + command client)")
        os.makedirs(os.path.dirname(paths.notify_socket), mode=0o755, exist_ok=True)
        receiver = subprocess.Popen(
            [str(BIN / "virt-launcher-events"), "--socket", paths.notify_socket,
             "--act-as-virt-handler", paths.cmd_socket],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        procs.append(receiver)
        events = Events(receiver)

        step("the hook sidecar, in its own directory of the hooks dir (as a sidecar "
             "container's subPath mount): python -m hack.hooks.smbios")
        sidecar_dir = Path(paths.hooks_dir) / "hook-sidecar-0"
        sidecar_dir.mkdir(parents=True)
        sidecar = subprocess.Popen(
            [sys.executable, "-m", "hack.hooks.smbios", "--socket-dir", str(sidecar_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        procs.append(sidecar)

        step(f"STANDALONE_VMI=<the VMI above> virt-launcher-monitor {' '.join(args)}")
        with open(log, "wb") as out:
            monitor = subprocess.Popen([str(BIN / "virt-launcher-monitor"), *args],
                                       stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL,
                                       env={**os.environ, "STANDALONE_VMI": text})
        procs.append(monitor)
        t0 = time.monotonic()
        seen = wait_log(log, "launcher running", monitor, 30, 0)
        say(f"    ready (launcher-sock present) in {time.monotonic() - t0:.2f}s")
        seen = wait_log(log, "synced", monitor, 60, seen)
        say(f"    VMI converted, disks prepared, domain defined and started "
            f"{time.monotonic() - t0:.2f}s after the start")

        step("wait for the guest: Running with the guest agent connected")
        events.wait(lambda e: agent_state(e) == "connected", 120, "agent connected")
        say(f"    agent connected {time.monotonic() - t0:.1f}s after the start")
        seen = launcher_log(log, seen)
        cmd = Cmd(paths.cmd_socket, "demo", "default", uid, doc=doc)

        step("Cmd.GetDomain and Cmd.GetGuestInfo over launcher-sock (as virt-handler asks)")
        d = cmd.domain()
        say(f"    {d['ObjectMeta']['namespace']}/{d['ObjectMeta']['name']}: "
            f"{d['Status']['Status']}/{d['Status']['Reason']}, uuid {d['Spec']['UUID']}")
        def filled() -> dict[str, Any] | None:
            i = cmd.guest_info()
            return i if i.get("hostname") and (i.get("fsInfo") or {}).get("disks") else None

        info = wait(filled, 60, "guest info from the agent")
        mounts = [f"{f['mountPoint']} ({f['fileSystemType']})"
                  for f in info["fsInfo"]["disks"]]
        say(f"    hostname {info['hostname']}, os {info['os']['prettyName']}, agent "
            f"{info['guestAgentVersion']}, filesystems {', '.join(mounts)}, "
            f"fsFreezeStatus {info['fsFreezeStatus']}")

        step("what the guest sees of the hook sidecar (guest agent Exec)")
        seen = launcher_log(log, seen)
        vendor = cmd.exec("/bin/cat", "/sys/class/dmi/id/board_vendor").stdOut.strip()
        say(f"    /sys/class/dmi/id/board_vendor in the guest: {vendor!r}")
        if vendor != BOARD_VENDOR:
            raise SystemExit(f"the guest sees board vendor {vendor!r}, not {BOARD_VENDOR!r}")

        step("Cmd.SyncVirtualMachine with the same VMI, then with more memory")
        say(f"    same VMI: {cmd.vmi_call('SyncVirtualMachine').message}")
        bigger = json.loads(json.dumps(doc))
        bigger["spec"]["domain"]["resources"]["requests"]["memory"] = "320Mi"
        say(f"    320Mi: {cmd.vmi_call('SyncVirtualMachine', bigger).message}")
        seen = launcher_log(log, seen)

        step("volume hotplug: an image in the hotplug directory (where virt-handler mounts a "
             "hotplugged PVC), attached live by SyncVirtualMachine, read inside the guest")
        hp_dir = Path(paths.hotplug_disk_dir)
        hp_dir.mkdir(parents=True, exist_ok=True)
        (hp_dir / "demo-hp.img").write_bytes(HOTPLUG_MARKER.ljust(8 * 2**20, b"\0"))
        plugged = json.loads(json.dumps(doc))
        plugged["spec"]["volumes"].append({"name": "demo-hp", "persistentVolumeClaim": {
            "claimName": "demo-hp", "hotpluggable": True}})
        plugged["spec"]["domain"]["devices"]["disks"].append(
            {"name": "demo-hp", "disk": {"bus": "scsi"}})
        plugged.setdefault("status", {})["volumeStatus"] = [{
            "name": "demo-hp", "phase": "MountedToPod",
            "hotplugVolume": {"attachPodName": "hp-volume-demo"}}]
        t4 = time.monotonic()
        say(f"    attach: {cmd.vmi_call('SyncVirtualMachine', plugged).message}")
        read_hp = ("for d in /sys/block/sd*; do [ -e \"$d\" ] || continue; "
                   "n=${d##*/}; h=$(dd if=/dev/$n bs=512 count=1 2>/dev/null | head -c 16); "
                   "[ \"$h\" = " + HOTPLUG_MARKER.decode() + " ] && echo \"$n $h\"; done")
        found = wait(lambda: cmd.exec("/bin/sh", "-c", read_hp, timeout_s=20).stdOut.strip(),
                     60, "the hotplugged disk in the guest")
        say(f"    the guest reads /dev/{found} ({time.monotonic() - t4:.2f} s after the sync)")
        say(f"    detach: {cmd.vmi_call('SyncVirtualMachine', doc).message}")
        wait(lambda: not cmd.exec("/bin/sh", "-c", read_hp, timeout_s=20).stdOut.strip(), 60,
             "the hotplugged disk gone from the guest")
        say("    gone from the guest's /sys/block")
        seen = launcher_log(log, seen)

        step("live migration to a second pod: the target pod (its own mount namespace, the "
             "same paths, its own libvirtd), virt-handler's migration proxy stood in for")
        target = stack.enter_context(target_pod(
            Instance(root=root, nonroot=False, name="demo", namespace="default"),
            # (no hook sidecar in this target pod: the domain XML comes from the source)
            ["--uid", uid, "--grace-period-seconds", "30", "--allow-emulation"]))
        stage(target.view.paths.container_disk_dir)
        t_events = subprocess.Popen(
            [str(BIN / "virt-launcher-events"), "--socket", target.view.paths.notify_socket,
             "--act-as-virt-handler", target.view.paths.cmd_socket],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        procs.append(t_events)
        target_events = Events(t_events)
        target.proc.start(env={"POD_NAME": "virt-launcher-demo-target"})
        assert target.proc.proc is not None
        procs.append(target.proc.proc)
        wait(lambda: target.proc.logged("launcher running"), 60, "the target launcher")
        uptime0 = cmd.exec("/bin/cut", "-d ", "-f1", "/proc/uptime").stdOut.strip()
        moving = migrating(doc, "demo-migration", "virt-launcher-demo-target")
        t_cmd = Cmd(target.view.paths.cmd_socket, "demo", "default", uid, doc=moving)
        say(f"    target: {t_cmd.vmi_call('SyncMigrationTarget', moving).message}")
        proxy = MigrationProxy(source_share=Path(paths.share_dir),
                               target_share=target.host(paths.share_dir),
                               target_libvirt_socket=Path(target.view.paths.daemon_socket),
                               uid=uid)
        proxy.start()
        t3 = time.monotonic()
        before = len(events.domains())
        source_cmd = Cmd(paths.cmd_socket, "demo", "default", uid, doc=moving)
        resp = source_cmd.stub.MigrateVirtualMachine(cmd_pb2.MigrationRequest(
            vmi=source_cmd.vmi, options=json.dumps({"Bandwidth": "0"}).encode()), timeout=60)
        say(f"    source: {resp.message}")
        events.wait(lambda e: e["domain"]["Status"]["Reason"] == "Migrated", 120,
                    "Shutoff/Migrated on the source", since=before)
        seen = launcher_log(log, seen)
        say(f"    migrated in {time.monotonic() - t3:.1f}s; the source pod's virt-handler "
            "stand-in deletes the source domain and the source pod ends:")
        code = monitor.wait(timeout=90)
        launcher_log(log, seen)
        say(f"    source monitor exited with {code}")
        proxy.stop()
        target_events.wait(lambda e: agent_state(e) == "connected", 60,
                           "the agent on the target")
        uptime1 = t_cmd.exec("/bin/cut", "-d ", "-f1", "/proc/uptime").stdOut.strip()
        say(f"    the guest on the target: uptime {uptime0} s before, {uptime1} s now "
            "(the same boot)")
        if float(uptime1) <= float(uptime0):
            raise SystemExit("the guest's uptime did not go on after the migration")
        # From here on the VM lives in the target pod.
        monitor, events, cmd, log, seen = (target.proc.proc, target_events, t_cmd,
                                           target.proc.log_path, 0)
        paths = target.view.paths
        seen = len(log.read_text(errors="replace").splitlines())

        step("virt-freezer (a Velero backup hook): freeze, status, unfreeze")
        freezer(paths, "--freeze", "--unfreezeTimeoutSeconds", "60")
        if json.loads(freezer(paths, "--status"))["fsFreezeStatus"] != "frozen":
            raise SystemExit("the guest is not frozen")
        freezer(paths, "--unfreeze")
        if json.loads(freezer(paths, "--status"))["fsFreezeStatus"] != "thawed":
            raise SystemExit("the guest is not thawed")
        seen = launcher_log(log, seen)

        step("Cmd.PauseVirtualMachine and UnpauseVirtualMachine")
        cmd.vmi_call("PauseVirtualMachine")
        events.wait(lambda e: e["domain"]["Status"]["Status"] == "Paused", 10, "Paused")
        cmd.vmi_call("UnpauseVirtualMachine")
        events.wait(lambda e: e["domain"]["Status"]["Status"] == "Running", 10, "Running")

        step(f"kill -9 {paths.daemon} under the running VM")
        qemu_pid = int(Path(paths.qemu_pidfile).read_text())
        mon = psutil.Process(monitor.pid)
        daemon = next(p for p in mon.children(recursive=True) if p.name() == paths.daemon)
        daemon.kill()
        n = len(events.lines)
        deadline = time.monotonic() + 15
        while len(events.lines) == n and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = launcher_log(log, seen)
        say(f"    QEMU pid {qemu_pid} still alive: {psutil.pid_exists(qemu_pid)}; "
            "a fresh snapshot arrived after the reconnect")
        events.wait(lambda e: agent_state(e) == "connected", 30, "agent re-connected")

        step("SIGTERM to the monitor, as the kubelet deletes the pod: the domain is marked "
             "for graceful shutdown, virt-handler shuts it down, then deletes it")
        t2 = time.monotonic()
        n = len(events.domains())
        monitor.send_signal(signal.SIGTERM)
        code = monitor.wait(timeout=90)
        launcher_log(log, seen)
        say(f"    monitor exited with {code} after {time.monotonic() - t2:.2f}s")
        receiver.terminate()
        receiver.wait(10)
        try:
            sidecar_code: int | None = sidecar.wait(10)
        except subprocess.TimeoutExpired:
            sidecar_code = None
        say(f"    the hook sidecar got Shutdown; its exit status: {sidecar_code}")
        # As the tests look for them: command line or environment (tests.support.harness).
        left = processes_referencing(str(root))
        say(f"    processes left referencing the runtime root: {len(left)}")
        seen_domains = events.domains()
        view = replay([e["domain"] for e in seen_domains])
        for rec, verdict in list(zip(seen_domains, view.verdicts, strict=True))[n:]:
            say(f"    virt-handler's view of {describe(rec).split(' agent=')[0].strip()}: "
                f"domain {'exists' if verdict.exists else 'deleted'}, VMI {verdict.phase}"
                f"{', next: ' + verdict.action if verdict.action else ''}")
        calls = [c["action"] for c in events.handler_calls() if c["success"]]
        say(f"    virt-handler's calls that succeeded: {', '.join(calls) or 'none'}")
        final = events.last_domain()
        ok = (code == 0 and sidecar_code == 0 and not left and final is not None
              and final["domain"]["Status"]["Reason"] == "NonExistent"
              and "deletionTimestamp" in final["domain"]["ObjectMeta"]
              and view.phase == "Succeeded" and "Delete" in calls
              and never_deleted_before_the_end(view.verdicts))
        step("demo " + ("succeeded" if ok else "FAILED")
             + f" in {time.monotonic() - t_start:.1f}s (full log: {log})")
    finally:
        cleanup(procs, root)
        stack.close()
        if ok:
            shutil.rmtree(base, ignore_errors=True)
    return 0 if ok else 1


def never_deleted_before_the_end(verdicts: list[Verdict]) -> bool:
    """Once virt-handler sees the domain deleted it stays deleted, and the state before
    that was the stopped domain (its reason decided the VMI's phase)."""
    gone = [i for i, v in enumerate(verdicts) if not v.exists]
    return bool(gone) and gone == list(range(gone[0], len(verdicts))) \
        and gone[0] > 0 and not verdicts[gone[0] - 1].alive


def cleanup(procs: list[subprocess.Popen[bytes]], root: Path) -> None:
    """After a failed step too, nothing may stay running: the monitor gets SIGTERM (graceful
    shutdown), a second one (destroy now), SIGKILL last; then anything still referencing
    the runtime root (a launcher orphaned by the kill, its daemons, QEMU) is killed."""
    for p in reversed(procs):  # the monitor first, the notify receiver last
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGTERM, 20.0),
                            (signal.SIGKILL, 5.0)):
            if p.poll() is not None:
                break
            p.send_signal(sig)
            try:
                p.wait(wait_s)
            except subprocess.TimeoutExpired:
                continue
    left = processes_referencing(str(root))
    kill_all(left)
    if left:
        say(f"    killed {len(left)} leftover processes of the runtime root")


if __name__ == "__main__":
    sys.exit(main())
