"""Every filesystem path the launcher uses, derived from the flags and the runtime root.

Pure (standard library only) so the monitor can find QEMU's logs and pid files too. With
runtime root "/" the paths are exactly KubeVirt's; with any other root each absolute path
is re-rooted under it, so several launchers can run side by side.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from launcher.flags import Options

# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107

VIRTLOGD = "virtlogd"


def reroot(root: str, path: str) -> str:
    """`path` (absolute) as seen under `root`."""
    if root == "/":
        return os.path.normpath(path)
    return os.path.normpath(os.path.join(root, path.lstrip("/")))


def daemon_name(binary: str) -> str:
    """'virtqemud' or 'libvirtd': the socket, config and pid file names follow it."""
    return os.path.basename(binary)


class Paths(NamedTuple):
    root: str
    nonroot: bool
    daemon: str  # basename of the libvirt daemon binary
    domain: str  # <namespace>_<name>
    uid: str
    share_dir: str
    ephemeral_disk_dir: str
    container_disk_dir: str
    hotplug_disk_dir: str

    # --- KubeVirt's shared and private directories -------------------------------------
    @property
    def sockets_dir(self) -> str:
        return os.path.join(self.share_dir, "sockets")

    @property
    def cmd_init_socket(self) -> str:
        return os.path.join(self.sockets_dir, "launcher-init-sock")

    @property
    def cmd_socket(self) -> str:
        return os.path.join(self.sockets_dir, "launcher-sock")

    @property
    def notify_socket(self) -> str:
        return os.path.join(self.share_dir, "domain-notify-pipe.sock")

    @property
    def hooks_dir(self) -> str:
        """KubeVirt's hook sidecar sockets: <dir>/<socket>, one <dir> per sidecar."""
        return reroot(self.root, "/var/run/kubevirt-hooks")

    @property
    def network_info(self) -> str:
        """The pod's network-info downward API file (Multus network status with the SR-IOV
        devices' PCI addresses): KubeVirt's /etc/podinfo/network-info."""
        return reroot(self.root, "/etc/podinfo/network-info")

    @property
    def private_dir(self) -> str:
        return reroot(self.root, "/var/run/kubevirt-private")

    @property
    def vmi_private_dir(self) -> str:
        return os.path.join(self.private_dir, self.uid or "unknown-uid")

    # --- libvirt ----------------------------------------------------------------------
    def _run(self, sub: str) -> str:
        """A path under /run. On a real root /var/run is the distribution's symlink to /run
        and KubeVirt's spellings are kept; under a runtime root, <root>/var/run is the one
        run directory (virt-handler, or a test, may have created it already as a plain
        directory, so no symlink is relied upon)."""
        if self.root == "/":
            return os.path.join("/run", sub)
        return reroot(self.root, os.path.join("/var/run", sub))

    @property
    def libvirt_run_dir(self) -> str:
        """Sockets and (root) daemon configs: /var/run/libvirt."""
        return reroot(self.root, "/var/run/libvirt")

    @property
    def libvirt_home(self) -> str:
        """Non-root: XDG_CONFIG_HOME/XDG_CACHE_HOME (KubeVirt's /var/run/kubevirt-private)."""
        return self.private_dir

    @property
    def xdg_env(self) -> dict[str, str]:
        """Session-mode environment for both daemons: KubeVirt points the XDG dirs at the
        private dir and /var/run, which makes the session daemon's socket land in
        /var/run/libvirt and QEMU's pid files in /var/run/libvirt/qemu/run."""
        if not self.nonroot:
            return {}
        return {
            "XDG_RUNTIME_DIR": reroot(self.root, "/var/run"),
            "XDG_CONFIG_HOME": self.libvirt_home,
            "XDG_CACHE_HOME": self.libvirt_home,
            "HOME": self.libvirt_home,
        }

    @property
    def conf_dir(self) -> str:
        """Where the launcher writes the daemons' own config files."""
        if self.nonroot:
            return os.path.join(self.libvirt_home, "libvirt")
        return self.libvirt_run_dir

    @property
    def daemon_conf(self) -> str:
        return os.path.join(self.conf_dir, f"{self.daemon}.conf")

    @property
    def virtlogd_conf(self) -> str:
        return os.path.join(self.conf_dir, f"{VIRTLOGD}.conf")

    @property
    def qemu_conf(self) -> str:
        # system mode reads /etc/libvirt/qemu.conf (fixed); session mode reads
        # $XDG_CONFIG_HOME/libvirt/qemu.conf
        if self.nonroot:
            return os.path.join(self.libvirt_home, "libvirt", "qemu.conf")
        return reroot(self.root, "/etc/libvirt/qemu.conf")

    @property
    def daemon_socket(self) -> str:
        sock = "libvirt-sock" if self.daemon == "libvirtd" else f"{self.daemon}-sock"
        return os.path.join(self.libvirt_run_dir, sock)

    @property
    def daemon_pidfile(self) -> str:
        return os.path.join(self.libvirt_run_dir, f"{self.daemon}.pid")

    @property
    def virtlogd_socket(self) -> str:
        return os.path.join(self.libvirt_run_dir, "virtlogd-sock")

    @property
    def virtlogd_pidfile(self) -> str:
        return os.path.join(self.libvirt_run_dir, f"{VIRTLOGD}.pid")

    def stale_sockets(self, daemon: str) -> list[str]:
        """Socket files a daemon leaves behind when killed (they refuse the next connect)."""
        d = self.libvirt_run_dir
        if daemon == VIRTLOGD:
            return [os.path.join(d, n) for n in ("virtlogd-sock", "virtlogd-admin-sock")]
        if daemon == "libvirtd":
            names = ("libvirt-sock", "libvirt-sock-ro", "libvirt-admin-sock")
        else:
            names = (f"{daemon}-sock", f"{daemon}-sock-ro", f"{daemon}-admin-sock")
        return [os.path.join(d, n) for n in names]

    def agent_channel_socket(self, domain: str, domain_id: int = 99) -> str | None:
        """Session mode: the guest agent socket libvirt generates for `domain` (KubeVirt's
        converter leaves the channel's path to libvirt) in a directory named after the
        domain's "short name", its id and the first 20 characters of its name
        (virDomainDefGetShortName); the id defaults to a two-digit one. None in system
        mode, where the directory is libvirt's own short /var/lib/libvirt/qemu/channel."""
        if not self.nonroot:
            return None
        return os.path.join(self.libvirt_home, "libvirt", "qemu", "channel", "target",
                            f"domain-{domain_id}-{domain[:20]}", "org.qemu.guest_agent.0")

    @property
    def uri(self) -> str:
        mode = "session" if self.nonroot else "system"
        if self.root == "/" and not self.nonroot:
            return "qemu:///system"
        return f"qemu+unix:///{mode}?socket={self.daemon_socket}"

    @property
    def qemu_pid_dir(self) -> str:
        if self.nonroot:
            return reroot(self.root, "/var/run/libvirt/qemu/run")
        return self._run("libvirt/qemu")

    @property
    def qemu_pidfile(self) -> str:
        return os.path.join(self.qemu_pid_dir, f"{self.domain}.pid")

    @property
    def qemu_log_dir(self) -> str:
        if self.nonroot:
            return os.path.join(self.libvirt_home, "libvirt", "qemu", "log")
        return reroot(self.root, "/var/log/libvirt/qemu")

    def namespace_binds(self) -> list[tuple[str, str]]:
        """(source, target) bind mounts that give a system-mode daemon under a non-/ runtime
        root its fixed paths (/run/libvirt, /etc/libvirt, ...) inside a private mount
        namespace. Empty when the root is / or in session mode (XDG dirs do the job)."""
        if self.root == "/" or self.nonroot:
            return []
        binds = [(self.libvirt_run_dir, "/run/libvirt")]
        targets = ("/etc/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt")
        return binds + [(reroot(self.root, t), t) for t in targets]

    def dirs_to_create(self) -> list[str]:
        dirs = [self.share_dir, self.sockets_dir, self.private_dir, self.vmi_private_dir,
                self.ephemeral_disk_dir, self.container_disk_dir, self.hotplug_disk_dir,
                self.libvirt_run_dir, self.conf_dir,
                os.path.dirname(self.qemu_conf), self.qemu_log_dir]
        dirs += [src for src, _ in self.namespace_binds()]
        return dirs


def derive(opts: Options) -> Paths:
    root = opts.runtime_root
    return Paths(
        root=root,
        nonroot=opts.run_as_nonroot,
        daemon=daemon_name(opts.libvirt_daemon),
        domain=opts.domain_name,
        uid=opts.uid,
        share_dir=reroot(root, opts.kubevirt_share_dir),
        ephemeral_disk_dir=reroot(root, opts.ephemeral_disk_dir),
        container_disk_dir=reroot(root, opts.container_disk_dir),
        hotplug_disk_dir=reroot(root, opts.hotplug_disk_dir),
    )


def agent_socket_too_long(paths: Paths, domain: str) -> str | None:
    """Non-root mode: the guest agent socket the session daemon will bind for `domain` when
    the channel names no path (as the converter's, and KubeVirt's, do), if it cannot fit
    (with the runtime root /, as in a pod, it always does)."""
    path = paths.agent_channel_socket(domain)
    if path is None or len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return None
    return (f"--runtime-root: in non-root mode libvirt binds the guest agent socket of "
            f"domain {domain} at {path}, longer than {MAX_SOCKET_PATH} bytes (the UNIX "
            f"socket limit); use a shorter runtime root")
