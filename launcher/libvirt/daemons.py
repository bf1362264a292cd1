"""Supervision of virtlogd and the libvirt daemon (virtqemud or libvirtd).

Each daemon is started, its output relayed line by line into the launcher's structured
log, declared ready once its socket accepts a connection, and restarted with backoff when
it exits. A daemon that cannot even be executed is retried the same way instead of
crashing the launcher; after the policy's limit the supervisor raises DaemonFailed
naming the daemon and the last lines it printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from launcher import ladder
from launcher.flags import Options
from launcher.libvirt.restart_policy import RestartPolicy, RestartTracker
from launcher.paths import VIRTLOGD, Paths

READY_POLL_S = 0.02
LAST_LINES = 20
# After the daemon exits its pipe normally closes at once; a grandchild that inherited it
# (e.g. an auto-spawned helper) must not keep the supervisor waiting.
PUMP_DRAIN_TIMEOUT_S = 1.0

# "2026-11-22 02:40:51.123+0000: 1234: error : virNet...: text"
_LIBVIRT_LINE = re.compile(r"^\S+ \S+: \d+: (debug|info|warning|error) : (.*)$")


class DaemonFailed(Exception):
    def __init__(self, name: str, reason: str, last_lines: Sequence[str]) -> None:
        self.name = name
        self.reason = reason
        self.last_lines = list(last_lines)
        tail = " | ".join(self.last_lines[-5:]) or "(no output)"
        super().__init__(f"{name} {reason}; last output: {tail}")


@dataclass(frozen=True)
class DaemonSpec:
    name: str
    binary: str  # the daemon itself (argv may wrap it in a namespace helper)
    argv: list[str]
    socket: str  # ready when this accepts a connection
    env: dict[str, str] = field(default_factory=dict)
    stale_files: list[str] = field(default_factory=list)


def namespace_wrapper(binds: list[tuple[str, str]], argv: list[str]) -> list[str]:
    """Run argv in a private mount namespace with `binds` mounted over fixed system paths.

    A system-mode libvirt daemon hard-codes /run/libvirt, /etc/libvirt/qemu.conf,
    /var/lib/libvirt, ...; binding the runtime root's copies there keeps side-by-side
    launchers (tests) apart. `unshare` without --fork execs, so the pid we supervise is
    the daemon's own.
    """
    if not binds:
        return argv
    steps = ["set -e"]
    for src, dst in binds:
        steps.append(f"mkdir -p {shlex.quote(dst)}")
        steps.append(f"mount --bind {shlex.quote(src)} {shlex.quote(dst)}")
    steps.append('exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "--",
            "/bin/sh", "-c", "; ".join(steps), argv[0], *argv]


def specs(opts: Options, paths: Paths) -> tuple[DaemonSpec, DaemonSpec]:
    """(virtlogd, libvirt daemon), in start order."""
    env = {**os.environ, **paths.xdg_env}
    binds = paths.namespace_binds()
    virtlogd = DaemonSpec(
        name=VIRTLOGD,
        binary=opts.virtlogd,
        argv=namespace_wrapper(binds, [opts.virtlogd, "-f", paths.virtlogd_conf,
                                       "-p", paths.virtlogd_pidfile]),
        socket=paths.virtlogd_socket,
        env=env,
        stale_files=paths.stale_sockets(VIRTLOGD),
    )
    daemon_argv = [opts.libvirt_daemon, "-f", paths.daemon_conf, "-p", paths.daemon_pidfile]
    if paths.daemon == "virtqemud":
        # As KubeVirt; Debian's monolithic libvirtd rejects these options.
        daemon_argv += ["--no-admin-srv", "--no-ro-srv"]
    libvirt_daemon = DaemonSpec(
        name=paths.daemon,
        binary=opts.libvirt_daemon,
        argv=namespace_wrapper(binds, daemon_argv),
        socket=paths.daemon_socket,
        env=env,
        stale_files=paths.stale_sockets(paths.daemon),
    )
    return virtlogd, libvirt_daemon


def exec_problem(binary: str) -> str | None:
    """Why `binary` cannot be executed, or None. (A stat of a local file: not worth a
    thread hop.)"""
    if os.access(binary, os.X_OK):
        return None
    return "not executable" if os.path.exists(binary) else "no such file"


async def socket_accepts(path: str) -> bool:
    try:
        _, writer = await asyncio.open_unix_connection(path)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class SupervisedDaemon:
    def __init__(self, spec: DaemonSpec, policy: RestartPolicy) -> None:
        self.spec = spec
        self.policy = policy
        self.ready = asyncio.Event()
        self.starts = 0
        self.last_lines: deque[str] = deque(maxlen=LAST_LINES)
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()
        self._log = structlog.get_logger().bind(daemon=spec.name)

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    async def run(self) -> None:
        """Supervise until stop(); raise DaemonFailed when the restart policy gives up."""
        tracker = RestartTracker(self.policy)
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping.is_set():
                became_ready, status = await self._run_once()
                if self._stopping.is_set():
                    return
                tracker.record_exit(loop.time(), became_ready)
                reason = tracker.give_up_reason()
                if reason is not None:
                    self._log.error("daemon gave up", reason=reason,
                                    last_lines=list(self.last_lines))
                    raise DaemonFailed(self.spec.name, reason, self.last_lines)
                delay = tracker.next_delay()
                self._log.warning("daemon exited, restarting", status=status,
                                  became_ready=became_ready, restart_in_s=delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
        finally:
            # Cancelled (a sibling failed) or stopping: the child goes through the ladder.
            await self._terminate()

    async def _run_once(self) -> tuple[bool, str]:
        self._remove_stale()
        self.starts += 1
        problem = exec_problem(self.spec.binary)
        if problem is not None:
            # Checked here because a wrapper (unshare/sh) would report it less clearly.
            line = f"cannot execute {self.spec.binary}: {problem}"
            self.last_lines.append(line)
            self._log.error("daemon failed to start", error=line)
            return False, "exec-failed"
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=self.spec.env,
                # Own session: a terminal's Ctrl-C must reach the launcher, which then
                # stops the daemons in order, not the daemons directly.
                start_new_session=True,
            )
        except OSError as exc:
            line = f"cannot execute {self.spec.argv[0]}: {exc.strerror or exc}"
            self.last_lines.append(line)
            self._log.error("daemon failed to start", error=line)
            return False, "exec-failed"
        self._proc = proc
        log = self._log.bind(pid=proc.pid)
        log.info("daemon started", argv=self.spec.argv, start=self.starts)
        if self._stopping.is_set():
            # stop() came while the process was being spawned: it found no process to
            # stop, and nobody else will (waiting for it to exit would wait forever).
            await ladder.terminate(proc, log)
        assert proc.stdout is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.TaskGroup() as tg:
            pump = tg.create_task(self._pump(proc.stdout, log))
            became_ready = await self._wait_ready(proc)
            if became_ready:
                self.ready.set()
                log.info("daemon ready", socket=self.spec.socket,
                         startup_s=round(loop.time() - started, 3))
            returncode = await proc.wait()
            self.ready.clear()
            try:
                async with asyncio.timeout(PUMP_DRAIN_TIMEOUT_S):
                    await asyncio.shield(pump)
            except TimeoutError:
                pump.cancel()
        status = f"exit {returncode}" if returncode >= 0 else f"signal {-returncode}"
        return became_ready, status

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.ready_timeout_s
        while proc.returncode is None and not self._stopping.is_set():
            if await socket_accepts(self.spec.socket):
                return True
            if loop.time() > deadline:
                self._log.error("daemon did not open its socket in time",
                                socket=self.spec.socket, timeout_s=self.policy.ready_timeout_s)
                await ladder.terminate(proc, self._log)
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(READY_POLL_S):
                    await proc.wait()
        return False

    async def _pump(self, stream: asyncio.StreamReader,
                    log: structlog.typing.FilteringBoundLogger) -> None:
        while raw := await stream.readline():
            line = raw.decode(errors="replace").rstrip()
            if not line:
                continue
            self.last_lines.append(line)
            m = _LIBVIRT_LINE.match(line)
            level, text = (m.group(1), m.group(2)) if m else ("info", line)
            log.log(_LEVELS[level], text, source="daemon-output")

    def _remove_stale(self) -> None:
        # A killed daemon leaves its socket file; the next connect would get ECONNREFUSED
        # and the new daemon may refuse to bind.
        for path in self.spec.stale_files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    async def stop(self) -> None:
        self._stopping.set()
        await self._terminate()

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            self._log.info("stopping daemon", pid=proc.pid)
            await ladder.terminate(proc, self._log)
        self._remove_stale()


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class DaemonSet:
    """virtlogd first (the libvirt daemon needs it for QEMU's output), then the libvirt
    daemon; stopped in reverse order."""

    def __init__(self, opts: Options, paths: Paths,
                 policy: RestartPolicy | None = None) -> None:
        p = policy or RestartPolicy()
        virtlogd, libvirt_daemon = specs(opts, paths)
        self.virtlogd = SupervisedDaemon(virtlogd, p)
        self.libvirt = SupervisedDaemon(libvirt_daemon, p)
        self._stopping = False

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            virtlogd = tg.create_task(self.virtlogd.run(), name=VIRTLOGD)
            ready = tg.create_task(self.virtlogd.ready.wait())
            await asyncio.wait({virtlogd, ready}, return_when=asyncio.FIRST_COMPLETED)
            if not ready.done() or self._stopping:
                ready.cancel()  # stopped (or failed: the group re-raises) before it was up
                return
            tg.create_task(self.libvirt.run(), name=self.libvirt.spec.name)

    async def all_ready(self) -> None:
        await self.virtlogd.ready.wait()
        await self.libvirt.ready.wait()

    async def stop(self) -> None:
        self._stopping = True
        await self.libvirt.stop()
        await self.virtlogd.stop()
