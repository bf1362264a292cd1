"""Shape raw QEMU guest agent replies into the JSON KubeVirt's virt-launcher serves.

Pure functions, no I/O. Input everywhere is `raw`: {agent command name: that command's
"return" value}, as launcher.guest.poller.AgentCache.raw() holds it. Any key may be missing (not
polled yet, or the command is unsupported), and every value comes from the guest, so it is
untrusted: wrong types, missing keys and None never raise. A bad container (e.g. a
guest-get-users reply that is not a list) counts as no data; a bad entry inside a list is
skipped; a bad scalar field becomes Go's zero value ("" / 0), as it would in KubeVirt.

Verified against kubevirt/kubevirt (main as crawled):
- staging/src/kubevirt.io/api/core/v1/types.go @ 00341b09120e281be174fce990980ce9d0cf7c74:
  VirtualMachineInstanceGuestAgentInfo and friends (json tags, omitempty).
- pkg/virt-launcher/virtwrap/manager.go @ 00341b09120e281be174fce990980ce9d0cf7c74:
  GetGuestInfo (users and filesystems capped at 10), GetUsers, GetFilesystems (no cap).
- pkg/virt-launcher/virtwrap/agent-poller/agent_poller.go (libvirt GetGuestInfo version) and
  agent_parser.go @ 021524ba74c2981e210d2a817babcc74ba20e736: how each field is converted.
- pkg/virt-launcher/virtwrap/api/schema.go: DomainStatus {Interfaces, OSInfo, FSFreezeStatus}
  (no json tags, so Go field names).
- pkg/virt-handler/cmd-client/client.go: GetUsers / GetFilesystems decode a bare JSON
  array and wrap it into the *List type themselves.
Interfaces, OS info, hostname, timezone and users reach KubeVirt through libvirt's
virDomainGetGuestInfo, so libvirt's own conversion (src/qemu/qemu_agent.c) is mirrored too:
interface aliases "eth0:1" merge into "eth0"; only ipv4/ipv6 addresses; login-time becomes
whole milliseconds and KubeVirt turns that back into float seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Raw agent command names (the same strings launcher.guest.poller uses as cache keys).
GUEST_INFO = "guest-info"
OSINFO = "guest-get-osinfo"
HOSTNAME = "guest-get-host-name"
TIMEZONE = "guest-get-timezone"
INTERFACES = "guest-network-get-interfaces"
USERS = "guest-get-users"
FSINFO = "guest-get-fsinfo"
FSFREEZE_STATUS = "guest-fsfreeze-status"
LOAD = "guest-get-load"

GUEST_INFO_LIST_LIMIT = 10  # GetGuestInfo: l.agentData.GetUsers(10) / GetFS(10)
LOOPBACK = "lo"

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NS_PER_MS = 1_000_000
_NS_PER_S = 1_000_000_000

# (api.GuestOSInfo Go field, v1.VirtualMachineInstanceGuestOSInfo json tag, agent key)
_OS_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("Name", "name", "name"),
    ("KernelRelease", "kernelRelease", "kernel-release"),
    ("Version", "version", "version"),
    ("PrettyName", "prettyName", "pretty-name"),
    ("VersionId", "versionId", "version-id"),
    ("KernelVersion", "kernelVersion", "kernel-version"),
    ("Machine", "machine", "machine"),
    ("Id", "id", "id"),
)


# --- tolerant accessors -------------------------------------------------------------------
def _mapping(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def _items(value: Any) -> list[Any]:
    """A JSON array as a list; anything else is no data."""
    return list(value) if isinstance(value, list | tuple) else []


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any, lo: int, hi: int) -> int:
    """An integral JSON number in [lo, hi]; anything else is 0 (Go's zero value)."""
    if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
        return value
    return 0


# --- per-command conversion (KubeVirt's internal api.* values) ----------------------------
def _agent_version_and_commands(raw: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    info = _mapping(raw.get(GUEST_INFO))
    if info is None:
        return "", []
    commands: list[dict[str, Any]] = []
    for entry in _items(info.get("supported_commands")):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            continue
        cmd: dict[str, Any] = {"name": entry["name"]}
        if entry.get("enabled") is True:  # GuestAgentCommandInfo.Enabled is omitempty
            cmd["enabled"] = True
        commands.append(cmd)
    return _str(info.get("version")), commands


def _os_values(raw: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return _mapping(raw.get(OSINFO))


def _hostname(raw: Mapping[str, Any]) -> str:
    reply = _mapping(raw.get(HOSTNAME))
    return _str(reply.get("host-name")) if reply is not None else ""


def _timezone(raw: Mapping[str, Any]) -> str:
    """fmt.Sprintf("%s, %d", Zone, Offset): always present, ", 0" without data."""
    reply = _mapping(raw.get(TIMEZONE))
    zone, offset = "", 0
    if reply is not None:
        zone = _str(reply.get("zone"))  # optional in qemu-ga
        offset = _int(reply.get("offset"), _INT32_MIN, _INT32_MAX)  # libvirt reads an int
    return f"{zone}, {offset}"


def _login_time(value: Any) -> float:
    """libvirt: (unsigned long long)(login_time * 1000) ms; KubeVirt:
    (time.Duration(ms) * time.Millisecond).Seconds(). Out-of-range values (negative, NaN,
    infinite, past int64 nanoseconds where Go would wrap) become 0, which omitempty drops."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    try:
        ms = int(float(value) * 1000)
    except (OverflowError, ValueError):
        return 0.0
    if ms <= 0 or ms * _NS_PER_MS > _INT64_MAX:
        return 0.0
    sec, nsec = divmod(ms * _NS_PER_MS, _NS_PER_S)
    return float(sec) + float(nsec) / 1e9


def _users(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """v1.VirtualMachineInstanceGuestOSUser: userName, domain (omitempty), loginTime
    (omitempty), in the agent's order."""
    users: list[dict[str, Any]] = []
    for entry in _items(raw.get(USERS)):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("user"), str):
            continue
        user: dict[str, Any] = {"userName": entry["user"]}
        domain = _str(entry.get("domain"))  # only Windows guests report one
        if domain:
            user["domain"] = domain
        login = _login_time(entry.get("login-time"))
        if login:
            user["loginTime"] = login
        users.append(user)
    return users


def _filesystems(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """v1.VirtualMachineInstanceFileSystem: diskName, mountPoint, fileSystemType, usedBytes,
    totalBytes (always), disk (omitempty) [{serial (omitempty), busType}]."""
    result: list[dict[str, Any]] = []
    for entry in _items(raw.get(FSINFO)):
        if not isinstance(entry, Mapping):
            continue
        fs: dict[str, Any] = {
            "diskName": _str(entry.get("name")),
            "mountPoint": _str(entry.get("mountpoint")),
            "fileSystemType": _str(entry.get("type")),
            "usedBytes": _int(entry.get("used-bytes"), _INT64_MIN, _INT64_MAX),
            "totalBytes": _int(entry.get("total-bytes"), _INT64_MIN, _INT64_MAX),
        }
        disks: list[dict[str, Any]] = []
        for disk in _items(entry.get("disk")):
            if not isinstance(disk, Mapping):
                continue
            out: dict[str, Any] = {}
            serial = _str(disk.get("serial"))
            if serial:
                out["serial"] = serial
            out["busType"] = _str(disk.get("bus-type"))
            disks.append(out)
        if disks:
            fs["disk"] = disks
        result.append(fs)
    return result


def _fsfreeze_status(raw: Mapping[str, Any]) -> str | None:
    """KubeVirt stores any non-empty string the agent returns ("thawed" / "frozen")."""
    value = raw.get(FSFREEZE_STATUS)
    return value if isinstance(value, str) and value else None


def _interfaces(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """api.InterfaceStatus {Mac, Ip, IPs, InterfaceName}, "lo" skipped, in agent order.

    As libvirt does: "<ifname>:<alias>" entries merge into <ifname> (MAC from the first
    entry seen), and only ipv4/ipv6 addresses with a string address count. As KubeVirt does:
    Ip is the first ipv4 address, else the first address; IPs are bare addresses (no
    prefix), null when there are none (a Go nil slice)."""
    merged: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    for entry in _items(raw.get(INTERFACES)):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            continue
        ifname = entry["name"].split(":", 1)[0]
        if ifname not in merged:
            merged[ifname] = (_str(entry.get("hardware-address")), [])
        addrs = merged[ifname][1]
        for addr in _items(entry.get("ip-addresses")):
            if not isinstance(addr, Mapping):
                continue
            kind, ip = addr.get("ip-address-type"), addr.get("ip-address")
            if isinstance(kind, str) and kind in ("ipv4", "ipv6") and isinstance(ip, str):
                addrs.append((kind, ip))
    result: list[dict[str, Any]] = []
    for ifname, (mac, addrs) in merged.items():
        if ifname == LOOPBACK:
            continue
        ips = [ip for _, ip in addrs]
        primary = next((ip for kind, ip in addrs if kind == "ipv4"), ips[0] if ips else "")
        result.append({"Mac": mac, "Ip": primary, "IPs": ips or None, "InterfaceName": ifname})
    return result


# --- public shapes ------------------------------------------------------------------------
def guest_info_json(raw: Mapping[str, Any]) -> dict[str, Any]:
    """GetGuestInfo's payload: v1.VirtualMachineInstanceGuestAgentInfo, keys in Go's field
    order. "os", "timezone" and "fsInfo" are always present (non-pointer struct / formatted
    string / struct); the rest follow omitempty. fsInfo.disks is null when there are none."""
    out: dict[str, Any] = {}
    version, commands = _agent_version_and_commands(raw)
    if version:
        out["guestAgentVersion"] = version
    if commands:
        out["supportedCommands"] = commands
    hostname = _hostname(raw)
    if hostname:
        out["hostname"] = hostname
    os_values = _os_values(raw)
    out["os"] = {} if os_values is None else {
        tag: value for _, tag, key in _OS_FIELDS if (value := _str(os_values.get(key)))}
    out["timezone"] = _timezone(raw)
    users = _users(raw)[:GUEST_INFO_LIST_LIMIT]
    if users:
        out["userList"] = users
    out["fsInfo"] = {"disks": _filesystems(raw)[:GUEST_INFO_LIST_LIMIT] or None}
    freeze = _fsfreeze_status(raw)
    if freeze is not None:
        out["fsFreezeStatus"] = freeze
    return out


def users_json(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """GetUsers' payload. KubeVirt marshals the bare []VirtualMachineInstanceGuestOSUser
    (no kind/apiVersion/metadata/items); virt-handler's client decodes that array and builds
    the VirtualMachineInstanceGuestOSUserList itself. All users, no cap; [] without data."""
    return _users(raw)


def filesystems_json(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """GetFilesystems' payload: the bare []VirtualMachineInstanceFileSystem (virt-handler
    wraps it into VirtualMachineInstanceFileSystemList). All filesystems; [] without data."""
    return _filesystems(raw)


def domain_status_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The agent part of api.DomainStatus, Go field names: "Interfaces", "OSInfo",
    "FSFreezeStatus", each only when there is data (KubeVirt's notifier likewise only sets
    them when the agent store has them). No non-lo interface -> no "Interfaces" key, which
    equals Go's nil slice. OSInfo always carries all eight fields (no omitempty)."""
    out: dict[str, Any] = {}
    interfaces = _interfaces(raw)
    if interfaces:
        out["Interfaces"] = interfaces
    os_values = _os_values(raw)
    if os_values is not None:
        out["OSInfo"] = {field: _str(os_values.get(key)) for field, _, key in _OS_FIELDS}
    freeze = _fsfreeze_status(raw)
    if freeze is not None:
        out["FSFreezeStatus"] = {"Status": freeze}
    return out


def interfaces_for_change_detection(raw: Mapping[str, Any]) -> Any:
    """A hashable value that changes iff the reported interfaces really change: statistics
    and any other agent fields are ignored, as are the order of interfaces and the order of
    addresses within one (the primary Ip still counts). No data == only lo == ()."""
    return tuple(sorted(
        (i["InterfaceName"], i["Mac"], i["Ip"], tuple(sorted(i["IPs"] or ())))
        for i in _interfaces(raw)))


def os_info_for_change_detection(raw: Mapping[str, Any]) -> Any:
    """A hashable value of the reported OS info; no data equals an empty reply (both decode
    to Go's zero api.GuestOSInfo)."""
    os_values = _os_values(raw) or {}
    return tuple(_str(os_values.get(key)) for _, _, key in _OS_FIELDS)


__all__ = [
    "FSFREEZE_STATUS",
    "FSINFO",
    "GUEST_INFO",
    "GUEST_INFO_LIST_LIMIT",
    "HOSTNAME",
    "INTERFACES",
    "LOAD",
    "OSINFO",
    "TIMEZONE",
    "USERS",
    "domain_status_fields",
    "filesystems_json",
    "guest_info_json",
    "interfaces_for_change_detection",
    "os_info_for_change_detection",
    "users_json",
]
