#!/usr/bin/env python3
"""Volume hotplug figures: one JSON object on stdout (progress on stderr).

One VM pod as the e2e tests make it (tests/e2e/test_hotplug.py: monitor + launcher + real
libvirtd, the virt-handler stand-in on the notify socket), the 256 MiB test guest under
TCG booted to its agent through SyncVirtualMachine, then --rounds times: a hotplug volume
(a PVC with hotpluggable, its volumeStatus MountedToPod with hotplugVolume, the file
<hotplug_disk_dir>/<volume>.img starting with a marker unique to the round) added to the
VMI and synced, then removed and synced:

- hotplug_disk_attach_ms: the SyncVirtualMachine rpc sent -> an agent Exec that found
  the marker at the head of one of the guest's /sys/block/sd* devices returned (the rpcs
  on one channel to launcher-sock, kept open as virt-handler keeps its client);
- hotplug_disk_detach_ms: the rpc removing it sent -> an Exec that found that device
  gone from the guest's /sys/block returned;
- hotplug_disk_attach_rpc_ms / hotplug_disk_detach_rpc_ms: the rpc's own latency.

The guest is polled with one Exec (`/bin/sh -c`) every poll_interval_ms after the last
one returned, so each figure overshoots the guest's moment by up to one poll interval
plus one Exec round trip; exec_rtt_ms (the same attach poll, no disk there, before the
rounds) is that round trip (the launcher polls guest-exec-status every
launcher_exec_status_poll_ms). polls_per_round: Execs until the change was seen (1: the
first Exec after the rpc already saw it; the figure is then rpc + about one Exec round
trip, an upper bound at the Exec's resolution). p50/max per figure, every round in
`samples`.

No target is set by the brief; the README records the figures. Exits 0 when it ran.
Run as root from the repository root: python -m hack.bench_hotplug [--rounds N]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from launcher.cmd.agent import EXEC_POLL_S
from tests.support.guest import Cmd, Receiver
from tests.support.harness import Instance, instance, wait_for
from tests.support.standalone import EMULATION, guest, sync, wait_agent

ROUNDS = 5
POLL_S = 0.05  # between one Exec's answer and the next Exec
GUEST_SEES_S = 60.0  # give up on a round after this (TCG, a loaded machine)
EXEC_RTT_CALLS = 20
VOLUME = "hpbench"
MiB = 2**20
FIGURES = ("hotplug_disk_attach_ms", "hotplug_disk_detach_ms",
           "hotplug_disk_attach_rpc_ms", "hotplug_disk_detach_rpc_ms")


def log(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def summary(samples_ms: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(samples_ms), 3), "max": round(max(samples_ms), 3),
            "n": len(samples_ms)}


# --- the VMI as virt-handler sends it (as tests/e2e/test_hotplug.py) -------------------------
def with_volume(doc: dict[str, Any], name: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    spec = doc["spec"]
    spec["volumes"].append({"name": name, "persistentVolumeClaim": {
        "claimName": f"{name}-claim", "hotpluggable": True}})
    spec["domain"]["devices"]["disks"].append({"name": name, "disk": {"bus": "scsi"}})
    doc.setdefault("status", {}).setdefault("volumeStatus", []).append({
        "name": name, "phase": "MountedToPod",
        "hotplugVolume": {"attachPodName": "hp-volume-pod", "attachPodUID": "x"},
        "persistentVolumeClaimInfo": {"claimName": f"{name}-claim"}})
    return doc


# --- reading the guest through the agent ----------------------------------------------------
def marker_script(marker: str) -> str:
    """Prints the guest's SCSI disks whose first bytes are `marker` (one Exec)."""
    return (f'for d in /sys/block/sd*; do [ -e "$d" ] || continue; n=${{d##*/}}; '
            f'[ "$(dd if=/dev/$n bs=512 count=1 2>/dev/null | head -c {len(marker)})" '
            f'= "{marker}" ] && echo "$n"; done; true')


def shell(cmd: Cmd, script: str) -> tuple[str, float]:
    """The script's stdout and the Exec's round trip (ms)."""
    t0 = time.perf_counter()
    out = cmd.exec("/bin/sh", "-c", script, timeout_s=10)
    rtt = (time.perf_counter() - t0) * 1000
    if not out.response.success:
        raise RuntimeError(f"Exec: {out.response.message}")
    return str(out.stdOut), rtt


def poll(cmd: Cmd, script: str, done: Callable[[str], bool], t0: float, *, what: str,
         rtts: list[float]) -> tuple[float, str, int]:
    """Exec `script` every POLL_S until done(stdout): ms from t0 to that Exec's answer,
    its stdout, how many Execs it took."""
    polls = 0
    while True:
        polls += 1
        out, rtt = shell(cmd, script)
        rtts.append(rtt)
        now = time.perf_counter()
        if done(out):
            return (now - t0) * 1000, out, polls
        if now - t0 > GUEST_SEES_S:
            raise TimeoutError(f"{what} not seen in the guest after {GUEST_SEES_S:.0f} s")
        time.sleep(POLL_S)


