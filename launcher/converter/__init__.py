"""KubeVirt VMI -> libvirt domain XML (pure functions). See domain.convert."""

from launcher.converter.domain import convert
from launcher.converter.errors import ConversionError
from launcher.converter.options import ClusterConfig, ConvertOptions, DiskInfo, SMBios
from launcher.converter.plan import Conversion

__all__ = ["ClusterConfig", "Conversion", "ConversionError", "ConvertOptions", "DiskInfo",
           "SMBios", "convert"]
