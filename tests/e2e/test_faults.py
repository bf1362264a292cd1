"""Faults at moments of a VM's life: kill -9 of the libvirt daemon, virtlogd, the notify
receiver, QEMU or the launcher itself, and SIGSTOP of the guest agent inside the guest,
while the VM is booting, its agent is connecting, a freeze is in flight or done, or the
pod is shutting down.

Each case is its own monitor + launcher + daemons + VM (STANDALONE_VMI, the test guest
under TCG), booted once. Afterwards either the VM keeps running and the launcher keeps
serving with fresh state (GetDomain and a notify snapshot received after the fault say
what libvirt says; the agent works; a freeze ends thawed), then shuts down cleanly on
SIGTERM; or everything ends with the right exit code: 0 when QEMU died (reported
Shutoff), 137 when the launcher was killed (the monitor kills QEMU). In every case: no
frozen guest left frozen, no process left (the harness's leftovers check), no hang past
the grace period.

The moment is reached by waiting for the log line or event that marks it; only a small
extra delay inside its window is random, from a seeded RNG: the seed is printed, and
PVL_FAULT_SEED=<seed> replays the same delays.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.faults import (
    Background,
    Cmd,
    LogTail,
    agent_fsfreeze_status,
    case_rng,
    libvirt_state,
    qemu_pid,
    restart_receiver,
    running_with_agent,
    sigkill,
    snapshots_after,
    wait_fsfreeze,
)
from tests.support.guest import BOOT_TO_AGENT_TIMEOUT_S, Receiver, agent_state, ended, status
from tests.support.harness import Instance, wait_for
from tests.support.standalone import guest

pytestmark = pytest.mark.e2e

GRACE_S = 20  # --grace-period-seconds
EXIT_SLACK_S = 10  # a clean exit comes this long after the grace period at the latest
UNFREEZE_TIMEOUT_S = 4  # the freeze's auto-thaw, so a lost thaw shows within the test
AGENT_STOP_S = 6  # how long the guest agent stays SIGSTOPped
EXEC_SETTLE_S = 0.3  # the least delay of that stop after the Exec that schedules it
LAUNCHER_KILLED = 128 + signal.SIGKILL

# component -> what happens to the VM
SURVIVES = ("libvirtd", "virtlogd", "notify", "agent")


@dataclass(frozen=True)
class Case:
    component: str  # libvirtd | virtlogd | notify | qemu | launcher | agent
    moment: str  # booting | agent | freezing | frozen | shutdown

    @property
    def id(self) -> str:
        return f"{self.component}-{self.moment}"


CASES = [Case(c, m) for c, m in (
    ("libvirtd", "booting"), ("libvirtd", "agent"), ("libvirtd", "freezing"),
    ("libvirtd", "frozen"), ("libvirtd", "shutdown"),
    ("virtlogd", "booting"), ("virtlogd", "shutdown"),
    ("notify", "booting"), ("notify", "agent"), ("notify", "shutdown"),
    ("qemu", "booting"), ("qemu", "freezing"), ("qemu", "shutdown"),
    ("launcher", "agent"), ("launcher", "frozen"), ("launcher", "shutdown"),
    ("agent", "agent"), ("agent", "freezing"),
)]


@dataclass
class Run:
    case: Case
    inst: Instance
    receiver: Receiver
    log: LogTail
    cmd: Cmd
    seed: int
    delay_s: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    fault_at: float = 0.0  # time.monotonic() of the injection
    fault_wall: float = 0.0  # time.time() of the injection
    sigterm_at: float | None = None
    freeze_call: Background | None = None
    qemu_before: int | None = None

    # --- the moment ---------------------------------------------------------------------
    def wait_agent_ready(self) -> None:
        """The agent connected and answering (its version in the cache): freezes work,
        and acpid, started with it, handles the power button."""
        self.log.wait("agent poller started", BOOT_TO_AGENT_TIMEOUT_S)
        wait_for(lambda: self.cmd.guest_info().get("guestAgentVersion"), 60, interval=0.1,
                 what="agent data in the cache")
        wait_for(self.cmd.guest_ping, 30, interval=0.2, what="GuestPing")

    def reach(self, rng: Any) -> None:
        moment = self.case.moment
        if moment == "booting":
            # right after the launcher defined and started the domain (kernel booting)
            self.log.wait("synced", 60, pred=lambda r: r.get("action") == "started")
            self.delay_s = rng.uniform(0.0, 1.5)
        elif moment == "agent":
            # right after the first AGENT_LIFECYCLE connected event, before the cache fills
            self.log.wait("agent poller started", BOOT_TO_AGENT_TIMEOUT_S)
            self.delay_s = rng.uniform(0.0, 0.5)
        elif moment == "freezing":
            self.wait_agent_ready()
            # a freeze takes 50-100 ms under TCG: mostly in flight, sometimes just done
            self.delay_s = rng.uniform(0.0, 0.1)
            if self.case.component == "agent":
                self.schedule_agent_stop(self.delay_s)
                # the stop comes EXEC_SETTLE_S + delay after the job's shell exited, a
                # little before the Exec returned: start the freeze just ahead of it
                time.sleep(EXEC_SETTLE_S - 0.1)
                self.delay_s = 0.0
            self.freeze_call = Background(
                lambda: self.cmd.freeze(UNFREEZE_TIMEOUT_S, timeout=90)).start()
        elif moment == "frozen":
            self.wait_agent_ready()
            resp = self.cmd.freeze(UNFREEZE_TIMEOUT_S, timeout=90)
            if not resp.success and "not responding" in resp.message:
                # as for Exec (exec_retrying): set-up, not the fault under test; once more
                self.notes["agent_unresponsive_before_fault"] = resp.message[:120]
                resp = self.cmd.freeze(UNFREEZE_TIMEOUT_S, timeout=90)
            assert resp.success, resp.message
            assert agent_fsfreeze_status(self.inst) == "frozen"
            self.notes["frozen_before_fault"] = True
            self.delay_s = rng.uniform(0.0, 0.5)
        elif moment == "shutdown":
            self.wait_agent_ready()
            self.sigterm_at = time.monotonic()
            self.inst.signal(signal.SIGTERM)
            self.log.wait("graceful shutdown", 10)
            self.delay_s = rng.uniform(0.0, 1.0)
        else:
            raise AssertionError(moment)
        if self.case.component == "agent" and moment == "agent":
            self.schedule_agent_stop(self.delay_s)
            self.delay_s = 0.0
        time.sleep(self.delay_s)
        self.qemu_before = qemu_pid(self.inst)

    def schedule_agent_stop(self, after_s: float) -> None:
        """SIGSTOP qemu-ga inside the guest EXEC_SETTLE_S + `after_s` from now, SIGCONT it
        AGENT_STOP_S later: a job in the guest, since nothing can reach a stopped agent.

        The job is started by an Exec, which polls guest-exec-status every 0.1 s until the
        shell exits: a stop sooner than EXEC_SETTLE_S after the shell's exit would catch
        that last poll, the Exec would return only after the SIGCONT and the stop would be
        over before the test looks. Should it happen anyway (a slow guest), the stop is
        scheduled again."""
        script = (f"(usleep {int((EXEC_SETTLE_S + after_s) * 1e6)}; kill -STOP $(pidof "
                  f"qemu-ga); sleep {AGENT_STOP_S}; kill -CONT $(pidof qemu-ga)) "
                  ">/dev/null 2>&1 &")
        self.notes["agent_stop_after_s"] = round(EXEC_SETTLE_S + after_s, 3)
        for attempt in range(1, 4):
            t0 = time.monotonic()
            out, failed = self.cmd.exec_retrying("/bin/sh", "-c", script)
            took = time.monotonic() - t0
            assert out.response.success and out.exitCode == 0, out
            if failed:
                self.notes["agent_unresponsive_before_fault"] = failed
            if took < AGENT_STOP_S - 1:
                return
            # caught by its own stop: wait for that one to end, then once more
            self.notes["agent_stop_rescheduled"] = attempt
            wait_for(self.cmd.guest_ping, AGENT_STOP_S + 30, interval=0.5,
                     what="agent back after a stop that caught its own Exec")
        raise AssertionError(f"the agent stop kept catching its own Exec: {self.notes}")

    # --- the fault ----------------------------------------------------------------------
    def inject(self) -> None:
        c = self.case.component
        self.fault_at, self.fault_wall = time.monotonic(), time.time()
        if self.freeze_call is not None:
            self.notes["freeze_in_flight_at_fault"] = self.freeze_call.ended_at is None
        if c in ("libvirtd", "virtlogd"):
            name = self.inst.paths.daemon if c == "libvirtd" else "virtlogd"
            pid = self.inst.daemon_pid(name)
            assert pid is not None, f"{name} not running"
            self.notes["killed_pid"] = pid
            sigkill(pid)
        elif c == "notify":
            assert self.receiver.proc is not None
            self.receiver.proc.kill()
            self.receiver.proc.wait(10)
        elif c == "qemu":
            assert self.qemu_before is not None, "no QEMU pid"
            sigkill(self.qemu_before)
        elif c == "launcher":
            sigkill(self.inst.launcher().pid)
        elif c == "agent":
            pass  # scheduled in the guest (schedule_agent_stop)
        else:
            raise AssertionError(c)

    # --- afterwards -----------------------------------------------------------------------
    def recover(self, rng: Any) -> None:
        c = self.case.component
        if c == "notify":
            down_s = rng.uniform(0.3, 2.0)
            self.notes["receiver_down_s"] = round(down_s, 3)
            time.sleep(down_s)
            restart_receiver(self.receiver)
        elif c in ("libvirtd", "virtlogd") and self.case.moment != "shutdown":
            name = self.inst.paths.daemon if c == "libvirtd" else "virtlogd"
            old = self.notes["killed_pid"]
            wait_for(lambda: self.inst.daemon_pid(name) not in (None, old), 15,
                     what=f"{name} restarted")
            if c == "libvirtd":
                wait_for(lambda: self.log.count("libvirt connected") >= 2, 20,
                         what="launcher reconnected to libvirt")

    def check_keeps_running(self) -> None:
        inst, cmd = self.inst, self.cmd
        t0 = time.monotonic()
        if self.case.moment == "shutdown":
            self.stop_cleanly()  # SIGTERM was sent: the shutdown must still end cleanly
            return
        if self.case.component == "agent":
            self.check_agent_stopped()
        if self.freeze_call is not None:
            self.freeze_call.join(90)
            resp, err = self.freeze_call.result, self.freeze_call.error
            self.notes["freeze_rpc"] = ("error: " + str(err)[:120] if err is not None
                                        else f"success={resp.success} {resp.message[:120]}")
        # The last notify snapshot is the truth: Running, the agent connected. After a
        # libvirt daemon restart it must be one received after the fault (the launcher
        # sends a fresh snapshot when it reconnects); other faults change nothing libvirt
        # reports, so there may be nothing new to send.
        try:
            self.receiver.wait_last(running_with_agent, 60, "last snapshot Running + agent")
            if self.case.component == "libvirtd":
                wait_for(lambda: any(running_with_agent(e) for e in
                                     snapshots_after(self.receiver, self.fault_wall)),
                         30, what="a Running + agent snapshot received after the fault")
        except TimeoutError:
            print("snapshots around the fault (s after it, status, agent):")
            for e in self.receiver.domains()[-15:]:
                print(f"  {e.get('received_at', 0) - self.fault_wall:+.2f} {status(e)} "
                      f"{agent_state(e)}")
            raise
        # GetDomain says what libvirt says
        assert cmd.domain_status() == ("Running", "Unknown")
        assert libvirt_state(inst).startswith("running"), libvirt_state(inst)
        # the same QEMU, never restarted
        assert qemu_pid(inst) == self.qemu_before
        # the agent answers through the launcher again
        wait_for(cmd.guest_ping, 60, interval=0.5, what="GuestPing through the launcher")
        # never a frozen guest left frozen: the auto-thaw (or nothing) leaves it thawed
        if self.case.moment in ("freezing", "frozen"):
            wait_fsfreeze(inst, ("thawed",), UNFREEZE_TIMEOUT_S + 45)
            wait_for(lambda: cmd.guest_info().get("fsFreezeStatus") == "thawed", 20,
                     interval=0.2, what="launcher's cache says thawed")
        self.notes["recovered_s"] = round(time.monotonic() - t0, 2)
        self.stop_cleanly()

    def check_agent_stopped(self) -> None:
        """While qemu-ga is stopped, with a call to it pending in the launcher (a GuestPing,
        or the freeze), the launcher answers at once: Ping and GetGuestInfo from its
        cache, GetDomain from libvirt (a libvirt call must not queue behind the agent's);
        after SIGCONT the agent answers again."""
        cmd = self.cmd
        if self.case.moment == "agent":
            wait_for(lambda: not cmd.guest_ping(2), 20, interval=0.1,
                     what="agent stopped (GuestPing fails)")
        pending = Background(lambda: cmd.guest_ping(4)).start()
        worst = {"Ping": 0.0, "GetGuestInfo": 0.0, "GetDomain": 0.0}
        t_end = time.monotonic() + 3.0
        while time.monotonic() < t_end:
            for name, call in (("Ping", cmd.ping), ("GetGuestInfo", cmd.guest_info),
                               ("GetDomain", cmd.domain_status)):
                t = time.monotonic()
                call()
                worst[name] = max(worst[name], time.monotonic() - t)
            time.sleep(0.05)
        pending.join(30)
        self.notes["worst_ms_agent_stopped"] = {k: round(v * 1000, 1) for k, v in worst.items()}
        assert max(worst.values()) < 1.0, self.notes["worst_ms_agent_stopped"]
        wait_for(cmd.guest_ping, AGENT_STOP_S + 30, interval=0.5, what="agent back (CONT)")
        self.notes["fsfreeze_when_agent_back"] = wait_fsfreeze(self.inst,
                                                               ("thawed", "frozen"), 30)

    def stop_cleanly(self) -> None:
        if self.sigterm_at is None:
            self.sigterm_at = time.monotonic()
            self.inst.signal(signal.SIGTERM)
        self.expect_exit(0)
        final = ended(self.receiver)
        self.notes["final"] = "/".join(status(final))
        assert status(final) == ("Shutoff", "Shutdown"), final
        assert not self.log.count("grace period expired; destroying the domain")

    def expect_exit(self, code: int) -> None:
        start = self.sigterm_at if self.sigterm_at is not None else self.fault_at
        limit = GRACE_S + EXIT_SLACK_S + 15
        remaining = max(1.0, start + limit - time.monotonic())
        got = self.inst.wait_exit(timeout=remaining)
        self.notes["exit_code"] = got
        self.notes["exit_after_s"] = round(time.monotonic() - start, 2)
        assert got == code, f"exit code {got}, expected {code}"
        # never a hang past the grace period
        if self.case.component != "launcher":
            assert time.monotonic() - start < GRACE_S + EXIT_SLACK_S, self.notes

    def check_nothing_left(self) -> None:
        self.receiver.stop()  # ours, not the pod's; it references the runtime root too
        left = wait_for(lambda: not self.inst.leftovers(), 20, what="no processes left")
        assert left
        self.notes["leftovers"] = 0

    def check_qemu_killed(self) -> None:
        self.expect_exit(0)
        assert self.log.count("QEMU exited") == 1
        final = ended(self.receiver)
        self.notes["final"] = "/".join(status(final))
        if self.case.moment == "shutdown":
            assert status(final)[1] in ("Shutdown", "Crashed"), final
        else:
            assert status(final) == ("Shutoff", "Crashed"), final
            k8s = [e for e in self.receiver.events() if e.get("kind") == "k8s"]
            assert any(e["event"]["reason"] == "QemuCrashed" for e in k8s), k8s
        if self.freeze_call is not None:
            self.freeze_call.join(30)

    def check_launcher_killed(self) -> None:
        self.expect_exit(LAUNCHER_KILLED)
        assert self.qemu_before is not None
        # the monitor stopped QEMU (unless the guest had powered off by then)
        stopped = [r for r in self.log.poll() if r.get("msg") == "terminating leftover QEMU"]
        self.notes["monitor_stopped_qemu"] = bool(stopped)
        if self.case.moment != "shutdown":
            assert stopped and self.qemu_before in stopped[0]["pids"], stopped
        assert not os.path.exists(f"/proc/{self.qemu_before}")
        if self.freeze_call is not None:
            self.freeze_call.join(30)

    def report(self) -> str:
        return json.dumps({"case": self.case.id, "seed": self.seed,
                           "delay_s": round(self.delay_s, 3), **self.notes})


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(case: Case, make_instance: Callable[..., Instance],
               receiver_for: Callable[[Instance], Receiver]) -> None:
    rng, seed = case_rng(case.id)
    print(f"fault case {case.id}: PVL_FAULT_SEED={seed}")
    inst = make_instance(nonroot=False, extra_args=[
        "--allow-emulation", "--grace-period-seconds", str(GRACE_S)])
    receiver = receiver_for(inst)
    doc = guest(inst)
    run = Run(case, inst, receiver, LogTail(inst), Cmd.of(inst), seed)
    inst.start(env={"STANDALONE_VMI": json.dumps(doc)})
    try:
        run.reach(rng)
        run.inject()
        run.recover(rng)
        if case.component in SURVIVES:
            run.check_keeps_running()
        elif case.component == "qemu":
            run.check_qemu_killed()
        else:
            run.check_launcher_killed()
        run.check_nothing_left()
    except BaseException:
        console = Path(inst.paths.vmi_private_dir) / "virt-serial0-log"
        with contextlib.suppress(OSError):
            print(f"===== guest console ({console}) =====\n"
                  + console.read_text(errors="replace")[-6000:])
        raise
    finally:
        run.cmd.channel.close()
        print("FAULT-RESULT " + run.report())
