"""The launcher's hook calls: KubeVirt's hooks.Manager (pkg/hooks/manager.go).

- collection (launcher.hooks.discovery) runs as a task from the launcher's start; a Sync
  waits for it before its first conversion (`ready`), so the command socket is up (and
  readiness reported) while the sidecars start, as in KubeVirt;
- OnDefineDomain on every definition: each sidecar in order gets the previous one's XML;
  the result is checked (well-formed, a <domain>, the same name and UUID) and a broken one
  is reported naming the sidecar; libvirt's define stays the final judge;
- PreCloudInitIso before a cloud-init ISO is built: chained through every subscribed
  sidecar (KubeVirt returns after the first one's answer, dropping the rest);
- Shutdown when the launcher ends, within one deadline for all;
- every call bounded (KubeVirt: a minute; --hook-timeout) and logged with the sidecar,
  the hook point, its duration and outcome.
One gRPC channel per sidecar, kept for the launcher's life (gRPC reconnects it if the
sidecar container restarts).
"""

from __future__ import annotations

import asyncio
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
import structlog

from launcher.converter.plan import CloudInitIso
from launcher.hooks import cloudinit, discovery
from launcher.hooks.api import ON_DEFINE_DOMAIN, PRE_CLOUD_INIT_ISO, SHUTDOWN
from launcher.hooks.discovery import HookAborted, HookError, SidecarInfo

DEFAULT_CALL_TIMEOUT_S = 60.0  # KubeVirt's per-call deadline


