"""MigrateVirtualMachine's options: the JSON of KubeVirt's cmdclient.MigrationOptions (Go
field names, virt-handler's encoding), and the libvirt flags and parameters KubeVirt
derives from them and the VMI (live-migration-source.go generateMigrationFlags,
generateMigrationParams, getDiskTargetsForMigration). Pure: tests/unit/test_migration.py."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import libvirt

from launcher.converter.spec import parse_quantity

DEFAULT_PROGRESS_TIMEOUT_S = 150  # KubeVirt's MigrationProgressTimeout
DEFAULT_COMPLETION_TIMEOUT_PER_GIB_S = 150  # KubeVirt's MigrationCompletionTimeoutPerGiB
MIGRATION_PORT = 49152  # KubeVirt's LibvirtDirectMigrationPort: the memory stream
BLOCK_MIGRATION_PORT = 49153  # LibvirtBlockMigrationPort: the disks' stream
MIB = 1024 * 1024


class MigrationOptionsError(ValueError):
    """Options that cannot be used; the message names the field."""


@dataclass(frozen=True)
class MigrationOptions:
    bandwidth_mib_s: int = 0  # 0: unlimited
    progress_timeout_s: int = DEFAULT_PROGRESS_TIMEOUT_S
    completion_timeout_per_gib_s: int = DEFAULT_COMPLETION_TIMEOUT_PER_GIB_S
    max_downtime_ms: int = 0
    unsafe: bool = False
    auto_converge: bool = False
    post_copy: bool = False
    parallel_threads: int | None = None
    workload_disruption: bool = False
    compression: str | None = None


def _int(doc: dict[str, Any], key: str, default: int) -> int:
    value = doc.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MigrationOptionsError(f"options.{key}: expected a non-negative integer, got "
                                    f"{json.dumps(value)}")
    return value


def _bool(doc: dict[str, Any], key: str) -> bool:
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise MigrationOptionsError(f"options.{key}: expected true or false, got "
                                    f"{json.dumps(value)}")
    return value


def parse_options(raw: bytes) -> MigrationOptions:
    """Unknown fields are ignored (a newer virt-handler); an empty body means defaults."""
    if not raw.strip():
        return MigrationOptions()
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise MigrationOptionsError(f"options: not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MigrationOptionsError("options: expected a JSON object")
    bandwidth = doc.get("Bandwidth")
    mib = 0
    if bandwidth not in (None, "", 0):
        try:
            amount = parse_quantity(str(bandwidth))
        except ValueError as exc:
            raise MigrationOptionsError(f"options.Bandwidth: {exc}") from None
        # KubeVirt's vcpu.QuantityToMebiByte: to the nearest MiB, at least 1
        mib = 0 if amount <= 0 else 1 if amount < MIB else int(amount / Decimal(MIB)
                                                              + Decimal("0.5"))
    threads = doc.get("ParallelMigrationThreads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 0):
        raise MigrationOptionsError("options.ParallelMigrationThreads: expected a "
                                    "non-negative integer")
    compression = doc.get("Compression")
    if compression is not None and not isinstance(compression, str):
        raise MigrationOptionsError("options.Compression: expected a string")
    return MigrationOptions(
        bandwidth_mib_s=mib,
        progress_timeout_s=_int(doc, "ProgressTimeout", DEFAULT_PROGRESS_TIMEOUT_S),
        completion_timeout_per_gib_s=_int(doc, "CompletionTimeoutPerGiB",
                                          DEFAULT_COMPLETION_TIMEOUT_PER_GIB_S),
        max_downtime_ms=_int(doc, "MaxDowntimeMs", 0),
        unsafe=_bool(doc, "UnsafeMigration"),
        auto_converge=_bool(doc, "AllowAutoConverge"),
        post_copy=_bool(doc, "AllowPostCopy"),
        parallel_threads=threads,
        workload_disruption=_bool(doc, "AllowWorkloadDisruption"),
        compression=compression or None)


def migration_state(vmi: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The VMI's status.migrationState; None when absent or not an object (a malformed VMI
    is answered, never a crash)."""
    status = vmi.get("status")
    state = status.get("migrationState") if isinstance(status, dict) else None
    return state if isinstance(state, dict) else None


