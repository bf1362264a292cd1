"""SyncVirtualMachineCPUs, SyncVirtualMachineMemory and HotplugHostDevices: vCPU, memory
and host device hotplug on the running domain, through the Syncer (one change to the
domain at a time, as KubeVirt's domainModifyLock). Disk and interface hotplug ride on
SyncVirtualMachine (launcher.vm.hotplug). What each does: launcher.vm.resources,
launcher.vm.hostdevices. As for a sync, a VMI of another incarnation (uid) is refused."""

from __future__ import annotations

from typing import Any

from launcher.cmd.base import CmdContext, RpcFailure, ok, vmi_rpc
from launcher.cmd.server import Handler
from launcher.cmd.vmi import VMI
from launcher.vm.identity import uid_mismatch


class Hotplug:
    def __init__(self, ctx: CmdContext) -> None:
        self.ctx = ctx

    def handlers(self) -> dict[str, Handler]:
        return {
            "SyncVirtualMachineCPUs": vmi_rpc(self.ctx, "SyncVirtualMachineCPUs", self._cpus),
            "SyncVirtualMachineMemory": vmi_rpc(self.ctx, "SyncVirtualMachineMemory",
                                                self._memory),
            "HotplugHostDevices": vmi_rpc(self.ctx, "HotplugHostDevices", self._host_devices),
        }

    def _check(self, vmi: VMI) -> None:
        mismatch = uid_mismatch(vmi.uid, self.ctx.opts.uid)
        if mismatch is not None:
            raise RpcFailure(f"vmi: {mismatch}")

    async def _cpus(self, vmi: VMI, request: Any) -> Any:
        self._check(vmi)
        options = request.options if request.HasField("options") else None
        return ok("SyncVirtualMachineCPUs", await self.ctx.syncer.sync_vcpus(vmi.raw, options))

    async def _memory(self, vmi: VMI, request: Any) -> Any:
        self._check(vmi)
        options = request.options if request.HasField("options") else None
        return ok("SyncVirtualMachineMemory",
                  await self.ctx.syncer.sync_memory(vmi.raw, options))

    async def _host_devices(self, vmi: VMI, request: Any) -> Any:
        self._check(vmi)
        return ok("HotplugHostDevices", await self.ctx.syncer.hotplug_host_devices(vmi.raw))
