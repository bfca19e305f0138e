"""CRIU images on local disk: layout, manifest, validity, checksums, quarantine, pruning.

Owns: `<images_dir>/<model>/<version>/` and its `manifest.json` (files with sizes and
sha256, model, model_path, launch digest, eviction, tp, port, pids, the tree's listening
TCP sockets, criu/kernel/driver versions, created), which is written last: a version
directory only ever appears, by rename from a `.staging-*` directory, once its manifest
is complete, so an image killed mid-write is never valid and is swept as staging litter.
Directories are 0700 and files 0600 (an image holds the process's memory, prompts
included). Quarantine renames `<version>` to `<version>.quarantined-<reason>`; nothing
here deletes an image marked `prebaked`.
A manifest may come from an object store, so it is untrusted until checked: its file
paths must stay inside the image (relative, normalised, no `..`), a version name read
from a store must be one plain segment (`safe_name`), and `verify` refuses a listed
file that is, or lies under, a symlink, or is not a regular file.
Does not: run CRIU or talk to S3. Synchronous file work: callers run it in a thread.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import shutil
import stat
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from gpumux.core.port_ranges import bound_ports

MANIFEST = "manifest.json"
FORMAT = 1
DIR_MODE = 0o700
FILE_MODE = 0o600
STAGING_PREFIX = ".staging-"
QUARANTINE_MARK = ".quarantined-"
#: Files CRIU (re)writes in the image directory on every run; not part of the image.
VOLATILE = frozenset({"stats-dump", "stats-restore", MANIFEST})
SHM_PATH = re.compile(r"/dev/shm/(?!\.\.?$)[A-Za-z0-9_.-]+")
#: A version (or model) name that is safe as one path segment: no "..", no "/", not hidden.
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_CHUNK = 8 << 20
_HASH_THREADS = 2


class ImageInvalid(Exception):
    """An image is incomplete, unreadable or does not match its manifest."""


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("path")
    @classmethod
    def _inside(cls, value: str) -> str:
        # A downloaded manifest is untrusted: its paths must stay inside the image.
        parts = PurePosixPath(value).parts
        if (
            not parts
            or value.startswith("/")
            or ".." in parts
            or value != str(PurePosixPath(value))
        ):
            raise ValueError(f"file path {value!r} leaves the image directory")
        if value in VOLATILE or parts[-1].startswith("."):
            # Never an image file (`image_files`); the manifest and its temp file are ours.
            raise ValueError(f"file path {value!r} is not an image file")
        return value


class Listener(BaseModel):
    """A TCP socket the tree listened on at the dump; the restore binds it again."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Bound before a restore to see whether it is free: an address, never a name.
    host: Annotated[str, AfterValidator(lambda value: str(ipaddress.ip_address(value)))]
    port: int = Field(ge=1, le=65535)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    format: int = FORMAT
    model: str
    #: The config's model_path and a digest of the rest of the launch (`image_identity`);
    #: None in images made before they were recorded.
    model_path: str | None = None
    launch: str | None = None
    version: str
    created: str
    eviction: str  # e.g. "discard+checkpoint": the wake plan follows its weights part
    tp: int
    port: int
    pids: list[int]
    shm_files: list[str]  # original /dev/shm paths, carried under shm/<name>
    #: The tree's listening TCP sockets (API, vLLM's ZMQ/torch); empty in older images.
    listen_ports: list[Listener] = Field(default_factory=list)
    criu_version: str
    kernel: str
    driver_version: str | None
    prebaked: bool = False
    files: list[FileEntry]

    @field_validator("shm_files")
    @classmethod
    def _in_dev_shm(cls, values: list[str]) -> list[str]:
        # A restore writes these paths as root: only plain names directly in /dev/shm.
        for value in values:
            if not SHM_PATH.fullmatch(value):
                raise ValueError(f"shm file {value!r} is not a file directly in /dev/shm")
        return values

    @property
    def weights(self) -> str:
        return self.eviction.partition("+")[0]

    @property
    def bound_ports(self) -> frozenset[int]:
        return bound_ports(self.port, (listener.port for listener in self.listen_ports))

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class Image:
    path: Path
    manifest: Manifest
    #: Each file's lstat taken just before this process hashed it (`publish`,
    #: `install`); None for an image read from disk. `verified.remember` stamps an image
    #: only if its files still have these, so a change between the hash and the stamp
    #: is never stamped as verified.
    hashed_as: Mapping[str, os.stat_result] | None = field(default=None, compare=False, repr=False)

    @property
    def model(self) -> str:
        return self.manifest.model

    @property
    def version(self) -> str:
        return self.manifest.version


