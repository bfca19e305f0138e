"""An image is hashed once and then remembered by its files' identity (the stamp)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from gpumux.checkpoint import images, verified
from gpumux.checkpoint.images import Image, ImageInvalid
from tests.support.images import make_image

pytestmark = pytest.mark.unit


def stamped(tmp_path: Path) -> tuple[Image, verified.Memo]:
    image = make_image(tmp_path, "v1")
    memo: verified.Memo = {}
    verified.remember(image, memo)
    return image, memo


def known(image: Image, memo: verified.Memo) -> bool:
    return verified.is_known(image, images.check_files(image), memo)


def test_a_stamped_image_is_known_without_reading_it(tmp_path: Path) -> None:
    image, memo = stamped(tmp_path)
    assert (image.path / verified.STAMP).is_file()
    assert known(image, memo)
    assert known(image, {})  # a later run: from the stamp on disk


def test_the_stamp_is_no_image_file(tmp_path: Path) -> None:
    image, _ = stamped(tmp_path)
    assert verified.STAMP not in images.image_files(image.path)
    images.verify(image, checksums=True)


def test_a_file_rewritten_in_place_is_hashed_again_and_caught(tmp_path: Path) -> None:
    """The hard case: same inode, same size, mtime put back. Only ctime tells, and no
    system call sets a ctime back (utime sets atime and mtime, and itself sets ctime)."""
    image, memo = stamped(tmp_path)
    path = image.path / "pages-1.img"
    before = path.stat()
    path.write_bytes(b"x" * 10_000)  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert after.st_ctime_ns != before.st_ctime_ns
    stats = images.check_files(image)
    assert not verified.is_known(image, stats, memo)
    assert not verified.is_known(image, stats, {})
    with pytest.raises(ImageInvalid, match="sha256"):
        verified.hash_and_remember(image, stats, memo)
    assert not verified.is_known(image, images.check_files(image), memo)  # never stamped


def test_a_truncated_file_is_refused_before_any_stamp_counts(tmp_path: Path) -> None:
    image, memo = stamped(tmp_path)
    path = image.path / "pages-1.img"
    before = path.stat()
    os.truncate(path, 5_000)
    with pytest.raises(ImageInvalid, match="5000 bytes"):
        images.check_files(image)
    os.truncate(path, 10_000)  # back to its size: the second half is now zeros
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    stats = images.check_files(image)
    assert not verified.is_known(image, stats, memo)
    with pytest.raises(ImageInvalid, match="sha256"):
        verified.hash_and_remember(image, stats, memo)


def test_a_half_written_image_is_refused_even_with_its_stamp(tmp_path: Path) -> None:
    image, _ = stamped(tmp_path)
    (image.path / "core-10.img").unlink()  # e.g. a copy that stopped part way
    with pytest.raises(ImageInvalid, match=r"core-10\.img"):
        images.check_files(image)
    (image.path / images.MANIFEST).unlink()  # a directory without its manifest
    assert images.read(image.path) is None  # is no image at all


def test_a_copied_image_with_its_stamp_is_hashed_again(tmp_path: Path) -> None:
    """A stamp covers the files it was made for (device, inode), never a copy of them,
    even one that keeps sizes and mtimes (`cp -a`)."""
    image, _ = stamped(tmp_path)
    copy = tmp_path / "copy" / "a" / "v1"
    shutil.copytree(image.path, copy, copy_function=shutil.copy2)
    assert (copy / verified.STAMP).read_bytes() == (image.path / verified.STAMP).read_bytes()
    moved = Image(copy, image.manifest)
    assert not known(moved, {})
    verified.hash_and_remember(moved, images.check_files(moved), {})
    assert known(moved, {})  # stamped anew for its own files


def test_a_stamp_from_another_image_does_not_count(tmp_path: Path) -> None:
    image, _ = stamped(tmp_path)
    other, _ = stamped(tmp_path / "other")
    shutil.copyfile(other.path / verified.STAMP, image.path / verified.STAMP)
    assert not known(image, {})


def test_a_change_between_the_hash_and_the_stamp_is_never_stamped(tmp_path: Path) -> None:
    """`publish` hashed the files; one changes before the catalog stamps the image."""
    image = make_image(tmp_path, "v1")
    assert image.hashed_as is not None
    (image.path / "core-10.img").write_bytes(b"x" * 100)  # same size, after the hash
    memo: verified.Memo = {}
    assert not verified.remember(image, memo)
    assert not (image.path / verified.STAMP).exists()
    assert memo == {}
    with pytest.raises(ImageInvalid, match="sha256"):  # the next restore hashes, refuses
        verified.hash_and_remember(image, images.check_files(image), memo)


def test_only_an_image_hashed_here_is_stamped_by_remember(tmp_path: Path) -> None:
    image = make_image(tmp_path, "v1")
    from_disk = images.read(image.path)
    assert from_disk is not None
    assert from_disk.hashed_as is None
    assert not verified.remember(from_disk, {})
    assert not (image.path / verified.STAMP).exists()


def test_a_replaced_file_is_not_known(tmp_path: Path) -> None:
    image, memo = stamped(tmp_path)
    path = image.path / "core-10.img"
    copy = path.with_name("core-10.new")
    copy.write_bytes(path.read_bytes())
    os.replace(copy, path)  # same bytes, another inode
    assert not known(image, memo)
    verified.hash_and_remember(image, images.check_files(image), memo)
    assert known(image, {})  # stamped again, now for the new inode


def test_a_stamp_for_another_manifest_does_not_count(tmp_path: Path) -> None:
    image, _ = stamped(tmp_path)
    other = Image(image.path, image.manifest.model_copy(update={"port": 9000}))
    assert not known(other, {})


def test_an_unstamped_image_is_hashed_then_stamped(tmp_path: Path) -> None:
    image = make_image(tmp_path, "v1")
    (image.path / verified.STAMP).unlink(missing_ok=True)
    memo: verified.Memo = {}
    assert not known(image, memo)
    verified.hash_and_remember(image, images.check_files(image), memo)
    assert known(image, {})


def test_a_garbled_stamp_means_hash_again(tmp_path: Path) -> None:
    image, _ = stamped(tmp_path)
    (image.path / verified.STAMP).write_text("[not a stamp")
    assert not known(image, {})


def test_an_unwritable_image_is_remembered_in_memory(tmp_path: Path) -> None:
    image = make_image(tmp_path, "v1")
    assert not verified.write_stamp(tmp_path / "gone", {"format": 1})
    memo: verified.Memo = {}
    stats = images.check_files(image)
    memo[image.path] = verified.stamp_of(image, stats)
    assert verified.is_known(image, stats, memo)
    assert not (image.path / verified.STAMP).exists()


def test_lock_down_leaves_files_with_the_right_mode_untouched(tmp_path: Path) -> None:
    image, memo = stamped(tmp_path)
    (image.path / "stats-restore").write_bytes(b"s")  # CRIU's, with the default umask
    os.chmod(image.path / "stats-restore", 0o644)
    images.lock_down(image.path)
    assert (image.path / "stats-restore").stat().st_mode & 0o777 == 0o600
    assert known(image, memo)  # no chmod of the image files: their ctime stayed


def test_warm_tolerates_missing_files(tmp_path: Path) -> None:
    image = make_image(tmp_path, "v1")
    (image.path / "core-10.img").unlink()
    verified.warm(image)  # advice only: nothing to assert but that it does not raise
