"""When and how fast a supervised daemon is restarted, and when to give up. Data, not ifs."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RestartPolicy:
    # First restart after this delay; doubles per consecutive failed start; capped.
    initial_delay_s: float = 0.1
    factor: float = 2.0
    max_delay_s: float = 3.0
    # A run "failed to start" when it exited before its socket accepted a connection.
    # This many in a row and the launcher gives up (KubeVirt instead panics on the first
    # failed start and lands in CrashLoopBackOff).
    max_start_failures: int = 5
    # A daemon that does come up but keeps dying is a crash loop too.
    max_exits_in_window: int = 20
    window_s: float = 60.0
    # How long a fresh daemon may take to open its socket.
    ready_timeout_s: float = 15.0

    def delay(self, consecutive_start_failures: int) -> float:
        """Delay before the next start. A run that was healthy restarts at once-ish."""
        if consecutive_start_failures <= 0:
            return self.initial_delay_s
        exp = self.initial_delay_s * self.factor ** (consecutive_start_failures - 1)
        return min(self.max_delay_s, exp)


@dataclass
class RestartTracker:
    """The state one daemon's supervisor keeps between runs."""

    policy: RestartPolicy
    consecutive_start_failures: int = 0
    exit_times: deque[float] = field(default_factory=deque)

    def record_exit(self, now: float, became_ready: bool) -> None:
        self.consecutive_start_failures = (
            0 if became_ready else self.consecutive_start_failures + 1
        )
        self.exit_times.append(now)
        while self.exit_times and now - self.exit_times[0] > self.policy.window_s:
            self.exit_times.popleft()

    def give_up_reason(self) -> str | None:
        p = self.policy
        if self.consecutive_start_failures >= p.max_start_failures:
            return f"failed to start {self.consecutive_start_failures} times in a row"
        if len(self.exit_times) >= p.max_exits_in_window:
            return f"exited {len(self.exit_times)} times within {p.window_s:g}s"
        return None

    def next_delay(self) -> float:
        return self.policy.delay(self.consecutive_start_failures)
