"""Live migration's pure parts: the options JSON as virt-handler sends it, KubeVirt's flags
and parameters, the disks a block migration copies, the migration metadata in the domain
XML and in the notify JSON, and when a target counts the domain as arrived."""

from __future__ import annotations

import asyncio
import json
import math
import os
import stat
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt
import pytest

from launcher.notify.domain_json import spec_from_xml
from launcher.paths import Paths
from launcher.vm import migration_meta as mm
from launcher.vm import migration_options as mo
from launcher.vm import migration_target
from launcher.vm.migration_source import MigrationSource, _Running
from launcher.vm.migration_target import MigrationTarget, arrived


def test_options_from_virt_handlers_json() -> None:
    raw = json.dumps({"Bandwidth": "64Mi", "ProgressTimeout": 30,
                      "CompletionTimeoutPerGiB": 20, "MaxDowntimeMs": 300,
                      "UnsafeMigration": True, "AllowAutoConverge": True,
                      "AllowPostCopy": True, "ParallelMigrationThreads": 4,
                      "AllowWorkloadDisruption": True, "Compression": "zstd",
                      "StallDetectorOptions": None, "DowntimeTuning": {"x": 1},
                      "SomethingNew": [1, 2]}).encode()
    o = mo.parse_options(raw)
    assert o == mo.MigrationOptions(bandwidth_mib_s=64, progress_timeout_s=30,
                                    completion_timeout_per_gib_s=20, max_downtime_ms=300,
                                    unsafe=True, auto_converge=True, post_copy=True,
                                    parallel_threads=4, workload_disruption=True,
                                    compression="zstd")
    assert mo.parse_options(b"") == mo.MigrationOptions()
    assert mo.parse_options(b'{"Bandwidth": "0"}').bandwidth_mib_s == 0
    # KubeVirt's rounding: to the nearest MiB, at least 1
    assert mo.parse_options(b'{"Bandwidth": "1500Ki"}').bandwidth_mib_s == 1
    assert mo.parse_options(b'{"Bandwidth": "1600Ki"}').bandwidth_mib_s == 2
    assert mo.parse_options(b'{"Bandwidth": "100Ki"}').bandwidth_mib_s == 1


@pytest.mark.parametrize(("raw", "message"), [
    (b"{", "options: not valid JSON"),
    (b"[]", "options: expected a JSON object"),
    (b'{"ProgressTimeout": "10"}', 'options.ProgressTimeout: expected a non-negative integer, '
                                   'got "10"'),
    (b'{"AllowPostCopy": 1}', "options.AllowPostCopy: expected true or false, got 1"),
    (b'{"Bandwidth": "lots"}', "options.Bandwidth: "),
])
def test_bad_options_name_the_field(raw: bytes, message: str) -> None:
    with pytest.raises(mo.MigrationOptionsError) as err:
        mo.parse_options(raw)
    assert str(err.value).startswith(message), str(err.value)


def test_flags_as_kubevirt_derives_them() -> None:
    base = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
            | libvirt.VIR_MIGRATE_PERSIST_DEST)
    assert mo.flags(mo.MigrationOptions(), block=False, paused=False) == base
    assert mo.flags(mo.MigrationOptions(), block=True, paused=True) == (
        base | libvirt.VIR_MIGRATE_NON_SHARED_INC | libvirt.VIR_MIGRATE_PAUSED)
    every = mo.MigrationOptions(unsafe=True, auto_converge=True, post_copy=True,
                                parallel_threads=2, compression="zlib")
    assert mo.flags(every, block=False, paused=False) == (
        base | libvirt.VIR_MIGRATE_UNSAFE | libvirt.VIR_MIGRATE_AUTO_CONVERGE
        | libvirt.VIR_MIGRATE_POSTCOPY | libvirt.VIR_MIGRATE_PARALLEL
        | libvirt.VIR_MIGRATE_COMPRESSED)


DOMAIN = """<domain type='qemu'><name>ns_vm</name>
  <metadata><kubevirt:kubevirt xmlns:kubevirt='http://kubevirt.io'><kubevirt:uid>u-1</kubevirt:uid>
  </kubevirt:kubevirt></metadata>
  <devices>
    <disk type='file' device='disk'><source file='/e/disk-data/datadisk/disk.qcow2'/>
      <target dev='vda'/><alias name='ua-datadisk'/></disk>
    <disk type='file' device='disk'><source file='/e/noCloud.iso'/><target dev='vdb'/>
      <readonly/><alias name='ua-cloudinit'/></disk>
    <disk type='file' device='cdrom'><target dev='sda'/><alias name='ua-cd'/></disk>
    <disk type='network' device='disk'><target dev='vdc'/><alias name='ua-net'/></disk>
    <disk type='block' device='disk'><source dev='/dev/pvc'/><target dev='vdd'/>
      <alias name='ua-shared'/></disk>
  </devices></domain>"""


