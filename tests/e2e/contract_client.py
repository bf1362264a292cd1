"""A client of the launcher built only from KubeVirt's contract: package/service/rpc names
and field numbers, encoded by hand. It does not import our generated protobuf code, so a
wrong field number or package name on our side cannot be hidden by sharing it."""

from __future__ import annotations

import grpc


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # int32 negatives are 10-byte varints on the wire
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3 | 0) + _varint(value)


def decode(data: bytes) -> dict[int, list[bytes | int]]:
    """field number -> values (varints as int, length-delimited as bytes)."""
    out: dict[int, list[bytes | int]] = {}
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(data, i)
            out.setdefault(number, []).append(value)
        elif wire == 2:
            length, i = _read_varint(data, i)
            out.setdefault(number, []).append(data[i:i + length])
            i += length
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return out


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def response(data: bytes) -> tuple[bool, str]:
    """kubevirt.cmd.v1.Response{bool success = 1; string message = 2;}"""
    f = decode(data)
    success = bool(f.get(1, [0])[0])
    message = f.get(2, [b""])[0]
    assert isinstance(message, bytes)
    return success, message.decode()


class ContractClient:
    def __init__(self, socket_path: str) -> None:
        self.channel = grpc.insecure_channel(f"unix:{socket_path}")

    def call(self, method: str, request: bytes, timeout: float = 10) -> bytes:
        rpc = self.channel.unary_unary(method, request_serializer=None,
                                       response_deserializer=None)
        reply: bytes = rpc(request, timeout=timeout)
        return reply

    def info_versions(self) -> list[int]:
        # CmdInfo/Info -> CmdInfoResponse{repeated uint32 supportedCmdVersions = 1}
        f = decode(self.call("/kubevirt.cmd.info.CmdInfo/Info", b""))
        versions: list[int] = []
        for v in f.get(1, []):
            if isinstance(v, int):
                versions.append(v)
            else:  # packed repeated field
                i = 0
                while i < len(v):
                    n, i = _read_varint(v, i)
                    versions.append(n)
        return versions

    def ping(self) -> tuple[bool, str]:
        return response(self.call("/kubevirt.cmd.v1.Cmd/Ping", b""))

    def get_domain(self) -> tuple[bool, str, bytes]:
        # DomainResponse{Response response = 1; string domain = 2;}
        f = decode(self.call("/kubevirt.cmd.v1.Cmd/GetDomain", b""))
        raw_resp = f.get(1, [b""])[0]
        domain = f.get(2, [b""])[0]
        assert isinstance(raw_resp, bytes) and isinstance(domain, bytes)
        ok, msg = response(raw_resp)
        return ok, msg, domain

    def freeze(self, vmi_json: bytes, unfreeze_timeout_s: int) -> tuple[bool, str]:
        # FreezeRequest{VMI vmi = 1 {bytes vmiJson = 1;}; int32 unfreezeTimeoutSeconds = 2;}
        req = _field_bytes(1, _field_bytes(1, vmi_json)) + _field_varint(2, unfreeze_timeout_s)
        return response(self.call("/kubevirt.cmd.v1.Cmd/FreezeVirtualMachine", req, 60))

    def unfreeze(self, vmi_json: bytes) -> tuple[bool, str]:
        req = _field_bytes(1, _field_bytes(1, vmi_json))
        return response(self.call("/kubevirt.cmd.v1.Cmd/UnfreezeVirtualMachine", req, 60))

    def close(self) -> None:
        self.channel.close()
