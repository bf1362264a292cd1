"""launcher.guest.info: raw guest agent replies -> the JSON KubeVirt's virt-launcher serves.

Fixtures follow what the test guest's qemu-ga really returned (reference real-components.md
section 6); expected shapes follow kubevirt/kubevirt types.go / manager.go / agent_poller.go.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from launcher.guest.info import (
    FSFREEZE_STATUS,
    FSINFO,
    GUEST_INFO,
    HOSTNAME,
    INTERFACES,
    LOAD,
    OSINFO,
    TIMEZONE,
    USERS,
    domain_status_fields,
    filesystems_json,
    guest_info_json,
    interfaces_for_change_detection,
    os_info_for_change_detection,
    users_json,
)

GUEST_MAC = "52:54:00:fe:a5:01"
GUEST_IP = "192.0.2.10"

AGENT_INFO = {
    "version": "10.0.2",
    "supported_commands": [
        {"enabled": True, "name": "guest-get-osinfo", "success-response": True},
        {"enabled": True, "name": "guest-fsfreeze-freeze", "success-response": True},
        {"enabled": False, "name": "guest-exec", "success-response": True},
        {"enabled": True, "name": "guest-shutdown", "success-response": False},
    ],
}
OS_INFO = {
    "name": "Feas Busybox Guest",
    "kernel-release": "6.1.0-56-amd64",
    "version": "1.0",
    "pretty-name": "Feas Busybox Guest 1.0",
    "version-id": "1.0",
    "kernel-version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.140-1 (2025-05-22)",
    "machine": "x86_64",
    "id": "feasguest",
}


def stats(tx: int = 0) -> dict[str, int]:
    return {"rx-bytes": 1208 + tx, "rx-dropped": 0, "rx-errs": 0, "rx-packets": 14 + tx,
            "tx-bytes": 0, "tx-dropped": 0, "tx-errs": 0, "tx-packets": tx}


LO = {
    "name": "lo",
    "hardware-address": "00:00:00:00:00:00",
    "ip-addresses": [
        {"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8},
        {"ip-address-type": "ipv6", "ip-address": "::1", "prefix": 128},
    ],
    "statistics": stats(),
}
ETH0 = {
    "name": "eth0",
    "hardware-address": GUEST_MAC,
    "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": GUEST_IP, "prefix": 24}],
    "statistics": stats(),
}
FS_VDA = {
    "name": "vda",
    "mountpoint": "/mnt/data",
    "type": "ext4",
    "total-bytes": 13237248,
    "disk": [{"bus-type": "virtio", "bus": 0, "unit": 0, "target": 0, "dev": "/dev/vda",
              "pci-controller": {"domain": 0, "bus": 5, "slot": 0, "function": 0}}],
}


def real_guest() -> dict[str, Any]:
    """What our busybox test guest's qemu-ga answered, per command."""
    return {
        GUEST_INFO: copy.deepcopy(AGENT_INFO),
        OSINFO: dict(OS_INFO),
        HOSTNAME: {"host-name": "feasguest"},
        TIMEZONE: {"zone": "UTC", "offset": 0},
        INTERFACES: [copy.deepcopy(LO), copy.deepcopy(ETH0)],
        USERS: [],
        FSINFO: [copy.deepcopy(FS_VDA)],
        FSFREEZE_STATUS: "thawed",
        LOAD: {"load1": 0.0, "load5": 0.01, "load15": 0.0},
    }


OS_JSON = {
    "name": "Feas Busybox Guest",
    "kernelRelease": "6.1.0-56-amd64",
    "version": "1.0",
    "prettyName": "Feas Busybox Guest 1.0",
    "versionId": "1.0",
    "kernelVersion": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.140-1 (2025-05-22)",
    "machine": "x86_64",
    "id": "feasguest",
}
FS_VDA_JSON = {"diskName": "vda", "mountPoint": "/mnt/data", "fileSystemType": "ext4",
               "usedBytes": 0, "totalBytes": 13237248, "disk": [{"busType": "virtio"}]}


