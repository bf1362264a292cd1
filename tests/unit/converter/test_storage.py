"""storage.build: VMI disks + volumes -> <disk> elements (each conversion through
virt-xml-validate) and the disk preparations, and the exact field path of every refusal."""

from __future__ import annotations

import base64
import copy
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher.converter import ConversionError, ConvertOptions, DiskInfo, convert, storage
from launcher.converter.context import Context
from launcher.converter.plan import (
    CloudInitIso,
    ContainerDiskOverlay,
    EmptyDisk,
    FileDisk,
    Prep,
)
from launcher.converter.spec import Node
from tests.unit.converter.support import conversion, vmi

DATA = Path(__file__).parent / "data"
VMI_DISKS = "/var/run/kubevirt-private/vmi-disks"
EPHEMERAL = "/var/run/kubevirt-ephemeral-disks"
CONTAINER_DISKS = "/var/run/kubevirt/container-disks"
CLOUD_INIT = f"{EPHEMERAL}/cloud-init-data/default/testvmi"
NT = "virtio-non-transitional"
FIRMWARE_UUID = "d3c2dac2-71b8-5a49-a5a6-7f3bdb93e2c3"
PVC = {"persistentVolumeClaim": {"claimName": "claim"}}


def make(disks: list[dict[str, Any]], volumes: list[dict[str, Any]],
         **domain: Any) -> dict[str, Any]:
    devices = domain.pop("devices", {})
    doc = vmi(devices={"disks": disks, **devices}, **domain)
    doc["spec"]["volumes"] = volumes
    return doc


def vol(name: str, **source: Any) -> dict[str, Any]:
    return {"name": name, **(source or PVC)}


def disks_of(doc: dict[str, Any], opts: ConvertOptions | None = None) -> list[ET.Element]:
    """The converted <disk> elements (after libvirt's schema check)."""
    return ET.fromstring(conversion(doc, opts).xml).findall("./devices/disk")


def canon(xml: str | ET.Element) -> str:
    text = xml if isinstance(xml, str) else ET.tostring(xml, encoding="unicode")
    return ET.canonicalize(text, strip_text=True)


def refusal(doc: dict[str, Any], opts: ConvertOptions | None = None) -> ConversionError:
    with pytest.raises(ConversionError) as err:
        convert(doc, opts or ConvertOptions())
    return err.value


# --- the seed ---------------------------------------------------------------------------
def test_seed_001_disks_match_kubevirt() -> None:
    """The real VMI converts to the disks KubeVirt gave it, less what libvirt adds when it
    runs the domain (source/backingStore indexes, an empty <backingStore/>, addresses) and
    the tray KubeVirt's defaults spell out."""
    doc = yaml.safe_load((DATA / "seed001_vmi.yaml").read_text())
    opts = ConvertOptions(disks_info={"containerdisk": DiskInfo(format="raw")})
    ours = disks_of(doc, opts)
    for el in ours:
        for target in el.iter("target"):
            target.attrib.pop("tray", None)
    live = ET.parse(DATA / "seed001_domain.xml").getroot().findall("./devices/disk")
    for el in live:
        for child in list(el):
            if child.tag == "address" or (child.tag == "backingStore" and not len(child)):
                el.remove(child)
        for node in el.iter():
            node.attrib.pop("index", None)
    assert [canon(el) for el in ours] == [canon(el) for el in live]
    assert conversion(doc, opts).preps == (
        FileDisk("rootdisk", f"{VMI_DISKS}/rootdisk/disk.img"),
        ContainerDiskOverlay("containerdisk",
                             f"{EPHEMERAL}/disk-data/containerdisk/disk.qcow2",
                             f"{CONTAINER_DISKS}/disk_1.img", "raw"),
    )


# --- disks and volumes: table -------------------------------------------------------------
def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


NO_CLOUD_META = b'{"instance-id":"testvmi.default","local-hostname":"testvmi"}'

