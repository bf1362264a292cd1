"""Typed, path-tracking reads of a decoded VMI document.

Every accessor knows the JSON path of what it reads, so any problem becomes a
ConversionError naming the exact field (`spec.domain.devices.disks[1].disk.bus: "ide" is
not supported (expected one of: virtio, sata, scsi, usb)`). Unknown fields are tolerated:
newer KubeVirt versions add fields all the time, and the converter reads only what it acts on.
"""

from __future__ import annotations

import builtins
import math
import re
from collections.abc import Iterable, Iterator
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

from launcher.converter.errors import ConversionError


def json_kind(value: object) -> str:
    """JSON's name for a decoded value's type, for messages (the one definition: the
    converter, the command API's VMI parsing and STANDALONE_VMI use it). What JSON cannot
    say (YAML's binary, sets) goes by its Python name."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


Key = str | int


def printable(text: str) -> str:
    """`text` with lone surrogates (undecodable bytes, surrogateescape'd, or a JSON
    "\\udc80") spelled as escapes, so a message naming it can always be encoded."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def join(path: str, key: Key) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    key = printable(key)
    return f"{path}.{key}" if path else key


# Kubernetes' DNS-1123 label: what virt-api requires of disk and volume names. Every name
# that becomes part of a path is one of these: no "/" and no "..".
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

# Kubernetes resource.Quantity suffixes (binary SI, decimal SI). "m" (milli) is allowed by
# Kubernetes for any quantity; for byte sizes we require the result to be whole bytes.
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(
    r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E))?$")
# Kubernetes quantities are int64-bounded; anything larger is a typo or an attack, and
# refusing it early keeps every later int() cheap.
_QUANTITY_MAX = Decimal(2**63)


def parse_quantity(text: str) -> Decimal:
    """A Kubernetes quantity ("4Gi", "512M", "1.5", "100m", "1e3") as an exact Decimal.
    Raises ValueError with the reason."""
    m = _QUANTITY.match(text.strip())
    if m is None:
        raise ValueError(f'"{text}" is not a Kubernetes quantity (e.g. 4Gi, 512Mi, 1G)')
    number, exponent, suffix = m.groups()
    try:
        value = Decimal(number)
    except InvalidOperation:
        raise ValueError(f'"{text}" is not a Kubernetes quantity') from None
    if exponent:
        shift = int(exponent[1:])
        if abs(shift) > 30:
            raise ValueError(f'"{text}" is too large')
        value = value.scaleb(shift)
    elif suffix == "m":
        value = value / 1000
    elif suffix:
        value = value * (_BINARY.get(suffix) or _DECIMAL[suffix])
    if abs(value) > _QUANTITY_MAX:
        raise ValueError(f'"{text}" is too large')
    return value


