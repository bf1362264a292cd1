"""The terminate ladder (TERM, wait, KILL, wait) against real processes, in-process, with
short timeouts. The processes are this test's own children, reaped by Popen.poll() in the
wait callback as the monitor's reaper would."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from monitor import cleanup, procfs
from monitor.procfs import ProcStat


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def start(procs: list[subprocess.Popen[bytes]], script: str) -> ProcStat:
    proc = subprocess.Popen(["/bin/sh", "-c", script])
    procs.append(proc)
    deadline = time.monotonic() + 10
    # Wait for the exec (comm becomes "sleep"): before it, sh has not set up its traps.
    while time.monotonic() < deadline:
        st = procfs.read_stat(proc.pid)
        if st is not None and st.comm == "sleep":
            return st
        time.sleep(0.01)
    raise AssertionError("sleep did not start")


def reaping_wait(procs: list[subprocess.Popen[bytes]]) -> cleanup.WaitFn:
    def wait(timeout: float) -> None:
        time.sleep(timeout)
        for proc in procs:
            proc.poll()
    return wait


def test_sigterm_is_enough(procs: list[subprocess.Popen[bytes]]) -> None:
    targets = [start(procs, "exec sleep 60") for _ in range(3)]
    started = time.monotonic()
    left = cleanup.terminate_ladder(targets, "test processes", term_timeout=5,
                                    kill_timeout=2, wait=reaping_wait(procs))
    assert left == []
    assert time.monotonic() - started < 3
    assert [p.wait(1) for p in procs] == [-signal.SIGTERM] * 3


def test_escalates_to_sigkill(procs: list[subprocess.Popen[bytes]]) -> None:
    stubborn = start(procs, "trap '' TERM; exec sleep 60")  # SIG_IGN survives exec
    polite = start(procs, "exec sleep 60")
    started = time.monotonic()
    left = cleanup.terminate_ladder([stubborn, polite], "test processes", term_timeout=0.5,
                                    kill_timeout=5, wait=reaping_wait(procs))
    elapsed = time.monotonic() - started
    assert left == []
    assert 0.5 <= elapsed < 3
    assert procs[0].wait(1) == -signal.SIGKILL
    assert procs[1].wait(1) == -signal.SIGTERM


def test_reports_survivors_without_waiting_forever(procs: list[subprocess.Popen[bytes]]
                                                   ) -> None:
    st = start(procs, "exec sleep 60")
    # A wait callback that never reaps: our zombie child stays "there", as one stuck in
    # D state would; the ladder must give up after its timeouts and report it.
    started = time.monotonic()
    left = cleanup.terminate_ladder([st], "test processes", term_timeout=0.3,
                                    kill_timeout=0.3, wait=time.sleep)
    assert left == [st.pid]
    assert time.monotonic() - started < 2


def test_never_signals_pid_1_or_itself() -> None:
    me = procfs.read_stat(os.getpid())
    init = procfs.read_stat(1)
    assert me is not None
    assert init is not None
    assert cleanup.terminate_ladder([me, init], "test processes", term_timeout=0.1,
                                    kill_timeout=0.1, wait=time.sleep) == []
    # The guard on the kill itself (signal 0 only probes, so this is harmless either way).
    for pid in (1, 0, -1, os.getpid()):
        assert cleanup.safe_kill(pid, 0) is False


def test_skips_a_reused_pid(procs: list[subprocess.Popen[bytes]]) -> None:
    st = start(procs, "exec sleep 60")
    impostor = ProcStat(pid=st.pid, comm=st.comm, state="S", ppid=st.ppid,
                        starttime=st.starttime + 1)
    assert cleanup.terminate_ladder([impostor], "test processes", term_timeout=0.1,
                                    kill_timeout=0.1, wait=time.sleep) == []
    assert procs[0].poll() is None  # not signalled: its start time did not match
