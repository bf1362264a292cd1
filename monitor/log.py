"""A tiny JSON-lines logger writing to stdout, one flushed line per record.

Not the logging module (thread locks, handlers, RSS) and not json (an import the monitor
does not otherwise need): the encoder below handles the few value types the monitor logs.
Keys: timestamp (ISO-8601 UTC), level, component, msg, then the keyword context.

Never raises: a logger that can fail turns a full or closed stdout into a crashed PID 1.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Sequence

COMPONENT = "virt-launcher-monitor"

Scalar = str | int | float | bool | None
Value = Scalar | Sequence[Scalar]

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_RESERVED = ("timestamp", "level", "msg")

_state = {"fd": 1, "min_level": LEVELS["info"]}

# Control characters, the two JSON specials, and lone surrogates (which a filename decoded
# with surrogateescape or a QEMU log line can carry, and which UTF-8 cannot encode: they
# would make the write itself raise UnicodeEncodeError).
_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f"\\\ud800-\udfff]')
_SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
}


def set_level(name: str) -> None:
    _state["min_level"] = LEVELS[name]


def set_fd(fd: int) -> int:
    """Redirect output (tests); returns the previous descriptor."""
    previous = _state["fd"]
    _state["fd"] = fd
    return previous


def enabled(level: str) -> bool:
    return LEVELS[level] >= _state["min_level"]


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    return _SHORT_ESCAPES.get(char) or f"\\u{ord(char):04x}"


def _string(text: str) -> str:
    return '"' + _NEEDS_ESCAPE.sub(_escape_one, text) + '"'


def encode(value: object) -> str:
    """JSON text for one value. Unknown types are logged as their str()."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        # int.__repr__, not str(): an IntEnum's str() may be its member name.
        return int.__repr__(value)
    if isinstance(value, float):
        # JSON has no NaN/Infinity literals.
        return float.__repr__(value) if math.isfinite(value) else _string(repr(value))
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(encode(item) for item in value) + "]"
    return _string(str(value))


def timestamp(now: float) -> str:
    micros = int(now % 1 * 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{micros:06d}Z"


def format_record(level: str, msg: str, context: dict[str, Value], now: float) -> str:
    fields: dict[str, object] = {
        "timestamp": timestamp(now),
        "level": level,
        "component": COMPONENT,
        "msg": msg,
    }
    for key, value in context.items():
        # A context key may override component, never the record's own identity.
        fields["ctx_" + key if key in _RESERVED else key] = value
    return "{" + ",".join(f"{_string(k)}:{encode(v)}" for k, v in fields.items()) + "}\n"


def _write(data: bytes) -> None:
    fd = _state["fd"]
    while data:
        try:
            written = os.write(fd, data)
        except OSError:
            # EAGAIN (non-blocking and full), EPIPE (reader gone), EBADF (closed), ENOSPC,
            # EIO: drop the line rather than take the monitor (and the pod) down.
            return
        data = data[written:]


def emit(level: str, msg: str, context: dict[str, Value]) -> None:
    if LEVELS[level] < _state["min_level"]:
        return
    _write(format_record(level, msg, context, time.time()).encode("utf-8"))


def debug(msg: str, **context: Value) -> None:
    emit("debug", msg, context)


def info(msg: str, **context: Value) -> None:
    emit("info", msg, context)


def warning(msg: str, **context: Value) -> None:
    emit("warning", msg, context)


def error(msg: str, **context: Value) -> None:
    emit("error", msg, context)
