"""Directories and config files, written before any daemon starts."""

from __future__ import annotations

import os

from launcher import libvirt_config
from launcher.flags import Options
from launcher.paths import Paths, reroot


class SetupError(Exception):
    pass


def prepare(opts: Options, paths: Paths) -> None:
    try:
        if paths.root != "/":
            # Debian's /var/run is a symlink to /run; mirror it so /var/run/libvirt and
            # /run/libvirt are one directory under the runtime root too.
            var = reroot(paths.root, "/var")
            os.makedirs(var, exist_ok=True)
            os.makedirs(paths.run_dir, exist_ok=True)
            var_run = os.path.join(var, "run")
            if not os.path.lexists(var_run):
                os.symlink("../run", var_run)
        for d in paths.dirs_to_create():
            os.makedirs(d, mode=0o755, exist_ok=True)
        # The private dir holds the session daemon's config and cache.
        os.chmod(paths.private_dir, 0o700)
        libvirt_config.write_all(opts, paths)
    except OSError as exc:
        raise SetupError(f"cannot prepare {exc.filename or 'runtime directories'}: "
                         f"{exc.strerror or exc}") from exc
