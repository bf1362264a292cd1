"""launcher.qemu_watch takes QEMU's pid from libvirt's pid file only when that pid is QEMU
now: a stale file whose pid was recycled by qemu-img or qemu-nbd (which the launcher runs
itself for disk preparation) must not count, or the launcher would watch, and on shutdown
signal, the wrong process. Real processes, named as those binaries are (a copy of sleep)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher import qemu_watch


@pytest.fixture
def named(tmp_path: Path) -> Iterator[dict[str, int]]:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for name in ("qemu-img", "qemu-nbd", "qemu-ga", "qemu-system-x86_64", "qemu-kvm"):
        binary = tmp_path / name
        shutil.copy("/bin/sleep", binary)
        procs[name] = subprocess.Popen([str(binary), "60"])
    try:
        yield {name: p.pid for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


@pytest.mark.parametrize(("name", "is_qemu"), [
    ("qemu-img", False), ("qemu-nbd", False), ("qemu-ga", False),
    ("qemu-system-x86_64", True), ("qemu-kvm", True),
])
def test_only_qemu_counts(named: dict[str, int], tmp_path: Path, name: str,
                          is_qemu: bool) -> None:
    pidfile = tmp_path / "default_vm.pid"
    pidfile.write_text(f"{named[name]}\n")
    assert qemu_watch.read_pid(str(pidfile)) == (named[name] if is_qemu else None)
