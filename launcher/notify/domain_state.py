"""libvirt domain states and events in KubeVirt's vocabulary (pure tables, no libvirt import:
the values are libvirt's stable ABI numbers)."""

from __future__ import annotations

from enum import IntEnum


class State(IntEnum):  # virDomainState
    NOSTATE = 0
    RUNNING = 1
    BLOCKED = 2
    PAUSED = 3
    SHUTDOWN = 4
    SHUTOFF = 5
    CRASHED = 6
    PMSUSPENDED = 7


# A domain with a QEMU behind it (running, paused, shutting down...): what can be reset,
# dumped, pinged, and what a launcher's shutdown has to bring down.
ALIVE_STATES = (State.RUNNING, State.BLOCKED, State.PAUSED, State.SHUTDOWN, State.PMSUSPENDED)

LIFECYCLE = {
    State.NOSTATE: "NoState",
    State.RUNNING: "Running",
    State.BLOCKED: "Blocked",
    State.PAUSED: "Paused",
    State.SHUTDOWN: "ShuttingDown",
    State.SHUTOFF: "Shutoff",
    State.CRASHED: "Crashed",
    State.PMSUSPENDED: "PMSuspended",
}

# virDomainShutdownReason, virDomainShutoffReason, virDomainCrashedReason,
# virDomainPausedReason -> KubeVirt's StateChangeReason. Other states: "Unknown".
_SHUTDOWN_REASONS = {0: "Unknown", 1: "User"}
_SHUTOFF_REASONS = {0: "Unknown", 1: "Shutdown", 2: "Destroyed", 3: "Crashed", 4: "Migrated",
                    5: "Saved", 6: "Failed", 7: "FromSnapshot"}
_CRASHED_REASONS = {0: "Unknown", 1: "Panicked"}
_PAUSED_REASONS = {0: "Unknown", 1: "User", 2: "Migration", 3: "Save", 4: "Dump",
                   5: "IOError", 6: "Watchdog", 7: "FromSnapshot", 8: "ShuttingDown",
                   9: "Snapshot", 10: "Crashed", 11: "StartingUp", 12: "Postcopy",
                   13: "PostcopyFailed"}
_REASONS = {State.SHUTDOWN: _SHUTDOWN_REASONS, State.SHUTOFF: _SHUTOFF_REASONS,
            State.CRASHED: _CRASHED_REASONS, State.PAUSED: _PAUSED_REASONS}

NON_EXISTENT = ("NoState", "NonExistent")


def status_and_reason(state: int, reason: int) -> tuple[str, str]:
    """KubeVirt's (LifeCycle, StateChangeReason) for a libvirt (state, reason)."""
    try:
        st = State(state)
    except ValueError:
        return "NoState", "Unknown"
    return LIFECYCLE[st], _REASONS.get(st, {}).get(reason, "Unknown")


# Lifecycle events (virDomainEventType) and their details, for logs and event typing.
class Lifecycle(IntEnum):
    DEFINED = 0
    UNDEFINED = 1
    STARTED = 2
    SUSPENDED = 3
    RESUMED = 4
    STOPPED = 5
    SHUTDOWN = 6
    PMSUSPENDED = 7
    CRASHED = 8


LIFECYCLE_DETAILS: dict[Lifecycle, tuple[str, ...]] = {
    Lifecycle.DEFINED: ("ADDED", "UPDATED", "RENAMED", "FROM_SNAPSHOT"),
    Lifecycle.UNDEFINED: ("REMOVED", "RENAMED"),
    Lifecycle.STARTED: ("BOOTED", "MIGRATED", "RESTORED", "FROM_SNAPSHOT", "WAKEUP"),
    Lifecycle.SUSPENDED: ("PAUSED", "MIGRATED", "IOERROR", "WATCHDOG", "RESTORED",
                          "FROM_SNAPSHOT", "API_ERROR", "POSTCOPY", "POSTCOPY_FAILED"),
    Lifecycle.RESUMED: ("UNPAUSED", "MIGRATED", "FROM_SNAPSHOT", "POSTCOPY",
                        "POSTCOPY_FAILED"),
    Lifecycle.STOPPED: ("SHUTDOWN", "DESTROYED", "CRASHED", "MIGRATED", "SAVED", "FAILED",
                        "FROM_SNAPSHOT"),
    Lifecycle.SHUTDOWN: ("FINISHED", "GUEST", "HOST"),
    Lifecycle.PMSUSPENDED: ("MEMORY", "DISK"),
    Lifecycle.CRASHED: ("PANICKED", "CRASHLOADED"),
}


def lifecycle_name(event: int, detail: int) -> str:
    """'STOPPED/FAILED' style names for logs."""
    try:
        ev = Lifecycle(event)
    except ValueError:
        return f"{event}/{detail}"
    details = LIFECYCLE_DETAILS[ev]
    return f"{ev.name}/{details[detail] if 0 <= detail < len(details) else detail}"


STARTED_MIGRATED = 1
DEFINED_ADDED = 0
STOPPED_MIGRATED = 3


def stopped_reason(detail: int | None) -> str:
    """KubeVirt's Shutoff reason for a STOPPED event's detail (virDomainEventStoppedDetailType
    is the shutoff reason minus one: SHUTDOWN 0 -> Shutdown 1, ..., FROM_SNAPSHOT 6 -> 7)."""
    if detail is None or detail < 0:
        return "Unknown"
    return _SHUTOFF_REASONS.get(detail + 1, "Unknown")


def event_type_for(event: int | None, detail: int | None) -> str:
    """As KubeVirt's notify client: ADDED for a newly defined domain (DEFINED/ADDED) or one
    started as a migration target (STARTED/MIGRATED), MODIFIED for everything else (a domain
    that is gone is sent as MODIFIED with metadata.deletionTimestamp)."""
    if event == Lifecycle.DEFINED and detail == DEFINED_ADDED:
        return "ADDED"
    if event == Lifecycle.STARTED and detail == STARTED_MIGRATED:
        return "ADDED"
    return "MODIFIED"


# virConnectDomainEventAgentLifecycleState / Reason
AGENT_STATES = {1: "connected", 2: "disconnected"}
AGENT_REASONS = {0: "unknown", 1: "domain-started", 2: "channel"}

# virDomainEventWatchdogAction
WATCHDOG_ACTIONS = {0: "none", 1: "pause", 2: "reset", 3: "poweroff", 4: "shutdown",
                    5: "debug", 6: "inject-nmi"}
# virDomainEventIOErrorAction
IO_ERROR_ACTIONS = {0: "none", 1: "pause", 2: "report"}
