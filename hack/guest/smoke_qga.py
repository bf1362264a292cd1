#!/usr/bin/env python3
"""Guest-agent / QMP client for hack/guest/smoke.sh (Python standard library only).

Talks the guest agent's JSON protocol over the UNIX socket of QEMU's virtio-serial
chardev: guest-sync until the agent answers, then a set of checked commands, then
(depending on --mode) a shutdown request. Exits 0 when every check passed; the caller
then checks that QEMU itself exits with status 0.

Modes:
  agent        guest-shutdown via the agent.
  acpi         QMP system_powerdown (the guest powers off on the ACPI power button).
  ignore-acpi  guest booted with pvl.ignore_acpi=1: QMP system_powerdown must NOT stop it
               (checked for --ignore-wait seconds), then guest-shutdown via the agent.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

JsonObj = dict[str, Any]


class SmokeError(Exception):
    """A check failed."""


class Clock:
    def __init__(self, t0: float) -> None:
        self.t0 = t0

    def now(self) -> float:
        return time.time() - self.t0

    def log(self, msg: str) -> None:
        print(f"smoke: [{self.now():6.2f}s] {msg}", flush=True)


def qemu_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by the shell) still answers kill(0).
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class JsonChannel:
    """Newline-delimited JSON over a UNIX stream socket."""

    def __init__(self, path: str, qemu_pid: int, deadline: float) -> None:
        self.path = path
        self.buf = b""
        while True:
            if not qemu_alive(qemu_pid):
                raise SmokeError(f"QEMU (pid {qemu_pid}) exited before {path} accepted")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise SmokeError(f"cannot connect to {path}") from None
                time.sleep(0.05)
        self.sock = sock

    def send(self, obj: JsonObj) -> None:
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def recv(self, timeout: float) -> JsonObj | None:
        """Next JSON object, or None if none arrived within timeout."""
        end = time.monotonic() + timeout
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                line = line.strip().strip(b"\xff")
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue  # garbage from a half-written request before the agent ran
                if isinstance(obj, dict):
                    return obj
            left = end - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not data:
                raise SmokeError(f"{self.path}: connection closed")
            self.buf += data

    def close(self) -> None:
        self.sock.close()


class Agent:
    def __init__(self, chan: JsonChannel, clock: Clock) -> None:
        self.chan = chan
        self.clock = clock
        self.sync_id = int(time.time()) % 100000 * 1000
        self.last_ms = 0.0

    def sync(self, qemu_pid: int, deadline: float) -> int:
        """Send guest-sync until the agent echoes our id; return the number of tries."""
        tries = 0
        while True:
            if time.monotonic() > deadline:
                raise SmokeError(f"guest agent did not answer guest-sync ({tries} tries)")
            if not qemu_alive(qemu_pid):
                raise SmokeError("QEMU exited while waiting for the guest agent")
            self.sync_id += 1
            tries += 1
            self.chan.send({"execute": "guest-sync", "arguments": {"id": self.sync_id}})
            end = time.monotonic() + 1.0
            while (left := end - time.monotonic()) > 0:
                msg = self.chan.recv(left)
                if msg is None:
                    break
                if msg.get("return") == self.sync_id:
                    return tries
                # Answers to earlier guest-syncs (queued while the guest booted): skip.

    def execute(self, command: str, arguments: JsonObj | None = None, timeout: float = 30) -> Any:
        req: JsonObj = {"execute": command}
        if arguments is not None:
            req["arguments"] = arguments
        start = time.monotonic()
        self.chan.send(req)
        msg = self.chan.recv(timeout)
        if msg is None:
            raise SmokeError(f"{command}: no answer within {timeout} s")
        if "error" in msg:
            raise SmokeError(f"{command}: {msg['error']}")
        if "return" not in msg:
            raise SmokeError(f"{command}: unexpected answer {msg}")
        self.last_ms = (time.monotonic() - start) * 1000
        return msg["return"]

    def check(self, command: str, arguments: JsonObj | None = None) -> Any:
        ret = self.execute(command, arguments)
        self.clock.log(f"{command} ok ({self.last_ms:.0f} ms)")
        return ret

    def send_shutdown(self) -> None:
        # guest-shutdown sends no answer on success: QEMU exiting (rc 0) is the answer.
        self.chan.send({"execute": "guest-shutdown", "arguments": {"mode": "powerdown"}})
        self.clock.log("guest-shutdown sent")


class Qmp:
    def __init__(self, chan: JsonChannel) -> None:
        self.chan = chan
        greeting = chan.recv(10)
        if not greeting or "QMP" not in greeting:
            raise SmokeError(f"QMP: bad greeting {greeting}")
        self.execute("qmp_capabilities")

    def execute(self, command: str) -> Any:
        self.chan.send({"execute": command})
        end = time.monotonic() + 10
        while (left := end - time.monotonic()) > 0:
            msg = self.chan.recv(left)
            if msg is None:
                break
            if "error" in msg:
                raise SmokeError(f"QMP {command}: {msg['error']}")
            if "return" in msg:
                return msg["return"]
            # else: an asynchronous event, skip
        raise SmokeError(f"QMP {command}: no answer")


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise SmokeError(what)


def basic_checks(agent: Agent, args: argparse.Namespace) -> None:
    agent.check("guest-ping")
    info = agent.check("guest-info")
    agent.clock.log(f"  qemu-ga {info.get('version')}")

    osinfo = agent.check("guest-get-osinfo")
    agent.clock.log(f"  {osinfo.get('pretty-name')}, kernel {osinfo.get('kernel-release')}")
    expect(osinfo.get("id") == "pvlguest", f"os id {osinfo.get('id')!r} != 'pvlguest'")
    expect(osinfo.get("name") == "PVL Test Guest", f"os name {osinfo.get('name')!r}")
    if args.kernel_version:
        expect(
            osinfo.get("kernel-release") == args.kernel_version,
            f"kernel-release {osinfo.get('kernel-release')!r} != {args.kernel_version!r}",
        )

    host = agent.check("guest-get-host-name")
    expect(host.get("host-name") == "testguest", f"host-name {host!r}")

    fsinfo = agent.check("guest-get-fsinfo")
    mounts = {fs.get("mountpoint"): fs for fs in fsinfo}
    agent.clock.log(f"  filesystems: {sorted(str(m) for m in mounts)}")
    data = mounts.get("/mnt/data")
    expect(data is not None, "/mnt/data not in guest-get-fsinfo")
    assert data is not None
    expect(data.get("type") == "ext4", f"/mnt/data type {data.get('type')!r}")

    handle = agent.check("guest-file-open", {"path": "/mnt/data/hello.txt", "mode": "r"})
    content = agent.check("guest-file-read", {"handle": handle, "count": 4096})
    agent.check("guest-file-close", {"handle": handle})
    text = base64.b64decode(content.get("buf-b64", "")).decode()
    expect(text == "hello\n", f"/mnt/data/hello.txt contains {text!r}")

    if args.expect_ip:
        ifaces = agent.check("guest-network-get-interfaces")
        addrs = {
            (i.get("name"), a.get("ip-address")) for i in ifaces for a in i.get("ip-addresses", [])
        }
        expect(("eth0", args.expect_ip) in addrs, f"eth0 has no {args.expect_ip}: {addrs}")
        agent.clock.log(f"  eth0 {args.expect_ip}")

    frozen = agent.check("guest-fsfreeze-freeze")
    expect(frozen >= 1, f"guest-fsfreeze-freeze froze {frozen} filesystems")
    status = agent.check("guest-fsfreeze-status")
    expect(status == "frozen", f"fsfreeze status {status!r} after freeze")
    thawed = agent.check("guest-fsfreeze-thaw")
    expect(thawed == frozen, f"thawed {thawed} != frozen {frozen}")
    status = agent.check("guest-fsfreeze-status")
    expect(status == "thawed", f"fsfreeze status {status!r} after thaw")


def console_has(path: str, text: str) -> bool:
    try:
        return text in Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return False


def run(args: argparse.Namespace) -> None:
    clock = Clock(args.t0)
    deadline = time.monotonic() + args.agent_timeout
    chan = JsonChannel(args.qga, args.qemu_pid, deadline)
    agent = Agent(chan, clock)
    tries = agent.sync(args.qemu_pid, deadline)
    clock.log(f"guest agent answered guest-sync (boot-to-agent, {tries} tries)")
    basic_checks(agent, args)

    if args.mode == "agent":
        agent.send_shutdown()
        return

    qmp = Qmp(JsonChannel(args.qmp, args.qemu_pid, time.monotonic() + 10))
    qmp.execute("system_powerdown")
    clock.log("QMP system_powerdown sent")
    if args.mode == "acpi":
        return

    # ignore-acpi: the guest must log that it ignores the button and keep running.
    end = time.monotonic() + args.ignore_wait
    seen_msg = False
    while time.monotonic() < end:
        expect(qemu_alive(args.qemu_pid), "QEMU exited after system_powerdown (pvl.ignore_acpi=1)")
        if not seen_msg and console_has(args.console, "PVL: ignoring ACPI power button"):
            seen_msg = True
            clock.log("console: 'PVL: ignoring ACPI power button'")
        time.sleep(0.25)
    expect(seen_msg, "no 'PVL: ignoring ACPI power button' on the console")
    agent.check("guest-ping")
    clock.log(f"guest still running {args.ignore_wait:.0f} s after system_powerdown")
    agent.send_shutdown()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--qga", required=True, help="guest agent chardev UNIX socket")
    p.add_argument("--qmp", help="QMP UNIX socket (modes acpi, ignore-acpi)")
    p.add_argument("--console", required=True, help="serial console log file")
    p.add_argument("--qemu-pid", type=int, required=True)
    p.add_argument("--t0", type=float, default=time.time(), help="QEMU start (epoch seconds)")
    p.add_argument("--mode", choices=("agent", "acpi", "ignore-acpi"), default="agent")
    p.add_argument("--agent-timeout", type=float, default=90)
    p.add_argument("--ignore-wait", type=float, default=15)
    p.add_argument("--expect-ip", help="IPv4 address eth0 must have (pvl.ip=)")
    p.add_argument("--kernel-version", help="expected guest kernel release")
    args = p.parse_args()
    if args.mode != "agent" and not args.qmp:
        p.error(f"--mode {args.mode} needs --qmp")
    try:
        run(args)
    except SmokeError as exc:
        print(f"smoke: FAIL: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
