"""cloudInitNoCloud / cloudInitConfigDrive volumes: the data source ISO KubeVirt builds
(pkg/cloud-init).

Matched KubeVirt behaviour
- A raw ISO <ephemeral>/cloud-init-data/NAMESPACE/NAME/noCloud.iso | configdrive.iso on
  whatever device the disk asks for. meta-data is KubeVirt's JSON: NoCloud
  {"instance-type"?, "instance-id", "local-hostname"}; ConfigDrive {"instance_type"?,
  "instance_id": "NAME.NAMESPACE", "hostname", "uuid"}; the instance type from the
  kubevirt.io/(cluster-)instancetype-name annotations; the hostname is spec.hostname,
  else the name up to its first "." (dns.SanitizeHostname).
- userData / networkData as text or base64, or from a secret (secretRef, KubeVirt's
  JSON key of UserDataSecretRef / networkDataSecretRef): virt-controller mounts it at
  <private>/secret/VOLUME, the key "userdata" (else "userData"), "networkdata" (else
  "networkData"); the launcher reads it when it builds the ISO.
- One cloud-init volume (KubeVirt only writes the first): a second is refused by name.

Deliberate differences
- Without spec.domain.firmware.uuid, the NoCloud instance-id is NAME.NAMESPACE and the
  ConfigDrive uuid is metadata.uid (KubeVirt would pick a random UUID each start, making
  cloud-init treat every boot as a new instance).
- Not supported: access credentials (refuse_access_credentials): SSH keys propagated
  through cloud-init (noCloud / configDrive) or the guest agent, passwords through the
  guest agent.
"""

from __future__ import annotations

import base64
import binascii
import json
import posixpath

from launcher.converter.context import Context
from launcher.converter.plan import CloudInitIso
from launcher.converter.spec import Node
from launcher.converter.volumes import Source, Volume

SECRET_SOURCE_DIR = "secret"  # KubeVirt's config.SecretSourceDir under the private dir
# KubeVirt's JSON keys of UserDataSecretRef / NetworkDataSecretRef (the user data's is
# plain "secretRef").
SECRET_REF_KEYS = {"userData": "secretRef", "networkData": "networkDataSecretRef"}
INSTANCETYPE_ANNOTATIONS = ("kubevirt.io/cluster-instancetype-name",
                            "kubevirt.io/instancetype-name")


def build(ctx: Context, volume: Volume, readonly: bool) -> Source:
    """A cloud-init volume as its data source ISO."""
    source = volume.source
    user = _data(source, "userData")
    network = _data(source, "networkData")
    user_files = _secret_files(ctx, volume, "userData", user)
    network_files = _secret_files(ctx, volume, "networkData", network)
    if user is None and network is None and not user_files and not network_files:
        source.fail("needs userData, userDataBase64, secretRef, networkData, "
                    "networkDataBase64 or networkDataSecretRef")
    no_cloud = volume.kind == "cloudInitNoCloud"
    kind, file = ("noCloud", "noCloud.iso") if no_cloud else ("configDrive",
                                                              "configdrive.iso")
    path = posixpath.join(ctx.opts.ephemeral_disk_dir, "cloud-init-data", ctx.namespace, ctx.name,
                 file)
    meta = _no_cloud_meta(ctx) if no_cloud else _config_drive_meta(ctx)
    prep = CloudInitIso(volume.name, path, kind, user_data=user or b"",
                        meta_data=json.dumps(meta, separators=(",", ":")).encode(),
                        network_data=network, user_data_files=user_files,
                        network_data_files=network_files)
    return Source("file", path, "raw", discard=False, readonly=readonly, prep=prep)


