#!/usr/bin/env python3
"""`make demo`: the monitor brings up the launcher and real libvirt daemons in a temporary
runtime root, `virsh` talks to them, a daemon is killed and comes back, then SIGTERM and a
clean exit with nothing left running. Later issues extend this to a full VM tour."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from launcher import flags
from launcher.paths import derive

BIN = Path(sys.executable).parent


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def step(text: str) -> None:
    say(f"\n==> {text}")


def show_log(log: Path, seen: int) -> int:
    lines = log.read_text(errors="replace").splitlines()
    for line in lines[seen:]:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            say(f"    {line}")
            continue
        if rec.get("source") == "daemon-output":
            continue  # the daemons' own chatter stays in the log file
        extra = {k: v for k, v in rec.items()
                 if k not in ("msg", "level", "timestamp", "component", "argv", "uri")}
        say(f"    [{rec.get('component')}] {rec.get('level')}: {rec.get('msg')} {extra or ''}")
    return len(lines)


def wait_for_msg(log: Path, msg: str, proc: subprocess.Popen[bytes], timeout: float,
                 seen: int) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = show_log(log, seen)
        if any(json.loads(line).get("msg") == msg for line in log.read_text().splitlines()
               if line.startswith("{")):
            return seen
        if proc.poll() is not None:
            raise SystemExit(f"monitor exited early with {proc.returncode}")
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {msg!r}")


def main() -> int:
    if os.geteuid() != 0:
        say("make demo runs as root (system-mode libvirt in a private mount namespace)")
        return 1
    base = Path(tempfile.mkdtemp(prefix="pvl-demo-", dir="/tmp"))
    root = base / "root"
    root.mkdir()
    log = base / "launcher.log"
    args = ["--runtime-root", str(root), "--name", "demo", "--namespace", "default",
            "--uid", "0b8f-demo", "--grace-period-seconds", "10"]
    paths = derive(flags.parse(args, environ={}))
    ok = False
    proc: subprocess.Popen[bytes] | None = None
    try:
        step(f"start virt-launcher-monitor (runtime root {root})")
        say(f"    {BIN / 'virt-launcher-monitor'} {' '.join(args)}")
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(BIN / "virt-launcher-monitor"), *args], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        t0 = time.monotonic()
        seen = wait_for_msg(log, "launcher running", proc, 30, 0)
        say(f"    ready in {time.monotonic() - t0:.2f}s")

        step("process tree")
        mon = psutil.Process(proc.pid)
        for p in [mon, *mon.children(recursive=True)]:
            say(f"    pid {p.pid:>7}  ppid {p.ppid():>7}  {p.name()}")

        step(f"virsh -c '{paths.uri}' list --all")
        for cmd in (["list", "--all"], ["version"]):
            r = subprocess.run(["virsh", "-c", paths.uri, *cmd], capture_output=True,
                               text=True, check=True)
            for line in r.stdout.strip().splitlines():
                say(f"    {line}")

        step(f"kill -9 {paths.daemon}: the launcher restarts it and reconnects")
        daemon = next(p for p in mon.children(recursive=True) if p.name() == paths.daemon)
        daemon.kill()
        t1 = time.monotonic()
        while True:
            new = [p for p in mon.children(recursive=True)
                   if p.name() == paths.daemon and p.pid != daemon.pid]
            listing = subprocess.run(["virsh", "-c", paths.uri, "list"], capture_output=True,
                                     check=False)
            if new and listing.returncode == 0:
                break
            if time.monotonic() - t1 > 10:
                raise SystemExit("daemon did not come back")
            time.sleep(0.05)
        say(f"    {paths.daemon} back as pid {new[0].pid} after {time.monotonic() - t1:.2f}s; "
            "virsh list works again")
        time.sleep(0.5)
        seen = show_log(log, seen)

        step("SIGTERM to the monitor")
        t2 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        show_log(log, seen)
        say(f"    monitor exited with {code} after {time.monotonic() - t2:.2f}s")
        left = [p for p in psutil.process_iter(["cmdline"])
                if any(str(root) in a for a in p.info["cmdline"] or ())]
        say(f"    processes left referencing the runtime root: {len(left)}")
        ok = code == 0 and not left
        step("demo " + ("succeeded" if ok else "FAILED") + f" (full log: {log})")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if ok:
            shutil.rmtree(base, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
