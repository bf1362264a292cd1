"""hack/kubernetes/standalone-pod.yaml: a plain Pod running a standalone VM the way KubeVirt's
virt-launcher pod runs a VMI. Its command must parse as the launcher's flags, its
STANDALONE_VMI must convert, and the paths the pod provides (volumes, the containerDisk
copy, the Velero hooks) must be the ones the launcher and virt-freezer use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher import flags
from launcher.converter import Conversion, ConvertOptions, convert
from launcher.converter.plan import ContainerDiskOverlay
from launcher.guest import freezer
from launcher.vm.standalone import STANDALONE_ENV, adopt_identity, parse_standalone

REPO = Path(__file__).resolve().parents[2]
POD = REPO / "hack" / "kubernetes" / "standalone-pod.yaml"
MONITOR = "/usr/bin/virt-launcher-monitor"
FREEZER = "/usr/bin/virt-freezer"
QEMU_UID = 107
# The directories of KubeVirt's compute container (seed 001's pod), each an emptyDir of
# its own in a standalone pod.
KUBEVIRT_MOUNTS = (
    "/var/run/kubevirt-private", "/var/run/kubevirt", "/var/run/kubevirt-ephemeral-disks",
    "/var/run/kubevirt/container-disks", "/var/run/libvirt", "/var/run/kubevirt/sockets",
    "/var/run/kubevirt/hotplug-disks",
)
GRACE_PADDING_S = 15  # KubeVirt: pod grace period = the VMI's + 15 s


@pytest.fixture(scope="module")
def pod() -> dict[str, Any]:
    doc = yaml.safe_load(POD.read_text())
    assert doc["apiVersion"] == "v1"
    assert doc["kind"] == "Pod"
    return dict(doc)


def container(pod: dict[str, Any], name: str, *, init: bool = False) -> dict[str, Any]:
    key = "initContainers" if init else "containers"
    found = [c for c in pod["spec"][key] if c["name"] == name]
    assert len(found) == 1, f"{key}: no single container {name!r}"
    return dict(found[0])


def argv(c: dict[str, Any]) -> list[str]:
    return [*c.get("command", []), *c.get("args", [])]


def options(pod: dict[str, Any]) -> flags.Options:
    cmd = argv(container(pod, "compute"))
    assert cmd[0] == MONITOR
    return flags.parse(cmd[1:], prog="virt-launcher-monitor", environ={})


def vmi(pod: dict[str, Any]) -> dict[str, Any]:
    env = {e["name"]: e.get("value") for e in container(pod, "compute")["env"]}
    text = env[STANDALONE_ENV]
    assert isinstance(text, str)
    return parse_standalone(text)


def conversion(pod: dict[str, Any]) -> Conversion:
    return convert(vmi(pod), ConvertOptions())


def mounts(c: dict[str, Any]) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}


def test_command_parses_as_the_launchers_flags(pod: dict[str, Any]) -> None:
    opts = options(pod)
    assert opts.run_as_nonroot  # the container runs as 107: session-mode libvirt
    assert not opts.keep_after_failure
    assert opts.hook_sidecars == 0
    assert opts.kubevirt_share_dir == "/var/run/kubevirt"
    compute_mounts = mounts(container(pod, "compute"))
    for directory in (opts.kubevirt_share_dir, opts.ephemeral_disk_dir,
                      opts.container_disk_dir, opts.hotplug_disk_dir.rstrip("/")):
        assert directory in compute_mounts, f"{directory} is not a volume of compute"


def test_standalone_vmi_converts_with_the_pods_identity(pod: dict[str, Any]) -> None:
    doc = vmi(pod)
    opts = options(pod)
    # Raises when the VMI's name/namespace/uid disagree with --name/--namespace/--uid.
    adopted = adopt_identity(opts, doc)
    assert adopted == opts
    assert doc["metadata"]["namespace"] == pod["metadata"]["namespace"]
    result = conversion(pod)
    assert result.name == opts.domain_name == "default_cirros"
    assert doc["spec"]["terminationGracePeriodSeconds"] == opts.grace_period_seconds
    assert pod["spec"]["terminationGracePeriodSeconds"] == \
        opts.grace_period_seconds + GRACE_PADDING_S


def test_container_disk_is_copied_where_the_launcher_reads_it(pod: dict[str, Any]) -> None:
    overlays = [p for p in conversion(pod).preps if isinstance(p, ContainerDiskOverlay)]
    assert len(overlays) == 1
    backing = overlays[0].backing
    opts = options(pod)
    assert backing == f"{opts.container_disk_dir}/disk_0.img"
    copier = container(pod, "container-disk", init=True)
    script = "\n".join(argv(copier))
    assert f"mv {backing}.part {backing}" in script
    # Both containers see the same volume at the container-disk directory.
    assert mounts(copier)[opts.container_disk_dir] == \
        mounts(container(pod, "compute"))[opts.container_disk_dir]
    # The copy comes from the image the VMI names, mounted as an image volume.
    image_volumes = {v["name"]: v["image"]["reference"]
                     for v in pod["spec"]["volumes"] if "image" in v}
    source = [name for path, name in mounts(copier).items()
              if name in image_volumes and script.count(f"{path}/disk/") == 1]
    assert len(source) == 1
    disk_images = [v["containerDisk"]["image"] for v in vmi(pod)["spec"]["volumes"]
                   if "containerDisk" in v]
    assert disk_images == [image_volumes[source[0]]]


def test_volumes_are_kubevirts(pod: dict[str, Any]) -> None:
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for c in [*pod["spec"]["initContainers"], *pod["spec"]["containers"]]:
        for name in mounts(c).values():
            assert name in volumes, f"{c['name']} mounts undeclared volume {name}"
    compute_mounts = mounts(container(pod, "compute"))
    for path in KUBEVIRT_MOUNTS:
        assert path in compute_mounts, f"compute lacks {path}"
        assert volumes[compute_mounts[path]] == {"name": compute_mounts[path], "emptyDir": {}}
    assert len({compute_mounts[p] for p in KUBEVIRT_MOUNTS}) == len(KUBEVIRT_MOUNTS)


def test_security_context_is_kubevirts_non_root_one(pod: dict[str, Any]) -> None:
    pod_ctx = pod["spec"]["securityContext"]
    assert pod_ctx == {"runAsUser": QEMU_UID, "runAsGroup": QEMU_UID, "runAsNonRoot": True,
                       "fsGroup": QEMU_UID}
    for c in [*pod["spec"]["initContainers"], *pod["spec"]["containers"]]:
        ctx = c["securityContext"]
        assert ctx["runAsUser"] == ctx["runAsGroup"] == QEMU_UID, c["name"]
        assert ctx["runAsNonRoot"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["privileged"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
    compute = container(pod, "compute")
    assert compute["securityContext"]["capabilities"]["add"] == ["NET_BIND_SERVICE"]
    for kind in ("requests", "limits"):
        assert compute["resources"][kind]["devices.kubevirt.io/kvm"] == "1"
    # One image for the launcher and the helper that runs from it.
    assert container(pod, "container-disk", init=True)["image"] == compute["image"]


@pytest.mark.parametrize(("hook", "action"), [("pre", "--freeze"), ("post", "--unfreeze")])
def test_velero_hooks_run_virt_freezer_for_this_vmi(
    pod: dict[str, Any], hook: str, action: str
) -> None:
    annotations = pod["metadata"]["annotations"]
    assert annotations[f"{hook}.hook.backup.velero.io/container"] == "compute"
    command = json.loads(annotations[f"{hook}.hook.backup.velero.io/command"])
    assert command[0] == FREEZER
    assert action in command
    args = freezer.parse_args(command[1:])
    meta = vmi(pod)["metadata"]
    assert (args.name, args.namespace) == (meta["name"], meta["namespace"])