CASES = [
    pytest.param(
        [{"name": "rootdisk"}], [vol("rootdisk")], {},
        [f'<disk type="file" device="disk" model="{NT}">'
         '<driver name="qemu" type="raw" cache="none" error_policy="stop" discard="unmap"/>'
         f'<source file="{VMI_DISKS}/rootdisk/disk.img"/>'
         '<target dev="vda" bus="virtio"/><alias name="ua-rootdisk"/></disk>'],
        [FileDisk("rootdisk", f"{VMI_DISKS}/rootdisk/disk.img")],
        id="pvc-without-target-is-a-virtio-disk"),
    pytest.param(
        [{"name": "dv", "cdrom": {"bus": "scsi"}}],
        [{"name": "dv", "dataVolume": {"name": "my-dv"}}], {},
        ['<disk type="file" device="cdrom">'
         '<driver name="qemu" type="raw" cache="none" error_policy="stop" discard="unmap"/>'
         f'<source file="{VMI_DISKS}/dv/disk.img"/>'
         '<target dev="sda" bus="scsi"/><readonly/><alias name="ua-dv"/>'
         '<address type="drive" controller="0" bus="0" target="0" unit="0"/></disk>'],
        [FileDisk("dv", f"{VMI_DISKS}/dv/disk.img")],
        id="datavolume-scsi-cdrom"),
    pytest.param(
        [{"name": "img", "disk": {}}, {"name": "data", "disk": {}}],
        [vol("data"), {"name": "img", "containerDisk": {"image": "quay.io/x/y:1"}}],
        {"disks_info": {"img": DiskInfo(format="qcow2")}},
        [f'<disk type="file" device="disk" model="{NT}">'
         '<driver name="qemu" type="qcow2" cache="none" error_policy="stop" '
         'discard="unmap"/>'
         f'<source file="{EPHEMERAL}/disk-data/img/disk.qcow2"/>'
         f'<backingStore type="file"><format type="qcow2"/>'
         f'<source file="{CONTAINER_DISKS}/disk_1.img"/></backingStore>'
         '<target dev="vda" bus="virtio"/><alias name="ua-img"/></disk>',
         f'<disk type="file" device="disk" model="{NT}">'
         '<driver name="qemu" type="raw" cache="none" error_policy="stop" discard="unmap"/>'
         f'<source file="{VMI_DISKS}/data/disk.img"/>'
         '<target dev="vdb" bus="virtio"/><alias name="ua-data"/></disk>'],
        [ContainerDiskOverlay("img", f"{EPHEMERAL}/disk-data/img/disk.qcow2",
                              f"{CONTAINER_DISKS}/disk_1.img", "qcow2"),
         FileDisk("data", f"{VMI_DISKS}/data/disk.img")],
        id="containerdisk-numbered-by-volume-index"),
    pytest.param(
        [{"name": "img", "disk": {}}], [{"name": "img", "containerDisk": {"image": "i"}}], {},
        [f'<disk type="file" device="disk" model="{NT}">'
         '<driver name="qemu" type="qcow2" cache="none" error_policy="stop" '
         'discard="unmap"/>'
         f'<source file="{EPHEMERAL}/disk-data/img/disk.qcow2"/>'
         '<target dev="vda" bus="virtio"/><alias name="ua-img"/></disk>'],
        [ContainerDiskOverlay("img", f"{EPHEMERAL}/disk-data/img/disk.qcow2",
                              f"{CONTAINER_DISKS}/disk_0.img", "")],
        id="containerdisk-format-unknown-no-backingstore"),
    pytest.param(
        [{"name": "shared", "lun": {}}], [vol("shared")], {},
        ['<disk type="block" device="lun">'
         '<driver name="qemu" type="raw" cache="none" io="native" error_policy="stop" '
         'discard="unmap"/><source dev="/dev/shared"/>'
         '<target dev="sda" bus="scsi"/><alias name="ua-shared"/>'
         '<address type="drive" controller="0" bus="0" target="0" unit="0"/></disk>'],
        [FileDisk("shared", "/dev/shared")],
        id="lun-on-block-claim"),
    pytest.param(
        [{"name": "hd", "disk": {"bus": "sata"}}],
        [{"name": "hd", "hostDisk": {"path": "/data/vms/vm1.img", "type": "Disk"}}], {},
        ['<disk type="file" device="disk">'
         '<driver name="qemu" type="raw" cache="none" error_policy="stop" discard="unmap"/>'
         f'<source file="{VMI_DISKS}/hd/vm1.img"/>'
         '<target dev="sda" bus="sata"/><alias name="ua-hd"/></disk>'],
        [FileDisk("hd", f"{VMI_DISKS}/hd/vm1.img")],
        id="hostdisk-where-kubevirt-mounts-it"),
    pytest.param(
        [{"name": "hd", "cdrom": {}}],
        [{"name": "hd", "hostDisk": {"path": "/data/new.img", "type": "DiskOrCreate",
                                     "capacity": "1Gi"}}], {},
        ['<disk type="file" device="cdrom">'
         '<driver name="qemu" type="raw" cache="none" error_policy="stop"/>'
         f'<source file="{VMI_DISKS}/hd/new.img"/>'
         '<target dev="sda" bus="sata"/><readonly/><alias name="ua-hd"/></disk>'],
        [FileDisk("hd", f"{VMI_DISKS}/hd/new.img", create_size=2**30)],
        id="hostdisk-disk-or-create"),
    pytest.param(
        [{"name": "scratch", "disk": {"bus": "usb"}}],
        [{"name": "scratch", "emptyDisk": {"capacity": "2Gi"}}], {},
        ['<disk type="file" device="disk">'
         '<driver name="qemu" type="qcow2" cache="none" error_policy="stop" '
         'discard="unmap"/>'
         f'<source file="{EPHEMERAL}/empty-disks/scratch.qcow2"/>'
         '<target dev="sda" bus="usb"/><alias name="ua-scratch"/></disk>'],
        [EmptyDisk("scratch", f"{EPHEMERAL}/empty-disks/scratch.qcow2", 2 * 2**30)],
        id="emptydisk"),
    pytest.param(
        [{"name": "cloudinit", "disk": {"bus": "virtio"}}],
        [{"name": "cloudinit", "cloudInitNoCloud": {"userData": "#cloud-config\n",
                                                    "networkData": "version: 2\n"}}], {},
        [f'<disk type="file" device="disk" model="{NT}">'
         '<driver name="qemu" type="raw" cache="none" error_policy="stop" discard="unmap"/>'
         f'<source file="{CLOUD_INIT}/noCloud.iso"/>'
         '<target dev="vda" bus="virtio"/><readonly/><alias name="ua-cloudinit"/></disk>'],
        [CloudInitIso("cloudinit", f"{CLOUD_INIT}/noCloud.iso", "noCloud",
                      user_data=b"#cloud-config\n", meta_data=NO_CLOUD_META,
                      network_data=b"version: 2\n")],
        id="cloud-init-nocloud"),
    pytest.param(
        [{"name": "cloudinit", "disk": {"bus": "sata"}}],
        [{"name": "cloudinit", "cloudInitNoCloud": {"userData": "#cloud-config\n"}}], {},
        ['<disk type="file" device="disk">'
         '<driver name="qemu" type="raw" cache="none" error_policy="stop" discard="unmap"/>'
         f'<source file="{CLOUD_INIT}/noCloud.iso"/>'
         '<target dev="sda" bus="sata"/><alias name="ua-cloudinit"/></disk>'],
        [CloudInitIso("cloudinit", f"{CLOUD_INIT}/noCloud.iso", "noCloud",
                      user_data=b"#cloud-config\n", meta_data=NO_CLOUD_META)],
        id="cloud-init-on-sata-hard-disk-stays-writable"),
    pytest.param(
        [{"name": "cd"}, {"name": "empty", "cdrom": {"bus": "sata", "tray": "open"}}],
        [vol("cd")], {},
        [f'<disk type="file" device="disk" model="{NT}">'
         '<driver name="qemu" type="raw" cache="none" error_policy="stop" discard="unmap"/>'
         f'<source file="{VMI_DISKS}/cd/disk.img"/>'
         '<target dev="vda" bus="virtio"/><alias name="ua-cd"/></disk>',
         '<disk type="block" device="cdrom"><driver name="qemu" type="raw" '
         'error_policy="stop"/><target dev="sda" bus="sata" tray="open"/><readonly/>'
         '<alias name="ua-empty"/></disk>'],
        [FileDisk("cd", f"{VMI_DISKS}/cd/disk.img")],
        id="cdrom-without-volume-is-an-empty-tray"),
    pytest.param(
        [{"name": "data", "disk": {"bus": "virtio", "pciAddress": "0000:0a:01.0"},
          "cache": "writethrough", "io": "threads", "errorPolicy": "report",
          "serial": "SN-0001.a+b", "bootOrder": 3,
          "blockSize": {"custom": {"logical": 512, "physical": 4096}}}],
        [vol("data")], {},
        [f'<disk type="file" device="disk" model="{NT}">'
         '<driver name="qemu" type="raw" cache="writethrough" io="threads" '
         'error_policy="report" discard="unmap"/>'
         f'<source file="{VMI_DISKS}/data/disk.img"/><target dev="vda" bus="virtio"/>'
         '<serial>SN-0001.a+b</serial><boot order="3"/><alias name="ua-data"/>'
         '<address type="pci" domain="0x0000" bus="0x0a" slot="0x01" function="0x0"/>'
         '<blockio logical_block_size="512" physical_block_size="4096"/></disk>'],
        [FileDisk("data", f"{VMI_DISKS}/data/disk.img")],
        id="disk-tuning"),
    pytest.param(
        [{"name": "data", "disk": {"bus": "scsi", "readonly": True}, "shareable": True,
          "errorPolicy": "enospace"}],
        [vol("data")], {"preallocated_volumes": frozenset({"data"})},
        ['<disk type="file" device="disk">'
         '<driver name="qemu" type="raw" cache="none" io="native" error_policy="enospace" '
         'discard="unmap"/>'
         f'<source file="{VMI_DISKS}/data/disk.img"/><target dev="sda" bus="scsi"/>'
         '<readonly/><shareable/><alias name="ua-data"/>'
         '<address type="drive" controller="0" bus="0" target="0" unit="0"/></disk>'],
        [FileDisk("data", f"{VMI_DISKS}/data/disk.img")],
        id="shareable-preallocated-scsi"),
    pytest.param(
        [{"name": "media", "cdrom": {"bus": "usb", "readonly": False}, "serial": "ignored"}],
        [vol("media")], {},
        ['<disk type="file" device="cdrom">'
         '<driver name="qemu" type="raw" cache="none" error_policy="stop" discard="unmap"/>'
         f'<source file="{VMI_DISKS}/media/disk.img"/>'
         '<target dev="sda" bus="usb"/><alias name="ua-media"/></disk>'],
        [FileDisk("media", f"{VMI_DISKS}/media/disk.img")],
        id="writable-usb-cdrom-serial-ignored-like-kubevirt"),
]


