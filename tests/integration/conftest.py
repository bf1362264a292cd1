from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.notify_support import ReceiverProc


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short paths: sun_path holds 108 bytes, pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="pvl-n-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def receivers(workdir: Path) -> Iterator[Callable[..., ReceiverProc]]:
    started: list[ReceiverProc] = []

    def start(*args: str) -> ReceiverProc:
        rec = ReceiverProc(str(workdir / "notify.sock"), *args, log_dir=workdir)
        started.append(rec)
        return rec

    try:
        yield start
    finally:
        for rec in started:
            rec.stop()
        # On failure pytest shows captured output: the receivers' logs go with it.
        for rec in started:
            sys.stderr.write(f"--- receiver pid {rec.proc.pid} stderr ---\n{rec.stderr_text()}")
