"""The launcher's lifecycle states (launcher.supervisor's state machine)."""

from __future__ import annotations

import enum


class State(enum.Enum):
    STARTING = "starting"
    WAITING = "waiting-for-domain"
    RUNNING = "running"
    GRACEFUL = "graceful-shutdown"
    FORCED = "forced-shutdown"
    FINAL_NOTIFY = "final-notify"
    AWAITING_DELETE = "awaiting-delete"
    STOPPING = "stopping"
    STOPPED = "stopped"
