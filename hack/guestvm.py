"""The tiny test guest (hack/build-guest.sh) as a libvirt domain: used by the e2e tests and
the demo until the converter (VMI -> XML) defines domains itself."""

from __future__ import annotations

import shlex
import subprocess
import uuid
from pathlib import Path
from xml.sax.saxutils import escape

REPO = Path(__file__).resolve().parents[1]
GUEST_DIR = REPO / ".cache" / "guest"
AGENT_CHANNEL = "org.qemu.guest_agent.0"
GUEST_MAC = "52:54:00:fe:a5:01"
GUEST_IP = "192.0.2.10"  # TEST-NET-1: set statically in the guest, never routed anywhere


def guest_env() -> dict[str, str]:
    """guest.env from the build (building it first if needed)."""
    env_file = GUEST_DIR / "guest.env"
    if not env_file.exists():
        subprocess.run(["bash", str(REPO / "hack" / "build-guest.sh")], check=True)
    out = {}
    for line in env_file.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = shlex.split(value)[0] if value else ""
    return out


def domain_xml(*, domain: str, uid: str, disk: Path, agent_socket: Path, console_log: Path,
               ignore_acpi: bool = False, memory_mib: int = 256, nic: bool = False) -> str:
    """What virt-handler's Sync would define for the VMI: TCG, direct kernel boot, the ext4
    data disk (a per-VM copy: QEMU locks it), the agent channel, a serial log.

    The agent socket path is explicit and short: libvirt's default one under a session-mode
    XDG_CONFIG_HOME inside a test runtime root would exceed the 108-byte sun_path limit."""
    env = guest_env()
    cmdline = env["GUEST_CMDLINE_BASE"] + (" pvl.ignore_acpi=1" if ignore_acpi else "")
    # A user-mode NIC (no host networking) with a static address the agent reports.
    nic_xml = (f"<interface type='user'><mac address='{GUEST_MAC}'/>"
               "<model type='virtio'/></interface>") if nic else ""
    if nic:
        cmdline += f" pvl.ip={GUEST_IP}/24"
    x = {k: escape(str(v)) for k, v in {
        "name": domain, "uuid": uuid.uuid4(), "uid": uid, "kernel": env["GUEST_KERNEL"],
        "initrd": env["GUEST_INITRD"], "cmdline": cmdline, "disk": disk,
        "agent": agent_socket, "console": console_log}.items()}
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
    {nic_xml}
    <serial type='file'>
      <source path='{x['console']}'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>"""
