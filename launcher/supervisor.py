r"""The launcher's top level: one TaskGroup owns every task; shutdown is a state machine
with deadlines.

  STARTING --daemons, libvirt, notify relay, cmd server--> WAITING (for the domain + QEMU;
  with STANDALONE_VMI the launcher syncs it first: a signal meanwhile waits for the sync,
  then takes the graceful path, so a QEMU just started is shut down, not left to the
  monitor's kill)
  WAITING --QEMU pid found--> RUNNING --QEMU exits--> FINAL_NOTIFY --> AWAITING_DELETE
  --domain deleted (or deadline)--> STOPPING --> STOPPED
  any signal: WAITING/STARTING --> STOPPING;  RUNNING --> GRACEFUL (the domain is marked for
  graceful shutdown for virt-handler, and the guest asked to power off) --grace expires or
  a second signal--> FORCED (destroy; SIGTERM/SIGKILL of QEMU if destroy fails) -->
  FINAL_NOTIFY
Every deadline after the grace period comes from launcher.shutdown_budget, which the monitor
allows for as a whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import libvirt
import structlog

from launcher import qemu_watch
from launcher.cmd.commands import Commands
from launcher.cmd.server import CmdServer
from launcher.exitcodes import ExitCode
from launcher.flags import Options
from launcher.guest import info as guest_info
from launcher.guest.freeze import FreezeManager
from launcher.guest.info import FSFREEZE_STATUS
from launcher.guest.poller import AgentCache, AgentPoller, groups_from
from launcher.libvirt.connection import Connection, LibvirtUnreachable
from launcher.libvirt.daemons import DaemonFailed, DaemonSet
from launcher.notify import domain_json
from launcher.notify.domain_state import Lifecycle
from launcher.notify.events import AGENT_LIFECYCLE, LIFECYCLE, DomainEvent
from launcher.notify.notifier import Notifier
from launcher.notify.relay import ALIVE_STATES, DomainRelay
from launcher.paths import Paths
from launcher.shutdown_budget import (
    CMD_SERVER_STOP_S,
    DAEMON_STOP_DEADLINE_S,
    DELETE_WAIT_AFTER_KILL_S,
    DELETE_WAIT_S,
    DESTROY_TIMEOUT_S,
    FINAL_NOTIFY_TIMEOUT_S,
    LIBVIRT_CATCH_UP_S,
    QEMU_SIGNAL_WAIT_S,
    STANDALONE_DELETE_WAIT_S,
    STANDALONE_UNDEFINE_S,
)
from launcher.vm.errors import StandaloneError, SyncError
from launcher.vm.standalone import STANDALONE_ENV, adopt_identity, parse_standalone
from launcher.vm.sync import Syncer

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)
DOMAIN_POLL_S = 1.0  # besides every libvirt event
ACPI_RESEND_S = 5.0  # a power-button press during early boot is lost; press again
GONE_POLL_S = 0.5  # while waiting for the domain's deletion, besides every event
QEMU_LOG_TAIL = 10
# After the STANDALONE_VMI sync started QEMU, how long to wait for its pid even when a
# signal came meanwhile (libvirt writes the pid file before create returns).
STANDALONE_SETTLE_S = 5.0

E = TypeVar("E", bound=BaseException)
AGENT_CHANNEL = "org.qemu.guest_agent.0"


def guest_info_channels(xml: str) -> dict[str, str]:
    """channel target name -> state, from a live domain XML."""
    spec = domain_json.spec_from_xml(xml)
    return {c.get("Target", {}).get("Name", ""): c.get("Target", {}).get("State", "")
            for c in spec.get("Devices", {}).get("Channels", [])}


def _first(group: BaseExceptionGroup[Any], kind: type[E]) -> E:
    """The first leaf exception of `kind` in a (possibly nested) exception group."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            with contextlib.suppress(LookupError):
                return _first(exc, kind)
        elif isinstance(exc, kind):
            return exc
    raise LookupError(kind)


class QemuTimeout(Exception):
    def __init__(self, diagnosis: dict[str, Any]) -> None:
        self.diagnosis = diagnosis
        super().__init__(diagnosis["error"])


class StandaloneFailed(Exception):
    """The STANDALONE_VMI sync failed; `field` is the VMI field at fault, when known."""

    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(message)
        self.field = field


