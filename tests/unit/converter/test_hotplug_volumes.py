"""Hotplug volumes as KubeVirt's converter takes them: status.volumeStatus[] entries with a
hotplugVolume object (storage/configurator.go's disk loop, storage/volume.go's
convert_v1_Hotplug_Volume_To_api_Disk, volumepath's hotplug paths), each conversion
through libvirt's schema check."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from launcher.converter import ConversionError, ConvertOptions, convert
from launcher.converter.plan import ContainerDiskOverlay, FileDisk
from tests.unit.converter.support import conversion, vmi

HOTPLUG = "/var/run/kubevirt/hotplug-disks"
ROOT_DISK = {"name": "root"}
ROOT_VOLUME = {"name": "root", "containerDisk": {"image": "example/disk"}}
PVC = {"persistentVolumeClaim": {"claimName": "claim", "hotpluggable": True}}
ROOT_STATUS = {"name": "root", "target": "vda", "containerDiskVolume": {"checksum": 1}}


def hotplug_status(name: str, phase: str | None, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "hotplugVolume": {"attachPodName": "hp-pod"},
                             **extra}
    if phase is not None:
        entry["phase"] = phase
    return entry


def make(disks: list[dict[str, Any]], volumes: list[dict[str, Any]],
         status: list[Any] | None, **devices: Any) -> dict[str, Any]:
    doc = vmi(devices={"disks": [ROOT_DISK, *disks], **devices})
    doc["spec"]["volumes"] = [ROOT_VOLUME, *volumes]
    if status is not None:
        doc["status"] = {"volumeStatus": status}
    return doc


def hotplug_vmi(phase: str | None = "MountedToPod", disk: dict[str, Any] | None = None,
                source: dict[str, Any] | None = None, **devices: Any) -> dict[str, Any]:
    return make([disk or {"name": "hp", "disk": {"bus": "scsi"}}],
                [{"name": "hp", **(source or PVC)}],
                [ROOT_STATUS, hotplug_status("hp", phase)], **devices)


def disks(doc: dict[str, Any], opts: ConvertOptions | None = None) -> dict[str, ET.Element]:
    """The converted <disk> elements by alias (ua-NAME -> NAME)."""
    root = ET.fromstring(conversion(doc, opts).xml)
    return {d.findall("alias")[0].get("name", "").removeprefix("ua-"): d
            for d in root.findall("./devices/disk")}


def error(doc: dict[str, Any], opts: ConvertOptions | None = None) -> ConversionError:
    with pytest.raises(ConversionError) as info:
        convert(doc, opts or ConvertOptions())
    return info.value


def source_of(disk: ET.Element) -> dict[str, str]:
    source = disk.find("source")
    assert source is not None
    return dict(source.attrib)


# --- the hotplug disk -----------------------------------------------------------------------
@pytest.mark.parametrize("phase", ["MountedToPod", "Ready"])
def test_mounted_hotplug_pvc_is_the_raw_file_in_the_hotplug_dir(phase: str) -> None:
    doc = hotplug_vmi(phase)
    result = conversion(doc)
    hp = disks(doc)["hp"]
    assert hp.get("type") == "file" and hp.get("device") == "disk"
    assert source_of(hp) == {"file": f"{HOTPLUG}/hp.img"}
    driver = hp.find("driver")
    assert driver is not None and driver.get("type") == "raw"
    assert driver.get("discard") == "unmap" and driver.get("error_policy") == "stop"
    target = hp.find("target")
    assert target is not None and target.attrib == {"dev": "sda", "bus": "scsi"}
    alias = hp.find("alias")
    assert alias is not None and alias.get("name") == "ua-hp"
    # virt-handler provides the file: nothing to prepare for it, only the root disk.
    assert [prep.volume for prep in result.preps] == ["root"]
    assert isinstance(result.preps[0], ContainerDiskOverlay)


def test_hotplug_data_volume_and_virtio_bus() -> None:
    doc = hotplug_vmi(disk={"name": "hp", "disk": {"bus": "virtio"}},
                      source={"dataVolume": {"name": "dv", "hotpluggable": True}})
    hp = disks(doc)["hp"]
    assert source_of(hp) == {"file": f"{HOTPLUG}/hp.img"}
    target = hp.find("target")
    assert target is not None and target.attrib == {"dev": "vdb", "bus": "virtio"}
    assert not [p for p in conversion(doc).preps if p.volume == "hp"]


@pytest.mark.parametrize("phase", ["AttachedToNode", "Pending", "Bound", "Detaching", None])
def test_hotplug_volume_not_mounted_yet_has_no_disk(phase: str | None) -> None:
    doc = hotplug_vmi(phase)
    result = conversion(doc)
    assert list(disks(doc)) == ["root"]
    assert [prep.volume for prep in result.preps] == ["root"]


def test_a_disk_waiting_for_its_volume_keeps_its_target_name() -> None:
    """KubeVirt names every disk of the spec, in the domain or not: the disk after a
    pending one gets the same target it will have once the pending one is in."""
    def doc(phase: str) -> dict[str, Any]:
        return make([{"name": "hp", "disk": {"bus": "scsi"}},
                     {"name": "late", "disk": {"bus": "scsi"}}],
                    [{"name": "hp", **PVC}, {"name": "late", **PVC}],
                    [ROOT_STATUS, hotplug_status("hp", phase),
                     hotplug_status("late", "Ready")])
    pending = disks(doc("Pending"))
    ready = disks(doc("Ready"))
    assert list(pending) == ["root", "late"] and list(ready) == ["root", "hp", "late"]
    for got in (pending, ready):
        target = got["late"].find("target")
        assert target is not None and target.get("dev") == "sdb"
        address = got["late"].find("address")
        assert address is not None and address.get("unit") == "1"


def test_block_hotplug_volume_is_the_device_in_the_hotplug_dir() -> None:
    opts = ConvertOptions(hotplug_block_volumes=frozenset({"hp"}))
    hp = disks(hotplug_vmi(), opts)["hp"]
    assert hp.get("type") == "block"
    assert source_of(hp) == {"dev": f"{HOTPLUG}/hp"}
    driver = hp.find("driver")
    assert driver is not None and driver.get("type") == "raw" and driver.get("io") == "native"


def test_the_permanent_block_probe_does_not_apply_to_hotplug_volumes() -> None:
    """A hotplug volume's device is in the hotplug directory (KubeVirt probes it there:
    isHotplugBlockDeviceVolume), not /dev/<volume>."""
    hp = disks(hotplug_vmi(), ConvertOptions(block_volumes=frozenset({"hp"})))["hp"]
    assert hp.get("type") == "file" and source_of(hp) == {"file": f"{HOTPLUG}/hp.img"}


def test_hotplug_dir_comes_from_the_options() -> None:
    opts = ConvertOptions(hotplug_disk_dir="/r/var/run/kubevirt/hotplug-disks")
    hp = disks(hotplug_vmi(), opts)["hp"]
    assert source_of(hp) == {"file": "/r/var/run/kubevirt/hotplug-disks/hp.img"}
    opts = ConvertOptions(hotplug_disk_dir="/r/hp", hotplug_block_volumes=frozenset({"hp"}))
    assert source_of(disks(hotplug_vmi(), opts)["hp"]) == {"dev": "/r/hp/hp"}


def test_hotplug_lun_is_the_block_device() -> None:
    doc = hotplug_vmi(disk={"name": "hp", "lun": {}})
    hp = disks(doc)["hp"]
    assert hp.get("device") == "lun" and hp.get("type") == "block"
    assert source_of(hp) == {"dev": f"{HOTPLUG}/hp"}


def test_hotplug_host_disk_is_taken_as_kubevirt_takes_it() -> None:
    """KubeVirt's convert_v1_Hotplug_Volume_To_api_Disk also takes a hostDisk (a PVC
    virt-handler's ReplacePVCByHostDisk rewrote) as the hotplugged claim."""
    doc = hotplug_vmi(source={"hostDisk": {"path": "/var/run/kubevirt-private/vmi-disks/hp/"
                                                   "disk.img", "type": "DiskOrCreate",
                                           "capacity": "1Gi"}})
    result = conversion(doc)
    assert source_of(disks(doc)["hp"]) == {"file": f"{HOTPLUG}/hp.img"}
    assert [prep.volume for prep in result.preps] == ["root"]


