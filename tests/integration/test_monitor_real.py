"""virt-launcher-monitor with real processes and real signals.

The launcher is tests/integration/fake_launcher.py behind an executable wrapper; it gets
only the launcher's flags, so it is configured through FAKE_LAUNCHER_* variables. Every
process a test starts carries a unique marker in its environment, and the fixture kills
whatever still carries it, even when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest

from tests.conftest import failed

REPO = Path(__file__).resolve().parents[2]
FAKE_LAUNCHER = Path(__file__).with_name("fake_launcher.py")
CONSOLE_SCRIPT = Path(sys.executable).parent / "virt-launcher-monitor"
MARKER_ENV = "PVL_MONITOR_TEST_MARKER"
SLEEP = "/bin/sleep"

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str,
               interval: float = 0.02) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def proc_gone(pid: int) -> bool:
    """Gone, not merely dead: a zombie still has its /proc entry."""
    return not os.path.exists(f"/proc/{pid}")


def comm_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def marked_pids(marker: str, tmp: Path) -> list[int]:
    """Live (non-zombie) processes whose environment carries the marker or whose command
    line mentions the test's tmp_path (the fake executables live there)."""
    found = []
    needle = f"{MARKER_ENV}={marker}".encode()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if needle in environ.split(b"\0") or str(tmp).encode() in cmdline:
            found.append(int(name))
    return found


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.root = tmp_path / "root"
        self.state = tmp_path / "state"
        self.bin = tmp_path / "bin"
        for d in (self.root, self.state, self.bin):
            d.mkdir()
        self.marker = f"pvl-monitor-{uuid.uuid4().hex}"
        self.launcher = self.bin / "virt-launcher"
        self.launcher.write_text(
            f"#!{sys.executable}\n"
            "import runpy\n"
            f"runpy.run_path({str(FAKE_LAUNCHER)!r}, run_name='__main__')\n"
        )
        self.launcher.chmod(0o755)
        self.stdout_path = tmp_path / "monitor.out"
        self.stderr_path = tmp_path / "monitor.err"
        self.procs: list[subprocess.Popen[bytes]] = []
        self._files: list[IO[bytes]] = []

    # --- starting things -----------------------------------------------------------
    def exe(self, name: str, target: str = SLEEP) -> Path:
        """A symlink named `name` to `target`: exec'ing it gives the process comm `name`."""
        link = self.bin / name
        link.symlink_to(target)
        return link

    def env(self, mode: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_LAUNCHER_")}
        env.update({
            "FAKE_LAUNCHER_MODE": mode,
            "FAKE_LAUNCHER_STATE_DIR": str(self.state),
            MARKER_ENV: self.marker,
        })
        env.update(extra or {})
        return env

    def base_flags(self) -> list[str]:
        return ["--launcher-binary", str(self.launcher), "--runtime-root", str(self.root),
                "--namespace", "default", "--name", "vm"]

    def start(self, mode: str, *flags: str, env: dict[str, str] | None = None,
              console_script: bool = False,
              base_flags: bool = True) -> subprocess.Popen[bytes]:
        command = [str(CONSOLE_SCRIPT)] if console_script else [sys.executable, "-m", "monitor"]
        argv = [*command, *(self.base_flags() if base_flags else []), *flags]
        out = self.stdout_path.open("ab")
        err = self.stderr_path.open("ab")
        self._files += [out, err]
        proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=REPO,
                                env=self.env(mode, env), start_new_session=True)
        self.procs.append(proc)
        return proc

    def output(self) -> IO[bytes]:
        f = self.stdout_path.open("ab")
        self._files.append(f)
        return f

    def spawn_marked(self, argv: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, env=self.env("none"), start_new_session=True)
        self.procs.append(proc)
        return proc

    # --- observing ---------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        """The monitor's log; every line must be one JSON object with the common keys."""
        out = []
        for line in self.stdout_path.read_text(errors="strict").splitlines():
            record = json.loads(line)
            assert {"timestamp", "level", "component", "msg"} <= record.keys(), line
            out.append(record)
        return out

    def find_records(self, msg_part: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if msg_part in r["msg"]]

    def wait_record(self, msg_part: str, timeout: float = 20) -> dict[str, Any]:
        found = wait_until(lambda: self.find_records(msg_part), timeout,
                           f"a log record containing {msg_part!r}")
        return found[0]

    def state_file(self, name: str) -> Path:
        return self.state / name

    def wait_ready(self, timeout: float = 20) -> None:
        wait_until(self.state_file("ready").exists, timeout, "the fake launcher to be ready")

    def events(self) -> list[str]:
        try:
            return self.state_file("events").read_text().splitlines()
        except FileNotFoundError:
            return []

    def json_state(self, name: str, timeout: float = 20) -> Any:
        path = self.state_file(name)
        wait_until(path.exists, timeout, f"{name} from the fake launcher")
        return json.loads(path.read_text())

    def release(self) -> None:
        self.state_file("release").write_text("")

    def wait_exit(self, proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"monitor did not exit within {timeout}s; log:\n{self.stdout_path.read_text()}"
            ) from None

    # --- cleaning up -------------------------------------------------------------
    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        leftovers = marked_pids(self.marker, self.tmp)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # Orphans are reaped by init (or a dead monitor's adopter); wait until they are.
        deadline = time.monotonic() + 10
        while marked_pids(self.marker, self.tmp) and time.monotonic() < deadline:
            time.sleep(0.05)
        for f in self._files:
            f.close()


