"""Hash an image once, then remember it: the stamp of a verified image.

Owns: `.verified.json` in an image directory, written once every file of the image
matched its manifest's sha256 (when gpumux hashed it while publishing a dump, after a
download, or on the first restore of an image that had no stamp). It records the
manifest it was checked against (a digest) and, per file, (device, inode, size, mtime,
ctime). A restore then lstat()s the files (which `images.check_files` does anyway) and
hashes again only when any of that changed, or the stamp is missing or unreadable. A
memo in memory does the same where the stamp cannot be written (a read-only image).
Also: `warm`, which asks the kernel to read an image into the page cache ahead of need.
Does not: decide what a mismatch means (the catalog quarantines the image), or hash
anything it was not asked to verify.

Why this is as safe as hashing on every restore against what the hash is there for (an
image changed, truncated or replaced after it was made): every write, truncate, chmod,
chown, link or rename of a file sets its ctime to now, and no system call sets it back
(utime sets only atime and mtime); a replaced file has another inode, a copied image
other inodes. What it does not see is corruption below the filesystem (a disk returning
other bytes without the kernel knowing) after the first check; hashing 1-2 GB on every
restore, the cost this removes, was most of the restore's time (bench/real_vllm.py).
A stamp written after someone else's hash (publish, install) uses the lstat taken
before that hash (`Image.hashed_as`), and only if nothing changed since. Threat model
in full: docs/reliability.md, "Local image stamps".
The stamp lives in the image's 0700 directory: whoever can rewrite it can rewrite the
manifest and the files as well. It starts with a dot, so it is never an image file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gpumux.checkpoint import images
from gpumux.checkpoint.images import FILE_MODE, Image

STAMP = ".verified.json"
FORMAT = 1
#: One readahead request of `warm` (Linux's default readahead window; a cached page
#: costs a lookup, so a 1 GB image takes ~50 ms of one thread when already cached).
WARM_CHUNK = 128 << 10

#: What a stamp holds: {"format", "manifest" digest, "files": {path: [dev, ino, size,
#: mtime_ns, ctime_ns]}}; two stamps are equal iff nothing they cover changed.
Stamp = dict[str, Any]
#: The catalog's memo: image directory -> the stamp it last verified.
Memo = dict[Path, Stamp]


def stamp_of(image: Image, stats: Mapping[str, os.stat_result]) -> Stamp:
    """The stamp of `image` whose files have `stats` (from `images.check_files`)."""
    manifest = hashlib.sha256(image.manifest.model_dump_json().encode()).hexdigest()
    files = {
        name: [s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns]
        for name, s in sorted(stats.items())
    }
    return {"format": FORMAT, "manifest": manifest, "files": files}


def is_known(image: Image, stats: dict[str, os.stat_result], memo: Memo) -> bool:
    """Whether `image`'s files are exactly as they were when last found to match their
    sha256 (by this run's memo, else the stamp on disk)."""
    stamp = stamp_of(image, stats)
    if memo.get(image.path) == stamp:
        return True
    if read_stamp(image.path) == stamp:
        memo[image.path] = stamp
        return True
    return False


def check_or_hash(image: Image, memo: Memo) -> bool:
    """`images.check_files`, then hash only if the files are not known (ImageInvalid on
    any problem); True when it hashed."""
    stats = images.check_files(image)
    if is_known(image, stats, memo):
        return False
    hash_and_remember(image, stats, memo)
    return True


def hash_and_remember(image: Image, stats: dict[str, os.stat_result], memo: Memo) -> None:
    """Hash every file (ImageInvalid on a mismatch), then stamp the image.

    The files are lstat()ed again after hashing: a file changed meanwhile is refused
    rather than stamped with a state that was never hashed."""
    images.verify_checksums(image)
    after = images.check_files(image)
    stamp = stamp_of(image, stats)
    if stamp_of(image, after) != stamp:
        raise images.ImageInvalid("an image file changed while it was being verified")
    memo[image.path] = stamp
    write_stamp(image.path, stamp)


def remember(image: Image, memo: Memo) -> bool:
    """Stamp an image whose files this process just hashed (`images.publish`,
    `images.install`) if they are still as they were when hashed (`Image.hashed_as`);
    False, stamping nothing, when one changed since (or the image was not hashed here):
    the next restore hashes it again."""
    if image.hashed_as is None:
        return False
    stamp = stamp_of(image, image.hashed_as)
    if stamp_of(image, images.check_files(image)) != stamp:
        return False
    memo[image.path] = stamp
    write_stamp(image.path, stamp)
    return True


def read_stamp(directory: Path) -> Stamp | None:
    try:
        value = json.loads((directory / STAMP).read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_stamp(directory: Path, stamp: Stamp) -> bool:
    """Write the stamp atomically; False where the image cannot be written (read-only
    media: the memo alone then spares the hash, for this run)."""
    tmp = directory / f"{STAMP}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
        with os.fdopen(fd, "w") as stream:
            json.dump(stamp, stream)
        os.rename(tmp, directory / STAMP)
    except OSError:
        return False
    return True


def warm(image: Image) -> None:
    """Ask the kernel to read the image's files into the page cache (readahead, no
    waiting for the reads): a restore reads every page, and from the page cache that is
    a copy in memory, from disk a read of the whole image. Files that went are skipped.

    In `WARM_CHUNK` pieces: Linux clamps one WILLNEED to the device's readahead window
    (128 KiB by default), so advice for a whole file reads only its first pages."""
    for entry in image.manifest.files:
        try:
            fd = os.open(image.path / entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            for offset in range(0, entry.size, WARM_CHUNK):
                os.posix_fadvise(fd, offset, WARM_CHUNK, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # advice only
        finally:
            os.close(fd)
