"""The generated gRPC code in launcher/_proto: fresh, and wire-compatible with KubeVirt.

The expected names, numbers and types below were checked against KubeVirt's own
pkg/handler-launcher-com/{cmd,notify}/{v1,info}/*.proto; virt-handler talks to us with code
generated from those, so any drift here is a wire break, not a refactoring.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor

from launcher._proto.kubevirt.cmd.info import info_pb2 as cmd_info_pb2
from launcher._proto.kubevirt.cmd.info import info_pb2_grpc as cmd_info_pb2_grpc
from launcher._proto.kubevirt.cmd.v1 import cmd_pb2, cmd_pb2_grpc
from launcher._proto.kubevirt.notify.info import info_pb2 as notify_info_pb2
from launcher._proto.kubevirt.notify.info import info_pb2_grpc as notify_info_pb2_grpc
from launcher._proto.kubevirt.notify.v1 import notify_pb2, notify_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
GEN = REPO / "hack" / "gen-protos.sh"
STALE_MSG = "generated protobuf code is stale: run hack/gen-protos.sh"


def _run_gen(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHON": sys.executable},
    )


# --- (a) freshness -----------------------------------------------------------------------


def test_generated_code_is_fresh() -> None:
    res = _run_gen(GEN, "--check")
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"


def test_check_detects_stale_code_and_regeneration_fixes_it(tmp_path: Path) -> None:
    # A copy of the relevant tree, so the real launcher/_proto is never touched.
    shutil.copytree(REPO / "proto", tmp_path / "proto")
    (tmp_path / "hack").mkdir()
    shutil.copy2(GEN, tmp_path / "hack" / "gen-protos.sh")
    shutil.copytree(
        REPO / "launcher" / "_proto",
        tmp_path / "launcher" / "_proto",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    script = tmp_path / "hack" / "gen-protos.sh"
    assert _run_gen(script, "--check").returncode == 0

    cmd_py = tmp_path / "launcher" / "_proto" / "kubevirt" / "cmd" / "v1" / "cmd_pb2.py"
    original = cmd_py.read_text()
    cmd_py.write_text(original + "# hand edit\n")
    res = _run_gen(script, "--check")
    assert res.returncode != 0
    assert STALE_MSG in res.stderr

    # A leftover module (e.g. of a deleted .proto) is stale too.
    cmd_py.write_text(original)
    assert _run_gen(script, "--check").returncode == 0
    (cmd_py.parent / "old_pb2.py").write_text("")
    assert _run_gen(script, "--check").returncode != 0

    regen = _run_gen(script)
    assert regen.returncode == 0, regen.stderr
    assert not (cmd_py.parent / "old_pb2.py").exists()
    assert _run_gen(script, "--check").returncode == 0


def test_generated_modules_import_as_a_package() -> None:
    assert cmd_pb2.__name__ == "launcher._proto.kubevirt.cmd.v1.cmd_pb2"
    assert cmd_pb2_grpc.__name__ == "launcher._proto.kubevirt.cmd.v1.cmd_pb2_grpc"
    # The message classes report the module they really live in (pickling, reprs).
    assert cmd_pb2.Response.__module__ == cmd_pb2.__name__
    assert notify_pb2.Response.__module__ == notify_pb2.__name__
    # The grpc modules use the message classes of our package, not a second copy.
    assert cmd_pb2_grpc.kubevirt_dot_cmd_dot_v1_dot_cmd__pb2 is cmd_pb2
    assert notify_pb2_grpc.kubevirt_dot_notify_dot_v1_dot_notify__pb2 is notify_pb2
    assert cmd_info_pb2_grpc.kubevirt_dot_cmd_dot_info_dot_info__pb2 is cmd_info_pb2
    assert notify_info_pb2_grpc.kubevirt_dot_notify_dot_info_dot_info__pb2 is notify_info_pb2
    for mod in (cmd_pb2, cmd_info_pb2, notify_pb2, notify_info_pb2):
        assert Path(mod.__file__).with_suffix(".pyi").is_file()


# --- (b) wire facts from the descriptors ---------------------------------------------------

_SCALARS = {
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
}


def _type_of(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        msg = field.message_type
        assert msg is not None
        if msg.GetOptions().map_entry:
            key, value = msg.fields_by_name["key"], msg.fields_by_name["value"]
            return f"map<{_type_of(key)},{_type_of(value)}>"
        name = msg.name
    else:
        name = _SCALARS[field.type]
    return f"repeated {name}" if field.is_repeated else name


def _schema(desc: Any) -> dict[str, tuple[int, str]]:
    """{field name: (number, type)}; desc is a message Descriptor (upb or pure Python)."""
    return {f.name: (f.number, _type_of(f)) for f in desc.fields}


def _methods(svc: ServiceDescriptor) -> dict[str, tuple[str, str]]:
    for m in svc.methods:
        assert not m.client_streaming
        assert not m.server_streaming
    return {m.name: (m.input_type.name, m.output_type.name) for m in svc.methods}


def _path(svc: ServiceDescriptor, rpc: str) -> str:
    return f"/{svc.full_name}/{svc.methods_by_name[rpc].name}"


CMD = cmd_pb2.DESCRIPTOR.services_by_name["Cmd"]
CMD_INFO = cmd_info_pb2.DESCRIPTOR.services_by_name["CmdInfo"]
NOTIFY = notify_pb2.DESCRIPTOR.services_by_name["Notify"]
NOTIFY_INFO = notify_info_pb2.DESCRIPTOR.services_by_name["NotifyInfo"]


def test_packages_and_full_method_names() -> None:
    assert cmd_pb2.DESCRIPTOR.package == "kubevirt.cmd.v1"
    assert cmd_info_pb2.DESCRIPTOR.package == "kubevirt.cmd.info"
    assert notify_pb2.DESCRIPTOR.package == "kubevirt.notify.v1"
    assert notify_info_pb2.DESCRIPTOR.package == "kubevirt.notify.info"
    assert _path(CMD, "Ping") == "/kubevirt.cmd.v1.Cmd/Ping"
    assert _path(CMD_INFO, "Info") == "/kubevirt.cmd.info.CmdInfo/Info"
    assert _path(NOTIFY, "HandleDomainEvent") == "/kubevirt.notify.v1.Notify/HandleDomainEvent"
    assert _path(NOTIFY, "HandleK8sEvent") == "/kubevirt.notify.v1.Notify/HandleK8sEvent"
    assert _path(NOTIFY_INFO, "Info") == "/kubevirt.notify.info.NotifyInfo/Info"


V, R = "VMIRequest", "Response"
E = "EmptyRequest"
EXPECTED_CMD_RPCS = {
    "SyncVirtualMachine": (V, R),
    "PauseVirtualMachine": (V, R),
    "UnpauseVirtualMachine": (V, R),
    "FreezeVirtualMachine": ("FreezeRequest", R),
    "UnfreezeVirtualMachine": (V, R),
    "ResetVirtualMachine": (V, R),
    "SoftRebootVirtualMachine": (V, R),
    "ShutdownVirtualMachine": (V, R),
    "KillVirtualMachine": (V, R),
    "DeleteVirtualMachine": (V, R),
    "MigrateVirtualMachine": ("MigrationRequest", R),
    "SyncMigrationTarget": (V, R),
    "CancelVirtualMachineMigration": (V, R),
    "SignalTargetPodCleanup": (V, R),
    "FinalizeVirtualMachineMigration": (V, R),
    "HotplugHostDevices": (V, R),
    "GetDomain": (E, "DomainResponse"),
    "GetDomainStats": (E, "DomainStatsResponse"),
    "GetGuestInfo": (E, "GuestInfoResponse"),
    "GetUsers": (E, "GuestUserListResponse"),
    "GetFilesystems": (E, "GuestFilesystemsResponse"),
    "GetDevices": (E, "GuestDevicesResponse"),
    "Ping": (E, R),
    "Exec": ("ExecRequest", "ExecResponse"),
    "GuestPing": ("GuestPingRequest", "GuestPingResponse"),
    "VirtualMachineMemoryDump": ("MemoryDumpRequest", R),
    "GetQemuVersion": (E, "QemuVersionResponse"),
    "SyncVirtualMachineCPUs": (V, R),
    "SyncVirtualMachineMemory": (V, R),
    "GetSEVInfo": (E, "SEVInfoResponse"),
    "GetLaunchMeasurement": (V, "LaunchMeasurementResponse"),
    "InjectLaunchSecret": ("InjectLaunchSecretRequest", R),
    "GetDomainDirtyRateStats": (E, "DirtyRateStatsResponse"),
    "GetScreenshot": (V, "ScreenshotResponse"),
    "BackupVirtualMachine": ("BackupRequest", R),
    "RedefineCheckpoint": ("RedefineCheckpointRequest", "RedefineCheckpointResponse"),
    "GetVMStats": ("VMStatsRequest", "VMStatsResponse"),
}


def test_cmd_rpcs() -> None:
    assert set(_methods(CMD)) == set(EXPECTED_CMD_RPCS)
    assert _methods(CMD) == EXPECTED_CMD_RPCS
    assert _methods(CMD_INFO) == {"Info": ("CmdInfoRequest", "CmdInfoResponse")}
    assert _methods(NOTIFY) == {
        "HandleDomainEvent": ("DomainEventRequest", "Response"),
        "HandleK8sEvent": ("K8sEventRequest", "Response"),
    }
    assert _methods(NOTIFY_INFO) == {"Info": ("NotifyInfoRequest", "NotifyInfoResponse")}
    # Notify's Response is its own message, with the same shape as Cmd's.
    assert NOTIFY.methods_by_name["HandleK8sEvent"].output_type.full_name == (
        "kubevirt.notify.v1.Response"
    )


def _wrapper(payload: str, typ: str) -> dict[str, tuple[int, str]]:
    return {"response": (1, "Response"), payload: (2, typ)}


def _vmi_and(name: str, typ: str) -> dict[str, tuple[int, str]]:
    return {"vmi": (1, "VMI"), name: (2, typ)}


EXPECTED_CMD_MESSAGES: dict[str, dict[str, tuple[int, str]]] = {
    "Response": {"success": (1, "bool"), "message": (2, "string")},
    "EmptyRequest": {},
    "VMI": {"vmiJson": (1, "bytes")},
    "VMIRequest": {"vmi": (1, "VMI"), "options": (2, "VirtualMachineOptions")},
    "FreezeRequest": _vmi_and("unfreezeTimeoutSeconds", "int32"),
    "MemoryDumpRequest": _vmi_and("dumpPath", "string"),
    "MigrationRequest": _vmi_and("options", "bytes"),
    "InjectLaunchSecretRequest": _vmi_and("options", "bytes"),
    "BackupRequest": _vmi_and("options", "bytes"),
    "RedefineCheckpointRequest": _vmi_and("checkpoint", "bytes"),
    "RedefineCheckpointResponse": _wrapper("checkpointInvalid", "bool"),
    "ExecRequest": {
        "domainName": (1, "string"),
        "Command": (2, "string"),
        "Args": (3, "repeated string"),
        "timeoutSeconds": (4, "int32"),
    },
    "ExecResponse": {
        "response": (1, "Response"),
        "exitCode": (2, "int32"),
        "stdOut": (3, "string"),
    },
    "GuestPingRequest": {"domainName": (1, "string"), "timeoutSeconds": (2, "int32")},
    "GuestPingResponse": {"response": (1, "Response")},
    "DomainResponse": _wrapper("domain", "string"),
    "DomainStatsResponse": _wrapper("domainStats", "string"),
    "GuestInfoResponse": _wrapper("guestInfoResponse", "string"),
    "GuestUserListResponse": _wrapper("guestUserListResponse", "string"),
    "GuestFilesystemsResponse": _wrapper("guestFilesystemsResponse", "string"),
    "GuestDevicesResponse": _wrapper("guestDevicesResponse", "string"),
    "QemuVersionResponse": _wrapper("version", "string"),
    "SEVInfoResponse": _wrapper("sevInfo", "bytes"),
    "LaunchMeasurementResponse": _wrapper("launchMeasurement", "bytes"),
    "DirtyRateStatsResponse": _wrapper("dirtyRateMbs", "int64"),
    "ScreenshotResponse": {
        "response": (1, "Response"),
        "mime": (2, "string"),
        "data": (3, "bytes"),
    },
    "VirtualMachineOptions": {
        "VirtualMachineSMBios": (1, "SMBios"),
        "MemBalloonStatsPeriod": (2, "uint32"),
        "PreallocatedVolumes": (3, "repeated string"),
        "topology": (4, "Topology"),
        "DisksInfo": (5, "map<string,DiskInfo>"),
        "ExpandDisksEnabled": (6, "bool"),
        "clusterConfig": (7, "ClusterConfig"),
        "interfaceDomainAttachment": (8, "map<string,string>"),
        "interfaceMigration": (9, "map<string,InterfaceBindingMigration>"),
        "pluginsJson": (10, "bytes"),
        "GraceHostDeviceAliases": (11, "repeated string"),
    },
    "SMBios": {
        "manufacturer": (1, "string"),
        "product": (2, "string"),
        "version": (3, "string"),
        "sku": (4, "string"),
        "family": (5, "string"),
    },
    "DiskInfo": {
        "format": (1, "string"),
        "backingFile": (2, "string"),
        "actualSize": (3, "uint64"),
        "virtualSize": (4, "uint64"),
    },
    "ClusterConfig": {
        "ExpandDisksEnabled": (1, "bool"),
        "FreePageReportingDisabled": (2, "bool"),
        "BochsDisplayForEFIGuests": (3, "bool"),
        "SerialConsoleLogDisabled": (4, "bool"),
        "PCINUMAAwareTopologyEnabled": (5, "bool"),
        "VGPULiveMigrationEnabled": (6, "bool"),
        "GraceIOVirtualizationEnabled": (7, "bool"),
    },
    "InterfaceBindingMigration": {"Method": (1, "string")},
    "Topology": {"numa_cells": (1, "repeated Cell")},
    "Cell": {
        "id": (1, "uint32"),
        "memory": (2, "Memory"),
        "pages": (3, "repeated Pages"),
        "distances": (4, "repeated Sibling"),
        "cpus": (5, "repeated CPU"),
    },
    "CPU": {"id": (1, "uint32"), "siblings": (2, "repeated uint32")},
    "Sibling": {"id": (1, "uint32"), "value": (2, "uint64")},
    "Pages": {"count": (1, "uint64"), "unit": (2, "string"), "size": (3, "uint32")},
    "Memory": {"amount": (1, "uint64"), "unit": (2, "string")},
}

# GetVMStats: request item -> (request field number, its empty message), and response number.
VMSTATS_AGENT_ITEMS = {
    "guestGetLoad": (3, "AgentLoadRequest", 5),
    "guestGetCpuStats": (4, "AgentCpuStatsRequest", 6),
    "guestGetDiskStats": (5, "AgentDiskStatsRequest", 7),
    "guestGetTime": (6, "AgentTimeRequest", 8),
    "guestGetVcpus": (7, "AgentVcpusRequest", 9),
    "guestGetMemoryBlockInfo": (8, "AgentMemoryBlockInfoRequest", 10),
    "guestGetUsers": (9, "AgentUsersRequest", 11),
    "guestGetOsInfo": (10, "AgentOsInfoRequest", 12),
    "guestGetDisks": (11, "AgentDisksRequest", 13),
    "guestGetHostName": (12, "AgentHostNameRequest", 14),
    "guestGetTimezone": (13, "AgentTimezoneRequest", 15),
    "guestNetworkGetRoute": (14, "AgentNetworkRouteRequest", 16),
    "guestNetworkGetInterfaces": (15, "AgentNetworkInterfacesRequest", 17),
    "guestGetMemoryBlocks": (16, "AgentMemoryBlocksRequest", 18),
}


def test_cmd_messages() -> None:
    for name, expected in EXPECTED_CMD_MESSAGES.items():
        assert _schema(cmd_pb2.DESCRIPTOR.message_types_by_name[name]) == expected, name


def test_vmstats_messages() -> None:
    req = {"domainStats": (1, "DomainStatsRequest"), "dirtyRate": (2, "DirtyRateRequest")}
    resp = {
        "response": (1, "Response"),
        "domainStats": (2, "DomainStatsResponse"),
        "dirtyRateStats": (3, "DirtyRateStatsResponse"),
        "guestAgentVersion": (4, "Response"),
    }
    for item, (req_no, req_msg, resp_no) in VMSTATS_AGENT_ITEMS.items():
        req[item] = (req_no, req_msg)
        resp[item] = (resp_no, "Response")
    assert _schema(cmd_pb2.VMStatsRequest.DESCRIPTOR) == req
    assert _schema(cmd_pb2.VMStatsResponse.DESCRIPTOR) == resp
    for _, msg, _ in VMSTATS_AGENT_ITEMS.values():
        assert _schema(cmd_pb2.DESCRIPTOR.message_types_by_name[msg]) == {}


def test_info_and_notify_messages() -> None:
    assert _schema(cmd_info_pb2.CmdInfoRequest.DESCRIPTOR) == {}
    assert _schema(cmd_info_pb2.CmdInfoResponse.DESCRIPTOR) == {
        "supportedCmdVersions": (1, "repeated uint32"),
    }
    assert _schema(notify_info_pb2.NotifyInfoRequest.DESCRIPTOR) == {}
    assert _schema(notify_info_pb2.NotifyInfoResponse.DESCRIPTOR) == {
        "supportedNotifyVersions": (1, "repeated uint32"),
    }
    assert _schema(notify_pb2.DomainEventRequest.DESCRIPTOR) == {
        "domainJSON": (1, "bytes"),
        "statusJSON": (2, "bytes"),
        "eventType": (3, "string"),
    }
    assert _schema(notify_pb2.K8sEventRequest.DESCRIPTOR) == {"eventJSON": (1, "bytes")}
    assert _schema(notify_pb2.Response.DESCRIPTOR) == EXPECTED_CMD_MESSAGES["Response"]


# --- (c) encoding, checked against bytes built by hand ----------------------------------

VMI_JSON = b'{"kind":"VirtualMachineInstance"}'


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2); tag and length fit one byte here."""
    assert field < 16
    assert len(payload) < 128
    return bytes([field << 3 | 2, len(payload)]) + payload