@pytest.mark.parametrize(("disks", "volumes", "opts", "xml", "preps"), CASES)
def test_disks(disks: list[dict[str, Any]], volumes: list[dict[str, Any]],
               opts: dict[str, Any], xml: list[str], preps: list[Prep]) -> None:
    doc = make(disks, volumes)
    options = ConvertOptions(**opts)
    assert [canon(el) for el in disks_of(doc, options)] == [canon(x) for x in xml]
    assert list(conversion(doc, options, check=False).preps) == preps


def test_config_drive_metadata_and_base64() -> None:
    doc = make([{"name": "ci", "cdrom": {}}],
               [{"name": "ci", "cloudInitConfigDrive": {
                   "userDataBase64": _b64("#!/bin/sh\necho hi\n"),
                   "networkDataBase64": _b64('{"links": []}')}}],
               firmware={"uuid": FIRMWARE_UUID})
    doc["spec"]["hostname"] = "myhost"
    doc["metadata"]["annotations"] = {"kubevirt.io/instancetype-name": "u1.small"}
    (disk,) = disks_of(doc)
    assert disk.find("source").get("file") == f"{CLOUD_INIT}/configdrive.iso"  # type: ignore[union-attr]
    assert disk.find("driver").get("discard") is None  # type: ignore[union-attr]
    (prep,) = conversion(doc, check=False).preps
    assert isinstance(prep, CloudInitIso)
    assert prep.kind == "configDrive"
    assert prep.user_data == b"#!/bin/sh\necho hi\n"
    assert prep.network_data == b'{"links": []}'
    assert json.loads(prep.meta_data) == {"instance_type": "u1.small",
                                          "instance_id": "testvmi.default",
                                          "hostname": "myhost", "uuid": FIRMWARE_UUID}
    # KubeVirt's Go struct order, compact like encoding/json.
    assert prep.meta_data.startswith(b'{"instance_type":"u1.small","instance_id":')


