"""Command-line flags of virt-launcher, shared with virt-launcher-monitor.

Pure: imports only the standard library's argparse, so the monitor (whose RSS is part of
every VM's overhead) can validate the launcher's flags without importing asyncio, grpc or
libvirt. Names, types and defaults are KubeVirt's (cmd/virt-launcher); flags marked
"beyond" are ours.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import NamedTuple

from launcher.durations import DurationError, parse_duration

DEFAULT_QEMU_TIMEOUT_S = 180.0
HYPERVISORS = ("kvm", "stratovirt")
CONFIG_UNSAFE = frozenset('"\\')  # plus control characters: see parse()

# Flags that take no value (pflag bools): "--flag" or "--flag=true|false", never "--flag x".
BOOL_FLAGS = (
    "run-as-nonroot",
    "allow-emulation",
    "simulate-crash",
    "keep-after-failure",
)
# Flags only the monitor understands; it strips them before starting the launcher.
MONITOR_ONLY_FLAGS = ("keep-after-failure", "launcher-binary", "launcher-stop-timeout")


class Options(NamedTuple):
    # A NamedTuple, not a dataclass: the monitor imports this module, and dataclasses
    # (with inspect/ast) costs it over a MiB of RSS.
    qemu_timeout_s: float
    name: str
    uid: str
    namespace: str
    kubevirt_share_dir: str
    ephemeral_disk_dir: str
    container_disk_dir: str
    hotplug_disk_dir: str
    grace_period_seconds: int
    hook_sidecars: int
    ovmf_path: str
    run_as_nonroot: bool
    allow_emulation: bool
    libvirt_log_filters: str
    hypervisor: str
    keep_after_failure: bool
    simulate_crash: bool
    qemu_agent_sys_interval_s: float
    qemu_agent_file_interval_s: float
    qemu_agent_user_interval_s: float
    qemu_agent_version_interval_s: float
    qemu_fsfreeze_status_interval_s: float
    verbosity: int
    # beyond KubeVirt
    runtime_root: str
    libvirt_daemon: str
    virtlogd: str
    launcher_binary: str
    launcher_stop_timeout_s: float | None  # None: derived from launcher.shutdown_budget
    hook_timeout_s: float = 60.0  # each hook sidecar call (KubeVirt: a minute)

    @property
    def domain_name(self) -> str:
        """libvirt's name for the VMI's domain, as KubeVirt names it."""
        return f"{self.namespace}_{self.name}"


class FlagError(ValueError):
    """A flag or environment value that cannot be used; the message names it."""


def _duration(text: str) -> float:
    try:
        value = parse_duration(text)
    except DurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"negative duration {text!r}")
    return value


def _interval(text: str) -> float:
    """A polling interval: Go's time.NewTicker panics on one <= 0; here it would poll in
    a busy loop."""
    value = _duration(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def _parse_bool(flag: str, text: str) -> bool:
    # The spellings Go's strconv.ParseBool accepts.
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise FlagError(f"--{flag}: invalid boolean {text!r} (expected true or false)")


def default_libvirt_daemon() -> str:
    """virtqemud where the distribution ships it (KubeVirt's images), else the monolithic
    libvirtd (Debian ships no split daemons): same QEMU driver, same RPC."""
    directories = ["/usr/sbin", "/usr/bin", "/usr/local/sbin", *os.get_exec_path()]
    for candidate in ("virtqemud", "libvirtd"):
        for directory in directories:
            path = os.path.join(directory, candidate)
            if os.access(path, os.X_OK):
                return path
    return "/usr/sbin/virtqemud"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse prints usage and exits 2; keep that contract but make the message
        # name the program and say how to list the flags.
        raise FlagError(f"{message} (see --help)")


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, allow_abbrev=False, description=f"{prog} (py-virt-launcher)")
    a = p.add_argument
    a("--qemu-timeout", type=_duration, default=DEFAULT_QEMU_TIMEOUT_S, metavar="DURATION",
      help="how long to wait for the domain to be defined and QEMU to start (default 3m)")
    a("--name", default="", help="name of the VirtualMachineInstance")
    a("--uid", default="", help="UID of the VirtualMachineInstance")
    a("--namespace", default="", help="namespace of the VirtualMachineInstance")
    a("--kubevirt-share-dir", default="/var/run/kubevirt",
      help="directory shared with virt-handler (default /var/run/kubevirt)")
    a("--ephemeral-disk-dir", default="/var/run/kubevirt-ephemeral-disks")
    a("--container-disk-dir", default="/var/run/kubevirt/container-disks")
    a("--hotplug-disk-dir", default="/var/run/kubevirt/hotplug-disks/")
    a("--grace-period-seconds", type=_non_negative_int, default=30, metavar="N",
      help="seconds to wait for a graceful guest shutdown before destroying it")
    a("--hook-sidecars", type=_non_negative_int, default=0, metavar="N")
    a("--ovmf-path", default="/usr/share/OVMF")
    a("--run-as-nonroot", action="store_true",
      help="run the libvirt daemon in session mode as the current (unprivileged) user")
    a("--allow-emulation", action="store_true",
      help="fall back to software emulation (TCG) when KVM is unusable")
    a("--libvirt-log-filters", default="", metavar="FILTERS",
      help="custom libvirt log filters (enables libvirt debug output)")
    a("--hypervisor", default="kvm", choices=HYPERVISORS)
    a("--keep-after-failure", action="store_true",
      help="(monitor) on a non-zero exit, stay alive for debugging until signalled")
    a("--simulate-crash", action="store_true",
      help="exit at once with a failure (KubeVirt's crash-loop test hook)")
    a("--qemu-agent-sys-interval", type=_interval, default=120.0, metavar="DURATION")
    a("--qemu-agent-file-interval", type=_interval, default=300.0, metavar="DURATION")
    a("--qemu-agent-user-interval", type=_interval, default=10.0, metavar="DURATION")
    a("--qemu-agent-version-interval", type=_interval, default=300.0, metavar="DURATION")
    a("--qemu-fsfreeze-status-interval", type=_interval, default=5.0, metavar="DURATION")
    a("-v", "--v", dest="verbosity", type=_non_negative_int, default=None, metavar="LEVEL",
      help="log verbosity (env VIRT_LAUNCHER_LOG_VERBOSITY overrides, as in KubeVirt)")
    # beyond KubeVirt
    a("--runtime-root", default=None, metavar="DIR",
      help="prefix for every absolute path the launcher uses "
           "(env VIRT_LAUNCHER_RUNTIME_ROOT, default /)")
    a("--libvirt-daemon", default=None, metavar="PATH",
      help="libvirt daemon binary (default: virtqemud if installed, else libvirtd)")
    a("--virtlogd", default="/usr/sbin/virtlogd", metavar="PATH", help="virtlogd binary")
    a("--launcher-binary", default="", metavar="PATH",
      help="(monitor) the virt-launcher to start (default: beside the monitor, else PATH)")
    a("--hook-timeout", type=_interval, default=60.0, metavar="DURATION",
      help="deadline of each hook sidecar call (default 1m, as KubeVirt's)")
    a("--launcher-stop-timeout", type=_duration, default=None, metavar="DURATION",
      help="(monitor) how long the launcher may take to exit after a forwarded signal "
           "before it is SIGKILLed (default: the grace period plus every deadline the "
           "launcher keeps after it)")
    return p


def normalize_bools(argv: Sequence[str]) -> list[str]:
    """pflag accepts "--flag=false" for booleans; argparse's store_true does not."""
    out: list[str] = []
    for arg in argv:
        if arg.startswith("--") and "=" in arg:
            name, _, value = arg[2:].partition("=")
            if name in BOOL_FLAGS:
                if _parse_bool(name, value):
                    out.append(f"--{name}")
                continue
        out.append(arg)
    return out


def parse(argv: Sequence[str], prog: str = "virt-launcher",
          environ: dict[str, str] | None = None) -> Options:
    """Parse argv (without the program name). Raises FlagError with a specific message."""
    env = os.environ if environ is None else environ
    ns = build_parser(prog).parse_args(normalize_bools(argv))
    verbosity = 2 if ns.verbosity is None else ns.verbosity
    if "VIRT_LAUNCHER_LOG_VERBOSITY" in env:
        raw = env["VIRT_LAUNCHER_LOG_VERBOSITY"]
        try:
            verbosity = int(raw, 10)
        except ValueError:
            raise FlagError(
                f"VIRT_LAUNCHER_LOG_VERBOSITY: expected an integer, got {raw!r}"
            ) from None
        if verbosity < 0:
            raise FlagError(f"VIRT_LAUNCHER_LOG_VERBOSITY: expected a number >= 0, got {raw!r}")
    runtime_root = ns.runtime_root
    root_source = "--runtime-root"
    if runtime_root is None:
        runtime_root = env.get("VIRT_LAUNCHER_RUNTIME_ROOT", "/") or "/"
        root_source = "VIRT_LAUNCHER_RUNTIME_ROOT"
    if not os.path.isabs(runtime_root):
        raise FlagError(f"{root_source}: must be an absolute path, got {runtime_root!r}")
    # Both end up in the libvirt daemons' config files, whose string syntax cannot carry
    # these (launcher.libvirt.config); refused here rather than as a crash at start-up.
    for source, value in ((root_source, runtime_root),
                          ("--libvirt-log-filters", ns.libvirt_log_filters)):
        bad = sorted({c for c in value if c in CONFIG_UNSAFE or ord(c) < 0x20})
        if bad:
            raise FlagError(f"{source}: {value!r} contains {', '.join(map(repr, bad))}, "
                            "which a libvirt config file cannot carry")
    for flag in ("kubevirt_share_dir", "ephemeral_disk_dir", "container_disk_dir",
                 "hotplug_disk_dir"):
        value = getattr(ns, flag)
        if not os.path.isabs(value):
            raise FlagError(f"--{flag.replace('_', '-')}: must be an absolute path, got {value!r}")
    return Options(
        qemu_timeout_s=ns.qemu_timeout,
        name=ns.name,
        uid=ns.uid,
        namespace=ns.namespace,
        kubevirt_share_dir=ns.kubevirt_share_dir,
        ephemeral_disk_dir=ns.ephemeral_disk_dir,
        container_disk_dir=ns.container_disk_dir,
        hotplug_disk_dir=ns.hotplug_disk_dir,
        grace_period_seconds=ns.grace_period_seconds,
        hook_sidecars=ns.hook_sidecars,
        ovmf_path=ns.ovmf_path,
        run_as_nonroot=ns.run_as_nonroot,
        allow_emulation=ns.allow_emulation,
        libvirt_log_filters=ns.libvirt_log_filters,
        hypervisor=ns.hypervisor,
        keep_after_failure=ns.keep_after_failure,
        simulate_crash=ns.simulate_crash,
        qemu_agent_sys_interval_s=ns.qemu_agent_sys_interval,
        qemu_agent_file_interval_s=ns.qemu_agent_file_interval,
        qemu_agent_user_interval_s=ns.qemu_agent_user_interval,
        qemu_agent_version_interval_s=ns.qemu_agent_version_interval,
        qemu_fsfreeze_status_interval_s=ns.qemu_fsfreeze_status_interval,
        verbosity=verbosity,
        runtime_root=os.path.normpath(runtime_root),
        libvirt_daemon=ns.libvirt_daemon or default_libvirt_daemon(),
        virtlogd=ns.virtlogd,
        launcher_binary=ns.launcher_binary,
        launcher_stop_timeout_s=ns.launcher_stop_timeout,
        hook_timeout_s=ns.hook_timeout,
    )


def strip_monitor_only(argv: Sequence[str]) -> list[str]:
    """The launcher's argv: the monitor's own minus the flags only the monitor handles
    (as KubeVirt's monitor drops --keep-after-failure)."""
    out: list[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
            continue
        name = arg[2:].partition("=")[0] if arg.startswith("--") else ""
        if name in MONITOR_ONLY_FLAGS:
            # Value-taking monitor flags given as "--flag VALUE" drop the next token too.
            skip_value = name not in BOOL_FLAGS and "=" not in arg
            continue
        out.append(arg)
    return out
