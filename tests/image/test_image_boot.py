"""The built image boots the test guest from its own root filesystem (`make image` first).

The image's entrypoint runs as PID 1 of new PID and mount namespaces, chrooted into a
writable copy of the image's root, with the VM pod's volumes bind-mounted where KubeVirt
mounts them and no /dev/kvm (tests/image/pod.py): as root, and as uid 107 with
`--run-as-nonroot`. The test guest is the pod's STANDALONE_VMI (kernel boot, containerDisk,
cloud-init, slirp NIC). From outside, as virt-handler would: the notify receiver on the
share volume sees the guest go Running with its agent connected, the command socket on the
sockets volume answers; inside, as `kubectl exec` would, the image's virt-freezer freezes and
thaws the guest. Every process of the pod runs from the image (chrooted into it, its
executables the image's own). SIGTERM to PID 1 ends the pod with exit 0 and the final
snapshot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from launcher._proto.kubevirt.cmd.v1 import cmd_pb2
from tests.conftest import failed
from tests.image.pod import QEMU_UID, Pod, image_present, image_ref, image_root, in_root, pod
from tests.support.guest import BOOT_TO_AGENT_TIMEOUT_S, Cmd, agent_state, ended, status
from tests.support.harness import wait_for
from tests.support.pid1 import members

pytestmark = [pytest.mark.e2e, pytest.mark.image]
# What the pod's processes may run (symlinks resolved inside the image): its Python
# (monitor, launcher, disk worker), libvirt's daemons, QEMU.
IMAGE_EXECUTABLES = ("/usr/bin/python3", "/usr/sbin/libvirtd", "/usr/sbin/virtlogd",
                     "/usr/bin/qemu-system-x86_64")


@pytest.fixture(scope="session")
def image() -> str:
    ref = image_ref()
    if not image_present(ref):
        pytest.fail(f"no image {ref} in buildah's storage: run `make image` (or `make "
                    "image-test`, which builds it first)")
    return ref


@pytest.fixture(params=["root", "nonroot"])
def image_pod(request: pytest.FixtureRequest, image: str) -> Iterator[Pod]:
    with image_root(image) as root, pod(root, nonroot=request.param == "nonroot") as p:
        try:
            yield p
        finally:
            if failed(request):
                dump(p)


def dump(p: Pod) -> None:
    sys.stdout.write(f"\n===== pod log ({p.inst.log_path}) =====\n{p.inst.tail(400)}\n")
    logs = [*in_root(p.image, "/var/log/libvirt").rglob("*.log"),
            *(p.host / "var/run/kubevirt-private").rglob("*.log")]
    for log in sorted(logs):
        sys.stdout.write(f"===== {log} =====\n{log.read_text(errors='replace')[-6000:]}\n")


def inside(p: Pod, *argv: str) -> subprocess.CompletedProcess[str]:
    """argv in the pod, as `kubectl exec` runs it: the pod's namespaces and root, its user."""
    user = ["--setuid", str(QEMU_UID), "--setgid", str(QEMU_UID)] if p.nonroot else []
    return subprocess.run(["nsenter", "--target", str(p.monitor), "--pid", "--mount", "--root",
                           "--wd", *user, "--", *argv], capture_output=True, text=True,
                          timeout=60, check=False, env={"PATH": "/usr/sbin:/usr/bin"})


def proc_status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in
                Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)