def test_no_cloud_instance_id_is_the_firmware_uuid_and_hostname_the_first_label() -> None:
    doc = make([{"name": "ci"}], [{"name": "ci", "cloudInitNoCloud": {"userData": "x"}}],
               firmware={"uuid": FIRMWARE_UUID})
    doc["metadata"]["name"] = "web.prod"
    (prep,) = convert(doc, ConvertOptions()).preps
    assert isinstance(prep, CloudInitIso)
    assert prep.meta_data == (b'{"instance-id":"' + FIRMWARE_UUID.encode()
                              + b'","local-hostname":"web"}')
    assert prep.path == f"{EPHEMERAL}/cloud-init-data/default/web.prod/noCloud.iso"


def test_config_drive_uuid_falls_back_to_the_vmi_uid() -> None:
    doc = make([{"name": "ci"}], [{"name": "ci", "cloudInitConfigDrive": {"userData": "x"}}])
    (prep,) = convert(doc, ConvertOptions()).preps
    assert isinstance(prep, CloudInitIso)
    assert json.loads(prep.meta_data)["uuid"] == doc["metadata"]["uid"]


def test_network_data_alone_is_enough() -> None:
    doc = make([{"name": "ci"}],
               [{"name": "ci", "cloudInitNoCloud": {"networkData": "version: 2\n"}}])
    (prep,) = convert(doc, ConvertOptions()).preps
    assert isinstance(prep, CloudInitIso)
    assert (prep.user_data, prep.network_data) == (b"", b"version: 2\n")


# --- targets, boot order, iothreads, queues -----------------------------------------------
def test_target_names_share_one_sd_counter() -> None:
    buses = ["virtio", "sata", "virtio", "scsi", "usb"]
    names = [f"d{i}" for i in range(len(buses))]
    doc = make([{"name": n, "disk": {"bus": b}} for n, b in zip(names, buses, strict=True)],
               [vol(n) for n in names])
    disks = disks_of(doc)
    devs = [d.find("target").get("dev") for d in disks]  # type: ignore[union-attr]
    assert devs == ["vda", "sda", "vdb", "sdb", "sdc"]
    scsi = disks[3].find("address")
    assert scsi is not None and scsi.get("unit") == "1"