def test_disks_to_copy_and_params() -> None:
    assert mo.disks_to_copy(DOMAIN) == ["vda", "vdd"]
    assert mo.disks_to_copy(DOMAIN, frozenset({"shared"})) == ["vda"]
    hotplugged = DOMAIN.replace(
        "</devices>", "<disk type='file' device='disk'><source file='/var/run/kubevirt/"
        "hotplug-disks/hp.img'/><target dev='sdb' bus='scsi'/><alias name='ua-hp'/></disk>"
        "</devices>")
    assert mo.disks_to_copy(hotplugged) == ["vda", "vdd", "sdb"]
    # Hotplugged PVCs are shared, as KubeVirt classifies them: virt-handler mounts them on
    # the target.
    assert mo.disks_to_copy(hotplugged, hotplug_dir="/var/run/kubevirt/hotplug-disks") == [
        "vda", "vdd"]
    params = mo.params(xml=DOMAIN, domain="ns_vm", share_dir="/var/run/kubevirt",
                       vmi_uid="u-1", target_uid="u-2",
                       opts=mo.MigrationOptions(bandwidth_mib_s=8), copy_disks=["vda"])
    assert params[libvirt.VIR_MIGRATE_PARAM_URI] == \
        "unix:///var/run/kubevirt/migrationproxy/u-1-49152-source.sock"
    assert params[libvirt.VIR_MIGRATE_PARAM_DISKS_URI] == \
        "unix:///var/run/kubevirt/migrationproxy/u-1-49153-source.sock"
    assert params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] == ["vda"]
    assert params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] == 8
    assert params[libvirt.VIR_MIGRATE_PARAM_DEST_NAME] == "ns_vm"
    # the target VMI's uid replaces ours everywhere in the XML
    assert "u-2" in params[libvirt.VIR_MIGRATE_PARAM_DEST_XML]
    assert "u-1" not in params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML]
    plain = mo.params(xml=DOMAIN, domain="ns_vm", share_dir="/s", vmi_uid="u-1",
                      target_uid=None, opts=mo.MigrationOptions(), copy_disks=[])
    assert libvirt.VIR_MIGRATE_PARAM_BANDWIDTH not in plain
    assert libvirt.VIR_MIGRATE_PARAM_DISKS_URI not in plain
    assert mo.destination_uri("/s", "u-1", nonroot=False) == \
        "qemu+unix:///system?socket=/s/migrationproxy/u-1-source.sock"
    assert mo.destination_uri("/s", "u-1", nonroot=True) == \
        "qemu+unix:///session?socket=/s/migrationproxy/u-1-source.sock"


def test_migration_metadata_in_the_xml_and_the_notify_json() -> None:
    meta = mm.MigrationMeta(uid="m-1", start_timestamp="2026-12-02T10:00:00Z",
                            end_timestamp="2026-12-02T10:00:07Z", failed=True,
                            failure_reason="stuck", abort_status="Succeeded")
    text = mm.patched(DOMAIN, meta)
    # the uid stays; the migration is added inside the same <kubevirt> element
    kv = ET.fromstring(text)
    assert kv.findtext("{http://kubevirt.io}uid") == "u-1"
    domain = DOMAIN.replace("</kubevirt:kubevirt>",
                            ET.tostring(mm.to_element(meta), encoding="unicode")
                            + "</kubevirt:kubevirt>")
    assert mm.read(domain) == meta
    assert spec_from_xml(domain)["Metadata"]["KubeVirt"]["Migration"] == {
        "UID": "m-1", "StartTimestamp": "2026-12-02T10:00:00Z",
        "EndTimestamp": "2026-12-02T10:00:07Z", "Failed": True, "FailureReason": "stuck",
        "AbortStatus": "Succeeded", "Mode": "PreCopy"}
    running = mm.MigrationMeta(uid="m-2", start_timestamp="2026-12-02T10:00:00Z")
    domain = DOMAIN.replace("</kubevirt:kubevirt>",
                            ET.tostring(mm.to_element(running), encoding="unicode")
                            + "</kubevirt:kubevirt>")
    # a running migration: no end, Failed false (a Go bool is always there)
    assert spec_from_xml(domain)["Metadata"]["KubeVirt"]["Migration"] == {
        "UID": "m-2", "StartTimestamp": "2026-12-02T10:00:00Z", "Failed": False,
        "Mode": "PreCopy"}
    assert not mm.read(domain).ended  # type: ignore[union-attr]


