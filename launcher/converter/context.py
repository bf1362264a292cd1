"""State shared by the converter's builders for one conversion."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property

from launcher.converter.options import HYPERVISOR_STRATOVIRT, ConvertOptions
from launcher.converter.plan import Prep
from launcher.converter.spec import Node


@dataclass
class Context:
    vmi: Node  # the whole document, path ""
    opts: ConvertOptions
    name: str
    namespace: str
    uid: str
    preps: list[Prep] = field(default_factory=list)

    @property
    def domain_name(self) -> str:
        return f"{self.namespace}_{self.name}"

    @cached_property
    def spec(self) -> Node:
        return self.vmi.obj("spec", required=True)

    @cached_property
    def domain_spec(self) -> Node:
        return self.spec.obj("domain", required=True)

    @cached_property
    def devices(self) -> Node:
        return self.domain_spec.obj("devices")

    @property
    def stratovirt(self) -> bool:
        return self.opts.hypervisor == HYPERVISOR_STRATOVIRT

    @cached_property
    def virtio_model(self) -> str:
        """Model for virtio devices (seed 000): virtio-non-transitional (virtio 1.0 only,
        PCIe slots) unless spec.domain.devices.useVirtioTransitional asks for
        virtio-transitional (also virtio 0.9 guests, conventional PCI slots)."""
        if self.devices.bool("useVirtioTransitional", False):
            return "virtio-transitional"
        return "virtio-non-transitional"

    @property
    def vmi_private_dir(self) -> str:
        """KubeVirt's /var/run/kubevirt-private/<vmi uid> (serial console, VNC sockets)."""
        return os.path.join(self.opts.private_dir, self.uid or "unknown-uid")
