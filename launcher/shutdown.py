"""Shutting the VM down and seeing it off: the graceful path (the graceful-shutdown mark
for virt-handler, a thaw, the ACPI button), the forced one (destroy, then signals to QEMU,
never pid <= 1), and what follows QEMU's exit (report it at once, let libvirt catch up,
stay until the domain is deleted). Every deadline comes from launcher.shutdown_budget."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any

import libvirt
import structlog

from launcher import qemu_watch
from launcher.cmd.commands import Commands
from launcher.flags import Options
from launcher.guest.freeze import FreezeManager
from launcher.libvirt.connection import Connection
from launcher.libvirt.domain import DomainAccess, shutdown_method
from launcher.libvirt.errors import LibvirtDisconnected
from launcher.notify.domain_state import ALIVE_STATES, Lifecycle
from launcher.notify.events import LIFECYCLE, DomainEvent
from launcher.notify.relay import DomainRelay
from launcher.shutdown_budget import (
    DELETE_WAIT_AFTER_KILL_S,
    DELETE_WAIT_S,
    DESTROY_TIMEOUT_S,
    LIBVIRT_CATCH_UP_S,
    QEMU_SIGNAL_WAIT_S,
    STANDALONE_DELETE_WAIT_S,
    STANDALONE_UNDEFINE_S,
)
from launcher.state import State

ACPI_RESEND_S = 5.0  # a power-button press during early boot is lost; press again
GONE_POLL_S = 0.5  # while waiting for the domain's deletion, besides every event


class VmShutdown:
    def __init__(self, *, opts: Options, conn: Connection, relay: DomainRelay,
                 freeze: FreezeManager, commands: Commands, standalone: bool,
                 signals: list[signal.Signals], next_signal: Callable[[], asyncio.Task[Any]],
                 set_state: Callable[[State], None]) -> None:
        self.opts = opts
        self.domain = DomainAccess(conn, opts.domain_name)
        self.relay = relay
        self.freeze = freeze
        self.commands = commands
        self._standalone = standalone
        self._signals = signals  # the supervisor's record, for the log
        self._next_signal = next_signal
        self._set_state = set_state
        self._graceful = False
        self._guest_shutting_down = False  # libvirt reported SHUTDOWN (guest or host)
        self._log = structlog.get_logger().bind(domain=opts.domain_name)

    def observe(self, ev: DomainEvent) -> None:
        if ev.kind == LIFECYCLE and ev.event == Lifecycle.SHUTDOWN:
            self._guest_shutting_down = True

    async def graceful(self, pid: int, exited: asyncio.Task[None]) -> None:
        """Mark the domain for graceful shutdown, thaw a frozen guest, press the power
        button (again every 5 s) until QEMU exits; at the grace period's end or a second
        signal, force it."""
        loop = asyncio.get_running_loop()
        # virt-handler reacts to the mark (Shutdown now, Kill after the grace period); our
        # own ACPI press below is what stops the guest when there is no virt-handler
        # (STANDALONE_VMI). Both press the same button, so neither gets in the other's way.
        self.relay.mark_for_graceful_shutdown()
        grace = float(self.opts.grace_period_seconds)
        self._set_state(State.GRACEFUL)
        self._graceful = True
        self._log.info("graceful shutdown", signals=[s.name for s in self._signals],
                       grace_period_s=grace)
        deadline = loop.time() + grace
        # A migration in flight is aborted first: the VM is shut down where it runs, never
        # left half moved (bounded: an abort that hangs leaves the rest of the grace).
        await self.commands.migration.source.abort_for_shutdown(timeout_s=grace / 2)
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
        flag, via = shutdown_method(self.relay.agent_connected, read.xml)
        try:
            await self.domain.call(lambda dom: dom.shutdownFlags(flag))
            self._log.info("asked the guest to shut down", via=via)
            self.relay.graceful_shutdown_signalled()
        except (libvirt.libvirtError, LibvirtDisconnected) as exc:
            self._log.warning("graceful shutdown request failed", error=str(exc))

    async def _force_stop(self, pid: int, exited: asyncio.Task[None]) -> None:
        self._set_state(State.FORCED)
        self.relay.note_destroy()

        try:
            async with asyncio.timeout(DESTROY_TIMEOUT_S):
                await self.domain.call(
                    lambda dom: dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL))
            self._log.info("domain destroyed")
        except (libvirt.libvirtError, LibvirtDisconnected, TimeoutError) as exc:
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
    async def after_qemu_exit(self, pid: int | None) -> None:
        """Report QEMU's end at once, let libvirt catch up, then stay until the domain is
        deleted."""
        await self.commands.migration.source.settle(LIBVIRT_CATCH_UP_S)
        if self.commands.migration.source.succeeded:  # the VM went to the target
            reason = "Migrated"
        elif self.relay.destroy_noted:  # ours, or virt-handler's Kill at the deadline
            reason = "Destroyed"
        elif self._guest_shutting_down or self._graceful:
            reason = "Shutdown"
        else:
            reason = "Crashed"
        self._set_state(State.FINAL_NOTIFY)
        # Noticed through the pidfd, typically before libvirt: report it now, with what we
        # know, then again once libvirt has caught up.
        self.relay.qemu_exited(reason)
        self._log.info("QEMU exited", pid=pid, reason=reason)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LIBVIRT_CATCH_UP_S
        caught_up = False
        while loop.time() < deadline:
            changed = self.relay.changed
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    read = await self.relay.read()
            except (ConnectionError, libvirt.libvirtError, TimeoutError) as exc:
                self._log.debug("domain not readable", error=str(exc) or "timed out")
            else:
                if read is None or read.state not in ALIVE_STATES:
                    caught_up = True
                    break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(0.5, max(0.0, deadline - loop.time()))):
                    await changed.wait()
        if caught_up:
            self.relay.libvirt_caught_up()  # libvirt's own word from here on
        else:
            self._log.warning("libvirt did not report the domain's end in time; the "
                              "snapshots keep the end QEMU's watch saw", reason=reason,
                              waited_s=LIBVIRT_CATCH_UP_S)
        if not self.domain.connected:
            # The daemon is down (or gone for good: a SIGTERM during its restart backoff);
            # nobody can undefine the domain, so nobody is waited for.
            self._log.warning("libvirt is not reachable: the domain cannot be deleted; "
                              "not waiting for its deletion")
            return
        await self._await_deletion()

    # --- until the domain is deleted ----------------------------------------------------
    async def _await_deletion(self) -> None:
        """Stay until the domain is deleted, as KubeVirt's launcher does: virt-handler sees
        the final state (Shutoff with its reason: the VMI's phase) and then deletes the
        domain (DeleteVirtualMachine), which must find this launcher still serving. Only
        that deletion sends deletionTimestamp (launcher.notify.relay)."""
        self._set_state(State.AWAITING_DELETE)
        if self._standalone:
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