@pytest.mark.parametrize(("state", "expected"), [
    (None, False),
    ((libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION), False),
    ((libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY), False),
    ((libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATED), True),
    ((libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER), True),
    ((libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_FAILED), False),
])
def test_when_the_target_has_the_domain(state: tuple[int, int] | None, expected: bool) -> None:
    assert arrived(state) is expected


# --- KubeVirt's legacy convergence at the acceptable completion time -----------------------
class _Dom:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def migrateStartPostCopy(self, flags: int) -> None:
        self.calls.append("post-copy")

    def suspend(self) -> None:
        self.calls.append("suspend")

    def abortJob(self) -> None:
        self.calls.append("abort")


class _Access:
    def __init__(self, dom: _Dom) -> None:
        self.dom = dom

    async def call(self, fn: Any) -> Any:
        return fn(self.dom)


class _Relay:
    migration_metadata: Any = None

    def resync(self) -> None:
        pass


@pytest.mark.parametrize(("post_copy", "disruption", "calls", "mode", "next_deadline"), [
    (True, True, ["post-copy"], "PostCopy", math.inf),
    (False, True, ["suspend"], "Paused", 20.0),  # the deadline doubled
    (True, False, ["abort"], "PreCopy", math.inf),  # KubeVirt: no disruption -> abort
    (False, False, ["abort"], "PreCopy", math.inf),
])
def test_convergence_follows_kubevirts_rule(post_copy: bool, disruption: bool,
                                            calls: list[str], mode: str,
                                            next_deadline: float) -> None:
    dom = _Dom()
    source = MigrationSource(access=_Access(dom), relay=_Relay(),  # type: ignore[arg-type]
                             paths=None, nonroot=False, domain="ns_vm")  # type: ignore[arg-type]
    run = _Running("m", None, mm.MigrationMeta(uid="m"))  # type: ignore[arg-type]
    opts = mo.MigrationOptions(post_copy=post_copy, workload_disruption=disruption)

    async def scenario() -> None:
        got = await source._converge(run, opts, 11, 10.0)
        assert (dom.calls, run.meta.mode, got) == (calls, mode, next_deadline)
        if mode == "Paused":
            # paused and still not done at the doubled deadline: aborted then
            assert await source._converge(run, opts, 21, got) == math.inf
            assert dom.calls == ["suspend", "abort"]
        if mode == "PostCopy":  # never aborted in post-copy
            assert await source._converge(run, opts, 99, got) == math.inf
            assert dom.calls == ["post-copy"]

    asyncio.run(scenario())


# --- the target: migrationproxy/, FinalizeVirtualMachineMigration's guest clock -----------
def _libvirt_error(code: int) -> libvirt.libvirtError:
    exc = libvirt.libvirtError("setTime failed")
    exc.err = (code, 0, f"error {code}", 0, "", "", "", 0, 0)
    return exc


class _ClockDom:
    """Fails setTime with `errors` in turn, then succeeds; records the times it was given."""

    def __init__(self, errors: list[int]) -> None:
        self.errors = list(errors)
        self.times: list[tuple[dict[str, int], int]] = []

    def setTime(self, time: dict[str, int], flags: int) -> int:
        self.times.append((time, flags))
        if self.errors:
            raise _libvirt_error(self.errors.pop(0))
        return 0

    def state(self) -> tuple[int, int]:
        return (libvirt.VIR_DOMAIN_SHUTOFF, 0)


class _TargetAccess(_Access):
    connected = True

    async def state(self) -> tuple[int, int] | None:
        return None  # nothing arrived (the target monitor keeps waiting)


class _Syncer:
    async def prepare_target(self, vmi: Any, options: Any) -> None:
        pass


