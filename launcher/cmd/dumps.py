"""Dump rpcs: VirtualMachineMemoryDump and GetScreenshot.

Beyond KubeVirt: memory dumps only into the hotplug volume directory (where virt-handler
mounts the memory-dump volume), and the rpc answers within virt-handler's deadline while a
long dump goes on (owned by the launcher, its outcome logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from dataclasses import dataclass
from typing import Any

import libvirt

from launcher import paths
from launcher._proto.kubevirt.cmd.v1 import cmd_pb2
from launcher.cmd.base import CmdContext, RpcFailure, ok, vmi_rpc
from launcher.cmd.server import MAX_MESSAGE_BYTES, Handler
from launcher.cmd.vmi import VMI
from launcher.libvirt.errors import libvirt_message
from launcher.notify.domain_state import ALIVE_STATES

MEMORY_DUMP_WAIT_S = 15.0  # answer before virt-handler's 20 s deadline; the dump goes on
SCREENSHOT_CHUNK = 256 * 1024
SCREENSHOT_MAX_BYTES = MAX_MESSAGE_BYTES - 64 * 1024  # room for the rest of the message


@dataclass
class _Dump:
    path: str
    task: asyncio.Task[None]


class Dumps:
    def __init__(self, ctx: CmdContext) -> None:
        self.ctx = ctx
        self._log = ctx.log
        self._dump: _Dump | None = None
        self._dumped: set[str] = set()  # paths dumped successfully (KubeVirt: not redone)

    def handlers(self) -> dict[str, Handler]:
        return {
            "GetScreenshot": vmi_rpc(self.ctx, "GetScreenshot", self._screenshot),
            "VirtualMachineMemoryDump": vmi_rpc(self.ctx, "VirtualMachineMemoryDump",
                                                self._memory_dump),
        }

    async def _screenshot(self, vmi: VMI, request: Any) -> Any:
        read = await self.ctx.read()
        self.ctx.require(read, ALIVE_STATES, "take a screenshot")

        def shoot(dom: Any) -> tuple[str, bytes]:
            # The connection the domain was found on, not the current one (which may be
            # gone or replaced by now).
            stream = dom.connect().newStream(0)
            finished = False
            try:
                mime: str = dom.screenshot(stream, 0, 0)
                chunks: list[bytes] = []
                size = 0
                while True:
                    chunk = stream.recv(SCREENSHOT_CHUNK)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > SCREENSHOT_MAX_BYTES:
                        raise RpcFailure(f"screenshot larger than {SCREENSHOT_MAX_BYTES} "
                                         "bytes; it cannot be sent")
                    chunks.append(chunk)
                stream.finish()
                finished = True
                return mime, b"".join(chunks)
            finally:
                if not finished:
                    with contextlib.suppress(libvirt.libvirtError):
                        stream.abort()

        mime, data = await self.ctx.libvirt.call(shoot)
        return cmd_pb2.ScreenshotResponse(response=cmd_pb2.Response(success=True),
                                          mime=mime, data=data)

    # --- memory dump ---------------------------------------------------------------------
    def _dump_target(self, raw: str) -> str:
        """The file to dump to. Only inside a volume directory under the hotplug disk dir,
        where virt-handler mounts the memory-dump volume
        (<hotplug-disk-dir>/<volume>/<file>): this rpc writes a file as the launcher, so it
        must not write anywhere else. KubeVirt's spelling is re-rooted under --runtime-root
        like every other path."""
        if not raw:
            raise RpcFailure("dumpPath: required")
        if "\0" in raw or not os.path.isabs(raw) or ".." in raw.split("/"):
            raise RpcFailure(f"dumpPath {raw!r}: must be an absolute path without '..'")
        target = os.path.normpath(raw)
        allowed = os.path.normpath(self.ctx.paths.hotplug_disk_dir)
        spelled = os.path.normpath(self.ctx.opts.hotplug_disk_dir)
        if os.path.commonpath([target, allowed]) != allowed:
            if os.path.commonpath([target, spelled]) != spelled:
                raise RpcFailure(f"dumpPath {raw!r}: memory dumps are only written under "
                                 f"{spelled} (the memory-dump volume); refusing")
            target = paths.reroot(self.ctx.paths.root, target)
        parent = os.path.dirname(target)
        if parent == allowed:
            raise RpcFailure(f"dumpPath {raw!r}: expected <hotplug-disk-dir>/<volume>/<file>")
        real_allowed = os.path.realpath(allowed)
        real_parent = os.path.realpath(parent)
        if os.path.commonpath([real_parent, real_allowed]) != real_allowed:
            raise RpcFailure(f"dumpPath {raw!r}: its directory resolves outside "
                             f"{allowed}; refusing")
        if not os.path.isdir(parent):
            raise RpcFailure(f"dumpPath {raw!r}: directory {parent} does not exist "
                             "(is the memory-dump volume mounted?)")
        # The file itself: libvirt (root, in the daemon) opens the path and would follow a
        # symlink planted in the volume (vol/x -> /etc/shadow) and overwrite its target.
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(target)
            if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
                raise RpcFailure(f"dumpPath {raw!r}: {target} exists and is not a regular "
                                 "file (a symlink?); refusing")
        return target

    async def _memory_dump(self, vmi: VMI, request: Any) -> Any:
        rpc = "VirtualMachineMemoryDump"
        target = self._dump_target(request.dumpPath)
        read = await self.ctx.read()
        self.ctx.require(read, ALIVE_STATES, "dump memory")
        running = self._dump
        if running is not None and not running.task.done():
            if running.path == target:  # KubeVirt: a repeated request is not an error
                return ok(rpc, f"memory dump to {target} in progress")
            raise RpcFailure(f"another memory dump is in progress ({running.path})")
        if target in self._dumped:  # KubeVirt does not redo a completed dump
            return ok(rpc, f"memory dump to {target} already completed")
        task = asyncio.create_task(self._dump_to(target), name="memory-dump")
        self.ctx.tasks.add(task)
        task.add_done_callback(self._dump_done)
        self._dump = _Dump(target, task)
        # Answer within virt-handler's deadline; a longer dump goes on, owned by us, and
        # its outcome is logged (KubeVirt reports it through domain metadata instead).
        done, _ = await asyncio.wait({task}, timeout=MEMORY_DUMP_WAIT_S)
        if not done:
            return ok(rpc, f"memory dump to {target} started; still running")
        task.result()  # its libvirt error becomes this rpc's answer
        return None

    async def _dump_to(self, target: str) -> None:
        def dump(dom: Any) -> None:
            # As KubeVirt: one dump per volume; earlier ones are removed first.
            directory = os.path.dirname(target)
            for name in os.listdir(directory):
                path = os.path.join(directory, name)
                if "memory.dump" in name and os.path.isfile(path):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            dom.coreDumpWithFormat(target, libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW,
                                   libvirt.VIR_DUMP_MEMORY_ONLY)

        self._log.info("memory dump started", path=target)
        await self.ctx.libvirt.call(dump)
        self._dumped.add(target)
        self._log.info("memory dump completed", path=target)

    def _dump_done(self, task: asyncio.Task[None]) -> None:
        self.ctx.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            error = libvirt_message(exc) if isinstance(exc, libvirt.libvirtError) else str(exc)
            self._log.error("memory dump failed", error=error)
