"""ISO 9660 images for the launcher's disk preparation (launcher.vm.disks): cloud-init data
sources and the configMap / secret / downwardAPI / serviceAccount / sysprep disks
KubeVirt builds with xorrisofs (Joliet + Rock Ridge). Built in-process with pycdlib
(no xorriso in the image). Errors are launcher.vm.disks' DiskError, naming the volume."""

from __future__ import annotations

import contextlib
import io
import os

from launcher.converter.plan import CloudInitIso
from launcher.vm.disk_error import DiskError

NO_CLOUD_LABEL = "cidata"
CONFIG_DRIVE_LABEL = "config-2"
# A configMap or secret is at most 1 MiB in Kubernetes; a mounted directory far beyond
# that is not one, and the ISO is built in memory.
MAX_CONFIG_BYTES = 64 * 2**20


def tree_files(volume: str, source_dir: str) -> dict[str, bytes]:
    """The files under a mounted configMap / secret / downwardAPI / service account
    directory, by relative path, symlinks followed (KubeVirt's xorrisofs -follow-links).
    The kubelet's own bookkeeping (`..data`, `..2024_...`: the atomic-writer directories
    the visible names link into) is left out: the guest sees each key once."""
    if not os.path.isdir(source_dir):
        raise DiskError(volume, f"{source_dir} does not exist (the volume is not mounted)")
    files: dict[str, bytes] = {}
    for directory, dirs, names in os.walk(source_dir, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".."))
        for name in sorted(names):
            if name.startswith(".."):
                continue
            path = os.path.join(directory, name)
            try:
                with open(path, "rb") as f:
                    files[os.path.relpath(path, source_dir)] = f.read(MAX_CONFIG_BYTES + 1)
            except OSError as exc:
                raise DiskError(volume, f"cannot read {path}: {exc.strerror}") from None
            if sum(len(data) for data in files.values()) > MAX_CONFIG_BYTES:
                raise DiskError(volume, f"{source_dir} holds more than "
                                        f"{MAX_CONFIG_BYTES // 2**20} MiB")
    return files


def first_file(volume: str, candidates: tuple[str, ...]) -> bytes:
    """KubeVirt's readFirstFoundFileFromDir: the first candidate that can be read."""
    for path in candidates:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise DiskError(volume, f"cannot read {path}: {exc.strerror}") from None
    raise DiskError(volume, f"none of {', '.join(candidates)} exists (is the secret "
                            "mounted?)")


def cloud_init_files(prep: CloudInitIso) -> tuple[str, dict[str, bytes]]:
    """(volume label, file path -> content) of the data source's layout."""
    if prep.kind == "noCloud":
        files = {"user-data": prep.user_data, "meta-data": prep.meta_data}
        if prep.network_data is not None:
            files["network-config"] = prep.network_data
        return NO_CLOUD_LABEL, files
    base = "openstack/latest"
    files = {f"{base}/user_data": prep.user_data, f"{base}/meta_data.json": prep.meta_data}
    if prep.network_data is not None:
        files[f"{base}/network_data.json"] = prep.network_data
    return CONFIG_DRIVE_LABEL, files


def _iso9660_name(name: str, *, is_file: bool, taken: set[str]) -> str:
    """An ISO 9660 level 3 name for one path component ("user-data" -> "USER_DATA.;1"),
    unique among `taken`; guests read the Rock Ridge / Joliet names, these only have to
    be valid and distinct."""
    stem, _, ext = name.rpartition(".") if is_file and "." in name else (name, "", "")
    clean = ["".join(c if c.isascii() and (c.isalnum() or c == "_") else "_"
                     for c in part.upper()) for part in (stem, ext)]
    base, extension = clean[0][:24] or "_", clean[1][:6]
    candidate, n = base, 0
    while True:
        full = f"{candidate}.{extension};1" if is_file else candidate
        if full not in taken:
            taken.add(full)
            return full
        n += 1
        candidate = f"{base[:20]}_{n}"


def write_iso(volume: str, iso_path: str, label: str, files: dict[str, bytes],
               out_path: str) -> None:
    """An ISO 9660 image with Joliet and Rock Ridge names (KubeVirt: xorrisofs -joliet
    -rock) holding `files` (relative path -> content); directories are made as needed."""
    # Imported here: pycdlib is only needed when a VMI has an ISO volume, and the
    # launcher's memory is budgeted.
    import pycdlib  # noqa: PLC0415
    from pycdlib.pycdlibexception import PyCdlibException  # noqa: PLC0415

    iso = pycdlib.PyCdlib()
    try:
        iso.new(interchange_level=3, vol_ident=label, joliet=3, rock_ridge="1.09")
        iso_dirs: dict[str, str] = {"": ""}  # relative directory -> its ISO 9660 path
        taken: dict[str, set[str]] = {"": set()}  # ISO 9660 names used per directory
        for path in sorted(files):
            parts = path.split("/")
            for depth in range(1, len(parts)):
                directory, parent = "/".join(parts[:depth]), "/".join(parts[:depth - 1])
                if directory not in iso_dirs:
                    name = _iso9660_name(parts[depth - 1], is_file=False,
                                         taken=taken[parent])
                    iso_dirs[directory] = f"{iso_dirs[parent]}/{name}"
                    taken[directory] = set()
                    iso.add_directory(iso_dirs[directory], rr_name=parts[depth - 1],
                                      joliet_path=f"/{directory}")
            parent = "/".join(parts[:-1])
            name = _iso9660_name(parts[-1], is_file=True, taken=taken[parent])
            content = files[path]
            iso.add_fp(io.BytesIO(content), len(content), f"{iso_dirs[parent]}/{name}",
                       rr_name=parts[-1], joliet_path=f"/{path}")
        with open(out_path, "wb") as out:
            iso.write_fp(out)
    except PyCdlibException as exc:
        raise DiskError(volume, f"cannot build the ISO {iso_path}: {exc}") from None
    finally:
        with contextlib.suppress(PyCdlibException):  # not open when new() failed
            iso.close()
