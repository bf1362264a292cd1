"""The monitor's life: parse flags, start the launcher, forward signals, reap, clean up."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Sequence

from launcher import flags
from launcher.paths import derive
from launcher.shutdown_budget import monitor_kill_after_s
from monitor import cleanup, libc, log, spawn
from monitor.exitcodes import EXIT_OK, EXIT_SPAWN_FAILED, EXIT_USAGE, code_from_wait_status
from monitor.forward import FORWARDED, SignalPipe, install_signals, signal_name
from monitor.reaper import Reaper, describe

PROG = "virt-launcher-monitor"
# Beyond KubeVirt: the launcher gets --grace-period-seconds for the guest to shut down plus
# every deadline it keeps after that (launcher.shutdown_budget); past them it is considered
# hung and SIGKILLed.
DEBUG_VERBOSITY = 3


class Monitor:
    def __init__(self, signals: SignalPipe, reaper: Reaper) -> None:
        self.signals = signals
        self.reaper = reaper
        self.signals_after_exit = 0

    def supervise(self, pid: int, stop_timeout_s: float) -> int:
        """Forward signals to the launcher until it exits; returns its wait status."""
        kill_deadline: float | None = None
        killed = False
        while True:
            timeout = None
            if kill_deadline is not None and not killed:
                timeout = kill_deadline - time.monotonic()
            for signum in self.signals.wait(timeout):
                if signum not in FORWARDED:
                    continue
                # Safe to signal by pid: the launcher is our child and its pid cannot be
                # reused before we reap it, which happens below, after forwarding.
                log.info("forwarding signal to the launcher as SIGTERM",
                         signal=signal_name(signum), launcher_pid=pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                if kill_deadline is None:
                    kill_deadline = time.monotonic() + stop_timeout_s
            self.reaper.reap()
            if pid in self.reaper.exited:
                return self.reaper.exited.pop(pid)
            if kill_deadline is not None and not killed and time.monotonic() >= kill_deadline:
                log.warning("launcher did not exit in time; sending SIGKILL", launcher_pid=pid,
                            timeout_s=stop_timeout_s)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed = True

    def idle(self, timeout: float | None) -> None:
        """Wait (at most `timeout`), reaping; after the launcher is gone there is nobody to
        forward to, so shutdown signals are only counted."""
        for signum in self.signals.wait(timeout):
            if signum in FORWARDED:
                self.signals_after_exit += 1
                log.info("signal received after the launcher exited",
                         signal=signal_name(signum))
        self.reaper.reap()


def _stderr(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, text.encode("utf-8", "replace"))


def _launch(opts: flags.Options, argv: Sequence[str], argv0: str, monitor: Monitor) -> int:
    """Start the launcher, supervise it, clean up after it; returns the exit code."""
    binary = spawn.resolve_launcher(opts.launcher_binary, argv0)
    launcher_args = flags.strip_monitor_only(argv)
    if binary is None:
        log.error("cannot find the launcher", name=spawn.LAUNCHER_NAME,
                  path=os.environ.get("PATH", ""))
        return EXIT_SPAWN_FAILED
    try:
        pid = spawn.spawn(binary, launcher_args)
    except OSError as exc:
        log.error("cannot start the launcher", binary=binary, error=str(exc))
        return EXIT_SPAWN_FAILED
    monitor.reaper.watch(pid)
    log.info("started the launcher", launcher_pid=pid, binary=binary, args=launcher_args,
             monitor_pid=os.getpid())
    # Start-up garbage is gone now; what stays resident from here on is every VM's cost.
    libc.release_free_heap()

    stop_timeout_s = opts.launcher_stop_timeout_s
    if stop_timeout_s is None:
        stop_timeout_s = monitor_kill_after_s(float(opts.grace_period_seconds))
    status = monitor.supervise(pid, stop_timeout_s)
    code = code_from_wait_status(status)
    log.info("launcher exited", launcher_pid=pid, **describe(status))

    paths = derive(opts)
    cleanup.dump_qemu_logs(paths.qemu_log_dir)
    stuck = cleanup.stop_leftover_qemu(paths.qemu_pid_dir, monitor.idle)
    stuck += cleanup.stop_children(monitor.idle)
    if stuck:
        log.error("processes survived SIGKILL (uninterruptible sleep?)", pids=stuck)
    return code


def run(argv: Sequence[str], argv0: str, signals: SignalPipe | None = None) -> int:
    """Run the monitor with `argv` (without the program name); returns the exit code.
    `signals`: the handlers monitor.__main__ installed first thing (else installed here)."""
    if signals is None:
        signals = install_signals()
    try:
        opts = flags.parse(argv, prog=PROG)
    except flags.FlagError as exc:
        log.error(f"invalid command line: {exc}", error=str(exc))
        _stderr(f"{PROG}: error: {exc}\n")
        return EXIT_USAGE
    if opts.verbosity >= DEBUG_VERBOSITY:
        log.set_level("debug")

    failure = libc.set_child_subreaper()
    if failure:
        log.warning("cannot become child subreaper; orphans will be re-parented elsewhere",
                    error=os.strerror(failure))

    monitor = Monitor(signals, Reaper())

    code = _launch(opts, argv, argv0, monitor)

    if opts.keep_after_failure and code != EXIT_OK:
        # Also after a failed spawn: the pod stays up to be inspected (kubectl exec).
        log.warning("launcher failed; keeping the monitor alive for debugging "
                    "(--keep-after-failure) until SIGTERM, SIGINT or SIGQUIT", exit_code=code)
        while monitor.signals_after_exit == 0:
            monitor.idle(None)
    # Whatever exited since the last wake-up: a child left unreaped becomes a zombie of
    # init (or of nobody, when we are PID 1) the moment we exit.
    monitor.reaper.reap()
    log.info("exiting", exit_code=code)
    return code
