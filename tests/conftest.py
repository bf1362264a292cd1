"""Shared pytest hooks: remember each phase's report so fixtures can print logs on failure."""

from __future__ import annotations

from collections.abc import Generator

import pytest


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
