"""The VirtualMachineInstance carried by command requests (VMI.vmiJson), as a small typed
view: just what the launcher acts on (name, namespace, uid) plus the raw document.

virt-handler sends the whole VMI; we read a handful of fields and tolerate everything else
(unknown fields must be tolerated: newer KubeVirt versions add fields all the time). Every
problem is a VMIError whose message names the field, so a client can tell a malformed
request from a libvirt failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from launcher.converter.spec import json_kind
from launcher.vm.identity import IdentityError, metadata_string


class VMIError(ValueError):
    """A request's VMI cannot be used; the message says which field and why."""


@dataclass(frozen=True)
class VMI:
    name: str
    namespace: str
    uid: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def domain_name(self) -> str:
        """libvirt's name for this VMI's domain, as KubeVirt names it."""
        return f"{self.namespace}_{self.name}"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def agent_connected_condition(self) -> bool:
        """status.conditions has AgentConnected=True (what virt-handler knows)."""
        status = self.raw.get("status")
        conditions = status.get("conditions") if isinstance(status, dict) else None
        if not isinstance(conditions, list):
            return False
        return any(isinstance(c, dict) and c.get("type") == "AgentConnected"
                   and c.get("status") == "True" for c in conditions)

    def acpi_disabled(self) -> bool:
        """spec.domain.features.acpi.enabled is explicitly false (KubeVirt: ACPI is on
        unless switched off)."""
        node: Any = self.raw
        for key in ("spec", "domain", "features", "acpi"):
            if not isinstance(node, dict):
                return False
            node = node.get(key)
        return isinstance(node, dict) and node.get("enabled") is False


def parse(vmi_json: bytes, *, domain: str | None = None) -> VMI:
    """The VMI in `vmi_json`. With `domain`, the VMI must name that libvirt domain
    (<namespace>_<name>): a launcher serves exactly one VMI."""
    if not vmi_json:
        raise VMIError("vmi: vmiJson: required (the request carries no VMI)")
    try:
        doc = json.loads(vmi_json)
    except json.JSONDecodeError as exc:
        raise VMIError(f"vmi: invalid JSON: {exc}") from None
    except UnicodeDecodeError as exc:  # json.loads decodes bytes itself
        raise VMIError(f"vmi: invalid JSON: not UTF-8 ({exc.reason} at byte {exc.start})") \
            from None
    except RecursionError:  # "[[[[..." from a hostile or broken client
        raise VMIError("vmi: invalid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise VMIError(f"vmi: expected a JSON object, got {json_kind(doc)}")
    try:
        vmi = VMI(name=metadata_string(doc, "name", required=True),
                  namespace=metadata_string(doc, "namespace", required=True),
                  uid=metadata_string(doc, "uid", required=False),
                  raw=doc)
    except IdentityError as exc:
        raise VMIError(f"vmi: {exc}") from None
    if domain is not None and vmi.domain_name != domain:
        raise VMIError(f'vmi "{vmi.key}" does not match this launcher\'s domain "{domain}"')
    return vmi
