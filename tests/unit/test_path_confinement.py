"""Paths built from a VMI cannot escape their directories: the converter's side.

Every file the domain XML names and every file the disk preparation touches is built by
the converter from a configured directory plus names taken from the VMI (volume and disk
names, metadata name/namespace/uid, the basename of a hostDisk path or of a kernel-boot
artifact). So confinement is: those names are refused unless they are one path component
(no "/", not "." or "..", no NUL or other characters libvirt cannot carry), paths a VMI
spells out (hostDisk.path, kernelPath, initrdPath) must be absolute and normalized and
only their basename is used, and whatever a VMI says elsewhere (containerDisk.path,
image names) never becomes a path at all. A refusal is a ConversionError naming the field.

What the filesystem may still do (a symlink planted in a mounted volume) is the disk
preparation's business: tests/integration/test_path_confinement.py.

The directories here are deliberately not KubeVirt's defaults (a runtime root /r), so a
path that ignored the configured directory would be caught too.
"""

from __future__ import annotations

import copy
import os
import posixpath
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher.converter import Conversion, ConversionError, ConvertOptions, DiskInfo, convert
from launcher.converter.plan import ContainerDiskOverlay
from tests.unit.converter.support import MINIMAL

OPTS = ConvertOptions(
    private_dir="/r/var/run/kubevirt-private",
    ephemeral_disk_dir="/r/var/run/kubevirt-ephemeral-disks",
    container_disk_dir="/r/var/run/kubevirt/container-disks",
    hotplug_disk_dir="/r/var/run/kubevirt/hotplug-disks",
    ovmf_path="/r/usr/share/OVMF",
    disks_info={"cd": DiskInfo(format="qcow2")},
)
# (directory, how many components a path below it has): the only places a VMI's files go.
# Longest first: the first directory a path is under is its tree.
TREES = sorted([
    (f"{OPTS.private_dir}/vmi-disks", 2),  # <volume>/<file>: PVC, DataVolume, hostDisk
    (f"{OPTS.private_dir}/libvirt/qemu/nvram", 1),  # <name>_VARS.fd
    (OPTS.private_dir, 2),  # <uid>/<socket>: serial console, its log, VNC
    (f"{OPTS.ephemeral_disk_dir}/disk-data", 2),  # <volume>/disk.qcow2
    (f"{OPTS.ephemeral_disk_dir}/empty-disks", 1),  # <volume>.qcow2
    (f"{OPTS.ephemeral_disk_dir}/cloud-init-data", 3),  # <namespace>/<name>/<iso>
    (f"{OPTS.container_disk_dir}/kernel-boot", 1),  # <file>
    (OPTS.container_disk_dir, 1),  # disk_<N>.img
    (OPTS.ovmf_path, 1),  # firmware
    ("/dev", 1),  # <volume>: a block-mode PVC under a lun
], key=lambda tree: -len(tree[0]))


def base() -> dict[str, Any]:
    """A VMI with every kind of path the converter builds: container disk, PVC,
    DataVolume, hostDisk (Disk, DiskOrCreate), emptyDisk, a lun, cloud-init, kernel boot
    with an initrd, EFI (NVRAM), serial console with its log, VNC."""
    doc = copy.deepcopy(MINIMAL)
    dom = doc["spec"]["domain"]
    dom["firmware"] = {
        "bootloader": {"efi": {"secureBoot": False}},
        "kernelBoot": {"container": {"image": "kb:1", "kernelPath": "/boot/vmlinuz",
                                     "initrdPath": "/boot/initrd.img"},
                       "kernelArgs": "console=ttyS0"}}
    dom["devices"] = {
        "logSerialConsole": True,
        "disks": [{"name": n, "disk": {}} for n in ("cd", "pvc", "dv", "hd", "hdc", "empty",
                                                     "ci")] + [{"name": "lun", "lun": {}}]}
    doc["spec"]["volumes"] = [
        {"name": "cd", "containerDisk": {"image": "img:1", "path": "/disk/x.qcow2"}},
        {"name": "pvc", "persistentVolumeClaim": {"claimName": "c"}},
        {"name": "dv", "dataVolume": {"name": "d"}},
        {"name": "hd", "hostDisk": {"path": "/data/hd.img", "type": "Disk"}},
        {"name": "hdc", "hostDisk": {"path": "/data/new.img", "type": "DiskOrCreate",
                                     "capacity": "1Gi"}},
        {"name": "empty", "emptyDisk": {"capacity": "1Gi"}},
        {"name": "ci", "cloudInitNoCloud": {"userData": "#cloud-config\n"}},
        {"name": "lun", "persistentVolumeClaim": {"claimName": "blk"}},
    ]
    return doc


