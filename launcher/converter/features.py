"""<features> and <clock>: ACPI, APIC, SMM, Hyper-V enlightenments, KVM and pvspinlock,
the guest clock and its timers (KubeVirt's converter: compute/hypervisor_features.go,
compute/clock.go).

- Features: ACPI unless disabled; apic (eoi with endOfInterrupt), smm, Hyper-V
  enlightenments, kvm hidden and pvspinlock only when asked;
  <kvm><hint-dedicated state='on'/> with dedicated CPUs on x86_64; <pmu state='off'/> for
  realtime; <vmport state='off'/> on every x86_64 domain (KubeVirt HEAD; KubeVirt 1.2,
  seed 001, had none).
- Refused: Hyper-V tlbflush direct / extended turned on (libvirt 9 has no element).
- Clock: utc (adjustment from offsetSeconds, else reset) or timezone; timers rtc, pit,
  kvmclock, hpet, hypervclock.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from launcher.converter import cpu
from launcher.converter.context import Context
from launcher.converter.spec import Node
from launcher.converter.xmlutil import INT64, UINT32, is_x86, on_off, sub, text, yes_no

HYPERV_FLAGS = ("relaxed", "vapic", "vpindex", "runtime", "synic", "reset", "frequencies",
                "reenlightenment", "tlbflush", "ipi", "evmcs")
# (KubeVirt field, libvirt timer, tick policies KubeVirt's API allows or None)
TIMERS: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("rtc", "rtc", ("delay", "catchup")),
    ("pit", "pit", ("delay", "catchup", "discard")),
    ("kvm", "kvmclock", None),
    ("hpet", "hpet", ("delay", "catchup", "merge", "discard")),
    ("hyperv", "hypervclock", None),
)
RTC_TRACKS = ("guest", "wall")
_TIMEZONE_RE = re.compile(r"[A-Za-z0-9_.+/-]+")  # libvirt's timeZone
_VENDOR_ID_RE = re.compile(r"[^,\n\r]{1,12}")


def _asked(features: Node, key: str) -> bool:
    """features.<key> is set and not disabled (enabled defaults to true)."""
    node = features.obj(key)
    return node.present and bool(node.bool("enabled", True))


def build_features(ctx: Context, dom: ET.Element, *, secure_boot: bool) -> None:
    features = ctx.domain_spec.obj("features")
    el = sub(dom, "features")
    if features.obj("acpi").bool("enabled", True):
        sub(el, "acpi")
    if _asked(features, "apic"):
        apic = sub(el, "apic")
        if features.obj("apic").bool("endOfInterrupt", False):
            apic.set("eoi", "on")  # KubeVirt's FeatureAPIC.EndOfInterrupt
    _hyperv(features, el)
    kvm = features.obj("kvm")
    # Not under TCG: the hint is a KVM paravirtual CPUID bit, meaningless in emulation.
    hint = cpu.dedicated_cpus(ctx) and is_x86(ctx) and not ctx.opts.emulation
    if kvm.present or hint:
        kvm_el = sub(el, "kvm")
        if kvm.present:
            sub(kvm_el, "hidden", state=on_off(kvm.bool("hidden", False)))
        if hint:
            # KubeVirt: dedicated CPUs on x86_64 tell the guest its vCPUs never share a
            # host CPU (KVM_HINTS_REALTIME).
            sub(kvm_el, "hint-dedicated", state="on")
    pvspinlock = features.obj("pvspinlock")
    if pvspinlock.present:
        sub(el, "pvspinlock", state=on_off(pvspinlock.bool("enabled", True)))
    if _smm(features, secure_boot=secure_boot):
        sub(el, "smm", state="on")
    if cpu.realtime(ctx):
        sub(el, "pmu", state="off")  # KubeVirt's realtime setting
    if is_x86(ctx):
        # KubeVirt (HEAD) turns the VMware I/O port off on every x86 domain.
        sub(el, "vmport", state="off")
    if len(el) == 0:
        dom.remove(el)


def _smm(features: Node, *, secure_boot: bool) -> bool:
    smm = features.obj("smm")
    if secure_boot:
        if smm.present and smm.bool("enabled", True) is False:
            smm.fail("UEFI secure boot needs SMM (or set "
                     "spec.domain.firmware.bootloader.efi.secureBoot: false)", "enabled")
        return True
    return _asked(features, "smm")


def _hyperv(features: Node, parent: ET.Element) -> None:
    hyperv, passthrough = features.obj("hyperv"), features.obj("hypervPassthrough")
    if passthrough.bool("enabled", False):
        if hyperv.present:
            features.fail("set only one of hyperv and hypervPassthrough", "hypervPassthrough")
        sub(parent, "hyperv", mode="passthrough")
        return
    if not hyperv.present:
        return
    el = sub(parent, "hyperv", mode="custom")
    for key in HYPERV_FLAGS:
        node = hyperv.obj(key)
        if node.present:
            sub(el, key, state=on_off(node.bool("enabled", True)))
    _tlbflush_extras(hyperv.obj("tlbflush"))
    _spinlocks(hyperv.obj("spinlocks"), el)
    _stimer(hyperv.obj("synictimer"), el)
    _vendor_id(hyperv.obj("vendorid"), el)


def _tlbflush_extras(node: Node) -> None:
    """KubeVirt writes <tlbflush><direct/><extended/></tlbflush>; libvirt 9 has neither
    child (QEMU's hv-tlbflush-direct / -ext), so asking for one is refused. Off is what
    QEMU does without them, so `enabled: false` is honoured by leaving them out."""
    for key in ("direct", "extended"):
        child = node.obj(key)
        if child.present and child.bool("enabled", True):
            node.fail(f"Hyper-V TLB flush {key} is not supported by this launcher "
                      "(libvirt 9 cannot express it)", key)


def _spinlocks(node: Node, hyperv: ET.Element) -> None:
    if not node.present:
        return
    enabled = bool(node.bool("enabled", True))
    spin = sub(hyperv, "spinlocks", state=on_off(enabled))
    if enabled:
        # libvirt refuses fewer than 4095 retries; 4096 is KubeVirt's default.
        retries = node.int("spinlocks", 4096, minimum=4095, maximum=UINT32)
        spin.set("retries", str(retries))


def _stimer(node: Node, hyperv: ET.Element) -> None:
    if not node.present:
        return
    stimer = sub(hyperv, "stimer", state=on_off(node.bool("enabled", True)))
    direct = node.obj("direct")
    if direct.present:
        sub(stimer, "direct", state=on_off(direct.bool("enabled", True)))


def _vendor_id(node: Node, hyperv: ET.Element) -> None:
    if not node.present:
        return
    enabled = bool(node.bool("enabled", True))
    value = text(node, "vendorid", _VENDOR_ID_RE, "at most 12 characters, no commas")
    if enabled and not value:
        node.fail("required when the vendor id is enabled", "vendorid")
    vendor = sub(hyperv, "vendor_id", state=on_off(enabled))
    if value:
        vendor.set("value", value)



# --- clock --------------------------------------------------------------------------------
def build_clock(ctx: Context, dom: ET.Element) -> None:
    clock = ctx.domain_spec.obj("clock")
    el = sub(dom, "clock", offset="utc")
    utc = clock.obj("utc")
    timezone = text(clock, "timezone", _TIMEZONE_RE, "a time zone such as Europe/Berlin")
    if timezone and utc.present:
        clock.fail("set only one of utc and timezone", "timezone")
    if timezone:
        el.set("offset", "timezone")
        el.set("timezone", timezone)
    elif utc.present:
        offset = utc.int("offsetSeconds", minimum=-INT64, maximum=INT64)
        el.set("adjustment", "reset" if offset is None else str(offset))
    timer = clock.obj("timer")
    for key, name, policies in TIMERS:
        node = timer.obj(key)
        if node.present:
            _timer(node, el, name, policies)


def _timer(node: Node, clock: ET.Element, name: str,
           policies: tuple[str, ...] | None) -> None:
    # KubeVirt's JSON key is "present" (v1.HPETTimer.Enabled `json:"present"`).
    attrs = {"name": name, "present": yes_no(node.bool("present", True))}
    if policies is not None and node.str("tickPolicy"):
        attrs["tickpolicy"] = node.req_str("tickPolicy", choices=policies)
    if name == "rtc" and node.str("track"):
        attrs["track"] = node.req_str("track", choices=RTC_TRACKS)
    sub(clock, "timer", **attrs)

