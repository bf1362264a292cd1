"""One guest agent command through libvirt (virDomainQemuAgentCommand): the one place that
runs one, for the agent poller, the freeze manager and the command API (Exec, GuestPing).

libvirt waits `timeout_s` for the agent's answer; an asyncio guard a little longer than
that ends the wait should libvirt itself hang (its RPC to a wedged daemon). Failures:
- AgentTimeout: the guard fired (libvirt did not return at all);
- libvirt.libvirtError: libvirt's or the agent's own error (agent not connected,
  unresponsive, domain not running, command failed); `agent_error_text` words it with
  code and name (launcher.libvirt.errors.libvirt_message);
- LibvirtDisconnected: there is no libvirt connection (daemon restarting).
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import Executor
from typing import Any

import libvirt
import libvirt_qemu

from launcher.libvirt.domain import DomainAccess
from launcher.libvirt.errors import libvirt_message

AGENT_TIMEOUT_S = 5  # libvirt's timeout for one agent command (its own default)
AGENT_GUARD_S = 5.0  # the asyncio-side margin over libvirt's own timeout


class AgentTimeout(TimeoutError):
    """libvirt did not return within the guard (`guard_s`) of an agent command."""

    def __init__(self, command: str, timeout_s: int, guard_s: float) -> None:
        super().__init__(f"{command}: libvirt did not return within {guard_s:g}s")
        self.command = command
        self.timeout_s = timeout_s
        self.guard_s = guard_s


def guard_s(timeout_s: int) -> float:
    """How long the asyncio side waits for a command given libvirt `timeout_s`."""
    return timeout_s + AGENT_GUARD_S


def request(command: str, arguments: dict[str, Any] | None = None) -> str:
    """The agent's JSON request. json.dumps, never string splicing: quotes in arguments
    stay arguments."""
    doc: dict[str, Any] = {"execute": command}
    if arguments:
        doc["arguments"] = arguments
    return json.dumps(doc)


def command_name(text: str) -> str:
    """The "execute" of a JSON request, for messages ("?" when unreadable)."""
    try:
        name = json.loads(text).get("execute")
    except (ValueError, AttributeError):
        return "?"
    return name if isinstance(name, str) else "?"


def agent_error_text(command: str, exc: libvirt.libvirtError) -> str:
    return f"{command}: {libvirt_message(exc)}"


async def agent_command(access: DomainAccess, text: str, *, timeout_s: int = AGENT_TIMEOUT_S,
                        executor: Executor | None = None) -> str:
    """Run the JSON agent request `text` on `access`'s domain; the agent's raw JSON answer.
    `executor`: threads of the caller's own (the poller's: a hung agent holds up nothing
    else); by default the connection's."""
    def run(dom: Any) -> str:
        answer: str = libvirt_qemu.qemuAgentCommand(dom, text, timeout_s, 0)
        return answer

    guard = guard_s(timeout_s)
    try:
        async with asyncio.timeout(guard):
            return await access.call(run, executor=executor)
    except TimeoutError:
        raise AgentTimeout(command_name(text), timeout_s, guard) from None
