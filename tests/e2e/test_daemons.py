"""The monitor -> launcher -> real libvirt daemons, in both modes, with daemons killed."""

from __future__ import annotations

import os
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from launcher.exitcodes import ExitCode
from tests.support.harness import Instance, wait_for

KILLS_PER_DAEMON = 5
BACK_WITHIN_S = 2.0


def kill_and_wait_back(inst: Instance, name: str) -> float:
    old = wait_for(lambda: inst.daemon_pid(name), 5, what=f"{name} running")
    os.kill(old, signal.SIGKILL)
    t0 = time.monotonic()
    sock = inst.paths.daemon_socket if name != "virtlogd" else inst.paths.virtlogd_socket

    def back() -> bool:
        pid = inst.daemon_pid(name)
        if pid is None or pid == old:
            return False
        from tests.support.harness import socket_accepts  # noqa: PLC0415

        return socket_accepts(sock)

    wait_for(back, 10, what=f"{name} back after kill -9")
    return time.monotonic() - t0


@pytest.mark.e2e
@pytest.mark.parametrize("nonroot", [False, True], ids=["root-system", "nonroot-session"])
def test_daemons_survive_kill9_and_sigterm_is_clean(
    make_instance: Callable[..., Instance], nonroot: bool
) -> None:
    inst = make_instance(nonroot=nonroot)
    inst.start()
    inst.wait_running()

    listing = inst.virsh("list", "--all")
    assert listing.returncode == 0, listing.stderr
    assert "Id" in listing.stdout and "Name" in listing.stdout

    daemon = inst.paths.daemon
    recoveries: dict[str, list[float]] = {daemon: [], "virtlogd": []}
    for name in (daemon, "virtlogd"):
        for _ in range(KILLS_PER_DAEMON):
            connects = len(inst.logged("libvirt connected"))
            recoveries[name].append(kill_and_wait_back(inst, name))
            # libvirt answers again: for us, and for the launcher, which reconnects after
            # every libvirt daemon restart.
            wait_for(inst.libvirt_reachable, 5, interval=0.05, what="libvirt reachable")
            if name == daemon:
                wait_for(lambda n=connects: len(inst.logged("libvirt connected")) == n + 1,  # type: ignore[misc]
                         5, what="launcher reconnected")
    print("recovery seconds:", recoveries)
    for name, times in recoveries.items():
        assert len(times) == KILLS_PER_DAEMON
        assert max(times) < BACK_WITHIN_S, f"{name} came back too slowly: {times}"
    assert inst.virsh("list").returncode == 0

    inst.signal(signal.SIGTERM)
    assert inst.wait_exit(timeout=30) == 0, inst.tail()
    assert inst.logged("launcher exited cleanly")
    wait_for(lambda: not inst.leftovers(), 5, what="no processes left")
    # Sockets were removed on the way out.
    assert not Path(inst.paths.daemon_socket).exists()
    assert not Path(inst.paths.virtlogd_socket).exists()


@pytest.mark.e2e
def test_nonroot_runs_everything_as_the_user(make_instance: Callable[..., Instance]) -> None:
    inst = make_instance(nonroot=True)
    inst.start()
    inst.wait_running()
    launcher = inst.launcher()
    procs = [launcher, *launcher.children(recursive=True)]
    assert {p.uids().real for p in procs} == {inst.root.stat().st_uid}
    assert inst.root.stat().st_uid != 0
    # The daemons run in session mode with the XDG dirs under the runtime root.
    env = launcher.children()[0].environ()
    assert env["XDG_RUNTIME_DIR"].startswith(str(inst.root))
    assert "session" in inst.paths.uri
    inst.signal(signal.SIGTERM)
    assert inst.wait_exit(timeout=30) == 0, inst.tail()


