"""The PID-1 tier: the monitor as PID 1 of a new PID namespace (as in a pod that does not
share its process namespace), with the real launcher, daemons and test guest.

PID 1 is special: the kernel drops signals it has no handler for (even SIGTERM from
outside), every orphan of the namespace is re-parented to it and stays a zombie unless it
reaps it, and when it exits the kernel SIGKILLs everything left in the namespace, so
nothing gets an orderly shutdown that PID 1 did not give it before exiting.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from monitor.exitcodes import SIGNAL_EXIT_BASE
from tests.support.guest import (
    BOOT_TO_AGENT_TIMEOUT_S,
    Receiver,
    agent_state,
    define_and_start,
    ended,
    status,
)
from tests.support.harness import Instance, wait_for
from tests.support.pid1 import (
    UNSHARE,
    Pid1,
    ZombieWatch,
    alive,
    host_pid,
    members,
    ns_pid,
    state,
)

pytestmark = pytest.mark.e2e

# Stays alive until SIGTERMed, and leaves proof that SIGTERM (not the kernel's SIGKILL
# when PID 1 exits) ended it. `wait` is interruptible by the trap, a bare `sleep` is not.
TRAP_ORPHAN = """\
trap 'echo TERM > "$1"; exit 0' TERM
while :; do sleep 0.2 & wait $!; done
"""


def start_pid1(inst: Instance) -> Pid1:
    inst.start()
    inst.wait_running()
    pid1 = Pid1.attach(inst)
    assert ns_pid(pid1.monitor) == 1, "the monitor is not PID 1 of its namespace"
    assert ns_pid(pid1.launcher()) != 1
    return pid1


def wait_qemu(inst: Instance) -> None:
    wait_for(lambda: inst.logged("watching QEMU"), 60, interval=0.05, what="QEMU watched")


def qemu_log(inst: Instance) -> str:
    return "\n".join(p.read_text(errors="replace")
                     for p in sorted(Path(inst.paths.qemu_log_dir).glob("*.log")))


def msgs(inst: Instance) -> list[str]:
    return [str(r.get("msg")) for r in inst.log_records()]


def assert_nothing_left(pid1: Pid1, receiver: Receiver | None = None) -> None:
    # The kernel tears the namespace down when PID 1 exits; only give it a moment.
    wait_for(lambda: not members(pid1.ns), 10, what="an empty PID namespace")
    if receiver is not None:
        receiver.stop()  # it names the runtime root too, and is not the pod's
    wait_for(lambda: not pid1.inst.leftovers(), 10, what="no processes left")


def test_a_pid1_without_handlers_ignores_sigterm() -> None:
    """The premise, shown with a process that has no handlers: as PID 1 it survives
    SIGTERM from outside its namespace, so the monitor's handlers are what count."""
    wrapper = subprocess.Popen([*UNSHARE, "sleep", "1000"], stdin=subprocess.DEVNULL)
    try:
        child = wait_for(lambda: [c.pid for c in psutil.Process(wrapper.pid).children()
                                  if c.name() == "sleep"], 10, what="sleep as PID 1")[0]
        assert ns_pid(child) == 1
        os.kill(child, signal.SIGTERM)
        time.sleep(0.5)
        assert alive(child), "SIGTERM killed a PID 1 without handlers"
        os.kill(child, signal.SIGKILL)  # only SIGKILL/SIGSTOP are forced on it
        # (unshare cannot re-raise SIGKILL on itself and exits 1 instead: not checked)
        assert wrapper.wait(10) != 0
        assert state(child) is None
    finally:
        with contextlib.suppress(ProcessLookupError):
            wrapper.kill()
        wrapper.wait(10)


