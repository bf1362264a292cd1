"""Finding the hook sidecars: KubeVirt's Collect (pkg/hooks/manager.go).

Every 300 ms the launcher lists /var/run/kubevirt-hooks/<dir>/<socket> (each sidecar
container mounts its own <dir>) and asks each socket not yet known for its Info, until
--hook-sidecars sockets answered or --qemu-timeout passed.

Matched: the 300 ms poll; a 1 s Info deadline; a socket that cannot be connected to yet
(or whose Info does not answer in time) is asked again at the next poll; the newest of
v1alpha3, v1alpha2, v1alpha1 that a sidecar lists is used, and none of them is an error.
Better than KubeVirt's:
- sockets are keyed by their path, not their file name (KubeVirt counts two sidecars whose
  sockets share a name in different directories as one);
- a socket path that resolves (through a symlink) outside the hooks directory is refused
  by name: the launcher only talks to what the pod's sidecars put there;
- each hook point's sidecars are ordered by that point's priority (high first), then by
  sidecar name, then socket path. KubeVirt's sortCallbacksPerHookPoint sorts each
  sidecar's own hook points instead and leaves the sidecars in discovery order
  (directory order), so a lower-priority sidecar can run first;
- the timeout's error names what was found, what answered and what did not.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog

from launcher._proto.kubevirt.hooks.info import info_pb2, info_pb2_grpc
from launcher.hooks.api import VERSIONS, Version, newest
from launcher.paths import MAX_SOCKET_PATH

POLL_S = 0.3
INFO_TIMEOUT_S = 1.0
# A sidecar that is not listening yet, or not answering yet: asked again at the next poll.
NOT_READY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class HookError(Exception):
    """A hook sidecar problem; the message names the sidecar or socket."""


class HookAborted(HookError):
    """The launcher began shutting down while waiting for the sidecars."""


@dataclass(frozen=True)
class SidecarInfo:
    socket: str
    name: str
    version: Version
    points: dict[str, int] = field(default_factory=dict)  # hook point -> priority

    @property
    def label(self) -> str:
        return f'hook sidecar "{self.name}" ({self.socket})'


def _under(path: str, directory: str) -> bool:
    return os.path.commonpath([path, directory]) == directory


def candidate_sockets(hooks_dir: str) -> list[str]:
    """The socket paths in the hooks directory's subdirectories, sorted. Raises HookError
    for one that resolves outside the hooks directory."""
    try:
        subdirs = sorted(e.path for e in os.scandir(hooks_dir)
                         if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []  # no sidecar mounted its directory yet
    real_root = os.path.realpath(hooks_dir)
    found = []
    for sub in subdirs:
        try:
            entries = sorted(e.path for e in os.scandir(sub))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for path in entries:
            real = os.path.realpath(path)
            if not _under(real, real_root):
                raise HookError(f"hook socket {path} resolves to {real}, outside "
                                f"{hooks_dir} (a symlink out of the hooks directory); refused")
            try:
                mode = os.stat(path).st_mode
            except FileNotFoundError:
                continue  # a dangling link inside the directory, or just removed
            if stat.S_ISSOCK(mode):
                found.append(path)
    return found


async def probe(path: str) -> SidecarInfo | None:
    """The sidecar's Info, or None when it does not answer yet. Raises HookError."""
    if len(path) > MAX_SOCKET_PATH:
        raise HookError(f"hook socket {path} is longer than a UNIX socket path can be "
                        f"({MAX_SOCKET_PATH} bytes)")
    async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
        try:
            info: Any = await info_pb2_grpc.InfoStub(channel).Info(
                info_pb2.InfoParams(), timeout=INFO_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in NOT_READY_CODES:
                return None
            raise HookError(f"hook socket {path}: Info failed: {exc.code().name}: "
                            f"{exc.details()}") from None
    listed = tuple(info.versions)
    version = newest(listed)
    if version is None:
        raise HookError(f'hook sidecar "{info.name}" ({path}) does not serve a supported '
                        f"version: it lists {list(listed)}, this launcher supports "
                        f"{[v.name for v in VERSIONS]}")
    points = {p.name: p.priority for p in info.hookPoints}
    return SidecarInfo(socket=path, name=info.name or os.path.basename(path),
                       version=version, points=points)


async def collect(hooks_dir: str, count: int, timeout_s: float,
                  stopping: Callable[[], bool] = lambda: False,
                  found: list[SidecarInfo] | None = None) -> list[SidecarInfo]:
    """At least `count` sidecars' Info. `found` (optional) is filled as they answer, so a
    caller keeps what answered even when this fails. Raises HookError (HookAborted when
    `stopping()` turned true)."""
    log = structlog.get_logger().bind(part="hooks", hooks_dir=hooks_dir)
    answered: dict[str, SidecarInfo] = {}
    seen: set[str] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(answered) < count:
        if stopping():
            raise HookAborted("the launcher is shutting down; stopped waiting for the hook "
                              "sidecars")
        for path in candidate_sockets(hooks_dir):
            if path in answered:
                continue
            seen.add(path)
            info = await probe(path)
            if info is None:
                continue
            answered[path] = info
            if found is not None:
                found.append(info)
            log.info("hook sidecar found", sidecar=info.name, socket=path,
                     version=info.version.name, hook_points=info.points)
        if len(answered) >= count:
            break
        if loop.time() >= deadline:
            silent = sorted(seen - answered.keys())
            raise HookError(
                f"{len(answered)} of {count} hook sidecars answered within {timeout_s:g} s "
                f"(--qemu-timeout) in {hooks_dir}"
                + (f"; not answering: {', '.join(silent)}" if silent else
                   "; no other sidecar socket appeared"))
        await asyncio.sleep(POLL_S)
    return sorted(answered.values(), key=lambda s: s.socket)


def ordered(sidecars: list[SidecarInfo], point: str) -> list[SidecarInfo]:
    """The sidecars subscribed to `point`, in call order: its priority high to low, then
    the sidecar's name, then its socket."""
    subscribed = [s for s in sidecars if point in s.points and point in s.version.points]
    return sorted(subscribed, key=lambda s: (-s.points[point], s.name, s.socket))
