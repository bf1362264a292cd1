"""Live migration end to end on one machine: two VM pods (tests/support/migration.py: the
target pod in a mount namespace of its own with the same paths), each with its own
launcher, libvirt daemon and virtlogd; a stand-in for virt-handler's migration proxy
between them; the test guest (TCG) with its containerDisk overlay block-migrated. The
requests are the ones virt-handler sends (the VMI with status.migrationState, the options
JSON with Go field names); what virt-handler would conclude is read from both launchers'
notify snapshots."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from launcher._proto.kubevirt.cmd.v1 import cmd_pb2
from tests.e2e.test_hotplug import (
    block_devices,
    domain_disks,
    head,
    hotplug_volume,
    image,
    wait_guest,
)
from tests.support.guest import Cmd, Receiver, agent_state, status
from tests.support.harness import Instance, wait_for
from tests.support.migration import (
    MigrationProxy,
    TargetPod,
    migration_meta,
    target_pod,
)
from tests.support.migration import migrating as support_migrating
from tests.support.standalone import EMULATION, guest, sync, wait_agent

pytestmark = pytest.mark.e2e

MIGRATION_UID = "mig-0001"
TARGET_POD = "virt-launcher-testvm-target"


def migrating(doc: dict[str, Any], uid: str = MIGRATION_UID) -> dict[str, Any]:
    return support_migrating(doc, uid, TARGET_POD)


def call(cmd: Cmd, rpc: str, doc: dict[str, Any], **extra: Any) -> Any:
    vmi = cmd_pb2.VMI(vmiJson=json.dumps(doc).encode())
    if rpc == "MigrateVirtualMachine":
        request: Any = cmd_pb2.MigrationRequest(vmi=vmi, **extra)
    else:
        request = cmd_pb2.VMIRequest(vmi=vmi)
    return getattr(cmd.stub, rpc)(request, timeout=120)


def shell(cmd: Cmd, script: str) -> str:
    out = cmd.exec("/bin/sh", "-c", script)
    assert out.response.success and out.exitCode == 0, out
    return str(out.stdOut)


class Pods:
    def __init__(self, source: Instance, source_events: Receiver, target: TargetPod,
                 target_events: Receiver, doc: dict[str, Any]) -> None:
        self.source, self.source_events = source, source_events
        self.target, self.target_events = target, target_events
        self.doc = doc
        self.src_cmd = Cmd.of(source)
        self.tgt_cmd = Cmd.of(target.view)
        self.proxy = MigrationProxy(
            source_share=Path(source.paths.share_dir),
            target_share=target.host(source.paths.share_dir),
            target_libvirt_socket=Path(target.view.paths.daemon_socket),
            uid=f"uid-{source.root.name}")

    def close(self) -> None:
        self.proxy.stop()
        self.src_cmd.channel.close()
        self.tgt_cmd.channel.close()


@pytest.fixture
def pods(make_instance: Callable[..., Instance],
         receiver_for: Callable[..., Receiver]) -> Iterator[Pods]:
    source = make_instance(nonroot=False, extra_args=EMULATION)
    source_events = receiver_for(source)
    doc = guest(source)
    source.start()
    source.wait_running(timeout=60)
    resp = sync(source, doc)
    assert resp.success, resp.message
    wait_agent(source_events)
    with target_pod(source, EMULATION) as target:
        from tests.support.guestvm import stage  # noqa: PLC0415
        stage(target.view.paths.container_disk_dir)  # the target node's container disks
        target_events = receiver_for(target.view)
        target.proc.start(env={"POD_NAME": TARGET_POD})
        target.proc.wait_running(timeout=60)
        p = Pods(source, source_events, target, target_events, doc)
        try:
            yield p
        finally:
            p.close()
            print(f"\n===== target pod log ({target.proc.log_path}) =====")
            print(target.proc.tail(300))


def test_the_guest_moves_to_the_target_and_keeps_running(pods: Pods) -> None:
    src, tgt = pods.src_cmd, pods.tgt_cmd
    shell(src, "echo 41 > /mnt/data/counter && sync")
    boot_id = shell(src, "cat /proc/sys/kernel/random/boot_id").strip()
    uptime_before = float(shell(src, "cut -d' ' -f1 /proc/uptime"))
    source_qemu = int(Path(pods.source.paths.qemu_pidfile).read_text())
    doc = migrating(pods.doc)

    resp = call(tgt, "SyncMigrationTarget", doc)
    assert (resp.success, resp.message) == (True, "migration target prepared"), resp.message
    assert pods.target.host(Path(pods.source.paths.share_dir) / "migrationproxy").is_dir()
    pods.proxy.start()
    t0 = time.monotonic()
    options = json.dumps({"Bandwidth": "0", "ProgressTimeout": 150,
                          "CompletionTimeoutPerGiB": 150, "UnsafeMigration": False,
                          "AllowAutoConverge": False, "AllowPostCopy": False,
                          "FutureField": {"x": 1}}).encode()
    resp = call(src, "MigrateVirtualMachine", doc, options=options)
    assert (resp.success, resp.message) == (True, f"migration {MIGRATION_UID} started"), \
        resp.message
    assert time.monotonic() - t0 < 5  # asynchronous: answered at once
    # the same uid again while it runs: a no-op success
    again = call(src, "MigrateVirtualMachine", doc, options=options)
    assert again.success, again.message

    # the source: Shutoff/Migrated, its metadata completed and not failed
    done = pods.source_events.wait_domain(
        lambda e: status(e) == ("Shutoff", "Migrated") and migration_meta(e).get(
            "EndTimestamp"), 120, "Shutoff/Migrated with the migration's end")
    meta = migration_meta(done)
    assert meta["UID"] == MIGRATION_UID and meta["Failed"] is False
    assert meta["Mode"] == "PreCopy" and meta["StartTimestamp"] <= meta["EndTimestamp"]
    took = time.monotonic() - t0
    print(f"migration took {took:.1f}s")
    wait_for(lambda: not psutil.pid_exists(source_qemu), 30, what="the source QEMU gone")
    # QEMU's end on the source was reported as the migration, never as a crash
    seen = [status(e) for e in pods.source_events.domains()]
    assert ("Shutoff", "Migrated") in seen and not [
        s for s in seen if s[0] == "Shutoff" and s[1] not in ("Migrated", "Unknown")], seen

    # the target: Running with the agent, the metadata says it arrived
    arrived = pods.target_events.wait_domain(
        lambda e: status(e)[0] == "Running" and migration_meta(e).get("EndTimestamp")
        and agent_state(e) == "connected", 120, "Running on the target with its agent")
    assert migration_meta(arrived)["UID"] == MIGRATION_UID
    # the same guest, still running: same boot, uptime went on, the disk's data came along
    assert shell(tgt, "cat /proc/sys/kernel/random/boot_id").strip() == boot_id
    assert float(shell(tgt, "cut -d' ' -f1 /proc/uptime")) > uptime_before
    assert shell(tgt, "cat /mnt/data/counter").strip() == "41"
    assert call(tgt, "FinalizeVirtualMachineMigration", doc).success
    # the agent works on the target: guest info, freeze and thaw
    info = json.loads(tgt.stub.GetGuestInfo(cmd_pb2.EmptyRequest(), timeout=10)
                      .guestInfoResponse)
    assert info.get("hostname") == "testguest" or info.get("guestAgentVersion"), info
    assert tgt.freeze(60).success
    assert tgt.vmi_call("UnfreezeVirtualMachine").success

    # a finished migration's uid is not run twice
    resp = call(src, "MigrateVirtualMachine", doc, options=options)
    assert not resp.success and resp.message.startswith(
        f"migration job {MIGRATION_UID} already executed"), resp.message

    # virt-handler deletes the source's domain; the source pod ends
    assert src.vmi_call("DeleteVirtualMachine").success
    assert pods.source.wait_exit(timeout=60) == 0, pods.source.tail()
    # the target pod ends normally on SIGTERM, the guest shut down there
    pods.target.proc.signal(signal.SIGTERM)
    assert pods.target.proc.wait_exit(timeout=90) == 0, pods.target.proc.tail()


def test_cancel_keeps_the_guest_on_the_source(pods: Pods) -> None:
    src, tgt = pods.src_cmd, pods.tgt_cmd
    doc = migrating(pods.doc, uid="mig-cancel")
    assert call(tgt, "SyncMigrationTarget", doc).success
    pods.proxy.start()
    # 1 MiB/s: the migration of 256 MiB takes minutes, plenty of time to cancel it
    resp = call(src, "MigrateVirtualMachine", doc,
                options=json.dumps({"Bandwidth": "1Mi"}).encode())
    assert resp.success, resp.message
    pods.source_events.wait_domain(lambda e: migration_meta(e).get("UID") == "mig-cancel",
                                   30, "the migration's start in the metadata")
    # the migration is visible while it runs: its progress in the snapshots, moving
    progressing = pods.source_events.wait_domain(
        lambda e: migration_meta(e).get("LauncherProgress", {}).get("DataProcessedBytes", 0)
        > 2 * 1024 * 1024, 30, "progress figures in the snapshots")
    progress = migration_meta(progressing)["LauncherProgress"]
    assert progress["DataTotalBytes"] >= 256 * 1024 * 1024, progress
    assert 0 < progress["DataRemainingBytes"] < progress["DataTotalBytes"], progress
    resp = call(src, "CancelVirtualMachineMigration", doc)
    assert (resp.success, resp.message) == (True, "aborting migration mig-cancel"), \
        resp.message
    ended = pods.source_events.wait_domain(
        lambda e: migration_meta(e).get("Failed") and migration_meta(e).get("EndTimestamp"),
        60, "the failed migration's metadata")
    meta = migration_meta(ended)
    assert meta["AbortStatus"] == "Succeeded", meta
    assert meta["FailureReason"].startswith("Live migration aborted"), meta
    # the guest keeps running on the source; the incoming QEMU on the target ended, and
    # with it the target pod (as KubeVirt's target launcher: its QEMU is gone)
    assert status(ended)[0] == "Running"
    assert shell(src, "echo still here").strip() == "still here"
    assert pods.target.proc.wait_exit(timeout=90) == 0, pods.target.proc.tail()
    left = [p for p in pods.source.leftovers() if "target-pod" in " ".join(p.cmdline())]
    assert left == []
    # a later migration of the same VMI with a new uid may start again
    assert src.vmi_call("PauseVirtualMachine").success  # (the guest is still ours)
    assert src.vmi_call("UnpauseVirtualMachine").success


def test_signal_target_pod_cleanup_ends_a_prepared_target(pods: Pods) -> None:
    doc = migrating(pods.doc, uid="mig-unused")
    assert call(pods.tgt_cmd, "SyncMigrationTarget", doc).success
    # another pod's name: not us, nothing happens
    other = json.loads(json.dumps(doc))
    other["status"]["migrationState"]["targetPod"] = "virt-launcher-testvm-other"
    resp = call(pods.tgt_cmd, "SignalTargetPodCleanup", other)
    assert (resp.success, resp.message) == (True, ""), resp.message
    assert pods.target.proc.proc is not None and pods.target.proc.proc.poll() is None
    resp = call(pods.tgt_cmd, "SignalTargetPodCleanup", doc)
    assert (resp.success, resp.message) == (True, "target pod cleanup"), resp.message
    assert pods.target.proc.wait_exit(timeout=60) == 0, pods.target.proc.tail()
    # the source never noticed
    assert shell(pods.src_cmd, "echo fine").strip() == "fine"


def start_migration(pods: Pods, uid: str, **options: Any) -> dict[str, Any]:
    doc = migrating(pods.doc, uid=uid)
    assert call(pods.tgt_cmd, "SyncMigrationTarget", doc).success
    pods.proxy.start()
    resp = call(pods.src_cmd, "MigrateVirtualMachine", doc,
                options=json.dumps(options).encode())
    assert resp.success, resp.message
    pods.source_events.wait_domain(lambda e: migration_meta(e).get("UID") == uid, 30,
                                   "the migration's start in the metadata")
    return doc


def failed_on_source(pods: Pods, what: str, timeout: float = 90) -> dict[str, Any]:
    """The failed migration as virt-handler sees it; the guest still runs on the source,
    the target pod ends (its incoming QEMU gone)."""
    ended = pods.source_events.wait_domain(
        lambda e: migration_meta(e).get("Failed") and migration_meta(e).get("EndTimestamp"),
        timeout, what)
    assert status(ended)[0] == "Running", status(ended)
    assert shell(pods.src_cmd, "echo still here").strip() == "still here"
    assert pods.target.proc.wait_exit(timeout=90) == 0, pods.target.proc.tail()
    return migration_meta(ended)


def test_no_progress_for_progress_timeout_aborts(pods: Pods) -> None:
    start_migration(pods, "mig-stuck", Bandwidth="2Mi", ProgressTimeout=3)
    # once the memory is being sent (the disk's copy comes first), the memory stream
    # stops moving; the connection stays open
    wait_for(lambda: any(r.get("memory_iteration") for r in
                         pods.source.logged("migration progress")), 60,
             what="the memory stream under way")
    pods.proxy.hold(49152)
    meta = failed_on_source(pods, "the stuck migration's failure")
    pods.proxy.release()
    assert meta["FailureReason"].startswith("Live migration stuck for "), meta


@pytest.mark.parametrize("post_copy", [True, False])
def test_completion_timeout_aborts_without_workload_disruption(pods: Pods,
                                                               post_copy: bool) -> None:
    # no workload disruption allowed: KubeVirt aborts, post-copy allowed or not; so do we
    start_migration(pods, "mig-slow", Bandwidth="1Mi", CompletionTimeoutPerGiB=3,
                    AllowPostCopy=post_copy, AllowWorkloadDisruption=False)
    meta = failed_on_source(pods, "the slow migration's failure")
    assert meta["FailureReason"].startswith("Live migration is not completed after "), meta
    assert meta["Mode"] == "PreCopy", meta


DIRTY_MEMORY = ("mkdir -p /run/dirty && mount -t tmpfs -o size=64m tmpfs /run/dirty && "
                "(while :; do dd if=/dev/urandom of=/run/dirty/f bs=1M count=48 2>/dev/null;"
                " done) > /dev/null 2>&1 &")


def test_completion_timeout_switches_to_post_copy_when_allowed(pods: Pods) -> None:
    # a guest that dirties memory fast: a busybox loop rewriting a tmpfs file
    shell(pods.src_cmd, DIRTY_MEMORY)
    boot_id = shell(pods.src_cmd, "cat /proc/sys/kernel/random/boot_id").strip()
    start_migration(pods, "mig-post", Bandwidth="2Mi", CompletionTimeoutPerGiB=3,
                    AllowPostCopy=True, AllowWorkloadDisruption=True)
    done = pods.source_events.wait_domain(
        lambda e: status(e) == ("Shutoff", "Migrated") and migration_meta(e).get(
            "EndTimestamp"), 120, "Shutoff/Migrated after post-copy")
    meta = migration_meta(done)
    assert meta["Mode"] == "PostCopy" and meta["Failed"] is False, meta
    pods.target_events.wait_domain(
        lambda e: status(e)[0] == "Running" and migration_meta(e).get("EndTimestamp"),
        60, "Running on the target")
    assert shell(pods.tgt_cmd, "cat /proc/sys/kernel/random/boot_id").strip() == boot_id


def test_completion_timeout_pauses_the_guest_with_workload_disruption_allowed(
        pods: Pods) -> None:
    # The guest dirties its memory faster than pre-copy can catch up at 16 MiB/s (it would
    # need less than 16 MiB/s x 300 ms left to switch over); the first pass over its 256 MiB
    # fits well within the 30 s completion time (< 1 GiB to move: 30 s x 1). Post-copy not
    # allowed, workload disruption allowed: KubeVirt's monitor pauses the guest, and with
    # nothing dirtied any more the migration completes, well before the doubled deadline.
    shell(pods.src_cmd, DIRTY_MEMORY)
    boot_id = shell(pods.src_cmd, "cat /proc/sys/kernel/random/boot_id").strip()
    t0 = time.monotonic()
    start_migration(pods, "mig-pause", Bandwidth="16Mi", CompletionTimeoutPerGiB=30,
                    AllowPostCopy=False, AllowWorkloadDisruption=True)
    done = pods.source_events.wait_domain(
        lambda e: status(e) == ("Shutoff", "Migrated") and migration_meta(e).get(
            "EndTimestamp"), 150, "Shutoff/Migrated after the pause")
    took = time.monotonic() - t0
    meta = migration_meta(done)
    assert meta["Mode"] == "Paused" and meta["Failed"] is False, meta
    assert meta["UID"] == "mig-pause" and not meta.get("AbortStatus"), meta
    logged = pods.source.logged("pausing the guest so the migration completes")
    assert logged, "the monitor never paused the guest"
    print(f"migration took {took:.1f}s, paused at {logged[0].get('elapsed_s')}s")
    # what virt-handler read on the source meanwhile: the domain Paused for the migration
    # with the metadata's Mode Paused (its PausedByMigrationMonitor condition)
    seen = [(status(e), migration_meta(e).get("Mode")) for e in pods.source_events.domains()]
    assert (("Paused", "Migration"), "Paused") in seen, seen
    # the target resumes the guest (libvirt: the migration started without
    # VIR_MIGRATE_PAUSED; KubeVirt's target is not told of the pause either): Running
    arrived = pods.target_events.wait_domain(
        lambda e: status(e)[0] == "Running" and migration_meta(e).get("EndTimestamp"),
        60, "Running on the target")
    print(f"target snapshot: {status(arrived)}, Mode {migration_meta(arrived).get('Mode')}")
    state = pods.target.view.virsh("domstate", "--reason", pods.source.paths.domain)
    assert state.stdout.strip().startswith("running"), (state.stdout, state.stderr)
    print(f"target domstate: {state.stdout.strip()}")
    # the same guest, running there: its dirtying loop still goes on
    assert shell(pods.tgt_cmd, "cat /proc/sys/kernel/random/boot_id").strip() == boot_id
    def uptime_and_mtime() -> list[str]:
        return shell(pods.tgt_cmd, "cut -d' ' -f1 /proc/uptime; stat -c %Y /run/dirty/f"
                     ).split()
    first = uptime_and_mtime()
    later = wait_for(lambda: (now := uptime_and_mtime())[1] != first[1] and now, 30,
                     interval=0.5, what="the guest's loop rewriting its file on the target")
    assert float(later[0]) > float(first[0]), (first, later)
    status_after = pods.target.view.virsh("domstate", pods.source.paths.domain)
    assert status_after.stdout.strip() == "running", status_after.stdout
    assert pods.target_events.wait_last(lambda e: status(e)[0] == "Running", 10,
                                        "the target's newest snapshot Running")


def test_finalize_sets_the_guest_clock_to_the_hosts(pods: Pods) -> None:
    doc = start_migration(pods, "mig-clock")
    pods.source_events.wait_domain(
        lambda e: status(e) == ("Shutoff", "Migrated") and migration_meta(e).get(
            "EndTimestamp"), 120, "Shutoff/Migrated")
    pods.target_events.wait_domain(
        lambda e: status(e)[0] == "Running" and migration_meta(e).get("EndTimestamp")
        and agent_state(e) == "connected", 120, "Running on the target with its agent")
    tgt = pods.tgt_cmd
    # the guest's clock an hour behind (as after a long switch-over, much exaggerated)
    shell(tgt, f"date -s @{int(time.time()) - 3600} > /dev/null")
    skew = int(shell(tgt, "date +%s")) - time.time()
    assert -3700 < skew < -3500, skew
    t0 = time.monotonic()
    resp = call(tgt, "FinalizeVirtualMachineMigration", doc)
    assert resp.success, resp.message
    assert time.monotonic() - t0 < 5  # the sync does not hold up the rpc

    def in_sync() -> tuple[float] | None:  # (a tuple: an offset of 0.0 is a success)
        off = int(shell(tgt, "date +%s")) - time.time()
        return (off,) if abs(off) < 3 else None
    (off,) = wait_for(in_sync, 30, interval=0.5, what="the guest clock at the host's time")
    synced = pods.target.proc.logged("guest clock synchronized after the migration")
    assert synced, "no clock sync logged"  # libvirt's success: qemu-ga ran /sbin/hwclock -w
    print(f"guest clock synced in {time.monotonic() - t0:.1f}s, {off:+.1f}s off the host "
          f"(whole seconds in the guest), attempts {synced[0].get('attempts')}")


def test_the_proxy_going_away_fails_the_migration_and_the_guest_stays(pods: Pods) -> None:
    start_migration(pods, "mig-cut", Bandwidth="2Mi")
    time.sleep(2)
    pods.proxy.stop()  # virt-handler's proxy (or the network) gone mid-migration
    meta = failed_on_source(pods, "the cut migration's failure")
    assert meta["FailureReason"], meta


def test_sigterm_on_the_source_mid_migration_aborts_and_shuts_down_there(
        pods: Pods) -> None:
    start_migration(pods, "mig-term", Bandwidth="1Mi")
    time.sleep(2)
    pods.source.signal(signal.SIGTERM)
    assert pods.source.wait_exit(timeout=120) == 0, pods.source.tail()
    assert pods.source.logged("shutting down during a migration: aborting it first")
    final = pods.source_events.wait_domain(
        lambda e: status(e) == ("Shutoff", "Shutdown"), 30, "shut down on the source")
    assert migration_meta(final).get("Failed") is True
    assert pods.target.proc.wait_exit(timeout=90) == 0, pods.target.proc.tail()


def target_processes(pods: Pods) -> list[psutil.Process]:
    assert pods.target.proc.proc is not None
    return psutil.Process(pods.target.proc.proc.pid).children(recursive=True)


def all_gone(procs: list[psutil.Process]) -> bool:
    return not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("victim", ["virt-launcher", "libvirtd"])
def test_the_target_dying_mid_migration_leaves_the_guest_on_the_source(
        pods: Pods, victim: str) -> None:
    start_migration(pods, f"mig-kill-{victim}", Bandwidth="2Mi")
    wait_for(lambda: any(r.get("memory_iteration") for r in
                         pods.source.logged("migration progress")), 60,
             what="the memory stream under way")
    procs = target_processes(pods)
    chosen = [p for p in procs if p.name() == victim or (
        victim == "virt-launcher" and "virt-launcher" in " ".join(p.cmdline())
        and "monitor" not in " ".join(p.cmdline()))]
    assert chosen, [(p.name(), p.cmdline()) for p in procs]
    chosen[0].kill()
    ended = pods.source_events.wait_domain(
        lambda e: migration_meta(e).get("Failed") and migration_meta(e).get("EndTimestamp"),
        120, "the failed migration")
    assert status(ended)[0] == "Running", status(ended)
    assert shell(pods.src_cmd, "echo still here").strip() == "still here"
    # nothing of the target pod stays: its monitor cleans up after a killed launcher; a
    # restarted daemon kills the half-arrived QEMU, and the target launcher then ends
    if victim == "libvirtd":
        wait_for(lambda: pods.target.view.virsh("list", "--name").stdout.strip() == "",
                 60, what="no domain left on the target")
    pods.target.proc.wait_exit(timeout=90)
    wait_for(lambda: all_gone(procs), 30, what="the target pod's processes gone")


def test_migration_carries_a_hotplugged_volume(pods: Pods) -> None:
    """A hot-plugged PVC is shared storage (KubeVirt's classifyVolumesForMigration):
    virt-handler mounts the same volume into the target pod; the block migration copies
    the containerDisk overlay, not the hotplug disk, and the target QEMU uses the very same
    file."""
    src, tgt = pods.src_cmd, pods.tgt_cmd
    marker, written = "PVL-SHARED-HOTPLUG", "PVL-WRITTEN-ON-TARGET"
    hp_dir = Path(pods.source.paths.hotplug_disk_dir)  # the pod path, the host's for the source
    hp_dir.mkdir(parents=True, exist_ok=True)
    disk = image(hp_dir, "hp1", marker)
    doc = hotplug_volume(pods.doc, "hp1")
    resp = call(src, "SyncVirtualMachine", doc)
    assert resp.success and "attached disk sda (volume hp1)" in resp.message, resp.message
    wait_guest(src, block_devices, lambda b: "sda" in b, "sda in the guest on the source")
    assert head(src, "sda", len(marker)) == marker
    boot_id = shell(src, "cat /proc/sys/kernel/random/boot_id").strip()

    # shared storage: the same file (one inode) in the target pod's hotplug dir
    shared = pods.target.host(hp_dir) / disk.name
    shared.parent.mkdir(parents=True, exist_ok=True)
    os.link(disk, shared)
    assert shared.stat().st_ino == disk.stat().st_ino

    # virt-handler's VMI keeps the volume status (the hotplug volume MountedToPod)
    mig = migrating(doc, uid="mig-hotplug")
    mig["status"]["volumeStatus"] = doc["status"]["volumeStatus"]
    resp = call(tgt, "SyncMigrationTarget", mig)
    assert (resp.success, resp.message) == (True, "migration target prepared"), resp.message
    pods.proxy.start()
    t0 = time.monotonic()
    # libvirt calls a file disk it does not copy safe only on a filesystem it knows to be
    # shared (NFS, CephFS, ... as an RWX PVC is); here the "PVC" is a hard link on the
    # host's ext4, so the migration is made as with KubeVirt's unsafeMigrationOverride
    # (UnsafeMigration: VIR_MIGRATE_UNSAFE); without it: VIR_ERR_MIGRATE_UNSAFE
    resp = call(src, "MigrateVirtualMachine", mig, options=json.dumps(
        {"Bandwidth": "0", "ProgressTimeout": 150, "CompletionTimeoutPerGiB": 150,
         "UnsafeMigration": True}).encode())
    assert (resp.success, resp.message) == (True, "migration mig-hotplug started"), \
        resp.message
    done = pods.source_events.wait_domain(
        lambda e: migration_meta(e).get("EndTimestamp"), 150, "the migration's end")
    meta = migration_meta(done)
    assert meta["UID"] == "mig-hotplug" and meta["Failed"] is False, meta
    assert status(done) == ("Shutoff", "Migrated"), status(done)
    print(f"migration took {time.monotonic() - t0:.1f}s")
    # the block migration copied the overlay only, not the shared hotplug disk
    started = pods.source.logged("migrating")
    assert len(started) == 1, started
    assert "vda" in started[0]["disks"] and "sda" not in started[0]["disks"], started[0]
    seen = [status(e) for e in pods.source_events.domains()]
    assert not [s for s in seen if s[0] == "Shutoff" and s[1] not in ("Migrated", "Unknown")
                ], seen
    assert pods.source_events.wait_last(lambda e: status(e) == ("Shutoff", "Migrated"), 10,
                                        "the source's newest snapshot Shutoff/Migrated")

    pods.target_events.wait_domain(
        lambda e: status(e)[0] == "Running" and migration_meta(e).get("EndTimestamp")
        and agent_state(e) == "connected", 120, "Running on the target with its agent")
    assert shell(tgt, "cat /proc/sys/kernel/random/boot_id").strip() == boot_id
    assert domain_disks(tgt)["sda"] == str(disk)  # the pod path: the shared file there
    # the guest still has sda and reads the marker from the disk, not its page cache
    assert "sda" in block_devices(tgt)
    shell(tgt, "sync && echo 3 > /proc/sys/vm/drop_caches")
    assert head(tgt, "sda", len(marker)) == marker
    # a write on the target lands in the shared file: the target QEMU uses it, not a copy
    shell(tgt, f"printf {written} | dd of=/dev/sda bs=4096 seek=1 conv=fsync 2>/dev/null")
    wait_for(lambda: disk.read_bytes()[4096:4096 + len(written)] == written.encode(), 30,
             interval=0.5, what="the target's write in the shared file")
    assert disk.read_bytes()[:len(marker)] == marker.encode()
    assert call(tgt, "FinalizeVirtualMachineMigration", mig).success

    # virt-handler deletes the source's domain; both pods end
    assert src.vmi_call("DeleteVirtualMachine").success
    assert pods.source.wait_exit(timeout=60) == 0, pods.source.tail()
    pods.target.proc.signal(signal.SIGTERM)
    assert pods.target.proc.wait_exit(timeout=90) == 0, pods.target.proc.tail()
    pods.source_events.stop()
    pods.target_events.stop()
    # (both pods' processes name the same root; the target's host view is its own)
    wait_for(lambda: not pods.source.leftovers() and not pods.target.view.leftovers(), 30,
             what="nothing of either pod left")
