#!/usr/bin/env python3
"""Live migration figures: one JSON object on stdout (progress on stderr).

Two VM pods on this machine as the e2e tests make them (tests/support/migration.py: the
target pod in its own mount namespace with the same paths), each with its own launcher,
libvirtd and virtlogd, virt-handler's proxy stood in for; the 256 MiB test guest under
TCG booted to its agent on the source, then MigrateVirtualMachine with virt-handler's
default options (block migration of its containerDisk overlay):

- migration_total_s: the rpc -> the source's Shutoff/Migrated snapshot with the
  migration's EndTimestamp (what virt-handler waits for);
- migration_downtime_ms: libvirt's completed job statistics (`downtime`: the guest
  stopped for the switch-over), from the source launcher's "migration completed" line;
- migration_postcopy_total_s: the same with a guest dirtying memory in a loop, 2 MiB/s
  bandwidth and CompletionTimeoutPerGiB 3, AllowPostCopy + AllowWorkloadDisruption: post-copy and
  its end.

Targets (the issue): downtime <= 300 ms, total <= 10 s. Exits 0 when it ran.
Run as root from the repository root: python -m hack.bench_migration [--runs N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from launcher._proto.kubevirt.cmd.v1 import cmd_pb2
from tests.support.guest import Cmd, Receiver, status
from tests.support.guestvm import stage
from tests.support.harness import Instance, instance, wait_for
from tests.support.migration import MigrationProxy, migrating, migration_meta, target_pod
from tests.support.standalone import EMULATION, guest, sync, wait_agent

TARGET_POD = "virt-launcher-testvm-target"


def log(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


@contextlib.contextmanager
def two_pods() -> Iterator[tuple[Instance, Receiver, Any, Receiver, dict[str, Any]]]:
    with instance(False, lambda: False, extra_args=EMULATION) as source:
        source_events = Receiver(source)
        source_events.start()
        try:
            doc = guest(source)
            source.start()
            source.wait_running(timeout=60)
            resp = sync(source, doc)
            if not resp.success:
                raise RuntimeError(f"sync failed: {resp.message}")
            wait_agent(source_events)
            with target_pod(source, EMULATION) as target:
                stage(target.view.paths.container_disk_dir)
                target_events = Receiver(target.view)
                target_events.start()
                try:
                    target.proc.start(env={"POD_NAME": TARGET_POD})
                    target.proc.wait_running(timeout=60)
                    yield source, source_events, target, target_events, doc
                finally:
                    target_events.stop()
        finally:
            source_events.stop()


def one_run(post_copy: bool) -> dict[str, float]:
    with two_pods() as (source, source_events, target, _target_events, doc):
        src, tgt = Cmd.of(source), Cmd.of(target.view)
        try:
            uid = "bench-post" if post_copy else "bench"
            options: dict[str, Any] = {}
            if post_copy:
                src.exec("/bin/sh", "-c", "mkdir -p /run/d && mount -t tmpfs -o size=64m "
                         "tmpfs /run/d && (while :; do dd if=/dev/urandom of=/run/d/f "
                         "bs=1M count=48 2>/dev/null; done) >/dev/null 2>&1 &")
                options = {"Bandwidth": "2Mi", "CompletionTimeoutPerGiB": 3,
                           "AllowPostCopy": True, "AllowWorkloadDisruption": True}
            vmi = migrating(doc, uid, TARGET_POD)
            raw = cmd_pb2.VMI(vmiJson=json.dumps(vmi).encode())
            resp = tgt.stub.SyncMigrationTarget(cmd_pb2.VMIRequest(vmi=raw), timeout=120)
            if not resp.success:
                raise RuntimeError(f"SyncMigrationTarget: {resp.message}")
            proxy = MigrationProxy(source_share=Path(source.paths.share_dir),
                                   target_share=target.host(source.paths.share_dir),
                                   target_libvirt_socket=Path(target.view.paths.daemon_socket),
                                   uid=f"uid-{source.root.name}")
            proxy.start()
            t0 = time.monotonic()
            resp = src.stub.MigrateVirtualMachine(cmd_pb2.MigrationRequest(
                vmi=raw, options=json.dumps(options).encode()), timeout=60)
            if not resp.success:
                raise RuntimeError(f"MigrateVirtualMachine: {resp.message}")
            source_events.wait_domain(
                lambda e: status(e) == ("Shutoff", "Migrated")
                and bool(migration_meta(e).get("EndTimestamp")), 180, "Shutoff/Migrated")
            total = time.monotonic() - t0
            proxy.stop()
            done = wait_for(lambda: source.logged("migration completed"), 30,
                            what="the source's 'migration completed' line")
            downtime = float(done[-1].get("downtime_ms") or 0) if done else float("nan")
            mode = done[-1].get("mode") if done else None
            log(f"  migration {'post-copy ' if post_copy else ''}took {total:.2f}s, "
                f"downtime {downtime} ms, mode {mode}")
            if post_copy and mode != "PostCopy":
                raise RuntimeError(f"expected a post-copy switch, mode {mode}")
            return ({"migration_postcopy_total_s": total} if post_copy else
                    {"migration_total_s": total, "migration_downtime_ms": downtime})
        finally:
            src.channel.close()
            tgt.channel.close()


def run(runs: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    for post_copy in (False, True):
        for i in range(runs if not post_copy else max(1, runs // 2)):
            log(f"migration run {i + 1} ({'post-copy' if post_copy else 'default'})")
            for key, value in one_run(post_copy).items():
                samples.setdefault(key, []).append(value)
    return samples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    ns = p.parse_args(argv)
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        samples = run(ns.runs)
    result = {k: round(statistics.median(v), 3) for k, v in samples.items()}
    result["samples"] = samples  # type: ignore[assignment]
    out.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