# --- which disks are in the domain ----------------------------------------------------------
def test_no_volume_status_keeps_every_disk() -> None:
    doc = make([{"name": "data"}], [{"name": "data", **PVC}], None)
    result = conversion(doc)
    assert list(disks(doc)) == ["root", "data"]
    assert source_of(disks(doc)["data"]) == {
        "file": "/var/run/kubevirt-private/vmi-disks/data/disk.img"}
    assert isinstance(result.preps[1], FileDisk)


def test_only_permanent_volumes_with_a_status_entry_are_in_the_domain() -> None:
    """KubeVirt's permReady: once virt-handler reported permanent volumes, a disk whose
    volume has no (non-hotplug) status entry is left out, and so is its preparation."""
    doc = make([{"name": "data"}, {"name": "other"}],
               [{"name": "data", **PVC}, {"name": "other", **PVC}],
               [ROOT_STATUS, {"name": "data", "persistentVolumeClaimInfo": {}}])
    result = conversion(doc)
    assert list(disks(doc)) == ["root", "data"]
    assert [prep.volume for prep in result.preps] == ["root", "data"]


def test_no_permanent_status_entry_keeps_every_disk() -> None:
    """No permanent status entry at all (virt-handler has not reported on the VMI yet):
    KubeVirt's permReady holds for every disk, a pending hotplug one too."""
    doc = make([{"name": "data"}, {"name": "hp", "disk": {"bus": "scsi"}}],
               [{"name": "data", **PVC}, {"name": "hp", **PVC}],
               [hotplug_status("hp", "AttachedToNode")])
    assert list(disks(doc)) == ["root", "data", "hp"]
    assert source_of(disks(doc)["hp"]) == {"file": f"{HOTPLUG}/hp.img"}
    assert [prep.volume for prep in conversion(doc).preps] == ["root", "data"]


