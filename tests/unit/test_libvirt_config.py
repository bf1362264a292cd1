from __future__ import annotations

import pytest

from launcher import flags
from launcher.libvirt import config as libvirt_config
from launcher.paths import derive


def _opts(*argv: str) -> flags.Options:
    return flags.parse(["--runtime-root", "/tmp/r", "--libvirt-daemon", "/usr/sbin/libvirtd",
                        *argv], environ={})


def test_no_network_listeners_and_logs_to_stderr() -> None:
    o = _opts()
    text = libvirt_config.render(libvirt_config.daemon_settings(o, derive(o)))
    assert "listen_tcp = 0" in text and "listen_tls = 0" in text
    assert 'log_outputs = "3:stderr"' in text
    assert 'unix_sock_dir = "/tmp/r/var/run/libvirt"' in text
    assert 'unix_sock_rw_perms = "0700"' in text


def test_log_filters_flag_and_verbosity_enable_libvirt_debug() -> None:
    o = _opts("--libvirt-log-filters", "1:qemu 3:*")
    s = libvirt_config.log_settings(o)
    assert s == {"log_filters": "1:qemu 3:*", "log_outputs": "1:stderr"}
    o = flags.parse([], environ={"VIRT_LAUNCHER_LOG_VERBOSITY": "6"})
    assert libvirt_config.log_settings(o)["log_filters"] == libvirt_config.DEBUG_LOG_FILTERS


def test_qemu_conf_like_kubevirts() -> None:
    root = derive(_opts())
    text = libvirt_config.render(libvirt_config.qemu_settings(root))
    assert 'stdio_handler = "logd"' in text
    assert "cgroup_controllers = [  ]" in text and "namespaces = [  ]" in text
    session = derive(_opts("--run-as-nonroot"))
    assert libvirt_config.qemu_settings(session) == {"stdio_handler": "logd"}


def test_values_that_would_break_the_config_syntax_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported character"):
        libvirt_config.render({"log_filters": 'x" listen_tcp = 1 "'})


def test_write_file_is_atomic_and_private(tmp_path: object) -> None:
    import os  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    path = Path(str(tmp_path)) / "sub" / "x.conf"
    libvirt_config.write_file(str(path), "a = 1\n")
    assert path.read_text() == "a = 1\n"
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert [p.name for p in path.parent.iterdir()] == ["x.conf"]