def test_target_names_past_z() -> None:
    names = [f"d{i}" for i in range(28)]
    doc = make([{"name": n} for n in names], [vol(n) for n in names])
    devs = [d.find("target").get("dev") for d in disks_of(doc)]  # type: ignore[union-attr]
    assert devs[25:] == ["vdz", "vdaa", "vdab"]


def test_targets_recorded_in_status_are_kept() -> None:
    doc = make([{"name": "a"}, {"name": "b"}, {"name": "c", "cdrom": {}}],
               [vol("a"), vol("b"), vol("c")])
    doc["status"] = {"volumeStatus": [
        {"name": "b", "target": "vda"},
        {"name": "c", "target": "vdb"},  # wrong prefix for a sata cdrom: ignored
        {"name": "gone", "target": "vdc"},
        {"name": "a", "target": "../x"},  # malformed: ignored
    ]}
    devs = [d.find("target").get("dev") for d in disks_of(doc)]  # type: ignore[union-attr]
    assert devs == ["vdb", "vda", "sda"]


def test_no_iothreads_unless_asked() -> None:
    doc = make([{"name": "a"}], [vol("a")])
    (disk,) = disks_of(doc)
    assert disk.find("driver").get("iothread") is None  # type: ignore[union-attr]


def test_dedicated_iothreads_numbered_after_the_shared_pool() -> None:
    doc = make([{"name": "a", "dedicatedIOThread": True}, {"name": "b"},
                {"name": "c", "disk": {"bus": "sata"}}, {"name": "d"}],
               [vol(n) for n in "abcd"])
    root = ET.fromstring(conversion(doc).xml)
    ids = [d.find("driver").get("iothread")  # type: ignore[union-attr]
           for d in root.findall("./devices/disk")]
    assert ids == ["2", "1", None, "1"]
    assert root.findtext("iothreads") == "2"


def test_auto_policy_spreads_shared_threads() -> None:
    doc = make([{"name": n} for n in "abc"], [vol(n) for n in "abc"],
               ioThreadsPolicy="auto",
               resources={"requests": {"memory": "128Mi", "cpu": "1"}})
    ids = [d.find("driver").get("iothread") for d in disks_of(doc)]  # type: ignore[union-attr]
    assert ids == ["1", "2", "1"]


def test_block_multi_queue_is_one_queue_per_vcpu_on_virtio() -> None:
    doc = make([{"name": "a"}, {"name": "b", "disk": {"bus": "scsi"}}], [vol("a"), vol("b")],
               devices={"blockMultiQueue": True}, cpu={"cores": 3, "sockets": 2})
    queues = [d.find("driver").get("queues") for d in disks_of(doc)]  # type: ignore[union-attr]
    assert queues == ["6", None]


def test_transitional_model() -> None:
    doc = make([{"name": "a"}], [vol("a")], devices={"useVirtioTransitional": True})
    (disk,) = disks_of(doc)
    assert disk.get("model") == "virtio-transitional"


def test_cdrom_bus_defaults_to_scsi_off_x86() -> None:
    doc = make([{"name": "cd", "cdrom": {}}], [vol("cd")])
    ctx = Context(vmi=Node(doc), opts=ConvertOptions(arch="aarch64"), name="testvmi",
                  namespace="default", uid="u")
    devices = ET.Element("devices")
    storage.build(ctx, devices)
    target = devices.find("./disk/target")
    assert target is not None and target.attrib == {"dev": "sda", "bus": "scsi"}


def test_directories_come_from_the_options() -> None:
    opts = ConvertOptions(private_dir="/r/priv", ephemeral_disk_dir="/r/eph",
                          container_disk_dir="/r/cd")
    doc = make([{"name": n} for n in ("c", "p", "e", "i")],
               [{"name": "c", "containerDisk": {"image": "i"}}, vol("p"),
                {"name": "e", "emptyDisk": {"capacity": "1Mi"}},
                {"name": "i", "cloudInitNoCloud": {"userData": "u"}}])
    paths = [(type(p).__name__, p.path) for p in convert(doc, opts).preps]
    assert paths == [("ContainerDiskOverlay", "/r/eph/disk-data/c/disk.qcow2"),
                     ("FileDisk", "/r/priv/vmi-disks/p/disk.img"),
                     ("EmptyDisk", "/r/eph/empty-disks/e.qcow2"),
                     ("CloudInitIso", "/r/eph/cloud-init-data/default/testvmi/noCloud.iso")]


def test_volume_used_by_a_filesystem_is_left_to_devices() -> None:
    doc = make([{"name": "a"}], [vol("a"), {"name": "fs", "configMap": {"name": "cm"}}],
               devices={"filesystems": [{"name": "fs", "virtiofs": {}}]})
    err = refusal(doc)  # devices.build refuses filesystems, storage did not object
    assert err.path == "spec.domain.devices.filesystems"


# --- refusals -----------------------------------------------------------------------------
def base() -> dict[str, Any]:
    return make([{"name": "rootdisk", "disk": {"bus": "virtio"}}], [vol("rootdisk")])


