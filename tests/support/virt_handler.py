"""What KubeVirt's virt-handler concludes from the notify snapshots a launcher sends: a test
oracle written from its code (KubeVirt HEAD d923fdb8), so the e2e tests can assert the
verdict a real cluster would reach, not just the bytes.

Read from:
- pkg/virt-handler/controller.go, getDomainFromCache (~l.237-256): a domain whose
  ObjectMeta.deletionTimestamp is set is treated as not existing ("We're using the
  DeletionTimestamp to signify that the Domain is deleted rather than sending the DELETE
  watch event").
- pkg/virt-handler/vm.go, sync (~l.1320-1470):
  domainAlive = exists && Status not in (Shutoff, Crashed, "");
  hasGracefulShutdownTrigger (~l.1309): Spec.Metadata.KubeVirt.GracePeriod
  .MarkedForGracefulShutdown == true; with the VMI running -> shutdown if the domain is
  alive, else delete;
  a VMI in a final phase -> delete;
  !alive && exists && !final: Shutoff with reason Unknown/"" while the VMI is Scheduled is
  an ambiguous start-up (deferred), anything else -> delete ("Deleting inactive domain").
- pkg/virt-handler/vm.go, calculateVmPhaseForStatusReason (~l.2225-2290):
  no domain: a Scheduled/Running VMI keeps its phase while its launcher answers, Failed
  once it does not; Shutoff/Crashed with reason Crashed or Panicked -> Failed, Destroyed
  -> Failed when ACPI was available (the graceful shutdown did not work), else Succeeded;
  Shutdown, Saved, FromSnapshot -> Succeeded; Migrated -> unchanged; Paused -> Running
  (PostcopyFailed -> Failed); Running, Blocked, PMSuspended -> Running; else unchanged.
  isACPIEnabled (~l.2218): a termination grace period (the VMI's, or the domain's
  DeletionGracePeriodSeconds) and <acpi/> in the domain.
A final phase (Succeeded, Failed) never changes again (vmi.IsFinal()).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Verdict:
    exists: bool  # the domain, as virt-handler's cache holds it
    alive: bool
    graceful_shutdown: bool  # the launcher asked for the VMI's graceful shutdown
    phase: str  # the VMI's phase after this snapshot
    action: str | None  # "shutdown", "delete", "defer" or None (an update or nothing)
    status: tuple[str, str]  # the snapshot's (Status, Reason), for messages


def _grace(domain: dict[str, Any]) -> dict[str, Any]:
    grace = domain.get("Spec", {}).get("Metadata", {}).get("KubeVirt", {}).get("GracePeriod")
    return grace if isinstance(grace, dict) else {}


@dataclass
class VirtHandlerView:
    """Feed it the launcher's domain snapshots in the order received."""

    phase: str = "Scheduled"
    vmi_grace_period_s: int | None = None  # spec.terminationGracePeriodSeconds
    launcher_responsive: bool = True
    verdicts: list[Verdict] = field(default_factory=list)

    def see(self, domain: dict[str, Any]) -> Verdict:
        status = domain.get("Status", {})
        state, reason = status.get("Status", ""), status.get("Reason", "")
        exists = not domain.get("ObjectMeta", {}).get("deletionTimestamp")
        alive = exists and state not in ("Shutoff", "Crashed", "")
        graceful = exists and _grace(domain).get("MarkedForGracefulShutdown") is True
        if self.phase not in FINAL:
            self.phase = self._phase(domain if exists else None, state, reason)
        action: str | None = None
        running = self.phase == "Running"
        if graceful and running:
            action = "shutdown" if alive else "delete"
        elif self.phase in FINAL:
            action = "delete"
        elif exists and not alive:
            ambiguous = state == "Shutoff" and reason in ("Unknown", "") \
                and self.phase == "Scheduled"
            action = "defer" if ambiguous else "delete"
        verdict = Verdict(exists, alive, graceful, self.phase, action, (state, reason))
        self.verdicts.append(verdict)
        return verdict

    def _acpi(self, domain: dict[str, Any]) -> bool:
        grace = self.vmi_grace_period_s if self.vmi_grace_period_s is not None \
            else _grace(domain).get("DeletionGracePeriodSeconds", 0)
        return bool(grace) and "ACPI" in (domain.get("Spec", {}).get("Features") or {})

    def _phase(self, domain: dict[str, Any] | None, state: str, reason: str) -> str:
        if domain is None:
            if self.phase in ("Scheduled", "Running"):
                return self.phase if self.launcher_responsive else "Failed"
            return "Scheduled"
        if state in ("Shutoff", "Crashed"):
            if reason in ("Crashed", "Panicked"):
                return "Failed"
            if reason == "Destroyed":
                return "Failed" if self._acpi(domain) else "Succeeded"
            if reason in ("Shutdown", "Saved", "FromSnapshot"):
                return "Succeeded"
            return self.phase
        if state == "Paused":
            return "Failed" if reason == "PostcopyFailed" else "Running"
        if state in ("Running", "Blocked", "PMSuspended"):
            return "Running"
        return self.phase


def replay(domains: list[dict[str, Any]], **kwargs: Any) -> VirtHandlerView:
    """A view fed with every snapshot (the `domain` of each notify record) in order."""
    view = VirtHandlerView(**kwargs)
    for domain in domains:
        view.see(domain)
    return view