def test_sigterm_from_outside_shuts_down_in_order_after_reaping_orphans(
    make_instance: Callable[..., Instance], receiver_for: Callable[..., Receiver]
) -> None:
    inst = make_instance(nonroot=False, wrapper=UNSHARE,
                         extra_args=["--grace-period-seconds", "60"])
    receiver = receiver_for(inst, virt_handler=True)  # deletes the stopped domain
    pid1 = start_pid1(inst)
    define_and_start(inst)
    receiver.wait_domain(
        lambda e: status(e) == ("Running", "Unknown") and agent_state(e) == "connected",
        BOOT_TO_AGENT_TIMEOUT_S, "Running snapshot with the agent connected")

    # libvirtd daemonizes QEMU (double fork): the intermediate exits and QEMU is re-parented
    # to the namespace's reaper, the monitor.
    qemu = pid1.by_name("qemu-system")
    assert psutil.Process(qemu).ppid() == pid1.monitor
    launcher = pid1.launcher()
    for daemon in ("libvirtd", "virtlogd"):
        assert psutil.Process(pid1.by_name(daemon)).ppid() == launcher

    # Two strays started inside the namespace by a shell that exits at once, so both are
    # orphans re-parented to PID 1: one exits after 2 s (must be reaped, not left a
    # zombie), one runs until SIGTERMed (must be stopped by the monitor before it exits).
    script = inst.root / "orphan.sh"
    script.write_text(TRAP_ORPHAN)
    term_file = inst.root / "orphan.term"
    out = pid1.run_inside(
        "/bin/sh", "-c",
        'sleep 2 </dev/null >/dev/null 2>&1 & echo $!; '
        '/bin/sh "$0" "$1" </dev/null >/dev/null 2>&1 & echo $!',
        str(script), str(term_file))
    short_inner, trap_inner = (int(x) for x in out.split())
    short, trapped = host_pid(pid1.ns, short_inner), host_pid(pid1.ns, trap_inner)
    wait_for(lambda: all(psutil.Process(p).ppid() == pid1.monitor for p in (short, trapped)),
             5, what="the strays re-parented to PID 1")

    watch = ZombieWatch(pid1)
    watch.run(3.5)
    assert short in watch.seen
    assert state(short) is None, f"the exited orphan is still there ({state(short)})"
    assert not watch.lingering, f"zombies not reaped by PID 1: {watch.lingering}"
    assert alive(trapped) and alive(qemu)

    # SIGTERM from the host's namespace, at the monitor itself (not unshare).
    os.kill(pid1.monitor, signal.SIGTERM)
    assert inst.wait_exit(timeout=90) == 0, inst.tail()  # unshare passes the code on

    fwd = pid1.monitor_records("forwarding signal to the launcher as SIGTERM")
    assert fwd and fwd[0]["signal"] == "SIGTERM", inst.tail()
    # The guest was powered off over ACPI (no destroy), and it says so on its console.
    assert inst.logged("asked the guest to shut down")[0]["via"] == "acpi"
    assert not inst.logged("grace period expired; destroying the domain")
    console = (inst.root / "console.log").read_text(errors="replace")
    assert "PVL: ACPI power button, powering off" in console, console[-2000:]
    assert "Requesting system poweroff" in console, console[-2000:]
    assert status(ended(receiver)) == ("Shutoff", "Shutdown")
    # libvirtd and virtlogd were stopped by the launcher's ladder and exited on SIGTERM.
    stopped = {r.get("daemon") for r in inst.logged("stopping daemon")}
    assert {"libvirtd", "virtlogd"} <= stopped, stopped
    assert not inst.logged("child did not exit after signal")
    # Then the monitor SIGTERMed the stray (which recorded it), and only then exited.
    assert term_file.read_text().strip() == "TERM"
    swept = pid1.monitor_records("terminating leftover child processes")
    assert swept and trap_inner in swept[0]["pids"], swept  # type: ignore[operator]
    assert not pid1.monitor_records("terminating leftover QEMU")  # it had powered off
    order = msgs(inst)
    assert (order.index("launcher exited cleanly") < order.index("launcher exited")
            < order.index("terminating leftover child processes") < order.index("exiting"))
    assert not [m for m in order if "did not exit" in m or "survived" in m], inst.tail()
    assert_nothing_left(pid1, receiver)


def test_launcher_sigkilled_inside_pid1_qemu_and_daemons_are_stopped_exit_137(
    make_instance: Callable[..., Instance],
) -> None:
    inst = make_instance(nonroot=False, wrapper=UNSHARE)
    pid1 = start_pid1(inst)
    define_and_start(inst)
    wait_qemu(inst)
    qemu = pid1.by_name("qemu-system")
    qemu_inner = ns_pid(qemu)
    launcher_inner = ns_pid(pid1.launcher())
    assert launcher_inner is not None

    # From inside the namespace, as a process of the pod would.
    pid1.run_inside("kill", "-KILL", str(launcher_inner))
    code = inst.wait_exit(timeout=60)
    assert code == SIGNAL_EXIT_BASE + signal.SIGKILL == 137, inst.tail()

    exited = pid1.monitor_records("launcher exited")
    assert exited[0]["signal"] == "SIGKILL" and exited[0]["exit_code"] == 137, exited
    qemus = pid1.monitor_records("terminating leftover QEMU")
    assert qemus and qemus[0]["pids"] == [qemu_inner], (qemus, qemu_inner)
    # The daemons, orphaned by the launcher's death, were the monitor's children then.
    kids = pid1.monitor_records("terminating leftover child processes")
    comms: Any = kids[0]["comms"] if kids else []
    assert {"libvirtd", "virtlogd"} <= set(comms), kids
    # QEMU names its killer: SIGTERM from PID 1, the monitor (not the kernel's SIGKILL).
    assert "terminating on signal 15 from pid 1 " in qemu_log(inst), qemu_log(inst)[-2000:]
    order = msgs(inst)
    assert (order.index("terminating leftover QEMU")
            < order.index("terminating leftover child processes") < order.index("exiting"))
    assert not [m for m in order if "did not exit" in m or "survived" in m], inst.tail()
    assert_nothing_left(pid1)


def test_qemu_sigkilled_under_pid1_is_reaped_and_the_exit_code_passes_through(
    make_instance: Callable[..., Instance], receiver_for: Callable[..., Receiver]
) -> None:
    inst = make_instance(nonroot=False, wrapper=UNSHARE)
    receiver = receiver_for(inst, virt_handler=True)  # deletes the stopped domain
    pid1 = start_pid1(inst)
    define_and_start(inst)
    receiver.wait_domain(lambda e: status(e)[0] == "Running", 60, "Running snapshot")
    qemu = pid1.by_name("qemu-system")
    assert psutil.Process(qemu).ppid() == pid1.monitor

    os.kill(qemu, signal.SIGKILL)
    # QEMU is PID 1's child: the monitor reaps it while the launcher is still reporting
    # and stopping its daemons (seconds), so no zombie QEMU outlives it.
    wait_for(lambda: state(qemu) is None, 2, interval=0.005, what="QEMU reaped")
    assert alive(pid1.monitor), "the monitor exited before QEMU was reaped"
    # README: the launcher reports the crash and exits 0; the monitor exits with its code.
    code = inst.wait_exit(timeout=60)
    noticed = inst.logged("QEMU exited")
    assert noticed and noticed[0]["reason"] == "Crashed", inst.tail()
    exited = pid1.monitor_records("launcher exited")
    assert exited and exited[0]["exit_code"] == code == 0, (code, exited)
    receiver.wait_domain(lambda e: status(e) == ("Shutoff", "Crashed"), 5, "Crashed snapshot")
    assert_nothing_left(pid1, receiver)