# --- GetGuestInfo ----------------------------------------------------------------------------
def test_guest_info_real_guest_exact() -> None:
    info = guest_info_json(real_guest())
    assert info == {
        "guestAgentVersion": "10.0.2",
        "supportedCommands": [
            {"name": "guest-get-osinfo", "enabled": True},
            {"name": "guest-fsfreeze-freeze", "enabled": True},
            {"name": "guest-exec"},  # enabled=false is omitempty
            {"name": "guest-shutdown", "enabled": True},
        ],
        "hostname": "feasguest",
        "os": OS_JSON,
        "timezone": "UTC, 0",
        # no "userList": an empty list is omitempty
        "fsInfo": {"disks": [FS_VDA_JSON]},
        "fsFreezeStatus": "thawed",
    }
    # Go's field order, so json.dumps matches json.Marshal key for key
    assert list(info) == ["guestAgentVersion", "supportedCommands", "hostname", "os",
                          "timezone", "fsInfo", "fsFreezeStatus"]
    assert list(info["os"]) == list(OS_JSON)


def test_guest_info_without_any_agent_data_is_the_go_zero_value() -> None:
    # os / timezone / fsInfo are not omitempty-able in Go; timezone is Sprintf("%s, %d")
    assert guest_info_json({}) == {"os": {}, "timezone": ", 0", "fsInfo": {"disks": None}}
    assert json.dumps(guest_info_json({}), separators=(",", ":")) == \
        '{"os":{},"timezone":", 0","fsInfo":{"disks":null}}'


def test_guest_info_partial_os_and_timezone_without_zone() -> None:
    raw = {OSINFO: {"name": "Feas Busybox Guest", "kernel-release": "6.1.0-56-amd64",
                    "id": "feasguest", "machine": "x86_64"},
           TIMEZONE: {"offset": 3600}}
    info = guest_info_json(raw)
    assert info["os"] == {"name": "Feas Busybox Guest", "kernelRelease": "6.1.0-56-amd64",
                          "machine": "x86_64", "id": "feasguest"}
    assert info["timezone"] == ", 3600"
    assert guest_info_json({TIMEZONE: {"zone": "CET", "offset": -7200}})["timezone"] == \
        "CET, -7200"


def test_guest_info_users_populated() -> None:
    raw = real_guest()
    raw[USERS] = [
        {"user": "root", "login-time": 1719000000.123456},
        {"user": "Administrator", "domain": "FEAS", "login-time": 1719000123.9999},
    ]
    assert guest_info_json(raw)["userList"] == [
        # libvirt keeps whole milliseconds (truncated), KubeVirt turns them into seconds
        {"userName": "root", "loginTime": 1719000000.123},
        {"userName": "Administrator", "domain": "FEAS", "loginTime": 1719000123.999},
    ]


def test_guest_info_caps_users_and_filesystems_at_ten() -> None:
    raw = real_guest()
    raw[USERS] = [{"user": f"u{i}", "login-time": 1700000000 + i} for i in range(12)]
    raw[FSINFO] = [dict(FS_VDA, name=f"vd{chr(97 + i)}", mountpoint=f"/mnt/{i}")
                   for i in range(12)]
    info = guest_info_json(raw)
    assert [u["userName"] for u in info["userList"]] == [f"u{i}" for i in range(10)]
    assert [f["mountPoint"] for f in info["fsInfo"]["disks"]] == [f"/mnt/{i}" for i in range(10)]
    # GetUsers / GetFilesystems are not capped
    assert len(users_json(raw)) == 12
    assert len(filesystems_json(raw)) == 12


def test_guest_info_fsfreeze_frozen_and_absent() -> None:
    raw = real_guest()
    raw[FSFREEZE_STATUS] = "frozen"
    assert guest_info_json(raw)["fsFreezeStatus"] == "frozen"
    del raw[FSFREEZE_STATUS]
    assert "fsFreezeStatus" not in guest_info_json(raw)


def test_guest_info_empty_fsinfo_is_null_disks() -> None:
    # the guest without a data disk (initramfs only) answers []
    raw = real_guest()
    raw[FSINFO] = []
    assert guest_info_json(raw)["fsInfo"] == {"disks": None}


# --- GetUsers / GetFilesystems ---------------------------------------------------------------
def test_users_json_empty_and_missing_are_an_empty_array() -> None:
    assert users_json({USERS: []}) == []
    assert users_json({}) == []
    assert json.dumps(users_json({})) == "[]"


def test_users_json_populated() -> None:
    raw = {USERS: [{"user": "root", "login-time": 1719000000.5},
                   {"user": "FEAS\\alice", "domain": "FEAS", "login-time": 1719000001}]}
    assert users_json(raw) == [
        {"userName": "root", "loginTime": 1719000000.5},
        {"userName": "FEAS\\alice", "domain": "FEAS", "loginTime": 1719000001.0},
    ]


