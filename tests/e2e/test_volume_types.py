"""The volume types clusters use, end to end: a STANDALONE_VMI (KubeVirt's webhook
defaults applied) with configMap, secret, downwardAPI, serviceAccount and sysprep ISOs,
cloud-init user data from a secret (secretRef), a block-mode PVC (a loop device
the test attaches, its node at <root>/dev/<volume> as the pod would have it) and an
ephemeral PVC (a qcow2 overlay on the claim's image). The guest boots and reads each one
back through the guest agent (Exec): the ISO labels are KubeVirt's, and each disk holds
the bytes the test put in its source."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.guest import Cmd, Receiver
from tests.support.harness import Instance
from tests.support.standalone import EMULATION, guest, stop_cleanly, wait_agent

pytestmark = pytest.mark.e2e

MiB = 2**20


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Callable[[bytes], tuple[str, int, int]]]:
    """A loop device over a file starting with the given bytes: (path, major, minor)."""
    attached: list[str] = []

    def make(content: bytes) -> tuple[str, int, int]:
        backing = tmp_path / f"block-{len(attached)}.img"
        backing.write_bytes(content.ljust(4 * MiB, b"\0"))
        dev = subprocess.run(["losetup", "--find", "--show", str(backing)],
                             capture_output=True, text=True, check=True).stdout.strip()
        attached.append(dev)
        st = os.stat(dev)
        return dev, os.major(st.st_rdev), os.minor(st.st_rdev)

    yield make
    for dev in attached:
        subprocess.run(["losetup", "--detach", dev], check=False)


def _write(directory: Path, files: dict[str, str]) -> None:
    """A directory as the kubelet mounts a configMap / secret: each key a symlink into the
    atomic-writer's ..data directory (the ISO must follow them and leave ..data out)."""
    data = directory / "..2026_01_01_00_00_00.1"
    data.mkdir(parents=True)
    for key, value in files.items():
        (data / key).write_text(value)
    (directory / "..data").symlink_to(data.name)
    for key in files:
        (directory / key).symlink_to(f"..data/{key}")


def _iso_label(cmd: Cmd, device: str) -> str:
    """The ISO 9660 volume identifier (primary volume descriptor, sector 16, byte 40): what
    blkid shows as LABEL (the tiny guest's busybox has no blkid)."""
    out = cmd.exec("/bin/busybox", "dd", f"if={device}", "bs=1", "skip=32808", "count=32",
                   timeout_s=20)
    assert out.response.success and out.exitCode == 0, out
    return out.stdOut.strip()


def _grep(cmd: Cmd, marker: str, device: str) -> bool:
    out = cmd.exec("/bin/busybox", "grep", "-a", "-c", marker, device, timeout_s=20)
    assert out.response.success, out
    return out.exitCode == 0 and int(out.stdOut.strip() or "0") >= 1


