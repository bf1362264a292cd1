"""Volume types beyond disks images: configMap / secret / downwardAPI / serviceAccount /
sysprep ISOs, ephemeral PVC overlays, block-mode PVCs (from the launcher's probe),
cloud-init data from secrets, and the refusals (downwardMetrics, memoryDump, a second
cloud-init volume)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from launcher.converter import ConversionError, ConvertOptions, convert
from launcher.converter.plan import CloudInitIso, ConfigIso, ContainerDiskOverlay, FileDisk
from tests.unit.converter import support

PRIVATE = "/var/run/kubevirt-private"


def with_volume(volume: dict[str, Any], disk: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = support.vmi()
    doc["spec"]["domain"]["devices"]["disks"] = [disk or {"name": volume["name"],
                                                          "disk": {"bus": "virtio"}}]
    doc["spec"]["volumes"] = [volume]
    return doc


def disk_of(doc: dict[str, Any], opts: ConvertOptions | None = None) -> ET.Element:
    disk = support.tree(doc, opts).find("devices/disk")
    assert disk is not None
    return disk


@pytest.mark.parametrize(("source", "src_dir", "iso", "label"), [
    ({"configMap": {"name": "cm"}}, f"{PRIVATE}/config-map/v", f"{PRIVATE}/config-map-disks/v.iso",
     "cfgdata"),
    ({"secret": {"secretName": "s", "volumeLabel": "MYSECRET"}}, f"{PRIVATE}/secret/v",
     f"{PRIVATE}/secret-disks/v.iso", "MYSECRET"),
    ({"downwardAPI": {"fields": []}}, f"{PRIVATE}/downwardapi/v",
     f"{PRIVATE}/downwardapi-disks/v.iso", "cfgdata"),
    ({"serviceAccount": {"serviceAccountName": "default"}},
     "/var/run/secrets/kubernetes.io/serviceaccount",
     f"{PRIVATE}/service-account-disk/service-account.iso", "cfgdata"),
    ({"sysprep": {"configMap": {"name": "unattend"}}}, f"{PRIVATE}/sysprep/v",
     f"{PRIVATE}/sysprep-disks/v.iso", "unattendCD"),
], ids=["configMap", "secret", "downwardAPI", "serviceAccount", "sysprep"])
def test_config_volumes_are_isos(source: dict[str, Any], src_dir: str, iso: str,
                                 label: str) -> None:
    doc = with_volume({"name": "v", **source})
    conv = support.conversion(doc)
    disk = ET.fromstring(conv.xml).find("devices/disk")
    assert disk is not None
    assert disk.get("type") == "file"
    assert disk.find("source").get("file") == iso  # type: ignore[union-attr]
    assert disk.find("driver").get("type") == "raw"  # type: ignore[union-attr]
    assert disk.find("readonly") is not None
    sysprep = "sysprep" in source
    assert conv.preps == (ConfigIso("v", iso, src_dir, label, unattend=sysprep),)


def test_sysprep_needs_its_data() -> None:
    with pytest.raises(ConversionError) as info:
        convert(with_volume({"name": "v", "sysprep": {}}), ConvertOptions())
    assert info.value.path == "spec.volumes[0].sysprep"


def test_a_bad_volume_label_is_refused() -> None:
    doc = with_volume({"name": "v", "configMap": {"name": "c", "volumeLabel": "no/slash"}})
    with pytest.raises(ConversionError) as info:
        convert(doc, ConvertOptions())
    assert info.value.path == "spec.volumes[0].configMap.volumeLabel"


def test_block_pvc_from_the_probe() -> None:
    doc = with_volume({"name": "blk", "persistentVolumeClaim": {"claimName": "c"}})
    opts = ConvertOptions(block_volumes=frozenset({"blk"}), block_device_dir="/root/dev")
    conv = support.conversion(doc, opts)
    disk = ET.fromstring(conv.xml).find("devices/disk")
    assert disk is not None and disk.get("type") == "block"
    assert disk.find("source").attrib == {"dev": "/root/dev/blk"}  # type: ignore[union-attr]
    assert disk.find("driver").get("io") == "native"  # type: ignore[union-attr]
    assert conv.preps == (FileDisk("blk", "/root/dev/blk"),)


def test_filesystem_pvc_without_the_probe() -> None:
    disk = disk_of(with_volume({"name": "fs", "dataVolume": {"name": "dv"}}))
    assert disk.get("type") == "file"
    assert disk.find("source").get("file") == f"{PRIVATE}/vmi-disks/fs/disk.img"  # type: ignore[union-attr]


@pytest.mark.parametrize(("block", "backing"), [
    (False, ("file", "file", f"{PRIVATE}/vmi-disks/eph/disk.img")),
    (True, ("block", "dev", "/dev/eph")),
])
def test_ephemeral_is_an_overlay_on_the_claim(block: bool, backing: tuple[str, str, str]) -> None:
    doc = with_volume({"name": "eph", "ephemeral": {"persistentVolumeClaim": {
        "claimName": "c"}}})
    opts = ConvertOptions(block_volumes=frozenset({"eph"} if block else set()))
    conv = support.conversion(doc, opts)
    disk = ET.fromstring(conv.xml).find("devices/disk")
    assert disk is not None
    overlay = "/var/run/kubevirt-ephemeral-disks/disk-data/eph/disk.qcow2"
    assert disk.find("source").get("file") == overlay  # type: ignore[union-attr]
    assert disk.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    store = disk.find("backingStore")
    assert store is not None and store.get("type") == backing[0]
    assert store.find("format").get("type") == "raw"  # type: ignore[union-attr]
    assert store.find("source").get(backing[1]) == backing[2]  # type: ignore[union-attr]
    assert conv.preps == (ContainerDiskOverlay("eph", overlay, backing[2], "raw"),)


def test_cloud_init_from_a_secret() -> None:
    doc = with_volume({"name": "ci", "cloudInitNoCloud": {
        "secretRef": {"name": "s"}, "networkDataSecretRef": {"name": "s"}}})
    (prep,) = support.conversion(doc).preps
    assert isinstance(prep, CloudInitIso)
    base = f"{PRIVATE}/secret/ci"
    assert prep.user_data_files == (f"{base}/userdata", f"{base}/userData")
    assert prep.network_data_files == (f"{base}/networkdata", f"{base}/networkData")


@pytest.mark.parametrize(("kind", "why"), [
    ("downwardMetrics", "vhostmd"), ("memoryDump", "no guest disk")])
def test_refused_volume_kinds_say_why(kind: str, why: str) -> None:
    doc = with_volume({"name": "v", kind: {}})
    with pytest.raises(ConversionError) as info:
        convert(doc, ConvertOptions())
    assert info.value.path == f"spec.volumes[0].{kind}" and why in info.value.reason


def test_second_cloud_init_volume_refused_by_name() -> None:
    doc = with_volume({"name": "a", "cloudInitNoCloud": {"userData": "x"}})
    doc["spec"]["volumes"].append({"name": "b", "cloudInitConfigDrive": {"userData": "y"}})
    doc["spec"]["domain"]["devices"]["disks"].append({"name": "b"})
    with pytest.raises(ConversionError) as info:
        convert(doc, ConvertOptions())
    assert info.value.path == "spec.volumes[1].cloudInitConfigDrive"


def test_file_volume_under_a_lun_refused() -> None:
    doc = with_volume({"name": "v", "configMap": {"name": "c"}},
                      {"name": "v", "lun": {}})
    with pytest.raises(ConversionError) as info:
        convert(doc, ConvertOptions())
    assert info.value.path == "spec.domain.devices.disks[0].lun"


def test_lone_surrogate_in_cloud_init_data_is_a_field_error() -> None:
    # Before: UnicodeEncodeError in the ISO data encoding (a traceback, exit 1).
    doc = with_volume({"name": "ci", "cloudInitNoCloud": {"userData": "#cloud-config\udcff"}})
    with pytest.raises(ConversionError) as info:
        convert(doc, ConvertOptions())
    assert info.value.path == "spec.volumes[0].cloudInitNoCloud.userData"
    assert "surrogate" in info.value.reason
