"""Shared by the integration tests: a real `virt-launcher-events` receiver process, short
temp dirs for UNIX sockets, and asyncio polling helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any

from launcher.notify.notifier import Notifier

KEY = "default_vmi"


def run_uvloop(coro: Any) -> Any:
    """Run a test scenario on uvloop, as the launcher runs."""
    import uvloop  # noqa: PLC0415

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
EVENTS_CMD = Path(sys.executable).parent / "virt-launcher-events"


class ReceiverProc:
    """A virt-launcher-events subprocess and the event lines it printed so far."""

    def __init__(self, socket_path: str, *args: str, log_dir: Path) -> None:
        self.socket_path = socket_path
        self._lock = threading.Lock()
        self._lines: list[dict[str, Any]] = []
        self.stderr_path = log_dir / f"receiver-{time.monotonic_ns()}.err"
        self._stderr: IO[bytes] = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [str(EVENTS_CMD), "--socket", socket_path, *args],
            stdout=subprocess.PIPE, stderr=self._stderr, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            record = json.loads(raw)  # a non-JSON line on stdout is a bug: fail loudly
            with self._lock:
                self._lines.append(record)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self._lines if kind is None or r["kind"] == kind]

    def seqs(self, key: str = KEY) -> list[int]:
        return [r["domain"]["seq"] for r in self.events("domain")
                if r["domain"].get("key", KEY) == key]

    def stop(self, sig: signal.Signals = signal.SIGKILL, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._reader.join(timeout)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._stderr.close()
        return rc

    def wait_ready(self, within_s: float = 15.0) -> None:
        deadline = time.monotonic() + within_s
        while '"msg": "listening"' not in self.stderr_text():
            assert self.proc.poll() is None, f"receiver exited: {self.stderr_text()}"
            assert time.monotonic() < deadline, "receiver did not start listening"
            time.sleep(0.02)

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")


async def until(predicate: Callable[[], Any], within_s: float, what: str,
                sender: asyncio.Task[None] | None = None) -> None:
    """Poll with a deadline (the receiver is another process: there is no event to await)."""
    deadline = time.monotonic() + within_s
    while not predicate():
        if sender is not None and sender.done():
            sender.result()  # a crashed sender is the real failure: raise it
            raise AssertionError("the sender stopped")
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(notifier: Notifier) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(notifier.run(), name="notifier")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await notifier.close()


