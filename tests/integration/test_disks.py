"""launcher.vm.disks.prepare with real qemu-img and real files: overlays and their backing
chain, empty disks, hostDisk creation, cloud-init ISOs read back, and the errors."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import stat
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pycdlib
import pytest

from launcher.converter import ConvertOptions, DiskInfo, convert
from launcher.converter.plan import (
    CloudInitIso,
    ContainerDiskOverlay,
    EmptyDisk,
    ExistingFile,
    FileDisk,
    Prep,
)
from launcher.vm import disks
from launcher.vm.disks import DiskError

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")

MiB = 2**20


# Every file these tests make lives under the temporary directory: the confinement the
# launcher applies with its own disk directories (tests/integration/test_path_confinement.py).
CONFINE = (tempfile.gettempdir(),)


def prepare(preps: Sequence[Prep], **kwargs: Any) -> None:
    disks.prepare(preps, confine=CONFINE, **kwargs)


def prepare_isolated(preps: Sequence[Prep], **kwargs: Any) -> None:
    disks.prepare_isolated(preps, confine=CONFINE, **kwargs)



def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True,
                          text=True).stdout


def image(path: Path, fmt: str, size: int = 64 * MiB, *extra: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    qemu_img("create", "-f", fmt, *extra, str(path), str(size))
    return path


def chain(path: Path) -> list[dict[str, Any]]:
    info = json.loads(qemu_img("info", "--output=json", "--backing-chain", "-U", str(path)))
    assert isinstance(info, list)
    return info


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


# --- containerDisk overlays -----------------------------------------------------------------
@pytest.mark.parametrize(("backing_fmt", "declared"), [("raw", "raw"), ("qcow2", "qcow2"),
                                                        ("raw", ""), ("qcow2", "")])
def test_overlay_backing_chain(tmp_path: Path, backing_fmt: str, declared: str) -> None:
    backing = image(tmp_path / "container-disks" / "disk_0.img", backing_fmt)
    overlay = tmp_path / "eph" / "disk-data" / "cd" / "disk.qcow2"
    prepare([ContainerDiskOverlay("cd", str(overlay), str(backing), declared)])
    top, base = chain(overlay)
    assert top["format"] == "qcow2"
    assert top["backing-filename"] == str(backing)
    assert top["backing-filename-format"] == backing_fmt
    assert top["virtual-size"] == base["virtual-size"] == 64 * MiB
    assert (base["filename"], base["format"]) == (str(backing), backing_fmt)
    assert mode(overlay) == 0o640
    assert mode(overlay.parent) == 0o750
    assert leftovers(overlay.parent) == []


def test_overlay_is_recreated_every_start(tmp_path: Path) -> None:
    backing = image(tmp_path / "disk_0.img", "raw")
    overlay = tmp_path / "disk-data" / "cd" / "disk.qcow2"
    prep = ContainerDiskOverlay("cd", str(overlay), str(backing), "raw")
    prepare([prep])
    qemu_img("resize", str(overlay), str(128 * MiB))  # as if the guest had changed it
    prepare([prep])
    assert chain(overlay)[0]["virtual-size"] == 64 * MiB


def test_overlay_missing_image(tmp_path: Path) -> None:
    missing = tmp_path / "container-disks" / "disk_3.img"
    with pytest.raises(DiskError) as err:
        prepare([ContainerDiskOverlay("cd", str(tmp_path / "o.qcow2"), str(missing), "")])
    assert err.value.volume == "cd"
    assert str(err.value) == f'volume "cd": container disk image {missing} does not exist'


def test_probed_image_with_a_backing_file_is_refused(tmp_path: Path) -> None:
    base = image(tmp_path / "base.img", "raw")
    sneaky = image(tmp_path / "disk_0.img", "qcow2", 64 * MiB, "-F", "raw", "-b", str(base))
    with pytest.raises(DiskError, match="has a backing file"):
        prepare([ContainerDiskOverlay("cd", str(tmp_path / "o.qcow2"), str(sneaky), "")])


def test_qemu_img_failure_carries_its_message(tmp_path: Path) -> None:
    garbage = tmp_path / "disk_0.img"
    garbage.write_bytes(b"not a qcow2 image" * 100)
    overlay = tmp_path / "d" / "disk.qcow2"
    with pytest.raises(DiskError) as err:
        prepare([ContainerDiskOverlay("cd", str(overlay), str(garbage), "qcow2")])
    message = str(err.value)
    assert message.startswith('volume "cd": qemu-img create -f qcow2 -F qcow2 -b ')
    assert "qcow2" in message.split("failed: ", 1)[1]  # qemu-img's own complaint
    assert not overlay.exists()
    assert leftovers(overlay.parent) == []


# --- emptyDisk, PVC, hostDisk ---------------------------------------------------------------
def test_empty_disk_is_a_fresh_sparse_qcow2(tmp_path: Path) -> None:
    path = tmp_path / "empty-disks" / "scratch.qcow2"
    prepare([EmptyDisk("scratch", str(path), 2 * 2**30)])
    (info,) = chain(path)
    assert (info["format"], info["virtual-size"]) == ("qcow2", 2 * 2**30)
    assert info["actual-size"] < 16 * MiB
    qemu_img("resize", str(path), str(3 * 2**30))
    prepare([EmptyDisk("scratch", str(path), 2 * 2**30)])
    assert chain(path)[0]["virtual-size"] == 2 * 2**30


def test_missing_pvc_names_the_volume(tmp_path: Path) -> None:
    path = tmp_path / "vmi-disks" / "rootdisk" / "disk.img"
    with pytest.raises(DiskError) as err:
        prepare([FileDisk("rootdisk", str(path))])
    assert err.value.volume == "rootdisk"
    assert str(err.value) == f'volume "rootdisk": disk image {path} does not exist'
    assert not path.parent.exists()  # nothing created for a disk that must exist


def test_existing_pvc_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(b"data")
    prepare([FileDisk("rootdisk", str(path)), ExistingFile("kernel", str(path))])
    assert path.read_bytes() == b"data"


def test_a_directory_is_not_a_disk(tmp_path: Path) -> None:
    with pytest.raises(DiskError, match="is not a regular file or block device"):
        prepare([FileDisk("rootdisk", str(tmp_path))])


def test_missing_existing_file(tmp_path: Path) -> None:
    with pytest.raises(DiskError, match=r'^volume "kernel": disk image .* does not exist$'):
        prepare([ExistingFile("kernel", str(tmp_path / "vmlinuz"))])


def test_disk_or_create(tmp_path: Path) -> None:
    path = tmp_path / "vmi-disks" / "hd" / "new.img"
    prepare([FileDisk("hd", str(path), create_size=10 * MiB)])
    st = path.stat()
    assert (st.st_size, mode(path), mode(path.parent)) == (10 * MiB, 0o640, 0o750)
    assert st.st_blocks * 512 < MiB  # sparse
    assert json.loads(qemu_img("info", "--output=json", str(path)))["format"] == "raw"
    with path.open("r+b") as f:
        f.write(b"guest data")
    prepare([FileDisk("hd", str(path), create_size=20 * MiB)])  # exists: kept as it is
    assert path.stat().st_size == 10 * MiB
    assert path.read_bytes()[:10] == b"guest data"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_owner_gets_created_files_and_directories(tmp_path: Path) -> None:
    eph = tmp_path / "eph"
    prepare([EmptyDisk("e", str(eph / "empty-disks" / "e.qcow2"), MiB),
             FileDisk("h", str(tmp_path / "vmi-disks" / "h" / "h.img"), create_size=MiB)],
            owner=(107, 107))
    for path in (eph, eph / "empty-disks", eph / "empty-disks" / "e.qcow2",
                 tmp_path / "vmi-disks" / "h" / "h.img"):
        assert (path.stat().st_uid, path.stat().st_gid) == (107, 107), path
    assert tmp_path.stat().st_uid == 0  # existing directories are not taken over


# --- cloud-init ISOs ------------------------------------------------------------------------
def read_iso(path: Path, **where: str) -> bytes:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, **where)
        return out.getvalue()
    finally:
        iso.close()


def iso_labels(path: Path) -> tuple[str, str]:
    """(ISO 9660 volume id, Joliet volume id)."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert iso.joliet_vd is not None
        return (iso.pvd.volume_identifier.decode().strip(),
                iso.joliet_vd.volume_identifier.decode("utf-16-be").strip())
    finally:
        iso.close()


