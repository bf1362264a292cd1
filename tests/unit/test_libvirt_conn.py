"""Connection when the daemon goes away in the middle of setting a connection up: between
libvirt.open and the keepalive/close-callback set-up, or while the reconnect hooks (the
relay's event subscription) run. Both are a lost connection to retry, never an exception
out of connect()/run() (which would end the launcher's TaskGroup). Seen in CI: libvirtd
killed with -9 just after a restart made registerCloseCallback fail with "End of file
while reading data". And a connection lost before the keeper task (run()) first ran is
reconnected with its hooks, so the relay's subscription is never silently missing.

The virConnect objects are fakes: the race cannot be produced on demand with a real daemon
(tests/e2e/test_daemons.py and test_faults.py kill real ones at random moments)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import libvirt
import pytest

from launcher.libvirt import connection as libvirt_conn
from launcher.libvirt.connection import Connection


class FakeConn:
    def __init__(self, fail_arm: bool) -> None:
        self.fail_arm = fail_arm
        self.closed = False
        self.close_cb: Any = None

    def setKeepAlive(self, interval: int, count: int) -> None:
        pass

    def registerCloseCallback(self, cb: Any, opaque: Any) -> None:
        if self.fail_arm:
            raise libvirt.libvirtError("End of file while reading data: Input/output error")
        self.close_cb = cb

    def unregisterCloseCallback(self) -> None:
        self.close_cb = None

    def close(self) -> int:
        self.closed = True
        return 0


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[FakeConn]:
    """libvirt.open hands out fakes: the first fails its set-up, the rest do not."""
    conns: list[FakeConn] = []

    def fake_open(uri: str) -> FakeConn:
        conns.append(FakeConn(fail_arm=not conns))
        return conns[-1]

    monkeypatch.setattr(libvirt, "open", fake_open)
    monkeypatch.setattr(libvirt_conn, "CONNECT_INTERVAL_S", 0.01)
    return conns


def test_connect_retries_when_the_daemon_dies_during_set_up(opened: list[FakeConn]) -> None:
    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            c = Connection("qemu:///fake", pool)
            conn = await c.connect(timeout_s=5)
            assert conn is opened[1] and c.conn is opened[1]
            assert opened[0].closed  # the half-set-up one is not leaked
            assert c.connects == 1
            await c.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("run_waiting", [True, False],
                         ids=["run-already-waiting", "lost-before-run-started"])
def test_a_hook_failing_on_a_dead_connection_reconnects_and_runs_again(
    opened: list[FakeConn], run_waiting: bool,
) -> None:
    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            c = Connection("qemu:///fake", pool)
            await c.connect(timeout_s=5)
            seen: list[Any] = []

            async def hook(conn: Any) -> None:
                seen.append(conn)
                if len(seen) == 1:
                    raise libvirt.libvirtError("End of file while reading data")

            c.on_reconnect(hook)
            first: Any = c.conn
            runner = asyncio.create_task(c.run())  # as the launcher's TaskGroup runs it
            if run_waiting:
                await asyncio.sleep(0.05)  # run() is waiting for a close
            await c.run_hooks(first)  # fails: treated as a lost connection
            assert first.closed
            for _ in range(500):
                if len(seen) == 2:
                    break
                await asyncio.sleep(0.01)
            assert seen == [first, opened[2]] and c.conn is opened[2]
            assert not runner.done()  # still keeping the connection up
            await c.close()
            await asyncio.wait_for(runner, 5)

    asyncio.run(scenario())


def test_close_while_the_daemon_is_down_ends_run(opened: list[FakeConn]) -> None:
    """The connection is lost and the daemon never comes back (a SIGTERM during its restart
    backoff: the daemon set stops restarting it): close() must end run(), which the
    launcher's TaskGroup waits for. It used to wait for the daemon forever, so the pod
    ended with the monitor's SIGKILL instead of exit 0."""
    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            never = asyncio.Event()
            c = Connection("qemu:///fake", pool, daemon_ready=never.wait)
            await c.connect(timeout_s=5)
            keeper = asyncio.create_task(c.run())
            await asyncio.sleep(0)
            c._on_closed(c.conn, libvirt.VIR_CONNECT_CLOSE_REASON_EOF)  # the daemon died
            await asyncio.sleep(0.05)
            assert not keeper.done()  # waiting for the daemon to be back
            await c.close()
            async with asyncio.timeout(2):
                await keeper

    asyncio.run(scenario())


def test_close_interrupts_the_connect_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(uri: str) -> FakeConn:
        raise libvirt.libvirtError("Failed to connect socket: Connection refused")

    monkeypatch.setattr(libvirt, "open", refuse)

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            c = Connection("qemu:///fake", pool)
            attempt = asyncio.create_task(c.connect(timeout_s=60))
            await asyncio.sleep(0.1)
            await c.close()
            async with asyncio.timeout(2):
                with pytest.raises(libvirt_conn.LibvirtUnreachable, match="being closed"):
                    await attempt

    asyncio.run(scenario())
