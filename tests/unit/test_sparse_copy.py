"""Copying /dev/shm segments in and out of an image: holes, mode, owner, no follow."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from gpumux.checkpoint import sparse_copy

pytestmark = pytest.mark.unit

MIB = 1 << 20


def sparse_file(path: Path) -> bytes:
    """32 MiB with 4 KiB of data at 1 MiB and 4 KiB at 20 MiB, the rest holes."""
    with path.open("wb") as stream:
        stream.truncate(32 * MIB)
        stream.seek(MIB)
        stream.write(b"a" * 4096)
        stream.seek(20 * MIB)
        stream.write(b"b" * 4096)
    os.chmod(path, 0o640)
    return path.read_bytes()


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def test_copy_keeps_content_holes_and_mode(tmp_path: Path) -> None:
    source = tmp_path / "psm_1"
    content = sparse_file(source)
    target = tmp_path / "image" / "shm" / "psm_1"
    sparse_copy.copy(source, target)
    assert target.read_bytes() == content
    assert target.stat().st_size == 32 * MIB
    assert allocated(target) < 2 * MIB  # the holes stayed holes
    assert target.stat().st_mode & 0o777 == 0o640
    assert target.parent.stat().st_mode & 0o777 == 0o700


def test_copy_replaces_a_planted_symlink_instead_of_writing_through(tmp_path: Path) -> None:
    source = tmp_path / "psm_1"
    content = sparse_file(source)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    target = tmp_path / "psm_copy"
    target.symlink_to(victim)
    sparse_copy.copy(source, target)
    assert victim.read_bytes() == b"keep me"
    assert not target.is_symlink()
    assert target.read_bytes() == content


def test_copy_replaces_an_existing_file(tmp_path: Path) -> None:
    source = tmp_path / "psm_1"
    content = sparse_file(source)
    target = tmp_path / "psm_copy"
    target.write_bytes(b"x" * MIB)
    sparse_copy.copy(source, target)
    assert target.read_bytes() == content


def test_a_source_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError, match="not a regular file"):
        sparse_copy.copy(tmp_path / "dir", tmp_path / "out")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "dir")
    with pytest.raises(OSError, match="symbolic links"):  # O_NOFOLLOW: ELOOP
        sparse_copy.copy(link, tmp_path / "out")


def test_an_empty_and_an_all_hole_file(tmp_path: Path) -> None:
    for size in (0, 8 * MIB):
        source = tmp_path / f"src{size}"
        with source.open("wb") as stream:
            stream.truncate(size)
        target = tmp_path / f"dst{size}"
        sparse_copy.copy(source, target)
        assert target.stat().st_size == size
        assert allocated(target) <= 64 << 10


def test_by_hand_copy_skips_zero_blocks(tmp_path: Path) -> None:
    # The path taken where copy_file_range refuses (e.g. ext4 -> tmpfs): same bytes,
    # zero blocks left as holes.
    source = tmp_path / "psm_1"
    content = sparse_file(source)
    target = tmp_path / "psm_copy"
    src = os.open(source, os.O_RDONLY)
    dst = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        sparse_copy._copy_by_hand(src, dst, 0, len(content))
        os.ftruncate(dst, len(content))
    finally:
        os.close(src)
        os.close(dst)
    assert target.read_bytes() == content
    assert allocated(target) < 2 * MIB


def test_no_kernel_copy_errors_fall_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    source = tmp_path / "psm_1"
    content = sparse_file(source)
    sparse_copy.copy(source, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == content
