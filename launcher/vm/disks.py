"""Carry out the converter's disk preparations (launcher.converter.plan) before the domain
is defined: the files the domain XML names must exist, with the right format and owner.
Blocking (qemu-img, file I/O): the launcher runs prepare_isolated() (prepare() in a
short-lived child interpreter) from a worker thread.

Matched KubeVirt behaviour
- containerDisk: a qcow2 overlay on the read-only image, recreated every start
  (pkg/ephemeral-disk: `qemu-img create -f qcow2 -b IMAGE -F FORMAT OVERLAY`), 0640.
- emptyDisk: a fresh sparse qcow2 of the capacity (pkg/emptydisk).
- hostDisk DiskOrCreate: a sparse raw file of the capacity when missing (pkg/host-disk's
  createSparseRaw; there virt-handler does it).
- cloud-init: an ISO 9660 image with Joliet and Rock Ridge (KubeVirt runs
  `xorrisofs -joliet -rock`), label "cidata" (NoCloud: user-data, meta-data,
  network-config) or "config-2" (ConfigDrive: openstack/latest/user_data, meta_data.json,
  network_data.json), written to a temporary file and renamed into place.

Deliberate differences
- The ISO is built in-process with pycdlib (no xorriso in the image).
- A containerDisk format virt-handler did not report is probed with qemu-img info, and an
  image that turns out to have a backing file is refused: a raw image crafted to look
  like qcow2 could otherwise point QEMU at any file the launcher can read.
- Every created file is made atomically (temporary name, then rename), so a crash never
  leaves a half-written image under the name the domain uses.
- Confinement (`confine`, the launcher passes its disk directories): every path a
  preparation reads or writes must lie under one of those directories and stay there once
  symlinks are resolved. Volumes are mounted content (a PVC's files, a hostDisk directory,
  a container image's kernel): a symlink in them pointing out of the tree
  (`vmi-disks/<vol>/disk.img -> /etc/shadow`, `disk-data -> /`) would otherwise make QEMU
  read, or this launcher write, a file of the launcher's own container. Symlinks that stay
  inside the tree (a kernel's `vmlinuz -> vmlinuz-6.1`) and block devices are fine. The
  configured directories themselves are trusted, and so is everything between this check
  and QEMU opening the file (libvirt takes paths, not descriptors).

Errors are DiskError(volume, message), naming the volume and the path; qemu-img's own
message is included when it fails.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from launcher.converter.plan import (
    CloudInitIso,
    ConfigIso,
    ContainerDiskOverlay,
    EmptyDisk,
    ExistingFile,
    FileDisk,
    Prep,
)
from launcher.vm import isos
from launcher.vm.disk_error import DiskError

__all__ = ["DiskError", "block_volumes", "prepare", "prepare_isolated", "resolve_cloud_init"]

DIR_MODE = 0o750
FILE_MODE = 0o640
QEMU_IMG_TIMEOUT_S = 120
BACKING_FORMATS = ("raw", "qcow2")
UNATTEND_FILES = ("autounattend.xml", "unattend.xml")  # KubeVirt's sysprep check

Owner = tuple[int, int]


def prepare(preps: Sequence[Prep], *, confine: Sequence[str],
            owner: Owner | None = None) -> None:
    """Make every file in `preps` exist as the domain expects it. `confine`: the
    directories the files must stay in (see the module doc): required, so no caller can
    forget it. `owner` (uid, gid): who gets the files and directories created here (QEMU's
    user, e.g. 107:107)."""
    if not confine:
        raise ValueError("disk preparation needs the directories its files must stay in")
    for prep in preps:  # all of them first: nothing is written when one path escapes
        confined(prep.volume, prep.path, confine)
        for read in _reads(prep):
            confined(prep.volume, read, confine)
    for prep in preps:
        match prep:
            case ContainerDiskOverlay():
                _overlay(prep, owner)
            case FileDisk():
                _file_disk(prep, owner)
            case EmptyDisk():
                _empty_disk(prep, owner)
            case CloudInitIso():
                _cloud_init_iso(prep, owner)
            case ConfigIso():
                _config_iso(prep, owner)
            case ExistingFile():
                _existing(prep.volume, prep.path)


def _reads(prep: Prep) -> tuple[str, ...]:
    """What a preparation reads besides its own path (confined like it)."""
    if isinstance(prep, ContainerDiskOverlay):
        return (prep.backing,)
    if isinstance(prep, ConfigIso):
        return (prep.source_dir,)
    if isinstance(prep, CloudInitIso):
        return prep.user_data_files + prep.network_data_files
    return ()


def block_volumes(vmi: Any, block_dir: str) -> frozenset[str]:
    """The PVC / DataVolume / ephemeral volumes of `vmi` whose <block_dir>/<volume> is a
    block device: KubeVirt's isBlockDeviceVolume, the probe the converter takes as input
    (it stays pure). Anything malformed is skipped: the converter reports it."""
    spec = vmi.get("spec") if isinstance(vmi, dict) else None
    volumes = spec.get("volumes") if isinstance(spec, dict) else None
    found = set()
    for volume in volumes if isinstance(volumes, list) else ():
        if not isinstance(volume, dict) or not any(
                isinstance(volume.get(key), dict)
                for key in ("persistentVolumeClaim", "dataVolume", "ephemeral")):
            continue
        name = volume.get("name")
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            continue
        try:
            mode = os.stat(os.path.join(block_dir, name)).st_mode
        except (OSError, ValueError):  # ValueError: a NUL in the name
            continue
        if stat.S_ISBLK(mode):
            found.add(name)
    return frozenset(found)


# --- the record kinds -----------------------------------------------------------------------
def _overlay(prep: ContainerDiskOverlay, owner: Owner | None) -> None:
    _existing(prep.volume, prep.backing, what="container disk image")
    _readable(prep.volume, prep.backing)
    fmt = prep.backing_format or _probe_format(prep.volume, prep.backing)
    if fmt not in BACKING_FORMATS:
        raise DiskError(prep.volume, f"{prep.backing} is a {fmt} image; only raw and qcow2 "
                                     f"container disks are supported")

    def create(tmp: str) -> None:
        _qemu_img(prep.volume, "create", "-f", "qcow2", "-F", fmt, "-b", prep.backing, tmp)

    _atomic_create(prep.volume, prep.path, owner, create)


def _file_disk(prep: FileDisk, owner: Owner | None) -> None:
    try:
        _existing(prep.volume, prep.path)
    except DiskError:
        if prep.create_size is None or os.path.lexists(prep.path):
            raise
        _create_sparse(prep, prep.create_size, owner)
        return
    _readable(prep.volume, prep.path)


def _empty_disk(prep: EmptyDisk, owner: Owner | None) -> None:
    def create(tmp: str) -> None:
        _qemu_img(prep.volume, "create", "-f", "qcow2", tmp, str(prep.size))

    _atomic_create(prep.volume, prep.path, owner, create)


def resolve_cloud_init(prep: CloudInitIso, *, confine: Sequence[str]) -> CloudInitIso:
    """`prep` with the secret data it refers to read now (confined as a preparation's
    reads), so the data can be shown to a PreCloudInitIso hook before the ISO is built."""
    for read in _reads(prep):
        confined(prep.volume, read, confine)
    return _read_secrets(prep)


def _read_secrets(prep: CloudInitIso) -> CloudInitIso:
    if prep.user_data_files:  # userDataSecretRef: the secret's data, read now
        prep = replace(prep, user_data=isos.first_file(prep.volume, prep.user_data_files),
                       user_data_files=())
    if prep.network_data_files:
        prep = replace(prep, network_data=isos.first_file(prep.volume, prep.network_data_files),
                       network_data_files=())
    return prep


def _cloud_init_iso(prep: CloudInitIso, owner: Owner | None) -> None:
    if prep.kind not in ("noCloud", "configDrive"):
        raise DiskError(prep.volume, f"unknown cloud-init data source {prep.kind!r}")
    label, files = isos.cloud_init_files(_read_secrets(prep))

    def create(tmp: str) -> None:
        isos.write_iso(prep.volume, prep.path, label, files, tmp)

    _atomic_create(prep.volume, prep.path, owner, create)


def _config_iso(prep: ConfigIso, owner: Owner | None) -> None:
    files = isos.tree_files(prep.volume, prep.source_dir)
    if prep.unattend and not any(path.lower() in UNATTEND_FILES for path in files):
        raise DiskError(prep.volume, f"the sysprep volume {prep.source_dir} holds neither "
                                     f"{' nor '.join(UNATTEND_FILES)}")

    def create(tmp: str) -> None:
        isos.write_iso(prep.volume, prep.path, prep.label, files, tmp)

    _atomic_create(prep.volume, prep.path, owner, create)


def _existing(volume: str, path: str, what: str = "disk image") -> None:
    """`path` must be a regular file or a block device."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DiskError(volume, f"{what} {path} does not exist") from None
    except OSError as exc:
        raise DiskError(volume, f"{what} {path}: {exc.strerror}") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise DiskError(volume, f"{what} {path} is not a regular file or block device")