def test_filesystems_json_exact() -> None:
    raw = {FSINFO: [
        dict(FS_VDA, **{"used-bytes": 24576}),
        {"name": "sda1", "mountpoint": "/", "type": "xfs", "used-bytes": 1 << 30,
         "total-bytes": 10 << 30,
         "disk": [{"serial": "QM00001", "bus-type": "scsi", "dev": "/dev/sda"},
                  {"bus-type": "sata"}]},
        {"name": "tmpfs", "mountpoint": "/run", "type": "tmpfs", "disk": []},
    ]}
    assert filesystems_json(raw) == [
        dict(FS_VDA_JSON, usedBytes=24576),
        {"diskName": "sda1", "mountPoint": "/", "fileSystemType": "xfs",
         "usedBytes": 1 << 30, "totalBytes": 10 << 30,
         "disk": [{"serial": "QM00001", "busType": "scsi"}, {"busType": "sata"}]},
        # no disks -> "disk" omitted (omitempty on an empty slice)
        {"diskName": "tmpfs", "mountPoint": "/run", "fileSystemType": "tmpfs",
         "usedBytes": 0, "totalBytes": 0},
    ]
    assert list(filesystems_json(raw)[1]["disk"][0]) == ["serial", "busType"]
    assert filesystems_json({}) == []


# --- domain status ---------------------------------------------------------------------------
def test_domain_status_fields_real_guest_exact() -> None:
    assert domain_status_fields(real_guest()) == {
        "Interfaces": [{"Mac": GUEST_MAC, "Ip": GUEST_IP, "IPs": [GUEST_IP],
                        "InterfaceName": "eth0"}],
        "OSInfo": {"Name": "Feas Busybox Guest", "KernelRelease": "6.1.0-56-amd64",
                   "Version": "1.0", "PrettyName": "Feas Busybox Guest 1.0",
                   "VersionId": "1.0",
                   "KernelVersion": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.140-1 (2025-05-22)",
                   "Machine": "x86_64", "Id": "feasguest"},
        "FSFreezeStatus": {"Status": "thawed"},
    }


def test_domain_status_fields_only_existing_data() -> None:
    assert domain_status_fields({}) == {}
    assert domain_status_fields({FSFREEZE_STATUS: "frozen"}) == \
        {"FSFreezeStatus": {"Status": "frozen"}}
    # OSInfo has no omitempty: every field is present
    assert domain_status_fields({OSINFO: {"id": "feasguest"}}) == {"OSInfo": {
        "Name": "", "KernelRelease": "", "Version": "", "PrettyName": "", "VersionId": "",
        "KernelVersion": "", "Machine": "", "Id": "feasguest"}}
    # only lo -> no interfaces (Go's nil slice)
    assert domain_status_fields({INTERFACES: [LO]}) == {}


def test_interfaces_skip_lo_prefer_ipv4_and_no_prefix() -> None:
    eth1 = {"name": "eth1", "hardware-address": "52:54:00:fe:a5:02", "ip-addresses": [
        {"ip-address-type": "ipv6", "ip-address": "fe80::5054:ff:fefe:a502", "prefix": 64},
        {"ip-address-type": "ipv4", "ip-address": "198.51.100.7", "prefix": 24},
        {"ip-address-type": "ipv4", "ip-address": "198.51.100.8", "prefix": 24}]}
    v6only = {"name": "eth2", "hardware-address": "52:54:00:fe:a5:03", "ip-addresses": [
        {"ip-address-type": "ipv6", "ip-address": "2001:db8::3", "prefix": 64}]}
    bare = {"name": "eth3", "hardware-address": "52:54:00:fe:a5:04"}
    got = domain_status_fields({INTERFACES: [LO, eth1, v6only, bare]})["Interfaces"]
    assert got == [
        {"Mac": "52:54:00:fe:a5:02", "Ip": "198.51.100.7",
         "IPs": ["fe80::5054:ff:fefe:a502", "198.51.100.7", "198.51.100.8"],
         "InterfaceName": "eth1"},
        {"Mac": "52:54:00:fe:a5:03", "Ip": "2001:db8::3", "IPs": ["2001:db8::3"],
         "InterfaceName": "eth2"},
        {"Mac": "52:54:00:fe:a5:04", "Ip": "", "IPs": None, "InterfaceName": "eth3"},
    ]


