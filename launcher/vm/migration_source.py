"""The source side of a live migration: MigrateVirtualMachine and
CancelVirtualMachineMigration (KubeVirt's live-migration-source.go).

- Preconditions as KubeVirt's: the VMI's status.migrationState is set; no backup runs.
  Its migrationUid is one-shot: the same uid while it runs is a successful no-op, after it
  ended an error naming the uid and the result.
- The rpc answers at once; the migration runs as a task owned here, its result goes into
  the domain's migration metadata (launcher.vm.migration_meta), which the notify snapshots
  carry to virt-handler.
- virDomainMigrateToURI3 to the target's libvirt through virt-handler's proxy socket in
  the share dir, with KubeVirt's flags and parameters (launcher.vm.migration_options).
- A monitor reads the job's statistics once a second: logs the progress; aborts after
  ProgressTimeout seconds without progress; at CompletionTimeoutPerGiB x GiB, with
  workload disruption allowed, switches to post-copy when allowed or else pauses the guest
  (and aborts if that did not finish it by twice the time); without it, aborts.
- Cancel aborts the job from another thread (a hung QEMU must not hang the rpc): the
  metadata's AbortStatus goes Aborting, then Succeeded (the migration ended without
  completing) or Failed (it completed anyway).
Beyond KubeVirt: the launcher asked to shut down mid-migration aborts it first
(`abort_for_shutdown`), so the VM is shut down where it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import libvirt
import structlog

from launcher.libvirt.domain import DomainAccess
from launcher.libvirt.errors import libvirt_message
from launcher.notify import domain_json
from launcher.notify.relay import DomainRelay
from launcher.paths import Paths
from launcher.vm import migration_meta as meta_mod
from launcher.vm import migration_options as mo
from launcher.vm.migration_meta import MigrationMeta

MONITOR_INTERVAL_S = 1.0
PROGRESS_KEY = "LauncherProgress"
GIB = 1024 ** 3


class MigrationError(Exception):
    """A migration request refused; the message is the client's."""


@dataclass
class _Running:
    uid: str
    task: asyncio.Task[None]
    meta: MigrationMeta
    aborting: bool = False
    abort_reason: str = ""
    progress: dict[str, int] | None = None  # the monitor's latest figures


