"""The libvirt connection: the process-wide event loop thread, connect with retry, and
reconnect when the daemon goes away (it is restarted by the supervisor).

libvirt accepts one event implementation per process, registered before the first
connection. The default implementation runs on one dedicated thread forever; callbacks
run on that thread and may only hand off to asyncio with call_soon_threadsafe. Every
blocking libvirt call runs in the executor, never on the asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import libvirt
import structlog

CONNECT_INTERVAL_S = 0.5  # KubeVirt polls every 500 ms ...
CONNECT_TIMEOUT_S = 15.0  # ... for up to 15 s
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3

_event_thread_lock = threading.Lock()
_event_thread: threading.Thread | None = None


def _silence_libvirt_stderr(_ctx: object, _err: object) -> None:
    # libvirt's default error handler prints every error to stderr as unstructured text;
    # errors reach us as libvirtError exceptions and are logged there.
    return None


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation and start its thread, once."""
    global _event_thread
    with _event_thread_lock:
        if _event_thread is not None:
            return
        libvirt.registerErrorHandler(_silence_libvirt_stderr, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        # daemon=True: this thread never returns; interpreter exit must not wait for it.
        _event_thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
        _event_thread.start()


class LibvirtUnreachable(Exception):
    pass


ReconnectHook = Callable[[Any], Awaitable[None]]


class Connection:
    def __init__(self, uri: str, executor: ThreadPoolExecutor,
                 daemon_ready: Callable[[], Awaitable[object]] | None = None,
                 label: str | None = None) -> None:
        self.uri = uri
        # Which connection, when a process has several ("agent"): named in its log lines.
        self._connected_msg = "libvirt connected" if label is None \
            else f"libvirt connected ({label})"
        # Reconnect as soon as the supervisor reports the daemon back, instead of polling.
        self._daemon_ready = daemon_ready
        self._executor = executor
        self._conn: Any = None
        self._closed = asyncio.Event()
        self._connected = asyncio.Event()
        self._stopping = False
        self._stop_requested = asyncio.Event()  # close(): whatever run() waits for ends
        self._on_reconnect: list[ReconnectHook] = []
        self.connects = 0
        self._log = structlog.get_logger().bind(uri=uri)
        if label is not None:
            self._log = self._log.bind(connection=label)

    @property
    def conn(self) -> Any:
        """The live virConnect (None while reconnecting)."""
        return self._conn

    def on_reconnect(self, hook: ReconnectHook) -> None:
        """Called with the new virConnect after every reconnect (re-register callbacks,
        send a fresh snapshot)."""
        self._on_reconnect.append(hook)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def connect(self, timeout_s: float = CONNECT_TIMEOUT_S) -> Any:
        ensure_event_loop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last_error = ""
        while True:
            try:
                conn = await self.call(libvirt.open, self.uri)
            except libvirt.libvirtError as exc:
                last_error = str(exc)
            else:
                try:
                    await self.call(self._arm, conn, loop)
                except libvirt.libvirtError as exc:
                    # The daemon went away between the open and the set-up (a kill -9
                    # right after a restart): as a failed open, not a launcher failure.
                    last_error = str(exc)
                    with contextlib.suppress(libvirt.libvirtError):
                        await self.call(conn.close)
                else:
                    self._conn = conn
                    self._closed.clear()
                    self._connected.set()
                    self.connects += 1
                    self._log.info(self._connected_msg, connects=self.connects)
                    return conn
            if loop.time() >= deadline or self._stopping:
                raise LibvirtUnreachable(
                    f"cannot connect to {self.uri} within {timeout_s:g}s: {last_error}"
                    if not self._stopping else "the connection is being closed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CONNECT_INTERVAL_S):
                    await self._stop_requested.wait()

    def _arm(self, conn: Any, loop: asyncio.AbstractEventLoop) -> None:
        # Runs in the executor: keepalive lets a hung daemon be noticed, not just a dead one.
        # Local drivers (test:///, embed) have no keepalive; that is not an error.
        try:
            conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                raise

        def closed(_conn: Any, reason: int, _opaque: Any) -> None:
            # libvirt's event thread: hand off only.
            loop.call_soon_threadsafe(self._on_closed, conn, reason)

        conn.registerCloseCallback(closed, None)

    def _on_closed(self, conn: Any, reason: int) -> None:
        if conn is not self._conn:
            return
        self._log.warning("libvirt connection closed", reason=_CLOSE_REASONS.get(reason, reason))
        self._conn = None
        self._connected.clear()
        self._closed.set()

    async def run(self) -> None:
        """Keep the connection up: after a close, reconnect (forever, with the connect
        retry), then run the reconnect hooks."""
        if self._conn is None:
            # lost before this task first ran (or never made): the hooks are owed too
            await self.run_hooks(await self.connect())
        while True:
            await self._closed.wait()
            if self.stopping:
                return
            if self._daemon_ready is not None and not await self._until_stopped(
                    self._daemon_ready()):
                # Closed while the daemon was down (a SIGTERM during its restart backoff:
                # the daemon set stops restarting it, so it would never be ready).
                return
            try:
                conn = await self.connect(timeout_s=CONNECT_TIMEOUT_S)
            except LibvirtUnreachable as exc:
                self._log.warning("libvirt still unreachable, retrying", error=str(exc))
                continue
            await self.run_hooks(conn)

    async def _until_stopped(self, aw: Awaitable[object]) -> bool:
        """Wait for `aw` unless close() comes first; True if `aw` finished."""
        waited = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self._stop_requested.wait())
        try:
            await asyncio.wait({waited, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waited, stop):
                task.cancel()
        if waited.done() and not waited.cancelled():
            waited.result()  # its failure, if any, is the caller's
            return True
        return False

    async def run_hooks(self, conn: Any) -> None:
        """The reconnect hooks on `conn`. A libvirt error in them (the daemon went away again
        right after the connect) is a lost connection, not a launcher failure: it goes
        through the reconnect path, which runs them again."""
        try:
            for hook in self._on_reconnect:
                await hook(conn)
        except libvirt.libvirtError as exc:
            self._log.warning("libvirt connection lost while setting it up; reconnecting",
                              error=str(exc))
            await self._drop(conn, libvirt.VIR_CONNECT_CLOSE_REASON_ERROR)

    async def reset(self) -> None:
        """Drop the current connection and go through the reconnect path (hooks included),
        as when the daemon goes away. Local drivers never report a closed connection."""
        if self._conn is not None:
            await self._drop(self._conn, libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT)

    async def _drop(self, conn: Any, reason: int) -> None:
        """`conn` is lost: the reconnect path takes over (unless a newer connection is
        current already), and it is closed."""
        self._on_closed(conn, reason)  # a no-op unless conn is the current one
        with contextlib.suppress(libvirt.libvirtError):
            await self.call(conn.close)

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def close(self) -> None:
        self._stopping = True
        self._stop_requested.set()
        self._closed.set()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await self.call(conn.unregisterCloseCallback)
                await self.call(conn.close)
            except libvirt.libvirtError as exc:
                self._log.info("closing libvirt connection failed", error=str(exc))


_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "eof",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "client",
}