@pytest.fixture
def harness(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.cleanup()
        if failed(request):
            for path in (h.stdout_path, h.stderr_path, h.state / "events"):
                if path.exists():
                    print(f"--- {path.name} ---\n{path.read_text(errors='replace')}")


def assert_gone(h: Harness, pid: int) -> None:
    if proc_gone(pid):
        return
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return
    raise AssertionError(f"pid {pid} still exists:\n{status}\nmonitor log:\n"
                         f"{h.stdout_path.read_text()}")


def assert_nothing_left(h: Harness) -> None:
    assert wait_until(lambda: not marked_pids(h.marker, h.tmp), 5, "marked processes to go")


# --- a) signal forwarding --------------------------------------------------------------
def test_forwards_every_shutdown_signal_as_sigterm(harness: Harness) -> None:
    monitor = harness.start("record-signals")
    harness.wait_ready()
    sent = [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT]
    for count, signum in enumerate(sent, start=1):
        os.kill(monitor.pid, signum)
        # One at a time: the fake's Python handler would coalesce a burst into one call.
        wait_until(lambda: len(harness.events()) >= count,  # noqa: B023 (used at once)
                   10, f"{count} signal(s) at the launcher")
    assert harness.events() == [f"signal {int(signal.SIGTERM)}"] * 3
    harness.release()
    assert harness.wait_exit(monitor) == 0
    forwarded = harness.find_records("forwarding signal")
    assert [r["signal"] for r in forwarded] == ["SIGTERM", "SIGINT", "SIGQUIT"]
    assert harness.records()[-1]["msg"] == "exiting"
    assert_nothing_left(harness)


# --- b) orphan reaping -----------------------------------------------------------------
def test_reaps_orphaned_grandchild_while_running(harness: Harness) -> None:
    monitor = harness.start("orphan", "-v", "3")
    orphan = harness.json_state("child.json")
    # Adopted by the monitor (child subreaper), not by init: otherwise this proves nothing.
    assert orphan["ppid"] == monitor.pid
    wait_until(lambda: proc_gone(orphan["pid"]), 10, "the orphan to be reaped (no zombie)")
    assert monitor.poll() is None
    reaped = harness.wait_record("reaped process")
    assert reaped["pid"] == orphan["pid"]
    assert reaped["exit_code"] == 0
    harness.release()
    assert harness.wait_exit(monitor) == 0
    assert_nothing_left(harness)


# --- c) leftover QEMU --------------------------------------------------------------------
def test_terminates_leftover_qemu_child(harness: Harness) -> None:
    qemu = harness.exe("qemu-system-x86_64")
    monitor = harness.start("qemu", "-v", "3", env={"FAKE_LAUNCHER_EXE": str(qemu)})
    pid = harness.json_state("child.json")["pid"]
    assert harness.wait_exit(monitor, 20) == 0
    assert_gone(harness, pid)
    ladder = harness.find_records("terminating leftover QEMU")
    assert ladder[0]["pids"] == [pid]
    assert ladder[0]["comms"] == ["qemu-system-x86"]
    assert not harness.find_records("SIGKILL")
    reaped = [r for r in harness.find_records("reaped process") if r["pid"] == pid]
    assert reaped[0]["signal"] == "SIGTERM"
    assert_nothing_left(harness)


def test_kills_leftover_qemu_that_ignores_sigterm(harness: Harness) -> None:
    qemu = harness.exe("qemu-system-x86_64")
    started = time.monotonic()
    monitor = harness.start("qemu", "-v", "3", env={"FAKE_LAUNCHER_EXE": str(qemu),
                                                     "FAKE_LAUNCHER_IGNORE_TERM": "1"})
    pid = harness.json_state("child.json")["pid"]
    assert harness.wait_exit(monitor, 40) == 0
    elapsed = time.monotonic() - started
    assert_gone(harness, pid)
    assert 10 <= elapsed < 20, elapsed
    assert harness.find_records("sending SIGKILL")[0]["pids"] == [pid]
    reaped = [r for r in harness.find_records("reaped process") if r["pid"] == pid]
    assert reaped[0]["signal"] == "SIGKILL"
    assert_nothing_left(harness)


def test_terminates_qemu_named_by_pid_file_only(harness: Harness) -> None:
    """A QEMU that is not our child (here: the test's) is found through libvirt's pid file;
    a pid file naming a non-QEMU process is left alone."""
    qemu = harness.spawn_marked([str(harness.exe("qemu-system-x86_64")), "600"])
    bystander = harness.spawn_marked([str(harness.exe("not-qemu")), "600"])
    wait_until(lambda: comm_of(qemu.pid) == "qemu-system-x86", 10, "fake QEMU to exec")
    pid_dir = harness.root / "var" / "run" / "libvirt" / "qemu"  # Paths.qemu_pid_dir
    pid_dir.mkdir(parents=True)
    (pid_dir / "default_vm.pid").write_text(f"{qemu.pid}\n")
    (pid_dir / "stale.pid").write_text(f"{bystander.pid}\n")
    started = time.monotonic()
    monitor = harness.start("exit")
    assert harness.wait_exit(monitor, 20) == 0
    # Not our child: it stays a zombie until the test reaps it, which counts as gone.
    assert time.monotonic() - started < 8
    assert qemu.wait(5) == -signal.SIGTERM
    assert bystander.poll() is None


def test_dumps_qemu_logs(harness: Harness) -> None:
    log_dir = harness.root / "var" / "log" / "libvirt" / "qemu"
    log_dir.mkdir(parents=True)
    (log_dir / "default_vm.log").write_text(
        "".join(f"line {i} \"quoted\" \t tab\n" for i in range(250))
    )
    (log_dir / "not-a-log.txt").write_text("ignored\n")
    monitor = harness.start("exit")
    assert harness.wait_exit(monitor) == 0
    lines = [r for r in harness.records() if r.get("source") == "qemu-log"]
    assert len(lines) == 200
    assert lines[0]["msg"] == 'line 50 "quoted" \t tab'
    assert lines[-1]["msg"] == 'line 249 "quoted" \t tab'
    assert {r["file"] for r in lines} == {"default_vm.log"}
    assert {r["component"] for r in lines} == {"virt-launcher-monitor"}


# --- d) hung launcher ----------------------------------------------------------------------
def test_sigkills_launcher_that_ignores_sigterm(harness: Harness) -> None:
    # The default allowance is the launcher's whole shutdown budget (minutes, see
    # tests/unit/test_shutdown_budget.py); a short one keeps this test quick.
    monitor = harness.start("ignore-term", "--grace-period-seconds", "1",
                            "--launcher-stop-timeout", "15s")
    harness.wait_ready()
    started = time.monotonic()
    os.kill(monitor.pid, signal.SIGTERM)
    assert harness.wait_exit(monitor, 40) == 128 + signal.SIGKILL
    elapsed = time.monotonic() - started
    assert 15 <= elapsed < 25, elapsed
    assert harness.find_records("launcher did not exit in time")
    assert_nothing_left(harness)


# --- e) exit codes -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "env", "expected", "console_script"),
    [
        ("exit", {"FAKE_LAUNCHER_EXIT_CODE": "0"}, 0, True),
        ("exit", {"FAKE_LAUNCHER_EXIT_CODE": "7"}, 7, False),
        ("signal", {"FAKE_LAUNCHER_SIGNAL": str(int(signal.SIGSEGV))}, 139, False),
        ("signal", {"FAKE_LAUNCHER_SIGNAL": str(int(signal.SIGKILL))}, 137, True),
    ],
)
def test_propagates_launcher_exit_status(harness: Harness, mode: str, env: dict[str, str],
                                         expected: int, console_script: bool) -> None:
    monitor = harness.start(mode, env=env, console_script=console_script)
    assert harness.wait_exit(monitor) == expected
    exited = harness.find_records("launcher exited")
    assert exited[0]["exit_code"] == expected
    last = harness.records()[-1]
    assert (last["msg"], last["exit_code"]) == ("exiting", expected)


