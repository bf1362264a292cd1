"""libvirt (state, reason) and lifecycle events in KubeVirt's vocabulary.

Every number comes from the libvirt python module's constants, so these tests prove that our
pure tables (launcher.notify.domain_state, which deliberately does not import libvirt) match
libvirt's ABI, and that the strings match KubeVirt's LifeCycleTranslationMap and its
Shutdown/Shutoff/Crashed/Paused reason maps (pkg/virt-launcher/virtwrap/util; ConvReason
answers "Unknown" for every other state).
"""

from __future__ import annotations

import libvirt
import pytest

from launcher.notify.domain_state import (
    LIFECYCLE,
    LIFECYCLE_DETAILS,
    NON_EXISTENT,
    Lifecycle,
    State,
    event_type_for,
    lifecycle_name,
    status_and_reason,
)

# virDomainState -> KubeVirt LifeCycle
STATES: list[tuple[int, str]] = [
    (libvirt.VIR_DOMAIN_NOSTATE, "NoState"),
    (libvirt.VIR_DOMAIN_RUNNING, "Running"),
    (libvirt.VIR_DOMAIN_BLOCKED, "Blocked"),
    (libvirt.VIR_DOMAIN_PAUSED, "Paused"),
    (libvirt.VIR_DOMAIN_SHUTDOWN, "ShuttingDown"),
    (libvirt.VIR_DOMAIN_SHUTOFF, "Shutoff"),
    (libvirt.VIR_DOMAIN_CRASHED, "Crashed"),
    (libvirt.VIR_DOMAIN_PMSUSPENDED, "PMSuspended"),
]

