"""The hook sidecar protos (proto/kubevirt/hooks): wire-compatible with KubeVirt's
pkg/hooks/info/api_info.proto and pkg/hooks/v1alpha{1,2,3}/api_v1alpha*.proto, which the
sidecars in the wild (KubeVirt's sidecar-shim, its SMBIOS example, vendor sidecars) are
generated from. Names, numbers and types below were read from those files."""

from __future__ import annotations

from typing import Any

import pytest

from launcher._proto.kubevirt.hooks.info import info_pb2
from launcher.hooks.api import BY_NAME, VERSIONS, newest
from tests.unit.test_proto_generated import _methods, _schema


def test_info_service_and_messages() -> None:
    svc = info_pb2.DESCRIPTOR.services_by_name["Info"]
    assert svc.full_name == "kubevirt.hooks.info.Info"
    assert _methods(svc) == {"Info": ("InfoParams", "InfoResult")}
    assert _schema(info_pb2.InfoParams.DESCRIPTOR) == {}
    assert _schema(info_pb2.InfoResult.DESCRIPTOR) == {
        "name": (1, "string"), "hookPoints": (3, "repeated HookPoint"),
        "versions": (4, "repeated string")}
    assert _schema(info_pb2.HookPoint.DESCRIPTOR) == {"name": (1, "string"),
                                                      "priority": (2, "int32")}


DEFINE = {"OnDefineDomain": ("OnDefineDomainParams", "OnDefineDomainResult")}
CLOUD_INIT = {"PreCloudInitIso": ("PreCloudInitIsoParams", "PreCloudInitIsoResult")}
SHUTDOWN = {"Shutdown": ("ShutdownParams", "ShutdownResult")}


@pytest.mark.parametrize(("version", "rpcs"), [
    ("v1alpha1", DEFINE), ("v1alpha2", {**DEFINE, **CLOUD_INIT}),
    ("v1alpha3", {**DEFINE, **CLOUD_INIT, **SHUTDOWN}),
])
def test_callbacks_per_version(version: str, rpcs: dict[str, tuple[str, str]]) -> None:
    pb2: Any = BY_NAME[version].pb2
    svc = pb2.DESCRIPTOR.services_by_name["Callbacks"]
    assert svc.full_name == f"kubevirt.hooks.{version}.Callbacks"
    assert _methods(svc) == rpcs
    assert BY_NAME[version].points == frozenset(rpcs)
    assert _schema(pb2.OnDefineDomainParams.DESCRIPTOR) == {"domainXML": (1, "bytes"),
                                                            "vmi": (2, "bytes")}
    assert _schema(pb2.OnDefineDomainResult.DESCRIPTOR) == {"domainXML": (1, "bytes")}
    if "PreCloudInitIso" in rpcs:
        assert _schema(pb2.PreCloudInitIsoParams.DESCRIPTOR) == {
            "cloudInitNoCloudSource": (1, "bytes"), "vmi": (2, "bytes"),
            "cloudInitData": (3, "bytes")}
        assert _schema(pb2.PreCloudInitIsoResult.DESCRIPTOR) == {
            "cloudInitNoCloudSource": (1, "bytes"), "cloudInitData": (3, "bytes")}
    if "Shutdown" in rpcs:
        assert _schema(pb2.ShutdownParams.DESCRIPTOR) == {}
        assert _schema(pb2.ShutdownResult.DESCRIPTOR) == {}


def test_info_encoding_as_a_go_sidecar_sends_it() -> None:
    # InfoResult{name:"shim", hookPoints:[{OnDefineDomain,0}], versions:["v1alpha2"]}
    # as Go's protobuf marshals it (field 3 and 4; a zero priority is not on the wire)
    wire = (b"\x0a\x04shim" + b"\x1a\x10\x0a\x0eOnDefineDomain" + b"\x22\x08v1alpha2")
    info = info_pb2.InfoResult.FromString(wire)
    assert (info.name, [(p.name, p.priority) for p in info.hookPoints], list(info.versions)) \
        == ("shim", [("OnDefineDomain", 0)], ["v1alpha2"])
    assert info.SerializeToString() == wire


def test_the_newest_supported_version_wins() -> None:
    assert [v.name for v in VERSIONS] == ["v1alpha3", "v1alpha2", "v1alpha1"]
    assert newest(["v1alpha1", "v1alpha3"]) is BY_NAME["v1alpha3"]
    assert newest(["v1alpha2", "v1beta1"]) is BY_NAME["v1alpha2"]
    assert newest(["v1beta1"]) is None and newest([]) is None