NO_CLOUD = CloudInitIso("cloudinit", "", "noCloud", user_data=b"#cloud-config\nx: 1\n",
                        meta_data=b'{"instance-id":"vm.ns","local-hostname":"vm"}',
                        network_data=b"version: 2\n")


def test_no_cloud_iso(tmp_path: Path) -> None:
    path = tmp_path / "cloud-init-data" / "ns" / "vm" / "noCloud.iso"
    prepare([dataclasses.replace(NO_CLOUD, path=str(path))])
    assert iso_labels(path) == ("cidata", "cidata")
    for name, content in (("user-data", NO_CLOUD.user_data),
                          ("meta-data", NO_CLOUD.meta_data),
                          ("network-config", NO_CLOUD.network_data)):
        assert read_iso(path, rr_path=f"/{name}") == content
        assert read_iso(path, joliet_path=f"/{name}") == content
    assert mode(path) == 0o640
    assert leftovers(path.parent) == []


def test_no_cloud_iso_without_network_config(tmp_path: Path) -> None:
    path = tmp_path / "noCloud.iso"
    prepare([CloudInitIso("ci", str(path), "noCloud", user_data=b"u", meta_data=b"{}")])
    with pytest.raises(pycdlib.pycdlibexception.PyCdlibException):
        read_iso(path, rr_path="/network-config")