@contextlib.contextmanager
def booted(left: list[int]) -> Iterator[tuple[Instance, Receiver, Cmd, dict[str, Any]]]:
    """The test guest booted to its agent through the launcher; at the end a graceful stop
    (SIGTERM, the stand-in deletes the domain; `left` gets the number of processes still
    referencing the runtime root once the stand-in has stopped), then instance() kills
    whatever is left and removes the runtime root."""
    with instance(False, lambda: False, extra_args=EMULATION) as inst:
        receiver = Receiver(inst, virt_handler=True)
        receiver.start()
        cmd: Cmd | None = None
        try:
            doc = guest(inst)
            inst.start()
            inst.wait_running(timeout=60)
            resp = sync(inst, doc)
            if not resp.success:
                raise RuntimeError(f"sync failed: {resp.message}")
            wait_agent(receiver)
            cmd = Cmd.of(inst)
            yield inst, receiver, cmd, doc
            inst.signal(signal.SIGTERM)
            code = inst.wait_exit(timeout=90)
            if code != 0:
                raise RuntimeError(f"the monitor exited {code}: {inst.tail(20)}")
            receiver.stop()
            with contextlib.suppress(TimeoutError):
                wait_for(lambda: not inst.leftovers(), 10, interval=0.2,
                         what="no processes left")
            left.append(len(inst.leftovers()))
        finally:
            if cmd is not None:
                cmd.channel.close()
            receiver.stop()


def one_run(rounds: int) -> dict[str, Any]:
    """Boot, measure `rounds` attach/detach rounds, stop. Every round's figures (ms)."""
    samples: dict[str, list[float]] = {f: [] for f in FIGURES}
    devices: list[str] = []
    poll_rtts: list[float] = []
    polls: dict[str, list[int]] = {"attach": [], "detach": []}
    left: list[int] = []
    with booted(left) as (inst, _receiver, cmd, base):
        hp_dir = Path(inst.paths.hotplug_disk_dir)
        hp_dir.mkdir(parents=True, exist_ok=True)
        wait_for(lambda: "vda" in shell(cmd, "ls /sys/block")[0], GUEST_SEES_S,
                 interval=0.5, what="the guest's disks")
        idle = marker_script("PVL-BENCH-NONE")
        exec_rtt = [shell(cmd, idle)[1] for _ in range(EXEC_RTT_CALLS)]
        log(f"  Exec round trip p50 {statistics.median(exec_rtt):.1f} ms")
        plugged = with_volume(base, VOLUME)
        for i in range(rounds):
            marker = f"PVL-BENCH-HP-{i:03d}"
            (hp_dir / f"{VOLUME}.img").write_bytes(marker.encode().ljust(8 * MiB, b"\0"))

            t0 = time.perf_counter()
            resp = cmd.vmi_call("SyncVirtualMachine", plugged, timeout=60)
            rpc_ms = (time.perf_counter() - t0) * 1000
            if not resp.success or "attached disk" not in resp.message:
                raise RuntimeError(f"attach round {i + 1}: {resp.message}")
            seen_ms, out, attach_polls = poll(
                cmd, marker_script(marker), lambda o: bool(o.split()), t0,
                what="the hotplugged disk", rtts=poll_rtts)
            dev = out.split()[0]
            samples["hotplug_disk_attach_rpc_ms"].append(rpc_ms)
            samples["hotplug_disk_attach_ms"].append(seen_ms)

            t0 = time.perf_counter()
            resp = cmd.vmi_call("SyncVirtualMachine", base, timeout=60)
            rpc_ms = (time.perf_counter() - t0) * 1000
            if not resp.success or "detached disk" not in resp.message:
                raise RuntimeError(f"detach round {i + 1}: {resp.message}")
            gone_ms, _, detach_polls = poll(
                cmd, f"[ -e /sys/block/{dev} ] && echo here; true",
                lambda o: "here" not in o, t0, what=f"{dev} gone", rtts=poll_rtts)
            samples["hotplug_disk_detach_rpc_ms"].append(rpc_ms)
            samples["hotplug_disk_detach_ms"].append(gone_ms)
            devices.append(dev)
            polls["attach"].append(attach_polls)
            polls["detach"].append(detach_polls)
            log(f"  round {i + 1}: {dev} attach {seen_ms:.0f} ms (rpc "
                f"{samples['hotplug_disk_attach_rpc_ms'][-1]:.0f}), detach {gone_ms:.0f} ms "
                f"(rpc {rpc_ms:.0f})")
        (hp_dir / f"{VOLUME}.img").unlink(missing_ok=True)
    return {"samples": samples, "exec_rtt_ms": exec_rtt, "exec_rtt_during_polls_ms": poll_rtts,
            "guest_devices": devices, "polls_per_round": polls, "processes_left": left[0]}


def result(run: dict[str, Any]) -> dict[str, Any]:
    samples: dict[str, list[float]] = run["samples"]
    out: dict[str, Any] = {f: summary(samples[f]) for f in FIGURES}
    out.update({
        "exec_rtt_ms": summary(run["exec_rtt_ms"]),
        "exec_rtt_during_polls_ms": summary(run["exec_rtt_during_polls_ms"]),
        "poll_interval_ms": round(POLL_S * 1000),
        "launcher_exec_status_poll_ms": round(EXEC_POLL_S * 1000),
        "granularity": "attach/detach figures end when the Exec that saw the change "
                       "returned: up to poll_interval_ms + one Exec round trip late "
                       "(subtract ~exec_rtt_ms.p50 for the guest's moment); with 1 poll "
                       "in polls_per_round the first Exec after the rpc already saw it: "
                       "the figure is then an upper bound at the Exec's resolution",
        "rounds": len(samples[FIGURES[0]]),
        "polls_per_round": run["polls_per_round"],
        "guest_devices": run["guest_devices"],
        "processes_left": run["processes_left"],
        "samples": {f: [round(v, 1) for v in samples[f]] for f in FIGURES},
    })
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=ROUNDS)
    ns = p.parse_args(argv)
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        res = result(one_run(ns.rounds))
    out.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