# --- f) flags --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--no-such-flag"], "--no-such-flag"),
        (["--grace-period-seconds", "soon"], "--grace-period-seconds"),
    ],
)
def test_bad_flag_exits_2_and_spawns_nothing(harness: Harness, flags: list[str],
                                             named: str) -> None:
    monitor = harness.start("exit", *flags)
    assert harness.wait_exit(monitor) == 2
    (record,) = harness.records()
    assert record["level"] == "error"
    assert named in record["msg"]
    assert named in harness.stderr_path.read_text()
    assert not harness.state_file("argv.json").exists()


def test_help_exits_0(harness: Harness) -> None:
    monitor = harness.start("exit", "--help", base_flags=False)
    assert harness.wait_exit(monitor) == 0
    out = harness.stdout_path.read_text()
    assert out.startswith("usage: virt-launcher-monitor")
    assert "--keep-after-failure" in out
    assert not harness.state_file("argv.json").exists()


def test_keep_after_failure_blocks_until_sigterm(harness: Harness) -> None:
    monitor = harness.start("exit", "--keep-after-failure", "-v", "2",
                            env={"FAKE_LAUNCHER_EXIT_CODE": "3"})
    harness.wait_record("keeping the monitor alive")
    time.sleep(1)  # the point is that nothing happens: there is no event to wait for
    assert monitor.poll() is None
    os.kill(monitor.pid, signal.SIGTERM)
    assert harness.wait_exit(monitor) == 3
    argv = harness.json_state("argv.json")
    assert argv == ["--runtime-root", str(harness.root), "--namespace", "default",
                    "--name", "vm", "-v", "2"]


