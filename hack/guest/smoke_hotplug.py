#!/usr/bin/env python3
"""Hotplug smoke test of the test guest through a real libvirt daemon (TCG, q35).

usage: .venv/bin/python hack/guest/smoke_hotplug.py [--outdir DIR] [--keep] [--only STEPS]

Builds the guest (hack/build-guest.sh, cached), starts a private system-mode libvirtd in
its own mount namespace (temp dirs bound over /run/libvirt, /etc/libvirt, /var/lib/libvirt,
/var/cache/libvirt, /var/log/libvirt; QEMU's stdio to files, so no virtlogd), boots the
guest with a virtio-scsi controller, an empty SCSI CD-ROM, 1 of 2 vCPUs, 1 GiB + a 1 GiB
virtio-mem device (NUMA node 0), a user-mode NIC, spare pcie-root-ports and the agent
channel, then checks through libvirt and the guest agent (guest-exec):

  disk    attachDeviceFlags SCSI disk sda (raw file, marker at offset 0) -> /sys/block/sda,
          dd reads the marker; detachDeviceFlags -> gone
  cdrom   updateDeviceFlags: media into the empty SCSI CD-ROM (ISO9660) -> dd reads CD001,
          mount -t iso9660 reads a file; eject -> no medium; plus what libvirt says to a
          CD-ROM attachDeviceFlags (expected: refused)
  vcpu    setVcpusFlags(2, LIVE) -> /sys/devices/system/cpu/online 0-1; setVcpusFlags(1) -> 0
  mem     updateDeviceFlags virtio-mem requested 512 MiB -> MemTotal +~512 MiB; 0 -> back
  nic     attachDeviceFlags <interface type='user'> virtio -> new /sys/class/net entry (up);
          detachDeviceFlags -> gone

Found on libvirt 9.0 / QEMU 7.2 / TCG (recorded in the summary on every run):
  * <maxMemory slots='0'> is refused ("both maximum memory size and memory slot count must
    be specified"); the domain is then started with slots='1'.
  * vCPU unplug: the guest offlines and ejects the vCPU and QEMU drops it, but QEMU emits
    no DEVICE_DELETED for the vCPU device, so setVcpusFlags(1) fails after 5 s ("vcpu
    unplug request timed out") and libvirt keeps counting 2 vCPUs; the next PCI device_add
    then crashes QEMU. Hence vcpu runs last and the re-plug is skipped when that happens.

Prints a JSON summary (timings in seconds) and exits 0 when every step passed (for vcpu:
when the guest side behaved; whether libvirt saw the unplug complete is recorded). Everything
it starts (libvirtd, QEMU) is stopped at the end; --keep keeps the temp dir (console log,
libvirtd log, QEMU log).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu

REPO = Path(__file__).resolve().parents[2]
DOMAIN = "pvl-hotplug-smoke"
AGENT_CHANNEL = "org.qemu.guest_agent.0"
BOOT_MAC = "52:54:00:fe:a5:01"
HOT_MAC = "52:54:00:fe:a5:02"
LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
MIB = 1024


class StepError(Exception):
    pass


T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"smoke-hotplug: [{time.monotonic() - T0:7.2f}s] {msg}", flush=True)


def read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            env[k] = shlex.split(v)[0] if v else ""
    return env


# --- the private libvirt daemon -----------------------------------------------------------

class Daemon:
    """A system-mode libvirtd in a private mount namespace, all of its state under tmp."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.run = tmp / "run"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = tmp / "libvirtd.log"

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.run}/libvirt-sock"

    def start(self) -> None:
        binds = {self.run: "/run/libvirt", self.tmp / "etc": "/etc/libvirt",
                 self.tmp / "lib": "/var/lib/libvirt", self.tmp / "cache": "/var/cache/libvirt",
                 self.tmp / "log": "/var/log/libvirt"}
        for src in binds:
            src.mkdir(mode=0o700, parents=True, exist_ok=True)
        conf = self.tmp / "etc" / "libvirtd.conf"
        conf.write_text("\n".join([
            "listen_tls = 0", "listen_tcp = 0", f'unix_sock_dir = "{self.run}"',
            'unix_sock_rw_perms = "0700"', 'unix_sock_ro_perms = "0700"',
            'unix_sock_admin_perms = "0700"', 'auth_unix_rw = "none"', 'auth_unix_ro = "none"',
            f'log_filters = "{os.environ.get("LIBVIRT_LOG_FILTERS", "")}"',
            'log_outputs = "1:stderr"', ""]))
        (self.tmp / "etc" / "qemu.conf").write_text("\n".join([
            'stdio_handler = "file"', 'user = "root"', 'group = "root"',
            "dynamic_ownership = 0", "remember_owner = 0", 'security_driver = "none"',
            "cgroup_controllers = [ ]", "namespaces = [ ]", ""]))
        steps = ["set -e"] + [f"mount --bind '{s}' '{d}'" for s, d in binds.items()]
        steps.append('exec "$@"')
        argv = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                "; ".join(steps), "libvirtd", "libvirtd", "-f", str(conf),
                "-p", str(self.tmp / "libvirtd.pid")]
        out = open(self.log_path, "wb")  # noqa: SIM115 (lives as long as the daemon)
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        out.close()

    def connect(self, timeout: float = 30) -> libvirt.virConnect:
        end = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise StepError(f"libvirtd exited ({self.proc.returncode}): "
                                f"{self.log_path.read_text()[-2000:]}")
            if (self.run / "libvirt-sock").exists():
                try:
                    return libvirt.open(self.uri)
                except libvirt.libvirtError:
                    pass
            if time.monotonic() > end:
                raise StepError("libvirtd did not accept connections")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def kill_qemu(run: Path) -> None:
    """QEMU daemonizes away from libvirtd: kill it by its pid file if it is still there."""
    pidfile = run / "qemu" / f"{DOMAIN}.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"qemu-system" in cmdline and DOMAIN.encode() in cmdline:
            os.kill(pid, signal.SIGKILL)
            log(f"killed leftover QEMU {pid}")


