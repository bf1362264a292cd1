"""The launcher's side of the hook sidecar API against real sidecar processes on real UNIX
sockets (tests/support/hook_sidecar.py, and the example sidecars in hack/hooks/): discovery,
versions, the call order across sidecars, each hook point, and the faults a sidecar can
have. The same manager inside a real Sync on libvirt's test driver is in test_sync_hooks.py;
with a booted guest in tests/e2e/test_hooks.py."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from launcher.converter.plan import CloudInitIso
from launcher.hooks import discovery
from launcher.hooks.api import ON_DEFINE_DOMAIN
from launcher.hooks.discovery import HookAborted, HookError
from launcher.hooks.manager import HookManager
from tests.integration.notify_support import run_uvloop as run
from tests.support.hooks import SMBIOS_SIDECAR, TEST_SIDECAR, Sidecars, sidecars

pytestmark = pytest.mark.timeout(120)

UUID = "8f5d4b8e-1c2a-4d6e-9f00-0123456789ab"
DOMAIN = f"""<domain type='qemu' xmlns:kubevirt='http://kubevirt.io'>
  <name>pvl_vm</name>
  <uuid>{UUID}</uuid>
  <metadata><kubevirt:kubevirt><kubevirt:uid>u1</kubevirt:uid></kubevirt:kubevirt></metadata>
  <memory unit='KiB'>131072</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
