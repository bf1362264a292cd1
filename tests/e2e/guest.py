"""The tiny test guest (hack/build-guest.sh) as a libvirt domain, and a notify receiver
(`virt-launcher-events`, standing in for virt-handler's notify server)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from tests.e2e.harness import REPO, VENV_BIN, Instance, ensure_test_user, wait_for

GUEST_DIR = REPO / ".cache" / "guest"
AGENT_CHANNEL = "org.qemu.guest_agent.0"
BOOT_TO_AGENT_TIMEOUT_S = 90.0  # ~8 s alone under TCG; several guests share 2 cores


def guest_env() -> dict[str, str]:
    env_file = GUEST_DIR / "guest.env"
    if not env_file.exists():
        subprocess.run(["bash", str(REPO / "hack" / "build-guest.sh")], check=True)
    out = {}
    for line in env_file.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = shlex.split(value)[0] if value else ""
    return out


def domain_xml(inst: Instance, *, ignore_acpi: bool = False, memory_mib: int = 256) -> str:
    """What virt-handler's Sync would define for the VMI (until the converter exists):
    TCG, direct kernel boot, the ext4 data disk, the agent channel, a serial log."""
    env = guest_env()
    disk = inst.root / "data.ext4"
    if not disk.exists():
        shutil.copy(env["GUEST_DATA_DISK"], disk)  # QEMU locks it: one copy per VM
        if inst.nonroot:
            user = ensure_test_user()
            os.chown(disk, user.pw_uid, user.pw_gid)
    cmdline = env["GUEST_CMDLINE_BASE"] + (" pvl.ignore_acpi=1" if ignore_acpi else "")
    # Explicit, short agent socket path: libvirt's default one under a session-mode
    # XDG_CONFIG_HOME in a test runtime root would exceed the 108-byte sun_path limit.
    agent_sock = inst.root / "qga.sock"
    x = {k: escape(str(v)) for k, v in {
        "name": f"{inst.namespace}_{inst.name}", "uuid": uuid.uuid4(),
        "uid": f"uid-{inst.root.name}", "kernel": env["GUEST_KERNEL"],
        "initrd": env["GUEST_INITRD"], "cmdline": cmdline, "disk": disk,
        "agent": agent_sock, "console": inst.root / "console.log"}.items()}
    return f"""<domain type='qemu'>
  <name>{x['name']}</name>
  <uuid>{x['uuid']}</uuid>
  <metadata>
    <kubevirt:kubevirt xmlns:kubevirt='http://kubevirt.io'>
      <kubevirt:uid>{x['uid']}</kubevirt:uid>
    </kubevirt:kubevirt>
  </metadata>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{x['kernel']}</kernel>
    <initrd>{x['initrd']}</initrd>
    <cmdline>{x['cmdline']}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{x['disk']}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <channel type='unix'>
      <source mode='bind' path='{x['agent']}'/>
      <target type='virtio' name='{AGENT_CHANNEL}'/>
    </channel>
    <serial type='file'>
      <source path='{x['console']}'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>"""


def define_and_start(inst: Instance, **kwargs: Any) -> None:
    import libvirt  # noqa: PLC0415

    conn = libvirt.open(inst.paths.uri)
    try:
        dom = conn.defineXML(domain_xml(inst, **kwargs))
        dom.create()
    finally:
        conn.close()


def with_domain(inst: Instance, action: str) -> None:
    """suspend / resume / destroy / ... on our domain, through libvirt directly."""
    import libvirt  # noqa: PLC0415

    conn = libvirt.open(inst.paths.uri)
    try:
        getattr(conn.lookupByName(f"{inst.namespace}_{inst.name}"), action)()
    finally:
        conn.close()


@dataclass
class Receiver:
    """virt-launcher-events on the instance's notify socket, events read from its stdout."""

    inst: Instance
    proc: subprocess.Popen[bytes] | None = None
    out: Path = field(init=False)

    def __post_init__(self) -> None:
        self.out = self.inst.root.parent / "events.jsonl"

    def start(self) -> None:
        sock = self.inst.paths.notify_socket
        kwargs: dict[str, Any] = {}
        # Create the share dir as virt-handler would, owned by whoever runs the launcher.
        made = []
        d = os.path.dirname(sock)
        while not os.path.exists(d):
            made.append(d)
            d = os.path.dirname(d)
        for d in reversed(made):
            os.mkdir(d, 0o755)
        if self.inst.nonroot:
            user = ensure_test_user()
            kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
            for d in made:
                os.chown(d, user.pw_uid, user.pw_gid)
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "virt-launcher-events"), "--socket", sock],
                stdout=out, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, **kwargs)
        wait_for(lambda: os.path.exists(sock), 10, what="notify receiver socket")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def events(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        out = []
        for line in self.out.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def domains(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("kind") == "domain"]

    def last_domain(self) -> dict[str, Any] | None:
        doms = self.domains()
        return doms[-1] if doms else None

    def wait_domain(self, pred: Any, timeout: float, what: str) -> dict[str, Any]:
        def match() -> dict[str, Any] | None:
            for e in reversed(self.domains()):
                if pred(e):
                    found: dict[str, Any] = e
                    return found
            return None
        found: dict[str, Any] = wait_for(match, timeout, interval=0.05, what=what)
        return found


    def wait_last(self, pred: Any, timeout: float, what: str) -> dict[str, Any]:
        """Wait until the newest snapshot received satisfies `pred`."""
        def match() -> dict[str, Any] | None:
            last = self.last_domain()
            return last if last is not None and pred(last) else None
        found: dict[str, Any] = wait_for(match, timeout, interval=0.05, what=what)
        return found


def status(event: dict[str, Any]) -> tuple[str, str]:
    st = event["domain"]["Status"]
    return st["Status"], st["Reason"]


def agent_state(event: dict[str, Any]) -> str | None:
    for ch in event["domain"].get("Spec", {}).get("Devices", {}).get("Channels", []):
        if ch.get("Target", {}).get("Name") == AGENT_CHANNEL:
            state: str | None = ch["Target"].get("State")
            return state
    return None