def test_keep_after_failure_exits_at_once_on_success(harness: Harness) -> None:
    monitor = harness.start("exit", "--keep-after-failure=true")
    assert harness.wait_exit(monitor, 10) == 0
    assert not harness.find_records("keeping")


def test_unresolvable_launcher_exits_127(harness: Harness) -> None:
    monitor = harness.start("exit", "--launcher-binary", str(harness.tmp / "missing"),
                            base_flags=False)
    assert harness.wait_exit(monitor) == 127
    assert harness.find_records("cannot start the launcher")


def test_launcher_not_found_anywhere_exits_127(harness: Harness) -> None:
    # No --launcher-binary: nothing beside `python -m monitor`'s __main__.py, empty PATH.
    monitor = harness.start("exit", base_flags=False, env={"PATH": str(harness.tmp / "none")})
    assert harness.wait_exit(monitor) == 127
    assert harness.find_records("cannot find the launcher")


# --- g) daemons left behind ------------------------------------------------------------
@pytest.mark.parametrize(("die_by_sigkill", "expected"), [(False, 0), (True, 137)])
def test_terminates_orphaned_daemons(harness: Harness, die_by_sigkill: bool,
                                     expected: int) -> None:
    daemon = harness.exe("fake-virtlogd")
    monitor = harness.start("daemon", env={
        "FAKE_LAUNCHER_EXE": str(daemon),
        "FAKE_LAUNCHER_DIE_BY_SIGKILL": "1" if die_by_sigkill else "0",
    })
    pid = harness.json_state("child.json")["pid"]
    assert harness.wait_exit(monitor) == expected
    assert_gone(harness, pid)
    ladder = harness.find_records("terminating leftover child processes")
    assert ladder[0]["pids"] == [pid]
    assert not harness.find_records("terminating leftover QEMU")
    assert not marked_pids(harness.marker, harness.tmp)


# --- what the running monitor actually imported ------------------------------------------
FORBIDDEN = ("asyncio", "grpc", "libvirt", "uvloop", "structlog", "subprocess", "threading",
             "psutil", "logging")


def test_full_run_loads_no_forbidden_module(harness: Harness) -> None:
    """Not just the import: a whole run (subreaper, spawn, reap, cleanup ladder)."""
    modules_file = harness.tmp / "modules.json"
    daemon = harness.exe("fake-virtlogd")
    script = (
        "import json, sys\n"
        "from monitor.run import run\n"
        f"code = run({harness.base_flags()!r}, 'virt-launcher-monitor')\n"
        f"open({str(modules_file)!r}, 'w').write(json.dumps(sorted(sys.modules)))\n"
        "sys.exit(code)\n"
    )
    argv = [sys.executable, "-c", script]
    proc = subprocess.Popen(argv, cwd=REPO, env=harness.env("daemon", {
        "FAKE_LAUNCHER_EXE": str(daemon)}), stdout=harness.output())
    harness.procs.append(proc)
    assert harness.wait_exit(proc) == 0
    assert harness.find_records("terminating leftover child processes")
    loaded = json.loads(modules_file.read_text())
    bad = [m for m in loaded if m.split(".")[0] in FORBIDDEN]
    assert bad == []
