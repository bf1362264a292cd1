"""A hook sidecar's side of the API, for writing sidecars in Python (grpc.aio): serves
`kubevirt.hooks.info.Info` and `kubevirt.hooks.<version>.Callbacks` on one UNIX socket in
the sidecar's hooks directory, as KubeVirt's sidecars do (cmd/sidecars/sidecar_shim.go,
cmd/example-hook-sidecar). The examples in hack/hooks/ and the tests' sidecars use it.

A sidecar stops on SIGTERM/SIGINT, or after answering Shutdown (v1alpha3): the launcher
calls Shutdown when it ends, so the pod's sidecar containers end with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog

from launcher._proto.kubevirt.hooks.info import info_pb2, info_pb2_grpc
from launcher.hooks.api import (
    BY_NAME,
    HOOKS_DIR,
    ON_DEFINE_DOMAIN,
    PRE_CLOUD_INIT_ISO,
    SHUTDOWN,
    VERSIONS,
    Version,
)

# (domainXML, vmi JSON) -> the new domainXML
OnDefineDomain = Callable[[bytes, bytes], Awaitable[bytes]]
# (cloudInitNoCloudSource JSON, vmi JSON, cloudInitData JSON)
#   -> (cloudInitNoCloudSource JSON, cloudInitData JSON)
PreCloudInitIso = Callable[[bytes, bytes, bytes], Awaitable[tuple[bytes, bytes]]]
STOP_GRACE_S = 1.0


class HookFailed(Exception):
    """A callback's refusal: the launcher gets it as the rpc's error message."""


@dataclass
class Sidecar:
    name: str
    on_define_domain: OnDefineDomain | None = None
    pre_cloud_init_iso: PreCloudInitIso | None = None
    on_shutdown: Callable[[], Awaitable[None]] | None = None  # cleanup before it stops
    versions: tuple[str, ...] = tuple(v.name for v in VERSIONS)
    priorities: dict[str, int] = field(default_factory=dict)  # hook point -> priority

    def hook_points(self) -> list[tuple[str, int]]:
        """What Info announces: the points with a callback, and Shutdown when a version that
        has it is served (the sidecar then ends with the launcher)."""
        points = []
        if self.on_define_domain is not None:
            points.append(ON_DEFINE_DOMAIN)
        if self.pre_cloud_init_iso is not None:
            points.append(PRE_CLOUD_INIT_ISO)
        if "v1alpha3" in self.versions:
            points.append(SHUTDOWN)
        return [(p, self.priorities.get(p, 0)) for p in points]


class _Info(info_pb2_grpc.InfoServicer):  # type: ignore[misc]
    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar

    async def Info(self, request: Any, context: Any) -> Any:
        return info_pb2.InfoResult(
            name=self.sidecar.name, versions=list(self.sidecar.versions),
            hookPoints=[info_pb2.HookPoint(name=n, priority=p)
                        for n, p in self.sidecar.hook_points()])


class _Callbacks:
    """One version's Callbacks service; the methods its proto lacks are never routed."""

    def __init__(self, version: Version, sidecar: Sidecar, stopped: asyncio.Event) -> None:
        self.version = version
        self.sidecar = sidecar
        self.stopped = stopped
        self._log = structlog.get_logger().bind(sidecar=sidecar.name, version=version.name)

    async def _run(self, point: str, context: Any, fn: Callable[[], Awaitable[Any]]) -> Any:
        t0 = time.monotonic()
        try:
            result = await fn()
        except HookFailed as exc:
            self._log.warning("hook refused", hook_point=point, error=str(exc))
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        self._log.info("hook called", hook_point=point,
                       duration_s=round(time.monotonic() - t0, 4))
        return result

    async def OnDefineDomain(self, request: Any, context: Any) -> Any:
        fn = self.sidecar.on_define_domain
        if fn is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no OnDefineDomain hook")
        assert fn is not None

        async def call() -> Any:
            xml = await fn(request.domainXML, request.vmi)
            return self.version.pb2.OnDefineDomainResult(domainXML=xml)
        return await self._run(ON_DEFINE_DOMAIN, context, call)

    async def PreCloudInitIso(self, request: Any, context: Any) -> Any:
        fn = self.sidecar.pre_cloud_init_iso
        if fn is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no PreCloudInitIso hook")
        assert fn is not None

        async def call() -> Any:
            source, data = await fn(request.cloudInitNoCloudSource, request.vmi,
                                    request.cloudInitData)
            return self.version.pb2.PreCloudInitIsoResult(cloudInitNoCloudSource=source,
                                                          cloudInitData=data)
        return await self._run(PRE_CLOUD_INIT_ISO, context, call)

    async def Shutdown(self, request: Any, context: Any) -> Any:
        self._log.info("shutdown requested by the launcher")
        if self.sidecar.on_shutdown is not None:
            await self.sidecar.on_shutdown()
        self.stopped.set()
        return self.version.pb2.ShutdownResult()


def socket_path(directory: str, name: str) -> str:
    return os.path.join(directory, f"{name}.sock")


async def serve(sidecar: Sidecar, path: str) -> None:
    """Serve `sidecar` on the UNIX socket `path` until SIGTERM/SIGINT or Shutdown."""
    log = structlog.get_logger().bind(sidecar=sidecar.name, socket=path)
    stopped = asyncio.Event()
    server = grpc.aio.server()
    info_pb2_grpc.add_InfoServicer_to_server(_Info(sidecar), server)
    for name in sidecar.versions:
        version = BY_NAME.get(name)
        if version is None:
            continue  # announced only (a test of a launcher facing an unknown version)
        version.grpc.add_CallbacksServicer_to_server(_Callbacks(version, sidecar, stopped),
                                                     server)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a previous run's
    server.add_insecure_port(f"unix:{path}")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    await server.start()
    log.info("hook sidecar serving", versions=list(sidecar.versions),
             hook_points=sidecar.hook_points())
    try:
        await stopped.wait()
    finally:
        # Let the Shutdown answer (or a call in flight) reach the launcher first.
        await server.stop(STOP_GRACE_S)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        log.info("hook sidecar stopped")


def arg_parser(description: str) -> argparse.ArgumentParser:
    """The flags every sidecar here takes (KubeVirt's shim takes --version)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--socket-dir", default=HOOKS_DIR,
                   help="the sidecar's hooks directory (default: %(default)s)")
    p.add_argument("--name", help="the sidecar's name in Info and its socket's file name")
    p.add_argument("--version", action="append", choices=sorted(BY_NAME), dest="versions",
                   help="a hook API version to serve (repeatable; default: all)")
    p.add_argument("--priority", type=int, default=0,
                   help="the priority of every hook point (higher runs first)")
    return p


def versions_from(ns: argparse.Namespace) -> tuple[str, ...]:
    chosen: Sequence[str] = ns.versions or [v.name for v in VERSIONS]
    return tuple(dict.fromkeys(chosen))
