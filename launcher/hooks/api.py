"""The hook API's names and versions: KubeVirt's pkg/hooks/info and v1alpha1..v1alpha3."""

from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple

from launcher._proto.kubevirt.hooks.v1alpha1 import callbacks_pb2 as v1alpha1_pb2
from launcher._proto.kubevirt.hooks.v1alpha1 import callbacks_pb2_grpc as v1alpha1_grpc
from launcher._proto.kubevirt.hooks.v1alpha2 import callbacks_pb2 as v1alpha2_pb2
from launcher._proto.kubevirt.hooks.v1alpha2 import callbacks_pb2_grpc as v1alpha2_grpc
from launcher._proto.kubevirt.hooks.v1alpha3 import callbacks_pb2 as v1alpha3_pb2
from launcher._proto.kubevirt.hooks.v1alpha3 import callbacks_pb2_grpc as v1alpha3_grpc

# KubeVirt's HookSocketsSharedDirectory: each sidecar container mounts its own
# subdirectory of it (subPath = the container's name) at this path.
HOOKS_DIR = "/var/run/kubevirt-hooks"
SIDECARS_ANNOTATION = "hooks.kubevirt.io/hookSidecars"

ON_DEFINE_DOMAIN = "OnDefineDomain"
PRE_CLOUD_INIT_ISO = "PreCloudInitIso"
SHUTDOWN = "Shutdown"
HOOK_POINTS = (ON_DEFINE_DOMAIN, PRE_CLOUD_INIT_ISO, SHUTDOWN)


class Version(NamedTuple):
    name: str
    pb2: ModuleType
    grpc: ModuleType
    points: frozenset[str]  # the hook points this version's Callbacks service has

    def stub(self, channel: Any) -> Any:
        return self.grpc.CallbacksStub(channel)


# Newest first: a sidecar listing several is called with the newest (KubeVirt's order).
VERSIONS = (
    Version("v1alpha3", v1alpha3_pb2, v1alpha3_grpc,
            frozenset({ON_DEFINE_DOMAIN, PRE_CLOUD_INIT_ISO, SHUTDOWN})),
    Version("v1alpha2", v1alpha2_pb2, v1alpha2_grpc,
            frozenset({ON_DEFINE_DOMAIN, PRE_CLOUD_INIT_ISO})),
    Version("v1alpha1", v1alpha1_pb2, v1alpha1_grpc, frozenset({ON_DEFINE_DOMAIN})),
)
BY_NAME = {v.name: v for v in VERSIONS}


def newest(listed: list[str] | tuple[str, ...]) -> Version | None:
    """The newest version this launcher supports among those a sidecar lists."""
    for version in VERSIONS:
        if version.name in listed:
            return version
    return None