class HookManager:
    def __init__(self, hooks_dir: str, count: int, collect_timeout_s: float, *,
                 call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.hooks_dir = hooks_dir
        self.count = count
        self.collect_timeout_s = collect_timeout_s
        self.call_timeout_s = call_timeout_s
        self._stopping = stopping
        self.sidecars: list[SidecarInfo] = []  # those that answered, even if collect failed
        self._collected: asyncio.Future[None] | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._log = structlog.get_logger().bind(part="hooks")

    @property
    def enabled(self) -> bool:
        return self.count > 0

    def _future(self) -> asyncio.Future[None]:
        if self._collected is None:
            self._collected = asyncio.get_running_loop().create_future()
            if not self.enabled:
                self._collected.set_result(None)
        return self._collected

    async def run(self) -> None:
        """Collect the sidecars. Never raises (a task of the launcher's TaskGroup): the
        outcome is what `ready` returns or raises."""
        done = self._future()
        if done.done():
            return
        t0 = time.monotonic()
        self._log.info("waiting for hook sidecars", count=self.count,
                       hooks_dir=self.hooks_dir, timeout_s=self.collect_timeout_s)
        try:
            await discovery.collect(self.hooks_dir, self.count, self.collect_timeout_s,
                                    self._stopping, found=self.sidecars)
        except HookAborted as exc:
            self._log.info("stopped waiting for hook sidecars", reason=str(exc))
            _settle(done, exc)
            return
        except HookError as exc:
            self._log.error("hook sidecars not collected", error=str(exc))
            _settle(done, exc)
            return
        except asyncio.CancelledError:
            _settle(done, HookAborted("the launcher stopped waiting for the hook sidecars"))
            raise
        for point in (ON_DEFINE_DOMAIN, PRE_CLOUD_INIT_ISO, SHUTDOWN):
            self._log.info("hook call order", hook_point=point,
                           sidecars=[s.name for s in discovery.ordered(self.sidecars, point)])
        self._log.info("hook sidecars collected", count=len(self.sidecars),
                       duration_s=round(time.monotonic() - t0, 3))
        done.set_result(None)

    async def ready(self) -> None:
        """Return once the sidecars are collected; raise the collection's HookError."""
        await asyncio.shield(self._future())

    def subscribed(self, point: str) -> list[SidecarInfo]:
        return discovery.ordered(self.sidecars, point)

    # --- calls ------------------------------------------------------------------------------
    def _stub(self, sidecar: SidecarInfo) -> Any:
        channel = self._channels.get(sidecar.socket)
        if channel is None:
            channel = grpc.aio.insecure_channel(f"unix:{sidecar.socket}")
            self._channels[sidecar.socket] = channel
        return sidecar.version.stub(channel)

    async def _call(self, sidecar: SidecarInfo, point: str,
                    fn: Callable[[Any], Awaitable[Any]], timeout_s: float) -> Any:
        t0 = time.monotonic()
        log = self._log.bind(sidecar=sidecar.name, socket=sidecar.socket, hook_point=point,
                             version=sidecar.version.name)
        try:
            result = await fn(self._stub(sidecar))
        except grpc.aio.AioRpcError as exc:
            duration = round(time.monotonic() - t0, 4)
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                outcome = f"did not answer within {timeout_s:g} s"
            else:
                outcome = f"failed: {exc.code().name}: {exc.details()}"
            log.error("hook call failed", outcome=outcome, duration_s=duration)
            raise HookError(f"{sidecar.label}: {point} {outcome}") from None
        log.info("hook called", outcome="ok", duration_s=round(time.monotonic() - t0, 4))
        return result

    async def on_define_domain(self, xml: str, vmi: Mapping[str, Any]) -> tuple[str, list[str]]:
        """(the domain XML after every OnDefineDomain sidecar, the names of those that
        changed it). Raises HookError naming the sidecar at fault."""
        sidecars = self.subscribed(ON_DEFINE_DOMAIN)
        if not sidecars:
            return xml, []
        name, uuid = _identity(xml)
        vmi_json = json.dumps(vmi, separators=(",", ":")).encode()
        changed = []
        for sidecar in sidecars:
            pb2 = sidecar.version.pb2

            async def call(stub: Any, current: str = xml, pb2: Any = pb2) -> Any:
                return await stub.OnDefineDomain(
                    pb2.OnDefineDomainParams(domainXML=current.encode(), vmi=vmi_json),
                    timeout=self.call_timeout_s)
            result = await self._call(sidecar, ON_DEFINE_DOMAIN, call, self.call_timeout_s)
            new = _checked(sidecar, bytes(result.domainXML), name, uuid)
            if new != xml:
                changed.append(sidecar.name)
            xml = new
        return xml, changed

    async def pre_cloud_init_iso(self, prep: CloudInitIso,
                                 vmi: Mapping[str, Any]) -> CloudInitIso:
        """`prep` (its secret data read) after every PreCloudInitIso sidecar."""
        vmi_json = json.dumps(vmi, separators=(",", ":")).encode()
        for sidecar in self.subscribed(PRE_CLOUD_INIT_ISO):
            data, source = cloudinit.params(prep)
            pb2 = sidecar.version.pb2

            async def call(stub: Any, data: bytes = data, source: bytes = source,
                           pb2: Any = pb2) -> Any:
                return await stub.PreCloudInitIso(
                    pb2.PreCloudInitIsoParams(cloudInitData=data, cloudInitNoCloudSource=source,
                                              vmi=vmi_json),
                    timeout=self.call_timeout_s)
            result = await self._call(sidecar, PRE_CLOUD_INIT_ISO, call, self.call_timeout_s)
            try:
                prep = cloudinit.apply(prep, bytes(result.cloudInitData),
                                       bytes(result.cloudInitNoCloudSource))
            except cloudinit.CloudInitResultError as exc:
                raise HookError(f"{sidecar.label}: PreCloudInitIso returned unusable data: "
                                f"{exc}") from None
        return prep

    async def shutdown(self, timeout_s: float) -> None:
        """Shutdown to every subscribed sidecar (those that answered, even when collection
        failed), all within `timeout_s`. Failures are logged: the launcher ends anyway."""
        sidecars = self.subscribed(SHUTDOWN)
        if not sidecars:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for sidecar in sidecars:
            remaining = deadline - loop.time()
            if remaining <= 0:
                self._log.error("no time left for the hook sidecars' Shutdown",
                                skipped=sidecar.name, timeout_s=timeout_s)
                return
            pb2 = sidecar.version.pb2

            async def call(stub: Any, pb2: Any = pb2, remaining: float = remaining) -> Any:
                return await stub.Shutdown(pb2.ShutdownParams(), timeout=remaining)
            try:
                await self._call(sidecar, SHUTDOWN, call, remaining)
            except HookError:
                continue  # logged by _call; the next sidecar still gets its Shutdown

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


def _settle(done: asyncio.Future[None], exc: HookError) -> None:
    """Fail the collection for every later `ready`. Marked as retrieved: a launcher that
    never gets a Sync (it is stopping) must not log "exception never retrieved"."""
    done.set_exception(exc)
    done.exception()


def _identity(xml: str) -> tuple[str, str]:
    """(name, uuid) of our own domain XML."""
    root = ET.fromstring(xml)
    return root.findtext("name") or "", root.findtext("uuid") or ""


def _checked(sidecar: SidecarInfo, raw: bytes, name: str, uuid: str) -> str:
    """A sidecar's domain XML, refused (naming the sidecar) when it is not our domain."""
    what = f"{sidecar.label}: OnDefineDomain returned"
    if not raw.strip():
        raise HookError(f"{what} no domain XML")
    try:
        text = raw.decode("utf-8")
        root = ET.fromstring(text)
    except UnicodeDecodeError as exc:
        raise HookError(f"{what} XML that is not UTF-8: {exc}") from None
    except ET.ParseError as exc:
        raise HookError(f"{what} XML that does not parse: {exc}") from None
    if root.tag != "domain":
        raise HookError(f"{what} a <{root.tag}> element, not a <domain>")
    got_name, got_uuid = root.findtext("name") or "", root.findtext("uuid") or ""
    if got_name != name:
        raise HookError(f'{what} a domain named "{got_name}", not "{name}"; a hook may not '
                        "rename the domain")
    if uuid and got_uuid.lower() != uuid.lower():
        raise HookError(f'{what} a domain with UUID "{got_uuid}", not "{uuid}"; a hook may '
                        "not change it")
    return text
