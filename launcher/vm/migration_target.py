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
- FinalizeVirtualMachineMigration: the guest clock is set to the host's time through the
  agent (the guest was stopped for the switch-over), as KubeVirt's setGuestTime: in the
  background (the rpc answers at once), once per launcher, an explicit time (seconds and
  nanoseconds now) retried each second for up to 60 s while the agent is unresponsive or
  the call fails otherwise, given up at once when the agent cannot do it (operation or
  argument unsupported) or the domain is gone; cancelled when the launcher shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
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
CLOCK_SYNC_INTERVAL_S = 1.0  # KubeVirt's setGuestTime: a try each second...
CLOCK_SYNC_TIMEOUT_S = 60.0  # ... for up to a minute
# Errors after which another try cannot help: KubeVirt gives up on the first two (the agent
# cannot set the time, or no agent channel is configured); ours also when the domain is gone
# (KubeVirt's lookup failing).
CLOCK_SYNC_GIVE_UP = {
    libvirt.VIR_ERR_OPERATION_UNSUPPORTED: "not supported",
    libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED: "agent not configured",
    libvirt.VIR_ERR_NO_DOMAIN: "no domain",
}
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
        self._clock: asyncio.Task[bool] | None = None
        self.now: Callable[[], float] = time.time  # the time given to the guest
        self._log = structlog.get_logger().bind(part="migration", role="target",
                                                domain=domain)

    async def prepare(self, vmi: Mapping[str, Any], options: Any | None) -> str:
        uid = (mo.migration_state(vmi) or {}).get("migrationUid")
        await self.syncer.prepare_target(vmi, options)
        proxy_dir = os.path.join(self.paths.share_dir, "migrationproxy")
        # KubeVirt's: 0755 (our umask would make it 0700), owned by QEMU's user - the
        # launcher's own, in both modes (root: QEMU runs as root here; --run-as-nonroot: the
        # session daemon's QEMU runs as the launcher's user), so the incoming QEMU can create
        # its listening sockets in it.
        os.makedirs(proxy_dir, mode=0o755, exist_ok=True)
        os.chmod(proxy_dir, 0o755)
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
        """FinalizeVirtualMachineMigration: the guest clock's sync starts in the background,
        once per launcher (KubeVirt's setTimeOnce); the rpc does not wait for it."""
        if self._clock is None:
            self._clock = asyncio.ensure_future(self.sync_clock())

    async def sync_clock(self) -> bool:
        """Set the guest's clock to the host's time through the agent (qemu-ga's
        guest-set-time: settimeofday, then hwclock -w). True once it was set."""
        def set_time(dom: Any) -> None:
            now = self.now()
            secs = int(now)
            dom.setTime({"seconds": secs, "nseconds": int((now - secs) * 1e9)}, 0)

        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + CLOCK_SYNC_TIMEOUT_S
        attempts = 0
        latest = ""
        while True:
            attempts += 1
            try:
                await self.access.call(set_time)
            except libvirt.libvirtError as exc:
                latest = libvirt_message(exc)
                why = CLOCK_SYNC_GIVE_UP.get(exc.get_error_code() or 0)
                if why is not None:
                    self._log.warning(f"guest clock not synchronized: {why}", error=latest)
                    return False
            except ConnectionError as exc:  # the daemon restarting: it may come back
                latest = str(exc)
            else:
                self._log.info("guest clock synchronized after the migration",
                               attempts=attempts)
                return True
            self._log.debug("guest clock not synchronized yet", error=latest,
                            attempts=attempts)
            if loop.time() + CLOCK_SYNC_INTERVAL_S > give_up_at:
                self._log.error("failed to sync the guest clock after the migration",
                                attempts=attempts, error=latest)
                return False
            await asyncio.sleep(CLOCK_SYNC_INTERVAL_S)

    async def close(self) -> None:
        for task in (self._monitor, self._clock):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
