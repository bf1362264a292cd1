"""The VMI view of command requests: every refusal with its exact message, and what a valid
(KubeVirt-sized, unknown-field-laden) VMI yields."""

from __future__ import annotations

import json
from typing import Any

import pytest

from launcher.cmd.vmi import VMI, VMIError, parse

DOMAIN = "ns1_vm1"


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("payload", "message"), [
    (b"", "vmi: vmiJson: required (the request carries no VMI)"),
    (b"{", "vmi: invalid JSON: Expecting property name enclosed in double quotes: "
           "line 1 column 2 (char 1)"),
    (b"not json", "vmi: invalid JSON: Expecting value: line 1 column 1 (char 0)"),
    (b'{"metadata": {"name": "vm1"}} trailing',
     "vmi: invalid JSON: Extra data: line 1 column 31 (char 30)"),
    (b"\xff\xfe\x00garbage", None),  # decoded as UTF-16 by json: still a JSON error
    (b'{"a": "\xff"}', "vmi: invalid JSON: not UTF-8 (invalid start byte at byte 7)"),
    (b"[" * 100_000, "vmi: invalid JSON: nested too deeply"),
    (encode([1, 2]), "vmi: expected a JSON object, got array"),
    (encode("vm"), "vmi: expected a JSON object, got string"),
    (encode(None), "vmi: expected a JSON object, got null"),
    (encode({}), "vmi: metadata: required"),
    (encode({"metadata": None}), "vmi: metadata: required"),
    (encode({"metadata": "vm1"}), "vmi: metadata: expected an object, got string"),
    (encode({"metadata": [1]}), "vmi: metadata: expected an object, got array"),
    (encode({"metadata": {"namespace": "ns1"}}), "vmi: metadata.name: required"),
    (encode({"metadata": {"name": "", "namespace": "ns1"}}), "vmi: metadata.name: required"),
    (encode({"metadata": {"name": 7, "namespace": "ns1"}}),
     "vmi: metadata.name: expected a string, got number"),
    (encode({"metadata": {"name": True, "namespace": "ns1"}}),
     "vmi: metadata.name: expected a string, got boolean"),
    (encode({"metadata": {"name": "vm1"}}), "vmi: metadata.namespace: required"),
    (encode({"metadata": {"name": "vm1", "namespace": {}}}),
     "vmi: metadata.namespace: expected a string, got object"),
    (encode({"metadata": {"name": "vm1", "namespace": "ns1", "uid": 5}}),
     "vmi: metadata.uid: expected a string, got number"),
])
def test_refusals_name_the_field(payload: bytes, message: str | None) -> None:
    with pytest.raises(VMIError) as exc:
        parse(payload, domain=DOMAIN)
    if message is None:
        assert str(exc.value).startswith("vmi: invalid JSON: ")
    else:
        assert str(exc.value) == message


@pytest.mark.parametrize(("name", "namespace"), [
    ("vm2", "ns1"), ("vm1", "ns2"), ("ns1_vm1", ""), ("vm1_", "ns1"),
])
def test_a_vmi_naming_another_domain_is_refused(name: str, namespace: str) -> None:
    payload = encode({"metadata": {"name": name, "namespace": namespace or "x"}})
    with pytest.raises(VMIError) as exc:
        parse(payload, domain=DOMAIN)
    key = f"{namespace or 'x'}/{name}"
    assert str(exc.value) == f'vmi "{key}" does not match this launcher\'s domain "ns1_vm1"'


def test_a_valid_vmi_tolerates_unknown_fields() -> None:
    doc = {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm1", "namespace": "ns1", "uid": "1234-abcd",
                     "labels": {"a": "b"}, "someFutureField": [1, {"x": None}]},
        "spec": {"domain": {"devices": {}, "features": {"acpi": {}}}, "newThing": 3},
        "status": {"phase": "Running",
                   "conditions": [{"type": "AgentConnected", "status": "True"}]},
        "extra": True,
    }
    vmi = parse(encode(doc), domain=DOMAIN)
    assert vmi == VMI(name="vm1", namespace="ns1", uid="1234-abcd", raw={})
    assert vmi.raw == doc
    assert (vmi.domain_name, vmi.key) == ("ns1_vm1", "ns1/vm1")
    assert vmi.agent_connected_condition()
    assert not vmi.acpi_disabled()


def test_minimal_vmi_as_virt_freezer_sends_it() -> None:
    vmi = parse(b'{"metadata":{"name":"vm1","namespace":"ns1"}}', domain=DOMAIN)
    assert (vmi.name, vmi.namespace, vmi.uid) == ("vm1", "ns1", "")
    assert not vmi.agent_connected_condition()
    assert not vmi.acpi_disabled()


def test_without_an_expected_domain_any_vmi_parses() -> None:
    assert parse(encode({"metadata": {"name": "a", "namespace": "b"}})).domain_name == "b_a"


@pytest.mark.parametrize(("spec", "disabled"), [
    ({"domain": {"features": {"acpi": {"enabled": False}}}}, True),
    ({"domain": {"features": {"acpi": {"enabled": True}}}}, False),
    ({"domain": {"features": {"acpi": {}}}}, False),
    ({"domain": {"features": None}}, False),
    ({"domain": "weird"}, False),
])
def test_acpi_disabled_only_when_explicitly_false(spec: dict[str, Any], disabled: bool) -> None:
    vmi = parse(encode({"metadata": {"name": "a", "namespace": "b"}, "spec": spec}))
    assert vmi.acpi_disabled() is disabled


@pytest.mark.parametrize("status", [
    None, {"conditions": "x"}, {"conditions": [{"type": "AgentConnected", "status": "False"}]},
    {"conditions": [{"type": "Ready", "status": "True"}, 3]},
])
def test_agent_condition_absent_or_false(status: Any) -> None:
    vmi = parse(encode({"metadata": {"name": "a", "namespace": "b"}, "status": status}))
    assert not vmi.agent_connected_condition()