Mutate = Callable[[dict[str, Any]], None]


def disk0(**fields: Any) -> Mutate:
    def mutate(doc: dict[str, Any]) -> None:
        doc["spec"]["domain"]["devices"]["disks"][0].update(fields)
    return mutate


def volume0(**source: Any) -> Mutate:
    def mutate(doc: dict[str, Any]) -> None:
        doc["spec"]["volumes"][0] = {"name": "rootdisk", **source}
    return mutate


def add_disk(disk: dict[str, Any], volume: dict[str, Any] | None = None) -> Mutate:
    def mutate(doc: dict[str, Any]) -> None:
        doc["spec"]["domain"]["devices"]["disks"].append(disk)
        if volume is not None:
            doc["spec"]["volumes"].append(volume)
    return mutate


def add_volume(volume: dict[str, Any]) -> Mutate:
    def mutate(doc: dict[str, Any]) -> None:
        doc["spec"]["volumes"].append(volume)
    return mutate


def set_spec(key: str, value: Any) -> Mutate:
    def mutate(doc: dict[str, Any]) -> None:
        doc["spec"][key] = value
    return mutate


D0 = "spec.domain.devices.disks[0]"
V0 = "spec.volumes[0]"
CLOUD = {"cloudInitNoCloud": {"userData": "x"}}

