"""The target side of a live migration: SyncMigrationTarget, the target monitor,
SignalTargetPodCleanup and FinalizeVirtualMachineMigration (KubeVirt's
live-migration-target.go and cmd-server).

- SyncMigrationTarget prepares everything a start would (launcher.vm.sync.Syncer.
  prepare_target: conversion, hooks, cloud-init ISO, overlays) and the share dir's
  migrationproxy/ directory, where virt-handler's proxy and the incoming QEMU meet; no
  domain is defined: the incoming migration creates it.
- The target monitor waits for the domain to run here (not paused for the migration, not
  running in post-copy), then writes EndTimestamp into its migration metadata: what
  virt-handler takes as "the target has the VM" (migration-target.go: ackMigrationCompletion).
- SignalTargetPodCleanup: when this pod (POD_NAME) is the VMI's migrationState.targetPod
  and no domain runs here, the launcher ends (KubeVirt's early-exit signal).
- FinalizeVirtualMachineMigration: the guest clock is re-synchronized through the agent
  (the guest was stopped for the switch-over), best effort as KubeVirt's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping
from typing import Any

import libvirt
import structlog

from launcher.libvirt.domain import DomainAccess
from launcher.libvirt.errors import libvirt_message
from launcher.notify.relay import DomainRelay
from launcher.paths import Paths
from launcher.vm import migration_meta as meta_mod
from launcher.vm import migration_options as mo
from launcher.vm.sync import Syncer

POLL_S = 0.2
POD_NAME_ENV = "POD_NAME"
# Still migrating: the incoming domain paused for the migration, or running in post-copy
# (its memory still arriving).
_MIGRATING = {
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION),
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY),
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP),
    (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY),
}


def arrived(state: tuple[int, int] | None) -> bool:
    """The migrated domain runs here (or stays paused as the source was)."""
    if state is None or state in _MIGRATING:
        return False
    return state[0] in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED)


class MigrationTarget:
    def __init__(self, *, access: DomainAccess, relay: DomainRelay, paths: Paths,
                 syncer: Syncer, domain: str,
                 environ: Mapping[str, str] | None = None) -> None:
        self.access = access
        self.relay = relay
        self.paths = paths
        self.syncer = syncer
        self.domain = domain
        self.env = os.environ if environ is None else environ
        self.migration_uid = ""
        self.request_stop: Callable[[], None] = lambda: None  # set by the supervisor
        self._monitor: asyncio.Task[None] | None = None
        self._log = structlog.get_logger().bind(part="migration", role="target",
                                                domain=domain)

    async def prepare(self, vmi: Mapping[str, Any], options: Any | None) -> str:
        uid = (mo.migration_state(vmi) or {}).get("migrationUid")
        await self.syncer.prepare_target(vmi, options)
        proxy_dir = os.path.join(self.paths.share_dir, "migrationproxy")
        os.makedirs(proxy_dir, mode=0o755, exist_ok=True)
        self.migration_uid = uid if isinstance(uid, str) else ""
        if self._monitor is None or self._monitor.done():
            self._monitor = asyncio.ensure_future(self._watch())
        self._log.info("migration target prepared", migration_uid=self.migration_uid,
                       proxy_dir=proxy_dir)
        return "migration target prepared"

    async def _watch(self) -> None:
        """Until the migrated domain runs here; then its migration metadata gets its end."""
        while True:
            try:
                state = await self.access.state()
            except (libvirt.libvirtError, ConnectionError):
                state = None
            if arrived(state):
                break
            await asyncio.sleep(POLL_S)
        try:
            xml = await self.access.xml(0)
            meta = meta_mod.read(xml)
            if meta is None:
                meta = meta_mod.MigrationMeta(uid=self.migration_uid)
            if not meta.ended:
                await meta_mod.write(self.access, meta.with_(end_timestamp=meta_mod.now()))
            self._log.info("the migrated domain runs here", migration_uid=meta.uid)
        except (libvirt.libvirtError, ConnectionError) as exc:
            self._log.error("cannot record the migration's end", error=str(exc))
        self.relay.resync()

    async def signal_cleanup(self, vmi: Mapping[str, Any]) -> str:
        me = self.env.get(POD_NAME_ENV, "")
        target_pod = (mo.migration_state(vmi) or {}).get("targetPod")
        if not me or target_pod != me:
            return ""
        running = await self.access.state() if self.access.connected else None
        if running is not None and running[0] in (libvirt.VIR_DOMAIN_RUNNING,
                                                  libvirt.VIR_DOMAIN_PAUSED):
            self._log.info("target pod cleanup signalled, but the domain runs here; ignored",
                           pod=me)
            return "the domain runs on this target; not cleaning up"
        self._log.info("target pod cleanup signalled: ending this launcher", pod=me)
        self.request_stop()
        return "target pod cleanup"

    async def finalize(self) -> None:
        def sync_clock(dom: Any) -> None:
            dom.setTime(None, libvirt.VIR_DOMAIN_TIME_SYNC)
        try:
            await self.access.call(sync_clock)
            self._log.info("guest clock synchronized after the migration")
        except libvirt.libvirtError as exc:
            # KubeVirt logs it and goes on: a guest without an agent keeps its clock.
            self._log.warning("guest clock not synchronized", error=libvirt_message(exc))

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