def test_response_encoding() -> None:
    raw = b"\x08\x01\x12\x02ok"
    assert cmd_pb2.Response(success=True, message="ok").SerializeToString() == raw
    decoded = cmd_pb2.Response.FromString(raw)
    assert decoded.success is True
    assert decoded.message == "ok"
    assert notify_pb2.Response.FromString(raw) == notify_pb2.Response(success=True, message="ok")
    # proto3 defaults are not sent.
    assert cmd_pb2.Response().SerializeToString() == b""
    assert cmd_pb2.EmptyRequest().SerializeToString() == b""


def test_vmi_request_encoding() -> None:
    disk = _ld(1, b"qcow2") + b"\x18\x01"  # format, actualSize=1
    options = (
        b"\x10\x0a"  # MemBalloonStatsPeriod = 10
        + _ld(5, _ld(1, b"vda") + _ld(2, disk))  # DisksInfo["vda"]
        + _ld(7, b"\x38\x01")  # clusterConfig.GraceIOVirtualizationEnabled
        + _ld(11, b"hostdev0")  # GraceHostDeviceAliases
    )
    raw = _ld(1, _ld(1, VMI_JSON)) + _ld(2, options)
    msg = cmd_pb2.VMIRequest(
        vmi=cmd_pb2.VMI(vmiJson=VMI_JSON),
        options=cmd_pb2.VirtualMachineOptions(
            MemBalloonStatsPeriod=10,
            DisksInfo={"vda": cmd_pb2.DiskInfo(format="qcow2", actualSize=1)},
            clusterConfig=cmd_pb2.ClusterConfig(GraceIOVirtualizationEnabled=True),
            GraceHostDeviceAliases=["hostdev0"],
        ),
    )
    assert msg.SerializeToString() == raw
    assert cmd_pb2.VMIRequest.FromString(raw) == msg


