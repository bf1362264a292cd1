"""structlog configuration: one JSON object per line on stdout, configured once.

Keys: timestamp, level, component, msg, plus whatever context is bound (daemon, pid,
domain). stdlib loggers (grpc, asyncio) are routed through the same renderer so nothing
reaches stdout in another format.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_configured = False


def verbosity_to_level(verbosity: int) -> int:
    # KubeVirt's default verbosity is 2; V(3)+ messages are debug detail.
    return logging.DEBUG if verbosity >= 3 else logging.INFO


def configure(component: str, verbosity: int = 2) -> None:
    global _configured
    level = verbosity_to_level(verbosity)

    def add_component(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        # Not a contextvar: callbacks handed over from libvirt's thread (call_soon_threadsafe)
        # run in an empty context, and every line must still say who wrote it.
        event.setdefault("component", component)
        return event

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_component,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.dict_tracebacks,
            structlog.processors.EventRenamer("msg"),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.EventRenamer("msg"),
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if level > logging.DEBUG else logging.DEBUG)
    _configured = True
