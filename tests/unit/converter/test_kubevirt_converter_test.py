"""The VMI of KubeVirt's own converter test converts to the domain KubeVirt's converter
expects for it, element by element, except for the differences listed here with their
reasons.

KubeVirt's test (pkg/virt-launcher/virtwrap/converter/converter_test.go, "should be
converted to a libvirt Domain with vmi defaults set", entry "for amd64") builds its VMI in
Go and compares the result with testdata/domain_x86_64.xml. Here:
- data/kubevirt_converter_test_vmi.yaml is our YAML of that VMI (two changes, see DIFFERENCES
  and the file's header);
- the test calls SetObjectDefaults and SetAmd64Defaults on it: our equivalent is
  launcher.converter.defaults.apply (KubeVirt's webhook defaults, a superset);
- its ConverterContext maps to ConvertOptions: SMBios{} (all empty), MemBalloonStatsPeriod
  10, FreePageReporting and SerialConsoleLog on (our defaults), IsBlockPVC / IsBlockDV for
  the two block volumes (block_volumes), DomainAttachmentByInterfaceName default: tap
  (interface_attachment), AllowEmulation with a hypervisor device present (kvm: emulation
  off);
- data/kubevirt_domain_x86_64_elements.txt is our element-by-element transcription of
  the expected XML (one line per element: path keyed by alias / name / type, attributes,
  text), made by `python -m tests.unit.converter.test_kubevirt_converter_test <xml>`;
  test_transcription_matches_kubevirt checks it against KubeVirt's file when the KubeVirt
  mirror is on this machine.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher.converter import ConversionError, ConvertOptions, SMBios, convert, defaults
from tests.unit.converter import support

DATA = Path(__file__).parent / "data"
TRANSCRIPTION = DATA / "kubevirt_domain_x86_64_elements.txt"
KUBEVIRT_XML = "pkg/virt-launcher/virtwrap/converter/testdata/domain_x86_64.xml"
KV = "{http://kubevirt.io}"

Element = tuple[dict[str, str], str | None]

OPTIONS = ConvertOptions(
    smbios=SMBios(manufacturer="", product="", family="", version="", sku=""),
    mem_balloon_stats_period=10,
    block_volumes=frozenset({"pvc-block-test", "dv-block-test"}),
    interface_attachment={"default": "tap"},
)

# Our copy's names: virt-api admits only DNS-1123 labels as disk and volume names, and so
# does this converter; KubeVirt's Go test skips admission and uses "_".
RENAMES = {name: name.replace("_", "-") for name in (
    "cdrom_tray_unspecified", "cdrom_tray_open", "should_default_to_disk", "ephemeral_pvc",
    "secret_test", "configmap_test", "pvc_block_test", "dv_block_test",
    "serviceaccount_test", "sysprep_secret")}

ABSENT = None
CACHE_NONE = ("an unset cache is 'none' here: KubeVirt probes O_DIRECT when it starts the "
              "domain (none, else writethrough), a pure conversion cannot (README)")
DEBUG_PATHS = ("KubeVirt's test uses its own directories (cloudinit.SetLocalDirectory, "
               "a mock ephemeral disk creator); ours are KubeVirt's production paths")
READONLY_ISO = ("generated ISOs are read-only here (cloud-init, sysprep); KubeVirt leaves "
                "them writable although it rewrites them every start")
SMBIOS_EMPTY = ("KubeVirt writes empty SMBIOS entries for empty options; libvirt drops "
                "them, we leave them out")
DISK_DRIVER = "devices/disk[ua-{}]/driver"


# Expected element -> (what we produce instead, or ABSENT; why).
DIFFERENCES: dict[str, tuple[Element | None, str]] = {
    **{f"sysinfo/system/entry[{key}]": (ABSENT, SMBIOS_EMPTY)
       for key in ("manufacturer", "family", "product", "sku", "version")},
    **{f"sysinfo/{key}": (ABSENT, "KubeVirt writes empty <bios>, <baseBoard>, <chassis>; "
                                  "ours only has a chassis when spec.domain.chassis is set")
       for key in ("bios", "baseBoard", "chassis")},
    "devices/interface[ua-default]/source": (
        ABSENT, "KubeVirt's converter writes an empty <source/> and its launcher's network "
                "set-up fills in the tap later; ours writes the tap (<target dev='tap0' "
                "managed='no'/>, as seed 001's running domain has it)"),
    "devices/disk[ua-nocloud]/source": (
        ({"file": "/var/run/kubevirt-ephemeral-disks/cloud-init-data/mynamespace/testvmi/"
                  "noCloud.iso"}, None), DEBUG_PATHS),
    "devices/disk[ua-ephemeral-pvc]/source": (
        ({"file": "/var/run/kubevirt-ephemeral-disks/disk-data/ephemeral-pvc/disk.qcow2"},
         None), DEBUG_PATHS),
    "devices/disk[ua-cdrom-tray-unspecified]/source": (
        ({"file": "/var/run/kubevirt-private/vmi-disks/cdrom-tray-unspecified/disk.img"},
         None), "KubeVirt's test gives this cdrom a second cloudInitNoCloud volume (both "
                "disks show the one ISO KubeVirt writes); this converter refuses a second "
                "cloud-init volume (test_second_cloud_init_volume_refused), so our copy "
                "backs it with a hostDisk"),
    **{f"devices/disk[ua-{name}]/source": (
        ({"dev": f"/dev/{name}"}, None),
        "KubeVirt also writes <source name='VOLUME'> on block disks; libvirt 9's schema "
        "has no name there (virt-xml-validate refuses it) and the alias already names "
        "the volume") for name in ("pvc-block-test", "dv-block-test")},
    **{DISK_DRIVER.format(name): (
        ({"error_policy": "stop", "name": "qemu", "type": "raw", "cache": "none"}
         | ({"discard": "unmap"} if discard else {}) | ({"iothread": thread} if thread else {}),
         None), CACHE_NONE)
       for name, discard, thread in (
           ("myvolume", True, "2"), ("nocloud", True, "3"), ("cdrom-tray-unspecified",
                                                            False, ""),
           ("cdrom-tray-open", False, ""), ("should-default-to-disk", True, ""),
           ("secret-test", True, ""), ("configmap-test", True, ""),
           ("serviceaccount-test", True, ""), ("sysprep", False, ""),
           ("sysprep-secret", False, ""))},
    f"metadata/{KV}kubevirt/{KV}uid": (
        ({}, "f4686d2c-6e8d-4335-b8fd-81bee22f4814"),
        "KubeVirt's manager adds the uid after conversion (its converter leaves it "
        "empty); ours converts it in, with the grace period"),
    "features/hyperv": (({"mode": "custom"}, None),
                        "libvirt's default mode, written out (libvirt shows it too)"),
    "features/smm": (({"state": "on"}, None), "libvirt's default state, written out"),
    "cpu/topology": (({"cores": "1", "dies": "1", "sockets": "1", "threads": "1"}, None),
                     "dies='1' written out (libvirt's default, seed 001's domain has it)"),
}

# Elements only we produce -> why (keys are regular expressions).
EXTRAS: dict[str, str] = {
    r"uuid": "the domain UUID = firmware.uuid; KubeVirt leaves <uuid> to libvirt, which "
             "takes the SMBIOS uuid: the same value",
    rf"metadata/{re.escape(KV)}kubevirt/{re.escape(KV)}graceperiod(/.*)?":
        "the grace period (spec.terminationGracePeriodSeconds 5), which KubeVirt's manager "
        "adds after conversion",
    r"currentMemory": "= <memory>; libvirt adds it when the domain is defined",
    r"on_(poweroff|reboot|crash)": "KubeVirt's manager / libvirt defaults (destroy, "
                                   "restart, destroy) written out by the converter",
    r"devices/disk\[ua-(nocloud|sysprep|sysprep-secret)\]/readonly": READONLY_ISO,
    r"devices/interface\[ua-default\]/target": "the tap KubeVirt's network set-up adds "
                                               "after conversion (see its <source>)",
    r"devices/controller\[pci:\d+\]": "pcie-root-ports for hotplug: KubeVirt's manager adds "
                                      "them when it defines the domain (placeholder "
                                      "interfaces; HEAD also sizes extra ports by memory), "
                                      "its converter does not; ours writes KubeVirt 1.2's "
                                      "count (seed 001) because the converter is the only "
                                      "place the domain is built",
}


def _key(el: ET.Element) -> str:
    if el.tag in ("disk", "interface", "input"):
        alias = el.find("alias")
        return f"{el.tag}[{'' if alias is None else alias.get('name')}]"
    if el.tag in ("entry", "timer"):
        return f"{el.tag}[{el.get('name')}]"
    if el.tag == "controller":
        return f"controller[{el.get('type')}:{el.get('index')}]"
    return el.tag


def flatten(root: ET.Element) -> dict[str, Element]:
    """Every element below <domain> by a path of tags keyed by alias / name / type:
    attributes and stripped text (None when empty); "." is <domain> itself."""
    out: dict[str, Element] = {".": (dict(root.attrib), None)}

    def walk(el: ET.Element, prefix: str) -> None:
        key = f"{prefix}/{_key(el)}" if prefix else _key(el)
        assert key not in out, f"two elements at {key}"
        out[key] = (dict(el.attrib), (el.text or "").strip() or None)
        for child in el:
            walk(child, key)

    for child in root:
        walk(child, "")
    return out


def read_transcription() -> dict[str, Element]:
    out: dict[str, Element] = {}
    for line in TRANSCRIPTION.read_text().splitlines():
        if line.startswith("#") or not line:
            continue
        key, attrs, text = line.split("\t")
        out[key] = (json.loads(attrs), json.loads(text))
    return out


def _renamed(value: str) -> str:
    for old in sorted(RENAMES, key=len, reverse=True):
        value = value.replace(old, RENAMES[old])
    return value


@pytest.fixture(scope="module")
def vmi() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DATA / "kubevirt_converter_test_vmi.yaml").read_text())
    return doc


@pytest.fixture(scope="module")
def ours(vmi: dict[str, Any]) -> dict[str, Element]:
    return flatten(support.tree(defaults.apply(vmi, "amd64"), OPTIONS))


@pytest.fixture(scope="module")
def expected() -> dict[str, Element]:
    return {_renamed(key): ({name: _renamed(value) for name, value in attrs.items()}, text)
            for key, (attrs, text) in read_transcription().items()}


def test_every_expected_element_matches_or_is_a_listed_difference(
        ours: dict[str, Element], expected: dict[str, Element]) -> None:
    matching = [key for key in expected if key not in DIFFERENCES]
    assert len(matching) == 124  # of 152: a change in either count is noticed
    for key in matching:
        assert ours.get(key) == expected[key], key
    for key, (instead, reason) in DIFFERENCES.items():
        assert key in expected, f"{key} is not in KubeVirt's domain ({reason})"
        assert ours.get(key) == instead, f"{key}: {ours.get(key)} ({reason})"
        assert ours.get(key) != expected[key]


def test_every_element_of_ours_is_expected_or_a_listed_extra(
        ours: dict[str, Element], expected: dict[str, Element]) -> None:
    extras = [key for key in ours if key not in expected]
    unexplained = [key for key in extras
                   if not any(re.fullmatch(pattern, key) for pattern in EXTRAS)]
    assert unexplained == []
    for pattern in EXTRAS:
        assert any(re.fullmatch(pattern, key) for key in extras), f"{pattern} unused"


def test_second_cloud_init_volume_refused(vmi: dict[str, Any]) -> None:
    """KubeVirt's own VMI (a second cloudInitNoCloud volume behind a cdrom)."""
    doc = defaults.apply(vmi, "amd64")
    doc["spec"]["volumes"][2] = {"name": "cdrom-tray-unspecified", "cloudInitNoCloud": {
        "userDataBase64": "1234", "networkDataBase64": "1234"}}
    with pytest.raises(ConversionError, match="only one cloud-init volume") as exc:
        convert(doc, OPTIONS)
    assert exc.value.path == "spec.volumes[2].cloudInitNoCloud"


def test_underscore_names_refused(vmi: dict[str, Any]) -> None:
    """KubeVirt's names as its Go test has them: refused, as virt-api refuses them."""
    doc = defaults.apply(vmi, "amd64")
    doc["spec"]["domain"]["devices"]["disks"][5]["name"] = "ephemeral_pvc"
    with pytest.raises(ConversionError, match="DNS-1123") as exc:
        convert(doc, OPTIONS)
    assert exc.value.path == "spec.domain.devices.disks[5].name"


def main() -> int:
    """Print the transcription of a KubeVirt expected-domain XML file."""
    root = ET.parse(sys.argv[1]).getroot()
    print("# KubeVirt's expected domain for its converter test's VMI, element by element "
          "(tests/unit/converter/test_kubevirt_converter_test.py flatten()):")
    print(f"# {KUBEVIRT_XML}, kubevirt/kubevirt {sys.argv[2] if len(sys.argv) > 2 else ''}")
    for key, (attrs, text) in flatten(root).items():
        print(f"{key}\t{json.dumps(attrs, sort_keys=True)}\t{json.dumps(text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