def _under(path: str, directory: str) -> bool:
    return os.path.commonpath([path, directory]) == directory


def confined(volume: str, path: str, roots: Sequence[str]) -> None:
    """`path` is under one of `roots` (the longest that holds it) and, with every symlink
    on the way resolved (a dangling one too), still under that root's real path."""
    path = os.path.abspath(path)
    holding = [os.path.abspath(root) for root in roots
               if _under(path, os.path.abspath(root))]
    if not holding:
        raise DiskError(volume, f"{path} is outside the directories disks are prepared in "
                                f"({', '.join(roots)}); refused")
    root = max(holding, key=len)
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    if not _under(real, real_root):
        raise DiskError(volume, f"{path} resolves to {real}, outside {root} (a symlink "
                                "pointing out of the volume?); refused")


def _readable(volume: str, path: str) -> None:
    if not os.access(path, os.R_OK):
        raise DiskError(volume, f"{path} is not readable")


# --- file creation --------------------------------------------------------------------------
def _ensure_dir(volume: str, path: str, owner: Owner | None) -> None:
    """Create `path` and missing parents, DIR_MODE and owned by `owner`: QEMU running as
    that user must be able to reach the files in them."""
    missing: list[str] = []
    current = path
    while current and not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
            os.chmod(directory, DIR_MODE)  # mkdir's mode is filtered by the umask
            if owner is not None:
                os.chown(directory, *owner)
        except FileExistsError:
            continue  # created concurrently; fine
        except OSError as exc:
            raise DiskError(volume, f"cannot create directory {directory}: "
                                    f"{exc.strerror}") from None


