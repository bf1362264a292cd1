"""Lifecycle rpcs: Pause, Unpause, Reset, SoftReboot, Shutdown, Kill, Delete; and the
launcher's own kill_domain() / delete_domain() (its last resort, the end of a
STANDALONE_VMI).

KubeVirt's semantics (LibvirtDomainManager):
- Pause / Unpause check the state first: pausing a domain that is not running, or
  unpausing one that is not paused, is a successful no-op.
- Shutdown asks a running or paused guest to power off (ACPI power button; the agent when
  the domain has no ACPI), thawing a frozen guest first; Kill destroys (graceful flag) a
  running, paused or shutting-down domain; Delete undefines keeping NVRAM. A domain that
  is gone, already off or (Delete) no longer defined makes each of them a success.
- SoftReboot reboots through the guest agent when it is connected, else ACPI (refused when
  the VMI disabled ACPI); an unresponsive agent is not an error (KubeVirt's choice).
- Reset is a hard reset.
Beyond KubeVirt: explicit "domain not running/paused" messages, Delete of an already
undefined (transient) domain succeeds.
"""

from __future__ import annotations

from typing import Any

import libvirt

from launcher.cmd.base import RUNNING, CmdContext, RpcFailure, status_name, vmi_rpc, with_flags
from launcher.cmd.server import Handler
from launcher.cmd.vmi import VMI
from launcher.libvirt.domain import shutdown_method
from launcher.notify.domain_state import ALIVE_STATES, State

SHUTDOWN_THAW_TIMEOUT_S = 12.0  # a Shutdown rpc thaws a frozen guest first; bounded


class Lifecycle:
    def __init__(self, ctx: CmdContext) -> None:
        self.ctx = ctx
        self._log = ctx.log

    def handlers(self) -> dict[str, Handler]:
        rpcs = {
            "PauseVirtualMachine": self._pause,
            "UnpauseVirtualMachine": self._unpause,
            "ResetVirtualMachine": self._reset,
            "SoftRebootVirtualMachine": self._soft_reboot,
            "ShutdownVirtualMachine": self._shutdown,
            "KillVirtualMachine": self._kill,
            "DeleteVirtualMachine": self._delete,
        }
        return {rpc: vmi_rpc(self.ctx, rpc, body) for rpc, body in rpcs.items()}

    async def _pause(self, vmi: VMI, request: Any) -> None:
        async with self.ctx.modify:
            read = await self.ctx.read()
            if read.state != State.RUNNING:
                self._log.info("domain is not running; nothing to pause",
                               status=status_name(read))
                return
            await self.ctx.libvirt.call(lambda dom: dom.suspend())
            self._log.info("paused the domain")

    async def _unpause(self, vmi: VMI, request: Any) -> None:
        async with self.ctx.modify:
            read = await self.ctx.read()
            if read.state != State.PAUSED:
                self._log.info("domain is not paused; nothing to unpause",
                               status=status_name(read))
                return
            await self.ctx.libvirt.call(lambda dom: dom.resume())
            self._log.info("unpaused the domain")

    async def _reset(self, vmi: VMI, request: Any) -> None:
        read = await self.ctx.read()
        # A paused domain resets (and stays paused), as QEMU does.
        self.ctx.require(read, ALIVE_STATES, "reset")
        await self.ctx.libvirt.call(lambda dom: dom.reset(0))
        self._log.info("reset the domain")

    async def _soft_reboot(self, vmi: VMI, request: Any) -> None:
        # KubeVirt looks at the VMI's AgentConnected condition; the relay's own view of
        # the agent-lifecycle events counts too (it is at least as fresh).
        agent = self.ctx.relay.agent_connected or vmi.agent_connected_condition()
        if not agent and vmi.acpi_disabled():
            raise RpcFailure("VMI neither have the agent connected nor the ACPI feature "
                             "enabled")
        read = await self.ctx.read()
        if read.state == State.PAUSED:
            raise RpcFailure(f"cannot soft-reboot: domain {self.ctx.domain} is paused and its "
                             "guest cannot act on the request; unpause first")
        self.ctx.require(read, RUNNING, "soft-reboot")
        flag = (libvirt.VIR_DOMAIN_REBOOT_GUEST_AGENT if agent
                else libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)
        try:
            await self.ctx.on(agent=agent).call(lambda dom: dom.reboot(flag))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_AGENT_UNRESPONSIVE:
                raise
            # KubeVirt's choice: the agent going silent is what a rebooting guest does.
            self._log.warning("agent unresponsive during soft reboot", error=str(exc))
        self._log.info("soft-rebooted the domain", via="agent" if agent else "acpi")

    async def _shutdown(self, vmi: VMI, request: Any) -> None:
        relay = self.ctx.relay
        read = await relay.read()
        if read is not None and read.state == State.RUNNING:
            # A frozen guest cannot write while it shuts down: thaw it first. Outside the
            # modify lock: a Kill must not wait behind this.
            await self.ctx.freeze.thaw_if_frozen(SHUTDOWN_THAW_TIMEOUT_S)
        async with self.ctx.modify:
            read = await relay.read()
            if read is None or read.state not in (State.RUNNING, State.PAUSED):
                self._log.info("domain not running or paused; nothing to shut down",
                               status=None if read is None else status_name(read))
                return
            # ACPI power button; the agent instead when the domain has no ACPI (as the
            # launcher's own graceful shutdown). KubeVirt passes libvirt's default, which
            # prefers the agent whenever it is connected.
            flag, via = shutdown_method(relay.agent_connected, read.xml)
            await self.ctx.on(agent=via == "agent").call(
                lambda dom: with_flags(dom.shutdownFlags, flag, 0))
            self._log.info("asked the guest to shut down", via=via)
            # virt-handler counts its grace period from this (KubeVirt's SignalShutdownVMI).
            relay.graceful_shutdown_signalled()

    async def _kill(self, vmi: VMI, request: Any) -> None:
        await self.kill_domain()

    async def kill_domain(self) -> None:
        """Destroy (graceful flag) a running, paused or shutting-down domain; anything else
        is nothing to do (KubeVirt's KillVMI). Also the launcher's own last resort."""
        async with self.ctx.modify:
            read = await self.ctx.relay.read()
            if read is None or read.state not in (State.RUNNING, State.PAUSED,
                                                  State.SHUTDOWN):
                self._log.info("domain not running, paused or shutting down; nothing to kill")
                return
            # Before the call: QEMU's end may be seen (pidfd) before destroyFlags returns.
            self.ctx.relay.note_destroy()
            try:
                await self.ctx.libvirt.call(
                    lambda dom: dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
            self._log.info("destroyed the domain")

    async def _delete(self, vmi: VMI, request: Any) -> None:
        await self.delete_domain()

    async def delete_domain(self) -> None:
        """Undefine, keeping NVRAM (KubeVirt's DeleteVMI); a domain already gone is done.
        Also what the launcher does itself at the end of a STANDALONE_VMI."""
        flags = (libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
                 | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)

        def undefine(dom: Any) -> bool:
            # Beyond KubeVirt: a running domain that was undefined already is transient;
            # undefining it again is libvirt's "cannot undefine transient domain", but
            # there is nothing left to delete: success (idempotent).
            if not dom.isPersistent():
                return False
            with_flags(dom.undefineFlags, flags, 0)
            return True

        async with self.ctx.modify:
            try:
                undefined = await self.ctx.libvirt.call(undefine)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                undefined = False
            if undefined:
                self._log.info("undefined the domain (NVRAM kept)")
            else:
                self._log.info("domain not defined (gone or transient); nothing to delete")
