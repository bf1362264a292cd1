"""A small Containerfile reader for the tests that check the image definition
(tests/unit/test_containerfile.py) and build what it builds (tests/integration/
test_image_layout.py). Enough of the Dockerfile syntax for ours: comments, line
continuations, stages, instruction flags (--from=, --mount=), shell-form RUN split into
commands at && / ; / ||."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONTAINERFILE = REPO / "Containerfile"
COMMAND_SEPARATORS = ("&&", ";", "||")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    flags: tuple[str, ...]  # leading --name=value options
    args: str  # the rest, as written (continuations joined)


@dataclass
class Stage:
    base: str
    name: str  # "" for an unnamed stage
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def commands(self) -> list[list[str]]:
        """Every shell command of every RUN, tokenized, in order."""
        out: list[list[str]] = []
        for run in self.all("RUN"):
            current: list[str] = []
            for token in shlex.split(run.args):
                if token in COMMAND_SEPARATORS:
                    out.append(current)
                    current = []
                else:
                    current.append(token)
            out.append(current)
        return [c for c in out if c]

    def apt_packages(self) -> list[str]:
        packages: list[str] = []
        for cmd in self.commands():
            if cmd[:2] == ["apt-get", "install"]:
                packages += [t for t in cmd[2:] if not t.startswith("-")]
        return packages

    def copy_sources(self) -> list[str]:
        """The build-context paths COPY brings in (not COPY --from)."""
        sources: list[str] = []
        for copy in self.all("COPY"):
            if any(f.startswith("--from=") for f in copy.flags):
                continue
            sources += shlex.split(copy.args)[:-1]
        return sources


def logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue  # comments vanish, also inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def instruction(line: str) -> Instruction:
    keyword, _, rest = line.partition(" ")
    flags: list[str] = []
    rest = rest.strip()
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        flags.append(flag)
        rest = rest.strip()
    return Instruction(keyword.upper(), tuple(flags), rest)


def parse(text: str) -> list[Stage]:
    stages: list[Stage] = []
    for line in logical_lines(text):
        ins = instruction(line)
        if ins.keyword == "FROM":
            words = ins.args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append(ins)
        # instructions before the first FROM (global ARGs) belong to no stage
    return stages


def load(path: Path = CONTAINERFILE) -> list[Stage]:
    return parse(path.read_text())


def global_args(path: Path = CONTAINERFILE) -> dict[str, str]:
    """The ARGs before the first FROM (usable in FROM lines), with their defaults."""
    args: dict[str, str] = {}
    for line in logical_lines(path.read_text()):
        ins = instruction(line)
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            args[name] = default
    return args


def stage(stages: list[Stage], name: str) -> Stage:
    found = [s for s in stages if s.name == name]
    assert len(found) == 1, f"no single stage named {name!r}"
    return found[0]


def exec_form(ins: Instruction) -> list[str]:
    value = json.loads(ins.args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), ins.args
    return value
