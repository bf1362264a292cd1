"""One shutdown budget: the monitor allows for every deadline the launcher keeps after the
grace period, so it never kills a launcher that is still inside them."""

from __future__ import annotations

from launcher import flags, shutdown, shutdown_budget, supervisor
from launcher.shutdown_budget import after_grace_s, monitor_kill_after_s


def test_the_monitor_allows_for_every_post_grace_deadline() -> None:
    b = shutdown_budget
    forced = b.DESTROY_TIMEOUT_S + b.QEMU_SIGNAL_STEPS * b.QEMU_SIGNAL_WAIT_S
    cluster = b.DELETE_WAIT_S + b.DESTROY_TIMEOUT_S + b.DELETE_WAIT_AFTER_KILL_S
    standalone = b.STANDALONE_DELETE_WAIT_S + b.STANDALONE_UNDEFINE_S
    teardown = b.FINAL_NOTIFY_TIMEOUT_S + b.CMD_SERVER_STOP_S + b.DAEMON_STOP_DEADLINE_S
    for deletion in (cluster, standalone):
        worst = forced + b.LIBVIRT_CATCH_UP_S + deletion + teardown
        assert after_grace_s() >= worst
    for grace in (0, 30, 600):
        assert monitor_kill_after_s(grace) > grace + after_grace_s()
    print(f"worst case after the grace period: {after_grace_s():.0f} s")


def test_the_launcher_keeps_the_budgets_deadlines() -> None:
    # The deadlines the launcher keeps are the budget's own objects, not copies.
    for module, names in (
            (shutdown, ("DESTROY_TIMEOUT_S", "QEMU_SIGNAL_WAIT_S", "LIBVIRT_CATCH_UP_S",
                        "DELETE_WAIT_S", "DELETE_WAIT_AFTER_KILL_S",
                        "STANDALONE_DELETE_WAIT_S", "STANDALONE_UNDEFINE_S")),
            (supervisor, ("FINAL_NOTIFY_TIMEOUT_S", "CMD_SERVER_STOP_S",
                          "DAEMON_STOP_DEADLINE_S"))):
        for name in names:
            assert getattr(module, name) == getattr(shutdown_budget, name), name


def test_launcher_stop_timeout_is_a_monitor_only_flag() -> None:
    argv = ["--name", "vm", "--launcher-stop-timeout", "15s", "--grace-period-seconds", "5"]
    assert flags.parse(argv, environ={}).launcher_stop_timeout_s == 15.0
    assert flags.parse(["--name", "vm"], environ={}).launcher_stop_timeout_s is None
    assert flags.strip_monitor_only(argv) == ["--name", "vm", "--grace-period-seconds", "5"]
    assert flags.strip_monitor_only(["--launcher-stop-timeout=2m", "--name", "vm"]) == \
        ["--name", "vm"]