def _finish(path: str, owner: Owner | None) -> None:
    os.chmod(path, FILE_MODE)
    if owner is not None:
        os.chown(path, *owner)


def _atomic_create(volume: str, path: str, owner: Owner | None,
                   write: Callable[[str], None]) -> None:
    """Write a fresh file with `write(temporary path)`, then rename it to `path`, replacing
    whatever was there."""
    directory, name = os.path.split(path)
    _ensure_dir(volume, directory, owner)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    _remove(tmp)
    try:
        write(tmp)
        _finish(tmp, owner)
        os.replace(tmp, path)
    except OSError as exc:
        raise DiskError(volume, f"cannot create {path}: {exc.strerror}") from None
    finally:
        _remove(tmp)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _create_sparse(prep: FileDisk, size: int, owner: Owner | None) -> None:
    """hostDisk DiskOrCreate: created in place with O_EXCL, so a file that appears
    meanwhile (virt-handler creates these too) is never replaced."""
    _ensure_dir(prep.volume, os.path.dirname(prep.path), owner)
    try:
        fd = os.open(prep.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     FILE_MODE)
    except FileExistsError:
        _existing(prep.volume, prep.path)
        return
    except OSError as exc:
        raise DiskError(prep.volume, f"cannot create {prep.path}: {exc.strerror}") from None
    try:
        os.ftruncate(fd, size)
        os.close(fd)
        _finish(prep.path, owner)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.close(fd)
        _remove(prep.path)
        raise DiskError(prep.volume, f"cannot create {prep.path} ({size} bytes): "
                                     f"{exc.strerror}") from None


