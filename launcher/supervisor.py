r"""The launcher's top level: one TaskGroup owns every task; shutdown is a state machine
with deadlines.

    STARTING -> RUNNING -> STOPPING -> STOPPED
        \_____ a signal at any point goes to STOPPING ____/
"""

from __future__ import annotations

import asyncio
import enum
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog

from launcher.daemons import DaemonFailed, DaemonSet
from launcher.exitcodes import ExitCode
from launcher.flags import Options
from launcher.libvirt_conn import Connection, LibvirtUnreachable
from launcher.paths import Paths

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)
# Every daemon goes through the ladder (5 s TERM + 2 s KILL); two daemons, plus margin.
DAEMON_STOP_DEADLINE_S = 20.0


E = TypeVar("E", bound=BaseException)


def _first(group: BaseExceptionGroup[Any], kind: type[E]) -> E:
    """The first leaf exception of `kind` in a (possibly nested) exception group."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc, kind)
        if isinstance(exc, kind):
            return exc
    raise LookupError(kind)


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Launcher:
    def __init__(self, opts: Options, paths: Paths) -> None:
        self.opts = opts
        self.paths = paths
        self.state = State.STARTING
        self.signals: list[signal.Signals] = []
        self._shutdown = asyncio.Event()
        self._exit_code = ExitCode.OK
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="libvirt-call")
        self.daemons = DaemonSet(opts, paths)
        self.conn = Connection(paths.uri, self._executor,
                               daemon_ready=self.daemons.libvirt.ready.wait)
        self._log = structlog.get_logger().bind(domain=opts.domain_name)

    def _on_signal(self, sig: signal.Signals) -> None:
        # Only record: the main flow logs and acts.
        self.signals.append(sig)
        self._shutdown.set()

    async def run(self) -> int:
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
        finally:
            for sig in SHUTDOWN_SIGNALS:
                loop.remove_signal_handler(sig)
            self._executor.shutdown(wait=False, cancel_futures=True)
            self.state = State.STOPPED
        if self._exit_code == ExitCode.OK:
            self._log.info("launcher exited cleanly")
        return self._exit_code

    async def _until_shutdown(self, aw: asyncio.Task[Any]) -> bool:
        """Wait for `aw` or a shutdown signal; True if `aw` finished first."""
        stop: asyncio.Task[Any] = asyncio.ensure_future(self._shutdown.wait())
        try:
            done, _ = await asyncio.wait({aw, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if aw in done:
            aw.result()  # re-raise its failure
            return True
        aw.cancel()
        return False

    async def _lifecycle(self, tg: asyncio.TaskGroup) -> None:
        up = tg.create_task(self.daemons.all_ready())
        if await self._until_shutdown(up):
            connected = tg.create_task(self.conn.connect())
            if await self._until_shutdown(connected):
                tg.create_task(self.conn.run(), name="libvirt-connection")
                self.state = State.RUNNING
                self._log.info("launcher running", uri=self.paths.uri,
                               virtlogd_pid=self.daemons.virtlogd.pid,
                               libvirt_pid=self.daemons.libvirt.pid)
                await self._shutdown.wait()
        await self._stop()

    async def _stop(self) -> None:
        self.state = State.STOPPING
        names = [s.name for s in self.signals]
        self._log.info("shutting down", signals=names)
        try:
            async with asyncio.timeout(DAEMON_STOP_DEADLINE_S):
                await self.conn.close()
                await self.daemons.stop()
        except TimeoutError:
            self._log.error("daemons did not stop within the deadline",
                            deadline_s=DAEMON_STOP_DEADLINE_S)
