"""What the image relies on, checked without a container engine: the project installed into a
staged root the way the Containerfile installs it (its build-stage sources, its venv path),
then hack/image-links.sh run against that root, the same script the Containerfile runs.
The commands at KubeVirt's paths must run and find each other; node-labeller.sh (what
virt-handler's init container runs from the image) is run against fake virsh/daemons.

The staged install's scripts use this venv's interpreter, and its own site-packages go first
on PYTHONPATH, as the image's venv would have them."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from launcher.exitcodes import ExitCode
from tests import containerfile

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
LINKS = REPO / "hack" / "image-links.sh"
NODE_LABELLER = REPO / "hack" / "node-labeller.sh"
COMMANDS = ("virt-launcher-monitor", "virt-launcher", "virt-freezer")


@dataclass(frozen=True)
class Staged:
    root: Path
    bindir: str  # as seen inside the image, e.g. /opt/py-virt-launcher/bin
    site_packages: Path
    empty_path: Path  # a PATH with nothing on it: commands must find each other themselves

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIRT_LAUNCHER_")}
        env["PYTHONPATH"] = str(self.site_packages)
        env["PATH"] = str(self.empty_path)
        return env


def image_venv() -> tuple[str, str]:
    """The image's venv (made in the build stage, copied whole into the final one) and the
    BINDIR the final stage passes to hack/image-links.sh."""
    stages = containerfile.load()
    build, final = containerfile.stage(stages, "build"), stages[-1]
    venvs = [[a for a in c[3:] if not a.startswith("-")] for c in build.commands()
             if c[1:3] == ["-m", "venv"] and "--without-pip" in c]
    links = [c[-1] for c in final.commands()
             if len(c) >= 2 and any(a.endswith("hack/image-links.sh") for a in c)]
    assert len(venvs) == 1 and len(venvs[0]) == 1 and len(links) == 1
    return venvs[0][0], links[0]


def run_links(root: Path, bindir: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(LINKS), "--root", str(root), bindir],
                          capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture(scope="module")
def staged() -> Iterator[Staged]:
    tmp = Path(tempfile.mkdtemp(dir="/tmp", prefix="pvl-image-"))
    try:
        # The build context as the Containerfile's build stage copies it.
        src = tmp / "src"
        build = containerfile.stage(containerfile.load(), "build")
        for rel in build.copy_sources():
            source, target = REPO / rel, src / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, target)
        venv, bindir = image_venv()
        root = tmp / "root"
        prefix = root / venv.lstrip("/")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--no-build-isolation", "--no-cache-dir", "--ignore-installed",
             "--prefix", str(prefix), str(src)],
            check=True, timeout=120, capture_output=True)
        site = sorted(prefix.glob("lib/python3*/site-packages"))
        assert len(site) == 1, site
        for _ in range(2):  # idempotent: a second run changes nothing
            done = run_links(root, bindir)
            assert done.returncode == 0, done.stderr
        empty = tmp / "empty-path"
        empty.mkdir()
        yield Staged(root=root, bindir=bindir, site_packages=site[0], empty_path=empty)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("name", COMMANDS)
def test_kubevirt_path_is_a_relative_link_to_the_entry_point(staged: Staged, name: str) -> None:
    path = staged.root / "usr" / "bin" / name
    assert path.is_symlink()
    assert os.readlink(path) == f"../..{staged.bindir}/{name}"
    assert path.resolve() == (staged.root / staged.bindir.lstrip("/") / name).resolve()


@pytest.mark.parametrize("name", COMMANDS)
def test_command_at_kubevirt_path_runs(staged: Staged, name: str) -> None:
    done = subprocess.run([str(staged.root / "usr" / "bin" / name), "--help"],
                          env=staged.env(), cwd=staged.root, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {name} ")


def test_the_staged_install_is_what_runs(staged: Staged) -> None:
    code = ("import launcher, monitor, launcher._proto.kubevirt.cmd.v1.cmd_pb2_grpc, "
            "launcher._proto.kubevirt.notify.v1.notify_pb2_grpc, launcher.converter\n"
            "print(launcher.__file__); print(monitor.__file__)")
    # cwd: `python -c` puts it first on sys.path, and the repository's checkout must not
    # stand in for the staged install.
    done = subprocess.run([sys.executable, "-c", code], env=staged.env(), cwd=staged.root,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    for line in done.stdout.splitlines():
        assert Path(line).is_relative_to(staged.site_packages), line


def test_monitor_at_kubevirt_path_starts_the_launcher_beside_it(staged: Staged) -> None:
    # --simulate-crash: the launcher exits at once with its own code, which the monitor
    # passes on; PATH is empty, so the monitor found /usr/bin/virt-launcher by itself.
    monitor = staged.root / "usr" / "bin" / "virt-launcher-monitor"
    done = subprocess.run([str(monitor), "--simulate-crash"], env=staged.env(),
                          cwd=staged.root, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == ExitCode.SIMULATED_CRASH, done.stdout + done.stderr
    started = [json.loads(line) for line in done.stdout.splitlines()
               if '"started the launcher"' in line]
    assert [s["binary"] for s in started] == [str(staged.root / "usr" / "bin" / "virt-launcher")]


def test_node_labeller_is_installed(staged: Staged) -> None:
    path = staged.root / "usr" / "bin" / "node-labeller.sh"
    assert path.read_bytes() == NODE_LABELLER.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o755


def fake_install(root: Path, bindir: str) -> None:
    for name in COMMANDS:
        entry = root / bindir.lstrip("/") / name
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.write_text("#!/bin/sh\n")
        entry.chmod(0o755)


def test_secure_boot_vars_get_kubevirts_name(tmp_path: Path) -> None:
    fake_install(tmp_path, "/opt/venv/bin")
    ovmf = tmp_path / "usr" / "share" / "OVMF"
    ovmf.mkdir(parents=True)
    (ovmf / "OVMF_VARS.ms.fd").write_bytes(b"vars")
    assert run_links(tmp_path, "/opt/venv/bin").returncode == 0
    assert os.readlink(ovmf / "OVMF_VARS.secboot.fd") == "OVMF_VARS.ms.fd"


def test_links_refuse_a_missing_entry_point(tmp_path: Path) -> None:
    fake_install(tmp_path, "/opt/venv/bin")
    (tmp_path / "opt" / "venv" / "bin" / "virt-freezer").unlink()
    done = run_links(tmp_path, "/opt/venv/bin")
    assert done.returncode == 1
    assert "no executable /opt/venv/bin/virt-freezer" in done.stderr
    relative = run_links(tmp_path, "opt/venv/bin")
    assert relative.returncode == 1
    assert "must be absolute" in relative.stderr


KUBEVIRT_HELPERS = ("container-disk", "virt-tail", "virt-probe")


def helpers_note(root: Path) -> str:
    return (root / "usr" / "share" / "py-virt-launcher" / "kubevirt-helpers").read_text()


def test_kubevirt_helpers_absent_is_recorded(tmp_path: Path) -> None:
    fake_install(tmp_path, "/opt/venv/bin")
    done = subprocess.run(["bash", str(LINKS), "--root", str(tmp_path), "--kubevirt-helpers",
                           "/opt/venv/bin"], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert helpers_note(tmp_path).startswith("absent: container-disk virt-tail virt-probe")
    assert "KubeVirt's helpers: absent" in done.stdout


@pytest.mark.parametrize("present", [KUBEVIRT_HELPERS, KUBEVIRT_HELPERS[:2]])
def test_kubevirt_helpers_all_or_none(tmp_path: Path, present: tuple[str, ...]) -> None:
    fake_install(tmp_path, "/opt/venv/bin")
    for name in present:  # what COPY --from=helpers put there
        helper = tmp_path / "usr" / "bin" / name
        helper.parent.mkdir(parents=True, exist_ok=True)
        helper.write_text("#!/bin/sh\n")
        helper.chmod(0o755)
    done = subprocess.run(["bash", str(LINKS), "--root", str(tmp_path), "--kubevirt-helpers",
                           "/opt/venv/bin"], capture_output=True, text=True, timeout=30,
                          check=False)
    if present == KUBEVIRT_HELPERS:
        assert done.returncode == 0, done.stderr
        assert helpers_note(tmp_path).startswith("kubevirt: ")
    else:
        assert done.returncode == 1
        assert "has container-disk virt-tail but not all of" in done.stderr


# --- node-labeller.sh against fake virsh and daemons ----------------------------------------
FAKE_VIRSH = """#!/bin/bash
echo "virsh $*" >> "$FAKE_DIR/calls"
case " $* " in
  *" version "*) [[ -e $FAKE_DIR/up ]] ;;
  *" domcapabilities "*) echo "<domainCapabilities/>" ;;
  *" hypervisor-cpu-baseline "*) echo "<cpu mode='custom'/>" ;;
  *" capabilities "*) echo "<capabilities/>" ;;
  *) exit 9 ;;
