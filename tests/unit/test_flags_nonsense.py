"""Nonsense flags and environment are refused at start-up: the real `virt-launcher` and
`virt-launcher-monitor` from .venv/bin, run as subprocesses with a temporary runtime root.

The contract (README, "Exit codes"): exit code 2 for invalid flags or environment, one
error line naming the flag (or variable), and nothing started: no process left behind, and
the runtime root untouched (the flags are checked before anything is written). A broken
STANDALONE_VMI has its own code, 14, and is refused before any daemon starts (the runtime
directories and config files exist by then, no daemon does).

Found by these tests and fixed in launcher/flags.py, durations.py and __main__.py (each
was accepted, then crashed with a traceback and exit 1 or ran in a busy loop):
--libvirt-log-filters or a runtime root with a quote or a control character (the daemons'
config files cannot carry them), a runtime root too long for the UNIX sockets under it,
agent polling intervals of 0s, durations over Go's maximum or spelled with non-ASCII
digits, a negative VIRT_LAUNCHER_LOG_VERBOSITY, and a relative VIRT_LAUNCHER_RUNTIME_ROOT
reported as --runtime-root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

VENV_BIN = Path(sys.executable).parent
LAUNCHER = VENV_BIN / "virt-launcher"
MONITOR = VENV_BIN / "virt-launcher-monitor"
USAGE = 2
STANDALONE_VMI_FAILED = 14

# (id, extra argv, extra environment, what the message must name)
NONSENSE: list[tuple[str, list[str], dict[str, str], str]] = [
    ("negative-grace", ["--grace-period-seconds", "-1"], {}, "--grace-period-seconds"),
    ("grace-not-a-number", ["--grace-period-seconds", "thirty"], {}, "--grace-period-seconds"),
    ("parsecs", ["--qemu-timeout", "5parsecs"], {}, "--qemu-timeout"),
    ("bare-number-timeout", ["--qemu-timeout", "300"], {}, "--qemu-timeout"),
    ("negative-timeout", ["--qemu-timeout", "-5s"], {}, "--qemu-timeout"),
    ("overflowing-timeout", ["--qemu-timeout", "9999999999h"], {}, "--qemu-timeout"),
    ("arabic-digit-timeout", ["--qemu-timeout", "\u0663s"], {}, "--qemu-timeout"),
    ("zero-interval", ["--qemu-agent-user-interval", "0s"], {}, "--qemu-agent-user-interval"),
    ("zero-fsfreeze-interval", ["--qemu-fsfreeze-status-interval=0"], {},
     "--qemu-fsfreeze-status-interval"),
    ("relative-root", ["--runtime-root", "relative/root"], {}, "--runtime-root"),
    ("relative-root-env", [], {"VIRT_LAUNCHER_RUNTIME_ROOT": "relative/root"},
     "VIRT_LAUNCHER_RUNTIME_ROOT"),
    ("relative-share-dir", ["--kubevirt-share-dir", "var/run/kubevirt"], {},
     "--kubevirt-share-dir"),
    ("verbosity-env-abc", [], {"VIRT_LAUNCHER_LOG_VERBOSITY": "abc"},
     "VIRT_LAUNCHER_LOG_VERBOSITY"),
    ("verbosity-env-negative", [], {"VIRT_LAUNCHER_LOG_VERBOSITY": "-4"},
     "VIRT_LAUNCHER_LOG_VERBOSITY"),
    ("verbosity-flag", ["-v", "loud"], {}, "-v/--v"),
    ("hypervisor-xen", ["--hypervisor", "xen"], {}, "--hypervisor"),
    ("bool-maybe", ["--allow-emulation=maybe"], {}, "--allow-emulation"),
    ("unknown-flag", ["--listen-tcp"], {}, "--listen-tcp"),
    ("hook-sidecars", ["--hook-sidecars", "-2"], {}, "--hook-sidecars"),
    ("log-filters-quote", ["--libvirt-log-filters", '1:qemu" listen_tcp = 1 "'], {},
     "--libvirt-log-filters"),
    ("log-filters-newline", ["--libvirt-log-filters", "1:qemu\nlisten_tcp = 1"], {},
     "--libvirt-log-filters"),
]


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="pvl-flags-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run(binary: Path, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("VIRT_LAUNCHER_RUNTIME_ROOT", "VIRT_LAUNCHER_LOG_VERBOSITY",
                            "STANDALONE_VMI")}
    return subprocess.run([str(binary), *argv], env={**environ, **env}, capture_output=True,
                          text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    records = []
    for line in proc.stdout.splitlines():
        record = json.loads(line)  # every stdout line is one JSON object
        if record["level"] == "error":
            records.append(record)
    return records


def nothing_started(root: Path) -> None:
    left = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(str(root) in arg for arg in proc.info["cmdline"] or ()):
                left.append(proc.info)
        except psutil.Error:
            continue
    assert not left, left


def with_root(root: Path, argv: list[str], env: dict[str, str]) -> list[str]:
    """The runtime root given unless the case is about it."""
    if "--runtime-root" in argv or "VIRT_LAUNCHER_RUNTIME_ROOT" in env:
        return argv
    return ["--runtime-root", str(root), *argv]


@pytest.mark.parametrize("binary", [LAUNCHER, MONITOR], ids=["launcher", "monitor"])
@pytest.mark.parametrize(("argv", "env", "names"),
                         [pytest.param(a, e, n, id=i) for i, a, e, n in NONSENSE])
def test_nonsense_is_refused_at_start_up(root: Path, binary: Path, argv: list[str],
                                         env: dict[str, str], names: str) -> None:
    proc = run(binary, with_root(root, argv, env), env)
    assert proc.returncode == USAGE, (proc.returncode, proc.stdout, proc.stderr)
    (record,) = error_lines(proc)
    assert record["msg"].startswith("invalid command line"), record
    assert names in record["error"], record
    if binary == MONITOR:
        # The monitor refuses it itself, before starting a launcher, and says so on
        # stderr too (kubectl logs shows both streams).
        assert "launcher started" not in proc.stdout
        assert f"virt-launcher-monitor: error: {record['error']}" in proc.stderr
    else:
        assert proc.stderr == "", proc.stderr  # no traceback
    assert list(root.iterdir()) == [], "the runtime root was written to"
    nothing_started(root)


def test_a_runtime_root_too_long_for_unix_sockets_is_refused(root: Path) -> None:
    deep = root / ("d" * 90)
    for binary in (LAUNCHER, MONITOR):
        proc = run(binary, ["--runtime-root", str(deep)], {})
        assert proc.returncode == USAGE, (proc.returncode, proc.stdout, proc.stderr)
        (record,) = error_lines(proc)
        assert record["error"].startswith("--runtime-root / --kubevirt-share-dir: socket "
                                          f"path {deep}/"), record
        assert record["error"].endswith("is longer than 107 bytes (the UNIX socket limit)")
    assert not deep.exists()
    nothing_started(root)


@pytest.mark.parametrize("binary", [LAUNCHER, MONITOR], ids=["launcher", "monitor"])
@pytest.mark.parametrize(("text", "says"), [
    ("{{{", "STANDALONE_VMI: invalid JSON"),
    ("- just\n- a list\n", "STANDALONE_VMI: expected a VirtualMachineInstance object, got array"),
    ("", "STANDALONE_VMI: is set but empty"),
    ('{"metadata": {"name": 7, "namespace": "ns"}}',
     "STANDALONE_VMI: metadata.name: expected a string, got number"),
    ("key: !!python/object/apply:os.system ['touch /tmp/pvl-pwned']",
     "STANDALONE_VMI: invalid YAML"),
], ids=["json", "not-an-object", "empty", "wrong-type", "unsafe-yaml"])
def test_standalone_vmi_garbage_exits_14_before_any_daemon(
        root: Path, binary: Path, text: str, says: str) -> None:
    proc = run(binary, ["--runtime-root", str(root)], {"STANDALONE_VMI": text})
    assert proc.returncode == STANDALONE_VMI_FAILED, (proc.returncode, proc.stdout,
                                                      proc.stderr)
    (record,) = error_lines(proc)
    assert record["msg"] == "STANDALONE_VMI rejected; exiting", record
    assert record["error"].startswith(says), record
    logged = [json.loads(line)["msg"] for line in proc.stdout.splitlines()]
    assert "daemon started" not in logged, logged
    assert not os.path.exists("/tmp/pvl-pwned")
    sockets = [p for p in root.rglob("*") if p.is_socket()]
    assert sockets == [], sockets
    nothing_started(root)