def _secret_files(ctx: Context, volume: Volume, key: str, inline: bytes | None
                  ) -> tuple[str, ...]:
    """secretRef (user data) / networkDataSecretRef: the files of the secret KubeVirt's
    virt-controller mounts at <private>/secret/<volume>/<key in lower case> (and in camel
    case), read in that order (cloud-init's readFirstFoundFileFromDir)."""
    source = volume.source
    ref_key = SECRET_REF_KEYS[key]
    ref = source.obj(ref_key)
    if not ref.present:
        return ()
    ref.str("name")
    if inline is not None:
        source.fail(f"{ref_key} and {key} / {key}Base64 cannot both be set", ref_key)
    base = posixpath.join(ctx.opts.private_dir, SECRET_SOURCE_DIR, volume.name)
    return (posixpath.join(base, key.lower()), posixpath.join(base, key))


def _data(source: Node, key: str) -> bytes | None:
    """`key` (text) or `key`Base64; "" counts as unset, as in KubeVirt."""
    text = source.str(key)
    encoded = source.str(f"{key}Base64")
    if text and encoded:
        source.fail(f"{key} and {key}Base64 cannot both be set", f"{key}Base64")
    if text:
        return text.encode()
    if not encoded:
        return None
    try:
        # Go's base64.StdEncoding: padding required, line breaks ignored.
        return base64.b64decode(encoded.replace("\r", "").replace("\n", ""), validate=True)
    except (binascii.Error, ValueError):
        source.fail("is not valid base64", f"{key}Base64")


# accessCredentials[].<kind>.propagationMethod.<method>: why each is refused.
_PROPAGATION_REASONS = {
    "noCloud": "SSH keys copied into cloud-init metadata come from a secret this pure "
               "conversion cannot read",
    "configDrive": "SSH keys copied into cloud-init metadata come from a secret this pure "
                   "conversion cannot read",
    "qemuGuestAgent": "KubeVirt's launcher writes the keys or password into the guest "
                      "through the guest agent whenever the secret changes; this one does "
                      "not",
}


def refuse_access_credentials(ctx: Context) -> None:
    """spec.accessCredentials: every propagation method needs something this launcher does
    not do, so any credential is refused, naming the method when one is given (never a
    guest that silently lacks the keys)."""
    for cred in ctx.spec.items("accessCredentials"):
        kinds = [key for key in ("sshPublicKey", "userPassword") if cred.has(key)]
        if not kinds:
            cred.fail("not supported by this launcher (no credential propagation)")
        for kind in kinds:
            method = cred.obj(kind).obj("propagationMethod")
            for key, reason in _PROPAGATION_REASONS.items():
                if method.has(key):
                    method.fail(f"not supported by this launcher: {reason}", key)
            cred.fail("not supported by this launcher (no credential propagation)", kind)


def _firmware_uuid(ctx: Context) -> str:
    return ctx.domain_spec.obj("firmware").str("uuid") or ""


def _hostname(ctx: Context) -> str:
    return ctx.spec.str("hostname") or ctx.name.split(".")[0][:63]


def _instance_type(ctx: Context) -> str:
    annotations = ctx.vmi.obj("metadata").obj("annotations")
    for key in INSTANCETYPE_ANNOTATIONS:
        value = annotations.str(key)
        if value:
            return value
    return ""


def _no_cloud_meta(ctx: Context) -> dict[str, str]:
    """KubeVirt's NoCloudMetadata, in its field order."""
    return _drop_empty({
        "instance-type": _instance_type(ctx),
        "instance-id": _firmware_uuid(ctx) or f"{ctx.name}.{ctx.namespace}",
        "local-hostname": _hostname(ctx),
    })


def _config_drive_meta(ctx: Context) -> dict[str, str]:
    """KubeVirt's ConfigDriveMetadata, in its field order."""
    return _drop_empty({
        "instance_type": _instance_type(ctx),
        "instance_id": f"{ctx.name}.{ctx.namespace}",
        "hostname": _hostname(ctx),
        "uuid": _firmware_uuid(ctx) or ctx.uid,
    })


def _drop_empty(fields: dict[str, str]) -> dict[str, str]:
    """Go's omitempty (instance-id is always set)."""
    return {key: value for key, value in fields.items() if value}

