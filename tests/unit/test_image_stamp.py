"""An image is hashed once and then remembered by its files' identity (the stamp)."""

from __future__ import annotations

import os
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
    image, memo = stamped(tmp_path)
    info = (image.path / "pages-1.img").stat()
    (image.path / "pages-1.img").write_bytes(b"x" * 10_000)  # same size
    # Even with its mtime put back: a write sets ctime, which no call sets back.
    os.utime(image.path / "pages-1.img", ns=(info.st_atime_ns, info.st_mtime_ns))
    stats = images.check_files(image)
    assert not verified.is_known(image, stats, memo)
    assert not verified.is_known(image, stats, {})
    with pytest.raises(ImageInvalid, match="sha256"):
        verified.hash_and_remember(image, stats, memo)


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