# (state, libvirt reason constant name, expected KubeVirt reason). Reasons of the four
# translated states come from KubeVirt's maps; libvirt reasons KubeVirt's maps do not list
# (VIR_DOMAIN_SHUTOFF_DAEMON) and every reason of the other states are "Unknown".
REASONS: list[tuple[int, str, str]] = [
    # virDomainShutdownReason
    (libvirt.VIR_DOMAIN_SHUTDOWN, "VIR_DOMAIN_SHUTDOWN_UNKNOWN", "Unknown"),
    (libvirt.VIR_DOMAIN_SHUTDOWN, "VIR_DOMAIN_SHUTDOWN_USER", "User"),
    # virDomainShutoffReason
    (libvirt.VIR_DOMAIN_SHUTOFF, "VIR_DOMAIN_SHUTOFF_UNKNOWN", "Unknown"),
    (libvirt.VIR_DOMAIN_SHUTOFF, "VIR_DOMAIN_SHUTOFF_SHUTDOWN", "Shutdown"),
    (libvirt.VIR_DOMAIN_SHUTOFF, "VIR_DOMAIN_SHUTOFF_DESTROYED", "Destroyed"),
    (libvirt.VIR_DOMAIN_SHUTOFF, "VIR_DOMAIN_SHUTOFF_CRASHED", "Crashed"),
    (libvirt.VIR_DOMAIN_SHUTOFF, "VIR_DOMAIN_SHUTOFF_MIGRATED", "Migrated"),
    (libvirt.VIR_DOMAIN_SHUTOFF, "VIR_DOMAIN_SHUTOFF_SAVED", "Saved"),
    (libvirt.VIR_DOMAIN_SHUTOFF, "VIR_DOMAIN_SHUTOFF_FAILED", "Failed"),
    (libvirt.VIR_DOMAIN_SHUTOFF, "VIR_DOMAIN_SHUTOFF_FROM_SNAPSHOT", "FromSnapshot"),
    (libvirt.VIR_DOMAIN_SHUTOFF, "VIR_DOMAIN_SHUTOFF_DAEMON", "Unknown"),
    # virDomainCrashedReason
    (libvirt.VIR_DOMAIN_CRASHED, "VIR_DOMAIN_CRASHED_UNKNOWN", "Unknown"),
    (libvirt.VIR_DOMAIN_CRASHED, "VIR_DOMAIN_CRASHED_PANICKED", "Panicked"),
    # virDomainPausedReason
    (libvirt.VIR_DOMAIN_PAUSED, "VIR_DOMAIN_PAUSED_UNKNOWN", "Unknown"),
    (libvirt.VIR_DOMAIN_PAUSED, "VIR_DOMAIN_PAUSED_USER", "User"),
    (libvirt.VIR_DOMAIN_PAUSED, "VIR_DOMAIN_PAUSED_MIGRATION", "Migration"),
    (libvirt.VIR_DOMAIN_PAUSED, "VIR_DOMAIN_PAUSED_SAVE", "Save"),
    (libvirt.VIR_DOMAIN_PAUSED, "VIR_DOMAIN_PAUSED_DUMP", "Dump"),
    (libvirt.VIR_DOMAIN_PAUSED, "VIR_DOMAIN_PAUSED_IOERROR", "IOError"),
    (libvirt.VIR_DOMAIN_PAUSED, "VIR_DOMAIN_PAUSED_WATCHDOG", "Watchdog"),
    (libvirt.VIR_DOMAIN_PAUSED, "VIR_DOMAIN_PAUSED_FROM_SNAPSHOT", "FromSnapshot"),
    (libvirt.VIR_DOMAIN_PAUSED, "VIR_DOMAIN_PAUSED_SHUTTING_DOWN", "ShuttingDown"),
    (libvirt.VIR_DOMAIN_PAUSED, "VIR_DOMAIN_PAUSED_SNAPSHOT", "Snapshot"),
    (libvirt.VIR_DOMAIN_PAUSED, "VIR_DOMAIN_PAUSED_CRASHED", "Crashed"),
    (libvirt.VIR_DOMAIN_PAUSED, "VIR_DOMAIN_PAUSED_STARTING_UP", "StartingUp"),
    (libvirt.VIR_DOMAIN_PAUSED, "VIR_DOMAIN_PAUSED_POSTCOPY", "Postcopy"),
    (libvirt.VIR_DOMAIN_PAUSED, "VIR_DOMAIN_PAUSED_POSTCOPY_FAILED", "PostcopyFailed"),
    # States whose reasons KubeVirt does not translate: always "Unknown".
    (libvirt.VIR_DOMAIN_NOSTATE, "VIR_DOMAIN_NOSTATE_UNKNOWN", "Unknown"),
    (libvirt.VIR_DOMAIN_BLOCKED, "VIR_DOMAIN_BLOCKED_UNKNOWN", "Unknown"),
    (libvirt.VIR_DOMAIN_PMSUSPENDED, "VIR_DOMAIN_PMSUSPENDED_UNKNOWN", "Unknown"),
    (libvirt.VIR_DOMAIN_PMSUSPENDED, "VIR_DOMAIN_PMSUSPENDED_DISK_UNKNOWN", "Unknown"),
    *[(libvirt.VIR_DOMAIN_RUNNING, f"VIR_DOMAIN_RUNNING_{r}", "Unknown") for r in (
        "UNKNOWN", "BOOTED", "MIGRATED", "RESTORED", "FROM_SNAPSHOT", "UNPAUSED",
        "MIGRATION_CANCELED", "SAVE_CANCELED", "WAKEUP", "CRASHED", "POSTCOPY",
        "POSTCOPY_FAILED")],
]

# Reason enums whose every libvirt constant must appear in REASONS (completeness check).
# VIR_DOMAIN_SHUTDOWN_* is not listed: that prefix is shared with virDomainShutdownFlagValues.
REASON_PREFIXES = {
    "VIR_DOMAIN_SHUTOFF_": libvirt.VIR_DOMAIN_SHUTOFF,
    "VIR_DOMAIN_CRASHED_": libvirt.VIR_DOMAIN_CRASHED,
    "VIR_DOMAIN_PAUSED_": libvirt.VIR_DOMAIN_PAUSED,
    "VIR_DOMAIN_RUNNING_": libvirt.VIR_DOMAIN_RUNNING,
}


def libvirt_constants(prefix: str) -> dict[str, int]:
    return {name: value for name, value in vars(libvirt).items()
            if name.startswith(prefix) and isinstance(value, int)}


@pytest.mark.parametrize(("state", "lifecycle"), STATES, ids=[s for _, s in STATES])
def test_state_enum_matches_libvirt_abi(state: int, lifecycle: str) -> None:
    assert State(state).value == state
    assert LIFECYCLE[State(state)] == lifecycle


