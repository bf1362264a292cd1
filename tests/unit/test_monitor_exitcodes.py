"""Exit codes: the launcher's status, and 128+N for a death by signal N."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from monitor.exitcodes import (
    EXIT_SPAWN_FAILED,
    EXIT_USAGE,
    SIGNAL_EXIT_BASE,
    ExitCode,
    code_from_wait_status,
)


def test_named_constants() -> None:
    assert EXIT_USAGE is ExitCode.USAGE
    assert EXIT_SPAWN_FAILED is ExitCode.SPAWN_FAILED
    assert (int(EXIT_USAGE), int(EXIT_SPAWN_FAILED)) == (2, 127)
    assert SIGNAL_EXIT_BASE == 128


@pytest.mark.parametrize("code", [0, 1, 7, 126, 255])
def test_normal_exit(code: int) -> None:
    assert code_from_wait_status(code << 8) == code


@pytest.mark.parametrize(("signum", "expected"), [(signal.SIGKILL, 137),
                                                  (signal.SIGTERM, 143),
                                                  (signal.SIGSEGV, 139)])
def test_signal_death(signum: int, expected: int) -> None:
    assert code_from_wait_status(signum) == expected
    # The core-dumped flag (0x80) does not change the code.
    assert code_from_wait_status(signum | 0x80) == expected


def test_matches_real_wait_statuses() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(9)"])
    _, status = os.waitpid(proc.pid, 0)
    proc.returncode = 9  # reaped here, not by Popen
    assert code_from_wait_status(status) == 9

    proc = subprocess.Popen([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"])
    _, status = os.waitpid(proc.pid, 0)
    proc.returncode = -9
    assert code_from_wait_status(status) == 137


def test_stopped_status_is_an_error() -> None:
    with pytest.raises(ValueError, match="stopped"):
        code_from_wait_status((signal.SIGSTOP << 8) | 0x7F)
