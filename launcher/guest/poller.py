"""The guest agent poller and its cache.

Started when the agent connects (agent-lifecycle CONNECTED, or RESUMED/STARTED while
connected), stopped on DISCONNECTED, and when the domain is suspended, stopped, shut down or
crashed (launcher.supervisor's event listener). One worker per command group, each with its own
interval: the first poll at once, then 10 s doubling up to the group's interval (the
--qemu-agent-*-interval flags). Every agent call runs in a dedicated executor with a
timeout, so a hung agent never blocks the event loop, the command server or other workers.
The cache answers GetGuestInfo / GetUsers / GetFilesystems and the domain snapshot's agent
fields without touching the agent; a real change of OS info, interfaces (ignoring lo) or
fsfreeze status raises a notify event, nothing else does.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import libvirt
import structlog

from launcher.guest import info as guest_info
from launcher.guest.agent_command import AgentTimeout, agent_command, agent_error_text, request

# The cache stores each raw agent command's "return" value under the command's name.
from launcher.guest.info import (
    FSFREEZE_STATUS,
    FSINFO,
    GUEST_INFO,
    HOSTNAME,
    INTERFACES,
    LOAD,
    OSINFO,
    TIMEZONE,
    USERS,
)
from launcher.libvirt.connection import Connection
from launcher.libvirt.domain import DomainAccess
from launcher.libvirt.errors import LibvirtDisconnected

FIRST_BACKOFF_S = 10.0  # interval after the first poll, doubling up to the group's own
ERROR_LOG_INTERVAL_S = 60.0  # per command: errors are counted always, logged this often


@dataclass(frozen=True)
class Entry:
    value: Any
    fetched_at: float  # time.time() of the agent's answer


class AgentCache:
    """What the agent last told us, per raw command, with when."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        # Bumped when any value changes: answers derived from the cache (GetGuestInfo's JSON)
        # are reused until then instead of being rebuilt per call.
        self.version = 0

    def get(self, command: str) -> Entry | None:
        return self._entries.get(command)

    def raw(self) -> dict[str, Any]:
        """command name -> its last "return" value (only commands that answered)."""
        return {k: e.value for k, e in self._entries.items()}

    def put(self, command: str, value: Any, at: float | None = None) -> bool:
        """Store an answer; True if it differs from the previous one."""
        old = self._entries.get(command)
        self._entries[command] = Entry(value, time.time() if at is None else at)
        changed = old is None or old.value != value
        if changed:
            self.version += 1
        return changed

    def __contains__(self, command: object) -> bool:
        return command in self._entries


@dataclass(frozen=True)
class Group:
    """Commands polled together on one worker, with their own interval."""

    name: str
    commands: tuple[str, ...]
    interval_s: float


def groups_from(opts: Any) -> list[Group]:
    """KubeVirt's intervals: version 300 s, sys (OS/hostname/timezone/interfaces) 120 s,
    load 120 s, users 10 s, filesystems 300 s, fsfreeze status 5 s (all flags)."""
    return [
        Group("version", (GUEST_INFO,), opts.qemu_agent_version_interval_s),
        Group("sys", (OSINFO, HOSTNAME, TIMEZONE, INTERFACES), opts.qemu_agent_sys_interval_s),
        Group("load", (LOAD,), opts.qemu_agent_sys_interval_s),
        Group("users", (USERS,), opts.qemu_agent_user_interval_s),
        Group("file", (FSINFO,), opts.qemu_agent_file_interval_s),
        Group("fsfreeze", (FSFREEZE_STATUS,), opts.qemu_fsfreeze_status_interval_s),
    ]


class AgentError(Exception):
    pass


def agent_return(command: str, reply: str) -> Any:
    """The "return" value of an agent's JSON reply."""
    try:
        return json.loads(reply)["return"]
    except (ValueError, KeyError, TypeError) as exc:
        raise AgentError(f"{command}: malformed agent reply {reply[:200]!r}") from exc


