"""Real-component harness: a monitor + launcher + real libvirt daemons in a private
runtime root, as root (system mode; the launcher puts the daemons in private mount
namespaces) or as an unprivileged user (session mode).

Every instance gets its own short runtime root under /tmp (UNIX socket paths are limited
to 108 bytes), and teardown kills anything that still references it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from launcher import flags
from launcher.paths import Paths, derive

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
MONITOR = VENV_BIN / "virt-launcher-monitor"
LAUNCHER = VENV_BIN / "virt-launcher"
TEST_USER = "pvl-test"


def ensure_test_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", TEST_USER], check=True)
        return pwd.getpwnam(TEST_USER)


class ExitedEarly(RuntimeError):
    """The process a wait depended on exited before the condition held."""


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.02,
             what: str = "condition", alive: subprocess.Popen[bytes] | None = None) -> Any:
    """The predicate's first true value, polled every `interval`; TimeoutError after
    `timeout`, ExitedEarly as soon as `alive` (the process it depends on) has exited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if alive is not None and alive.poll() is not None:
            raise ExitedEarly(f"exited with {alive.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def socket_accepts(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        return False
    finally:
        s.close()
    return True


def processes_referencing(marker: str) -> list[psutil.Process]:
    """Every process whose command line or environment mentions `marker` (the runtime
    root): daemons, QEMU, and anything auto-spawned with our XDG dirs."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid == me:
            continue
        try:
            if any(marker in arg for arg in proc.info["cmdline"] or ()):
                found.append(proc)
                continue
            env = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if any(marker in v for v in env.values()):
            found.append(proc)
    return found


def kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(procs, timeout=5)


@dataclass
class Instance:
    """One monitor (or bare launcher) with its runtime root."""

    root: Path
    nonroot: bool
    name: str = "testvm"
    namespace: str = "default"
    extra_args: list[str] = field(default_factory=list)
    # Prepended to the command line (e.g. `unshare --pid --fork --mount-proc`: the PID-1
    # tier); then `proc` is the wrapper, not the monitor, and launcher()/daemon_pid() do
    # not apply (tests/e2e/pid1.py finds the processes instead).
    wrapper: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.root.parent / f"{self.root.name}.log"

    @property
    def args(self) -> list[str]:
        args = ["--runtime-root", str(self.root), "--name", self.name,
                "--namespace", self.namespace, "--uid", f"uid-{self.root.name}",
                *self.extra_args]
        if self.nonroot:
            args.append("--run-as-nonroot")
        return args

    @property
    def paths(self) -> Paths:
        return derive(flags.parse(self.args, environ={}))

    def start(self, binary: Path | None = None, env: dict[str, str] | None = None) -> None:
        binary = binary or Path(os.environ.get("PVL_E2E_ENTRYPOINT", MONITOR))
        kwargs: dict[str, Any] = {}
        if self.nonroot:
            user = ensure_test_user()
            kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the Popen for its lifetime
        self.proc = subprocess.Popen(
            [*self.wrapper, str(binary), *self.args], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=str(self.root), env={**os.environ, **(env or {})},
            **kwargs)
        log.close()

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    records.append(obj)
        return records

    def logged(self, msg: str) -> list[dict[str, Any]]:
        return [r for r in self.log_records() if r.get("msg") == msg]

    def wait_running(self, timeout: float = 30.0) -> None:
        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"exited early with {self.proc.returncode}:\n{self.tail()}")
            return bool(self.logged("launcher running"))
        wait_for(up, timeout, interval=0.05, what="launcher running")

    def launcher(self) -> psutil.Process:
        assert self.proc is not None
        me = psutil.Process(self.proc.pid)
        if me.name() != "virt-launcher-m" and "virt-launcher-monitor" not in " ".join(me.cmdline()):
            return me  # started the launcher directly
        kids = [c for c in me.children() if any("virt-launcher" in a and "monitor" not in a
                                                  for a in c.cmdline())]
        assert len(kids) == 1, kids
        return kids[0]

    def daemon_pid(self, name: str) -> int | None:
        with contextlib.suppress(psutil.NoSuchProcess, AssertionError):
            for child in self.launcher().children():
                with contextlib.suppress(psutil.NoSuchProcess):
                    if child.name() == name and child.status() != psutil.STATUS_ZOMBIE:
                        return child.pid
        return None

    def libvirt_reachable(self) -> bool:
        import libvirt  # noqa: PLC0415 - only the e2e tests need it

        try:
            conn = libvirt.open(self.paths.uri)
        except libvirt.libvirtError:
            return False
        try:
            conn.listAllDomains()
            return True
        except libvirt.libvirtError:
            return False
        finally:
            conn.close()

    def virsh(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["virsh", "-c", self.paths.uri, *args], capture_output=True,
                              text=True, timeout=30, check=False)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def tail(self, lines: int = 200) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def leftovers(self) -> list[psutil.Process]:
        return processes_referencing(str(self.root))


@contextlib.contextmanager
def instance(nonroot: bool, on_failure: Callable[[], bool], short_root: bool = False,
             **kwargs: Any) -> Iterator[Instance]:
    # short_root: /p<8>/r instead of /tmp/pvl-<8>/r, for non-root VMs: the session daemon
    # binds the guest agent socket deep under the root (launcher.paths.agent_channel_socket)
    base = tempfile.mkdtemp(prefix="p", dir="/") if short_root else tempfile.mkdtemp(
        prefix="pvl-", dir="/tmp")
    os.chmod(base, 0o755)
    root = Path(base) / "r"
    root.mkdir()
    if nonroot:
        user = ensure_test_user()
        os.chown(root, user.pw_uid, user.pw_gid)
    inst = Instance(root=root, nonroot=nonroot, **kwargs)
    try:
        yield inst
    finally:
        if inst.proc is not None and inst.proc.poll() is None:
            inst.proc.kill()
            inst.proc.wait(timeout=10)
        left = inst.leftovers()
        kill_all(left)
        if on_failure():
            sys.stdout.write(f"\n===== launcher/daemon log ({inst.log_path}) =====\n")
            sys.stdout.write(inst.tail(400) + "\n")
            for log in sorted(Path(inst.paths.qemu_log_dir).glob("*.log")):
                sys.stdout.write(f"===== {log} =====\n{log.read_text(errors='replace')}\n")
        shutil.rmtree(base, ignore_errors=True)
