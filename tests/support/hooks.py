"""Hook sidecar processes for the tests: each one a separate `python -m` process serving its
socket in <hooks dir>/<subdir>/, as a sidecar container serves its own subPath mount of
the pod's hooks directory."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.harness import wait_for

REPO = Path(__file__).resolve().parents[2]
TEST_SIDECAR = "tests.support.hook_sidecar"
SMBIOS_SIDECAR = "hack.hooks.smbios"
SHIM_SIDECAR = "hack.hooks.shim"


@dataclass
class SidecarProc:
    name: str
    socket: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Sidecars:
    hooks_dir: Path
    procs: list[SidecarProc] = field(default_factory=list)

    def start(self, module: str, name: str, *args: str, subdir: str | None = None,
              wait: bool = True) -> SidecarProc:
        """Run `module` as sidecar `name` in <hooks_dir>/<subdir or name>/."""
        directory = self.hooks_dir / (subdir or name)
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o755)
        log = self.hooks_dir.parent / f"sidecar-{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, "--socket-dir", str(directory), "--name", name,
                 *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        side = SidecarProc(name, directory / f"{name}.sock", proc, log)
        self.procs.append(side)
        if wait:
            wait_for(lambda: side.socket.exists() or proc.poll() is not None, 30,
                     what=f"sidecar {name}'s socket")
            assert proc.poll() is None, side.output()
        return side

    def stop(self) -> None:
        for side in self.procs:
            if side.proc.poll() is None:
                side.proc.send_signal(signal.SIGTERM)
        for side in self.procs:
            try:
                side.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                side.proc.kill()
                side.proc.wait(timeout=5)

    def dump(self) -> str:
        return "\n".join(f"===== sidecar {s.name} (exit {s.proc.poll()}) =====\n{s.output()}"
                         for s in self.procs)


@contextlib.contextmanager
def sidecars(hooks_dir: str | Path) -> Iterator[Sidecars]:
    """Sidecar processes in `hooks_dir`, all stopped afterwards; their logs are printed when
    the test failed (pytest shows captured stdout of failing tests only)."""
    group = Sidecars(Path(hooks_dir))
    Path(hooks_dir).mkdir(parents=True, exist_ok=True)
    try:
        yield group
    finally:
        group.stop()
        sys.stdout.write(group.dump() + "\n")
