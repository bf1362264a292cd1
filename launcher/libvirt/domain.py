"""Our domain through one libvirt connection: the one way the command API (launcher.cmd) and
the guest agent calls (launcher.guest) reach it.

Every access either works, raises a libvirt error (code and message, for
launcher.libvirt.errors.libvirt_message), or raises LibvirtDisconnected: while the daemon
restarts the connection's virConnect is None, and a call that finds it so, or loses it on
the way, says "libvirt is not connected" instead of failing on None. The blocking parts
run in the connection's executor, never on the asyncio loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import libvirt

from launcher.libvirt.connection import Connection
from launcher.libvirt.errors import LibvirtDisconnected

T = TypeVar("T")


class DomainAccess:
    def __init__(self, conn: Connection, domain: str) -> None:
        self.connection = conn
        self.domain = domain

    @property
    def connected(self) -> bool:
        return self.connection.conn is not None

    # --- blocking (executor only) -----------------------------------------------------------
    def virconn(self) -> Any:
        """The live virConnect, read once: a caller keeps using the one it got (the
        connection may be replaced or dropped under it by the reconnect path)."""
        conn = self.connection.conn
        if conn is None:
            raise LibvirtDisconnected()
        return conn

    def lookup(self) -> Any:
        """Blocking: our virDomain. Its .connect() is the virConnect it was found on: use
        that for connection-level calls about it, never the connection's current one."""
        virconn = self.virconn()
        return self._guarded(virconn, lambda: virconn.lookupByName(self.domain))

    def _guarded(self, virconn: Any, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except libvirt.libvirtError as exc:
            # The daemon went away during the call: the error is libvirt's view of a lost
            # connection ("client socket is closed", "invalid connection pointer"), not
            # something about the domain. Said as such.
            if (self.connection.conn is not virconn
                    or exc.get_error_code() == libvirt.VIR_ERR_INVALID_CONN):
                raise LibvirtDisconnected() from exc
            raise

    # --- async (in the connection's executor) -----------------------------------------------
    async def call(self, fn: Callable[[Any], T], *, executor: Executor | None = None) -> T:
        """fn(our virDomain), blocking, in the connection's executor (or `executor`)."""
        def run() -> T:
            virconn = self.virconn()
            return self._guarded(virconn, lambda: fn(virconn.lookupByName(self.domain)))

        if executor is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(executor, run)
        result: T = await self.connection.call(run)
        return result

    async def call_conn(self, fn: Callable[[Any], T]) -> T:
        """fn(the live virConnect), for calls not about a domain (the hypervisor version)."""
        def run() -> T:
            virconn = self.virconn()
            return self._guarded(virconn, lambda: fn(virconn))

        result: T = await self.connection.call(run)
        return result

    async def state(self) -> tuple[int, int] | None:
        """(virDomainState, reason); None when the domain does not exist."""
        def read(dom: Any) -> tuple[int, int]:
            state, reason = dom.state()
            return int(state), int(reason)

        try:
            return await self.call(read)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    async def xml(self, flags: int = 0) -> str:
        """The domain's XML (a libvirt error VIR_ERR_NO_DOMAIN when it does not exist)."""
        def read(dom: Any) -> str:
            text: str = dom.XMLDesc(flags)
            return text

        return await self.call(read)


def shutdown_method(agent_connected: bool, domain_xml: str) -> tuple[int, str]:
    """How to ask the guest to power off: (virDomainShutdownFlags, "acpi" | "agent"). The
    ACPI power button; the guest agent instead when it is connected and the domain has no
    ACPI (a button nobody listens to). One choice for the launcher's own graceful shutdown
    and the Shutdown rpc."""
    if agent_connected and "<acpi/>" not in domain_xml:
        return libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT, "agent"
    return libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN, "acpi"
