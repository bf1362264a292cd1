"""A stand-in for virt-launcher in the monitor's integration tests.

Run as a script (through an executable wrapper the tests write), never imported by the
tests. The monitor passes it only the launcher's flags, so its behaviour comes from the
environment:

FAKE_LAUNCHER_STATE_DIR  directory for the files below (required)
FAKE_LAUNCHER_MODE       what to do (see MODES)
FAKE_LAUNCHER_EXIT_CODE  exit status when done (default 0)
FAKE_LAUNCHER_SIGNAL     "signal" mode: the signal number to kill itself with
FAKE_LAUNCHER_EXE        "qemu"/"daemon" modes: the executable to daemonize (a symlink to
                         /bin/sleep whose name sets the comm)
FAKE_LAUNCHER_IGNORE_TERM  "qemu" mode: "1" to start it with SIGTERM ignored
FAKE_LAUNCHER_DIE_BY_SIGKILL  "daemon" mode: "1" to SIGKILL itself instead of exiting

Files written in the state dir: argv.json (its argv without argv[0]), pid, ready (once set
up), events (one line per signal received: "signal N"), child.json (pid and ppid of the
process it left behind). It stops waiting when the file "release" appears.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
from types import FrameType

STATE = os.environ["FAKE_LAUNCHER_STATE_DIR"]
MODE = os.environ.get("FAKE_LAUNCHER_MODE", "exit")
EXIT_CODE = int(os.environ.get("FAKE_LAUNCHER_EXIT_CODE", "0"))
MAX_LIFETIME_S = 120.0  # never outlive a broken test by much


def path(name: str) -> str:
    return os.path.join(STATE, name)


def write_atomic(name: str, text: str) -> None:
    tmp = path(name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.rename(tmp, path(name))


def append_event(text: str) -> None:
    # One O_APPEND write per event: safe to call from a signal handler in this fake.
    fd = os.open(path("events"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def on_signal(signum: int, frame: FrameType | None) -> None:
    del frame
    append_event(f"signal {signum}")


def wait_for_release() -> None:
    deadline = time.monotonic() + MAX_LIFETIME_S
    while not os.path.exists(path("release")) and time.monotonic() < deadline:
        time.sleep(0.02)


def record_signals() -> None:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, on_signal)


def ready() -> None:
    write_atomic("ready", "")


def daemonize_exec(exe: str, args: list[str], ignore_term: bool) -> int:
    """fork, setsid, fork, exec: the daemon's parent exits at once, so the daemon is
    re-parented to the nearest subreaper (the monitor). Returns the daemon's pid."""
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_fd)
        os.setsid()
        grandchild = os.fork()
        if grandchild == 0:
            if ignore_term:
                # Ignored dispositions survive exec: the exec'd program ignores SIGTERM.
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.close(write_fd)
            try:
                os.execv(exe, [exe, *args])
            finally:
                os._exit(126)
        os.write(write_fd, str(grandchild).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        pid = int(f.read())
    os.waitpid(child, 0)
    return pid


def wait_for_comm(pid: int, expected_prefix: str) -> None:
    """Until the daemon has exec'd: before that its comm is still the fork's."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
                if f.read().strip().startswith(expected_prefix):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.01)


def mode_orphan() -> None:
    """Leave a short-lived grandchild that exits only after its parent is gone, so its
    exit must be reaped by whoever adopted it; it records who that was."""
    record_signals()
    child = os.fork()
    if child == 0:
        parent = os.getpid()  # not getppid() in the grandchild: the parent may be gone
        grandchild = os.fork()
        if grandchild == 0:
            deadline = time.monotonic() + 30
            while os.getppid() == parent and time.monotonic() < deadline:
                time.sleep(0.01)
            write_atomic("child.json", json.dumps({"pid": os.getpid(), "ppid": os.getppid()}))
            time.sleep(0.2)  # let the test see it alive before it becomes a zombie
            os._exit(0)
        os._exit(0)
    os.waitpid(child, 0)
    ready()
    wait_for_release()


def mode_daemonize() -> None:
    exe = os.environ["FAKE_LAUNCHER_EXE"]
    ignore_term = os.environ.get("FAKE_LAUNCHER_IGNORE_TERM") == "1"
    pid = daemonize_exec(exe, ["600"], ignore_term)
    wait_for_comm(pid, os.path.basename(exe)[:15])
    write_atomic("child.json", json.dumps({"pid": pid}))
    ready()
    if os.environ.get("FAKE_LAUNCHER_DIE_BY_SIGKILL") == "1":
        os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    # The monitor starts the launcher with its termination signals blocked; the real one
    # unblocks them once its handlers exist. This stand-in unblocks them at once (its
    # modes set their own dispositions), and so do what it spawns.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT,
                                                signal.SIGHUP))
    os.makedirs(STATE, exist_ok=True)
    write_atomic("argv.json", json.dumps(sys.argv[1:]))
    write_atomic("pid", str(os.getpid()))
    if MODE == "exit":
        ready()
    elif MODE == "record-signals":
        record_signals()
        ready()
        wait_for_release()
    elif MODE == "ignore-term":
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(signum, signal.SIG_IGN)
        ready()
        time.sleep(MAX_LIFETIME_S)
    elif MODE == "signal":
        own = int(os.environ["FAKE_LAUNCHER_SIGNAL"])
        # No core file from the SIGSEGV test (and no apport/systemd-coredump delay).
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if own not in (signal.SIGKILL, signal.SIGSTOP):  # those cannot be caught anyway
            signal.signal(own, signal.SIG_DFL)
        ready()
        os.kill(os.getpid(), own)
        time.sleep(MAX_LIFETIME_S)
    elif MODE == "orphan":
        mode_orphan()
    elif MODE in ("qemu", "daemon"):
        mode_daemonize()
    else:
        sys.exit(f"fake launcher: unknown FAKE_LAUNCHER_MODE {MODE!r}")
    sys.exit(EXIT_CODE)


if __name__ == "__main__":
    main()
