r"""The launcher's top level: one TaskGroup owns the long-lived tasks; shutdown is a state
machine with deadlines.

The TaskGroup in run() owns: the daemons (each with its output pump, in the daemon set's
own nested groups), the lifecycle, the hook sidecars' collection, the two libvirt
connections' keepers, the notifier, the agent poller (its workers in its own nested group),
the wait for QEMU and its watch. The short-lived tasks outside it are owned and cancelled by
the object that starts them: the command API's cache refreshes and memory dump
(Commands.close in the teardown), the freeze manager's freeze/thaw and auto-thaw
(FreezeManager.close), the hook sidecars' Shutdown calls (started when QEMU exits, awaited
with a deadline in the teardown), and the waits raced against a signal or a close
(cancelled where they are raced: _until_shutdown, VmShutdown.graceful,
Connection._until_stopped). gRPC's own tasks belong to its server and channels, stopped in
the teardown.

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
import os
import signal
from collections import deque
from collections.abc import Mapping
from typing import Any, TypeVar

import libvirt
import structlog

from launcher import qemu_watch
from launcher.exitcodes import ExitCode
from launcher.flags import Options
from launcher.libvirt.connection import LibvirtUnreachable
from launcher.libvirt.daemons import DaemonFailed, DaemonSet
from launcher.notify import domain_json
from launcher.notify.domain_state import ALIVE_STATES, Lifecycle
from launcher.notify.events import AGENT_LIFECYCLE, LIFECYCLE, DomainEvent
from launcher.paths import Paths
from launcher.shutdown import VmShutdown
from launcher.shutdown_budget import (
    CMD_SERVER_STOP_S,
    DAEMON_STOP_DEADLINE_S,
    FINAL_NOTIFY_TIMEOUT_S,
    HOOK_SHUTDOWN_S,
)
from launcher.state import State
from launcher.vm.errors import StandaloneError, SyncAborted, SyncError
from launcher.vm.standalone import STANDALONE_ENV, adopt_identity, parse_standalone
from launcher.wiring import build

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)
DOMAIN_POLL_S = 1.0  # besides every libvirt event
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
        self.parts = build(opts, paths, accepting_syncs=self._accepting_syncs)
        assert self.parts.daemons is not None  # built with them
        self.daemons: DaemonSet = self.parts.daemons
        self.conn = self.parts.conn
        self.agent_conn = self.parts.agent_conn
        self.notifier = self.parts.notifier
        self.relay = self.parts.relay
        self.agent = self.parts.agent
        self.freeze = self.parts.freeze
        self.syncer = self.parts.syncer
        self.hooks = self.parts.hooks
        self._hooks_stop: asyncio.Task[None] | None = None
        self.commands = self.parts.commands
        self.cmd_server = self.parts.cmd_server
        self.vm_shutdown = VmShutdown(
            opts=opts, conn=self.conn, relay=self.relay, freeze=self.freeze,
            commands=self.commands, standalone=self.standalone is not None,
            signals=self.signals, next_signal=self._next_signal, set_state=self._set_state)
        self.relay.listeners.append(self._on_domain_event)
        # SignalTargetPodCleanup ends a migration target that has no domain, as a signal.
        self.commands.migration.target.request_stop = self._request_stop
        self.qemu_pid: int | None = None
        self._log = structlog.get_logger().bind(domain=opts.domain_name)

    def _accepting_syncs(self) -> bool:
        # Once shutting down (or QEMU is gone), a Sync must not start a new domain.
        return not self._shutdown.is_set() and self.state in (State.STARTING, State.WAITING,
                                                              State.RUNNING)

    # --- signals ------------------------------------------------------------------------
    def _on_signal(self, sig: signal.Signals) -> None:
        # Only record: the state machine logs and acts.
        self.signals.append(sig)
        self._request_stop()

    def _request_stop(self) -> None:
        self._shutdown.set()
        self._signalled.set()

    def _set_state(self, state: State) -> None:
        self.state = state

    def _next_signal(self) -> asyncio.Task[Any]:
        self._signalled.clear()
        return asyncio.ensure_future(self._signalled.wait())

    def _on_domain_event(self, ev: DomainEvent) -> None:
        self.vm_shutdown.observe(ev)
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
            self.parts.shutdown_executors()
            self.state = State.STOPPED
            return ExitCode.STANDALONE_VMI_FAILED
        loop = asyncio.get_running_loop()
        for sig in SHUTDOWN_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        # The monitor starts us with these blocked (launcher.__main__ blocks them too when
        # started directly): one sent before now is pending, and arrives here, handled.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SHUTDOWN_SIGNALS)
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
            self.parts.shutdown_executors()
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
        # The hook sidecars are collected while the daemons start; a Sync waits for them,
        # the command socket (readiness) does not.
        tg.create_task(self.hooks.run(), name="hook-sidecars")
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
            waiting = tg.create_task(self._qemu_pid_or_timeout(), name="wait-for-qemu")
            if started:
                # A signal during that sync must not leave the QEMU it started to the
                # monitor's kill: take its pid, then the graceful path below handles it.
                await asyncio.wait({waiting}, timeout=STANDALONE_SETTLE_S)
            if not await self._until_shutdown(waiting):
                return
            found = waiting.result()
            if isinstance(found, QemuTimeout):
                raise found  # here, so the teardown below runs whole before the group ends
            pid = found
            self.qemu_pid = pid
            await self._adopt_agent_state()
            self.state = State.RUNNING
            self._log.info("watching QEMU", pid=pid, pidfile=self.paths.qemu_pidfile)
            exited = tg.create_task(qemu_watch.wait_exit(pid), name="qemu-watch")
            if not await self._until_shutdown(exited, cancel=False):
                await self.vm_shutdown.graceful(pid, exited)
            # As KubeVirt: the sidecars hear of the end once QEMU is gone, before the wait
            # for the domain's deletion (which this does not hold up).
            self._stop_hooks()
            await self.vm_shutdown.after_qemu_exit(pid)
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
        except SyncAborted as exc:
            # A signal during the sync: nothing was started; the pod just ends (exit 0).
            self._log.info("STANDALONE_VMI not started: the launcher is shutting down",
                           detail=str(exc))
            return False
        except SyncError as exc:
            raise StandaloneFailed(str(exc), exc.field) from None
        return result.action == "started"

    # --- waiting for the domain and QEMU ------------------------------------------------
    async def _qemu_pid_or_timeout(self) -> int | QemuTimeout:
        """A child task's exception makes the TaskGroup cancel its siblings at once: the
        daemons would stop while the teardown still flushes the last snapshots. So the
        timeout is returned, and raised by the lifecycle after its teardown."""
        try:
            return await self._wait_for_qemu()
        except QemuTimeout as exc:
            return exc

    async def _wait_for_qemu(self) -> int:
        """QEMU's pid once the domain `<namespace>_<name>` exists with a UUID and runs;
        checked on every libvirt event and every DOMAIN_POLL_S. Raises QemuTimeout after
        --qemu-timeout with a diagnosis instead of KubeVirt's bare panic."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.opts.qemu_timeout_s
        while True:
            changed = self.relay.changed
            try:
                read = await self.relay.refresh()
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
            read = await self.relay.refresh()
        except (ConnectionError, libvirt.libvirtError):
            return
        if read is not None and "state='connected'" in read.xml and not self.agent.active:
            channels = guest_info_channels(read.xml)
            if channels.get(AGENT_CHANNEL) == "connected":
                self.relay.adopt_agent_connected()
                self.agent.start()

    # --- stopping ---------------------------------------------------------------------------
    def _stop_hooks(self) -> None:
        if self._hooks_stop is None:
            self._hooks_stop = asyncio.ensure_future(self.hooks.shutdown(HOOK_SHUTDOWN_S))

    async def _teardown(self, notifier_task: asyncio.Task[None] | None) -> None:
        self.state = State.STOPPING
        self._log.info("stopping", signals=[s.name for s in self.signals])
        self._stop_hooks()
        assert self._hooks_stop is not None
        try:
            # shutdown() keeps its own deadline; this one only guards against a bug there
            async with asyncio.timeout(HOOK_SHUTDOWN_S + 1):
                await self._hooks_stop
        except TimeoutError:
            self._log.error("hook sidecars' Shutdown overran its deadline",
                            deadline_s=HOOK_SHUTDOWN_S)
        await self.hooks.close()
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
