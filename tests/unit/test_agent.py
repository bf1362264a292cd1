"""The agent poller's schedule, grouping, cache and error handling (the real agent is
exercised end to end in tests/e2e)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvloop
from structlog.testing import capture_logs

from launcher import flags
from launcher.guest.info import FSFREEZE_STATUS, GUEST_INFO, LOAD, OSINFO
from launcher.guest.poller import AgentCache, AgentPoller, _delays, groups_from
from launcher.libvirt.connection import Connection, ensure_event_loop


def test_first_poll_then_10s_doubling_up_to_the_interval() -> None:
    assert list(itertools.islice(_delays(120), 6)) == [10, 20, 40, 80, 120, 120]
    assert list(itertools.islice(_delays(300), 7)) == [10, 20, 40, 80, 160, 300, 300]
    assert list(itertools.islice(_delays(5), 3)) == [5, 5, 5]  # fsfreeze status


def test_groups_follow_kubevirts_interval_flags() -> None:
    by_name = {g.name: g for g in groups_from(flags.parse([], environ={}))}
    assert by_name["version"].interval_s == 300 and by_name["version"].commands == (GUEST_INFO,)
    assert by_name["sys"].interval_s == 120 and OSINFO in by_name["sys"].commands
    assert by_name["users"].interval_s == 10
    assert by_name["file"].interval_s == 300
    assert by_name["fsfreeze"].interval_s == 5
    assert by_name["load"].commands == (LOAD,)
    custom = groups_from(flags.parse(["--qemu-agent-user-interval", "1m",
                                      "--qemu-fsfreeze-status-interval", "2s"], environ={}))
    assert {g.name: g.interval_s for g in custom}["users"] == 60
    assert {g.name: g.interval_s for g in custom}["fsfreeze"] == 2


def test_cache_knows_when_and_what_changed() -> None:
    cache = AgentCache()
    assert cache.get(OSINFO) is None and cache.raw() == {}
    assert cache.put(OSINFO, {"name": "x"}, at=100.0)
    assert not cache.put(OSINFO, {"name": "x"}, at=200.0)  # same answer: no change
    entry = cache.get(OSINFO)
    assert entry is not None and entry.fetched_at == 200.0
    assert cache.put(OSINFO, {"name": "y"})
    assert cache.raw() == {OSINFO: {"name": "y"}}


def _poller(cache: AgentCache) -> AgentPoller:
    conn = Connection("test:///default", ThreadPoolExecutor(1))
    return AgentPoller(conn=conn, domain="test", cache=cache,
                       groups=groups_from(flags.parse([], environ={})), on_change=lambda: None)


def test_commands_the_agent_lacks_are_skipped() -> None:
    cache = AgentCache()
    p = _poller(cache)
    assert p.supported(LOAD)  # nothing known yet: try
    cache.put(GUEST_INFO, {"version": "7.2.22", "supported_commands": [
        {"name": OSINFO, "enabled": True}, {"name": FSFREEZE_STATUS, "enabled": False}]})
    assert p.supported(OSINFO)
    assert not p.supported(FSFREEZE_STATUS)  # disabled in the guest
    assert not p.supported(LOAD)  # older qemu-ga: no guest-get-load
    assert p.supported(GUEST_INFO)  # always asked
    cache.put(GUEST_INFO, "garbage from a broken agent")
    assert p.supported(LOAD)


def test_agent_errors_are_counted_and_logged_at_a_rate_limit() -> None:
    """libvirt's test driver has no guest agent: every command fails, which is the path
    a hung or absent agent takes. Nothing may raise; each failure is counted; the log line
    appears once per command per interval, not per failure."""
    ensure_event_loop()

    async def scenario() -> tuple[AgentPoller, list[MutableMapping[str, Any]]]:
        cache = AgentCache()
        p = _poller(cache)
        await p.conn.connect()
        with capture_logs() as logs:
            for _ in range(5):
                await p.poll(OSINFO)
                await p.poll(FSFREEZE_STATUS)
        await p.conn.close()
        return p, logs

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        p, logs = runner.run(scenario())
    assert p.errors == {OSINFO: 5, FSFREEZE_STATUS: 5}
    assert p.polls == 0
    warnings = [r for r in logs if r["event"] == "guest agent command failed"]
    assert [w["command"] for w in warnings] == [OSINFO, FSFREEZE_STATUS]
    assert "libvirt error" in str(warnings[0]["error"])
