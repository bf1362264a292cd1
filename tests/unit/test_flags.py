from __future__ import annotations

import pytest

from launcher import flags
from launcher.durations import DurationError, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("278s", 278), ("3m", 180), ("1h2m3.5s", 3723.5), ("500ms", 0.5), ("0", 0),
     ("1.5h", 5400), ("2m0s", 120), ("100us", 1e-4), ("-5s", -5)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "needle"),
    [("300", "missing unit"), ("", "empty"), ("3x", "invalid duration"), ("s", "invalid"),
     ("1m junk", "invalid")],
)
def test_bad_durations_say_what_is_wrong(text: str, needle: str) -> None:
    with pytest.raises(DurationError, match=needle):
        parse_duration(text)



def test_kubevirt_defaults() -> None:
    o = flags.parse([], environ={})
    assert o.qemu_timeout_s == 180
    assert o.kubevirt_share_dir == "/var/run/kubevirt"
    assert o.ephemeral_disk_dir == "/var/run/kubevirt-ephemeral-disks"
    assert o.container_disk_dir == "/var/run/kubevirt/container-disks"
    assert o.hotplug_disk_dir == "/var/run/kubevirt/hotplug-disks/"
    assert o.grace_period_seconds == 30
    assert o.hook_sidecars == 0
    assert o.ovmf_path == "/usr/share/OVMF"
    assert o.hypervisor == "kvm"
    assert not (o.run_as_nonroot or o.allow_emulation or o.keep_after_failure or o.simulate_crash)
    assert (o.qemu_agent_sys_interval_s, o.qemu_agent_file_interval_s,
            o.qemu_agent_user_interval_s, o.qemu_agent_version_interval_s,
            o.qemu_fsfreeze_status_interval_s) == (120, 300, 10, 300, 5)
    assert o.verbosity == 2
    assert o.runtime_root == "/"
    assert o.virtlogd == "/usr/sbin/virtlogd"
    assert o.libvirt_daemon.endswith(("virtqemud", "libvirtd"))


def test_seed_001_command_line_parses() -> None:
    # The command line KubeVirt's controller generates (seed 001), flag for flag.
    argv = ["--qemu-timeout", "278s", "--name", "testvm", "--uid",
            "ad7cbd1a-0b8f-4d6a-9e87-e3f2b3d5ba4f", "--namespace", "default",
            "--kubevirt-share-dir", "/var/run/kubevirt", "--ephemeral-disk-dir",
            "/var/run/kubevirt-ephemeral-disks", "--container-disk-dir",
            "/var/run/kubevirt/container-disks", "--grace-period-seconds", "45",
            "--hook-sidecars", "0", "--ovmf-path", "/usr/share/OVMF"]
    o = flags.parse(argv, environ={})
    assert o.qemu_timeout_s == 278
    assert o.grace_period_seconds == 45
    assert o.domain_name == "default_testvm"


def test_pflag_style_booleans() -> None:
    o = flags.parse(["--allow-emulation", "--run-as-nonroot=true", "--simulate-crash=false"],
                    environ={})
    assert o.allow_emulation and o.run_as_nonroot and not o.simulate_crash
    with pytest.raises(flags.FlagError, match="--allow-emulation: invalid boolean 'maybe'"):
        flags.parse(["--allow-emulation=maybe"], environ={})


@pytest.mark.parametrize(
    ("argv", "needle"),
    [(["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
     (["--qemu-timeout", "300"], "missing unit"),
     (["--grace-period-seconds", "-1"], ">= 0"),
     (["--grace-period-seconds", "ten"], "whole number"),
     (["--hypervisor", "xen"], "invalid choice: 'xen'"),
     (["--runtime-root", "relative/dir"], "--runtime-root: must be an absolute path"),
     (["--kubevirt-share-dir", "share"], "--kubevirt-share-dir: must be an absolute path"),
     (["--qemu-time", "3m"], "unrecognized arguments"),  # no abbreviations
     ],
)
def test_bad_flags_are_specific_errors(argv: list[str], needle: str) -> None:
    with pytest.raises(flags.FlagError, match=needle.replace("(", r"\(")):
        flags.parse(argv, environ={})


def test_environment() -> None:
    o = flags.parse([], environ={"VIRT_LAUNCHER_RUNTIME_ROOT": "/tmp/x/",
                                 "VIRT_LAUNCHER_LOG_VERBOSITY": "6"})
    assert o.runtime_root == "/tmp/x"
    assert o.verbosity == 6
    # the flag wins over the environment
    o = flags.parse(["--runtime-root", "/srv/r"], environ={"VIRT_LAUNCHER_RUNTIME_ROOT": "/x"})
    assert o.runtime_root == "/srv/r"
    with pytest.raises(flags.FlagError, match="VIRT_LAUNCHER_LOG_VERBOSITY: expected an integer"):
        flags.parse([], environ={"VIRT_LAUNCHER_LOG_VERBOSITY": "loud"})


def test_monitor_passes_everything_but_its_own_flags() -> None:
    argv = ["--name", "vm", "--keep-after-failure", "--launcher-binary", "/x/launcher",
            "--grace-period-seconds", "5", "--launcher-binary=/y", "--keep-after-failure=true",
            "--allow-emulation"]
    assert flags.strip_monitor_only(argv) == ["--name", "vm", "--grace-period-seconds", "5",
                                              "--allow-emulation"]
    # everything the monitor passes on is a valid launcher command line
    flags.parse(flags.strip_monitor_only(argv), environ={})
