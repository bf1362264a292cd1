"""The one terminate ladder for every child the launcher owns: SIGTERM, wait, SIGKILL, wait."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog

DEFAULT_TERM_TIMEOUT_S = 5.0
DEFAULT_KILL_TIMEOUT_S = 2.0


async def terminate(
    proc: asyncio.subprocess.Process,
    log: structlog.typing.FilteringBoundLogger,
    term_timeout_s: float = DEFAULT_TERM_TIMEOUT_S,
    kill_timeout_s: float = DEFAULT_KILL_TIMEOUT_S,
) -> int | None:
    """Stop `proc`; return its exit status, or None if it survived SIGKILL (D state)."""
    if proc.returncode is not None:
        return proc.returncode
    for sig, timeout in ((signal.SIGTERM, term_timeout_s), (signal.SIGKILL, kill_timeout_s)):
        # It may exit between the check and the signal; wait() collects it either way.
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            async with asyncio.timeout(timeout):
                return await proc.wait()
        except TimeoutError:
            log.warning("child did not exit after signal", pid=proc.pid,
                        signal=sig.name, waited_s=timeout)
    log.error("child survived SIGKILL (uninterruptible?)", pid=proc.pid)
    return None
