"""The test oracle (tests/support/virt_handler.py) and the virt-handler stand-in's decisions
(launcher.notify.handler_standin) on hand-made snapshot sequences: the verdicts virt-handler's code
reaches for the sequences this launcher sends, and for the one it used to send."""

from __future__ import annotations

from typing import Any

from launcher.notify.handler_standin import decide
from tests.support.virt_handler import replay

NOW = 1_800_000_000.0
T0 = "2027-01-15T08:00:00Z"  # = NOW (checked below)


def snap(state: str, reason: str = "Unknown", *, deleted: bool = False, marked: bool = False,
         grace_s: int = 30, started: str | None = None, acpi: bool = True) -> dict[str, Any]:
    grace: dict[str, Any] = {"DeletionGracePeriodSeconds": grace_s}
    if marked:
        grace["MarkedForGracefulShutdown"] = True
    if started is not None:
        grace["DeletionTimestamp"] = started
    meta: dict[str, Any] = {"name": "vm", "namespace": "ns", "uid": "u"}
    if deleted:
        meta["deletionTimestamp"] = "2027-01-15T08:01:00Z"
    spec: dict[str, Any] = {"Metadata": {"KubeVirt": {"UID": "u", "GracePeriod": grace}}}
    if acpi:
        spec["Features"] = {"ACPI": {}}
    return {"ObjectMeta": meta, "Spec": spec, "Status": {"Status": state, "Reason": reason}}


def test_the_epoch_of_t0() -> None:
    from datetime import datetime  # noqa: PLC0415

    assert datetime.fromisoformat(T0).timestamp() == NOW


def test_a_clean_shutdown_succeeds_and_is_deleted_only_at_the_end() -> None:
    view = replay([snap("Shutoff"), snap("Running"), snap("Running", marked=True),
                   snap("ShuttingDown", "User", marked=True, started=T0),
                   snap("Shutoff", "Shutdown", marked=True, started=T0),
                   snap("NoState", "NonExistent", deleted=True)])
    v = view.verdicts
    assert [x.phase for x in v] == ["Scheduled", "Running", "Running", "Running",
                                    "Succeeded", "Succeeded"]
    assert [x.exists for x in v] == [True] * 5 + [False]
    assert v[0].action == "defer"  # a new definition may still start
    assert v[2].graceful_shutdown and v[2].action == "shutdown"
    assert v[4].action == "delete"


def test_what_this_launcher_used_to_send_made_a_running_vm_look_deleted() -> None:
    # deletionTimestamp on every snapshot from SIGTERM on: the VMI has no domain while
    # QEMU still runs, and once the launcher is gone it is Failed, not Succeeded.
    view = replay([snap("Running"), snap("Running", deleted=True),
                   snap("Shutoff", "Shutdown", deleted=True)])
    assert [x.exists for x in view.verdicts] == [True, False, False]
    assert view.phase == "Running"
    view.launcher_responsive = False
    view.see(snap("NoState", "NonExistent", deleted=True))
    assert view.phase == "Failed"


def test_crash_and_destroy_phases() -> None:
    assert replay([snap("Running"), snap("Shutoff", "Crashed")]).phase == "Failed"
    assert replay([snap("Running"), snap("Crashed", "Panicked")]).phase == "Failed"
    # destroyed although ACPI could have stopped it: the graceful shutdown failed
    assert replay([snap("Running"), snap("Shutoff", "Destroyed")]).phase == "Failed"
    assert replay([snap("Running"), snap("Shutoff", "Destroyed", acpi=False)]).phase \
        == "Succeeded"
    assert replay([snap("Running"), snap("Shutoff", "Migrated")]).phase == "Running"
    assert replay([snap("Running"), snap("Paused", "PostcopyFailed")]).phase == "Failed"
    # final phases stay
    assert replay([snap("Running"), snap("Shutoff", "Shutdown"), snap("Running")]).phase \
        == "Succeeded"


def test_standin_decisions_follow_virt_handler() -> None:
    assert decide(snap("Running"), NOW) is None
    assert decide(snap("Running", marked=True), NOW) == "Shutdown"
    assert decide(snap("Running", marked=True, started=T0), NOW + 10) == "Shutdown"
    assert decide(snap("ShuttingDown", "User", marked=True, started=T0), NOW + 10) is None
    assert decide(snap("ShuttingDown", "User", marked=True, started=T0), NOW + 30) == "Kill"
    assert decide(snap("Running", marked=True, grace_s=0), NOW) == "Kill"
    assert decide(snap("Shutoff", "Shutdown"), NOW) == "Delete"
    assert decide(snap("Crashed", "Panicked"), NOW) == "Delete"
    assert decide(snap("Shutoff", "Unknown"), NOW) is None  # may still be starting
    assert decide(snap("NoState", "NonExistent", deleted=True), NOW) is None