def test_unknown_fields_are_tolerated() -> None:
    # A newer virt-handler may send fields we do not know (here: field 99, a varint).
    raw = _ld(1, _ld(1, VMI_JSON)) + b"\x98\x06\x01"
    assert cmd_pb2.VMIRequest.FromString(raw).vmi.vmiJson == VMI_JSON


def test_freeze_and_exec_encoding() -> None:
    raw = _ld(1, _ld(1, VMI_JSON)) + b"\x10\xac\x02"  # unfreezeTimeoutSeconds = 300
    freeze = cmd_pb2.FreezeRequest.FromString(raw)
    assert freeze.unfreezeTimeoutSeconds == 300
    assert freeze.SerializeToString() == raw

    raw = _ld(1, b"ns_vm") + _ld(2, b"ls") + _ld(3, b"-l") + _ld(3, b"/") + b"\x20\x05"
    req = cmd_pb2.ExecRequest(domainName="ns_vm", Command="ls", Args=["-l", "/"], timeoutSeconds=5)
    assert req.SerializeToString() == raw
    assert cmd_pb2.ExecRequest.FromString(raw) == req

    # exitCode is int32 (not sint32): -1 is a ten-byte varint, as Go sends it.
    raw = _ld(1, b"\x08\x01") + b"\x10" + b"\xff" * 9 + b"\x01" + _ld(3, b"x")
    resp = cmd_pb2.ExecResponse(response=cmd_pb2.Response(success=True), exitCode=-1, stdOut="x")
    assert resp.SerializeToString() == raw
    assert cmd_pb2.ExecResponse.FromString(raw).exitCode == -1