</domain>"""
VMI = {"metadata": {"name": "vm", "namespace": "pvl", "uid": "u1",
                    "annotations": {"smbios.vm.kubevirt.io/baseBoardManufacturer": "Acme"}}}


@pytest.fixture
def hooks_dir() -> Iterator[Path]:
    base = tempfile.mkdtemp(prefix="pvl-h-", dir="/tmp")  # socket paths stay short
    try:
        yield Path(base) / "kubevirt-hooks"
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def group(hooks_dir: Path) -> Iterator[Sidecars]:
    with sidecars(hooks_dir) as g:
        yield g


def manager(hooks_dir: Path, count: int, timeout: float = 10.0, **kwargs: Any) -> HookManager:
    return HookManager(str(hooks_dir), count, timeout, **kwargs)


async def collected(m: HookManager) -> HookManager:
    await m.run()
    await m.ready()
    return m


def description(xml: str) -> str | None:
    return ET.fromstring(xml).findtext("description")


# --- discovery and order ----------------------------------------------------------------------
def test_sidecars_run_by_priority_across_sidecars_not_in_discovery_order(
        hooks_dir: Path, group: Sidecars) -> None:
    # "a" is found first (directory order) but has the lower priority: KubeVirt's
    # sortCallbacksPerHookPoint would call it first; the higher priority must run first.
    group.start(TEST_SIDECAR, "low", "--append", "low", "--priority", "1", subdir="a")
    group.start(TEST_SIDECAR, "high", "--append", "high", "--priority", "10", subdir="b")

    async def scenario() -> None:
        m = await collected(manager(hooks_dir, 2))
        assert [s.socket for s in m.sidecars] == sorted(s.socket for s in m.sidecars)
        assert m.sidecars[0].name == "low"  # discovery order: a/ before b/
        assert [s.name for s in m.subscribed(ON_DEFINE_DOMAIN)] == ["high", "low"]
        with capture_logs() as logs:
            xml, changed = await m.on_define_domain(DOMAIN, VMI)
        # each sidecar got the previous one's XML: high applied first, low last
        assert description(xml) == "high,low"
        assert changed == ["high", "low"]
        calls = [r for r in logs if r["event"] == "hook called"]
        assert [(r["sidecar"], r["hook_point"], r["outcome"]) for r in calls] == [
            ("high", "OnDefineDomain", "ok"), ("low", "OnDefineDomain", "ok")]
        assert all(r["duration_s"] >= 0 for r in calls)
        await m.close()
    run(scenario())


def test_equal_priorities_run_in_name_order(hooks_dir: Path, group: Sidecars) -> None:
    group.start(TEST_SIDECAR, "zeta", "--append", "zeta", subdir="a")
    group.start(TEST_SIDECAR, "alpha", "--append", "alpha", subdir="b")

    async def scenario() -> None:
        m = await collected(manager(hooks_dir, 2))
        xml, _ = await m.on_define_domain(DOMAIN, VMI)
        assert description(xml) == "alpha,zeta"
        await m.close()
    run(scenario())


@pytest.mark.parametrize(("served", "used"), [
    (["v1alpha1"], "v1alpha1"), (["v1alpha2"], "v1alpha2"),
    (["v1alpha1", "v1alpha2", "v1alpha3"], "v1alpha3"), (["v1alpha2", "v1alpha1"], "v1alpha2"),
])
def test_the_newest_listed_version_is_used(hooks_dir: Path, group: Sidecars,
                                           served: list[str], used: str) -> None:
    group.start(TEST_SIDECAR, "v", "--append", "x", *[a for v in served for a in ("--version", v)])

    async def scenario() -> None:
        m = await collected(manager(hooks_dir, 1))
        assert m.sidecars[0].version.name == used
        xml, _ = await m.on_define_domain(DOMAIN, VMI)
        assert description(xml) == "x"
        await m.close()
    run(scenario())


def test_an_unknown_version_is_a_clear_error(hooks_dir: Path, group: Sidecars) -> None:
    side = group.start(TEST_SIDECAR, "future", "--announce", "v2beta9")

    async def scenario() -> None:
        m = manager(hooks_dir, 1)
        await m.run()
        with pytest.raises(HookError) as err:
            await m.ready()
        assert str(err.value) == (
            f'hook sidecar "future" ({side.socket}) does not serve a supported version: it '
            "lists ['v2beta9'], this launcher supports ['v1alpha3', 'v1alpha2', 'v1alpha1']")
    run(scenario())


def test_a_sidecar_that_never_appears_times_out_naming_what_answered(
        hooks_dir: Path, group: Sidecars) -> None:
    group.start(TEST_SIDECAR, "only", "--append", "x")
    # a socket file nobody listens on: found, never answering
    silent = hooks_dir / "dead" / "dead.sock"
    silent.parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(silent))

    async def scenario() -> None:
        m = manager(hooks_dir, 2, timeout=1.5)
        t0 = time.monotonic()
        await m.run()
        took = time.monotonic() - t0
        with pytest.raises(HookError) as err:
            await m.ready()
        assert str(err.value) == (
            f"1 of 2 hook sidecars answered within 1.5 s (--qemu-timeout) in {hooks_dir}; "
            f"not answering: {silent}")
        assert 1.5 <= took < 6, took
        # what answered is kept (it still gets Shutdown)
        assert [s.name for s in m.sidecars] == ["only"]
        await m.close()
    run(scenario())


def test_a_late_sidecar_is_picked_up_by_the_poll(hooks_dir: Path, group: Sidecars) -> None:
    async def scenario() -> None:
        group.start(TEST_SIDECAR, "late", "--append", "late", "--delay-start", "1.5",
                    wait=False)
        m = await collected(manager(hooks_dir, 1, timeout=20))
        assert [s.name for s in m.sidecars] == ["late"]
        await m.close()
    run(scenario())


def test_waiting_stops_when_the_launcher_stops(hooks_dir: Path) -> None:
    async def scenario() -> None:
        stop_at = time.monotonic() + 0.5
        m = manager(hooks_dir, 1, timeout=60, stopping=lambda: time.monotonic() > stop_at)
        await m.run()
        with pytest.raises(HookAborted):
            await m.ready()
        assert time.monotonic() - stop_at < 2
    run(scenario())


def test_a_socket_symlinked_out_of_the_hooks_directory_is_refused(
        hooks_dir: Path, group: Sidecars, tmp_path: Path) -> None:
    outside = Path(tempfile.mkdtemp(prefix="pvl-o-", dir="/tmp"))
    try:
        side = group.start(TEST_SIDECAR, "elsewhere", "--append", "x",
                           subdir="../../" + outside.name)
        assert side.socket.resolve().parent == outside.resolve()
        link = hooks_dir / "sneaky" / "elsewhere.sock"
        link.parent.mkdir(parents=True)
        link.symlink_to(side.socket)

        async def scenario() -> None:
            m = manager(hooks_dir, 1)
            await m.run()
            with pytest.raises(HookError) as err:
                await m.ready()
            assert str(err.value) == (
                f"hook socket {link} resolves to {side.socket.resolve()}, outside "
                f"{hooks_dir} (a symlink out of the hooks directory); refused")
        run(scenario())
    finally:
        shutil.rmtree(outside, ignore_errors=True)


# --- faults in a call -------------------------------------------------------------------------
@pytest.mark.parametrize(("fault", "expected"), [
    ("invalid-xml", 'OnDefineDomain returned XML that does not parse: '),
    ("no-xml", "OnDefineDomain returned no domain XML"),
    ("rename", 'OnDefineDomain returned a domain named "renamed-pvl_vm", not "pvl_vm"; a '
               "hook may not rename the domain"),
    ("hang", "OnDefineDomain did not answer within 1 s"),
    ("die", "OnDefineDomain failed: UNAVAILABLE: "),
])
def test_a_failing_sidecar_is_named_in_the_error(hooks_dir: Path, group: Sidecars,
                                                 fault: str, expected: str) -> None:
    group.start(TEST_SIDECAR, "good", "--append", "good", "--priority", "5", subdir="a")
    bad = group.start(TEST_SIDECAR, "bad", "--fault", fault, subdir="b")

    async def scenario() -> None:
        m = await collected(manager(hooks_dir, 2, call_timeout_s=1.0))
        t0 = time.monotonic()
        with capture_logs() as logs, pytest.raises(HookError) as err:
            await m.on_define_domain(DOMAIN, VMI)
        assert time.monotonic() - t0 < 5
        assert str(err.value).startswith(f'hook sidecar "bad" ({bad.socket}): {expected}'), \
            str(err.value)
        if fault in ("hang", "die"):
            failed = [r for r in logs if r["event"] == "hook call failed"]
            assert failed and failed[0]["sidecar"] == "bad"
        await m.close()
    run(scenario())
    if fault == "die":
        assert bad.proc.wait(timeout=5) == 3


# --- PreCloudInitIso and Shutdown -------------------------------------------------------------
PREP = CloudInitIso("cloudinit", "/x/noCloud.iso", "noCloud", user_data=b"#cloud-config\n",
                    meta_data=b'{"instance-id":"vm.pvl","local-hostname":"vm"}')


def test_pre_cloud_init_iso_chains_new_and_legacy_sidecars(hooks_dir: Path,
                                                           group: Sidecars) -> None:
    group.start(TEST_SIDECAR, "one", "--user-data", "runcmd: [one]", "--priority", "2",
                subdir="a")
    group.start(TEST_SIDECAR, "two", "--user-data", "# two", "--legacy-cloud-init",
                "--version", "v1alpha2", subdir="b")

    async def scenario() -> None:
        m = await collected(manager(hooks_dir, 2))
        out = await m.pre_cloud_init_iso(PREP, VMI)
        # both ran, in priority order; the legacy answer keeps the metadata
        assert out.user_data == b"#cloud-config\nruncmd: [one]\n# two\n"
        assert json.loads(out.meta_data) == {"instance-id": "vm.pvl", "local-hostname": "vm"}
        assert (out.path, out.kind, out.volume) == (PREP.path, PREP.kind, PREP.volume)
        await m.close()
    run(scenario())


def test_shutdown_ends_the_sidecars_and_a_hung_one_is_bounded(hooks_dir: Path,
                                                              group: Sidecars) -> None:
    polite = group.start(TEST_SIDECAR, "polite", "--append", "x", "--priority", "9",
                         subdir="a")
    hung = group.start(TEST_SIDECAR, "hung", "--fault", "shutdown-hang", subdir="b")
    old = group.start(TEST_SIDECAR, "old", "--version", "v1alpha2", subdir="c")

    async def scenario() -> None:
        m = await collected(manager(hooks_dir, 3))
        assert [s.name for s in m.subscribed("Shutdown")] == ["polite", "hung"]
        t0 = time.monotonic()
        with capture_logs() as logs:
            await m.shutdown(1.5)
        assert time.monotonic() - t0 < 3
        outcome = {r["sidecar"]: r["outcome"] for r in logs
                   if r["event"] in ("hook called", "hook call failed")}
        # the hung one gets what is left of the 1.5 s
        assert outcome["polite"] == "ok", outcome
        assert outcome["hung"].startswith("did not answer within 1."), outcome
        assert set(outcome) == {"polite", "hung"}
        await m.close()
    run(scenario())
    assert polite.proc.wait(timeout=5) == 0  # a Shutdown ends the sidecar
    assert hung.proc.poll() is None and old.proc.poll() is None


# --- the example sidecar ----------------------------------------------------------------------
def test_the_smbios_example_sets_the_base_board_from_annotations(hooks_dir: Path,
                                                                 group: Sidecars) -> None:
    group.start(SMBIOS_SIDECAR, "smbios")

    async def scenario() -> None:
        m = await collected(manager(hooks_dir, 1))
        assert m.sidecars[0].version.name == "v1alpha3"
        xml, changed = await m.on_define_domain(DOMAIN, VMI)
        root = ET.fromstring(xml)
        assert root.find("os/smbios").get("mode") == "sysinfo"  # type: ignore[union-attr]
        entry = root.find("sysinfo[@type='smbios']/baseBoard/entry[@name='manufacturer']")
        assert entry is not None and entry.text == "Acme"
        assert changed == ["smbios"]
        # the launcher's metadata namespace survives the sidecar's rewrite
        assert root.find("metadata/{http://kubevirt.io}kubevirt/{http://kubevirt.io}uid") \
            is not None
        # without the annotation: unchanged
        same, changed = await m.on_define_domain(DOMAIN, {"metadata": {"name": "vm"}})
        assert (same, changed) == (DOMAIN, [])
        await m.close()
    run(scenario())


def test_no_sidecars_requested_means_no_wait_and_no_calls(hooks_dir: Path) -> None:
    async def scenario() -> None:
        m = manager(hooks_dir, 0)
        await m.run()
        await m.ready()
        assert await m.on_define_domain(DOMAIN, VMI) == (DOMAIN, [])
        assert await m.pre_cloud_init_iso(PREP, VMI) == PREP
        await m.shutdown(1)
    run(scenario())
    assert not os.path.exists(hooks_dir)
    assert discovery.candidate_sockets(str(hooks_dir)) == []
