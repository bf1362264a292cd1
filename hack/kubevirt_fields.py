#!/usr/bin/env python3
"""Extract KubeVirt's VMI spec field paths from its Go API types, once, into a plain text
file the unit tests compare with launcher/converter/fields.py (the tests never need the
KubeVirt source).

Reads, from a KubeVirt git directory (no work tree needed: `git show <rev>:<path>`), every
struct of the `kubevirt.io/api/core/v1` package (staging/src/kubevirt.io/api/core/v1) and
Kubernetes' core/v1 structs as KubeVirt vendors them (only for fields KubeVirt embeds
inline), and walks VirtualMachineInstanceSpec from `spec` by json tag:

- a struct of KubeVirt's package is descended into; `[]` marks a list element
  (`spec.volumes[].name`, as users write `spec.volumes[0].name`);
- a field embedded `json:",inline"` contributes its fields at the same level;
- anything else (a Kubernetes type such as k8sv1.Affinity, a map, resource.Quantity,
  a string enum) is a leaf: the converter takes or leaves it whole.

Each path is printed with the Go type it has. Usage:

    python3 -m hack.kubevirt_fields [--git-dir DIR] [--rev REV] > \
        tests/unit/converter/data/kubevirt_vmi_fields.txt
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass

DEFAULT_GIT_DIR = "/work/.mirror/kubevirt+kubevirt/repo"
API_DIR = "staging/src/kubevirt.io/api/core/v1"
K8S_TYPES = "vendor/k8s.io/api/core/v1/types.go"
ROOT_TYPE = "VirtualMachineInstanceSpec"
# Package aliases KubeVirt's API files give k8s.io/api/core/v1.
K8S_ALIASES = ("v1", "k8sv1")

_STRUCT = re.compile(r"^type (\w+) struct \{(.*?)^\}", re.M | re.S)
_FIELD = re.compile(r"^\s*(?:(\w+)\s+)?(\*?(?:\[\])?\*?[\w.]+(?:\[[\w.]+\][\w.*]+)?)\s*"
                    r"`([^`]*)`")
_JSON_TAG = re.compile(r'json:"([^"]*)"')


@dataclass(frozen=True)
class Field:
    name: str  # Go field name ("" when embedded)
    type: str  # Go type as written
    json: str  # json tag name ("" for inline)
    inline: bool


def _git_show(git_dir: str, rev: str, path: str) -> str:
    return subprocess.run(["git", "-C", git_dir, "show", f"{rev}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def _structs(source: str) -> dict[str, list[Field]]:
    structs: dict[str, list[Field]] = {}
    for match in _STRUCT.finditer(source):
        fields = []
        for line in match.group(2).splitlines():
            if line.strip().startswith("//"):
                continue
            m = _FIELD.match(line)
            if m is None:
                continue
            name, gotype, tags = m.groups()
            tag = _JSON_TAG.search(tags)
            if tag is None:
                continue
            json_name, *options = tag.group(1).split(",")
            if json_name == "-":
                continue
            inline = "inline" in options or (name is None and json_name == "")
            fields.append(Field(name or "", gotype, json_name, inline))
        structs[match.group(1)] = fields
    return structs


def _base(gotype: str) -> tuple[str, bool]:
    """The element type and whether it is a list."""
    listed = "[]" in gotype and not gotype.startswith("map[")
    return gotype.replace("*", "").replace("[]", ""), listed


def walk(kubevirt: dict[str, list[Field]], k8s: dict[str, list[Field]]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []

    def fields(type_name: str, local: dict[str, list[Field]], path: str,
               seen: tuple[str, ...]) -> None:
        for field in local[type_name]:
            if field.inline:
                base, _ = _base(field.type)
                # An inline Kubernetes struct is looked up among Kubernetes' types.
                if "." in base:
                    pkg, name = base.split(".", 1)
                    if pkg in K8S_ALIASES and name in k8s:
                        fields(name, k8s, path, seen)
                    continue
                if base in local:
                    fields(base, local, path, seen)
                continue
            _, listed = _base(field.type)
            child = f"{path}.{field.json}" + ("[]" if listed else "")
            out.append((child, field.type))
            base, _ = _base(field.type)
            # Only KubeVirt's own structs are descended into (Kubernetes types are leaves)
            if local is kubevirt and "." not in base and not field.type.startswith("map[") \
                    and base in kubevirt and base not in seen:
                fields(base, kubevirt, child, (*seen, base))

    fields(ROOT_TYPE, kubevirt, "spec", (ROOT_TYPE,))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--git-dir", default=DEFAULT_GIT_DIR)
    parser.add_argument("--rev", default="HEAD")
    args = parser.parse_args()
    commit = subprocess.run(["git", "-C", args.git_dir, "rev-parse", args.rev], check=True,
                            capture_output=True, text=True).stdout.strip()
    names = subprocess.run(["git", "-C", args.git_dir, "ls-tree", "--name-only", commit,
                            f"{API_DIR}/"], check=True, capture_output=True,
                           text=True).stdout.split()
    kubevirt: dict[str, list[Field]] = {}
    for name in names:
        base = name.rsplit("/", 1)[-1]
        if not base.endswith(".go") or base.endswith("_test.go") or \
                base.startswith(("zz_generated", "deepcopy")) or "swagger" in base:
            continue
        kubevirt.update(_structs(_git_show(args.git_dir, commit, name)))
    k8s = _structs(_git_show(args.git_dir, commit, K8S_TYPES))
    rows = walk(kubevirt, k8s)
    print(f"# KubeVirt VirtualMachineInstanceSpec field paths, from kubevirt/kubevirt {commit}")
    print(f"# ({API_DIR}/*.go, Kubernetes' inline types from {K8S_TYPES}).")
    print("# Generated by hack/kubevirt_fields.py; one path and its Go type per line.")
    for path, gotype in rows:
        print(f"{path}\t{gotype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