# --- the domain ---------------------------------------------------------------------------

def domain_xml(env: dict[str, str], tmp: Path, slots: int) -> str:
    # Spare root ports for PCIe hotplug (the NIC); libvirt adds one per boot-time device.
    root_ports = "\n".join(["    <controller type='pci' index='0' model='pcie-root'/>"] + [
        f"    <controller type='pci' index='{i}' model='pcie-root-port'/>" for i in range(1, 9)])
    cmdline = env["GUEST_CMDLINE_BASE"] + " pvl.ip=192.0.2.10/24"
    return f"""<domain type='qemu'>
  <name>{DOMAIN}</name>
  <maxMemory slots='{slots}' unit='GiB'>2</maxMemory>
  <memory unit='GiB'>1</memory>
  <vcpu placement='static' current='1'>2</vcpu>
  <vcpus>
    <vcpu id='0' enabled='yes' hotpluggable='no' order='1'/>
    <vcpu id='1' enabled='no' hotpluggable='yes'/>
  </vcpus>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{env['GUEST_KERNEL']}</kernel>
    <initrd>{env['GUEST_INITRD']}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <cpu><numa><cell id='0' cpus='0-1' memory='1' unit='GiB'/></numa></cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='scsi' index='0' model='virtio-scsi'/>
{root_ports}
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='sdb' bus='scsi'/>
      <readonly/>
    </disk>
    <interface type='user'>
      <mac address='{BOOT_MAC}'/>
      <model type='virtio'/>
    </interface>
    <channel type='unix'>
      <source mode='bind' path='{tmp}/qga.sock'/>
      <target type='virtio' name='{AGENT_CHANNEL}'/>
    </channel>
    <serial type='file'>
      <source path='{tmp}/console.log'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    <memory model='virtio-mem'>
      <target>
        <size unit='MiB'>1024</size>
        <node>0</node>
        <block unit='KiB'>2048</block>
        <requested unit='KiB'>0</requested>
      </target>
    </memory>
  </devices>
</domain>"""


