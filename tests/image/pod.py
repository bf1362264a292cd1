"""A VM pod made of the built image's root filesystem, without a container engine.

`podman run` does not work on these machines (the sandbox refuses the OCI runtime's
setrlimit), so the pod is put together by hand, the way a container runtime would:

- the image's root: a buildah working container of the image (`buildah from` + `buildah
  mount`: a fresh writable overlay over the image's layers, removed afterwards);
- the pod's volumes: host directories under a short host root H, laid out at the paths
  KubeVirt mounts them at (H/var/run/kubevirt, H/var/run/kubevirt/container-disks,
  H/var/run/kubevirt-ephemeral-disks, ...), so that `launcher.paths` with the runtime root H
  names where virt-handler (the notify receiver, the command client) finds each socket and
  file from outside; in non-root mode they belong to 107 (the pod's fsGroup);
- `unshare --pid --fork --mount --mount-proc --uts --net`: new PID and mount namespaces
  (a fresh /proc), the pod's own host name and network (loopback only: the guest's NIC is
  user-mode); a script (host tools, before the chroot) mounts a minimal /dev (no /dev/kvm:
  QEMU runs under TCG), /sys read-only, a /tmp, and bind-mounts each volume at its path
  inside the root; then it execs `chroot` (and `setpriv --no-new-privs` + uid/gid 107 in non-root
  mode) into the image's entrypoint, /usr/bin/virt-launcher-monitor, which is PID 1.

From the chroot on, only the image's files are used: its Python and venv, libvirt, QEMU.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.support.guest import Receiver
from tests.support.guestvm import stage, vmi
from tests.support.harness import Instance, wait_for
from tests.support.pid1 import members, ns_pid, pid_ns

REPO = Path(__file__).resolve().parents[2]
QEMU_UID = 107  # the image's "qemu" user, KubeVirt's non-root VM user
POD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# KubeVirt's VM pod volumes (hack/kubernetes/standalone-pod.yaml), parents first.
VOLUMES = (
    "/var/run/kubevirt",
    "/var/run/kubevirt-private",
    "/var/run/kubevirt-ephemeral-disks",
    "/var/run/kubevirt/container-disks",
    "/var/run/kubevirt/sockets",
    "/var/run/kubevirt/hotplug-disks",
    "/var/run/libvirt",
)
# Runs as PID 1 of the new namespaces until it execs the monitor. Arguments: the image
# root, the uid to run as (0 or 107), the pod's host name, then "inside=host" volume pairs
# up to "--", then the monitor's arguments.
POD_SCRIPT = r"""
set -euo pipefail
root=$1 uid=$2 name=$3
shift 3
# The pod's own network (loopback only: the guest's NIC is user-mode) and host name.
ip link set lo up
hostname "$name"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t%s\n' \
  "$name" > "$root/etc/hosts"
vols=()
while [[ $1 != -- ]]; do vols+=("$1"); shift; done
shift
# /dev: what a container runtime gives a pod without devices (no /dev/kvm).
mount -t tmpfs -o mode=0755,nosuid,noexec tmpfs "$root/dev"
for n in null zero full random urandom tty; do
  touch "$root/dev/$n"
  mount --bind "/dev/$n" "$root/dev/$n"
