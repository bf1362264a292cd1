"""What crosses the hook API besides XML: PreCloudInitIso's JSON both ways
(launcher.hooks.cloudinit), and the SMBIOS example's edit of our own domain XML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from hack.hooks.smbios import board_fields, set_base_board
from launcher.converter.plan import CloudInitIso
from launcher.hooks.cloudinit import CloudInitResultError, apply, params

NOCLOUD = CloudInitIso("ci", "/e/noCloud.iso", "noCloud", user_data=b"#cloud-config\n",
                       meta_data=b'{"instance-id":"vm.ns","local-hostname":"vm"}',
                       network_data=b"version: 2\n")
DRIVE = CloudInitIso("ci", "/e/configdrive.iso", "configDrive", user_data=b"#!/bin/sh\n",
                     meta_data=b'{"instance_id":"vm.ns","uuid":"u"}')


def test_params_are_kubevirts_cloud_init_data_and_no_cloud_source() -> None:
    data, source = params(NOCLOUD)
    assert json.loads(data) == {
        "DataSource": "noCloud",
        "NoCloudMetaData": {"instance-id": "vm.ns", "local-hostname": "vm"},
        "ConfigDriveMetaData": None, "UserData": "#cloud-config\n",
        "NetworkData": "version: 2\n", "DevicesData": None, "VolumeName": "ci"}
    assert json.loads(source) == {"userData": "#cloud-config\n", "networkData": "version: 2\n"}
    drive = json.loads(params(DRIVE)[0])
    assert drive["NoCloudMetaData"] is None
    assert drive["ConfigDriveMetaData"] == {"instance_id": "vm.ns", "uuid": "u"}


def test_an_unchanged_result_keeps_the_exact_bytes_even_when_not_utf8() -> None:
    gz = CloudInitIso("ci", "/e/noCloud.iso", "noCloud", user_data=b"\x1f\x8b\x08\xff",
                      meta_data=b'{"instance-id":"i"}')
    data, source = params(gz)
    assert apply(gz, data, b"") == gz  # the sidecar gave back what it got
    assert apply(gz, b"", source) == gz


def test_a_valid_result_replaces_data_and_metadata() -> None:
    data = json.loads(params(NOCLOUD)[0])
    data.update(UserData="#cloud-config\nruncmd: [x]\n", NetworkData="",
                NoCloudMetaData={"instance-id": "other"})
    out = apply(NOCLOUD, json.dumps(data).encode(), b"")
    assert out.user_data == b"#cloud-config\nruncmd: [x]\n"
    assert out.network_data is None
    assert json.loads(out.meta_data) == {"instance-id": "other"}
    assert (out.path, out.kind, out.volume) == (NOCLOUD.path, NOCLOUD.kind, NOCLOUD.volume)


def test_an_invalid_cloud_init_data_falls_back_to_the_no_cloud_source() -> None:
    # KubeVirt's rule: no user data or no metadata object -> use cloudInitNoCloudSource
    data = json.dumps({"DataSource": "noCloud", "UserData": "ignored"}).encode()
    out = apply(NOCLOUD, data, json.dumps({"userData": "new\n"}).encode())
    assert (out.user_data, out.network_data, out.meta_data) == (b"new\n", None,
                                                                NOCLOUD.meta_data)


@pytest.mark.parametrize(("data", "source", "message"), [
    (b"{", b"", "cloudInitData is not valid JSON: "),
    (b"[1]", b"", "cloudInitData is not a JSON object"),
    (b"", b"", "neither a valid cloudInitData (user data and metadata) nor a "
               "cloudInitNoCloudSource was returned"),
    (b"", b'{"userData": 5}', "cloudInitNoCloudSource.userData: expected a string"),
    (json.dumps({"DataSource": "configDrive", "UserData": "x",
                 "ConfigDriveMetaData": {}}).encode(), b"",
     "cloudInitData.DataSource: 'configDrive' differs from the VMI's 'noCloud'; a hook "
     "cannot change it"),
    (json.dumps({"DataSource": "noCloud", "UserData": "x",
                 "ConfigDriveMetaData": {}}).encode(), b"",
     "cloudInitData.NoCloudMetaData: expected an object for a noCloud data source"),
])
def test_unusable_results_are_named(data: bytes, source: bytes, message: str) -> None:
    with pytest.raises(CloudInitResultError) as err:
        apply(NOCLOUD, data, source)
    assert str(err.value).startswith(message), str(err.value)


OURS = """<domain type='qemu'><name>ns_vm</name><uuid>u</uuid>
  <os><type>hvm</type></os>
  <sysinfo type='smbios'><system><entry name='manufacturer'>KubeVirt</entry></system>
    <chassis><entry name='asset'>a</entry></chassis></sysinfo>
</domain>"""


def test_smbios_example_edits_our_sysinfo_in_libvirts_order() -> None:
    vmi = {"metadata": {"annotations": {
        "smbios.vm.kubevirt.io/baseBoardManufacturer": "Acme",
        "smbios.vm.kubevirt.io/baseBoardSerial": "S-1", "unrelated": "x"}}}
    fields = board_fields(vmi)
    assert fields == {"manufacturer": "Acme", "serial": "S-1"}
    root = ET.fromstring(set_base_board(OURS.encode(), fields))
    sysinfo = root.find("sysinfo")
    assert sysinfo is not None
    assert [c.tag for c in sysinfo] == ["system", "baseBoard", "chassis"]
    assert {e.get("name"): e.text for e in sysinfo.iterfind("baseBoard/entry")} == fields
    assert root.find("os/smbios").get("mode") == "sysinfo"  # type: ignore[union-attr]
    assert board_fields({"metadata": {}}) == {} and board_fields({}) == {}
