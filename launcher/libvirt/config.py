"""The config files the launcher writes for its libvirt daemon, virtlogd and QEMU.

As KubeVirt: no TCP/TLS listeners, logs to stderr (the launcher relays them into its own
structured log), QEMU's stdio through virtlogd, no cgroup controllers or namespaces (the
pod already is the sandbox).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from launcher.flags import Options
from launcher.paths import Paths

# libvirt's own debug filter set, used by KubeVirt when verbosity asks for libvirt debug logs.
DEBUG_LOG_FILTERS = (
    "3:remote 4:event 3:util.json 3:util.object 3:util.dbus 3:util.netlink "
    "3:node_device 3:rpc 3:access 1:*"
)
# KubeVirt turns on libvirt debug logging above this verbosity.
LIBVIRT_DEBUG_VERBOSITY = 5


def _value(v: str | int | list[str]) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[ " + ", ".join(_quote(x) for x in v) + " ]"
    return _quote(v)


def _quote(s: str) -> str:
    if any(c in s for c in '"\n\\'):
        raise ValueError(f"unsupported character in libvirt config value {s!r}")
    return f'"{s}"'


def render(settings: Mapping[str, str | int | list[str]]) -> str:
    lines = ["# written by py-virt-launcher; regenerated at every start"]
    lines += [f"{key} = {_value(val)}" for key, val in settings.items()]
    return "\n".join(lines) + "\n"


def log_settings(opts: Options) -> dict[str, str | int | list[str]]:
    if opts.libvirt_log_filters:
        return {"log_filters": opts.libvirt_log_filters, "log_outputs": "1:stderr"}
    if opts.verbosity > LIBVIRT_DEBUG_VERBOSITY:
        return {"log_filters": DEBUG_LOG_FILTERS, "log_outputs": "1:stderr"}
    # 3 = warnings and errors
    return {"log_outputs": "3:stderr"}


def daemon_settings(opts: Options, paths: Paths) -> dict[str, str | int | list[str]]:
    settings: dict[str, str | int | list[str]] = {}
    if paths.daemon == "libvirtd":
        # Only the monolithic daemon has network listeners; make sure they stay off.
        settings.update(listen_tls=0, listen_tcp=0)
    settings.update(
        unix_sock_dir=paths.libvirt_run_dir,
        unix_sock_rw_perms="0700",
        unix_sock_ro_perms="0700",
        unix_sock_admin_perms="0700",
        # The socket's mode is the access control (only the launcher's user connects);
        # polkit is not running in a pod.
        auth_unix_rw="none",
        auth_unix_ro="none",
    )
    settings.update(log_settings(opts))
    return settings


def virtlogd_settings(opts: Options) -> dict[str, str | int | list[str]]:
    return dict(log_settings(opts))


def qemu_settings(paths: Paths) -> dict[str, str | int | list[str]]:
    settings: dict[str, str | int | list[str]] = {"stdio_handler": "logd"}
    if not paths.nonroot:
        settings.update(
            # QEMU runs as the launcher's user. KubeVirt's root pods use uid 107 "qemu"
            # with SELinux; here the container boundary is the isolation.
            user="root",
            group="root",
            dynamic_ownership=0,
            remember_owner=0,
            security_driver="none",
            cgroup_controllers=[],
            namespaces=[],
        )
    return settings


def write_file(path: str, content: str, mode: int = 0o600) -> None:
    """Write atomically: a daemon restarting mid-write must never read half a config."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, content.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_all(opts: Options, paths: Paths) -> None:
    write_file(paths.daemon_conf, render(daemon_settings(opts, paths)))
    write_file(paths.virtlogd_conf, render(virtlogd_settings(opts)))
    write_file(paths.qemu_conf, render(qemu_settings(paths)))