def test_malformed_status_entries_are_skipped() -> None:
    doc = make([{"name": "data"}], [{"name": "data", **PVC}],
               ["junk", {"target": "vdc"}, {"name": 3}])
    assert list(disks(doc)) == ["root", "data"]
    # hotplugVolume must be an object (Go: a nil pointer is a permanent volume).
    doc = make([{"name": "data"}], [{"name": "data", **PVC}],
               [ROOT_STATUS, {"name": "data", "hotplugVolume": None, "phase": "Pending"}])
    assert list(disks(doc)) == ["root", "data"]


def test_hotplug_cdrom_media_on_sata() -> None:
    """A cdrom takes hotplugged media on any bus (virt-api checks the bus only of a disk
    added with its volume; a cdrom drive exists from the start)."""
    doc = hotplug_vmi(disk={"name": "hp", "cdrom": {"bus": "sata"}})
    hp = disks(doc)["hp"]
    assert hp.get("device") == "cdrom" and hp.get("type") == "file"
    assert source_of(hp) == {"file": f"{HOTPLUG}/hp.img"}
    assert hp.find("readonly") is not None
    target = hp.find("target")
    assert target is not None and target.attrib == {"dev": "sda", "bus": "sata"}
    assert [prep.volume for prep in conversion(doc).preps] == ["root"]


def test_empty_cdrom_stays_while_its_media_is_pending() -> None:
    """The drive is in the domain, empty, until the hotplugged media is mounted (the
    volume not yet in spec.volumes, or its phase not ready)."""
    ejected = make([{"name": "cd", "cdrom": {"bus": "sata"}}], [], [ROOT_STATUS])
    cd = disks(ejected)["cd"]
    assert cd.find("source") is None and cd.get("type") == "block"
    pending = hotplug_vmi("AttachedToNode", disk={"name": "hp", "cdrom": {"bus": "sata"}})
    assert list(disks(pending)) == ["root"]


# --- refusals -------------------------------------------------------------------------------
@pytest.mark.parametrize("phase", ["MountedToPod", "Pending"])
def test_unsupported_hotplug_source_names_the_field(phase: str) -> None:
    err = error(hotplug_vmi(phase, source={"emptyDisk": {"capacity": "1Gi"}}))
    assert err.path == "spec.volumes[1].emptyDisk"
    assert 'hotplug disk "hp" references an unsupported source' in err.reason


@pytest.mark.parametrize("bus", ["sata", "usb"])
def test_hotplug_disk_on_a_bus_that_cannot_hotplug_is_refused(bus: str) -> None:
    err = error(hotplug_vmi(disk={"name": "hp", "disk": {"bus": bus}}))
    assert err.path == "spec.domain.devices.disks[1].disk.bus"
    assert "scsi or virtio" in err.reason


def test_hotplug_disk_default_bus_is_virtio() -> None:
    hp = disks(hotplug_vmi(disk={"name": "hp"}))["hp"]
    target = hp.find("target")
    assert target is not None and target.get("bus") == "virtio"


# --- the scsi controller --------------------------------------------------------------------
def controllers(doc: dict[str, Any]) -> list[str]:
    root = ET.fromstring(conversion(doc).xml)
    return [c.get("type", "") for c in root.findall("./devices/controller")]


@pytest.mark.parametrize("phase", ["MountedToPod", "Pending"])
def test_scsi_hotplug_disk_gets_the_controller_with_disable_hotplug(phase: str) -> None:
    """KubeVirt's requiresSCSIController looks at the spec's disks: a scsi disk waiting
    for its volume already has its controller."""
    assert "scsi" in controllers(hotplug_vmi(phase, disableHotplug=True))
    virtio = hotplug_vmi(phase, disk={"name": "hp", "disk": {"bus": "virtio"}},
                         disableHotplug=True)
    assert "scsi" not in controllers(virtio)