def test_config_drive_iso(tmp_path: Path) -> None:
    path = tmp_path / "configdrive.iso"
    prepare([CloudInitIso("ci", str(path), "configDrive", user_data=b"#!/bin/sh\n",
                          meta_data=b'{"uuid":"u"}', network_data=b'{"links":[]}')])
    assert iso_labels(path) == ("config-2", "config-2")
    for name, content in (("user_data", b"#!/bin/sh\n"), ("meta_data.json", b'{"uuid":"u"}'),
                          ("network_data.json", b'{"links":[]}')):
        assert read_iso(path, rr_path=f"/openstack/latest/{name}") == content
        assert read_iso(path, joliet_path=f"/openstack/latest/{name}") == content


def test_iso_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "noCloud.iso"
    path.write_bytes(b"old")
    prepare([CloudInitIso("ci", str(path), "noCloud", user_data=b"new", meta_data=b"{}")])
    assert read_iso(path, rr_path="/user-data") == b"new"
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(shutil.which("blkid") is None, reason="needs blkid")
def test_iso_label_as_the_guest_sees_it(tmp_path: Path) -> None:
    for kind, label in (("noCloud", "cidata"), ("configDrive", "config-2")):
        path = tmp_path / f"{kind}.iso"
        prepare([CloudInitIso("ci", str(path), kind, user_data=b"u", meta_data=b"{}")])
        out = subprocess.run(["blkid", "-p", "-o", "export", str(path)], check=True,
                             capture_output=True, text=True).stdout
        assert f"LABEL={label}" in out.splitlines()
        assert "TYPE=iso9660" in out.splitlines()


def test_iso_listing_by_isoinfo(tmp_path: Path) -> None:
    path = tmp_path / "noCloud.iso"
    prepare([CloudInitIso("ci", str(path), "noCloud", user_data=b"u", meta_data=b"{}",
                          network_data=b"n")])
    out = subprocess.run(["isoinfo", "-R", "-f", "-i", str(path)], check=True,
                         capture_output=True, text=True).stdout
    assert sorted(out.split()) == ["/meta-data", "/network-config", "/user-data"]


