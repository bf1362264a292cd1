from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from tests.conftest import failed
from tests.support.guest import Receiver
from tests.support.harness import Instance, instance


@pytest.fixture(scope="session", autouse=True)
def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("e2e tests need root (system mode, mount namespaces, a test user); "
                    "run `make test` as root")


@pytest.fixture
def make_instance(request: pytest.FixtureRequest) -> Iterator[Callable[..., Instance]]:
    with ExitStack() as stack:
        def make(nonroot: bool = False, **kwargs: Any) -> Instance:
            return stack.enter_context(instance(nonroot, lambda: failed(request), **kwargs))
        yield make


@pytest.fixture
def receiver_for() -> Iterator[Callable[..., Receiver]]:
    receivers: list[Receiver] = []

    def make(inst: Instance, virt_handler: bool = False) -> Receiver:
        r = Receiver(inst, virt_handler=virt_handler)
        r.start()
        receivers.append(r)
        return r

    yield make
    for r in receivers:
        r.stop()