def produced_paths(conv: Conversion) -> list[str]:
    """Every path in the XML (sources, backing stores, kernel, initrd, loader, NVRAM,
    sockets, logs) and in the disk preparations."""
    root = ET.fromstring(conv.xml)
    paths = []
    for el in root.iter():
        for attr in ("file", "path", "socket"):
            if attr in el.attrib:
                paths.append(el.attrib[attr])
        if el.tag == "source" and "dev" in el.attrib:
            paths.append(el.attrib["dev"])
        if el.tag in ("kernel", "initrd", "loader", "nvram") and el.text:
            paths.append(el.text)
        if el.tag == "nvram" and "template" in el.attrib:
            paths.append(el.attrib["template"])
    for prep in conv.preps:
        paths.append(prep.path)
        if isinstance(prep, ContainerDiskOverlay):
            paths.append(prep.backing)
    return paths


def confined(path: str) -> str:
    """The tree `path` lies in; fails unless it is normalized, absolute and exactly as
    deep below that tree as the converter's layout says."""
    assert path.startswith("/") and not path.startswith("//"), path
    assert posixpath.normpath(path) == path, path
    assert "\0" not in path, path
    for directory, depth in TREES:
        if os.path.commonpath([directory, path]) == directory:
            rest = path[len(directory) + 1:].split("/")
            assert len(rest) == depth, (path, directory)
            assert all(part not in ("", ".", "..") for part in rest), path
            return directory
    raise AssertionError(f"{path} is outside every directory the converter may use")


def test_base_touches_every_tree() -> None:
    conv = convert(base(), OPTS)
    trees = {confined(p) for p in produced_paths(conv)}
    assert trees == {directory for directory, _ in TREES}, trees


# --- explicit escape attempts, each refused naming its field ---------------------------------
V = "spec.volumes"
D = "spec.domain.devices.disks"
KB = "spec.domain.firmware.kernelBoot.container"


def _set_meta(key: str, value: Any) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        doc["metadata"][key] = value
    return mutate


def _rename(old: str, new: str) -> Any:
    """Rename a disk and its volume together (so the pairing is not what fails)."""
    def mutate(doc: dict[str, Any]) -> None:
        for item in (*doc["spec"]["domain"]["devices"]["disks"], *doc["spec"]["volumes"]):
            if item["name"] == old:
                item["name"] = new
    return mutate


def _volume(name: str, **source: Any) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        for vol in doc["spec"]["volumes"]:
            if vol["name"] == name:
                kind = next(k for k in vol if k != "name")
                vol[kind].update(source)
    return mutate


def _kernel(**paths: Any) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        doc["spec"]["domain"]["firmware"]["kernelBoot"]["container"].update(paths)
    return mutate


ESCAPES = [
    # metadata: the cloud-init directory (<ns>/<name>), NVRAM (<name>_VARS.fd), the private
    # socket directory (<uid>)
    pytest.param(_set_meta("name", ".."), "metadata.name", id="name-dotdot"),
    pytest.param(_set_meta("name", "../../etc"), "metadata.name", id="name-slash"),
    pytest.param(_set_meta("namespace", "."), "metadata.namespace", id="namespace-dot"),
    pytest.param(_set_meta("namespace", "a/../../b"), "metadata.namespace",
                 id="namespace-slash"),
    pytest.param(_set_meta("uid", ".."), "metadata.uid", id="uid-dotdot"),
    pytest.param(_set_meta("uid", "../../../etc"), "metadata.uid", id="uid-slash"),
    pytest.param(_set_meta("uid", "a\0b"), "metadata.uid", id="uid-nul"),
    pytest.param(_set_meta("name", "vm\nx"), "metadata.name", id="name-newline"),
    # volume / disk names: vmi-disks/<volume>/, disk-data/<volume>/, empty-disks/<volume>
    pytest.param(_rename("pvc", ".."), f"{D}[1].name", id="pvc-dotdot"),
    pytest.param(_rename("pvc", "../../../etc"), f"{D}[1].name", id="pvc-slash"),
    pytest.param(_rename("empty", "../x"), f"{D}[5].name", id="emptydisk-slash"),
    pytest.param(_rename("cd", "."), f"{D}[0].name", id="containerdisk-dot"),
    pytest.param(_rename("hd", "/etc"), f"{D}[3].name", id="hostdisk-absolute"),
    pytest.param(_rename("lun", "../sda"), f"{D}[7].name", id="lun-slash"),
    # hostDisk.path: absolute and normalized, never the root
    pytest.param(_volume("hd", path="../../etc/shadow"), f"{V}[3].hostDisk.path",
                 id="hostdisk-relative"),
    pytest.param(_volume("hd", path="/data/../../etc/shadow"), f"{V}[3].hostDisk.path",
                 id="hostdisk-dotdot"),
    pytest.param(_volume("hd", path="/data/.."), f"{V}[3].hostDisk.path",
                 id="hostdisk-ends-dotdot"),
    pytest.param(_volume("hd", path="/"), f"{V}[3].hostDisk.path", id="hostdisk-root"),
    pytest.param(_volume("hd", path="/data/./x.img"), f"{V}[3].hostDisk.path",
                 id="hostdisk-not-normalized"),
    pytest.param(_volume("hdc", path="/data/"), f"{V}[4].hostDisk.path",
                 id="hostdisk-directory"),
    # kernel boot artifacts: absolute, no "..", a file name
    pytest.param(_kernel(kernelPath="/boot/../../etc/shadow"), f"{KB}.kernelPath",
                 id="kernel-dotdot"),
    pytest.param(_kernel(kernelPath="boot/vmlinuz"), f"{KB}.kernelPath",
                 id="kernel-relative"),
    pytest.param(_kernel(kernelPath="/boot/.."), f"{KB}.kernelPath", id="kernel-ends-dotdot"),
    pytest.param(_kernel(kernelPath="/boot/."), f"{KB}.kernelPath", id="kernel-ends-dot"),
    pytest.param(_kernel(initrdPath="/boot/"), f"{KB}.initrdPath", id="initrd-directory"),
    pytest.param(_kernel(initrdPath="/boot/x\0y"), f"{KB}.initrdPath", id="initrd-nul"),
]