def test_every_libvirt_state_is_translated() -> None:
    # virDomainState has exactly these members (VIR_DOMAIN_LAST is not exported).
    assert sorted(s for s, _ in STATES) == list(range(8))
    assert {int(s) for s in State} == {s for s, _ in STATES}
    assert len(LIFECYCLE) == len(STATES)


@pytest.mark.parametrize(("state", "lifecycle"), STATES, ids=[s for _, s in STATES])
def test_state_with_reason_zero(state: int, lifecycle: str) -> None:
    # reason 0 is *_UNKNOWN in every libvirt reason enum
    assert status_and_reason(state, 0) == (lifecycle, "Unknown")


@pytest.mark.parametrize(("state", "const", "reason"), REASONS, ids=[c for _, c, _ in REASONS])
def test_reason_translation(state: int, const: str, reason: str) -> None:
    number = getattr(libvirt, const)
    lifecycle = dict(STATES)[state]
    assert status_and_reason(state, number) == (lifecycle, reason)


@pytest.mark.parametrize("prefix", sorted(REASON_PREFIXES))
def test_reason_table_covers_every_libvirt_reason(prefix: str) -> None:
    listed = {c for s, c, _ in REASONS if s == REASON_PREFIXES[prefix]}
    assert set(libvirt_constants(prefix)) <= listed


def test_shutdown_reason_numbers() -> None:
    # the two virDomainShutdownReason members (the prefix also names shutdown flags)
    assert libvirt.VIR_DOMAIN_SHUTDOWN_UNKNOWN == 0
    assert libvirt.VIR_DOMAIN_SHUTDOWN_USER == 1


@pytest.mark.parametrize("state", [-1, 8, 9, 100, 2**31 - 1, -(2**31)])
@pytest.mark.parametrize("reason", [0, 1, 5, -1, 99])
def test_unknown_state(state: int, reason: int) -> None:
    assert status_and_reason(state, reason) == ("NoState", "Unknown")


@pytest.mark.parametrize(("state", "lifecycle"), STATES, ids=[s for _, s in STATES])
@pytest.mark.parametrize("reason", [-1, 14, 15, 99, 2**31 - 1])
def test_unknown_reason(state: int, lifecycle: str, reason: int) -> None:
    assert status_and_reason(state, reason) == (lifecycle, "Unknown")


def test_non_existent() -> None:
    assert NON_EXISTENT == ("NoState", "NonExistent")


# --- lifecycle events ----------------------------------------------------------------

EVENTS: list[tuple[str, int]] = [
    ("DEFINED", libvirt.VIR_DOMAIN_EVENT_DEFINED),
    ("UNDEFINED", libvirt.VIR_DOMAIN_EVENT_UNDEFINED),
    ("STARTED", libvirt.VIR_DOMAIN_EVENT_STARTED),
    ("SUSPENDED", libvirt.VIR_DOMAIN_EVENT_SUSPENDED),
    ("RESUMED", libvirt.VIR_DOMAIN_EVENT_RESUMED),
    ("STOPPED", libvirt.VIR_DOMAIN_EVENT_STOPPED),
    ("SHUTDOWN", libvirt.VIR_DOMAIN_EVENT_SHUTDOWN),
    ("PMSUSPENDED", libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED),
    ("CRASHED", libvirt.VIR_DOMAIN_EVENT_CRASHED),
]


def event_details(event: str) -> dict[str, int]:
    """libvirt's detail enum for one lifecycle event, e.g. STOPPED -> {FAILED: 5, ...}."""
    prefix = f"VIR_DOMAIN_EVENT_{event}_"
    return {name[len(prefix):]: value for name, value in libvirt_constants(prefix).items()}


ALL_EVENT_DETAILS: list[tuple[str, int, str, int]] = [
    (ev, ev_num, detail, num)
    for ev, ev_num in EVENTS
    for detail, num in sorted(event_details(ev).items(), key=lambda kv: kv[1])
]
EVENT_IDS = [f"{ev}/{d}" for ev, _, d, _ in ALL_EVENT_DETAILS]


@pytest.mark.parametrize(("name", "number"), EVENTS, ids=[e for e, _ in EVENTS])
def test_lifecycle_enum_matches_libvirt_abi(name: str, number: int) -> None:
    assert Lifecycle[name].value == number


def test_every_lifecycle_event_is_known() -> None:
    assert {e.name for e in Lifecycle} == {n for n, _ in EVENTS}
    assert set(LIFECYCLE_DETAILS) == set(Lifecycle)