@pytest.mark.e2e
def test_root_daemons_use_private_mount_namespace(
    make_instance: Callable[..., Instance]
) -> None:
    inst = make_instance(nonroot=False)
    inst.start()
    inst.wait_running()
    pid = inst.daemon_pid(inst.paths.daemon)
    assert pid is not None
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    # Its hard-coded /etc/libvirt/qemu.conf is our runtime root's copy.
    with open(f"/proc/{pid}/root/etc/libvirt/qemu.conf") as f:
        inside = f.read()
    assert inside == Path(inst.paths.qemu_conf).read_text()
    # Config files are private to the launcher's user.
    assert stat.S_IMODE(os.stat(inst.paths.daemon_conf).st_mode) == 0o600
    inst.signal(signal.SIGTERM)
    assert inst.wait_exit(timeout=30) == 0, inst.tail()


def _failing_daemon(tmp: Path, text: str) -> Path:
    script = tmp / "broken-daemon"
    script.write_text(f"#!/bin/sh\necho '{text}' >&2\nexit 1\n")
    script.chmod(0o755)
    return script


@pytest.mark.e2e
@pytest.mark.parametrize("which", ["libvirt-daemon", "virtlogd"])
@pytest.mark.parametrize("kind", ["missing", "exits-at-once"])
def test_daemon_that_cannot_start_gives_bounded_clear_exit(
    make_instance: Callable[..., Instance], which: str, kind: str
) -> None:
    probe = make_instance(nonroot=False)
    if kind == "missing":
        binary = probe.root / "no-such-daemon"
        expect_text = f"cannot execute {binary}"
    else:
        binary = _failing_daemon(probe.root, "fatal: simulated config error")
        expect_text = "fatal: simulated config error"
    inst = probe
    inst.extra_args = [f"--{which}", str(binary)]
    t0 = time.monotonic()
    inst.start()
    code = inst.wait_exit(timeout=60)
    elapsed = time.monotonic() - t0
    assert code == ExitCode.DAEMON_FAILED, inst.tail()
    gave_up = inst.logged("a libvirt daemon could not be kept running; exiting")
    assert gave_up, inst.tail()
    assert gave_up[0]["daemon"] == ("virtlogd" if which == "virtlogd" else binary.name)
    assert "5 times in a row" in gave_up[0]["reason"]
    assert any(expect_text in line for line in gave_up[0]["last_lines"]), gave_up[0]
    # Retried with backoff rather than crashing on the first failure.
    assert len(inst.logged("daemon exited, restarting")) == 4
    assert elapsed < 30, elapsed
    wait_for(lambda: not inst.leftovers(), 5, what="no processes left")


@pytest.mark.e2e
def test_sigterm_while_the_libvirt_daemon_is_in_its_restart_backoff_exits_cleanly(
    make_instance: Callable[..., Instance]
) -> None:
    """libvirtd killed, then failing to start for a while (a wrapper as --libvirt-daemon);
    SIGTERM meanwhile: the daemon set stops restarting it, so it never comes back, and the
    launcher's libvirt connection must not wait for it. It used to, forever: the pod ended
    with the monitor's SIGKILL (137), long after the grace period."""
    probe = make_instance(nonroot=False, extra_args=["--grace-period-seconds", "5"])
    marker = probe.root / "daemon-broken"
    bindir = probe.root / "bin"
    bindir.mkdir()
    wrapper = bindir / "libvirtd"  # the daemon's name decides the socket's
    wrapper.write_text(
        "#!/bin/sh\n"
        f"if [ -e {marker} ]; then echo 'simulated: cannot start' >&2; sleep 1; exit 1; fi\n"
        'exec /usr/sbin/libvirtd "$@"\n')
    wrapper.chmod(0o755)
    inst = probe
    inst.extra_args = [*inst.extra_args, "--libvirt-daemon", str(wrapper)]
    inst.start()
    inst.wait_running()
    marker.touch()
    pid = wait_for(lambda: inst.daemon_pid("libvirtd"), 5, what="libvirtd running")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: inst.logged("daemon exited, restarting"), 15,
             what="a failed restart (backoff)")
    t0 = time.monotonic()
    inst.signal(signal.SIGTERM)
    assert inst.wait_exit(timeout=30) == 0, inst.tail()
    elapsed = time.monotonic() - t0
    assert inst.logged("launcher exited cleanly"), inst.tail()
    assert elapsed < 5 + 10, elapsed  # within the grace period, give or take the teardown
    wait_for(lambda: not inst.leftovers(), 10, what="no processes left")
