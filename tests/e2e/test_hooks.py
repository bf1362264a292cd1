"""Hook sidecars end to end: the monitor and launcher with `--hook-sidecars`, real daemons,
the test guest booted from STANDALONE_VMI, and three sidecars as separate processes on
their own sockets (each in its own directory, as each sidecar container mounts its own
subPath of the pod's hooks directory): the SMBIOS example, the script-running shim with a
shell script, and a test sidecar that edits the cloud-init data. What they did is read
back from the guest (through the guest agent's Exec) and with virsh."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from launcher.exitcodes import ExitCode
from tests.support.guest import Cmd, Receiver
from tests.support.harness import Instance, wait_for
from tests.support.hooks import SHIM_SIDECAR, SMBIOS_SIDECAR, TEST_SIDECAR, sidecars
from tests.support.standalone import EMULATION, guest, stop_cleanly, wait_agent

pytestmark = pytest.mark.e2e

VENDOR = "PVL Hooks Inc"
MARKER = "# pvl-hook-marker"
# What a user puts in the shim's ConfigMap: KubeVirt's shim runs it with
# --vmi <VMI JSON> --domain <domain XML> and takes its stdout as the new domain XML.
SHIM_SCRIPT = """#!/bin/sh
[ "$1" = --vmi ] && [ "$3" = --domain ] || { echo "unexpected arguments: $1 $3" >&2; exit 2; }
echo "editing the domain of a VMI of $(printf '%s' "$2" | wc -c) bytes" >&2
printf '%s\\n' "$4" | sed 's|</uuid>|</uuid><description>edited by a shim script</description>|'
"""


def test_sidecars_change_the_domain_the_guest_sees(
    make_instance: Callable[..., Instance], receiver_for: Callable[..., Receiver]
) -> None:
    inst = make_instance(nonroot=False, extra_args=[*EMULATION, "--hook-sidecars", "3"])
    receiver = receiver_for(inst)
    doc = guest(inst)
    doc["metadata"]["annotations"] = {
        "smbios.vm.kubevirt.io/baseBoardManufacturer": VENDOR,
        "hooks.kubevirt.io/hookSidecars": json.dumps([
            {"image": "localhost/py-virt-launcher:dev", "args": ["--version", "v1alpha3"]}]),
    }
    script = inst.root.parent / "onDefineDomain"
    script.write_text(SHIM_SCRIPT)
    os.chmod(script, 0o755)
    with sidecars(inst.paths.hooks_dir) as group:
        # The launcher first: it waits for the sidecars, as a pod's containers start in
        # any order.
        inst.start(env={"STANDALONE_VMI": json.dumps(doc)})
        inst.wait_running(timeout=60)
        smbios = group.start(SMBIOS_SIDECAR, "smbios")
        shim = group.start(SHIM_SIDECAR, "shim", "--version", "v1alpha3",
                           "--on-define-domain", str(script))
        data = group.start(TEST_SIDECAR, "cloudinit", "--user-data", MARKER)
        wait_agent(receiver)
        cmd = Cmd.of(inst)
        try:
            # what the guest sees: the SMBIOS board vendor, the cloud-init data on its disk
            out = cmd.exec("/bin/cat", "/sys/class/dmi/id/board_vendor")
            assert (out.response.success, out.exitCode, out.stdOut) == (True, 0,
                                                                        VENDOR + "\n"), out
            out = cmd.exec("/bin/grep", "-c", MARKER, "/dev/vdb")
            assert (out.exitCode, out.stdOut) == (0, "1\n"), out
        finally:
            cmd.channel.close()
        # what a person with virsh sees in the pod
        dumped = inst.virsh("dumpxml", f"{inst.namespace}_{inst.name}")
        assert dumped.returncode == 0, dumped.stderr
        assert f"<entry name='manufacturer'>{VENDOR}</entry>" in dumped.stdout
        assert "<description>edited by a shim script</description>" in dumped.stdout
        assert "<smbios mode='sysinfo'/>" in dumped.stdout
        # every call logged with its sidecar, hook point, duration and outcome
        calls = [(r["sidecar"], r["hook_point"], r["outcome"])
                 for r in inst.logged("hook called")]
        assert calls == [("cloudinit", "PreCloudInitIso", "ok"),
                         ("cloudinit", "OnDefineDomain", "ok"),
                         ("shim", "OnDefineDomain", "ok"),
                         ("smbios", "OnDefineDomain", "ok")], calls
        assert "editing the domain of a VMI of" in shim.output()

        # (the sidecars' command lines name the runtime root: stop_cleanly's check that
        # nothing is left running covers them too)
        stop_cleanly(inst, receiver)
        # the sidecars were told to shut down (v1alpha3), and did
        assert [s.proc.wait(timeout=10) for s in (smbios, shim, data)] == [0, 0, 0]
        shutdowns = [r["sidecar"] for r in inst.logged("hook called")
                     if r["hook_point"] == "Shutdown"]
        assert sorted(shutdowns) == ["cloudinit", "shim", "smbios"]


def test_a_sidecar_that_never_comes_fails_the_standalone_vmi_and_starts_nothing(
    make_instance: Callable[..., Instance],
) -> None:
    inst = make_instance(nonroot=False,
                         extra_args=[*EMULATION, "--hook-sidecars", "1", "--qemu-timeout", "3s"])
    doc = guest(inst)
    inst.start(env={"STANDALONE_VMI": json.dumps(doc)})
    assert inst.wait_exit(timeout=90) == ExitCode.STANDALONE_VMI_FAILED, inst.tail()
    errors = inst.logged("STANDALONE_VMI could not be synced; exiting")
    assert errors and errors[0]["error"] == (
        f"0 of 1 hook sidecars answered within 3 s (--qemu-timeout) in "
        f"{inst.paths.hooks_dir}; no other sidecar socket appeared"), errors
    assert not inst.logged("domain defined")  # nothing was defined or started
    assert not list(Path(inst.paths.qemu_log_dir).glob("*.log"))
    assert inst.leftovers() == []


def test_sigterm_while_waiting_for_sidecars_ends_at_once(
    make_instance: Callable[..., Instance],
) -> None:
    inst = make_instance(nonroot=False,
                         extra_args=[*EMULATION, "--hook-sidecars", "2", "--qemu-timeout", "5m"])
    inst.start(env={"STANDALONE_VMI": json.dumps(guest(inst))})
    inst.wait_running(timeout=60)
    wait_for(lambda: inst.logged("waiting for hook sidecars"), 10, what="the wait")
    t0 = time.monotonic()
    inst.signal(signal.SIGTERM)
    assert inst.wait_exit(timeout=60) == 0, inst.tail()
    took = time.monotonic() - t0
    assert took < 15, took  # not the 5 minutes of --qemu-timeout
    assert inst.logged("stopped waiting for hook sidecars")
    assert inst.logged("STANDALONE_VMI not started: the launcher is shutting down")
    assert not list(Path(inst.paths.qemu_log_dir).glob("*.log"))
    assert inst.leftovers() == []