def test_info_versions_encoding() -> None:
    # proto3 packs repeated scalars; unpacked input must be accepted as well.
    packed, unpacked = b"\x0a\x01\x01", b"\x08\x01"
    assert cmd_info_pb2.CmdInfoResponse(supportedCmdVersions=[1]).SerializeToString() == packed
    for raw in (packed, unpacked):
        assert list(cmd_info_pb2.CmdInfoResponse.FromString(raw).supportedCmdVersions) == [1]
        assert list(notify_info_pb2.NotifyInfoResponse.FromString(raw).supportedNotifyVersions) == [
            1
        ]


def test_notify_encoding() -> None:
    raw = _ld(1, b"{}") + _ld(2, b"{}") + _ld(3, b"MODIFIED")
    ev = notify_pb2.DomainEventRequest(domainJSON=b"{}", statusJSON=b"{}", eventType="MODIFIED")
    assert ev.SerializeToString() == raw
    assert notify_pb2.DomainEventRequest.FromString(raw) == ev
    raw = _ld(1, b'{"reason":"IOerror"}')
    assert notify_pb2.K8sEventRequest(eventJSON=b'{"reason":"IOerror"}').SerializeToString() == raw


# --- (c) over a real gRPC channel on a UNIX socket ----------------------------------------


class _Cmd(cmd_pb2_grpc.CmdServicer):  # type: ignore[misc]
    def Ping(self, request: Any, context: Any) -> Any:
        return cmd_pb2.Response(success=True, message="ok")

    def Exec(self, request: Any, context: Any) -> Any:
        return cmd_pb2.ExecResponse(
            response=cmd_pb2.Response(success=True),
            exitCode=len(request.Args),
            stdOut=f"{request.domainName}:{request.Command}:{request.timeoutSeconds}",
        )