def file_id(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def test_the_image_boots_the_guest_as_pid1(image_pod: Pod, record_property: Any) -> None:
    p = image_pod
    doc = p.prepare()
    p.start(doc)
    assert p.is_pid1(), "the monitor is not PID 1 of its namespace"
    for ns in ("net", "uts", "mnt"):  # the pod's own, as a container runtime makes them
        assert os.readlink(f"/proc/{p.monitor}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")

    running = p.receiver.wait_domain(
        lambda e: status(e) == ("Running", "Unknown") and agent_state(e) == "connected",
        BOOT_TO_AGENT_TIMEOUT_S, "Running snapshot with the agent connected")
    to_agent_s = float(running["received_at"]) - p.started_at
    assert running["domain"]["Spec"]["Name"] == f"{p.namespace}_{p.name}"

    # The command socket, from outside the pod's root (virt-handler's side of the volume).
    cmd = Cmd.of(p.inst)
    try:
        assert cmd.stub.Ping(cmd_pb2.EmptyRequest(), timeout=5).success
        def filled() -> dict[str, Any] | None:
            got = cmd.guest_info()
            return got if got.get("hostname") and got.get("guestAgentVersion") else None

        info = wait_for(filled, 60, interval=0.2, what="guest info")
        assert info["hostname"] == "testguest" and info["os"]["id"] == "pvlguest", info
        assert info["guestAgentVersion"], info
        assert cmd.domain()["Spec"]["Name"] == f"{p.namespace}_{p.name}"
    finally:
        cmd.channel.close()

    # Every process of the pod runs from the image: chrooted into it (its root is the
    # image's root directory), its executable one of the image's files (the same inode).
    procs = p.processes()
    names = sorted(proc.name() for proc in procs)
    assert any(n.startswith("qemu-system") for n in names), names
    assert {"libvirtd", "virtlogd", "virt-launcher", "virt-launcher-m"} <= set(names), names
    image_root_id = file_id(p.image)
    executables = {file_id(in_root(p.image, f)): f for f in IMAGE_EXECUTABLES}
    for proc in procs:
        assert file_id(Path(f"/proc/{proc.pid}/root")) == image_root_id, proc.name()
        exe = file_id(Path(f"/proc/{proc.pid}/exe"))
        assert exe in executables, (proc.name(), proc.exe(), "not one of", IMAGE_EXECUTABLES)
    qemu = next(proc for proc in procs if proc.name().startswith("qemu-system"))
    assert "tcg" in " ".join(qemu.cmdline()), qemu.cmdline()
    assert not Path(f"/proc/{qemu.pid}/root/dev/kvm").exists()
    if p.nonroot:
        for proc in procs:
            st = proc_status(proc.pid)
            assert set(st["Uid"].split()) == {str(QEMU_UID)}, (proc.name(), st["Uid"])
            assert set(st["Gid"].split()) == {str(QEMU_UID)}, (proc.name(), st["Gid"])
            assert st["CapEff"].strip() == "0000000000000000", (proc.name(), st["CapEff"])
            assert st["NoNewPrivs"].strip() == "1", proc.name()
    else:
        assert proc_status(p.monitor)["Uid"].split()[0] == "0"

    # The guest's serial console, logged on the private volume (KubeVirt's path).
    console = p.host / "var/run/kubevirt-private" / p.uid / "virt-serial0-log"
    wait_for(lambda: console.exists() and "PVL: sysinit done" in console.read_text(
        errors="replace"), 30, what="the guest's console log")

    # The image's virt-freezer inside the pod, with KubeVirt's defaults (socket path).
    for action, expect in (("--freeze", "frozen"), ("--unfreeze", "thawed")):
        done = inside(p, "/usr/bin/virt-freezer", action, "--name", p.name,
                      "--namespace", p.namespace)
        assert done.returncode == 0, (action, done.stdout, done.stderr)
        state = inside(p, "/usr/bin/virt-freezer", "--status", "--name", p.name,
                       "--namespace", p.namespace)
        assert state.returncode == 0, state.stderr
        assert json.loads(state.stdout).get("fsFreezeStatus") == expect, state.stdout

    # SIGTERM to PID 1 from outside: exit 0 and the final snapshot.
    t0 = time.monotonic()
    p.stop()
    code = p.inst.wait_exit(timeout=90)
    shutdown_s = time.monotonic() - t0
    assert code == 0, p.inst.tail()
    # Shutoff/Shutdown, then (STANDALONE_VMI: no virt-handler) the launcher deletes the
    # domain itself: the last word is "deleted", never said before the stop.
    assert status(ended(p.receiver)) == ("Shutoff", "Shutdown")
    wait_for(lambda: not members(p.ns), 10, what="an empty PID namespace")

    mode = "nonroot" if p.nonroot else "root"
    record_property(f"image_{mode}_start_to_agent_s", round(to_agent_s, 2))
    record_property(f"image_{mode}_shutdown_s", round(shutdown_s, 2))