def safe_name(name: str) -> bool:
    """Whether `name` (e.g. a version read from an object store) is one plain path segment."""
    return SAFE_NAME.fullmatch(name) is not None


def staging_dir(target: Path) -> Path:
    """A fresh private directory beside `target` (same filesystem, so rename is atomic)."""
    make_private_dirs(target.parent)
    staging = target.parent / f"{STAGING_PREFIX}{target.name}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(mode=DIR_MODE)
    return staging


def make_private_dirs(path: Path) -> None:
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)


def publish(staging: Path, target: Path, fields: dict[str, object]) -> Image:
    """Lock down, hash and describe `staging`, write its manifest last, rename to `target`."""
    lock_down(staging)
    names = image_files(staging)
    before = {name: _regular_file_inside(staging, name) for name in names}
    entries = _hash_all(staging, names)
    manifest = Manifest.model_validate({**fields, "version": target.name, "files": entries})
    return replace(_finish(staging, target, manifest), hashed_as=before)


def install(staging: Path, target: Path, manifest: Manifest) -> Image:
    """Make a downloaded `staging` the image `target`, if it matches `manifest` (sha256)."""
    lock_down(staging)
    downloaded = Image(staging, manifest)
    before = check_files(downloaded)
    verify_checksums(downloaded)
    if target.exists() and read(target) is None:
        shutil.rmtree(target)  # an incomplete leftover with no manifest is no image
    return replace(_finish(staging, target, manifest), hashed_as=before)


def _finish(staging: Path, target: Path, manifest: Manifest) -> Image:
    write_manifest(staging, manifest)
    os.rename(staging, target)
    _fsync_dir(target.parent)
    return Image(target, manifest)


def discard_staging(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def lock_down(directory: Path) -> None:
    """Directories 0700, files 0600: an image holds a process's memory.

    Only what has another mode is changed: a chmod sets the file's ctime even when the
    mode stays, and an unchanged ctime is how `verified` knows a file was not touched
    since it was hashed."""
    _set_mode(directory, DIR_MODE)
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            _set_mode(Path(root, name), DIR_MODE)
        for name in files:
            _set_mode(Path(root, name), FILE_MODE)


def _set_mode(path: Path, mode: int) -> None:
    if stat.S_IMODE(path.lstat().st_mode) != mode:
        os.chmod(path, mode)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    tmp = directory / f".{MANIFEST}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w") as stream:
        stream.write(manifest.model_dump_json(indent=1) + "\n")
        stream.flush()
        os.fsync(stream.fileno())
    os.rename(tmp, directory / MANIFEST)
    _fsync_dir(directory)


def image_files(directory: Path) -> list[str]:
    """Relative paths of the image's files, sorted (CRIU's stats files excluded)."""
    found = []
    for root, _dirs, files in os.walk(directory):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), directory)
            if rel not in VOLATILE and not name.startswith("."):
                found.append(rel)
    return sorted(found)


def read(path: Path) -> Image | None:
    """The image at `path`, or None when it has no readable, well-formed manifest."""
    try:
        manifest = Manifest.model_validate_json((path / MANIFEST).read_bytes())
    except (OSError, ValidationError, ValueError):
        return None
    return Image(path, manifest)


def verify(image: Image, *, checksums: bool) -> None:
    """Raise ImageInvalid unless every listed file is there with its size (and sha256)."""
    check_files(image)
    if checksums:
        verify_checksums(image)


