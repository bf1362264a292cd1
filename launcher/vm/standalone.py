"""STANDALONE_VMI (environment; YAML or JSON): the VMI the launcher syncs itself once the
command server is up, as KubeVirt does, with KubeVirt's webhook defaults
(launcher.converter.defaults); flags left empty take its identity."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from launcher.converter import defaults
from launcher.converter.spec import json_kind
from launcher.flags import Options
from launcher.vm.errors import StandaloneError
from launcher.vm.identity import IdentityError, metadata_string

STANDALONE_ENV = "STANDALONE_VMI"


def _check_json_shaped(value: Any, path: str) -> None:
    """YAML can say more than JSON (binary, sets, non-string keys, NaN keys...): the
    converter only takes what JSON can say, so anything else is an error naming the field."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise StandaloneError(f"{STANDALONE_ENV}: {path or '<vmi>'}: key {key!r} "
                                      "is not a string", path or "<vmi>")
            _check_json_shaped(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json_shaped(item, f"{path}[{i}]")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise StandaloneError(f"{STANDALONE_ENV}: {path or '<vmi>'}: "
                              f"{json_kind(value)} is not a JSON value", path or "<vmi>")


def _load_yaml(text: str) -> Any:
    # Imported here: only a standalone launcher needs YAML, and the launcher's RSS is part
    # of every VM's overhead.
    import yaml  # noqa: PLC0415

    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[misc]
        """Safe, and timestamps stay strings (Kubernetes decodes YAML into JSON, where
        creationTimestamp is a string; the converter expects JSON values)."""

    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in base.yaml_implicit_resolvers.items()}
    try:
        return yaml.load(text, Loader=Loader)  # a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise StandaloneError(f"{STANDALONE_ENV}: invalid YAML{where}: "
                              f"{exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise StandaloneError(f"{STANDALONE_ENV}: invalid YAML: {exc}") from None


def parse_standalone(text: str, arch: str | None = None) -> dict[str, Any]:
    """The VMI in STANDALONE_VMI: JSON, else YAML (KubeVirt reads it with a YAML decoder,
    which takes both), with KubeVirt's admission defaults applied (launcher.converter.
    defaults: in a cluster the webhook did that; a VMI of SyncVirtualMachine is not
    re-defaulted). Raises StandaloneError naming what is wrong."""
    if not text.strip():
        raise StandaloneError(f"{STANDALONE_ENV}: is set but empty")
    try:
        doc = json.loads(text)
    except RecursionError:
        raise StandaloneError(f"{STANDALONE_ENV}: nested too deeply") from None
    except json.JSONDecodeError as json_error:
        try:
            doc = _load_yaml(text)
        except RecursionError:
            raise StandaloneError(f"{STANDALONE_ENV}: nested too deeply") from None
        except StandaloneError:
            if text.lstrip().startswith("{"):
                # Meant as JSON: its error is the useful one.
                raise StandaloneError(f"{STANDALONE_ENV}: invalid JSON: {json_error}") \
                    from None
            raise
    if not isinstance(doc, dict):
        raise StandaloneError(f"{STANDALONE_ENV}: expected a VirtualMachineInstance object, "
                              f"got {json_kind(doc)}")
    try:
        _check_json_shaped(doc, "")
    except RecursionError:
        raise StandaloneError(f"{STANDALONE_ENV}: nested too deeply") from None
    defaulted: dict[str, Any] = defaults.apply(doc, arch or os.uname().machine)
    return defaulted


def adopt_identity(opts: Options, doc: Mapping[str, Any]) -> Options:
    """The launcher's name/namespace/uid with the standalone VMI's metadata: a flag left
    empty takes the VMI's value; a flag given must match it (a launcher serves exactly one
    VMI, and its domain name, pid file and notify snapshots follow the flags)."""
    values = {}
    for key, flag in (("name", opts.name), ("namespace", opts.namespace), ("uid", opts.uid)):
        try:
            value = metadata_string(doc, key, required=key != "uid")
        except IdentityError as exc:
            raise StandaloneError(f"{STANDALONE_ENV}: {exc}", exc.field) from None
        if flag and value and flag != value:
            raise StandaloneError(f'{STANDALONE_ENV}: metadata.{key}: "{value}" does not match '
                                  f'--{key} "{flag}"', f"metadata.{key}")
        values[key] = flag or value
    return opts._replace(name=values["name"], namespace=values["namespace"],
                         uid=values["uid"])
