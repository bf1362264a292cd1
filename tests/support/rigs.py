"""The launcher's command side for the integration tests, built by the launcher's own
wiring (launcher.wiring.build) on a libvirt URI with no daemons of ours (libvirt's
test:///default driver, shared by the whole process: each test gives its domain its own
name)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import libvirt

from launcher.flags import Options
from launcher.libvirt.connection import ensure_event_loop
from launcher.paths import derive
from launcher.wiring import Components, build

TEST_URI = "test:///default"


@contextlib.asynccontextmanager
async def serving(opts: Options, *, uri: str = TEST_URI,
                  **build_kwargs: Any) -> AsyncIterator[Components]:
    """The components, both libvirt connections up, the command server serving at
    paths.cmd_socket (the notifier is not run: it only queues); all closed afterwards."""
    ensure_event_loop()
    paths = derive(opts)
    for d in paths.dirs_to_create():
        os.makedirs(d, exist_ok=True)
    parts = build(opts, paths, uri=uri, with_daemons=False, **build_kwargs)
    started = False
    try:
        await parts.conn.connect()
        await parts.agent_conn.connect()
        await asyncio.wait_for(parts.cmd_server.start(), 20)
        started = True
        yield parts
    finally:
        if started:
            await parts.cmd_server.stop(0)
        await parts.commands.close()
        await parts.freeze.close()
        await parts.conn.close()
        await parts.agent_conn.close()
        parts.shutdown_executors()


@contextlib.asynccontextmanager
async def operator(uri: str = TEST_URI, *,
                   setup: Callable[[Any], object] | None = None,
                   domain: str | None = None) -> AsyncIterator[Any]:
    """A libvirt connection of the test's own (what a person with virsh does); `setup`
    runs on it first; `domain` is destroyed and undefined afterwards."""
    loop = asyncio.get_running_loop()
    conn = await loop.run_in_executor(None, libvirt.open, uri)
    try:
        if setup is not None:
            await loop.run_in_executor(None, setup, conn)
        yield conn
    finally:
        def cleanup() -> None:
            if domain is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    dom = conn.lookupByName(domain)
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.destroy()
                    dom.undefine()
            conn.close()

        await loop.run_in_executor(None, cleanup)