def test_volume_types_reach_the_guest(
    make_instance: Callable[..., Instance], receiver_for: Callable[[Instance], Receiver],
    loop_device: Callable[[bytes], tuple[str, int, int]],
) -> None:
    if shutil.which("losetup") is None:
        pytest.fail("losetup (util-linux) is needed for the block-mode PVC")
    inst = make_instance(nonroot=False, extra_args=EMULATION)
    receiver = receiver_for(inst)
    private = Path(inst.paths.private_dir)
    # What the kubelet / virt-controller mount into the pod for these volumes:
    _write(private / "config-map" / "app-config", {"greeting": "PVL-CONFIGMAP-MARKER\n"})
    _write(private / "secret" / "app-secret", {"password": "PVL-SECRET-MARKER\n"})
    _write(private / "secret" / "cloudinitdisk",
           {"userdata": "#cloud-config\n# PVL-USERDATA-SECRET-MARKER\n"})
    _write(private / "downwardapi" / "podinfo", {"labels": 'app="pvl-downward-marker"\n'})
    _write(private / "sysprep" / "unattend", {"Autounattend.xml": "<PVL-SYSPREP-MARKER/>\n"})
    token_dir = inst.root / "var" / "run" / "secrets" / "kubernetes.io" / "serviceaccount"
    _write(token_dir, {"token": "PVL-TOKEN-MARKER", "namespace": "default"})
    _, major, minor = loop_device(b"PVL-BLOCK-PVC-MARKER\n")
    dev_dir = inst.root / "dev"
    dev_dir.mkdir(exist_ok=True)
    os.mknod(dev_dir / "blockpvc", 0o660 | 0o060000, os.makedev(major, minor))  # S_IFBLK
    claim = private / "vmi-disks" / "ephpvc"
    claim.mkdir(parents=True)
    (claim / "disk.img").write_bytes(b"PVL-EPHEMERAL-MARKER\n".ljust(4 * MiB, b"\0"))

    doc: dict[str, Any] = guest(inst)
    spec = doc["spec"]
    spec["volumes"][1] = {"name": "cloudinitdisk", "cloudInitNoCloud": {
        "secretRef": {"name": "vm-userdata"}}}
    spec["volumes"] += [
        {"name": "app-config", "configMap": {"name": "app-config"}},
        {"name": "app-secret", "secret": {"secretName": "app-secret", "volumeLabel": "SECRETS"}},
        {"name": "blockpvc", "persistentVolumeClaim": {"claimName": "block-claim"}},
        {"name": "ephpvc", "ephemeral": {"persistentVolumeClaim": {"claimName": "eph-claim"}}},
        {"name": "podinfo", "downwardAPI": {"fields": []}},
        {"name": "sa", "serviceAccount": {"serviceAccountName": "default"}},
        {"name": "unattend", "sysprep": {"configMap": {"name": "unattend-cm"}}},
    ]
    # virtio disks: KubeVirt's default (sata on amd64) needs an AHCI driver the tiny guest
    # lacks.
    spec["domain"]["devices"]["disks"] += [
        {"name": name, "disk": {"bus": "virtio"}}
        for name in ("app-config", "app-secret", "blockpvc", "ephpvc", "podinfo", "sa",
                     "unattend")]

    inst.start(env={"STANDALONE_VMI": yaml.safe_dump(doc)})
    wait_agent(receiver)
    cmd = Cmd.of(inst)
    # vda data, vdb cloud-init, vdc config map, vdd secret, vde block PVC, vdf ephemeral,
    # vdg downward API, vdh service account, vdi sysprep
    assert [_iso_label(cmd, dev) for dev in ("/dev/vdb", "/dev/vdc", "/dev/vdd")] == [
        "cidata", "cfgdata", "SECRETS"]
    assert _grep(cmd, "PVL-USERDATA-SECRET-MARKER", "/dev/vdb")
    assert _grep(cmd, "PVL-CONFIGMAP-MARKER", "/dev/vdc")
    assert not _grep(cmd, "..2026_01_01", "/dev/vdc")  # the kubelet's ..data left out
    assert _grep(cmd, "PVL-SECRET-MARKER", "/dev/vdd")
    assert _grep(cmd, "PVL-BLOCK-PVC-MARKER", "/dev/vde")
    assert _grep(cmd, "PVL-EPHEMERAL-MARKER", "/dev/vdf")
    assert _grep(cmd, "pvl-downward-marker", "/dev/vdg")
    assert _grep(cmd, "PVL-TOKEN-MARKER", "/dev/vdh")
    assert _grep(cmd, "PVL-SYSPREP-MARKER", "/dev/vdi")
    assert [_iso_label(cmd, dev) for dev in ("/dev/vdg", "/dev/vdh", "/dev/vdi")] == [
        "cfgdata", "cfgdata", "unattendCD"]
    # The ephemeral disk writes to its overlay, never to the claim.
    out = cmd.exec("/bin/sh", "-c", "echo PVL-OVERWRITE | dd of=/dev/vdf conv=fsync 2>/dev/null",
                   timeout_s=20)
    assert out.response.success and out.exitCode == 0, out
    assert (claim / "disk.img").read_bytes().startswith(b"PVL-EPHEMERAL-MARKER")
    overlay = Path(inst.paths.ephemeral_disk_dir) / "disk-data" / "ephpvc" / "disk.qcow2"
    assert overlay.is_file()
    # The block PVC is a <disk type='block'> on the node the probe found.
    xml = subprocess.run(["virsh", "-c", inst.paths.uri, "dumpxml",
                          f"{inst.namespace}_{inst.name}"], capture_output=True, text=True,
                         check=True).stdout
    assert f"<source dev='{dev_dir / 'blockpvc'}'" in xml, xml
    stop_cleanly(inst, receiver)