def test_interface_aliases_merge_like_libvirt() -> None:
    alias = {"name": "eth0:1", "hardware-address": GUEST_MAC, "ip-addresses": [
        {"ip-address-type": "ipv4", "ip-address": "192.0.2.11", "prefix": 24}]}
    lo_alias = {"name": "lo:0", "ip-addresses": [
        {"ip-address-type": "ipv4", "ip-address": "127.0.0.2", "prefix": 8}]}
    got = domain_status_fields({INTERFACES: [ETH0, alias, LO, lo_alias]})["Interfaces"]
    assert got == [{"Mac": GUEST_MAC, "Ip": GUEST_IP, "IPs": [GUEST_IP, "192.0.2.11"],
                    "InterfaceName": "eth0"}]


# --- change detection ------------------------------------------------------------------------
def test_interfaces_change_detection_ignores_statistics_and_order() -> None:
    base = real_guest()
    busy = real_guest()
    busy[INTERFACES] = [dict(ETH0, statistics=stats(tx=5000)), dict(LO, statistics=stats(9))]
    assert interfaces_for_change_detection(base) == interfaces_for_change_detection(busy)

    two_ips: dict[str, Any] = dict(ETH0, **{"ip-addresses": [
        {"ip-address-type": "ipv4", "ip-address": GUEST_IP, "prefix": 24},
        {"ip-address-type": "ipv6", "ip-address": "2001:db8::10", "prefix": 64}]})
    eth1 = {"name": "eth1", "hardware-address": "52:54:00:fe:a5:02", "ip-addresses": []}
    a = {INTERFACES: [LO, two_ips, eth1]}
    b = {INTERFACES: [eth1, dict(two_ips, **{"ip-addresses": two_ips["ip-addresses"][::-1]}),
                      LO]}
    assert interfaces_for_change_detection(a) == interfaces_for_change_detection(b)
    hash(interfaces_for_change_detection(a))


def test_interfaces_change_detection_sees_real_changes() -> None:
    base = interfaces_for_change_detection(real_guest())
    new_ip = dict(ETH0, **{"ip-addresses": [
        {"ip-address-type": "ipv4", "ip-address": "192.0.2.99", "prefix": 24}]})
    new_mac = dict(ETH0, **{"hardware-address": "52:54:00:fe:a5:99"})
    renamed = dict(ETH0, name="ens3")
    extra = {"name": "eth1", "hardware-address": "52:54:00:fe:a5:02"}
    for ifaces in ([LO, new_ip], [LO, new_mac], [LO, renamed], [LO, ETH0, extra], [LO]):
        assert interfaces_for_change_detection({INTERFACES: ifaces}) != base, ifaces


def test_interfaces_change_detection_lo_and_absence_are_no_change() -> None:
    lo_only = interfaces_for_change_detection({INTERFACES: [LO]})
    assert lo_only == interfaces_for_change_detection({}) == ()
    # lo's own addresses never matter
    lo2 = dict(LO, **{"ip-addresses": []})
    assert interfaces_for_change_detection({INTERFACES: [ETH0, lo2]}) == \
        interfaces_for_change_detection({INTERFACES: [LO, ETH0]})


def test_os_info_change_detection() -> None:
    base = os_info_for_change_detection(real_guest())
    assert base == os_info_for_change_detection({OSINFO: dict(reversed(OS_INFO.items()))})
    assert base == os_info_for_change_detection({OSINFO: dict(OS_INFO, variant="x")})
    assert base != os_info_for_change_detection({OSINFO: dict(OS_INFO, version="2.0")})
    assert os_info_for_change_detection({}) == os_info_for_change_detection({OSINFO: {}})
    assert os_info_for_change_detection({}) != base
    hash(base)