class MigrationSource:
    def __init__(self, *, access: DomainAccess, relay: DomainRelay, paths: Paths,
                 nonroot: bool, domain: str) -> None:
        self.access = access
        self.relay = relay
        self.paths = paths
        self.nonroot = nonroot
        self.domain = domain
        self.running: _Running | None = None
        self.succeeded = False  # the domain left for the target: QEMU's end is "Migrated"
        relay.migration_metadata = self.metadata_json
        self._log = structlog.get_logger().bind(part="migration", role="source",
                                                domain=domain)

    def metadata_json(self) -> dict[str, Any] | None:
        """What the snapshots carry as the migration metadata while this launcher has one
        (the domain's own copy is written before and after the job, not during it)."""
        run = self.running
        if run is None:
            return None
        out = domain_json.migration_json(meta_mod.to_element(run.meta))
        if run.progress is not None and not run.meta.ended:
            # Beyond KubeVirt: the migration's progress while it runs, under a key of its
            # own (Go's decoder ignores fields it does not know: virt-handler is unaffected).
            out[PROGRESS_KEY] = run.progress
        return out

    # --- the rpcs ---------------------------------------------------------------------------
    async def migrate(self, vmi: Mapping[str, Any], options_json: bytes) -> str:
        raw_status = vmi.get("status")
        status: Mapping[str, Any] = raw_status if isinstance(raw_status, dict) else {}
        cbt = status.get("changedBlockTracking")
        backup = cbt.get("backupStatus") if isinstance(cbt, dict) else None
        if backup:
            name = backup.get("backupName", "") if isinstance(backup, dict) else ""
            raise MigrationError(f"cannot migrate VMI until backup {name} is completed")
        state = mo.migration_state(vmi)
        if state is None:
            raise MigrationError("cannot migrate VMI until migrationState is ready")
        uid = state.get("migrationUid")
        if not isinstance(uid, str) or not uid:
            raise MigrationError("status.migrationState.migrationUid: expected the "
                                 "migration's uid")
        try:
            opts = mo.parse_options(options_json)
        except mo.MigrationOptionsError as exc:
            raise MigrationError(str(exc)) from None
        if self.running is not None and not self.running.task.done():
            if self.running.uid == uid:
                return f"migration {uid} is in progress"
            raise MigrationError(f"migration {self.running.uid} is in progress; not "
                                 f"starting {uid}")
        current = self.running.meta if self.running is not None else None
        if current is None or current.uid != uid:
            current = meta_mod.read(await self.access.xml(0))
        if current is not None and current.uid == uid:
            if not current.ended:
                return f"migration {uid} is in progress"
            raise MigrationError(
                f"migration job {uid} already executed, finished at {current.end_timestamp},"
                f" failed: {str(current.failed).lower()}, abortStatus: "
                f"{current.abort_status}")
        meta = MigrationMeta(uid=uid, start_timestamp=meta_mod.now(), mode=meta_mod.PRE_COPY)
        await meta_mod.write(self.access, meta)
        self.relay.resync()
        metadata = vmi.get("metadata")
        vmi_uid = str(metadata.get("uid") or "") if isinstance(metadata, dict) else ""
        target_state = state.get("targetState")
        target_uid = target_state.get("virtualMachineInstanceUID") if isinstance(
            target_state, dict) else None
        block = status.get("migrationMethod") == "BlockMigration"
        task = asyncio.ensure_future(self._run(uid, vmi_uid, target_uid, opts, block))
        self.running = _Running(uid, task, meta)
        self._log.info("migration started", migration_uid=uid, block=block,
                       target_pod=state.get("targetPod"), bandwidth_mib_s=opts.bandwidth_mib_s,
                       post_copy=opts.post_copy)
        return f"migration {uid} started"

    async def cancel(self) -> str:
        run = self.running
        if run is None or run.task.done():
            self._log.info("cancel: no migration is running")
            return "no migration is running"
        await self._abort(run, "Live migration aborted", status=meta_mod.ABORTING)
        return f"aborting migration {run.uid}"

    async def abort_for_shutdown(self, timeout_s: float) -> None:
        """The launcher is shutting down: a running migration is aborted and waited for,
        so the VM is shut down where it runs (not half moved)."""
        run = self.running
        if run is None or run.task.done():
            return
        self._log.warning("shutting down during a migration: aborting it first",
                          migration_uid=run.uid)
        await self._abort(run, "the source launcher is shutting down",
                          status=meta_mod.ABORTING)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(run.task)

    async def settle(self, timeout_s: float) -> None:
        """QEMU exited: a migration still running in our view ends within moments (libvirt
        stops the source QEMU before migrateToURI3 returns). Waiting for it lets QEMU's end
        be reported as Migrated, never as a crash in between."""
        run = self.running
        if run is None or run.task.done():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(run.task)

    async def close(self) -> None:
        run = self.running
        if run is not None and not run.task.done():
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run.task

    # --- the migration ----------------------------------------------------------------------
    async def _abort(self, run: _Running, reason: str, *, status: str = "") -> None:
        if run.aborting:
            return
        run.aborting = True
        run.abort_reason = reason
        if status:
            run.meta = run.meta.with_(abort_status=status)
            self.relay.resync()  # the snapshots carry it (metadata_json)

        def abort(dom: Any) -> None:
            dom.abortJob()
        try:
            await self.access.call(abort)
        except libvirt.libvirtError as exc:
            self._log.warning("aborting the migration job failed",
                              error=libvirt_message(exc))

    async def _write(self, meta: MigrationMeta) -> None:
        try:
            await meta_mod.write(self.access, meta)
        except (libvirt.libvirtError, ConnectionError) as exc:
            self._log.error("cannot store the migration metadata", error=str(exc))
        self.relay.resync()

    async def _run(self, uid: str, vmi_uid: str, target_uid: str | None,
                   opts: mo.MigrationOptions, block: bool) -> None:
        run = self.running
        t0 = time.monotonic()

        def start(dom: Any) -> tuple[int, dict[Any, Any]]:
            paused = dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
            xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE)
            copy = (mo.disks_to_copy(xml, hotplug_dir=self.paths.hotplug_disk_dir)
                    if block else [])
            return (mo.flags(opts, block=block, paused=paused),
                    mo.params(xml=xml, domain=self.domain, share_dir=self.paths.share_dir,
                              vmi_uid=vmi_uid, target_uid=target_uid, opts=opts,
                              copy_disks=copy))

        error = ""
        monitor: asyncio.Task[None] | None = None
        try:
            flags, params = await self.access.call(start)
            if opts.max_downtime_ms:
                await self.access.call(lambda dom: dom.migrateSetMaxDowntime(
                    opts.max_downtime_ms, 0))
            dest = mo.destination_uri(self.paths.share_dir, vmi_uid, self.nonroot)
            self._log.info("migrating", destination=dest, flags=flags,
                           disks=params.get(libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS, []),
                           uri=params[libvirt.VIR_MIGRATE_PARAM_URI])
            assert run is not None
            monitor = asyncio.ensure_future(self._monitor(run, opts))
            await self.access.call(lambda dom: dom.migrateToURI3(dest, params, flags))
        except libvirt.libvirtError as exc:
            error = libvirt_message(exc)
        except ConnectionError as exc:
            error = str(exc)
        finally:
            if monitor is not None:
                monitor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await monitor
        assert run is not None
        took = round(time.monotonic() - t0, 3)
        if not error:
            self.succeeded = True
            aborted_late = run.aborting
            run.meta = run.meta.with_(end_timestamp=meta_mod.now(),
                                      abort_status=meta_mod.ABORT_FAILED if aborted_late
                                      else run.meta.abort_status)
            stats = await self._completed_stats()
            self._log.info("migration completed", migration_uid=uid, duration_s=took,
                           mode=run.meta.mode, downtime_ms=stats.get("downtime"),
                           job_elapsed_ms=stats.get("time_elapsed"),
                           data_processed_mib=int(stats.get("data_processed", 0)) // mo.MIB)
        else:
            reason = f"{run.abort_reason}: {error}" if run.aborting else error
            run.meta = run.meta.with_(
                end_timestamp=meta_mod.now(), failed=True, failure_reason=reason,
                abort_status=meta_mod.ABORT_SUCCEEDED if run.aborting
                else run.meta.abort_status)
            self._log.error("migration failed", migration_uid=uid, duration_s=took,
                            reason=reason)
        await self._write(run.meta)

    async def _completed_stats(self) -> dict[str, Any]:
        """libvirt's figures of the finished job (downtime, time elapsed); {} if gone."""
        def read(dom: Any) -> dict[str, Any]:
            stats: dict[str, Any] = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            return stats
        try:
            return await self.access.call(read)
        except (libvirt.libvirtError, ConnectionError) as exc:
            self._log.debug("no completed job statistics", error=str(exc))
            return {}

    async def _monitor(self, run: _Running, opts: mo.MigrationOptions) -> None:
        """KubeVirt's migration monitor (legacy convergence): progress, timeouts, post-copy."""
        last_remaining: int | None = None
        last_progress = time.monotonic()
        started = time.monotonic()
        deadline_s: float | None = None
        while True:
            await asyncio.sleep(MONITOR_INTERVAL_S)
            try:
                stats: dict[str, Any] = await self.access.call(lambda dom: dom.jobStats())
            except (libvirt.libvirtError, ConnectionError) as exc:
                self._log.debug("no job statistics", error=str(exc))
                continue
            if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
                continue
            remaining = int(stats.get("data_remaining", 0))
            total = int(stats.get("data_total", 0))
            self._log.info(
                "migration progress", migration_uid=run.uid,
                processed_mib=int(stats.get("data_processed", 0)) // mo.MIB,
                remaining_mib=remaining // mo.MIB, total_mib=total // mo.MIB,
                memory_iteration=stats.get("memory_iteration"),
                dirty_rate_pages_s=stats.get("memory_dirty_rate"),
                memory_bps=stats.get("memory_bps"),
                expected_downtime_ms=stats.get("downtime"), mode=run.meta.mode,
                elapsed_s=round(time.monotonic() - started, 1))
            run.progress = {
                "DataProcessedBytes": int(stats.get("data_processed", 0)),
                "DataRemainingBytes": remaining, "DataTotalBytes": total,
                "MemoryIteration": int(stats.get("memory_iteration", 0) or 0),
                "ElapsedMs": int((time.monotonic() - started) * 1000)}
            self.relay.resync()
            now = time.monotonic()
            if last_remaining is None or remaining < last_remaining:
                last_remaining, last_progress = remaining, now
            if run.aborting:
                continue
            if now - last_progress > opts.progress_timeout_s:
                await self._abort(run, f"Live migration stuck for {int(now - last_progress)}"
                                       f" sec and has been aborted")
                continue
            if deadline_s is None and total:
                deadline_s = opts.completion_timeout_per_gib_s * max(
                    1, math.ceil(total / GIB))
            if deadline_s is not None and now - started > deadline_s:
                deadline_s = await self._converge(run, opts, int(now - started), deadline_s)

    async def _converge(self, run: _Running, opts: mo.MigrationOptions, elapsed: int,
                        deadline_s: float) -> float:
        """KubeVirt's legacy convergence at the acceptable completion time: with workload
        disruption allowed, post-copy (when allowed) or the guest paused (Mode Paused, the
        deadline doubled); otherwise - or once post-copy or the pause did not help in time -
        abort. Returns the next deadline."""
        if run.meta.mode == meta_mod.POST_COPY:
            # Never aborted in post-copy: the target already runs the workload.
            return math.inf
        if opts.workload_disruption and run.meta.mode != meta_mod.PAUSED:
            if opts.post_copy:
                self._log.info("switching the migration to post-copy", elapsed_s=elapsed)
                try:
                    await self.access.call(lambda dom: dom.migrateStartPostCopy(0))
                except libvirt.libvirtError as exc:
                    self._log.error("post-copy switch failed", error=libvirt_message(exc))
                    return deadline_s
                run.meta = run.meta.with_(mode=meta_mod.POST_COPY)
                self.relay.resync()
                return math.inf
            self._log.info("pausing the guest so the migration completes", elapsed_s=elapsed)
            try:
                await self.access.call(lambda dom: dom.suspend())
            except libvirt.libvirtError as exc:
                self._log.error("pausing the guest failed", error=libvirt_message(exc))
                return deadline_s
            run.meta = run.meta.with_(mode=meta_mod.PAUSED)
            self.relay.resync()
            return deadline_s * 2
        await self._abort(run, f"Live migration is not completed after {elapsed} sec "
                               "and has been aborted")
        return math.inf