class _CmdInfo(cmd_info_pb2_grpc.CmdInfoServicer):  # type: ignore[misc]
    def Info(self, request: Any, context: Any) -> Any:
        return cmd_info_pb2.CmdInfoResponse(supportedCmdVersions=[1])


@pytest.fixture
def cmd_channel() -> Iterator[Any]:
    with tempfile.TemporaryDirectory(prefix="pvl-proto-") as d:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        cmd_pb2_grpc.add_CmdServicer_to_server(_Cmd(), server)
        cmd_info_pb2_grpc.add_CmdInfoServicer_to_server(_CmdInfo(), server)
        target = f"unix://{d}/launcher-sock"
        assert server.add_insecure_port(target) == 1
        server.start()
        try:
            with grpc.insecure_channel(target) as channel:
                yield channel
        finally:
            server.stop(grace=None).wait(5)


def test_raw_calls_by_full_method_name(cmd_channel: Any) -> None:
    # What a Go client puts on the wire: a method path and the message bytes.
    ping = cmd_channel.unary_unary("/kubevirt.cmd.v1.Cmd/Ping")
    assert ping(b"", timeout=5) == b"\x08\x01\x12\x02ok"

    info = cmd_channel.unary_unary("/kubevirt.cmd.info.CmdInfo/Info")
    assert info(b"", timeout=5) == b"\x0a\x01\x01"

    exec_ = cmd_channel.unary_unary("/kubevirt.cmd.v1.Cmd/Exec")
    raw = exec_(_ld(1, b"ns_vm") + _ld(2, b"ls") + _ld(3, b"-l") + b"\x20\x05", timeout=5)
    assert raw == _ld(1, b"\x08\x01") + b"\x10\x01" + _ld(3, b"ns_vm:ls:5")


def test_generated_stub_and_unimplemented_rpc(cmd_channel: Any) -> None:
    stub = cmd_pb2_grpc.CmdStub(cmd_channel)
    pong = stub.Ping(cmd_pb2.EmptyRequest(), timeout=5)
    assert pong == cmd_pb2.Response(success=True, message="ok")
    info = cmd_info_pb2_grpc.CmdInfoStub(cmd_channel).Info(cmd_info_pb2.CmdInfoRequest(), timeout=5)
    assert list(info.supportedCmdVersions) == [1]
    with pytest.raises(grpc.RpcError) as err:
        stub.GetDomain(cmd_pb2.EmptyRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
