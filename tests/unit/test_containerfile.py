"""The Containerfile, read as text (no container engine here): a build stage with the
compilers, a final stage with only runtime packages and the wheels, user 107 "qemu",
KubeVirt's paths laid out by hack/image-links.sh, the monitor as entrypoint, and the
Debian packages the project needs on the dev machine (hack/install-deps.sh) present in
the image unless they are only for building or testing."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tests import containerfile
from tests.containerfile import Stage

REPO = Path(__file__).resolve().parents[2]
MONITOR = "/usr/bin/virt-launcher-monitor"
QEMU_ID = "107"
BUILD_TOOLS = {"gcc", "g++", "cpp", "make", "pkg-config", "build-essential", "python3-dev"}
# hack/install-deps.sh packages the image does not need, and why.
NOT_IN_IMAGE = {
    "libvirt-dev", "pkg-config", "gcc", "python3-dev",  # build only: the build stage
    "make",  # runs the dev machine's Makefile
    "qemu-guest-agent", "busybox-static", "cpio", "gzip", "e2fsprogs",  # the test guest
    "libxml2-utils",  # virt-xml-validate in the converter tests
    "genisoimage",  # isoinfo in the disk tests (the launcher writes ISOs with pycdlib)
    "passwd",  # useradd/groupadd: in the base image already (Priority: required)
    # the image's venv is made in the build stage (--without-pip) and copied whole; Debian's
    # python3-venv (ensurepip's pip and setuptools wheels) is only needed there
    "python3-venv",
}
# What KubeVirt's pod templates run from the launcher image besides our commands.
KUBEVIRT_HELPERS = ("/usr/bin/container-disk", "/usr/bin/virt-tail", "/usr/bin/virt-probe")


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return containerfile.load()


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def install_deps_packages() -> set[str]:
    text = (REPO / "hack" / "install-deps.sh").read_text()
    match = re.search(r"^PKGS=\((.*?)\)", text, re.S | re.M)
    assert match, "hack/install-deps.sh: no PKGS=(...)"
    return set(match.group(1).split())


def test_build_stage_builds_wheels_with_the_pins(stages: list[Stage]) -> None:
    build = containerfile.stage(stages, "build")
    assert {"gcc", "libvirt-dev", "python3-dev", "pkg-config"} <= set(build.apt_packages())
    wheel = [c for c in build.commands() if c[1:2] == ["wheel"]]
    assert len(wheel) == 1
    cmd = wheel[0]
    assert cmd[cmd.index("-c") + 1] == "hack/constraints.txt"
    assert cmd[cmd.index("--wheel-dir") + 1] == "/wheels"
    assert "hack/constraints.txt" in build.copy_sources()


def test_build_stage_copies_what_the_package_build_needs(stages: list[Stage]) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    sources = set(containerfile.stage(stages, "build").copy_sources())
    assert "pyproject.toml" in sources
    assert project["project"]["readme"] in sources
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in sources, f"package {pattern} is not copied"


def test_final_stage_has_no_compilers_or_dev_packages(final: Stage) -> None:
    packages = set(final.apt_packages())
    assert packages, "the final stage installs no packages"
    assert not packages & BUILD_TOOLS
    assert not [p for p in packages if p.endswith("-dev")]


def test_final_stage_has_the_runtime_packages_of_the_dev_machine(final: Stage) -> None:
    needed = install_deps_packages() - NOT_IN_IMAGE
    missing = needed - set(final.apt_packages())
    assert not missing, f"in hack/install-deps.sh but not in the image: {sorted(missing)}"


def image_venv(stages: list[Stage]) -> str:
    build = containerfile.stage(stages, "build")
    venvs = [c for c in build.commands() if c[1:3] == ["-m", "venv"] and "--without-pip" in c]
    assert len(venvs) == 1, "the build stage makes one venv without pip: the image's"
    paths = [a for a in venvs[0][3:] if not a.startswith("-")]
    assert len(paths) == 1
    return paths[0]


def test_the_image_venv_is_made_from_the_built_wheels_only(stages: list[Stage]) -> None:
    venv = image_venv(stages)
    build = containerfile.stage(stages, "build")
    installs = [c for c in build.commands() if "pip" in c[0] and "install" in c]
    assert len(installs) == 1
    cmd = installs[0]
    assert cmd[cmd.index("--python") + 1] == f"{venv}/bin/python"
    assert "--no-index" in cmd
    assert cmd[cmd.index("--find-links") + 1] == "/wheels"
    assert cmd[-1] == "py-virt-launcher"


def test_final_stage_copies_the_venv_whole(stages: list[Stage], final: Stage) -> None:
    venv = image_venv(stages)
    copies = [c for c in final.all("COPY") if "--from=build" in c.flags]
    assert [c.args.split() for c in copies] == [[venv, venv]]
    # no pip, wheels or build tools reach the final stage any other way
    assert not [r for r in final.all("RUN") if "/wheels" in r.args or "pip" in r.args]


def test_user_107_qemu_exists(final: Stage) -> None:
    commands = final.commands()
    groupadd = [c for c in commands if c[0] == "groupadd" and c[-1] == "qemu"]
    useradd = [c for c in commands if c[0] == "useradd" and c[-1] == "qemu"]
    assert len(groupadd) == len(useradd) == 1
    assert groupadd[0][groupadd[0].index("--gid") + 1] == QEMU_ID
    user = useradd[0]
    assert user[user.index("--uid") + 1] == user[user.index("--gid") + 1] == QEMU_ID
    # Before any package can take id 107 (package scripts allocate system ids from 100 up).
    first_apt = next(i for i, c in enumerate(commands) if c[:2] == ["apt-get", "install"])
    assert commands.index(groupadd[0]) < first_apt
    assert commands.index(useradd[0]) < first_apt
    # The pod chooses the user, as with KubeVirt's image (root by default): KubeVirt sets
    # runAsUser 107 where it wants it and relies on root for virt-handler's node labeller.
    assert not final.all("USER")


def test_entrypoint_is_the_monitor(final: Stage) -> None:
    entrypoints = final.all("ENTRYPOINT")
    assert len(entrypoints) == 1
    assert containerfile.exec_form(entrypoints[0]) == [MONITOR]
    assert not final.all("CMD")


def test_kubevirt_paths_come_from_the_shared_script(stages: list[Stage], final: Stage) -> None:
    links = [c for c in final.commands() if any(a.endswith("image-links.sh") for a in c)]
    assert len(links) == 1
    assert links[0][-1] == f"{image_venv(stages)}/bin"
    assert "--kubevirt-helpers" in links[0]  # checks and records the helpers stage's result
    # hack/ is bind-mounted into that step: its cache must depend on hack/'s content
    # (hack/build-image.sh passes the sources' digest), declared before the step
    names = [i.keyword + " " + i.args for i in final.instructions]
    digest = names.index("ARG SOURCES_DIGEST=unset")
    run = next(i for i, ins in enumerate(final.instructions)
               if ins.keyword == "RUN" and "image-links.sh" in ins.args)
    assert digest < run
    assert "SOURCES_DIGEST=$digest" in (REPO / "hack" / "build-image.sh").read_text()


def test_kubevirt_helpers_are_optional(stages: list[Stage], final: Stage) -> None:
    args = containerfile.global_args()
    assert args["KUBEVIRT_HELPERS"] == "absent"  # buildable without KubeVirt's registry
    kubevirt = containerfile.stage(stages, "kubevirt")
    assert kubevirt.base == "${KUBEVIRT_LAUNCHER}:${KUBEVIRT_VERSION}"
    with_helpers = containerfile.stage(stages, "helpers-kubevirt")
    [copy] = with_helpers.all("COPY")
    assert "--from=kubevirt" in copy.flags
    *sources, target = copy.args.split()
    assert tuple(sources) == KUBEVIRT_HELPERS and target == "/helpers/"
    without = containerfile.stage(stages, "helpers-absent")
    assert without.commands() == [["mkdir", "/helpers"]]  # an empty directory
    assert containerfile.stage(stages, "helpers").base == "helpers-${KUBEVIRT_HELPERS}"
    helpers = [c for c in final.all("COPY") if "--from=helpers" in c.flags]
    assert [c.args for c in helpers] == ["/helpers/ /usr/bin/"]
    labels = " ".join(i.args for i in final.all("LABEL"))
    assert 'io.github.py-virt-launcher.kubevirt-helpers="${KUBEVIRT_HELPERS}"' in labels
    assert "KUBEVIRT_HELPERS" in [i.args for i in final.all("ARG")]


def test_every_stage_is_the_same_debian(stages: list[Stage]) -> None:
    # libvirt-python is compiled in the build stage against the libvirt the final stage has
    assert containerfile.global_args()["DEBIAN_IMAGE"] == "debian:bookworm-slim"
    debian = [s for s in stages if "DEBIAN" in s.base]
    assert {s.base for s in debian} == {"${DEBIAN_IMAGE}"}
    assert {s.name for s in debian} == {"helpers-absent", "build", ""}


def test_hadolint_config_justifies_every_ignored_rule() -> None:
    lines = (REPO / ".hadolint.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.fullmatch(r"\s*- DL\d+\s*", line):
            assert lines[i - 1].strip().startswith("#"), f"{line.strip()} has no reason"
