"""Shared pytest hooks: remember each phase's report so fixtures can print logs on failure."""

from __future__ import annotations

from collections.abc import Generator

import pytest
from _pytest.terminal import TerminalReporter


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def failed(request: pytest.FixtureRequest) -> bool:
    node = request.node
    return any(
        getattr(node, f"rep_{phase}", None) is not None and getattr(node, f"rep_{phase}").failed
        for phase in ("setup", "call")
    )


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    """The figures the image tests record (tests/image: size, start to agent, shutdown),
    printed at the end of the run. Here, not in tests/image/: under xdist only the initial
    conftests are the controller's plugins, and the reports come back to it."""
    figures = [(name, value)
               for report in terminalreporter.stats.get("passed", [])
               if isinstance(report, pytest.TestReport) and report.when == "call"
               for name, value in report.user_properties if name.startswith("image_")]
    if figures:
        terminalreporter.section("image figures")
        for name, value in sorted(figures):
            terminalreporter.write_line(f"{name}: {value}")
