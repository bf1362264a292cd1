"""Security properties of a real instance: monitor + launcher + virtlogd + libvirtd (system
mode, as root), one instance, no VM booted.

- No TCP socket anywhere: /proc/net/tcp and /proc/net/tcp6 hold no socket (listening or
  otherwise) whose inode belongs to the monitor, the launcher, libvirtd or virtlogd (found
  through /proc/<pid>/fd). The daemons share our network namespace, so their sockets are
  in the same tables.
- libvirtd is not started with --listen, and the config it is started with (-f) keeps its
  TCP and TLS listeners off and its UNIX sockets owner-only.
- The runtime root after start-up and after a SyncVirtualMachine that prepared a VMI's
  files (container-disk overlay, empty disk, cloud-init ISO) but was refused by libvirt at
  define time (an unknown machine type, so nothing boots): nothing world-writable; every
  socket (the launcher's command socket, libvirt's, virtlogd's) and every disk image and
  ISO inaccessible to others; config files private.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from launcher._proto.kubevirt.cmd.v1 import cmd_pb2, cmd_pb2_grpc
from tests.support.guestvm import stage, vmi
from tests.support.harness import Instance

pytestmark = pytest.mark.e2e

TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if m := re.fullmatch(r"socket:\[(\d+)\]", target):
            inodes.add(int(m.group(1)))
    return inodes


def tcp_sockets() -> dict[int, str]:
    """inode -> "<local address> <state>" of every TCP socket in this network namespace."""
    found = {}
    for table in TCP_TABLES:
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            found[int(fields[9])] = f"{fields[1]} state={fields[3]}"
    return found


def processes(inst: Instance) -> dict[str, psutil.Process]:
    assert inst.proc is not None
    launcher = inst.launcher()
    procs = {"monitor": psutil.Process(inst.proc.pid), "launcher": launcher}
    for name in (inst.paths.daemon, "virtlogd"):
        pid = inst.daemon_pid(name)
        assert pid is not None, f"{name} not running"
        procs[name] = psutil.Process(pid)
    return procs


def loose_modes(root: Path, not_ours: set[Path]) -> list[str]:
    problems = []
    for path in [root, *root.rglob("*")]:
        try:
            st = os.lstat(path)
        except FileNotFoundError:  # a temporary file gone meanwhile
            continue
        if stat.S_ISLNK(st.st_mode) or path in not_ours:
            continue
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o002:
            problems.append(f"{path} is world-writable ({mode:o})")
        image = stat.S_ISREG(st.st_mode) and path.suffix in (".img", ".iso", ".qcow2", ".fd")
        if (image or stat.S_ISSOCK(st.st_mode)) and mode & 0o007:
            problems.append(f"{path} is accessible to others ({mode:o})")
        if path.suffix == ".conf" and mode & 0o077:
            problems.append(f"{path} is not private ({mode:o})")
    return problems


def test_no_tcp_no_listen_flag_and_tight_modes(make_instance: Callable[..., Instance]) -> None:
    inst = make_instance(nonroot=False, extra_args=["--allow-emulation"])
    inst.start()
    inst.wait_running()
    procs = processes(inst)

    # --- no TCP socket at all ---------------------------------------------------------
    owned = {name: socket_inodes(p.pid) for name, p in procs.items()}
    assert owned["launcher"], "no sockets found: /proc/<pid>/fd not readable?"
    assert owned[inst.paths.daemon], "libvirtd has no sockets?"
    tcp = tcp_sockets()
    for name, inodes in owned.items():
        assert not {i: tcp[i] for i in inodes & tcp.keys()}, f"{name} has TCP sockets"

    # --- libvirtd: no --listen, and the config it reads keeps the listeners off --------
    daemon = procs[inst.paths.daemon]
    argv = daemon.cmdline()
    assert not any(a in ("-l", "--listen") or a.startswith("--listen") for a in argv), argv
    conf = Path(argv[argv.index("-f") + 1])
    assert conf == Path(inst.paths.daemon_conf)
    settings = dict(line.split(" = ", 1) for line in conf.read_text().splitlines()
                    if " = " in line and not line.startswith("#"))
    if inst.paths.daemon == "libvirtd":
        assert (settings["listen_tcp"], settings["listen_tls"]) == ("0", "0"), settings
    assert settings["unix_sock_rw_perms"] == '"0700"', settings

    # --- sockets as they really are -------------------------------------------------------
    for path, mode in ((inst.paths.cmd_socket, 0o600), (inst.paths.daemon_socket, 0o700),
                       (inst.paths.virtlogd_socket, 0o700)):
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode), path
        assert stat.S_IMODE(st.st_mode) == mode, (path, oct(st.st_mode))
        assert st.st_uid == 0, path

    # --- a VMI's files: prepared, then libvirt refuses the definition (nothing boots) ----
    stage(inst.paths.container_disk_dir)
    doc: dict[str, Any] = vmi(name=inst.name, namespace=inst.namespace,
                              uid=f"uid-{inst.root.name}", nic=False)
    doc["spec"]["domain"]["machine"] = {"type": "pc-q35-99.0"}  # no QEMU has it
    doc["spec"]["domain"]["devices"]["disks"].append({"name": "scratch", "disk": {}})
    doc["spec"]["volumes"].append({"name": "scratch", "emptyDisk": {"capacity": "1Mi"}})
    with grpc.insecure_channel(f"unix:{inst.paths.cmd_socket}") as channel:
        resp = cmd_pb2_grpc.CmdStub(channel).SyncVirtualMachine(
            cmd_pb2.VMIRequest(vmi=cmd_pb2.VMI(vmiJson=json.dumps(doc).encode())),
            timeout=60)
    assert resp.success is False
    assert "pc-q35-99.0" in resp.message, resp.message
    ephemeral = Path(inst.paths.ephemeral_disk_dir)
    made = [ephemeral / "disk-data" / "datadisk" / "disk.qcow2",
            ephemeral / "empty-disks" / "scratch.qcow2",
            ephemeral / "cloud-init-data" / inst.namespace / inst.name / "noCloud.iso"]
    for image in made:
        assert stat.S_IMODE(os.stat(image).st_mode) == 0o640, image
    assert inst.virsh("list", "--all", "--name").stdout.strip() == ""

    # --- the whole runtime root ---------------------------------------------------------
    # The staged container-disk files are the image's (hard links to the build here).
    staged = {p for p in Path(inst.paths.container_disk_dir).rglob("*") if p.is_file()}
    assert loose_modes(inst.root, staged) == []
    # ...and still no TCP after all that.
    tcp = tcp_sockets()
    for name, p in processes(inst).items():
        assert not socket_inodes(p.pid) & tcp.keys(), f"{name} has TCP sockets"
