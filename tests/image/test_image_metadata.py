"""The built image as a registry would carry it: its entrypoint, labels and size, and the
optional stage that copies KubeVirt's helpers (container-disk, virt-tail, virt-probe) from
KubeVirt's launcher image, built here against a stand-in for that image (no registry)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.image.pod import REPO, buildah, image_present, image_ref, image_root

pytestmark = [pytest.mark.e2e, pytest.mark.image]

HELPERS = ("container-disk", "virt-tail", "virt-probe")
LABEL = "io.github.py-virt-launcher.kubevirt-helpers"
# KubeVirt's launcher image (CentOS Stream 9 + virtqemud + QEMU), uncompressed as
# `docker images` shows it: 745 MB reported for v0.33 (kubevirt/kubevirt#4423). Ours must
# stay well below.
KUBEVIRT_LAUNCHER_MB = 745
FAKE_KUBEVIRT = "localhost/pvl-test-kubevirt-launcher"
WITH_HELPERS = "localhost/py-virt-launcher:test-with-kubevirt-helpers"


def inspect(ref: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads(buildah("inspect", "--type", "image", ref))
    return doc


def labels(ref: str) -> dict[str, str]:
    config = inspect(ref)["OCIv1"]
    assert isinstance(config, dict)
    found: dict[str, str] = config["config"].get("Labels") or {}
    return found


def size_mb(ref: str) -> float:
    out = buildah("images", "--format", "{{.Size}}", ref)
    number, unit = out.split()
    return float(number) * {"kB": 1e-3, "MB": 1.0, "GB": 1e3}[unit]


@pytest.fixture(scope="module")
def image() -> str:
    ref = image_ref()
    if not image_present(ref):
        pytest.fail(f"no image {ref}: run `make image` (or `make image-test`)")
    return ref


def test_the_image_is_what_kubevirt_runs(image: str, record_property: object) -> None:
    config = inspect(image)["OCIv1"]
    assert isinstance(config, dict)
    assert config["config"]["Entrypoint"] == ["/usr/bin/virt-launcher-monitor"]
    assert not config["config"].get("User")  # root unless the pod says otherwise
    assert labels(image)[LABEL] == "absent"
    assert labels(image)["org.opencontainers.image.version"] == image.rsplit(":", 1)[1]
    mb = size_mb(image)
    assert mb < KUBEVIRT_LAUNCHER_MB, mb
    assert callable(record_property)
    record_property("image_size_mb", mb)
    with image_root(image) as root:
        for name in ("virt-launcher-monitor", "virt-launcher", "virt-freezer",
                     "node-labeller.sh"):
            assert os.access(root / "usr/bin" / name, os.X_OK), name
        for name in HELPERS:
            assert not (root / "usr/bin" / name).exists(), name
        note = (root / "usr/share/py-virt-launcher/kubevirt-helpers").read_text()
        assert note.startswith("absent: "), note
        # what the image leaves out: compilers, pip, the build's wheels, apt's lists
        venv = root / "opt/py-virt-launcher"
        assert not list(venv.glob("lib/python3*/site-packages/pip"))
        assert not list(venv.glob("lib/python3*/site-packages/setuptools"))
        assert not (root / "wheels").exists() and not (root / "usr/bin/gcc").exists()
        assert not list((root / "var/lib/apt/lists").glob("*_Packages*"))
        assert not list((root / "var/cache/apt/archives").glob("*.deb"))
        passwd = (root / "etc/passwd").read_text().splitlines()
        assert any(line.startswith("qemu:x:107:107:") for line in passwd)


@pytest.fixture
def fake_kubevirt_launcher(tmp_path: Path) -> Iterator[str]:
    """A stand-in for quay.io/kubevirt/virt-launcher: the three helpers at their paths."""
    for name in HELPERS:
        helper = tmp_path / name
        helper.write_text(f"#!/bin/sh\necho 'KubeVirt {name}'\n")
        helper.chmod(0o755)
    ctr = buildah("from", "scratch")
    try:
        buildah("copy", ctr, *(str(tmp_path / n) for n in HELPERS), "/usr/bin/")
        buildah("commit", "--quiet", ctr, f"{FAKE_KUBEVIRT}:test")
    finally:
        buildah("rm", ctr)
    yield f"{FAKE_KUBEVIRT}:test"
    for ref in (WITH_HELPERS, f"{FAKE_KUBEVIRT}:test"):
        subprocess.run(["buildah", "rmi", ref], capture_output=True, check=False, timeout=60)


def test_kubevirt_helpers_come_from_kubevirts_image_when_asked(
    image: str, fake_kubevirt_launcher: str
) -> None:
    env = {**os.environ, "KUBEVIRT_HELPERS": "kubevirt", "KUBEVIRT_LAUNCHER": FAKE_KUBEVIRT,
           "KUBEVIRT_VERSION": "test", "PVL_IMAGE": WITH_HELPERS}
    done = subprocess.run(["bash", str(REPO / "hack" / "build-image.sh")], env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "KubeVirt's helpers: present" in done.stderr
    assert labels(WITH_HELPERS)[LABEL] == "kubevirt"
    with image_root(WITH_HELPERS) as root:
        for name in HELPERS:
            helper = root / "usr/bin" / name
            assert os.access(helper, os.X_OK), name
            assert helper.read_text() == f"#!/bin/sh\necho 'KubeVirt {name}'\n"
        note = (root / "usr/share/py-virt-launcher/kubevirt-helpers").read_text()
        assert note.startswith("kubevirt: "), note
