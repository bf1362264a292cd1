"""Entry point of `virt-launcher-monitor` and `python -m monitor`."""

from __future__ import annotations

import sys

from monitor.forward import install_signals


def main() -> None:
    # Before anything else is even imported: see install_signals.
    signals = install_signals()
    from monitor.run import run  # noqa: PLC0415 - after the handlers, on purpose

    sys.exit(run(sys.argv[1:], sys.argv[0], signals))


if __name__ == "__main__":
    main()
