"""PreCloudInitIso's data: a cloud-init ISO preparation as KubeVirt's JSON and back.

KubeVirt sends `cloudInitData` (pkg/cloud-init CloudInitData, Go field names: DataSource,
NoCloudMetaData, ConfigDriveMetaData, UserData, NetworkData, DevicesData, VolumeName) and,
for older sidecars, `cloudInitNoCloudSource` ({"userData", "networkData"}). The result's
cloudInitData is used when valid (KubeVirt's IsValidCloudInitData: user data and a
metadata object), else its cloudInitNoCloudSource (then the metadata stays ours).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from launcher.converter.plan import CloudInitIso


class CloudInitResultError(ValueError):
    """A sidecar's PreCloudInitIso result that cannot be used (the message says why)."""


def _text(data: bytes | None) -> str:
    # Go's json.Marshal of a string replaces invalid UTF-8 the same way.
    return (data or b"").decode("utf-8", errors="replace")


def _meta_key(kind: str) -> str:
    return "NoCloudMetaData" if kind == "noCloud" else "ConfigDriveMetaData"


def params(prep: CloudInitIso) -> tuple[bytes, bytes]:
    """(cloudInitData JSON, cloudInitNoCloudSource JSON) for a resolved preparation (its
    secret data read: launcher.vm.disks.resolve_cloud_init)."""
    meta = json.loads(prep.meta_data) if prep.meta_data else None
    data = {
        "DataSource": prep.kind,
        "NoCloudMetaData": meta if prep.kind == "noCloud" else None,
        "ConfigDriveMetaData": meta if prep.kind != "noCloud" else None,
        "UserData": _text(prep.user_data),
        "NetworkData": _text(prep.network_data),
        "DevicesData": None,
        "VolumeName": prep.volume,
    }
    source = {"userData": _text(prep.user_data), "networkData": _text(prep.network_data)}
    return (json.dumps(data, separators=(",", ":")).encode(),
            json.dumps(source, separators=(",", ":")).encode())


def _object(raw: bytes, what: str) -> dict[str, Any] | None:
    if not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CloudInitResultError(f"{what} is not valid JSON: {exc}") from None
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CloudInitResultError(f"{what} is not a JSON object")
    return value


def _string(obj: dict[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CloudInitResultError(f"{what}.{key}: expected a string")
    return value


def _bytes(text: str, sent: bytes | None) -> bytes | None:
    """The result's text as bytes; the original bytes when the sidecar gave back exactly
    what it was sent (non-UTF-8 data, e.g. gzip user data, then survives a sidecar that
    leaves it alone)."""
    if sent is not None and text == _text(sent):
        return sent
    return text.encode()


def apply(prep: CloudInitIso, data_json: bytes, source_json: bytes) -> CloudInitIso:
    """`prep` with a sidecar's result applied. Raises CloudInitResultError."""
    data = _object(data_json, "cloudInitData")
    meta_key = _meta_key(prep.kind)
    if data is not None and _string(data, "UserData", "cloudInitData") and (
            data.get("NoCloudMetaData") is not None
            or data.get("ConfigDriveMetaData") is not None):
        kind = _string(data, "DataSource", "cloudInitData") or prep.kind
        if kind != prep.kind:
            # The domain's disk is the data source the VMI asked for; another kind would
            # build an ISO at a path nothing reads.
            raise CloudInitResultError(f"cloudInitData.DataSource: {kind!r} differs from "
                                       f"the VMI's {prep.kind!r}; a hook cannot change it")
        meta = data.get(meta_key)
        if not isinstance(meta, dict):
            raise CloudInitResultError(f"cloudInitData.{meta_key}: expected an object for "
                                       f"a {prep.kind} data source")
        network = _string(data, "NetworkData", "cloudInitData")
        return replace(
            prep, user_data=_bytes(_string(data, "UserData", "cloudInitData"),
                                   prep.user_data) or b"",
            network_data=_bytes(network, prep.network_data) if network else None,
            meta_data=json.dumps(meta, separators=(",", ":")).encode())
    source = _object(source_json, "cloudInitNoCloudSource")
    if source is None:
        raise CloudInitResultError("neither a valid cloudInitData (user data and metadata) "
                                   "nor a cloudInitNoCloudSource was returned")
    user = _string(source, "userData", "cloudInitNoCloudSource")
    network = _string(source, "networkData", "cloudInitNoCloudSource")
    return replace(prep, user_data=_bytes(user, prep.user_data) or b"",
                   network_data=_bytes(network, prep.network_data) if network else None)
