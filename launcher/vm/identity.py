"""The VMI's identity (metadata name, namespace, uid): one parser for the command API's
requests (launcher.cmd.vmi) and STANDALONE_VMI (launcher.vm.standalone)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from launcher.converter.spec import json_kind


class IdentityError(ValueError):
    """`field` (a JSON path) cannot be used; str() is "<field>: <reason>"."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


def metadata(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = doc.get("metadata")
    if meta is None:
        raise IdentityError("metadata", "required")
    if not isinstance(meta, dict):
        raise IdentityError("metadata", f"expected an object, got {json_kind(meta)}")
    return meta


def metadata_string(doc: Mapping[str, Any], key: str, *, required: bool) -> str:
    value = metadata(doc).get(key)
    if value is None or value == "":
        if required:
            raise IdentityError(f"metadata.{key}", "required")
        return ""
    if not isinstance(value, str):
        raise IdentityError(f"metadata.{key}", f"expected a string, got {json_kind(value)}")
    return value


def uid_mismatch(vmi_uid: str, flag_uid: str) -> str | None:
    """A Sync for another incarnation of the VMI (same name, other uid) is refused."""
    if vmi_uid and flag_uid and vmi_uid != flag_uid:
        return f'metadata.uid: "{vmi_uid}" does not match this launcher\'s --uid "{flag_uid}"'
    return None
