"""Paths from a VMI cannot escape their directories: the filesystem's side (the converter's
side is tests/unit/test_path_confinement.py).

The runtime directories hold mounted content the launcher does not control: a PVC's files
(`<private>/vmi-disks/<volume>/`), a hostDisk directory, a container image's disk and
kernel (`<container-disks>/`), the memory-dump volume (`<hotplug-disks>/<volume>/`). A
symlink planted there can point anywhere in the launcher's own container. What is
legitimate and what is refused:

- legitimate: a regular file; a block device (a block-mode PVC's disk.img can be one); a
  symlink whose target stays inside the same launcher directory (a kernel image's
  `vmlinuz -> vmlinuz-6.1.0`, one volume's file linked to another volume's);
- refused, with a DiskError naming the volume, the path and where it resolves: any path
  that leaves its directory once symlinks are resolved, whether the link is the file
  (`vmi-disks/<vol>/disk.img -> /etc/shadow`), a directory on the way (the ephemeral
  `disk-data` directory being a symlink to /, a PVC mount point replaced by a symlink) or
  dangling (a DiskOrCreate image that would be created outside); nothing is created or
  written anywhere when one path of a VMI escapes (all are checked before any is made);
- VirtualMachineMemoryDump: the dump file must not exist as anything but a regular file
  (libvirt, as root in the daemon, would follow a symlink and overwrite its target); the
  volume directory resolving outside the hotplug directory is refused too
  (tests/integration/test_commands.py covers that one).

The configured directories themselves are trusted (the launcher creates them, from its
flags), and so is the window between this check and QEMU opening the file: libvirt takes
paths, not file descriptors, so a process that can rewrite a volume while the VM starts
is out of reach of any check here.

disks.prepare is driven directly with the launcher's own confinement directories
(launcher.vm.options.disk_directories), and once through a real SyncVirtualMachine over the
command socket, to prove the launcher really passes them.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest

from launcher import flags
from launcher._proto.kubevirt.cmd.v1 import cmd_pb2, cmd_pb2_grpc
from launcher.converter import ConvertOptions, DiskInfo, convert
from launcher.converter.plan import Prep
from launcher.paths import Paths, derive
from launcher.vm.disks import DiskError, prepare
from launcher.vm.options import disk_directories
from tests.integration.notify_support import run_uvloop
from tests.support.rigs import CALL_TIMEOUT_S
from tests.support.rigs import small_vmi as vmi_doc
from tests.support.rigs import synced_rig as rig

pytestmark = pytest.mark.timeout(120)

SECRET = b"outside the tree: must never be read by QEMU or written by the launcher\n"


@dataclass
class Tree:
    paths: Paths
    outside: Path  # a directory outside the runtime root, with a file `secret`

    @property
    def confine(self) -> tuple[str, ...]:
        return disk_directories(self.paths)

    @property
    def secret(self) -> Path:
        return self.outside / "secret"

    def convert(self, doc: dict[str, Any]) -> tuple[Prep, ...]:
        p = self.paths
        opts = ConvertOptions(private_dir=p.private_dir,
                              ephemeral_disk_dir=p.ephemeral_disk_dir,
                              container_disk_dir=p.container_disk_dir,
                              hotplug_disk_dir=p.hotplug_disk_dir,
                              disks_info={"cd": DiskInfo(format="raw")})
        return convert(doc, opts).preps

    def outside_untouched(self) -> None:
        assert self.secret.read_bytes() == SECRET
        assert sorted(os.listdir(self.outside)) == ["secret"]


@pytest.fixture
def tree() -> Iterator[Tree]:
    root = tempfile.mkdtemp(dir="/tmp", prefix="pvl-p-")
    outside = Path(tempfile.mkdtemp(dir="/tmp", prefix="pvl-outside-"))
    (outside / "secret").write_bytes(SECRET)
    opts = flags.parse(["--name", "vm", "--namespace", "ns", "--uid", "uid-1",
                        "--runtime-root", root], environ={})
    paths = derive(opts)
    for d in paths.dirs_to_create():
        os.makedirs(d, exist_ok=True)
    try:
        yield Tree(paths, outside)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(outside, ignore_errors=True)


def vmi(*volumes: dict[str, Any], kernel: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "metadata": {"name": "vm", "namespace": "ns", "uid": "uid-1"},
        "spec": {"domain": {
            "resources": {"requests": {"memory": "64Mi"}},
            "devices": {"disks": [{"name": str(v["name"]), "disk": {}} for v in volumes]}},
            "volumes": list(volumes)}}
    if kernel is not None:
        doc["spec"]["domain"]["firmware"] = {
            "kernelBoot": {"container": {"image": "k:1", "kernelPath": kernel}}}
    return doc


PVC: dict[str, Any] = {"name": "pvc", "persistentVolumeClaim": {"claimName": "c"}}
CD: dict[str, Any] = {"name": "cd", "containerDisk": {"image": "img:1"}}
EMPTY: dict[str, Any] = {"name": "empty", "emptyDisk": {"capacity": "1Mi"}}
CLOUD: dict[str, Any] = {"name": "ci", "cloudInitNoCloud": {"userData": "#cloud-config\n"}}
HOST_CREATE: dict[str, Any] = {
    "name": "hdc",
    "hostDisk": {"path": "/data/new.img", "type": "DiskOrCreate", "capacity": "1Mi"}}


def refused(tree: Tree, preps: tuple[Prep, ...], volume: str) -> str:
    with pytest.raises(DiskError) as err:
        prepare(preps, confine=tree.confine)
    assert err.value.volume == volume, str(err.value)
    assert str(err.value).startswith(f'volume "{volume}": '), str(err.value)
    assert "refused" in err.value.message, str(err.value)
    tree.outside_untouched()
    return err.value.message


def pvc_dir(tree: Tree, volume: str = "pvc") -> Path:
    d = Path(tree.paths.private_dir) / "vmi-disks" / volume
    d.mkdir(parents=True, exist_ok=True)
    return d


# --- legitimate -----------------------------------------------------------------------------
def test_regular_files_block_devices_and_inner_symlinks_are_fine(tree: Tree) -> None:
    (pvc_dir(tree) / "disk.img").write_bytes(b"\0" * 4096)
    prepare(tree.convert(vmi(PVC)), confine=tree.confine)
    # A block-mode claim's device node in place of disk.img (the loop device numbers; the
    # node is never opened).
    (pvc_dir(tree) / "disk.img").unlink()
    os.mknod(pvc_dir(tree) / "disk.img", stat.S_IFBLK | 0o600, os.makedev(7, 0))
    prepare(tree.convert(vmi(PVC)), confine=tree.confine)
    # A symlink to another volume of the same tree.
    (pvc_dir(tree, "other") / "disk.img").write_bytes(b"\0" * 4096)
    (pvc_dir(tree) / "disk.img").unlink()
    (pvc_dir(tree) / "disk.img").symlink_to("../other/disk.img")
    prepare(tree.convert(vmi(PVC)), confine=tree.confine)
    # A kernel image's relative symlink inside the kernel-boot directory.
    kernel_dir = Path(tree.paths.container_disk_dir) / "kernel-boot"
    kernel_dir.mkdir()
    (kernel_dir / "vmlinuz-6.1.0").write_bytes(b"kernel")
    (kernel_dir / "vmlinuz").symlink_to("vmlinuz-6.1.0")
    prepare(tree.convert(vmi(kernel="/boot/vmlinuz")), confine=tree.confine)
    # And the files the launcher makes: overlay, empty disk, cloud-init ISO.
    Path(tree.paths.container_disk_dir, "disk_0.img").write_bytes(b"\0" * 65536)
    preps = tree.convert(vmi(CD, EMPTY, CLOUD))
    prepare(preps, confine=tree.confine)
    for prep in preps:
        assert stat.S_ISREG(os.lstat(prep.path).st_mode), prep.path
    tree.outside_untouched()


# --- refused --------------------------------------------------------------------------------
def test_pvc_image_symlinked_out_is_refused(tree: Tree) -> None:
    (pvc_dir(tree) / "disk.img").symlink_to("/etc/shadow")
    message = refused(tree, tree.convert(vmi(PVC)), "pvc")
    assert message == (f"{pvc_dir(tree)}/disk.img resolves to /etc/shadow, outside "
                       f"{tree.paths.private_dir}/vmi-disks (a symlink pointing out of the "
                       "volume?); refused")
    (pvc_dir(tree) / "disk.img").unlink()
    (pvc_dir(tree) / "disk.img").symlink_to(tree.secret)
    refused(tree, tree.convert(vmi(PVC)), "pvc")


def test_pvc_mount_point_symlinked_out_is_refused(tree: Tree) -> None:
    link = Path(tree.paths.private_dir) / "vmi-disks" / "pvc"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(tree.outside)
    (tree.outside / "secret").rename(tree.outside / "disk.img")
    try:
        with pytest.raises(DiskError) as err:
            prepare(tree.convert(vmi(PVC)), confine=tree.confine)
        assert f"resolves to {tree.outside}/disk.img" in str(err.value)
    finally:
        (tree.outside / "disk.img").rename(tree.secret)
    tree.outside_untouched()


def test_ephemeral_disk_data_dir_symlinked_to_root_is_refused(tree: Tree) -> None:
    """The overlay would be written to /<volume>/disk.qcow2: refused, nothing created."""
    Path(tree.paths.container_disk_dir, "disk_0.img").write_bytes(b"\0" * 65536)
    volume = f"pvl-escape-{uuid.uuid4().hex[:8]}"
    Path(tree.paths.ephemeral_disk_dir, "disk-data").symlink_to("/")
    cd = {**CD, "name": volume}
    doc = vmi(cd)
    preps = convert(doc, ConvertOptions(
        private_dir=tree.paths.private_dir, ephemeral_disk_dir=tree.paths.ephemeral_disk_dir,
        container_disk_dir=tree.paths.container_disk_dir,
        disks_info={volume: DiskInfo(format="raw")})).preps
    escaped = Path("/", volume)
    try:
        message = refused(tree, preps, volume)
        assert f"resolves to /{volume}/disk.qcow2, outside {tree.paths.ephemeral_disk_dir}" \
            in message
        assert not escaped.exists()
    finally:
        shutil.rmtree(escaped, ignore_errors=True)


def test_files_the_launcher_writes_are_not_written_through_symlinks(tree: Tree) -> None:
    eph = Path(tree.paths.ephemeral_disk_dir)
    # empty disks
    (eph / "empty-disks").symlink_to(tree.outside)
    refused(tree, tree.convert(vmi(EMPTY)), "empty")
    (eph / "empty-disks").unlink()
    # the cloud-init ISO's namespace directory
    (eph / "cloud-init-data").mkdir()
    (eph / "cloud-init-data" / "ns").symlink_to(tree.outside)
    refused(tree, tree.convert(vmi(CLOUD)), "ci")
    # a DiskOrCreate image whose name is a dangling symlink to a file outside
    (pvc_dir(tree, "hdc") / "new.img").symlink_to(tree.outside / "created.img")
    refused(tree, tree.convert(vmi(HOST_CREATE)), "hdc")
    # one escaping volume refuses the whole VMI before anything is made
    Path(tree.paths.container_disk_dir, "disk_0.img").write_bytes(b"\0" * 65536)
    (pvc_dir(tree) / "disk.img").symlink_to(tree.secret)
    preps = tree.convert(vmi(CD, PVC))
    refused(tree, preps, "pvc")
    assert not os.path.lexists(preps[0].path), "the overlay was made before the refusal"


def test_images_read_through_symlinks_out_are_refused(tree: Tree) -> None:
    cdir = Path(tree.paths.container_disk_dir)
    (cdir / "disk_0.img").symlink_to(tree.secret)
    refused(tree, tree.convert(vmi(CD)), "cd")
    (cdir / "kernel-boot").mkdir()
    (cdir / "kernel-boot" / "vmlinuz").symlink_to("/boot/vmlinuz")  # absolute: the host's
    message = refused(tree, tree.convert(vmi(kernel="/boot/vmlinuz")), "kernel-boot")
    assert "outside" in message


# --- through the launcher: SyncVirtualMachine and VirtualMachineMemoryDump -----------------------
def test_sync_refuses_a_planted_symlink_and_memory_dump_its_target() -> None:
    outside = Path(tempfile.mkdtemp(dir="/tmp", prefix="pvl-outside-"))
    (outside / "secret").write_bytes(SECRET)

    async def scenario() -> None:
        async with rig() as r:
            stub = cmd_pb2_grpc.CmdStub(r.channel)
            # The rig's domain runs; a Sync prepares disks only for a domain that does not.
            resp = await stub.KillVirtualMachine(cmd_pb2.VMIRequest(vmi=r.vmi()),
                                                 timeout=CALL_TIMEOUT_S)
            assert resp.success, resp.message
            root = Path(r.root)
            vol = root / "var/run/kubevirt-private/vmi-disks/pvc"
            vol.mkdir(parents=True)
            (vol / "disk.img").symlink_to(outside / "secret")
            doc = vmi_doc(r.name)
            doc["spec"]["domain"]["devices"]["disks"].append({"name": "pvc", "disk": {}})
            doc["spec"]["volumes"].append(PVC)
            resp = await stub.SyncVirtualMachine(
                cmd_pb2.VMIRequest(vmi=r.vmi(doc)), timeout=CALL_TIMEOUT_S)
            assert resp.success is False
            assert resp.message == (
                f'volume "pvc": {vol}/disk.img resolves to {outside}/secret, outside '
                f"{root}/var/run/kubevirt-private/vmi-disks (a symlink pointing out of the "
                "volume?); refused")
            state = r.operator.lookupByName(r.domain).state()[0]
            assert state == libvirt.VIR_DOMAIN_SHUTOFF  # not started with the bad disk
            # Memory dump: the dump file planted as a symlink (not caught by the
            # "*.memory.dump" clean-up either), or dangling, or a directory.
            resp = await stub.SyncVirtualMachine(cmd_pb2.VMIRequest(vmi=r.vmi()),
                                                 timeout=CALL_TIMEOUT_S)
            assert resp.success, resp.message
            dump_vol = root / "var/run/kubevirt/hotplug-disks/dumpvol"
            dump_vol.mkdir(parents=True)
            (dump_vol / "evil").symlink_to(outside / "secret")
            (dump_vol / "dangling").symlink_to(outside / "new")
            (dump_vol / "dir").mkdir()
            for name in ("evil", "dangling", "dir"):
                dump_path = f"/var/run/kubevirt/hotplug-disks/dumpvol/{name}"
                req = cmd_pb2.MemoryDumpRequest(vmi=r.vmi(), dumpPath=dump_path)
                resp = await stub.VirtualMachineMemoryDump(req, timeout=CALL_TIMEOUT_S)
                assert (resp.success, resp.message) == (
                    False, f"dumpPath {dump_path!r}: {dump_vol}/{name} exists and is not a "
                           "regular file (a symlink?); refusing"), name
            assert (outside / "secret").read_bytes() == SECRET
            assert sorted(os.listdir(outside)) == ["secret"]
            await r.ping()

    try:
        run_uvloop(scenario())
    finally:
        shutil.rmtree(outside, ignore_errors=True)