# --- the guest agent ----------------------------------------------------------------------

class Guest:
    def __init__(self, dom: libvirt.virDomain) -> None:
        self.dom = dom

    def agent(self, cmd: str, args: dict[str, Any] | None = None, timeout: int = 10) -> Any:
        req: dict[str, Any] = {"execute": cmd}
        if args is not None:
            req["arguments"] = args
        out = libvirt_qemu.qemuAgentCommand(self.dom, json.dumps(req), timeout, 0)
        return json.loads(out)["return"]

    def wait_agent(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while True:
            try:
                self.agent("guest-ping", timeout=2)
                return
            except libvirt.libvirtError:
                if time.monotonic() > end:
                    raise StepError("the guest agent did not answer") from None
                time.sleep(0.25)

    def sh(self, script: str, timeout: float = 30) -> tuple[int, str, str]:
        pid = self.agent("guest-exec", {"path": "/bin/sh", "arg": ["-c", script],
                                        "capture-output": True})["pid"]
        end = time.monotonic() + timeout
        while True:
            st = self.agent("guest-exec-status", {"pid": pid})
            if st.get("exited"):
                out = base64.b64decode(st.get("out-data", "")).decode(errors="replace")
                err = base64.b64decode(st.get("err-data", "")).decode(errors="replace")
                return st.get("exitcode", -1), out, err
            if time.monotonic() > end:
                raise StepError(f"guest-exec {script!r}: still running after {timeout} s")
            time.sleep(0.05)

    STATE = ("echo block=$(ls /sys/block); echo cpus=$(cat /sys/devices/system/cpu/online); "
             "echo mem=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo); "
             "echo net=$(ls /sys/class/net)")

    def state(self) -> dict[str, Any]:
        rc, out, err = self.sh(self.STATE)
        if rc != 0:
            raise StepError(f"state script failed ({rc}): {err}")
        kv = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return {"block": kv.get("block", "").split(), "cpus": kv.get("cpus", ""),
                "mem_kib": int(kv.get("mem") or 0), "net": kv.get("net", "").split()}

    def wait_for(self, what: str, cond: Callable[[dict[str, Any]], bool], since: float,
                 timeout: float = 60) -> tuple[float, dict[str, Any]]:
        """Poll the guest's state until cond holds; seconds since `since` and the state."""
        end = time.monotonic() + timeout
        while True:
            st = self.state()
            if cond(st):
                return round(time.monotonic() - since, 2), st
            if time.monotonic() > end:
                raise StepError(f"{what}: not seen within {timeout} s; guest state {st}")
            time.sleep(0.2)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.monotonic()
    ret = fn()
    return round(time.monotonic() - t, 2), ret


def live_devices(dom: libvirt.virDomain) -> ET.Element:
    devices = ET.fromstring(dom.XMLDesc(0)).find("devices")
    assert devices is not None
    return devices


def wait_xml(dom: libvirt.virDomain, what: str, cond: Callable[[ET.Element], bool],
             since: float, timeout: float = 60) -> float:
    end = time.monotonic() + timeout
    while not cond(live_devices(dom)):
        if time.monotonic() > end:
            raise StepError(f"{what}: live XML not as expected within {timeout} s")
        time.sleep(0.2)
    return round(time.monotonic() - since, 2)


def has_target(dev: str) -> Callable[[ET.Element], bool]:
    return lambda d: any(t.get("dev") == dev for t in d.iter("target"))


def has_mac(mac: str) -> Callable[[ET.Element], bool]:
    return lambda d: any(m.get("address") == mac for m in d.iter("mac"))


# --- the steps ----------------------------------------------------------------------------

def step_disk(dom: libvirt.virDomain, g: Guest, tmp: Path) -> dict[str, Any]:
    marker = f"PVL-HOTPLUG-MARKER-{os.getpid()}"
    img = tmp / "scsi.img"
    with open(img, "wb") as f:
        f.write(marker.encode())
        f.truncate(16 * 2**20)
    xml = (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
           f"<source file='{img}'/><target dev='sda' bus='scsi'/></disk>")
    r: dict[str, Any] = {}
    t = time.monotonic()
    r["attach_api_s"], _ = timed(lambda: dom.attachDeviceFlags(xml, LIVE))
    r["attach_seen_s"], _ = g.wait_for("sda in /sys/block", lambda s: "sda" in s["block"], t)
    rc, out, err = g.sh(f"cat /sys/block/sda/size; dd if=/dev/sda bs=512 count=1 2>/dev/null"
                        f" | head -c {len(marker)}")
    lines = out.splitlines()
    r["guest_sectors"] = int(lines[0]) if lines else None
    r["marker_read"] = lines[1] if len(lines) > 1 else ""
    if r["marker_read"] != marker:
        raise StepError(f"dd of /dev/sda read {out!r} (rc {rc}, {err!r}), not {marker!r}")
    t = time.monotonic()
    r["detach_api_s"], _ = timed(lambda: dom.detachDeviceFlags(xml, LIVE))
    r["detach_gone_guest_s"], _ = g.wait_for("sda gone", lambda s: "sda" not in s["block"], t)
    r["detach_gone_xml_s"] = wait_xml(dom, "sda removed", lambda d: not has_target("sda")(d), t)
    return r


def step_cdrom(dom: libvirt.virDomain, g: Guest, tmp: Path) -> dict[str, Any]:
    r: dict[str, Any] = {}
    src = tmp / "isodir"
    src.mkdir()
    (src / "hello.txt").write_text("hello from the cd\n")
    iso = tmp / "cd.iso"
    subprocess.run(["genisoimage", "-quiet", "-r", "-V", "PVLCD", "-o", str(iso), str(src)],
                   check=True)
    st0 = g.state()
    if "sr0" not in st0["block"]:
        raise StepError(f"no sr0 at boot (the empty SCSI CD-ROM): {st0['block']}")
    insert = (f"<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
              f"<source file='{iso}'/><target dev='sdb' bus='scsi'/><readonly/></disk>")
    t = time.monotonic()
    r["insert_api_s"], _ = timed(lambda: dom.updateDeviceFlags(insert, LIVE))
    script = ("dd if=/dev/sr0 bs=2048 skip=16 count=1 2>/dev/null | head -c 6 | tail -c 5; "
              "echo; mkdir -p /mnt/cd && mount -t iso9660 -o ro /dev/sr0 /mnt/cd && "
              "cat /mnt/cd/hello.txt; umount /mnt/cd")
    end = time.monotonic() + 30
    while True:
        rc, out, err = g.sh(script)
        if out.startswith("CD001") and "hello from the cd" in out:
            break
        if time.monotonic() > end:
            raise StepError(f"reading the inserted CD: rc {rc} out {out!r} err {err!r}")
        time.sleep(0.5)
    r["insert_read_s"] = round(time.monotonic() - t, 2)
    eject = ("<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
             "<target dev='sdb' bus='scsi'/><readonly/></disk>")
    t = time.monotonic()
    r["eject_api_s"], _ = timed(lambda: dom.updateDeviceFlags(eject, LIVE))
    end = time.monotonic() + 30
    while True:
        rc, out, err = g.sh("dd if=/dev/sr0 bs=2048 count=1 of=/dev/null")
        if rc != 0:
            r["eject_guest_error"] = err.strip().splitlines()[-1] if err.strip() else ""
            break
        if time.monotonic() > end:
            raise StepError("the ejected CD is still readable after 30 s")
        time.sleep(0.5)
    r["eject_seen_s"] = round(time.monotonic() - t, 2)
    # A new CD-ROM drive cannot be hot-plugged in libvirt (media change only): record what
    # it says, for the launcher side.
    new_cd = (f"<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
              f"<source file='{iso}'/><target dev='sdc' bus='scsi'/><readonly/></disk>")
    try:
        dom.attachDeviceFlags(new_cd, LIVE)
        r["attach_new_cdrom"] = "accepted"
        t = time.monotonic()
        r["attach_new_cdrom_seen_s"], _ = g.wait_for(
            "a second sr", lambda s: "sr1" in s["block"], t, timeout=30)
        dom.detachDeviceFlags(new_cd, LIVE)
    except libvirt.libvirtError as exc:
        r["attach_new_cdrom"] = f"refused: {exc.get_error_message()}"
    return r


def vcpu_diagnostics(dom: libvirt.virDomain, g: Guest) -> dict[str, Any]:
    d: dict[str, Any] = {}
    with contextlib.suppress(StepError, libvirt.libvirtError):
        _, out, _ = g.sh("cd /sys/devices/system/cpu; echo present=$(cat present) "
                         "online=$(cat online) dirs=$(ls -d cpu[0-9]*); "
                         "dmesg | grep -iE 'cpu|acpi|smpboot' | tail -n 12")
        d["guest"] = out.splitlines()
    with contextlib.suppress(libvirt.libvirtError):
        out = libvirt_qemu.qemuMonitorCommand(dom, json.dumps(
            {"execute": "query-cpus-fast"}), 0)
        d["qemu_cpus"] = [c.get("qom-path") for c in json.loads(out)["return"]]
    return d


def step_vcpu(dom: libvirt.virDomain, g: Guest, console: Path) -> dict[str, Any]:
    r: dict[str, Any] = {}
    try:
        return _step_vcpu(dom, g, console, r)
    except (StepError, libvirt.libvirtError) as exc:
        raise StepError(f"{exc}; so far {r}; diagnostics {vcpu_diagnostics(dom, g)}") from None


def _step_vcpu(dom: libvirt.virDomain, g: Guest, console: Path,
               r: dict[str, Any]) -> dict[str, Any]:
    t = time.monotonic()
    r["plug_api_s"], _ = timed(lambda: dom.setVcpusFlags(2, LIVE))
    r["plug_online_s"], _ = g.wait_for("cpus 0-1", lambda s: s["cpus"] == "0-1", t)
    r["libvirt_vcpus_after_plug"] = dom.vcpusFlags(LIVE)

    def unplug(prefix: str) -> bool:
        """setVcpusFlags(1): the guest must end with cpu0 only; whether libvirt saw the
        unplug complete (QEMU's DEVICE_DELETED for the vCPU) is recorded, not required."""
        t = time.monotonic()

        def call() -> None:  # in a thread: libvirt blocks up to 5 s waiting for QEMU
            try:
                dom.setVcpusFlags(1, LIVE)
            except libvirt.libvirtError as exc:
                r[f"{prefix}_api_error"] = exc.get_error_message()
            r[f"{prefix}_api_s"] = round(time.monotonic() - t, 2)

        th = threading.Thread(target=call)
        th.start()
        r[f"{prefix}_guest_offline_s"], _ = g.wait_for("cpus 0", lambda s: s["cpus"] == "0", t)
        th.join()
        end = time.monotonic() + 10
        while dom.vcpusFlags(LIVE) != 1 and time.monotonic() < end:
            time.sleep(0.2)
        done: bool = dom.vcpusFlags(LIVE) == 1
        r[f"{prefix}_libvirt_completed"] = done
        if done:
            r[f"{prefix}_libvirt_settled_s"] = round(time.monotonic() - t, 2)
        return done

    if unplug("unplug"):
        # Plug again: the re-added cpu1 must come online too.
        t = time.monotonic()
        dom.setVcpusFlags(2, LIVE)
        r["replug_online_s"], _ = g.wait_for("cpus 0-1 again", lambda s: s["cpus"] == "0-1", t)
        unplug("reunplug")
    else:
        r["qemu_cpus_after_unplug"] = vcpu_diagnostics(dom, g).get("qemu_cpus")
        r["replug"] = "skipped: libvirt still counts the unplugged vCPU"
    r["console"] = [ln for ln in console.read_text(errors="replace").splitlines()
                    if "hotplugd: cpu" in ln or "CPU 1" in ln or "CPU1" in ln][-8:]
    return r


def virtio_mem(dom: libvirt.virDomain) -> ET.Element:
    for mem in live_devices(dom).iter("memory"):
        if mem.get("model") == "virtio-mem":
            return mem
    raise StepError("no virtio-mem device in the live XML")


def set_requested(dom: libvirt.virDomain, kib: int) -> float:
    mem = virtio_mem(dom)
    req = mem.find("target/requested")
    assert req is not None
    req.set("unit", "KiB")
    req.text = str(kib)
    cur = mem.find("target/current")
    if cur is not None:  # output only
        mem.find("target").remove(cur)  # type: ignore[union-attr]
    xml = ET.tostring(mem, encoding="unicode")
    d, _ = timed(lambda: dom.updateDeviceFlags(xml, LIVE))
    return d


def mem_current_kib(dom: libvirt.virDomain) -> int | None:
    cur = virtio_mem(dom).find("target/current")
    if cur is None or cur.text is None:
        return None
    scale = {"KiB": 1, "MiB": 1024, "GiB": 1024 * 1024, "b": 1 / 1024, "bytes": 1 / 1024}
    return int(int(cur.text) * scale.get(cur.get("unit", "KiB"), 1))


def step_mem(dom: libvirt.virDomain, g: Guest) -> dict[str, Any]:
    r: dict[str, Any] = {}
    base = g.state()["mem_kib"]
    r["memtotal_before_mib"] = base // MIB
    want = 512 * MIB
    t = time.monotonic()
    r["plug_api_s"] = set_requested(dom, want)
    r["plug_seen_s"], st = g.wait_for(
        "MemTotal +512 MiB", lambda s: s["mem_kib"] - base >= want - 16 * MIB, t)
    r["memtotal_plugged_mib"] = st["mem_kib"] // MIB
    r["libvirt_current_after_plug_mib"] = (mem_current_kib(dom) or 0) // MIB
    _, out, _ = g.sh("for f in /sys/devices/system/memory/memory*/"
                      "valid_zones; do read z < $f; echo $z; done | sort | uniq -c; "
                      "grep -E 'MemFree|Movable' /proc/meminfo | tr -s ' '")
    r["guest_zones"] = " | ".join(ln.strip() for ln in out.splitlines())
    t = time.monotonic()
    r["unplug_api_s"] = set_requested(dom, 0)
    r["unplug_seen_s"], st = g.wait_for(
        "MemTotal back", lambda s: s["mem_kib"] - base <= 16 * MIB, t)
    r["memtotal_after_unplug_mib"] = st["mem_kib"] // MIB
    end = time.monotonic() + 30
    while (mem_current_kib(dom) or 0) != 0 and time.monotonic() < end:
        time.sleep(0.2)
    r["libvirt_current_after_unplug_mib"] = (mem_current_kib(dom) or 0) // MIB
    return r


def step_nic(dom: libvirt.virDomain, g: Guest) -> dict[str, Any]:
    r: dict[str, Any] = {}
    before = set(g.state()["net"])
    r["net_before"] = sorted(before)
    xml = (f"<interface type='user'><mac address='{HOT_MAC}'/><model type='virtio'/>"
           "</interface>")
    t = time.monotonic()
    r["attach_api_s"], _ = timed(lambda: dom.attachDeviceFlags(xml, LIVE))
    r["attach_seen_s"], st = g.wait_for("a new /sys/class/net entry",
                                        lambda s: bool(set(s["net"]) - before), t)
    new = sorted(set(st["net"]) - before)
    r["new_interfaces"] = new
    name = new[0]
    end = time.monotonic() + 15
    while True:
        _, out, _ = g.sh(f"cat /sys/class/net/{name}/flags /sys/class/net/{name}/address")
        lines = out.split()
        if lines and int(lines[0], 16) & 1:
            r["up_s"] = round(time.monotonic() - t, 2)
            r["guest_mac"] = lines[1] if len(lines) > 1 else ""
            break
        if time.monotonic() > end:
            raise StepError(f"{name} not brought up (flags {out!r})")
        time.sleep(0.2)
    t = time.monotonic()
    r["detach_api_s"], _ = timed(lambda: dom.detachDeviceFlags(xml, LIVE))
    r["detach_gone_guest_s"], _ = g.wait_for(f"{name} gone", lambda s: name not in s["net"], t)
    r["detach_gone_xml_s"] = wait_xml(dom, "NIC removed", lambda d: not has_mac(HOT_MAC)(d), t)
    return r


# --- main ---------------------------------------------------------------------------------

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--outdir", default=str(REPO / ".cache" / "guest"))
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    # vcpu last: on QEMU 7.2 under TCG a vCPU unplug leaves QEMU broken (the next PCI
    # device_add crashes it).
    p.add_argument("--only", default="disk,cdrom,mem,nic,vcpu",
                   help="comma-separated steps, in order (default: all, vcpu last)")
    p.add_argument("--agent-timeout", type=float, default=180)
    args = p.parse_args()
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors are raised anyway
    steps = [s for s in args.only.split(",") if s]

    subprocess.run(["bash", str(REPO / "hack" / "build-guest.sh"), args.outdir], check=True)
    env = read_env(Path(args.outdir) / "guest.env")
    tmp = Path(tempfile.mkdtemp(prefix="pvl-hp.", dir="/tmp"))
    tmp.chmod(0o755)
    summary: dict[str, Any] = {"kernel": env["GUEST_KERNEL_VERSION"],
                               "cmdline": env["GUEST_CMDLINE_BASE"], "libvirt":
                               libvirt.getVersion(), "steps": {}}
    daemon = Daemon(tmp)
    conn = dom = None
    ok = True
    try:
        daemon.start()
        conn = daemon.connect()
        summary["qemu"] = conn.getVersion()
        t = time.monotonic()
        try:
            dom = conn.createXML(domain_xml(env, tmp, 0), 0)
            summary["maxMemory_slots"] = 0
        except libvirt.libvirtError as exc:
            # libvirt 9.0 wants a non-zero slot count with <maxMemory> even though
            # virtio-mem uses no slots (KubeVirt writes slots='0').
            summary["maxMemory_slots_0"] = f"refused: {exc.get_error_message()}"
            summary["maxMemory_slots"] = 1
            t = time.monotonic()
            dom = conn.createXML(domain_xml(env, tmp, 1), 0)
        g = Guest(dom)
        g.wait_agent(args.agent_timeout)
        summary["boot_to_agent_s"] = round(time.monotonic() - t, 2)
        # The helper starts right after sysinit, the agent too: give it one round.
        time.sleep(1)
        summary["initial_state"] = g.state()
        log(f"agent up after {summary['boot_to_agent_s']} s: {summary['initial_state']}")
        for name in steps:
            fns: dict[str, Callable[[], dict[str, Any]]] = {
                "disk": lambda: step_disk(dom, g, tmp),
                "cdrom": lambda: step_cdrom(dom, g, tmp),
                "vcpu": lambda: step_vcpu(dom, g, tmp / "console.log"),
                "mem": lambda: step_mem(dom, g),
                "nic": lambda: step_nic(dom, g)}
            fn = fns[name]
            log(f"step {name}")
            try:
                res = fn()
                res["ok"] = True
            except (StepError, libvirt.libvirtError) as exc:
                ok = False
                res = {"ok": False, "error": str(exc)}
            summary["steps"][name] = res
            log(f"step {name}: {json.dumps(res)}")
        summary["final_state"] = g.state()
    except (StepError, libvirt.libvirtError, subprocess.CalledProcessError) as exc:
        ok = False
        summary["error"] = str(exc)
    finally:
        if dom is not None:
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
        daemon.stop()
        kill_qemu(tmp / "run")
        console = tmp / "console.log"
        if not ok and console.exists():
            print("--- last console lines ---", file=sys.stderr)
            print("\n".join(console.read_text(errors="replace").splitlines()[-40:]),
                  file=sys.stderr)
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    summary["ok"] = ok
    print(json.dumps(summary, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