# --- the converter's plan, carried out ------------------------------------------------------
def test_every_file_the_domain_names_exists_after_prepare(tmp_path: Path) -> None:
    opts = ConvertOptions(private_dir=str(tmp_path / "private"),
                          ephemeral_disk_dir=str(tmp_path / "eph"),
                          container_disk_dir=str(tmp_path / "container-disks"),
                          disks_info={"cd": DiskInfo(format="qcow2")})
    image(tmp_path / "container-disks" / "disk_1.img", "qcow2")
    pvc = tmp_path / "private" / "vmi-disks" / "root" / "disk.img"
    image(pvc, "raw")
    doc: dict[str, Any] = {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm", "namespace": "ns", "uid": "1234"},
        "spec": {
            "domain": {"resources": {"requests": {"memory": "128Mi"}}, "devices": {"disks": [
                {"name": "root"}, {"name": "cd", "cdrom": {}},
                {"name": "scratch"}, {"name": "hd"}, {"name": "ci"}]}},
            "volumes": [
                {"name": "root", "persistentVolumeClaim": {"claimName": "c"}},
                {"name": "cd", "containerDisk": {"image": "img"}},
                {"name": "scratch", "emptyDisk": {"capacity": "8Mi"}},
                {"name": "hd", "hostDisk": {"path": "/srv/hd.img", "type": "DiskOrCreate",
                                            "capacity": "4Mi"}},
                {"name": "ci", "cloudInitNoCloud": {"userData": "#cloud-config\n"}},
            ],
        },
    }
    result = convert(doc, opts)
    prepare(result.preps)
    sources = [s.get("file") for s in ET.fromstring(result.xml).iterfind("devices/disk/source")]
    assert len(sources) == 5
    assert all(s and Path(s).is_file() for s in sources), sources
    assert read_iso(tmp_path / "eph" / "cloud-init-data" / "ns" / "vm" / "noCloud.iso",
                    rr_path="/meta-data") == b'{"instance-id":"vm.ns","local-hostname":"vm"}'
    assert chain(tmp_path / "eph" / "disk-data" / "cd" / "disk.qcow2")[1]["filename"] == str(
        tmp_path / "container-disks" / "disk_1.img")


def test_isolated_worker_prepares_the_same_files(tmp_path: Path) -> None:
    backing = image(tmp_path / "disk_0.img", "raw")
    overlay = tmp_path / "disk-data" / "vol" / "disk.qcow2"
    iso = tmp_path / "cloud-init-data" / "noCloud.iso"
    prepare_isolated([ContainerDiskOverlay("vol", str(overlay), str(backing), ""),
                      dataclasses.replace(NO_CLOUD, path=str(iso))])
    assert chain(overlay)[0]["format"] == "qcow2"
    assert chain(overlay)[1]["filename"] == str(backing)
    assert read_iso(iso, rr_path="/user-data") == NO_CLOUD.user_data  # bytes survive


def test_isolated_worker_reports_the_volume(tmp_path: Path) -> None:
    path = tmp_path / "vmi-disks" / "rootdisk" / "disk.img"
    with pytest.raises(DiskError) as err:
        prepare_isolated([FileDisk("rootdisk", str(path))])
    assert err.value.volume == "rootdisk"
    assert str(err.value) == f'volume "rootdisk": disk image {path} does not exist'


def test_a_preparation_without_its_directories_is_refused(tmp_path: Path) -> None:
    # The confinement belongs to the preparation itself, not to the caller's goodwill.
    with pytest.raises(ValueError, match="directories its files must stay in"):
        disks.prepare([FileDisk("rootdisk", str(tmp_path / "x.img"), create_size=MiB)],
                      confine=())
    assert not (tmp_path / "x.img").exists()
