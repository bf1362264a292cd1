"""The image tier (tests/image): the figures each test records (start to agent, shutdown)
are printed at the end of the run, also from xdist workers."""

from __future__ import annotations

import pytest
from _pytest.terminal import TerminalReporter


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    figures = [(name, value)
               for report in terminalreporter.stats.get("passed", [])
               if isinstance(report, pytest.TestReport) and report.when == "call"
               for name, value in report.user_properties if name.startswith("image_")]
    if figures:
        terminalreporter.section("image figures")
        for name, value in sorted(figures):
            terminalreporter.write_line(f"{name}: {value}")
