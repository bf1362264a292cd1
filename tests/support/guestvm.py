"""The tiny test guest (hack/build-guest.sh) two ways: as a KubeVirt VirtualMachineInstance
(`vmi`, with `stage` putting its files where virt-handler would mount them), which the
launcher converts and defines itself (SyncVirtualMachine, STANDALONE_VMI); and as a ready
libvirt domain (`domain_xml`), which tests define directly."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from launcher.converter.machine import KERNEL_BOOT_DIR

REPO = Path(__file__).resolve().parents[2]
GUEST_DIR = REPO / ".cache" / "guest"
AGENT_CHANNEL = "org.qemu.guest_agent.0"
GUEST_MAC = "52:54:00:fe:a5:01"
GUEST_IP = "192.0.2.10"  # TEST-NET-1: set statically in the guest, never routed anywhere
# Where the VMI's kernel-boot container has the artifacts; only the base names matter to
# the launcher (virt-handler mounts them under <container-disk-dir>/kernel-boot/).
KERNEL_PATH = "/boot/vmlinuz"
INITRD_PATH = "/boot/initramfs.cpio.gz"
DATA_VOLUME_INDEX = 0  # the containerDisk is spec.volumes[0]: <container-disk-dir>/disk_0.img


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


def vmi(*, name: str, namespace: str, uid: str, ignore_acpi: bool = False,
        memory: str = "256Mi", nic: bool = True) -> dict[str, Any]:
    """The test guest as a KubeVirt VMI: direct kernel boot from a kernel-boot container, the
    ext4 data disk as a containerDisk (vda, mounted on /mnt/data), a NoCloud cloud-init disk,
    a user-mode (slirp) NIC with the guest's MAC and static address (no tap device exists
    in a test pod), the serial console, 1 vCPU, no graphics. `stage` puts the files where
    the launcher looks for them."""
    env = guest_env()
    args = env["GUEST_CMDLINE_BASE"] + (" pvl.ignore_acpi=1" if ignore_acpi else "")
    if nic:
        args += f" pvl.ip={GUEST_IP}/24"
    devices: dict[str, Any] = {
        "autoattachGraphicsDevice": False,
        "disks": [{"name": "datadisk", "disk": {"bus": "virtio"}},
                  {"name": "cloudinitdisk", "disk": {"bus": "virtio"}}],
    }
    spec: dict[str, Any] = {
        "domain": {
            "cpu": {"cores": 1},
            "resources": {"requests": {"memory": memory}},
            "machine": {"type": "q35"},
            "firmware": {"kernelBoot": {
                "kernelArgs": args,
                "container": {"image": "localhost/pvl-test-guest:latest",
                              "kernelPath": KERNEL_PATH, "initrdPath": INITRD_PATH}}},
            "devices": devices,
        },
        "terminationGracePeriodSeconds": 30,
        "volumes": [
            {"name": "datadisk",
             "containerDisk": {"image": "localhost/pvl-test-guest-data:latest"}},
            {"name": "cloudinitdisk",
             "cloudInitNoCloud": {"userData": "#cloud-config\nhostname: testguest\n"}},
        ],
    }
    if nic:
        devices["interfaces"] = [{"name": "default", "slirp": {}, "macAddress": GUEST_MAC}]
        spec["networks"] = [{"name": "default", "pod": {}}]
    else:
        devices["autoattachPodInterface"] = False
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "spec": spec}


def stage(container_disk_dir: str | Path) -> None:
    """What virt-handler's container-disk mounts provide for `vmi()`: the kernel and initrd
    under <container-disk-dir>/kernel-boot/ and the data image as disk_0.img (hard links to
    the build, copies across filesystems: the image is only a read-only backing file, each
    VM writes its own overlay). Not symlinks: virt-handler bind-mounts the files, and the
    launcher refuses a disk whose path resolves outside its directory (launcher.vm.disks)."""
    env = guest_env()
    base = Path(container_disk_dir)
    links = {base / KERNEL_BOOT_DIR / Path(KERNEL_PATH).name: env["GUEST_KERNEL"],
             base / KERNEL_BOOT_DIR / Path(INITRD_PATH).name: env["GUEST_INITRD"],
             base / f"disk_{DATA_VOLUME_INDEX}.img": env["GUEST_DATA_DISK"]}
    for link, target in links.items():
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            os.link(target, link)
        except OSError:  # another filesystem (EXDEV), or hard links not allowed
            shutil.copyfile(target, link)
