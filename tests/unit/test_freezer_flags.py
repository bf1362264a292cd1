from __future__ import annotations

import pytest

from launcher.freezer import build_parser


def test_kubevirt_flags_and_defaults() -> None:
    args = build_parser().parse_args(["--freeze", "--name", "vm", "--namespace", "ns"])
    assert (args.freeze, args.unfreeze, args.name, args.namespace) == (True, False, "vm", "ns")
    assert args.unfreezeTimeoutSeconds == 300
    args = build_parser().parse_args(["--unfreeze", "--name", "vm", "--namespace", "ns",
                                      "--unfreezeTimeoutSeconds", "60"])
    assert args.unfreeze and args.unfreezeTimeoutSeconds == 60


@pytest.mark.parametrize("argv", [
    ["--name", "vm", "--namespace", "ns"],                           # no action
    ["--freeze", "--unfreeze", "--name", "vm", "--namespace", "ns"],  # both actions
    ["--freeze", "--namespace", "ns"],                                # no name
    ["--freeze", "--name", "vm", "--namespace", "ns", "--bogus"],     # unknown flag
])
def test_bad_command_lines_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