def check_files(image: Image) -> dict[str, os.stat_result]:
    """Raise ImageInvalid unless every listed file is a regular file inside the image
    with its manifest's size; return each file's lstat (no byte is read)."""
    found = {}
    for entry in image.manifest.files:
        info = _regular_file_inside(image.path, entry.path)
        if info.st_size != entry.size:
            raise ImageInvalid(f"{entry.path}: {info.st_size} bytes, manifest says {entry.size}")
        found[entry.path] = info
    return found


def verify_checksums(image: Image) -> None:
    """Raise ImageInvalid unless every listed file hashes to its manifest's sha256."""
    actual = {
        e.path: e.sha256 for e in _hash_all(image.path, [f.path for f in image.manifest.files])
    }
    for entry in image.manifest.files:
        if actual[entry.path] != entry.sha256:
            raise ImageInvalid(f"{entry.path}: sha256 mismatch")


def _regular_file_inside(root: Path, relative: str) -> os.stat_result:
    """lstat every component of `relative` under `root`: a symlink anywhere could point a
    root-run restore (or the hashing) outside the image, so it is refused."""
    path = root
    info: os.stat_result | None = None
    for part in PurePosixPath(relative).parts:
        path = path / part
        try:
            info = path.lstat()
        except OSError as exc:
            raise ImageInvalid(f"{relative}: {exc.strerror}") from None
        if stat.S_ISLNK(info.st_mode):
            raise ImageInvalid(f"{relative}: {path.name} is a symlink")
    if info is None or not stat.S_ISREG(info.st_mode):
        raise ImageInvalid(f"{relative}: not a regular file")
    return info


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def versions(model_dir: Path) -> list[Path]:
    """Version directories of one model (valid or not), oldest first by name."""
    try:
        children = sorted(model_dir.iterdir())
    except OSError:
        return []
    return [
        c
        for c in children
        if c.is_dir() and not c.name.startswith(".") and QUARANTINE_MARK not in c.name
    ]


def latest(model_dir: Path) -> Image | None:
    """The newest version of one model that has a manifest."""
    for candidate in reversed(versions(model_dir)):
        image = read(candidate)
        if image is not None:
            return image
    return None


def resolve(path: Path) -> Image | None:
    """`checkpoint_path` may name an image directory or a model's directory of images."""
    return read(path) or latest(path)


def quarantine(image: Image, reason: str) -> Path:
    """Move `image` aside so it is never tried again; the files stay for diagnosis."""
    slug = re.sub(r"[^a-z0-9]+", "-", reason.lower()).strip("-")[:40] or "failed"
    target = image.path.with_name(f"{image.path.name}{QUARANTINE_MARK}{slug}")
    suffix = 1
    while target.exists():
        suffix += 1
        target = image.path.with_name(f"{image.path.name}{QUARANTINE_MARK}{slug}-{suffix}")
    os.rename(image.path, target)
    return target


def remove(image: Image) -> bool:
    """Delete a dynamic image; a pre-baked one is never deleted (returns False)."""
    if image.manifest.prebaked:
        return False
    shutil.rmtree(image.path, ignore_errors=True)
    return True


def prune(model_dir: Path, keep: Path, protected: set[Path]) -> list[Path]:
    """Delete every other non-pre-baked, unprotected version of a model; return what went."""
    gone = []
    for candidate in versions(model_dir):
        if candidate == keep or candidate in protected:
            continue
        image = read(candidate)
        if image is not None and image.manifest.prebaked:
            continue
        shutil.rmtree(candidate, ignore_errors=True)
        gone.append(candidate)
    return gone


def sweep_staging(model_dir: Path) -> list[Path]:
    """Remove `.staging-*` leftovers of dumps or downloads that never completed."""
    gone = []
    try:
        children = list(model_dir.iterdir())
    except OSError:
        return []
    for child in children:
        if child.name.startswith(STAGING_PREFIX):
            shutil.rmtree(child, ignore_errors=True)
            gone.append(child)
    return gone


def _hash_all(directory: Path, names: list[str]) -> list[FileEntry]:
    def one(name: str) -> FileEntry:
        path = directory / name
        return FileEntry(path=name, size=path.stat().st_size, sha256=sha256_file(path))

    with ThreadPoolExecutor(_HASH_THREADS) as pool:
        return list(pool.map(one, names))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