@pytest.mark.parametrize(("mutate", "field"), ESCAPES)
def test_escape_attempts_are_refused_naming_the_field(mutate: Any, field: str) -> None:
    doc = base()
    mutate(doc)
    with pytest.raises(ConversionError) as err:
        convert(doc, OPTS)
    assert err.value.path == field, str(err.value)
    assert str(err.value).startswith(f"{field}: "), str(err.value)


@pytest.mark.parametrize(("mutate", "expected"), [
    # Only the basename of a hostDisk path is used: virt-handler mounts its directory
    # at vmi-disks/<volume>.
    (_volume("hd", path="/var/lib/../lib/x.img"), None),  # not normalized: refused above
    (_volume("hd", path="/etc/shadow"),
     f"{OPTS.private_dir}/vmi-disks/hd/shadow"),
    # containerDisk.path (where in the image) is virt-handler's: never a path here.
    (_volume("cd", path="/../../../etc/shadow"), f"{OPTS.container_disk_dir}/disk_0.img"),
    (_volume("cd", image="../../etc/shadow"), f"{OPTS.container_disk_dir}/disk_0.img"),
    # A kernel path anywhere in the image becomes its name under kernel-boot/.
    (_kernel(kernelPath="/etc/shadow"), f"{OPTS.container_disk_dir}/kernel-boot/shadow"),
], ids=["not-normalized", "hostdisk-basename", "containerdisk-path", "containerdisk-image",
        "kernel-basename"])
def test_paths_the_vmi_spells_out_only_contribute_a_name(mutate: Any,
                                                         expected: str | None) -> None:
    doc = base()
    mutate(doc)
    if expected is None:
        with pytest.raises(ConversionError):
            convert(doc, OPTS)
        return
    paths = produced_paths(convert(doc, OPTS))
    assert expected in paths
    for path in paths:
        confined(path)


# --- random hostile values in every field a path is built from -------------------------------
HOSTILE = st.one_of(
    st.sampled_from(["..", ".", "../x", "x/..", "a/../../b", "/etc/shadow", "//x", "/",
                     "", "~", "a\0b", "a/b", "...", "x\n", "%2e%2e", "\\..\\x", "-"]),
    st.text(alphabet=st.sampled_from("./\\a-_\0\n~"), max_size=8),
    st.text(max_size=8),
)
FIELDS = ["name", "namespace", "uid", "pvc", "empty", "cd", "hd-path", "hdc-path", "kernel",
          "initrd", "cd-path"]


def _apply(doc: dict[str, Any], field: str, value: str) -> None:
    if field in ("name", "namespace", "uid"):
        doc["metadata"][field] = value
    elif field in ("pvc", "empty", "cd"):
        _rename(field, value)(doc)
    elif field in ("hd-path", "hdc-path"):
        _volume(field.removesuffix("-path"), path=value)(doc)
    elif field == "cd-path":
        _volume("cd", path=value)(doc)
    elif field == "kernel":
        _kernel(kernelPath=value)(doc)
    else:
        _kernel(initrdPath=value)(doc)


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(FIELDS), HOSTILE), min_size=1, max_size=4))
def test_random_hostile_names_are_refused_or_stay_confined(
        changes: list[tuple[str, str]]) -> None:
    doc = base()
    for field, value in changes:
        _apply(doc, field, value)
    try:
        conv = convert(doc, OPTS)
    except ConversionError as exc:
        assert exc.path and exc.reason, exc
        return
    for path in produced_paths(conv):
        confined(path)
