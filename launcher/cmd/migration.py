"""Migration rpcs: MigrateVirtualMachine and CancelVirtualMachineMigration (the source),
SyncMigrationTarget, SignalTargetPodCleanup and FinalizeVirtualMachineMigration (the
target). The work is in launcher.vm.migration_source / migration_target; results reach
virt-handler through the domain's migration metadata in the notify snapshots."""

from __future__ import annotations

from typing import Any

from launcher.cmd.base import CmdContext, RpcFailure, ok, vmi_rpc
from launcher.cmd.server import Handler
from launcher.cmd.vmi import VMI
from launcher.vm.migration_source import MigrationError, MigrationSource
from launcher.vm.migration_target import MigrationTarget


class Migration:
    def __init__(self, ctx: CmdContext) -> None:
        self.ctx = ctx
        self.source = MigrationSource(access=ctx.libvirt, relay=ctx.relay, paths=ctx.paths,
                                      nonroot=ctx.opts.run_as_nonroot, domain=ctx.domain)
        self.target = MigrationTarget(access=ctx.libvirt, relay=ctx.relay, paths=ctx.paths,
                                      syncer=ctx.syncer, domain=ctx.domain)

    def handlers(self) -> dict[str, Handler]:
        rpcs = {
            "MigrateVirtualMachine": self._migrate,
            "CancelVirtualMachineMigration": self._cancel,
            "SyncMigrationTarget": self._sync_target,
            "SignalTargetPodCleanup": self._cleanup,
            "FinalizeVirtualMachineMigration": self._finalize,
        }
        return {rpc: vmi_rpc(self.ctx, rpc, body) for rpc, body in rpcs.items()}

    async def _migrate(self, vmi: VMI, request: Any) -> Any:
        try:
            message = await self.source.migrate(vmi.raw, bytes(request.options))
        except MigrationError as exc:
            raise RpcFailure(str(exc)) from None
        return ok("MigrateVirtualMachine", message)

    async def _cancel(self, vmi: VMI, request: Any) -> Any:
        return ok("CancelVirtualMachineMigration", await self.source.cancel())

    async def _sync_target(self, vmi: VMI, request: Any) -> Any:
        options = request.options if request.HasField("options") else None
        return ok("SyncMigrationTarget", await self.target.prepare(vmi.raw, options))

    async def _cleanup(self, vmi: VMI, request: Any) -> Any:
        return ok("SignalTargetPodCleanup", await self.target.signal_cleanup(vmi.raw))

    async def _finalize(self, vmi: VMI, request: Any) -> Any:
        await self.target.finalize()
        return ok("FinalizeVirtualMachineMigration")

    async def close(self) -> None:
        await self.source.close()
        await self.target.close()
