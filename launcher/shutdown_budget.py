"""The launcher's shutdown deadlines, in one place: the launcher keeps each of them and the
monitor allows for all of them, so it never kills a launcher that is still inside a
documented deadline. Pure constants (the monitor imports this: no asyncio, no libvirt).

After SIGTERM the guest gets --grace-period-seconds to power off (a frozen guest is
thawed first, within that time). What can follow the grace period, step by step, in the
worst case where every step runs into its deadline:
"""

from __future__ import annotations

# Destroying the domain once the grace period is over (libvirt's destroy).
DESTROY_TIMEOUT_S = 15.0
# If destroy fails: wait for QEMU, SIGTERM it, wait, SIGKILL it, wait.
QEMU_SIGNAL_WAIT_S = 5.0
QEMU_SIGNAL_STEPS = 3
# After QEMU exits, for libvirt to report the final state.
LIBVIRT_CATCH_UP_S = 5.0
# Then the launcher stays until the domain is deleted (virt-handler's
# DeleteVirtualMachine), as KubeVirt's waitForFinalNotify: 15 s, then a kill of whatever is
# left of the domain, then 30 s more.
DELETE_WAIT_S = 15.0
DELETE_WAIT_AFTER_KILL_S = 30.0
# STANDALONE_VMI has no virt-handler: a Delete is waited for briefly (a stand-in may send
# one), then the launcher undefines the domain itself and waits for it to be gone.
STANDALONE_DELETE_WAIT_S = 2.0
STANDALONE_UNDEFINE_S = 10.0
# The hook sidecars' Shutdown calls, all of them (started when QEMU exits, alongside the
# wait for the deletion; counted whole for a launcher that ends without a VM).
HOOK_SHUTDOWN_S = 10.0
# Delivering the last snapshots to virt-handler's notify socket.
FINAL_NOTIFY_TIMEOUT_S = 10.0
# The command server's stop (in-flight rpcs get this long).
CMD_SERVER_STOP_S = 2.0
# virtlogd and the libvirt daemon through the terminate ladder (5 s TERM + 2 s KILL each).
DAEMON_STOP_DEADLINE_S = 20.0
# Scheduling slack for the monitor on a loaded node.
MONITOR_MARGIN_S = 5.0


def delete_wait_s() -> float:
    """The longest the launcher stays for the domain's deletion (either mode)."""
    cluster = DELETE_WAIT_S + DESTROY_TIMEOUT_S + DELETE_WAIT_AFTER_KILL_S
    standalone = STANDALONE_DELETE_WAIT_S + STANDALONE_UNDEFINE_S
    return max(cluster, standalone)


def after_grace_s() -> float:
    """Worst case from the end of the grace period to the launcher's exit."""
    return (DESTROY_TIMEOUT_S + QEMU_SIGNAL_STEPS * QEMU_SIGNAL_WAIT_S + LIBVIRT_CATCH_UP_S
            + delete_wait_s() + HOOK_SHUTDOWN_S + FINAL_NOTIFY_TIMEOUT_S + CMD_SERVER_STOP_S
            + DAEMON_STOP_DEADLINE_S)


def monitor_kill_after_s(grace_period_s: float) -> float:
    """How long after the first forwarded signal the monitor considers the launcher hung."""
    return grace_period_s + after_grace_s() + MONITOR_MARGIN_S