def _target(dom: Any, share_dir: str = "/nonexistent", nonroot: bool = False
            ) -> MigrationTarget:
    paths = Paths(root="/", nonroot=nonroot, daemon="virtqemud", domain="ns_vm", uid="u-1",
                  share_dir=share_dir, ephemeral_disk_dir="", container_disk_dir="",
                  hotplug_disk_dir="")
    target = MigrationTarget(access=_TargetAccess(dom), relay=_Relay(),  # type: ignore[arg-type]
                             paths=paths, syncer=_Syncer(),  # type: ignore[arg-type]
                             domain="ns_vm", environ={})
    target.now = lambda: 1_700_000_000.25
    return target


@pytest.fixture
def fast_clock_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migration_target, "CLOCK_SYNC_INTERVAL_S", 0.01)
    monkeypatch.setattr(migration_target, "CLOCK_SYNC_TIMEOUT_S", 0.2)


@pytest.mark.parametrize(("errors", "synced", "tries"), [
    ([], True, 1),
    # the agent not there yet, then a failed hwclock: retried each interval until it works
    ([libvirt.VIR_ERR_AGENT_UNRESPONSIVE, libvirt.VIR_ERR_INTERNAL_ERROR], True, 3),
    # the agent cannot do it, no agent channel, no domain: given up at once
    ([libvirt.VIR_ERR_OPERATION_UNSUPPORTED], False, 1),
    ([libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED], False, 1),
    ([libvirt.VIR_ERR_NO_DOMAIN], False, 1),
])
def test_the_guest_clock_sync_retries_or_gives_up_as_kubevirts(
        fast_clock_sync: None, errors: list[int], synced: bool, tries: int) -> None:
    dom = _ClockDom(errors)
    assert asyncio.run(_target(dom).sync_clock()) is synced
    # an explicit time, the host's, seconds and nanoseconds (KubeVirt's SetTime(now))
    assert dom.times == [({"seconds": 1_700_000_000, "nseconds": 250_000_000}, 0)] * tries


def test_the_guest_clock_sync_gives_up_after_its_timeout(fast_clock_sync: None) -> None:
    dom = _ClockDom([libvirt.VIR_ERR_AGENT_UNRESPONSIVE] * 1000)
    t0 = time.monotonic()
    assert asyncio.run(_target(dom).sync_clock()) is False
    assert time.monotonic() - t0 < 1
    assert 5 <= len(dom.times) <= 21, len(dom.times)  # ~0.2 s / 0.01 s


def test_finalize_answers_at_once_syncs_once_and_is_cancelled_on_close(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migration_target, "CLOCK_SYNC_INTERVAL_S", 0.05)
    dom = _ClockDom([libvirt.VIR_ERR_AGENT_UNRESPONSIVE] * 1000)
    target = _target(dom)

    async def scenario() -> None:
        t0 = time.monotonic()
        await target.finalize()
        assert time.monotonic() - t0 < 0.05  # the rpc does not wait for the agent
        await asyncio.sleep(0.12)
        await target.finalize()  # once per launcher, as KubeVirt's setTimeOnce
        await asyncio.sleep(0.12)
        tried = len(dom.times)
        assert 3 <= tried <= 7, tried  # one sync running, not two
        await target.close()  # the launcher shutting down: the retries stop
        await asyncio.sleep(0.15)
        assert len(dom.times) == tried

    asyncio.run(scenario())


@pytest.mark.parametrize("nonroot", [False, True])
def test_the_target_creates_migrationproxy_for_qemus_user(tmp_path: Path,
                                                          nonroot: bool) -> None:
    """The incoming QEMU creates its listening sockets in <share>/migrationproxy/: KubeVirt
    makes it 0755 and the qemu user's. Here QEMU runs as the launcher's user in both modes
    (root: qemu.conf user root; --run-as-nonroot: the session daemon's QEMU), so the
    launcher's user owns it - also under the launcher's umask 077."""
    target = _target(_ClockDom([]), share_dir=str(tmp_path / "share"), nonroot=nonroot)
    doc = {"status": {"migrationState": {"migrationUid": "m-1", "targetPod": "p"}}}

    async def scenario() -> None:
        old = os.umask(0o077)
        try:
            assert await target.prepare(doc, None) == "migration target prepared"
        finally:
            os.umask(old)
            await target.close()

    asyncio.run(scenario())
    st = (tmp_path / "share" / "migrationproxy").stat()
    assert stat.S_IMODE(st.st_mode) == 0o755 and st.st_uid == os.geteuid()
    assert target.migration_uid == "m-1"