# --- qemu-img -------------------------------------------------------------------------------
def _qemu_img(volume: str, *args: str) -> str:
    """qemu-img's stdout; a DiskError with its stderr when it fails."""
    command = ["qemu-img", *args]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, check=False,
                              timeout=QEMU_IMG_TIMEOUT_S)
    except FileNotFoundError:
        raise DiskError(volume, "qemu-img is not installed") from None
    except subprocess.TimeoutExpired:
        raise DiskError(volume, f"{' '.join(command)} did not finish within "
                                f"{QEMU_IMG_TIMEOUT_S}s") from None
    except OSError as exc:
        raise DiskError(volume, f"cannot run qemu-img: {exc.strerror}") from None
    if proc.returncode != 0:
        detail = proc.stderr.strip() or f"exit status {proc.returncode}"
        raise DiskError(volume, f"{' '.join(command)} failed: {detail}")
    return proc.stdout


def _probe_format(volume: str, image: str) -> str:
    """The image's format by qemu-img's probing; refuses images with a backing file."""
    # -U: the image may be open in another QEMU (a container disk shared read-only).
    out = _qemu_img(volume, "info", "--output=json", "-U", image)
    try:
        info = json.loads(out)
    except ValueError:
        raise DiskError(volume, f"qemu-img info {image}: unreadable output") from None
    if not isinstance(info, dict) or not isinstance(info.get("format"), str):
        raise DiskError(volume, f"qemu-img info {image}: no format reported")
    if info.get("backing-filename"):
        raise DiskError(volume, f"container disk {image} has a backing file "
                                f"({info['backing-filename']}); refused")
    fmt: str = info["format"]
    return fmt


# --- the isolated worker --------------------------------------------------------------------
# prepare() runs in a short-lived child interpreter: the ISO library (pycdlib, ~2 MiB once
# imported) and image buffers never join the launcher's resident set, which has a 60 MiB
# budget, and a wedged qemu-img or filesystem call ends with the child instead of holding
# one of the launcher's worker threads.
WORKER_TIMEOUT_S = QEMU_IMG_TIMEOUT_S * 2
_KINDS: dict[str, Callable[..., Prep]] = {
    "ContainerDiskOverlay": ContainerDiskOverlay, "FileDisk": FileDisk,
    "EmptyDisk": EmptyDisk, "CloudInitIso": CloudInitIso, "ConfigIso": ConfigIso,
    "ExistingFile": ExistingFile}


def _encode(prep: Prep) -> dict[str, object]:
    out: dict[str, object] = {"__type__": type(prep).__name__}
    for name, value in vars(prep).items():
        out[name] = ({"b64": base64.b64encode(value).decode()} if isinstance(value, bytes)
                     else value)
    return out


def _decode(raw: dict[str, Any]) -> Prep:
    # JSON has no tuples: the file candidate lists come back as lists.
    fields: dict[str, Any] = {k: base64.b64decode(v["b64"]) if isinstance(v, dict)
                              else tuple(v) if isinstance(v, list) else v
                              for k, v in raw.items() if k != "__type__"}
    return _KINDS[raw["__type__"]](**fields)


def prepare_isolated(preps: Sequence[Prep], *, confine: Sequence[str],
                     owner: Owner | None = None) -> None:
    """prepare() in a child interpreter (`python -m launcher.vm.disks`); same errors."""
    payload = json.dumps({"owner": owner, "preps": [_encode(p) for p in preps],
                          "confine": list(confine)})
    try:
        proc = subprocess.run([sys.executable, "-m", "launcher.vm.disks"], input=payload,
                              capture_output=True, text=True, timeout=WORKER_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired:
        raise DiskError("", f"disk preparation did not finish within {WORKER_TIMEOUT_S} s") \
            from None
    if proc.returncode == 0:
        return
    try:
        err = json.loads(proc.stdout)
        volume, message = str(err["volume"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])
        raise DiskError("", f"disk preparation worker failed (exit {proc.returncode}): "
                            f"{tail}") from None
    raise DiskError(volume, message)


def _worker() -> int:
    request = json.load(sys.stdin)
    raw_owner = request["owner"]
    owner = (int(raw_owner[0]), int(raw_owner[1])) if raw_owner is not None else None
    try:
        prepare([_decode(p) for p in request["preps"]], owner=owner,
                confine=[str(d) for d in request.get("confine", ())])
    except DiskError as exc:
        json.dump({"volume": exc.volume, "message": exc.message}, sys.stdout)
        return 1
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        json.dump({"volume": "", "message": f"{exc.strerror or exc}{where}"}, sys.stdout)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_worker())