class AgentPoller:
    def __init__(self, *, conn: Connection, domain: str, cache: AgentCache, groups: list[Group],
                 on_change: Callable[[], None]) -> None:
        self.conn = conn
        self.domain = domain
        self._access = DomainAccess(conn, domain)
        self.cache = cache
        self.groups = groups
        self.on_change = on_change
        # Agent calls get threads of their own: a hung agent must not starve the executor
        # the command server and the notify relay use.
        self._executor = ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="agent")
        self._on = asyncio.Event()
        self._off = asyncio.Event()
        self._off.set()
        self.polls = 0
        self.errors: dict[str, int] = {}
        self._last_error_log: dict[str, float] = {}
        self._log = structlog.get_logger().bind(part="agent", domain=domain)

    @property
    def active(self) -> bool:
        return self._on.is_set()

    def start(self) -> None:
        if not self._on.is_set():
            self._off.clear()
            self._on.set()

    def stop(self) -> None:
        if self._on.is_set():
            self._on.clear()
            self._off.set()

    async def run(self) -> None:
        """Until cancelled: poll while started."""
        try:
            while True:
                await self._on.wait()
                self._log.info("agent poller started")
                # guest-info first: it says which commands the agent has (older qemu-ga
                # lacks guest-get-load), so the workers do not start with known failures.
                await self.poll(GUEST_INFO)
                async with asyncio.TaskGroup() as tg:
                    workers = [tg.create_task(self._worker(g), name=f"agent-{g.name}")
                               for g in self.groups]
                    await self._off.wait()
                    for worker in workers:
                        worker.cancel()
                self._log.info("agent poller stopped")
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _worker(self, group: Group) -> None:
        for delay in _delays(group.interval_s):
            for command in group.commands:
                await self.poll(command)
            await asyncio.sleep(delay)

    def supported(self, command: str) -> bool:
        """Skip commands the agent says it lacks (guest-get-load is new in qemu-ga 9.1)."""
        info = self.cache.get(GUEST_INFO)
        if command == GUEST_INFO or info is None or not isinstance(info.value, dict):
            return True
        for c in info.value.get("supported_commands") or ():
            if isinstance(c, dict) and c.get("name") == command:
                return bool(c.get("enabled", True))
        return False

    async def poll(self, command: str) -> None:
        if not self.supported(command):
            return
        try:
            reply = await agent_command(self._access, request(command),
                                        executor=self._executor)
            value = agent_return(command, reply)
        except libvirt.libvirtError as exc:
            self._error(command, agent_error_text(command, exc))
            return
        except (AgentError, AgentTimeout, LibvirtDisconnected) as exc:
            self._error(command, str(exc))
            return
        self.polls += 1
        before = self._watched()
        self.cache.put(command, value)
        if self._watched() != before:
            self._log.info("guest agent data changed", command=command)
            self.on_change()

    def _watched(self) -> Any:
        """What a notify is worth: OS info, interfaces (not lo, not counters), fsfreeze."""
        raw = self.cache.raw()
        return (guest_info.os_info_for_change_detection(raw),
                guest_info.interfaces_for_change_detection(raw),
                raw.get(FSFREEZE_STATUS))

    def _error(self, command: str, message: str) -> None:
        self.errors[command] = self.errors.get(command, 0) + 1
        now = time.monotonic()
        if now - self._last_error_log.get(command, -ERROR_LOG_INTERVAL_S) >= ERROR_LOG_INTERVAL_S:
            self._last_error_log[command] = now
            self._log.warning("guest agent command failed", command=command, error=message,
                              errors_so_far=self.errors[command])


def _delays(interval_s: float) -> Iterator[float]:
    """The waits between polls: 10 s doubling up to interval_s, then interval_s forever."""
    delay = min(FIRST_BACKOFF_S, interval_s)
    while True:
        yield delay
        delay = min(delay * 2, interval_s)