def flags(opts: MigrationOptions, *, block: bool, paused: bool) -> int:
    f: int = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
              | libvirt.VIR_MIGRATE_PERSIST_DEST)
    if block:
        f |= libvirt.VIR_MIGRATE_NON_SHARED_INC
    if opts.unsafe:
        f |= libvirt.VIR_MIGRATE_UNSAFE
    if opts.auto_converge:
        f |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if opts.post_copy:
        f |= libvirt.VIR_MIGRATE_POSTCOPY
    if paused:
        f |= libvirt.VIR_MIGRATE_PAUSED
    if opts.parallel_threads:
        f |= libvirt.VIR_MIGRATE_PARALLEL
    if opts.compression:
        f |= libvirt.VIR_MIGRATE_COMPRESSED
    return f


def proxy_socket(share_dir: str, key: str) -> str:
    """virt-handler's migration proxy socket in the pod (migrationproxy.SourceUnixFile)."""
    return os.path.join(share_dir, "migrationproxy", f"{key}-source.sock")


def destination_uri(share_dir: str, vmi_uid: str, nonroot: bool) -> str:
    mode = "session" if nonroot else "system"
    return f"qemu+unix:///{mode}?socket={proxy_socket(share_dir, vmi_uid)}"


def disks_to_copy(xml: str, shared: frozenset[str] = frozenset(),
                  hotplug_dir: str = "") -> list[str]:
    """getDiskTargetsForMigration: the targets of the file/block disks that are not
    CD-ROMs, not read-only (a generated ISO is rebuilt on the target) and not on a shared
    volume (by alias ua-<volume>). Hotplugged volumes (sources in `hotplug_dir`) are
    PVCs, which KubeVirt treats as shared (classifyVolumesForMigration): virt-handler
    mounts them into the target pod, so they are not copied."""
    out = []
    for disk in ET.fromstring(xml).iterfind("devices/disk"):
        if disk.get("device") == "cdrom" or disk.find("readonly") is not None:
            continue
        source = disk.find("source")
        path = (source.get("file") or source.get("dev") or "") if source is not None else ""
        if hotplug_dir and path.startswith(hotplug_dir.rstrip("/") + "/"):
            continue
        if disk.get("type") not in ("file", "block"):
            continue
        alias = disk.find("alias")
        volume = (alias.get("name") or "").removeprefix("ua-") if alias is not None else ""
        if volume in shared:
            continue
        target = disk.find("target")
        if target is not None and target.get("dev"):
            out.append(str(target.get("dev")))
    return out


def params(*, xml: str, domain: str, share_dir: str, vmi_uid: str, target_uid: str | None,
           opts: MigrationOptions, copy_disks: list[str]) -> dict[str, Any]:
    """virDomainMigrateToURI3's parameters."""
    if target_uid:
        # KubeVirt replaces every occurrence of the VMI uid (metadata, paths) with the
        # target VMI's uid (a decentralized migration's second VMI object).
        xml = xml.replace(vmi_uid, target_uid)
    out: dict[str, Any] = {
        libvirt.VIR_MIGRATE_PARAM_URI:
            f"unix://{proxy_socket(share_dir, f'{vmi_uid}-{MIGRATION_PORT}')}",
        libvirt.VIR_MIGRATE_PARAM_DEST_XML: xml,
        libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: xml,
        libvirt.VIR_MIGRATE_PARAM_DEST_NAME: domain,
    }
    if opts.bandwidth_mib_s > 0:
        out[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = opts.bandwidth_mib_s
    if opts.parallel_threads:
        out[libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] = opts.parallel_threads
    if opts.compression:
        out[libvirt.VIR_MIGRATE_PARAM_COMPRESSION] = opts.compression
    if copy_disks:
        out[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = copy_disks
        out[libvirt.VIR_MIGRATE_PARAM_DISKS_URI] = \
            f"unix://{proxy_socket(share_dir, f'{vmi_uid}-{BLOCK_MIGRATION_PORT}')}"
    return out
