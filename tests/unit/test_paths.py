from __future__ import annotations

from launcher import flags
from launcher.paths import derive, reroot


def _paths(*argv: str) -> object:
    return derive(flags.parse(["--name", "vm", "--namespace", "ns", "--uid", "u-1",
                               "--libvirt-daemon", "/usr/sbin/virtqemud", *argv], environ={}))


def test_reroot() -> None:
    assert reroot("/", "/var/run/kubevirt") == "/var/run/kubevirt"
    assert reroot("/tmp/r", "/var/run/kubevirt") == "/tmp/r/var/run/kubevirt"
    hotplug = reroot("/tmp/r", "/var/run/kubevirt/hotplug-disks/")
    assert hotplug == "/tmp/r/var/run/kubevirt/hotplug-disks"


def test_default_root_paths_are_exactly_kubevirts() -> None:
    p = derive(flags.parse(["--name", "vm", "--namespace", "ns", "--uid", "u-1",
                            "--libvirt-daemon", "/usr/sbin/virtqemud"], environ={}))
    assert p.cmd_init_socket == "/var/run/kubevirt/sockets/launcher-init-sock"
    assert p.cmd_socket == "/var/run/kubevirt/sockets/launcher-sock"
    assert p.notify_socket == "/var/run/kubevirt/domain-notify-pipe.sock"
    assert p.vmi_private_dir == "/var/run/kubevirt-private/u-1"
    assert p.daemon_conf == "/var/run/libvirt/virtqemud.conf"
    assert p.daemon_socket == "/var/run/libvirt/virtqemud-sock"
    assert p.qemu_conf == "/etc/libvirt/qemu.conf"
    assert p.qemu_pidfile == "/run/libvirt/qemu/ns_vm.pid"
    assert p.qemu_log_dir == "/var/log/libvirt/qemu"
    assert p.uri == "qemu:///system"
    assert p.namespace_binds() == []
    assert p.xdg_env == {}


def test_default_root_nonroot_matches_kubevirt_session_mode() -> None:
    p = derive(flags.parse(["--name", "vm", "--namespace", "ns", "--run-as-nonroot",
                            "--libvirt-daemon", "/usr/sbin/virtqemud"], environ={}))
    assert p.uri == "qemu+unix:///session?socket=/var/run/libvirt/virtqemud-sock"
    assert p.qemu_conf == "/var/run/kubevirt-private/libvirt/qemu.conf"
    assert p.daemon_conf == "/var/run/kubevirt-private/libvirt/virtqemud.conf"
    assert p.qemu_pidfile == "/var/run/libvirt/qemu/run/ns_vm.pid"
    assert p.xdg_env["XDG_RUNTIME_DIR"] == "/var/run"
    assert p.xdg_env["XDG_CONFIG_HOME"] == "/var/run/kubevirt-private"


def test_libvirtd_names_its_socket_differently() -> None:
    p = derive(flags.parse(["--libvirt-daemon", "/usr/sbin/libvirtd"], environ={}))
    assert p.daemon_socket == "/var/run/libvirt/libvirt-sock"
    assert "/var/run/libvirt/libvirt-admin-sock" in p.stale_sockets("libvirtd")
    assert p.daemon_conf == "/var/run/libvirt/libvirtd.conf"


def test_runtime_root_puts_every_path_under_it() -> None:
    p = derive(flags.parse(["--runtime-root", "/tmp/r", "--name", "vm", "--namespace", "ns",
                            "--libvirt-daemon", "/usr/sbin/libvirtd"], environ={}))
    every = [p.cmd_socket, p.notify_socket, p.private_dir, p.daemon_conf, p.daemon_socket,
             p.virtlogd_socket, p.qemu_conf, p.qemu_pidfile, p.qemu_log_dir, p.daemon_pidfile,
             *p.dirs_to_create(), *p.stale_sockets("virtlogd")]
    assert all(x.startswith("/tmp/r/") for x in every), every
    assert p.uri == "qemu+unix:///system?socket=/tmp/r/var/run/libvirt/libvirt-sock"
    binds = dict((dst, src) for src, dst in p.namespace_binds())
    assert binds["/etc/libvirt"] == "/tmp/r/etc/libvirt"
    assert binds["/run/libvirt"] == "/tmp/r/var/run/libvirt"
    assert p.qemu_pidfile == "/tmp/r/var/run/libvirt/qemu/ns_vm.pid"