REFUSALS = [
    pytest.param(disk0(disk={"bus": "ide"}), f"{D0}.disk.bus",
                 '"ide" is not supported (expected one of: virtio, sata, scsi, usb)', id="ide"),
    pytest.param(disk0(disk=None, cdrom={"bus": "virtio"}), f"{D0}.cdrom.bus",
                 '"virtio" is not supported (expected one of: sata, scsi, usb)',
                 id="virtio-cdrom"),
    pytest.param(disk0(disk=None, lun={"bus": "sata"}), f"{D0}.lun.bus",
                 '"sata" is not supported (expected one of: scsi)', id="sata-lun"),
    pytest.param(disk0(name="Root_Disk"), f"{D0}.name",
                 '"Root_Disk" is not a valid disk name', id="bad-name"),
    pytest.param(disk0(name="a/../b"), f"{D0}.name", '"a/../b" is not a valid disk name',
                 id="name-escaping-a-directory"),
    pytest.param(disk0(name=7), f"{D0}.name", "expected a string, got number",
                 id="name-not-a-string"),
    pytest.param(add_disk({"name": "rootdisk"}), "spec.domain.devices.disks[1].name",
                 f'"rootdisk" is already the name of {D0}', id="duplicate-disk"),
    pytest.param(volume0(), "spec.volumes[0]",
                 "needs a source (one of: containerDisk,", id="volume-without-source"),
    pytest.param(add_volume(vol("rootdisk")), "spec.volumes[1].name",
                 f'"rootdisk" is already the name of {V0}', id="duplicate-volume"),
    pytest.param(add_volume(vol("orphan")), "spec.volumes[1].name",
                 '"orphan" is not used by any disk in spec.domain.devices.disks',
                 id="volume-without-disk"),
    pytest.param(add_volume(vol("../etc")), "spec.volumes[1].name",
                 '"../etc" is not used by any disk', id="volume-name-escaping"),
    pytest.param(add_disk({"name": "data"}), "spec.domain.devices.disks[1].name",
                 'no volume named "data" in spec.volumes', id="disk-without-volume"),
    pytest.param(disk0(disk=None, floppy={}), f"{D0}.floppy",
                 "floppy disks are not supported by this launcher", id="floppy"),
    pytest.param(disk0(cdrom={}), D0, "only one of disk, cdrom, lun may be set, got disk, "
                 "cdrom", id="two-target-types"),
    pytest.param(disk0(disk={"bus": "sata", "readonly": True}), f"{D0}.disk.readonly",
                 "a sata hard disk cannot be read-only", id="readonly-sata-disk"),
    pytest.param(disk0(disk=None, lun={"reservation": True}), f"{D0}.lun.reservation",
                 "persistent reservation is not supported by this launcher",
                 id="lun-reservation"),
    pytest.param(lambda doc: (disk0(disk=None, lun={})(doc),
                              volume0(emptyDisk={"capacity": "1Gi"})(doc)),
                 f"{D0}.lun", "a lun needs a block-mode persistentVolumeClaim or dataVolume, "
                 "not emptyDisk", id="lun-on-emptydisk"),
    pytest.param(disk0(bootOrder=0), f"{D0}.bootOrder", "must be >= 1, got 0",
                 id="boot-order-0"),
    pytest.param(lambda doc: (disk0(bootOrder=1)(doc),
                              add_disk({"name": "b", "bootOrder": 1}, vol("b"))(doc)),
                 "spec.domain.devices.disks[1].bootOrder",
                 f"boot order 1 is already used by {D0}", id="duplicate-boot-order"),
    pytest.param(disk0(cache="unsafe"), f"{D0}.cache",
                 '"unsafe" is not supported (expected one of: none, writethrough, writeback)',
                 id="cache"),
    pytest.param(disk0(shareable=True, cache="writeback"), f"{D0}.cache",
                 'a shareable disk requires cache "none", got "writeback"',
                 id="shareable-cache"),
    pytest.param(disk0(io="native", cache="writethrough"), f"{D0}.io",
                 'io "native" requires cache "none", got "writethrough"', id="native-io"),
    pytest.param(disk0(io="io_uring"), f"{D0}.io",
                 '"io_uring" is not supported (expected one of: native, threads)', id="io"),
    pytest.param(disk0(errorPolicy="panic"), f"{D0}.errorPolicy",
                 '"panic" is not supported (expected one of: stop, ignore, report, enospace)',
                 id="error-policy"),
    pytest.param(disk0(serial="a b"), f"{D0}.serial", "must be 1 to 256 of the characters",
                 id="serial"),
    pytest.param(disk0(serial="x" * 257), f"{D0}.serial", "must be 1 to 256",
                 id="serial-length"),
    pytest.param(disk0(disk={"bus": "sata", "pciAddress": "0000:81:01.0"}),
                 f"{D0}.disk.pciAddress", "a PCI address can only be set on bus virtio",
                 id="pci-address-on-sata"),
    pytest.param(disk0(disk={"pciAddress": "81:01.0"}), f"{D0}.disk.pciAddress",
                 '"81:01.0" is not a PCI address (DDDD:BB:SS.F)', id="pci-address-format"),
    pytest.param(disk0(disk={"bus": "sata"}, dedicatedIOThread=True),
                 f"{D0}.dedicatedIOThread", 'IOThreads are only supported on bus virtio, '
                 'not "sata"', id="iothread-on-sata"),
    pytest.param(disk0(blockSize={"custom": {"logical": 4096, "physical": 512}}),
                 f"{D0}.blockSize.custom.logical", "must not exceed physical (512), got 4096",
                 id="block-size-order"),
    pytest.param(disk0(blockSize={"custom": {"logical": 1000, "physical": 4096}}),
                 f"{D0}.blockSize.custom.logical",
                 "must be a power of 2 from 512 to 2097152, got 1000", id="block-size-pow2"),
    pytest.param(disk0(blockSize={"custom": {"logical": 512}}),
                 f"{D0}.blockSize.custom.physical", "required", id="block-size-physical"),
    pytest.param(disk0(blockSize={"matchVolume": {}}), f"{D0}.blockSize.matchVolume",
                 "not supported by this launcher", id="block-size-match-volume"),
    pytest.param(disk0(blockSize={"custom": {"logical": 512, "physical": 512,
                                             "discardGranularity": 512}}),
                 f"{D0}.blockSize.custom.discardGranularity", "not supported",
                 id="discard-granularity"),
    pytest.param(volume0(containerDisk={"image": "i"}, persistentVolumeClaim={}), V0,
                 "must have exactly one source, got containerDisk, persistentVolumeClaim",
                 id="two-sources"),
    pytest.param(volume0(persistentVolumeClaim={}), f"{V0}.persistentVolumeClaim.claimName",
                 "required", id="claim-name"),
    pytest.param(volume0(dataVolume={"name": ""}), f"{V0}.dataVolume.name",
                 "must not be empty", id="datavolume-name"),
    pytest.param(volume0(hostDisk={"path": "disk.img", "type": "Disk"}),
                 f"{V0}.hostDisk.path", '"disk.img" must be an absolute, normalized file path',
                 id="hostdisk-relative"),
    pytest.param(volume0(hostDisk={"path": "/data/../etc/shadow", "type": "Disk"}),
                 f"{V0}.hostDisk.path",
                 '"/data/../etc/shadow" must be an absolute, normalized file path',
                 id="hostdisk-dotdot"),
    pytest.param(volume0(hostDisk={"path": "/data/"}), f"{V0}.hostDisk.path",
                 '"/data/" must be an absolute, normalized file path', id="hostdisk-directory"),
    pytest.param(volume0(hostDisk={"path": "/data/d.img"}), f"{V0}.hostDisk.type",
                 "required (one of: Disk, DiskOrCreate)", id="hostdisk-type"),
    pytest.param(volume0(hostDisk={"path": "/data/d.img", "type": "DiskOrCreate"}),
                 f"{V0}.hostDisk.capacity", 'required (more than 0 bytes) with type '
                 '"DiskOrCreate"', id="hostdisk-capacity-missing"),
    pytest.param(volume0(hostDisk={"path": "/data/d.img", "type": "Disk", "capacity": "1Gi"}),
                 f"{V0}.hostDisk.capacity", 'only allowed with type "DiskOrCreate"',
                 id="hostdisk-capacity-with-disk"),
    pytest.param(volume0(emptyDisk={}), f"{V0}.emptyDisk.capacity", "required",
                 id="emptydisk-capacity"),
    pytest.param(volume0(emptyDisk={"capacity": "0"}), f"{V0}.emptyDisk.capacity",
                 "must be more than 0 bytes", id="emptydisk-zero"),
    pytest.param(volume0(emptyDisk={"capacity": "1.5"}), f"{V0}.emptyDisk.capacity",
                 "'1.5' is not a whole number of bytes", id="emptydisk-fraction"),
    pytest.param(volume0(cloudInitNoCloud={"userDataBase64": "not base64!"}),
                 f"{V0}.cloudInitNoCloud.userDataBase64", "is not valid base64",
                 id="bad-base64"),
    pytest.param(volume0(cloudInitConfigDrive={"networkDataBase64": "YWJ"}),
                 f"{V0}.cloudInitConfigDrive.networkDataBase64", "is not valid base64",
                 id="bad-base64-padding"),
    pytest.param(volume0(cloudInitNoCloud={"userData": "a", "userDataBase64": "YQ=="}),
                 f"{V0}.cloudInitNoCloud.userDataBase64",
                 "userData and userDataBase64 cannot both be set", id="user-data-twice"),
    pytest.param(volume0(cloudInitNoCloud={"userData": "x",
                                           "secretRef": {"name": "s"}}),
                 f"{V0}.cloudInitNoCloud.secretRef",
                 "secretRef and userData / userDataBase64 cannot both be set",
                 id="user-data-secret-and-inline"),
    pytest.param(volume0(cloudInitConfigDrive={"networkDataBase64": "eA==",
                                               "networkDataSecretRef": {"name": "s"}}),
                 f"{V0}.cloudInitConfigDrive.networkDataSecretRef",
                 "networkDataSecretRef and networkData / networkDataBase64 cannot both be set",
                 id="network-data-secret-and-inline"),
    pytest.param(volume0(cloudInitNoCloud={}), f"{V0}.cloudInitNoCloud",
                 "needs userData, userDataBase64, secretRef, networkData, "
                 "networkDataBase64 or networkDataSecretRef", id="cloud-init-empty"),
    pytest.param(lambda doc: (volume0(**CLOUD)(doc),
                              add_disk({"name": "ci2"}, {"name": "ci2", **CLOUD})(doc)),
                 "spec.volumes[1].cloudInitNoCloud",
                 f"only one cloud-init volume is supported ({V0} is one)",
                 id="two-cloud-init-volumes"),
    pytest.param(lambda doc: (volume0(**CLOUD)(doc), set_spec("accessCredentials", [
        {"sshPublicKey": {"source": {"secret": {"secretName": "k"}},
                          "propagationMethod": {"noCloud": {}}}}])(doc)),
                 "spec.accessCredentials[0].sshPublicKey.propagationMethod.noCloud",
                 "not supported by this launcher", id="ssh-keys-through-cloud-init"),
    pytest.param(set_spec("volumes", {"rootdisk": PVC}), "spec.volumes",
                 "expected a list, got object", id="volumes-not-a-list"),
]


