#!/usr/bin/env python3
"""Resolve kernel module dependencies without kmod/depmod.

usage: moddeps.py MODROOT MODULE [MODULE ...]

Prints the given modules and everything they depend on, dependencies first, one per
line, as paths relative to MODROOT (e.g. ``kernel/drivers/virtio/virtio.ko``), so that
``insmod``-ing them in the printed order works. Dependencies are read from the
``depends=`` string in each module's ``.modinfo`` section; an unpacked Debian kernel
package ships no ``modules.dep`` (depmod runs at install time), hence this helper.

Modules listed in ``MODROOT/modules.builtin`` are compiled into the kernel and are
skipped. Module files may be plain ``.ko`` or ``.ko.xz`` / ``.ko.gz``.
"""

from __future__ import annotations

import gzip
import lzma
import os
import sys
from collections.abc import Iterable
from pathlib import Path

MODULE_SUFFIXES: tuple[str, ...] = (".ko", ".ko.xz", ".ko.gz")


class ModuleError(Exception):
    """A requested module (or one of its dependencies) cannot be resolved."""


def canonical(name: str) -> str:
    """Module names treat '-' and '_' as equal; the kernel uses '_'."""
    return name.replace("-", "_")


def module_name(filename: str) -> str | None:
    """Return the canonical module name of a module file name, or None."""
    for suffix in MODULE_SUFFIXES:
        if filename.endswith(suffix):
            return canonical(filename[: -len(suffix)])
    return None


def index_modules(root: Path) -> dict[str, Path]:
    """Map canonical module name -> path relative to root."""
    index: dict[str, Path] = {}
    for dirpath, _dirs, files in os.walk(root):
        for filename in files:
            name = module_name(filename)
            if name is not None:
                index[name] = Path(dirpath, filename).relative_to(root)
    return index


def builtin_modules(root: Path) -> set[str]:
    """Names of modules compiled into the kernel (from modules.builtin, if present)."""
    path = root / "modules.builtin"
    if not path.is_file():
        return set()
    names: set[str] = set()
    for line in path.read_text().splitlines():
        name = module_name(os.path.basename(line.strip()))
        if name is not None:
            names.add(name)
    return names


def read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def module_depends(path: Path) -> list[str]:
    """The 'depends=' entry of a module's .modinfo, as canonical names."""
    for field in read_module(path).split(b"\0"):
        if field.startswith(b"depends="):
            value = field[len(b"depends=") :].decode()
            return [canonical(dep) for dep in value.split(",") if dep]
    return []


def resolve(root: Path, wanted: Iterable[str]) -> list[Path]:
    """Return module paths (relative to root) in load order: dependencies first."""
    index = index_modules(root)
    builtin = builtin_modules(root)
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = canonical(name)
        if name in seen:
            return
        seen.add(name)
        if name in builtin:
            return
        if name not in index:
            via = f" (needed by {' <- '.join(chain)})" if chain else ""
            raise ModuleError(f"module {name!r} not found under {root}{via}")
        for dep in module_depends(root / index[name]):
            visit(dep, (name, *chain))
        order.append(index[name])

    for name in wanted:
        visit(name, ())
    return order


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] in ("-h", "--help"):
        print((__doc__ or "").strip(), file=sys.stderr)
        return 2
    root = Path(argv[1])
    if not root.is_dir():
        print(f"moddeps: {root} is not a directory", file=sys.stderr)
        return 1
    try:
        order = resolve(root, argv[2:])
    except ModuleError as exc:
        print(f"moddeps: {exc}", file=sys.stderr)
        return 1
    for path in order:
        print(path.as_posix())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
