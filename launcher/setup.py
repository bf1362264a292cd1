"""Directories and config files, written before any daemon starts."""

from __future__ import annotations

import os

from launcher.flags import Options
from launcher.libvirt import config as libvirt_config
from launcher.paths import Paths


class SetupError(Exception):
    pass


def prepare(opts: Options, paths: Paths) -> None:
    try:
        for d in paths.dirs_to_create():
            os.makedirs(d, mode=0o755, exist_ok=True)
        # The private dir holds the session daemon's config and cache.
        os.chmod(paths.private_dir, 0o700)
        libvirt_config.write_all(opts, paths)
    except OSError as exc:
        raise SetupError(f"cannot prepare {exc.filename or 'runtime directories'}: "
                         f"{exc.strerror or exc}") from exc