esac
"""
FAKE_DAEMON = """#!/bin/bash
echo "$(basename "$0") $*" >> "$FAKE_DIR/calls"
[[ -n ${FAKE_NEVER_UP:-} ]] || touch "$FAKE_DIR/up"
"""
TOOLS = ("bash", "chmod", "mkdir", "rm", "cp", "sleep", "basename", "touch", "mknod")


@dataclass(frozen=True)
class Labeller:
    fake: Path
    out: Path
    dev: Path
    env: dict[str, str]

    def run(self, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(NODE_LABELLER)], env={**self.env, **extra},
                              capture_output=True, text=True, timeout=30, check=False)

    def calls(self) -> list[str]:
        path = self.fake / "calls"
        return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def labeller(tmp_path: Path) -> Labeller:
    fake, bindir, dev = tmp_path / "fake", tmp_path / "bin", tmp_path / "dev"
    for d in (fake, bindir, dev):
        d.mkdir()
    # A PATH of exactly the tools the script uses plus the fakes: no real daemon is found.
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (bindir / tool).symlink_to(found)
    for name, text in (("virsh", FAKE_VIRSH), ("libvirtd", FAKE_DAEMON)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    misc = tmp_path / "misc"
    misc.write_text(" 58 network_throughput\n183 hw_random\n")  # no kvm minor
    cpu_map = tmp_path / "cpu_map"
    cpu_map.mkdir()
    (cpu_map / "x86_Penryn.xml").write_text("<cpus/>")
    env = {"PATH": str(bindir), "FAKE_DIR": str(fake), "PVL_DEV_DIR": str(dev),
           "PVL_NODE_LABELLER_DIR": str(tmp_path / "out"), "PVL_PROC_MISC": str(misc),
           "PVL_CPU_MAP_DIR": str(cpu_map), "PVL_ARCH": "x86_64", "PVL_DAEMON_WAIT_S": "5"}
    return Labeller(fake=fake, out=tmp_path / "out", dev=dev, env=env)


def test_node_labeller_writes_capabilities_with_kvm(labeller: Labeller) -> None:
    kvm = labeller.dev / "kvm"
    kvm.write_text("")
    kvm.chmod(0o600)
    done = labeller.run()
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(kvm.stat().st_mode) & 0o006 == 0o006  # opened to the qemu user
    caps = "--machine q35 --arch x86_64 --virttype kvm"
    calls = labeller.calls()
    assert calls[0] == "libvirtd --daemon"
    assert f"virsh --quiet --connect qemu:///system domcapabilities {caps}" in calls
    assert (f"virsh --quiet --connect qemu:///system hypervisor-cpu-baseline --features {caps} "
            f"{labeller.out}/virsh_domcapabilities.xml") in calls
    assert (labeller.out / "virsh_domcapabilities.xml").read_text() == "<domainCapabilities/>\n"
    assert (labeller.out / "supported_features.xml").read_text() == "<cpu mode='custom'/>\n"
    assert (labeller.out / "capabilities.xml").read_text() == "<capabilities/>\n"
    assert (labeller.out / "cpu_map" / "x86_Penryn.xml").exists()


def test_node_labeller_falls_back_to_tcg_without_the_device(labeller: Labeller) -> None:
    done = labeller.run(PREFERRED_VIRTTYPE="kvm", HYPERVISOR_DEVICE="kvm")
    assert done.returncode == 0, done.stderr
    assert not (labeller.dev / "kvm").exists()  # no minor in /proc/misc: nothing made
    assert any(c.endswith("domcapabilities --machine q35 --arch x86_64 --virttype qemu")
               for c in labeller.calls())


def test_node_labeller_skips_other_architectures(labeller: Labeller) -> None:
    done = labeller.run(PVL_ARCH="riscv64")
    assert done.returncode == 0, done.stderr
    assert labeller.calls() == []
    assert not labeller.out.exists()


def test_node_labeller_fails_when_the_daemon_never_answers(labeller: Labeller) -> None:
    done = labeller.run(FAKE_NEVER_UP="1", PVL_DAEMON_WAIT_S="1")
    assert done.returncode == 1
    assert "did not answer on qemu:///system within 1s" in done.stderr
    assert not labeller.out.exists()