# --- hostile / malformed agent data ----------------------------------------------------------
def test_malformed_entries_are_skipped() -> None:
    raw: dict[str, Any] = {
        GUEST_INFO: {"version": 10, "supported_commands": [
            None, "guest-ping", {"enabled": True}, {"name": "guest-ping", "enabled": "yes"}]},
        OSINFO: {"name": ["x"], "id": "feasguest", "machine": None},
        HOSTNAME: {"host-name": 42},
        TIMEZONE: {"zone": 7, "offset": "3600"},
        INTERFACES: [None, 7, {"hardware-address": GUEST_MAC}, {"name": None},
                     {"name": "eth0", "hardware-address": 5, "ip-addresses": [
                         None, {"ip-address-type": "ipv4"},
                         {"ip-address-type": "link", "ip-address": "x"},
                         {"ip-address-type": ["ipv4"], "ip-address": "1.2.3.4"},
                         {"ip-address-type": "ipv4", "ip-address": GUEST_IP}],
                      "statistics": "nope"}],
        USERS: [None, {"login-time": 1.0}, {"user": "root", "domain": None,
                                            "login-time": float("nan")},
                {"user": "bob", "login-time": -3}, {"user": "eve", "login-time": "1"}],
        FSINFO: [None, {"name": "vda", "used-bytes": 1.5, "total-bytes": True,
                        "disk": [None, {"serial": 3, "bus-type": None}]},
                 {"name": "vdb", "total-bytes": 1 << 70, "disk": "virtio"}],
        FSFREEZE_STATUS: "",
    }
    info = guest_info_json(raw)
    assert info == {
        "supportedCommands": [{"name": "guest-ping"}],
        "os": {"id": "feasguest"},
        "timezone": ", 0",
        "userList": [{"userName": "root"}, {"userName": "bob"}, {"userName": "eve"}],
        "fsInfo": {"disks": [
            {"diskName": "vda", "mountPoint": "", "fileSystemType": "", "usedBytes": 0,
             "totalBytes": 0, "disk": [{"busType": ""}]},
            {"diskName": "vdb", "mountPoint": "", "fileSystemType": "", "usedBytes": 0,
             "totalBytes": 0}]},
    }
    assert domain_status_fields(raw)["Interfaces"] == [
        {"Mac": "", "Ip": GUEST_IP, "IPs": [GUEST_IP], "InterfaceName": "eth0"}]
    assert "FSFreezeStatus" not in domain_status_fields(raw)


@pytest.mark.parametrize("bad", [None, 0, "x", [], {}, [None], {"a": 1}, 1.5, True])
def test_wrong_container_types_are_no_data(bad: Any) -> None:
    raw = {cmd: bad for cmd in (GUEST_INFO, OSINFO, HOSTNAME, TIMEZONE, INTERFACES, USERS,
                                FSINFO, FSFREEZE_STATUS, LOAD)}
    info = guest_info_json(raw)
    assert info["fsInfo"] == {"disks": None} and info["timezone"] == ", 0"
    assert users_json(raw) == [] and filesystems_json(raw) == []
    assert "Interfaces" not in domain_status_fields(raw)
    assert interfaces_for_change_detection(raw) == ()


def test_inputs_are_not_mutated() -> None:
    raw = real_guest()
    before = copy.deepcopy(raw)
    guest_info_json(raw)
    users_json(raw)
    filesystems_json(raw)
    domain_status_fields(raw)
    interfaces_for_change_detection(raw)
    os_info_for_change_detection(raw)
    assert raw == before


COMMANDS = [GUEST_INFO, OSINFO, HOSTNAME, TIMEZONE, INTERFACES, USERS, FSINFO,
            FSFREEZE_STATUS, LOAD]
AGENT_KEYS = ["version", "supported_commands", "name", "enabled", "success-response",
              "kernel-release", "pretty-name", "version-id", "kernel-version", "machine", "id",
              "host-name", "zone", "offset", "hardware-address", "ip-addresses",
              "ip-address-type", "ip-address", "prefix", "statistics", "user", "domain",
              "login-time", "mountpoint", "type", "used-bytes", "total-bytes", "disk",
              "serial", "bus-type", "dev"]
scalars = (st.none() | st.booleans() | st.integers() | st.floats()
           | st.sampled_from(["ipv4", "ipv6", "lo", "eth0:1", "frozen", "thawed", ""])
           | st.text(max_size=8))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(AGENT_KEYS) | st.text(max_size=4), inner, max_size=6),
    max_leaves=40)
raw_replies = st.dictionaries(st.sampled_from(COMMANDS), json_values, max_size=len(COMMANDS))


@settings(max_examples=400, deadline=None)
@given(raw=raw_replies)
def test_never_raises_and_always_serializes(raw: dict[str, Any]) -> None:
    info = guest_info_json(raw)
    users = users_json(raw)
    filesystems = filesystems_json(raw)
    status = domain_status_fields(raw)
    for value in (info, users, filesystems, status):
        json.dumps(value, allow_nan=False)  # strict JSON: no NaN/Infinity ever leaks out
    assert set(info) >= {"os", "timezone", "fsInfo"}
    assert len(info.get("userList", [])) <= 10
    assert len(info["fsInfo"]["disks"] or []) <= 10
    assert set(status) <= {"Interfaces", "OSInfo", "FSFreezeStatus"}
    assert all(i["InterfaceName"] != "lo" for i in status.get("Interfaces", []))
    for detect in (interfaces_for_change_detection, os_info_for_change_detection):
        value = detect(raw)
        hash(value)
        assert value == detect(copy.deepcopy(raw))