@pytest.mark.parametrize(("mutate", "path", "reason"), REFUSALS)
def test_refusals(mutate: Mutate, path: str, reason: str) -> None:
    doc = base()
    mutate(doc)
    err = refusal(doc)
    assert (err.path, err.reason[:len(reason)]) == (path, reason), str(err)


@pytest.mark.parametrize("kind", storage.UNSUPPORTED_SOURCES)
def test_unsupported_volume_sources(kind: str) -> None:
    doc = base()
    doc["spec"]["volumes"][0] = {"name": "rootdisk", kind: {"name": "x"}}
    err = refusal(doc)
    assert err.path == f"{V0}.{kind}"
    assert err.reason.startswith("not supported by this launcher: ")


def test_container_disk_format_from_virt_handler_must_be_raw_or_qcow2() -> None:
    doc = base()
    doc["spec"]["volumes"][0] = {"name": "rootdisk", "containerDisk": {"image": "i"}}
    err = refusal(doc, ConvertOptions(disks_info={"rootdisk": DiskInfo(format="vmdk")}))
    assert err.path == f"{V0}.containerDisk"
    assert err.reason.startswith('virt-handler reports the image as "vmdk"')


def test_conversion_is_deterministic() -> None:
    doc = make([{"name": "a"}, {"name": "ci", "cdrom": {}}],
               [vol("a"), {"name": "ci", **CLOUD}])
    first = convert(copy.deepcopy(doc), ConvertOptions())
    second = convert(copy.deepcopy(doc), ConvertOptions())
    assert (first.preps, first.xml) == (second.preps, second.xml)
