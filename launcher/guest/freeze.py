"""Guest filesystem freeze/thaw through the guest agent (FreezeVirtualMachine,
UnfreezeVirtualMachine, virt-freezer), with an automatic thaw that is not lost.

KubeVirt's semantics: read guest-fsfreeze-status first; already frozen -> success, already
thawed -> success (a second thaw would re-run the guest's thaw hooks); freeze with a 60 s
agent timeout; if unfreezeTimeoutSeconds > 0 thaw automatically after it.

Beyond KubeVirt:
- The auto-thaw timer is armed BEFORE fsFreeze is attempted and is owned by this manager,
  not by the rpc: an fsFreeze that fails or hangs after having frozen the guest, or an rpc
  abandoned by its client (deadline), still ends in a thaw. A failing auto-thaw is logged
  and retried a few times.
- Unfreeze cancels the timer only once the guest is known to be thawed: a failed thaw
  leaves the safety net in place (KubeVirt cancels it first).
- A freeze of a paused domain is refused with a clear message instead of an agent
  timeout: a paused guest's agent cannot answer, so neither the status read nor the freeze
  could work. A thaw of a paused domain is refused the same way; a thaw of a domain that
  is not running at all (shut off, crashed, gone) succeeds: nothing can be frozen there.
- Freeze and thaw run one at a time (a lock), and in tasks owned by the manager, so a
  client that gives up mid-call does not leave a half-done operation behind.
- `thaw_if_frozen()` lets shutdown thaw a frozen guest before asking it to power off.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import libvirt
import structlog

from launcher.guest.agent_command import AGENT_TIMEOUT_S, AgentTimeout, agent_command, guard_s
from launcher.libvirt.connection import Connection
from launcher.libvirt.domain import DomainAccess
from launcher.notify.domain_state import State, status_and_reason
from launcher.notify.relay import DomainRead

FSFREEZE_STATUS_CMD = '{"execute":"guest-fsfreeze-status"}'
FROZEN = "frozen"
THAWED = "thawed"
CALL_GUARD_S = guard_s(AGENT_TIMEOUT_S)  # asyncio-side guard, should libvirt itself hang
FREEZE_AGENT_TIMEOUT_S = 60  # KubeVirt's fsFreezeRequestTimeoutSec: flushing takes time
FREEZE_GUARD_S = FREEZE_AGENT_TIMEOUT_S + 10
AUTO_THAW_ATTEMPTS = 3
AUTO_THAW_RETRY_S = 10.0
SHUTDOWN_THAW_TIMEOUT_S = 20.0

# libvirt codes meaning "this driver cannot set the agent timeout": proceed with its default.
_NO_AGENT_TIMEOUT_SUPPORT = (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED)
# States in which nothing can be frozen: a thaw has nothing to do.
_DOWN = (State.SHUTOFF, State.CRASHED, State.NOSTATE)


class FreezeError(Exception):
    """A freeze/thaw refused or failed for a reason other than a libvirt error; the message
    is meant for the client."""


class DomainReader(Protocol):
    """What the manager needs from the relay: the domain's name and current state."""

    domain: str
    agent_connected: bool  # from agent-lifecycle events

    async def read(self) -> DomainRead | None: ...


@dataclass(frozen=True)
class FreezeRecord:
    """What we know about the current freeze, for logs: when, how, and the auto-thaw."""

    frozen_at: float  # time.time()
    unfreeze_timeout_s: int
    how: str  # "froze" | "found frozen"


def _status_name(read: DomainRead) -> str:
    return status_and_reason(read.state, read.reason)[0]


