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


def test_agent_channel_socket_in_session_mode_and_the_pod_always_fits() -> None:
    from launcher.paths import MAX_SOCKET_PATH, agent_socket_too_long  # noqa: PLC0415

    p = derive(flags.parse(["--name", "vm", "--namespace", "ns", "--run-as-nonroot"],
                           environ={}))
    # the path libvirt 9's session daemon generated in tests/e2e/test_nonroot.py's boots
    assert p.agent_channel_socket("ns_vm", 1) == (
        "/var/run/kubevirt-private/libvirt/qemu/channel/target/domain-1-ns_vm/"
        "org.qemu.guest_agent.0")
    # libvirt's short name: the first 20 characters of the domain name
    longest = "n" * 63 + "_" + "v" * 63
    worst = p.agent_channel_socket(longest)
    assert worst is not None and f"/domain-99-{'n' * 20}/" in worst
    # KubeVirt's own layout (runtime root /): even the longest name fits
    assert len(worst) <= MAX_SOCKET_PATH
    assert agent_socket_too_long(p, longest) is None
    # under a runtime root it may not; system mode uses libvirt's /var/lib path
    deep = derive(flags.parse(["--run-as-nonroot", "--runtime-root", "/" + "r" * 20],
                              environ={}))
    assert agent_socket_too_long(deep, longest) is not None
    root_mode = derive(flags.parse(["--runtime-root", "/" + "r" * 20], environ={}))
    assert root_mode.agent_channel_socket(longest) is None
    assert agent_socket_too_long(root_mode, longest) is None
