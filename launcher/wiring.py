"""The launcher's components, built and wired in one place: every dependency goes in through
a constructor, so the supervisor, the integration rigs and the benchmarks assemble the same
thing (only what they swap differs: a libvirt URI such as test:///default, no daemons, a
disk preparation that stays in-process).

    daemons (virtlogd, libvirt) -> conn, agent_conn (libvirt connections: one for the
    guest agent, whose calls may wait seconds) -> relay (the domain's state, libvirt
    events -> notifier) -> agent poller + cache -> freeze manager -> hook sidecars ->
    syncer -> the command API's handlers -> the command server
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from launcher.cmd.commands import Commands
from launcher.cmd.server import CmdServer
from launcher.flags import Options
from launcher.guest import info as guest_info
from launcher.guest.freeze import FreezeManager
from launcher.guest.poller import AgentCache, AgentPoller, groups_from
from launcher.hooks.manager import HookManager
from launcher.libvirt.connection import Connection
from launcher.libvirt.daemons import DaemonSet
from launcher.notify.notifier import Notifier
from launcher.notify.relay import DomainRelay
from launcher.paths import Paths
from launcher.vm.sync import Syncer

LIBVIRT_THREADS = 4
# Guest agent calls get a libvirt connection (and threads) of their own: a call on a
# connection waits while another call on it waits for the agent (up to 5 s per poll, 60 s
# for a freeze), so sharing one would hold up GetDomain, the notify snapshots and the
# shutdown behind a slow or hung guest agent.
AGENT_THREADS = 2


@dataclass
class Components:
    opts: Options
    paths: Paths
    executor: ThreadPoolExecutor
    agent_executor: ThreadPoolExecutor
    daemons: DaemonSet | None  # None: libvirt is someone else's (test:///default)
    conn: Connection
    agent_conn: Connection
    notifier: Notifier
    relay: DomainRelay
    agent_cache: AgentCache
    agent: AgentPoller
    freeze: FreezeManager
    hooks: HookManager
    syncer: Syncer
    commands: Commands
    cmd_server: CmdServer

    def shutdown_executors(self) -> None:
        """After the TaskGroup ended: a libvirt call still running finishes on its own."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.agent_executor.shutdown(wait=False, cancel_futures=True)


def build(opts: Options, paths: Paths, *, uri: str | None = None, with_daemons: bool = True,
          accepting_syncs: Callable[[], bool] = lambda: True,
          syncer_options: dict[str, Any] | None = None,
          freeze_options: dict[str, Any] | None = None,
          freeze_cls: type[FreezeManager] = FreezeManager,
          notify_socket: str | None = None) -> Components:
    """Everything a launcher is made of, wired; nothing started (no thread, no socket).
    `uri` replaces the daemons' libvirt (then `with_daemons` is usually False),
    `notify_socket` virt-handler's socket under the share dir;
    `syncer_options` / `freeze_options` go to those constructors (fakes, short retries)."""
    executor = ThreadPoolExecutor(max_workers=LIBVIRT_THREADS, thread_name_prefix="libvirt-call")
    agent_executor = ThreadPoolExecutor(max_workers=AGENT_THREADS,
                                        thread_name_prefix="libvirt-agent")
    daemons = DaemonSet(opts, paths) if with_daemons else None
    ready = daemons.libvirt.ready.wait if daemons is not None else None
    libvirt_uri = uri or paths.uri
    conn = Connection(libvirt_uri, executor, daemon_ready=ready)
    agent_conn = Connection(libvirt_uri, agent_executor, daemon_ready=ready, label="agent")
    notifier = Notifier(notify_socket or paths.notify_socket)
    relay = DomainRelay(conn=conn, notifier=notifier, domain=opts.domain_name, name=opts.name,
                        namespace=opts.namespace, uid=opts.uid,
                        grace_period_s=opts.grace_period_seconds)
    conn.on_reconnect(relay.attach)
    agent_cache = AgentCache()
    agent = AgentPoller(conn=agent_conn, domain=opts.domain_name, cache=agent_cache,
                        groups=groups_from(opts), on_change=relay.resync)
    relay.guest_status = lambda: guest_info.domain_status_fields(agent_cache.raw())

    def fsfreeze_status(status: str) -> None:
        # What the freeze manager learns reaches GetGuestInfo and virt-handler now, not
        # at the next 5 s poll.
        if agent_cache.put(guest_info.FSFREEZE_STATUS, status):
            relay.resync()

    freeze = freeze_cls(agent_conn, relay, on_status=fsfreeze_status, **(freeze_options or {}))
    # Waiting for the sidecars stops once the launcher stops accepting syncs (a signal).
    hooks = HookManager(paths.hooks_dir, opts.hook_sidecars, opts.qemu_timeout_s,
                        call_timeout_s=opts.hook_timeout_s,
                        stopping=lambda: not accepting_syncs())
    syncer = Syncer(opts=opts, paths=paths, conn=conn, domain=opts.domain_name,
                    accepting=accepting_syncs, hooks=hooks, **(syncer_options or {}))
    commands = Commands(opts, conn, relay, agent_cache, freeze, syncer=syncer, paths=paths,
                        agent_conn=agent_conn)
    cmd_server = CmdServer(init_socket=paths.cmd_init_socket, ready_socket=paths.cmd_socket,
                           nonroot=opts.run_as_nonroot, handlers=commands.handlers())
    return Components(opts=opts, paths=paths, executor=executor,
                      agent_executor=agent_executor, daemons=daemons, conn=conn,
                      agent_conn=agent_conn, notifier=notifier, relay=relay,
                      agent_cache=agent_cache, agent=agent, freeze=freeze, hooks=hooks,
                      syncer=syncer, commands=commands, cmd_server=cmd_server)