@pytest.mark.parametrize(("name", "number"), EVENTS, ids=[e for e, _ in EVENTS])
def test_detail_tables_match_libvirt_abi(name: str, number: int) -> None:
    ours = {detail: i for i, detail in enumerate(LIFECYCLE_DETAILS[Lifecycle(number)])}
    assert ours == event_details(name)


@pytest.mark.parametrize(("event", "ev_num", "detail", "num"), ALL_EVENT_DETAILS, ids=EVENT_IDS)
def test_lifecycle_name(event: str, ev_num: int, detail: str, num: int) -> None:
    assert lifecycle_name(ev_num, num) == f"{event}/{detail}"


def test_lifecycle_name_examples() -> None:
    assert lifecycle_name(libvirt.VIR_DOMAIN_EVENT_STOPPED,
                          libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED) == "STOPPED/FAILED"
    assert lifecycle_name(libvirt.VIR_DOMAIN_EVENT_SUSPENDED,
                          libvirt.VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR) == "SUSPENDED/API_ERROR"
    assert lifecycle_name(libvirt.VIR_DOMAIN_EVENT_CRASHED,
                          libvirt.VIR_DOMAIN_EVENT_CRASHED_CRASHLOADED) == "CRASHED/CRASHLOADED"


@pytest.mark.parametrize(("event", "detail", "expected"), [
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, 99, "STOPPED/99"),
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, -1, "STOPPED/-1"),
    (libvirt.VIR_DOMAIN_EVENT_SHUTDOWN, 3, "SHUTDOWN/3"),
    (libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED, 2, "PMSUSPENDED/2"),
    (9, 0, "9/0"),
    (42, 7, "42/7"),
    (-1, -2, "-1/-2"),
])
def test_lifecycle_name_unknown(event: int, detail: int, expected: str) -> None:
    assert lifecycle_name(event, detail) == expected


def expected_event_type(event: str, detail: str) -> str:
    # KubeVirt's notify client (processLifecycleEvent): ADDED only for a new definition or
    # a migration target's start.
    if (event, detail) in (("DEFINED", "ADDED"), ("STARTED", "MIGRATED")):
        return "ADDED"
    return "MODIFIED"


@pytest.mark.parametrize(("event", "ev_num", "detail", "num"), ALL_EVENT_DETAILS, ids=EVENT_IDS)
def test_event_type_for(event: str, ev_num: int, detail: str, num: int) -> None:
    assert event_type_for(ev_num, num) == expected_event_type(event, detail)


def test_event_type_for_key_cases() -> None:
    assert event_type_for(libvirt.VIR_DOMAIN_EVENT_DEFINED,
                          libvirt.VIR_DOMAIN_EVENT_DEFINED_ADDED) == "ADDED"
    assert event_type_for(libvirt.VIR_DOMAIN_EVENT_DEFINED,
                          libvirt.VIR_DOMAIN_EVENT_DEFINED_UPDATED) == "MODIFIED"
    assert event_type_for(libvirt.VIR_DOMAIN_EVENT_STARTED,
                          libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED) == "ADDED"
    assert event_type_for(libvirt.VIR_DOMAIN_EVENT_STARTED,
                          libvirt.VIR_DOMAIN_EVENT_STARTED_BOOTED) == "MODIFIED"
    # gone domains are MODIFIED (with deletionTimestamp), never DELETED
    assert event_type_for(libvirt.VIR_DOMAIN_EVENT_UNDEFINED,
                          libvirt.VIR_DOMAIN_EVENT_UNDEFINED_REMOVED) == "MODIFIED"
    assert event_type_for(libvirt.VIR_DOMAIN_EVENT_STOPPED,
                          libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED) == "MODIFIED"


@pytest.mark.parametrize(("event", "detail"), [
    (None, None), (None, 0), (libvirt.VIR_DOMAIN_EVENT_DEFINED, None), (99, 0), (-1, 0),
    (libvirt.VIR_DOMAIN_EVENT_DEFINED, 99),
])
def test_event_type_for_non_lifecycle(event: int | None, detail: int | None) -> None:
    # device added/removed, agent and job events carry no lifecycle event
    assert event_type_for(event, detail) == "MODIFIED"
