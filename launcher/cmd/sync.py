"""SyncVirtualMachine: through launcher.vm.sync.Syncer (convert, prepare the disks, define
and start; on a running domain, update the definition and say what needs a restart).

Beyond KubeVirt, a VMI whose uid differs from --uid (another incarnation of the same name)
is refused.
"""

from __future__ import annotations

from typing import Any

from launcher.cmd.base import CmdContext, RpcFailure, ok, vmi_rpc
from launcher.cmd.server import Handler
from launcher.cmd.vmi import VMI
from launcher.vm.identity import uid_mismatch


class Sync:
    def __init__(self, ctx: CmdContext) -> None:
        self.ctx = ctx

    def handlers(self) -> dict[str, Handler]:
        return {"SyncVirtualMachine": vmi_rpc(self.ctx, "SyncVirtualMachine", self._sync)}

    async def _sync(self, vmi: VMI, request: Any) -> Any:
        mismatch = uid_mismatch(vmi.uid, self.ctx.opts.uid)
        if mismatch is not None:
            raise RpcFailure(f"vmi: {mismatch}")
        options = request.options if request.HasField("options") else None
        result = await self.ctx.syncer.sync(vmi.raw, options)
        return ok("SyncVirtualMachine", result.message)