class State(enum.Enum):
    STARTING = "starting"
    WAITING = "waiting-for-domain"
    RUNNING = "running"
    GRACEFUL = "graceful-shutdown"
    FORCED = "forced-shutdown"
    FINAL_NOTIFY = "final-notify"
    AWAITING_DELETE = "awaiting-delete"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Launcher:
    def __init__(self, opts: Options, paths: Paths,
                 environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        # STANDALONE_VMI is read before anything is built: the VMI may name the domain
        # (flags left empty take its metadata, see launcher.vm.standalone.adopt_identity).
        self.standalone: dict[str, Any] | None = None
        self._standalone_error: StandaloneError | None = None
        if STANDALONE_ENV in env:
            try:
                doc = parse_standalone(env[STANDALONE_ENV])
                opts = adopt_identity(opts, doc)
            except StandaloneError as exc:
                self._standalone_error = exc
            else:
                self.standalone = doc
                paths = paths._replace(domain=opts.domain_name, uid=opts.uid)
        self.opts = opts
        self.paths = paths
        self.state = State.STARTING
        self.signals: list[signal.Signals] = []
        self._signalled = asyncio.Event()  # re-armed after each signal is consumed
        self._shutdown = asyncio.Event()
        self._exit_code = ExitCode.OK
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="libvirt-call")
        self.daemons = DaemonSet(opts, paths)
        self.conn = Connection(paths.uri, self._executor,
                               daemon_ready=self.daemons.libvirt.ready.wait)
        # Guest agent calls get a libvirt connection (and threads) of their own: a call on
        # a connection waits while another call on it waits for the agent (up to 5 s per
        # poll, 60 s for a freeze), so sharing one would hold up GetDomain, the notify
        # snapshots and the shutdown behind a slow or hung guest agent.
        self._agent_executor = ThreadPoolExecutor(max_workers=2,
                                                  thread_name_prefix="libvirt-agent")
        self.agent_conn = Connection(paths.uri, self._agent_executor,
                                     daemon_ready=self.daemons.libvirt.ready.wait,
                                     label="agent")
        self.notifier = Notifier(paths.notify_socket)
        self.relay = DomainRelay(conn=self.conn, notifier=self.notifier,
                                 domain=opts.domain_name, name=opts.name,
                                 namespace=opts.namespace, uid=opts.uid,
                                 grace_period_s=opts.grace_period_seconds)
        self.relay.listeners.append(self._on_domain_event)
        self.conn.on_reconnect(self.relay.attach)
        self.agent_cache = AgentCache()
        self.agent = AgentPoller(conn=self.agent_conn, domain=opts.domain_name,
                                 cache=self.agent_cache, groups=groups_from(opts),
                                 on_change=self.relay.resync)
        self.relay.guest_status = lambda: guest_info.domain_status_fields(
            self.agent_cache.raw())
        self.freeze = FreezeManager(self.agent_conn, self.relay,
                                    on_status=self._fsfreeze_status)
        self.syncer = Syncer(opts=opts, paths=paths, conn=self.conn, domain=opts.domain_name,
                             accepting=self._accepting_syncs)
        self.commands = Commands(opts, self.conn, self.relay, self.agent_cache, self.freeze,
                                 syncer=self.syncer, agent_conn=self.agent_conn)
        self.cmd_server = CmdServer(init_socket=paths.cmd_init_socket,
                                    ready_socket=paths.cmd_socket,
                                    nonroot=opts.run_as_nonroot,
                                    handlers=self.commands.handlers())
        self.qemu_pid: int | None = None
        self._guest_shutting_down = False  # libvirt reported SHUTDOWN (guest or host)
        self._destroyed = False
        self._log = structlog.get_logger().bind(domain=opts.domain_name)

    def _accepting_syncs(self) -> bool:
        # Once shutting down (or QEMU is gone), a Sync must not start a new domain.
        return not self._shutdown.is_set() and self.state in (State.STARTING, State.WAITING,
                                                              State.RUNNING)

    # --- signals ------------------------------------------------------------------------
    def _on_signal(self, sig: signal.Signals) -> None:
        # Only record: the state machine logs and acts.
        self.signals.append(sig)
        self._shutdown.set()
        self._signalled.set()

    def _fsfreeze_status(self, status: str) -> None:
        """The freeze manager learned the guest's fsfreeze status: the cache (GetGuestInfo)
        and virt-handler hear of it now, not at the next 5 s poll."""
        if self.agent_cache.put(FSFREEZE_STATUS, status):
            self.relay.resync()

    def _on_domain_event(self, ev: DomainEvent) -> None:
        if ev.kind == LIFECYCLE and ev.event == Lifecycle.SHUTDOWN:
            self._guest_shutting_down = True
        # The agent poller runs while the agent is connected and the guest runs.
        if ev.kind == AGENT_LIFECYCLE:
            if ev.info.get("state") == "connected":
                self.agent.start()
            else:
                self.agent.stop()
        elif ev.kind == LIFECYCLE:
            if ev.event in (Lifecycle.SUSPENDED, Lifecycle.STOPPED, Lifecycle.SHUTDOWN,
                            Lifecycle.CRASHED):
                self.agent.stop()
            elif ev.event in (Lifecycle.RESUMED, Lifecycle.STARTED) and self.relay.agent_connected:
                self.agent.start()

    # --- top level ----------------------------------------------------------------------
    async def run(self) -> int:
        if self._standalone_error is not None:
            # Refused before any daemon starts: nothing to tear down, nothing left behind.
            rejected = self._standalone_error
            self._log.error("STANDALONE_VMI rejected; exiting", error=str(rejected),
                            field=rejected.field)
            self._executor.shutdown(wait=False)
            self._agent_executor.shutdown(wait=False)
            self.state = State.STOPPED
            return ExitCode.STANDALONE_VMI_FAILED
        loop = asyncio.get_running_loop()
        for sig in SHUTDOWN_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.daemons.run(), name="daemons")
                tg.create_task(self._lifecycle(tg), name="lifecycle")
        except* DaemonFailed as group:
            exc = _first(group, DaemonFailed)
            self._log.error("a libvirt daemon could not be kept running; exiting",
                            daemon=exc.name, reason=exc.reason, last_lines=exc.last_lines)
            self._exit_code = ExitCode.DAEMON_FAILED
        except* LibvirtUnreachable as group:
            self._log.error("libvirt unreachable; exiting",
                            error=str(_first(group, LibvirtUnreachable)))
            self._exit_code = ExitCode.LIBVIRT_UNREACHABLE
        except* StandaloneFailed as group:
            failed = _first(group, StandaloneFailed)
            self._log.error("STANDALONE_VMI could not be synced; exiting", error=str(failed),
                            field=failed.field)
            self._exit_code = ExitCode.STANDALONE_VMI_FAILED
        except* QemuTimeout as group:
            qt = _first(group, QemuTimeout)
            self._log.error(str(qt), **{k: v for k, v in qt.diagnosis.items() if k != "error"})
            self._exit_code = ExitCode.QEMU_TIMEOUT
        finally:
            for sig in SHUTDOWN_SIGNALS:
                loop.remove_signal_handler(sig)
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._agent_executor.shutdown(wait=False, cancel_futures=True)
            self.state = State.STOPPED
        if self._exit_code == ExitCode.OK:
            self._log.info("launcher exited cleanly")
        return self._exit_code

    async def _until_shutdown(self, aw: asyncio.Task[Any], cancel: bool = True) -> bool:
        """Wait for `aw` or a shutdown signal; True if `aw` finished first. On a signal `aw`
        is cancelled unless `cancel` is False (the QEMU watch must outlive the signal)."""
        stop: asyncio.Task[Any] = asyncio.ensure_future(self._shutdown.wait())
        try:
            done, _ = await asyncio.wait({aw, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if aw in done:
            aw.result()  # re-raise its failure
            return True
        if cancel:
            aw.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await aw
        return False

    async def _lifecycle(self, tg: asyncio.TaskGroup) -> None:
        notifier_task: asyncio.Task[None] | None = None
        agent_task: asyncio.Task[None] | None = None
        try:
            if not await self._until_shutdown(tg.create_task(self.daemons.all_ready())):
                return
            if not await self._until_shutdown(tg.create_task(self.conn.connect())):
                return
            tg.create_task(self.conn.run(), name="libvirt-connection")
            if not await self._until_shutdown(tg.create_task(self.agent_conn.connect())):
                return
            tg.create_task(self.agent_conn.run(), name="libvirt-agent-connection")
            notifier_task = tg.create_task(self.notifier.run(), name="notifier")
            agent_task = tg.create_task(self.agent.run(), name="agent-poller")
            if self.conn.conn is not None:  # else the reconnect path attaches it
                await self.conn.run_hooks(self.conn.conn)
            await self.cmd_server.start()
            self.state = State.WAITING
            self._log.info("launcher running", uri=self.paths.uri,
                           virtlogd_pid=self.daemons.virtlogd.pid,
                           libvirt_pid=self.daemons.libvirt.pid,
                           qemu_timeout_s=self.opts.qemu_timeout_s)
            started = False
            if self.standalone is not None and not self._shutdown.is_set():
                started = await self._sync_standalone(self.standalone)
            waiting = tg.create_task(self._wait_for_qemu(), name="wait-for-qemu")
            if started:
                # A signal during that sync must not leave the QEMU it started to the
                # monitor's kill: take its pid, then the graceful path below handles it.
                await asyncio.wait({waiting}, timeout=STANDALONE_SETTLE_S)
            if not await self._until_shutdown(waiting):
                return
            pid = waiting.result()
            self.qemu_pid = pid
            await self._adopt_agent_state()
            self.state = State.RUNNING
            self._log.info("watching QEMU", pid=pid, pidfile=self.paths.qemu_pidfile)
            exited = tg.create_task(qemu_watch.wait_exit(pid), name="qemu-watch")
            if not await self._until_shutdown(exited, cancel=False):
                await self._shutdown_guest(pid, exited)
            await self._after_qemu_exit()
        finally:
            if agent_task is not None:
                agent_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await agent_task
            await self._teardown(notifier_task)

    async def _sync_standalone(self, doc: dict[str, Any]) -> bool:
        """Sync STANDALONE_VMI as virt-handler would (KubeVirt passes no options but an
        empty SMBios: our defaults). True when it started the domain."""
        self._log.info("syncing STANDALONE_VMI")
        try:
            result = await self.syncer.sync(doc, None)
        except SyncError as exc:
            raise StandaloneFailed(str(exc), exc.field) from None
        return result.action == "started"

    # --- waiting for the domain and QEMU ------------------------------------------------
    async def _wait_for_qemu(self) -> int:
        """QEMU's pid once the domain `<namespace>_<name>` exists with a UUID and runs;
        checked on every libvirt event and every DOMAIN_POLL_S. Raises QemuTimeout after
        --qemu-timeout with a diagnosis instead of KubeVirt's bare panic."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.opts.qemu_timeout_s
        while True:
            changed = self.relay.changed
            try:
                read = await self.relay.read()
            except (ConnectionError, libvirt.libvirtError) as exc:
                self._log.debug("domain not readable yet", error=str(exc))
                read = None
            if read is not None and read.uuid and read.state in ALIVE_STATES:
                pid = qemu_watch.read_pid(self.paths.qemu_pidfile)
                if pid is not None:
                    return pid
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise QemuTimeout(await self._diagnose(read))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(DOMAIN_POLL_S, remaining)):
                    await changed.wait()

    async def _diagnose(self, read: Any) -> dict[str, Any]:
        defined: list[str] = []
        conn = self.conn.conn
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                domains = await self.conn.call(conn.listAllDomains, 0)
                defined = [d.name() for d in domains]
        if read is None:
            error = "timed out waiting for domain to be defined"
        else:
            error = "timed out waiting for the domain to start (no QEMU process)"
        return {
            "error": error,
            "timeout_s": self.opts.qemu_timeout_s,
            "domain_expected": self.opts.domain_name,
            "libvirt_daemon_up": self.daemons.libvirt.ready.is_set(),
            "libvirt_connected": self.conn.conn is not None,
            "domains_defined": defined,
            "domain_state": None if read is None else read.state,
            "qemu_pidfile": self.paths.qemu_pidfile,
            "daemon_last_lines": list(self.daemons.libvirt.last_lines)[-QEMU_LOG_TAIL:],
            "qemu_log_tail": self._qemu_log_tail(),
        }

    def _qemu_log_tail(self) -> list[str]:
        path = os.path.join(self.paths.qemu_log_dir, f"{self.opts.domain_name}.log")
        try:
            with open(path, errors="replace") as f:
                return list(deque(f, maxlen=QEMU_LOG_TAIL))
        except FileNotFoundError:
            return []

    async def _adopt_agent_state(self) -> None:
        """An agent that connected before our subscription (no CONNECTED event for us): the
        live XML's channel state says so."""
        try:
            read = await self.relay.read()
        except (ConnectionError, libvirt.libvirtError):
            return
        if read is not None and "state='connected'" in read.xml and not self.agent.active:
            channels = guest_info_channels(read.xml)
            if channels.get(AGENT_CHANNEL) == "connected":
                self.relay.adopt_agent_connected()
                self.agent.start()

    # --- shutting the guest down ----------------------------------------------------------
    def _next_signal(self) -> asyncio.Task[Any]:
        self._signalled.clear()
        return asyncio.ensure_future(self._signalled.wait())

    async def _shutdown_guest(self, pid: int, exited: asyncio.Task[None]) -> None:
        loop = asyncio.get_running_loop()
        # virt-handler reacts to the mark (Shutdown now, Kill after the grace period); our
        # own ACPI press below is what stops the guest when there is no virt-handler
        # (STANDALONE_VMI). Both press the same button, so neither gets in the other's way.
        self.relay.mark_for_graceful_shutdown()
        grace = float(self.opts.grace_period_seconds)
        self.state = State.GRACEFUL
        self._log.info("graceful shutdown", signals=[s.name for s in self.signals],
                       grace_period_s=grace)
        deadline = loop.time() + grace
        # A guest left frozen (a backup hook that never thawed) would not shut down cleanly
        # and must never stay frozen: thaw first, bounded.
        await self.freeze.thaw_if_frozen(timeout_s=min(20.0, grace / 2))
        another = self._next_signal()
        try:
            while not exited.done():
                await self._request_graceful()
                wait_s = min(ACPI_RESEND_S, deadline - loop.time())
                if wait_s <= 0:
                    self._log.warning("grace period expired; destroying the domain",
                                      grace_period_s=grace)
                    break
                done, _ = await asyncio.wait({exited, another}, timeout=wait_s,
                                             return_when=asyncio.FIRST_COMPLETED)
                if another in done:
                    self._log.warning("second signal; destroying the domain now")
                    break
        finally:
            another.cancel()
        if not exited.done():
            await self._force_stop(pid, exited)

    async def _request_graceful(self) -> None:
        """ACPI power button; the guest agent instead when it is connected and the domain
        has no ACPI."""
        try:
            read = await self.relay.read()
        except ConnectionError as exc:
            self._log.warning("cannot request graceful shutdown", error=str(exc))
            return
        if read is None or read.state not in ALIVE_STATES:
            return
        use_agent = self.relay.agent_connected and "<acpi/>" not in read.xml
        flag = (libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT if use_agent
                else libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)

        def shutdown() -> None:
            self.conn.conn.lookupByName(self.opts.domain_name).shutdownFlags(flag)

        try:
            await self.conn.call(shutdown)
            self._log.info("asked the guest to shut down", via="agent" if use_agent else "acpi")
            self.relay.graceful_shutdown_signalled()
        except (libvirt.libvirtError, AttributeError) as exc:
            self._log.warning("graceful shutdown request failed", error=str(exc))

    async def _force_stop(self, pid: int, exited: asyncio.Task[None]) -> None:
        self.state = State.FORCED
        self._destroyed = True

        def destroy() -> None:
            self.conn.conn.lookupByName(self.opts.domain_name).destroyFlags(
                libvirt.VIR_DOMAIN_DESTROY_GRACEFUL)

        try:
            async with asyncio.timeout(DESTROY_TIMEOUT_S):
                await self.conn.call(destroy)
            self._log.info("domain destroyed")
        except (libvirt.libvirtError, AttributeError, TimeoutError) as exc:
            self._log.error("destroy failed; signalling QEMU directly", error=str(exc), pid=pid)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(QEMU_SIGNAL_WAIT_S):
                    await asyncio.shield(exited)
            if exited.done():
                return
            if qemu_watch.signal_qemu(pid, sig):
                self._log.warning("signalled QEMU", pid=pid, signal=sig.name)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(QEMU_SIGNAL_WAIT_S):
                await asyncio.shield(exited)

    # --- after QEMU is gone -------------------------------------------------------------
    async def _after_qemu_exit(self) -> None:
        if self._destroyed:
            reason = "Destroyed"
        elif self._guest_shutting_down or self.state == State.GRACEFUL:
            reason = "Shutdown"
        else:
            reason = "Crashed"
        self.state = State.FINAL_NOTIFY
        # Noticed through the pidfd, typically before libvirt: report it now, with what we
        # know, then again once libvirt has caught up.
        self.relay.qemu_exited(reason)
        self._log.info("QEMU exited", pid=self.qemu_pid, reason=reason)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LIBVIRT_CATCH_UP_S
        while loop.time() < deadline:
            changed = self.relay.changed
            try:
                read = await self.relay.read()
            except (ConnectionError, libvirt.libvirtError):
                read = None
            if read is None or read.state not in ALIVE_STATES:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(0.5, max(0.0, deadline - loop.time()))):
                    await changed.wait()
        self.relay.libvirt_caught_up()  # libvirt's own word from here on
        await self._await_deletion()

    # --- until the domain is deleted ----------------------------------------------------
    async def _await_deletion(self) -> None:
        """Stay until the domain is deleted, as KubeVirt's launcher does: virt-handler sees
        the final state (Shutoff with its reason: the VMI's phase) and then deletes the
        domain (DeleteVirtualMachine), which must find this launcher still serving. Only
        that deletion sends deletionTimestamp (launcher.notify.relay)."""
        self.state = State.AWAITING_DELETE
        if self.standalone is not None:
            # No virt-handler: a stand-in may still send Delete; otherwise undefine it
            # ourselves, so the event flow ends the same way.
            if await self._wait_gone(STANDALONE_DELETE_WAIT_S):
                return
            self._log.info("no Delete came (STANDALONE_VMI: no virt-handler); deleting "
                           "the domain", waited_s=STANDALONE_DELETE_WAIT_S)
            try:
                await self.commands.delete_domain()
            except (libvirt.libvirtError, ConnectionError) as exc:
                self._log.warning("deleting the domain failed", error=str(exc))
            if not await self._wait_gone(STANDALONE_UNDEFINE_S):
                self._log.warning("the domain is still defined; exiting anyway",
                                  waited_s=STANDALONE_UNDEFINE_S)
            return
        self._log.info("waiting for the domain to be deleted", timeout_s=DELETE_WAIT_S)
        if await self._wait_gone(DELETE_WAIT_S):
            return
        # KubeVirt's waitForFinalNotify: kill whatever is left of the domain, wait again.
        self._log.warning("the domain was not deleted in time; killing what is left of it",
                          waited_s=DELETE_WAIT_S)
        try:
            async with asyncio.timeout(DESTROY_TIMEOUT_S):
                await self.commands.kill_domain()
        except (libvirt.libvirtError, ConnectionError, TimeoutError) as exc:
            self._log.warning("kill failed", error=str(exc))
        if not await self._wait_gone(DELETE_WAIT_AFTER_KILL_S):
            self._log.warning("the domain was not deleted; exiting anyway (virt-handler "
                              "learns of it from the closed command socket)",
                              waited_s=DELETE_WAIT_S + DELETE_WAIT_AFTER_KILL_S)

    async def _wait_gone(self, timeout_s: float) -> bool:
        """True once libvirt no longer knows the domain (within `timeout_s`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            changed = self.relay.changed
            try:
                if await self.relay.read() is None:
                    self._log.info("domain deleted")
                    return True
            except (ConnectionError, libvirt.libvirtError) as exc:
                self._log.debug("domain not readable", error=str(exc))
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(GONE_POLL_S, remaining)):
                    await changed.wait()

    async def _teardown(self, notifier_task: asyncio.Task[None] | None) -> None:
        self.state = State.STOPPING
        self._log.info("stopping", signals=[s.name for s in self.signals])
        if notifier_task is not None:
            if not await self.notifier.flush(FINAL_NOTIFY_TIMEOUT_S):
                self._log.warning("final notify not delivered in time",
                                  timeout_s=FINAL_NOTIFY_TIMEOUT_S)
            notifier_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await notifier_task
            await self.notifier.close()
        await self.cmd_server.stop(CMD_SERVER_STOP_S)
        # After the server: a late rpc must not start work these no longer own.
        await self.commands.close()
        await self.freeze.close()
        try:
            async with asyncio.timeout(DAEMON_STOP_DEADLINE_S):
                await self.relay.detach()
                await self.conn.close()
                await self.agent_conn.close()
                await self.daemons.stop()
        except TimeoutError:
            self._log.error("daemons did not stop within the deadline",
                            deadline_s=DAEMON_STOP_DEADLINE_S)