done
mkdir -m 0755 "$root/dev/pts"
mkdir -m 1777 "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
# A sysfs of the pod's network namespace (its devices, not the host's), read-only.
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
for pair in "${vols[@]}"; do
  inside=${pair%%=*} host=${pair#*=}
  mkdir -p "$inside"
  mount --bind "$host" "$inside"
done
if [[ $uid -eq 0 ]]; then
  exec chroot "$root" /usr/bin/virt-launcher-monitor "$@"
fi
exec setpriv --no-new-privs chroot --userspec="$uid:$uid" --groups="$uid" "$root" \
  /usr/bin/virt-launcher-monitor "$@"
"""


def project_version() -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    version: str = project["project"]["version"]
    return version


def image_ref() -> str:
    return os.environ.get("PVL_IMAGE", f"localhost/py-virt-launcher:{project_version()}")


def buildah(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(["buildah", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def image_present(ref: str) -> bool:
    if shutil.which("buildah") is None:
        return False
    try:
        buildah("inspect", "--type", "image", ref)
    except RuntimeError:
        return False
    return True


@contextlib.contextmanager
def image_root(ref: str) -> Iterator[Path]:
    """A fresh writable copy of the image's root filesystem (a buildah working container),
    removed afterwards."""
    ctr = buildah("from", "--pull=false", "--name",
                  f"pvl-image-test-{os.getpid()}-{time.monotonic_ns()}", ref)
    try:
        yield Path(buildah("mount", ctr))
    finally:
        with contextlib.suppress(RuntimeError):
            buildah("umount", ctr)
        buildah("rm", ctr)


def in_root(root: Path, path: str) -> Path:
    """`path` as the chroot at `root` sees it, as a host path: symlinks inside the image
    (Debian's /var/run -> /run) are followed relative to `root`, never to the host's /."""
    parts = [p for p in path.split("/") if p]
    resolved = root
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            resolved = resolved.parent if resolved != root else root
            continue
        candidate = resolved / part
        if candidate.is_symlink():
            hops += 1
            assert hops < 40, f"symlink loop resolving {path} in {root}"
            target = os.readlink(candidate)
            parts = [p for p in target.split("/") if p] + parts
            if target.startswith("/"):
                resolved = root
            continue
        resolved = candidate
    assert resolved == root or resolved.is_relative_to(root), (path, resolved)
    return resolved


class PodReceiver(Receiver):
    """virt-launcher-events (virt-handler's stand-in, outside the pod) on the pod's notify
    socket, run as the pod's user so that the launcher may connect to its socket."""

    uid: int = 0

    def start(self) -> None:
        sock = self.inst.paths.notify_socket
        kwargs: dict[str, Any] = {}
        if self.uid:
            kwargs.update(user=self.uid, group=self.uid, extra_groups=[])
        venv_bin = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen(
                [str(venv_bin / "virt-launcher-events"), "--socket", sock],
                stdout=out, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, **kwargs)
        wait_for(lambda: os.path.exists(sock), 10, what="notify receiver socket")


@dataclass
class Pod:
    """One VM pod: the image's root, its volumes on the host, the monitor as PID 1."""

    image: Path  # the image's root filesystem (host path)
    host: Path  # H: the volumes, at KubeVirt's paths below it
    nonroot: bool
    name: str = "testvm"
    namespace: str = "default"
    inst: Instance = field(init=False)  # the host's view: paths, log, command client
    receiver: PodReceiver = field(init=False)
    monitor: int = 0  # host pid of PID 1 (the monitor)
    ns: str = ""
    started_at: float = 0.0  # time.time() just before the pod was started

    def __post_init__(self) -> None:
        self.inst = Instance(root=self.host, nonroot=self.nonroot, name=self.name,
                             namespace=self.namespace, extra_args=["--allow-emulation"])
        self.receiver = PodReceiver(self.inst)
        self.receiver.uid = QEMU_UID if self.nonroot else 0

    @property
    def uid(self) -> str:
        return f"uid-{self.host.name}"  # what tests.support.guest.Cmd sends as the VMI's uid

    def monitor_args(self) -> list[str]:
        """The compute container's command line as KubeVirt's virt-controller renders it."""
        args = ["--qemu-timeout", "240s", "--name", self.name, "--uid", self.uid,
                "--namespace", self.namespace, "--kubevirt-share-dir", "/var/run/kubevirt",
                "--ephemeral-disk-dir", "/var/run/kubevirt-ephemeral-disks",
                "--container-disk-dir", "/var/run/kubevirt/container-disks",
                "--grace-period-seconds", "30", "--hook-sidecars", "0",
                "--ovmf-path", "/usr/share/OVMF", "--allow-emulation"]
        return [*args, "--run-as-nonroot"] if self.nonroot else args

    def prepare(self) -> dict[str, Any]:
        """The volumes as virt-handler and the kubelet leave them, the guest's files staged
        in the container-disk volume; returns the VMI."""
        for vol in VOLUMES:
            d = self.host / vol.lstrip("/")
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)
        staged = Path(self.inst.paths.container_disk_dir)
        stage(staged)
        for path in [staged, *staged.rglob("*")]:
            # The images virt-handler mounts are world-readable; the launcher only reads.
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if self.nonroot:  # fsGroup 107: the pod's emptyDirs are the pod user's
            for vol in VOLUMES:
                d = self.host / vol.lstrip("/")
                os.chown(d, QEMU_UID, QEMU_UID)
                for sub in d.rglob("*"):
                    if sub.is_dir():
                        os.chown(sub, QEMU_UID, QEMU_UID)
        return vmi(name=self.name, namespace=self.namespace, uid=self.uid)

    @property
    def pod_name(self) -> str:
        return f"virt-launcher-{self.name}-x7k2p"

    def env(self, doc: dict[str, Any]) -> dict[str, str]:
        env = {"PATH": POD_PATH, "POD_NAME": self.pod_name, "HOSTNAME": self.pod_name,
               "STANDALONE_VMI": json.dumps(doc)}
        if self.nonroot:  # KubeVirt's pod template for a non-root VM
            env.update(HOME="/var/run/kubevirt-private", XDG_CACHE_HOME="/var/run/kubevirt-private",
                       XDG_CONFIG_HOME="/var/run/kubevirt-private", XDG_RUNTIME_DIR="/var/run")
        else:
            env["HOME"] = "/root"
        return env

    def start(self, doc: dict[str, Any]) -> None:
        self.receiver.start()
        mounts = [f"{in_root(self.image, vol)}={self.host / vol.lstrip('/')}"
                  for vol in VOLUMES]
        argv = ["unshare", "--pid", "--fork", "--mount", f"--mount-proc={self.image}/proc",
                "--uts", "--net", "--", "bash", "-c", POD_SCRIPT, "pod", str(self.image),
                str(QEMU_UID if self.nonroot else 0), self.pod_name, *mounts, "--",
                *self.monitor_args()]
        log = open(self.inst.log_path, "ab")  # noqa: SIM115 - owned by the Popen
        self.started_at = time.time()
        self.inst.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, cwd="/",
                                          env=self.env(doc))
        log.close()
        wrapper = psutil.Process(self.inst.proc.pid)

        def pid1() -> int | None:
            if self.inst.proc is not None and self.inst.proc.poll() is not None:
                raise AssertionError(f"the pod exited with {self.inst.proc.returncode}:\n"
                                     f"{self.inst.tail()}")
            for child in wrapper.children():
                # The monitor once exec'd (the kernel names a script's process after the
                # script), not bash, chroot or setpriv on the way to it.
                with contextlib.suppress(psutil.NoSuchProcess):
                    if child.name() == "virt-launcher-m":
                        return child.pid
            return None

        self.monitor = wait_for(pid1, 30, interval=0.02, what="the monitor as PID 1")
        ns = pid_ns(self.monitor)
        assert ns is not None
        self.ns = ns

    def processes(self) -> list[psutil.Process]:
        """Every live process of the pod (its PID namespace)."""
        out = []
        for pid in members(self.ns):
            with contextlib.suppress(psutil.NoSuchProcess):
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
        return out

    def is_pid1(self) -> bool:
        return ns_pid(self.monitor) == 1

    def stop(self, sig: int = signal.SIGTERM) -> None:
        os.kill(self.monitor, sig)

    def kill(self) -> None:
        """Teardown: PID 1's death takes the whole namespace with it."""
        if self.monitor and psutil.pid_exists(self.monitor):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.monitor, signal.SIGKILL)
        if self.inst.proc is not None and self.inst.proc.poll() is None:
            self.inst.proc.kill()
        if self.inst.proc is not None:
            self.inst.proc.wait(timeout=30)
        self.receiver.stop()
        if self.ns:
            wait_for(lambda: not members(self.ns), 30, what="an empty PID namespace")


@contextlib.contextmanager
def pod(image: Path, nonroot: bool) -> Iterator[Pod]:
    base = Path(tempfile.mkdtemp(prefix="pvl-img-", dir="/tmp"))
    os.chmod(base, 0o755)
    host = base / "r"
    host.mkdir()
    p = Pod(image=image, host=host, nonroot=nonroot)
    try:
        yield p
    finally:
        try:
            p.kill()
        finally:
            shutil.rmtree(base, ignore_errors=True)
