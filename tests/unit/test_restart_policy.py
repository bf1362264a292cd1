from __future__ import annotations

from launcher.libvirt.restart_policy import RestartPolicy, RestartTracker


def test_backoff_starts_fast_doubles_and_caps() -> None:
    p = RestartPolicy(initial_delay_s=0.1, factor=2, max_delay_s=3)
    assert [p.delay(n) for n in range(0, 8)] == [0.1, 0.1, 0.2, 0.4, 0.8, 1.6, 3, 3]


def test_gives_up_after_consecutive_failed_starts() -> None:
    t = RestartTracker(RestartPolicy(max_start_failures=3, window_s=1000))
    for i in range(2):
        t.record_exit(float(i), became_ready=False)
        assert t.give_up_reason() is None
    t.record_exit(2.0, became_ready=False)
    assert t.give_up_reason() == "failed to start 3 times in a row"


def test_a_healthy_run_resets_the_failure_count_and_restarts_fast() -> None:
    t = RestartTracker(RestartPolicy(max_start_failures=3))
    t.record_exit(0.0, became_ready=False)
    t.record_exit(1.0, became_ready=False)
    assert t.next_delay() > t.policy.initial_delay_s
    t.record_exit(2.0, became_ready=True)  # came up, was killed later
    assert t.consecutive_start_failures == 0
    assert t.next_delay() == t.policy.initial_delay_s
    assert t.give_up_reason() is None


def test_crash_loop_after_becoming_ready_is_bounded_by_the_window() -> None:
    t = RestartTracker(RestartPolicy(max_exits_in_window=4, window_s=10))
    for i in range(3):
        t.record_exit(float(i), became_ready=True)
    assert t.give_up_reason() is None
    t.record_exit(3.0, became_ready=True)
    assert t.give_up_reason() == "exited 4 times within 10s"
    # exits that fell out of the window are forgotten
    t2 = RestartTracker(RestartPolicy(max_exits_in_window=4, window_s=10))
    for ts in (0.0, 20.0, 40.0, 60.0, 80.0):
        t2.record_exit(ts, became_ready=True)
    assert t2.give_up_reason() is None
