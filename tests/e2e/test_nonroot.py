"""Non-root mode end to end with no root privilege anywhere: the monitor is started as an
unprivileged user (`--run-as-nonroot`), STANDALONE_VMI makes the launcher convert the VMI,
prepare its disks and cloud-init ISO, define and start it in a session-mode libvirt daemon,
and the guest boots to its agent. Every process of the pod (monitor, launcher, virtqemud or
libvirtd, virtlogd, QEMU) has real, effective, saved and filesystem uid and gid of that user,
no capability in any set and no supplementary group 0; every file the launcher wrote
belongs to the user. A freeze/thaw and a clean SIGTERM shutdown work the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from launcher._proto.kubevirt.cmd.v1 import cmd_pb2
from tests.support.guest import Receiver
from tests.support.harness import Instance, ensure_test_user, wait_for
from tests.support.standalone import EMULATION, guest, guest_info, stop_cleanly, stub, wait_agent

pytestmark = pytest.mark.e2e


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def privileges(pid: int) -> dict[str, object]:
    st = proc_status(pid)
    return {"uids": set(st["Uid"].split()), "gids": set(st["Gid"].split()),
            "groups": set(st["Groups"].split()),
            "caps": {k: st[k] for k in ("CapInh", "CapPrm", "CapEff", "CapAmb")}}


def test_nonroot_standalone_vm_runs_with_no_root_privilege(
    make_instance: Callable[..., Instance], receiver_for: Callable[[Instance], Receiver]
) -> None:
    user = ensure_test_user()
    # A short root and name: the agent socket libvirt binds must fit in 107 bytes (in a pod,
    # with the root /, it always does; see launcher.paths.agent_channel_socket).
    inst = make_instance(nonroot=True, short_root=True, name="vm", namespace="ns",
                         extra_args=EMULATION)
    receiver = receiver_for(inst)
    doc = guest(inst)
    # What virt-handler mounts is readable by the pod's user (KubeVirt's container-disk
    # and kernel-boot images are world-readable); the launcher only reads them.
    for path in [Path(inst.paths.container_disk_dir),
                 *Path(inst.paths.container_disk_dir).rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    inst.start(env={"STANDALONE_VMI": json.dumps(doc)})
    wait_agent(receiver)
    assert guest_info(inst)["hostname"] == "testguest"

    assert inst.proc is not None
    monitor = psutil.Process(inst.proc.pid)
    pod = [monitor, *monitor.children(recursive=True)]
    names = sorted(p.name() for p in pod)
    assert any(n.startswith("qemu-system") for n in names), names
    assert any(n in ("virtqemud", "libvirtd") for n in names), names
    assert "virtlogd" in names, names
    want_uid, want_gid = str(user.pw_uid), str(user.pw_gid)
    assert user.pw_uid != 0 and user.pw_gid != 0
    for p in pod:
        got = privileges(p.pid)
        assert got["uids"] == {want_uid}, (p.name(), got)
        assert got["gids"] == {want_gid}, (p.name(), got)
        assert "0" not in got["groups"], (p.name(), got)  # type: ignore[operator]
        assert set(got["caps"].values()) == {"0000000000000000"}, (  # type: ignore[attr-defined]
            p.name(), got)

    # every file the launcher, the disk worker and the daemons wrote is the user's
    staged = {Path(inst.paths.container_disk_dir), *Path(inst.paths.container_disk_dir).rglob("*")}
    foreign = [str(p) for p in inst.root.rglob("*")
               if p not in staged and not p.is_symlink() and p.lstat().st_uid != user.pw_uid]
    assert foreign == [], foreign

    vmi = cmd_pb2.VMI(vmiJson=json.dumps(
        {"metadata": {"name": inst.name, "namespace": inst.namespace,
                      "uid": f"uid-{inst.root.name}"}}).encode())
    assert stub(inst).FreezeVirtualMachine(cmd_pb2.FreezeRequest(
        vmi=vmi, unfreezeTimeoutSeconds=30), timeout=90).success
    wait_for(lambda: guest_info(inst).get("fsFreezeStatus") == "frozen", 10, interval=0.2,
             what="frozen")
    assert stub(inst).UnfreezeVirtualMachine(cmd_pb2.VMIRequest(vmi=vmi), timeout=60).success
    wait_for(lambda: guest_info(inst).get("fsFreezeStatus") == "thawed", 10, interval=0.2,
             what="thawed")
    stop_cleanly(inst, receiver)
