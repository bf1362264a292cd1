"""The command API's handlers (kubevirt.cmd.v1.Cmd): what each rpc does to the domain.

One module per rpc family, assembled here: launcher.cmd.lifecycle, .agent (guest agent,
Exec/GuestPing, freeze), .stats (stats and dirty rate), .dumps (memory dump, screenshot),
.sync, .queries, .migration, .hotplug; their shared state and plumbing in launcher.cmd.base.
The next family (backup) gets a module of its own, added to Commands.families and taken
off UNSUPPORTED.

Semantics follow KubeVirt's cmd-server and LibvirtDomainManager (pkg/virt-launcher/virtwrap);
each family's module says what its rpcs do (launcher.cmd.lifecycle: Pause, Unpause,
Shutdown, Kill, Delete, SoftReboot, Reset). Across them:
- GetGuestInfo / GetUsers / GetFilesystems come from the agent cache, never the agent.
- GetDomainStats is cached 3.25 s, GetDomainDirtyRateStats 3 s (KubeVirt's caches).
- Errors: Response{success: false, message} for every rpc, except Exec and GuestPing which
  answer a real gRPC status (as KubeVirt, whose handlers return the Go error there).
  Messages carry libvirt's code, symbolic name and text. virt-handler prefixes them with
  the command's name itself, so ours do not repeat it. Without a libvirt connection (the
  daemon restarting) an rpc that needs libvirt answers "libvirt is not connected"
  (launcher.libvirt.domain; UNAVAILABLE for Exec/GuestPing).
- Requests naming a VMI are validated first (launcher.cmd.vmi): malformed JSON or another
  VMI than ours is refused before libvirt is touched.
- SyncVirtualMachine goes through launcher.vm.sync.Syncer (convert, prepare the disks, define
  and start; on a running domain, hotplug disks and interfaces, update the definition and
  say what was applied live and what needs a restart). Beyond KubeVirt, a VMI whose uid
  differs from --uid (another incarnation of the same name) is refused. Live migration:
  launcher.cmd.migration; vCPU, memory and host device hotplug: launcher.cmd.hotplug.
  SEV, backup, checkpoint and GetDevices answer "<Rpc> is not supported by this
  launcher"; GetVMStats answers gRPC UNIMPLEMENTED.

Beyond KubeVirt, each documented where it happens: explicit "domain not running/paused"
messages instead of libvirt's generic ones, Exec arguments JSON-encoded (KubeVirt splices
them into a string) and a signal-killed command reported as 128+signal, GuestPing honours
timeoutSeconds, memory dumps only into the hotplug volume directory (and the rpc answers
within virt-handler's deadline while a long dump goes on), Delete of an already undefined
(transient) domain succeeds, flags a driver cannot honour fall back to the conservative
default.
"""

from __future__ import annotations

import asyncio

from launcher.cmd.agent import Agent
from launcher.cmd.base import CMD_SERVICE, CmdContext, Family, unimplemented, unsupported
from launcher.cmd.dumps import Dumps
from launcher.cmd.hotplug import Hotplug
from launcher.cmd.lifecycle import Lifecycle
from launcher.cmd.migration import Migration
from launcher.cmd.queries import Queries
from launcher.cmd.server import Handler
from launcher.cmd.stats import Stats
from launcher.cmd.sync import Sync
from launcher.flags import Options
from launcher.guest.freeze import FreezeManager
from launcher.guest.poller import AgentCache
from launcher.libvirt.connection import Connection
from launcher.libvirt.domain import DomainAccess
from launcher.notify.relay import DomainRelay
from launcher.paths import Paths
from launcher.vm.sync import Syncer

UNSUPPORTED = (
    "GetSEVInfo",
    "GetLaunchMeasurement", "InjectLaunchSecret", "BackupVirtualMachine",
    "RedefineCheckpoint", "GetDevices",
)
UNIMPLEMENTED_STATUS = ("GetVMStats",)  # KubeVirt answers these with gRPC status codes


class Commands:
    """Every rpc of the Cmd service, from its family. `syncer` and `paths` are the
    launcher's own (launcher.wiring builds them); `agent_conn`: the guest agent's
    connection, so a silent agent holds up nothing else (the main one when not given)."""

    def __init__(self, opts: Options, conn: Connection, relay: DomainRelay, agent: AgentCache,
                 freeze: FreezeManager, *, syncer: Syncer, paths: Paths,
                 agent_conn: Connection | None = None) -> None:
        self.ctx = CmdContext(
            opts=opts, paths=paths, libvirt=DomainAccess(conn, relay.domain),
            agent_libvirt=DomainAccess(agent_conn or conn, relay.domain), relay=relay,
            agent=agent, freeze=freeze, syncer=syncer)
        self.lifecycle = Lifecycle(self.ctx)
        self.migration = Migration(self.ctx)
        self.families: tuple[Family, ...] = (
            self.lifecycle, Agent(self.ctx), Stats(self.ctx), Dumps(self.ctx),
            Sync(self.ctx), Queries(self.ctx), self.migration, Hotplug(self.ctx),
        )

    def handlers(self) -> dict[str, Handler]:
        table: dict[str, Handler] = {}
        for family in self.families:
            served = family.handlers()
            twice = set(served) & set(table)
            if twice:  # two families must not silently shadow each other
                raise RuntimeError(f"rpcs served twice: {sorted(twice)}")
            table.update(served)
        for rpc in UNSUPPORTED:
            table[rpc] = unsupported(rpc)
        for rpc in UNIMPLEMENTED_STATUS:
            table[rpc] = unimplemented(rpc)
        missing = {m.name for m in CMD_SERVICE.methods} - set(table)
        if missing:  # a new rpc in the proto must be decided on, not silently defaulted
            raise RuntimeError(f"rpcs without a handler: {sorted(missing)}")
        return table

    async def kill_domain(self) -> None:
        """The launcher's own last resort (see Lifecycle.kill_domain)."""
        await self.lifecycle.kill_domain()

    async def delete_domain(self) -> None:
        """The end of a STANDALONE_VMI (see Lifecycle.delete_domain)."""
        await self.lifecycle.delete_domain()

    async def close(self) -> None:
        """Cancel the work this object owns (cache refreshes, a memory dump's wait).
        A libvirt call already running in the executor finishes on its own."""
        tasks = list(self.ctx.tasks)
        for task in tasks:
            task.cancel()
        # Outcomes were logged where they happened; here only wait for the ends.
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.migration.close()
