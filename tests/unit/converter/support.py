"""Helpers for converter tests: a minimal VMI, conversion to a parsed tree, and libvirt's
own schema check (virt-xml-validate, from libvirt-clients)."""

from __future__ import annotations

import copy
import os
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from typing import Any

from launcher.converter import Conversion, ConvertOptions, convert

MINIMAL: dict[str, Any] = {
    "apiVersion": "kubevirt.io/v1",
    "kind": "VirtualMachineInstance",
    "metadata": {"name": "testvmi", "namespace": "default",
                 "uid": "7ac26e32-a799-4eec-9a2a-cc8ae86621b0"},
    "spec": {"domain": {"devices": {}, "resources": {"requests": {"memory": "128Mi"}}}},
}


def vmi(**spec_domain: Any) -> dict[str, Any]:
    """MINIMAL with spec.domain keys replaced/added."""
    doc = copy.deepcopy(MINIMAL)
    doc["spec"]["domain"].update(spec_domain)
    return doc


def validate(xml: str) -> None:
    """Fail with virt-xml-validate's output unless `xml` is valid for libvirt's domain
    schema."""
    fd, path = tempfile.mkstemp(suffix=".xml")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(xml)
        proc = subprocess.run(["virt-xml-validate", path, "domain"], capture_output=True,
                              text=True, check=False)
    finally:
        os.unlink(path)
    assert proc.returncode == 0, f"virt-xml-validate failed:\n{proc.stdout}{proc.stderr}\n{xml}"


def conversion(doc: dict[str, Any], opts: ConvertOptions | None = None,
               *, check: bool = True) -> Conversion:
    result = convert(doc, opts or ConvertOptions())
    if check:
        validate(result.xml)
    return result


def tree(doc: dict[str, Any], opts: ConvertOptions | None = None,
         *, check: bool = True) -> ET.Element:
    """The converted domain, parsed, after the schema check."""
    return ET.fromstring(conversion(doc, opts, check=check).xml)
