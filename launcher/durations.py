"""Go-style durations ("278s", "3m", "1h2m3.5s", "500ms"), as KubeVirt's flags take them."""

from __future__ import annotations

import re

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
# ASCII digits only, as Go (\d would take "٣" for 3).
_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
# Go's time.Duration is int64 nanoseconds: about 2562047h47m16.85s at most.
MAX_SECONDS = (2**63 - 1) / 1e9


class DurationError(ValueError):
    pass


def parse_duration(text: str) -> float:
    """Parse a Go duration into seconds. Like Go, a bare number other than 0 is an error:
    "300" is ambiguous, and silently reading it as seconds would hide a unit mistake."""
    s = text.strip()
    if not s:
        raise DurationError("empty duration (expected e.g. 30s, 3m, 1h30m)")
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            if re.fullmatch(r"[0-9]+(\.[0-9]*)?", s[pos:]):
                raise DurationError(
                    f"invalid duration {text!r}: missing unit (e.g. {s[pos:]}s)"
                )
            raise DurationError(
                f"invalid duration {text!r} (expected e.g. 30s, 3m, 1h30m, 500ms)"
            )
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if total > MAX_SECONDS:
        raise DurationError(f"invalid duration {text!r}: longer than Go's maximum "
                            "(2562047h47m16.854775807s)")
    return sign * total