class FreezeManager:
    def __init__(self, conn: Connection, relay: DomainReader, *,
                 on_status: Callable[[str], object] | None = None,
                 auto_thaw_attempts: int = AUTO_THAW_ATTEMPTS,
                 auto_thaw_retry_s: float = AUTO_THAW_RETRY_S) -> None:
        """`on_status("frozen" | "thawed")` is called whenever the manager learns the
        guest's fsfreeze status (a status read, a freeze or thaw that succeeded): the agent
        cache then answers GetGuestInfo with it at once instead of after its next poll."""
        self._conn = conn
        self._relay = relay
        self._domain = DomainAccess(conn, relay.domain)
        self._on_status = on_status
        self.domain = relay.domain
        self._attempts = auto_thaw_attempts
        self._retry_s = auto_thaw_retry_s
        self._lock = asyncio.Lock()  # one freeze/thaw at a time
        self._timer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.record: FreezeRecord | None = None
        self._log = structlog.get_logger().bind(part="freeze", domain=self.domain)

    # --- public -------------------------------------------------------------------------
    async def freeze(self, unfreeze_timeout_s: int) -> None:
        """Freeze every guest filesystem. Raises FreezeError (refused, agent silent),
        libvirt.libvirtError or ConnectionError."""
        if unfreeze_timeout_s < 0:
            raise FreezeError(
                f"unfreezeTimeoutSeconds must not be negative, got {unfreeze_timeout_s}")
        await self._owned(self._freeze(unfreeze_timeout_s), "freeze")

    async def thaw(self) -> None:
        """Thaw every guest filesystem (success if nothing is frozen)."""
        await self._owned(self._thaw(), "thaw")

    @property
    def auto_thaw_armed(self) -> bool:
        return self._timer is not None and not self._timer.done()

    async def thaw_if_frozen(self, timeout_s: float = SHUTDOWN_THAW_TIMEOUT_S) -> bool:
        """For shutdown: thaw the guest if it is frozen (by us or anyone), so it can write
        while it shuts down. Never raises but CancelledError; True if it thawed."""
        if not self._relay.agent_connected and self.record is None:
            # No agent to ask and we froze nothing: do not delay the shutdown with a query
            # that can only fail (a guest without an agent cannot be frozen or thawed).
            return False
        try:
            async with asyncio.timeout(timeout_s):
                async with self._lock:
                    read = await self._relay.read()
                    if read is None or read.state != State.RUNNING:
                        return False
                    try:
                        status: str | None = await self._status()
                    except (libvirt.libvirtError, FreezeError) as exc:
                        # Unknown: thaw anyway if we froze it (a thaw of a thawed guest is
                        # harmless compared with shutting down a frozen one).
                        self._log.info("fsfreeze status unknown before shutdown",
                                       error=str(exc))
                        status = None
                    if status == FROZEN or (status is None and self.record is not None):
                        await self._fs_thaw()
                        self._forget()
                        self._learned(THAWED)
                        self._log.info("thawed the guest before shutdown")
                        return True
                    return False
        except (TimeoutError, libvirt.libvirtError, FreezeError, ConnectionError) as exc:
            self._log.error("could not thaw the guest before shutdown", error=str(exc),
                            error_type=type(exc).__name__)
            return False

    async def close(self) -> None:
        """Cancel the auto-thaw timer and any operation in flight (launcher teardown)."""
        pending = list(self._tasks)
        if self._timer is not None:
            pending.append(self._timer)
        self._timer = None
        for task in pending:
            task.cancel()
        # Outcomes were logged where they happened; here only wait for the ends.
        await asyncio.gather(*pending, return_exceptions=True)

    # --- operations (run as tasks owned by the manager) -----------------------------------
    async def _owned(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        # Owned by the manager and shielded: a client that gives up (deadline, cancel)
        # does not cancel a freeze half-way; the lock stays held until libvirt answered.
        task = asyncio.create_task(coro, name=f"fsfreeze-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        await asyncio.shield(task)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        # Retrieve the outcome: when the rpc was abandoned nobody else will, and asyncio
        # would report "exception was never retrieved" at some arbitrary later point.
        if not task.cancelled() and task.exception() is not None:
            self._log.debug("fsfreeze operation ended with an error", task=task.get_name(),
                            error=str(task.exception()))

    async def _freeze(self, unfreeze_timeout_s: int) -> None:
        async with self._lock:
            read = await self._relay.read()
            if read is None:
                raise FreezeError(f"cannot freeze: domain {self.domain} not found")
            if read.state == State.PAUSED:
                raise FreezeError("cannot freeze a paused domain: its guest agent cannot "
                                  "answer; unpause first")
            if read.state != State.RUNNING:
                raise FreezeError(f"cannot freeze: domain {self.domain} is not running "
                                  f"({_status_name(read)})")
            status = await self._status()
            if status == FROZEN:
                if unfreeze_timeout_s > 0:
                    self._arm(unfreeze_timeout_s)
                if self.record is None:
                    self.record = FreezeRecord(time.time(), unfreeze_timeout_s, "found frozen")
                self._log.info("guest already frozen", unfreeze_timeout_s=unfreeze_timeout_s,
                               frozen_at=self.record.frozen_at, how=self.record.how)
                return
            # Armed before fsFreeze (see module doc): whatever happens from here on, a
            # frozen guest is thawed in time.
            if unfreeze_timeout_s > 0:
                self._arm(unfreeze_timeout_s)
            else:
                self._disarm()
            self.record = FreezeRecord(time.time(), unfreeze_timeout_s, "froze")
            try:
                count = await self._fs_freeze()
            except (libvirt.libvirtError, FreezeError, ConnectionError) as exc:
                self._log.warning("freeze failed", error=str(exc),
                                  auto_thaw_armed=self.auto_thaw_armed)
                raise
            self._learned(FROZEN)
            self._log.info("froze guest filesystems", filesystems=count,
                           unfreeze_timeout_s=unfreeze_timeout_s)

    async def _thaw(self) -> None:
        async with self._lock:
            await self._thaw_locked("rpc")

    async def _thaw_locked(self, source: str) -> None:
        read = await self._relay.read()
        if read is None and source == "rpc":
            # As KubeVirt's UnfreezeVMI, whose domain lookup fails: an error, not a
            # success that would tell a backup tool a guest it cannot see is thawed.
            self._forget()
            raise FreezeError(f"cannot thaw: domain {self.domain} not found")
        if read is None or read.state in _DOWN:
            self._log.info("nothing to thaw: the domain is not running", source=source)
            self._forget()
            return
        if read.state == State.PAUSED:
            raise FreezeError("cannot thaw a paused domain: its guest agent cannot answer; "
                              "unpause first")
        if read.state != State.RUNNING:
            raise FreezeError(f"cannot thaw: domain {self.domain} is {_status_name(read)}; "
                              "its guest agent cannot answer")
        try:
            status: str | None = await self._status()
        except (libvirt.libvirtError, FreezeError) as exc:
            # As KubeVirt: an unreadable status does not stop the thaw attempt.
            self._log.warning("fsfreeze status unknown; thawing anyway", error=str(exc))
            status = None
        if status == THAWED:
            self._log.info("guest already thawed", source=source)
            self._forget()
            return
        count = await self._fs_thaw()
        record = self.record
        self._forget()
        self._learned(THAWED)
        self._log.info("thawed guest filesystems", filesystems=count, source=source,
                       frozen_for_s=None if record is None
                       else round(time.time() - record.frozen_at, 1))

    def _learned(self, status: str) -> None:
        if self._on_status is not None:
            self._on_status(status)

    # --- auto-thaw ------------------------------------------------------------------------
    def _arm(self, timeout_s: int) -> None:
        self._disarm()
        self._timer = asyncio.create_task(self._auto_thaw(timeout_s), name="fsfreeze-auto-thaw")

    def _disarm(self) -> None:
        timer, self._timer = self._timer, None
        # Never cancel ourselves: the timer's own thaw ends here through _forget().
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    def _forget(self) -> None:
        self._disarm()
        self.record = None

    async def _auto_thaw(self, timeout_s: int) -> None:
        await asyncio.sleep(timeout_s)
        self._log.warning("unfreeze was not requested in time; thawing automatically",
                          unfreeze_timeout_s=timeout_s,
                          frozen_at=None if self.record is None else self.record.frozen_at)
        for attempt in range(1, self._attempts + 1):
            try:
                async with self._lock:
                    await self._thaw_locked("auto-thaw")
            except (libvirt.libvirtError, FreezeError, ConnectionError) as exc:
                self._log.error("automatic thaw failed", attempt=attempt,
                                attempts=self._attempts, error=str(exc))
                if attempt < self._attempts:
                    await asyncio.sleep(self._retry_s)
            else:
                return
        self._log.error("automatic thaw gave up; the guest may still be frozen",
                        attempts=self._attempts)

    # --- libvirt (blocking parts run in the executor) ---------------------------------------
    async def _status(self) -> str:
        try:
            answer = await agent_command(self._domain, FSFREEZE_STATUS_CMD,
                                         timeout_s=AGENT_TIMEOUT_S)
        except AgentTimeout as exc:
            raise FreezeError(f"the guest agent did not answer guest-fsfreeze-status within "
                              f"{exc.guard_s:g}s") from None
        try:
            status = json.loads(answer)["return"]
        except (ValueError, KeyError, TypeError):
            status = None
        if status not in (FROZEN, THAWED):
            raise FreezeError(f"unexpected guest-fsfreeze-status answer: {answer[:200]!r}")
        self._learned(str(status))
        return str(status)

    async def _fs_freeze(self) -> int:
        def run(dom: Any) -> tuple[int, str]:
            try:
                dom.agentSetResponseTimeout(FREEZE_AGENT_TIMEOUT_S, 0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in _NO_AGENT_TIMEOUT_SUPPORT:
                    raise
            try:
                count: int = dom.fsFreeze(None, 0)
            finally:
                # The agent timeout is per domain: restore it for everyone else. Reported,
                # not raised: the freeze result matters more.
                reset_error = ""
                try:
                    dom.agentSetResponseTimeout(
                        libvirt.VIR_DOMAIN_AGENT_RESPONSE_TIMEOUT_DEFAULT, 0)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() not in _NO_AGENT_TIMEOUT_SUPPORT:
                        reset_error = str(exc)
            return count, reset_error

        try:
            async with asyncio.timeout(FREEZE_GUARD_S):
                result: tuple[int, str] = await self._domain.call(run)
        except TimeoutError:
            raise FreezeError(f"fsFreeze did not return within {FREEZE_GUARD_S}s") from None
        count, reset_error = result
        if reset_error:
            self._log.warning("could not restore the agent timeout", error=reset_error)
        return count

    async def _fs_thaw(self) -> int:
        def run(dom: Any) -> int:
            count: int = dom.fsThaw(None, 0)
            return count

        try:
            async with asyncio.timeout(CALL_GUARD_S):
                result: int = await self._domain.call(run)
        except TimeoutError:
            raise FreezeError(f"fsThaw did not return within {CALL_GUARD_S:g}s") from None
        return result
