"""The monitor's JSON-lines logger."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from monitor import log
from monitor.exitcodes import ExitCode


@pytest.fixture
def captured(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    previous = log.set_fd(fd)
    try:
        yield path
    finally:
        log.set_fd(previous)
        log.set_level("info")
        os.close(fd)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_record_shape(captured: Path) -> None:
    log.info("hello", pid=3, args=["a", "b"], ok=True, nothing=None, ratio=0.5)
    (record,) = lines(captured)
    assert list(record)[:4] == ["timestamp", "level", "component", "msg"]
    assert record == {**record, "level": "info", "component": "virt-launcher-monitor",
                      "msg": "hello", "pid": 3, "args": ["a", "b"], "ok": True,
                      "nothing": None, "ratio": 0.5}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", record["timestamp"])
    stamp = datetime.fromisoformat(record["timestamp"])
    assert stamp.tzinfo == UTC
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60


@pytest.mark.parametrize("text", ['quote " backslash \\ ', "nl\ncr\rtab\t\x00\x1f\x7f",
                                  "ünïcödé ✓ 🚀", "lone \udcff surrogate", ""])
def test_escaping_round_trips(captured: Path, text: str) -> None:
    log.warning(text, value=text)
    # The file is valid UTF-8 (a lone surrogate is written as a \\udcff escape, which
    # json.loads turns back into the same string).
    captured.read_bytes().decode("utf-8")
    (record,) = lines(captured)
    assert record["msg"] == text
    assert record["value"] == text


def test_special_numbers_and_enums(captured: Path) -> None:
    log.error("x", code=ExitCode.USAGE, inf=float("inf"), nan=float("nan"), big=2**70)
    (record,) = lines(captured)
    assert record["code"] == 2
    assert record["inf"] == "inf"
    assert record["nan"] == "nan"
    assert record["big"] == 2**70


def test_reserved_keys_cannot_be_overwritten(captured: Path) -> None:
    log.emit("info", "real", {"msg": "fake", "level": "x", "timestamp": "y",
                              "component": "qemu"})
    (record,) = lines(captured)
    assert (record["msg"], record["level"], record["component"]) == ("real", "info", "qemu")
    assert (record["ctx_msg"], record["ctx_level"], record["ctx_timestamp"]) == ("fake", "x",
                                                                                 "y")


def test_debug_filtered_by_level(captured: Path) -> None:
    log.debug("hidden")
    log.set_level("debug")
    log.debug("shown")
    assert [r["msg"] for r in lines(captured)] == ["shown"]


def test_one_line_per_record(captured: Path) -> None:
    for i in range(50):
        log.info(f"line {i}\nwith newline")
    assert len(captured.read_text().splitlines()) == 50


def test_never_raises_on_a_bad_descriptor() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # EPIPE on write (SIGPIPE is ignored by Python)
    previous = log.set_fd(write_fd)
    try:
        log.info("into a broken pipe")
        os.close(write_fd)
        log.info("into a closed descriptor")  # EBADF
    finally:
        log.set_fd(previous)


def test_unknown_types_are_strings() -> None:
    assert log.encode(Path("/x")) == '"/x"'
    assert log.encode((1, "a", None)) == '[1,"a",null]'
