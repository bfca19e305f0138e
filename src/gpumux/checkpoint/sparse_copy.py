"""Copy one file, keeping its holes, its mode and its owner (what `cp --sparse=always
--preserve=mode,ownership` did, without a process per file).

Owns: `copy(source, target)`: the data extents of `source` (found with SEEK_DATA /
SEEK_HOLE, so a 240 MB /dev/shm segment holding 100 KB of data costs 100 KB) copied
in the kernel (`copy_file_range`, or `pread`/`pwrite` across filesystems that refuse
it), the size set with `ftruncate` (trailing holes), then owner and mode. A filesystem
that cannot report holes gets a copy that skips all-zero blocks instead.
Does not: run in the event loop (blocking; `host_io` runs it in a thread) or decide which
files to copy.

Why the target is never written through: a restore runs as root and writes into
/dev/shm, which anyone may write; an existing entry (a killed tree's segment, or a
symlink someone planted) is unlinked and the file created afresh with O_EXCL|O_NOFOLLOW.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

#: Largest piece copied per call.
CHUNK = 8 << 20
#: Block compared against zeros where holes cannot be asked for.
ZERO_BLOCK = 64 << 10
_ZEROS = bytes(ZERO_BLOCK)
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP}


def copy(source: Path, target: Path) -> None:
    """Copy `source` to `target` (replacing it) sparsely; raises OSError."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(src)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, f"{source} is not a regular file")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        dst = os.open(target, flags, 0o600)
        try:
            _copy_data(src, dst, info.st_size)
            os.ftruncate(dst, info.st_size)
            os.fchown(dst, info.st_uid, info.st_gid)  # before the mode: chown clears set-id
            os.fchmod(dst, stat.S_IMODE(info.st_mode))
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_data(src: int, dst: int, size: int) -> None:
    for start, end in _extents(src, size):
        _copy_range(src, dst, start, end)


def _extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The (start, end) byte ranges of `fd` that hold data (all of it, if the filesystem
    cannot say; `_copy_range` then skips zero blocks)."""
    found: list[tuple[int, int]] = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole from here to the end
                break
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP) and offset == 0:
                return [(0, size)]
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        found.append((start, end))
        offset = end
    return found


def _copy_range(src: int, dst: int, start: int, end: int) -> None:
    offset = start
    while offset < end:
        count = min(CHUNK, end - offset)
        try:
            done = os.copy_file_range(src, dst, count, offset, offset)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
            _copy_by_hand(src, dst, offset, end)
            return
        if done == 0:  # the source shrank under us: what is left reads as a hole
            return
        offset += done


def _copy_by_hand(src: int, dst: int, start: int, end: int) -> None:
    """`pread`/`pwrite`, leaving all-zero blocks as holes (`ftruncate` sets the size)."""
    offset = start
    while offset < end:
        block = os.pread(src, min(ZERO_BLOCK, end - offset), offset)
        if not block:
            return
        if block != _ZEROS[: len(block)]:
            view = memoryview(block)
            while view:
                written = os.pwrite(dst, view, offset)
                view = view[written:]
                offset += written
        else:
            offset += len(block)
