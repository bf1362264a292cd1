"""How the monitor finds the launcher binary."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from monitor.spawn import LAUNCHER_NAME, resolve_launcher, which


def make_exe(path: Path, executable: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755 if executable else 0o644)
    return path


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    return {
        "monitor": make_exe(tmp_path / "bin" / "virt-launcher-monitor"),
        "beside": make_exe(tmp_path / "bin" / LAUNCHER_NAME),
        "on_path": make_exe(tmp_path / "path" / LAUNCHER_NAME),
        "path_dir": tmp_path / "path",
    }


def env_path(*dirs: Path) -> dict[str, str]:
    return {"PATH": os.pathsep.join(str(d) for d in dirs)}


def test_explicit_path_wins(layout: dict[str, Path], tmp_path: Path) -> None:
    explicit = tmp_path / "elsewhere" / "my-launcher"
    # Returned even when missing: spawning it then fails with a clear error (exit 127).
    assert resolve_launcher(str(explicit), str(layout["monitor"]),
                            env_path(layout["path_dir"])) == str(explicit)


def test_explicit_bare_name_is_looked_up_on_path(layout: dict[str, Path]) -> None:
    assert resolve_launcher(LAUNCHER_NAME, str(layout["monitor"]),
                            env_path(layout["path_dir"])) == str(layout["on_path"])
    assert resolve_launcher("nope", str(layout["monitor"]),
                            env_path(layout["path_dir"])) is None


def test_beside_the_monitor(layout: dict[str, Path]) -> None:
    assert resolve_launcher("", str(layout["monitor"]),
                            env_path(layout["path_dir"])) == str(layout["beside"])


def test_beside_the_monitor_symlink_target(layout: dict[str, Path], tmp_path: Path) -> None:
    link_dir = tmp_path / "links"
    link_dir.mkdir()
    link = link_dir / "virt-launcher-monitor"
    link.symlink_to(layout["monitor"])
    assert resolve_launcher("", str(link), env_path(layout["path_dir"])) == str(layout["beside"])


def test_beside_the_invoked_path_before_the_resolved_one(layout: dict[str, Path],
                                                         tmp_path: Path) -> None:
    link_dir = tmp_path / "links"
    link = link_dir / "virt-launcher-monitor"
    own = make_exe(link_dir / LAUNCHER_NAME)
    link.symlink_to(layout["monitor"])
    assert resolve_launcher("", str(link), env_path(layout["path_dir"])) == str(own)


def test_falls_back_to_path(layout: dict[str, Path]) -> None:
    layout["beside"].unlink()
    assert resolve_launcher("", str(layout["monitor"]),
                            env_path(layout["path_dir"])) == str(layout["on_path"])


def test_non_executable_is_skipped(layout: dict[str, Path]) -> None:
    layout["beside"].chmod(0o644)
    assert resolve_launcher("", str(layout["monitor"]),
                            env_path(layout["path_dir"])) == str(layout["on_path"])


def test_argv0_that_is_not_a_file(layout: dict[str, Path]) -> None:
    # "python -c": argv[0] is "-c"; nothing beside it to find.
    assert resolve_launcher("", "-c", env_path(layout["path_dir"])) == str(layout["on_path"])


def test_not_found(tmp_path: Path) -> None:
    monitor = make_exe(tmp_path / "bin" / "virt-launcher-monitor")
    assert resolve_launcher("", str(monitor), env_path(tmp_path / "empty")) is None


def test_which_skips_directories_named_like_the_binary(tmp_path: Path) -> None:
    (tmp_path / "a" / LAUNCHER_NAME).mkdir(parents=True)
    found = make_exe(tmp_path / "b" / LAUNCHER_NAME)
    assert which(LAUNCHER_NAME, env_path(tmp_path / "a", tmp_path / "b")) == str(found)