class Node:
    """A value of the VMI document and the path it was read from. A missing key reads as a
    Node holding None, so optional sections chain without checks."""

    __slots__ = ("path", "value")

    def __init__(self, value: Any, path: builtins.str = "") -> None:
        self.value = value
        self.path = path

    def __repr__(self) -> builtins.str:
        return f"Node({self.path or '<root>'}={self.value!r})"

    # --- failures -----------------------------------------------------------------------
    def fail(self, reason: builtins.str, key: Key | None = None) -> NoReturn:
        raise ConversionError(self.path if key is None else join(self.path, key), reason)

    def _expect(self, key: Key, value: Any, types: type | tuple[type, ...],
                name: builtins.str) -> None:
        # bool is an int in Python; JSON keeps them apart.
        if isinstance(value, builtins.bool) and bool not in (types if isinstance(types, tuple)
                                                     else (types,)):
            self.fail(f"expected {name}, got boolean", key)
        if not isinstance(value, types):
            self.fail(f"expected {name}, got {json_kind(value)}", key)

    # --- structure ----------------------------------------------------------------------
    @property
    def present(self) -> builtins.bool:
        return self.value is not None

    def _dict(self) -> dict[str, Any]:
        if self.value is None:
            return {}
        if not isinstance(self.value, dict):
            self.fail(f"expected an object, got {json_kind(self.value)}")
        return self.value

    def has(self, key: builtins.str) -> builtins.bool:
        return self._dict().get(key) is not None

    def keys(self) -> Iterable[str]:
        return self._dict().keys()

    def child(self, key: builtins.str) -> Node:
        """`key` of this object (a Node holding None when absent). The child is not
        type-checked here; its accessors check it."""
        return Node(self._dict().get(key), join(self.path, key))

    def obj(self, key: builtins.str, *, required: builtins.bool = False) -> Node:
        """`key`, which must be an object when present."""
        node = self.child(key)
        if node.value is None:
            if required:
                self.fail("required", key)
            return node
        if not isinstance(node.value, dict):
            self.fail(f"expected an object, got {json_kind(node.value)}", key)
        return node

    def items(self, key: builtins.str) -> list[Node]:
        """`key`, which must be a list (of anything) when present; its elements as Nodes."""
        raw = self._dict().get(key)
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.fail(f"expected a list, got {json_kind(raw)}", key)
        base = join(self.path, key)
        return [Node(v, join(base, i)) for i, v in enumerate(raw)]

    def __iter__(self) -> Iterator[Node]:
        if self.value is None:
            return iter(())
        if not isinstance(self.value, list):
            self.fail(f"expected a list, got {json_kind(self.value)}")
        return iter([Node(v, join(self.path, i)) for i, v in enumerate(self.value)])

    # --- scalars ------------------------------------------------------------------------
    def str(self, key: builtins.str, default: builtins.str | None = None, *,
            required: builtins.bool = False, choices: Iterable[builtins.str] | None = None,
            nonempty: builtins.bool = False) -> builtins.str | None:
        raw = self._dict().get(key)
        if raw is None:
            if required:
                self.fail("required", key)
            return default
        self._expect(key, raw, builtins.str, "a string")
        if printable(raw) != raw:
            # A lone UTF-16 surrogate: a JSON "\\ud800" escape, or an invalid UTF-8 byte
            # of STANDALONE_VMI kept by os.environ's surrogateescape. No file, ISO or XML
            # can carry it.
            self.fail("contains a lone surrogate (invalid UTF-8 or an unpaired UTF-16 "
                      "escape); expected text", key)
        if nonempty and raw == "":
            self.fail("must not be empty", key)
        if choices is not None:
            allowed = list(choices)
            if raw not in allowed:
                self.fail(f"{raw!r} is not supported (expected one of: {', '.join(allowed)})"
                          .replace("'", '"'), key)
        return str(raw)

    def req_str(self, key: builtins.str, **kw: Any) -> builtins.str:
        value = self.str(key, required=True, **kw)
        assert value is not None
        return value

    def int(self, key: builtins.str, default: builtins.int | None = None, *,
            required: builtins.bool = False, minimum: builtins.int | None = None,
            maximum: builtins.int | None = None) -> builtins.int | None:
        raw = self._dict().get(key)
        if raw is None:
            if required:
                self.fail("required", key)
            return default
        if isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
            raw = int(raw)  # JSON has one number type; 4.0 is 4
        self._expect(key, raw, builtins.int, "an integer")
        if minimum is not None and raw < minimum:
            self.fail(f"must be >= {minimum}, got {raw}", key)
        if maximum is not None and raw > maximum:
            self.fail(f"must be <= {maximum}, got {raw}", key)
        return int(raw)

    def bool(self, key: builtins.str, default: builtins.bool | None = None) -> builtins.bool | None:
        raw = self._dict().get(key)
        if raw is None:
            return default
        self._expect(key, raw, builtins.bool, "a boolean")
        return bool(raw)

    def quantity(self, key: builtins.str, *, required: builtins.bool = False) -> Decimal | None:
        """A Kubernetes quantity: a string ("4Gi") or a plain JSON number."""
        raw = self._dict().get(key)
        if raw is None:
            if required:
                self.fail("required", key)
            return None
        if isinstance(raw, builtins.bool) or not isinstance(raw, (str, builtins.int, float)):
            self.fail(f"expected a quantity such as \"4Gi\", got {json_kind(raw)}", key)
        if isinstance(raw, float) and not math.isfinite(raw):
            self.fail(f"{raw} is not a quantity", key)
        if isinstance(raw, str) and printable(raw) != raw:
            self.fail("contains a lone surrogate; expected a quantity such as \"4Gi\"", key)
        try:
            value = parse_quantity(str(raw))
        except ValueError as exc:
            self.fail(str(exc), key)
        if value < 0:
            self.fail(f"must not be negative, got {raw!r}", key)
        return value

    def byte_size(self, key: builtins.str, *,
                  required: builtins.bool = False) -> builtins.int | None:
        """A quantity of bytes (whole bytes; "4Gi" -> 4294967296)."""
        value = self.quantity(key, required=required)
        if value is None:
            return None
        if value != value.to_integral_value():
            self.fail(f"{self._dict()[key]!r} is not a whole number of bytes", key)
        return int(value)
