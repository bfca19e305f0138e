"""The verifier: a restore's image check, the same work ahead of need, and stamping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpumux.checkpoint import verified
from gpumux.checkpoint.images import ImageInvalid
from gpumux.checkpoint.timeline import RestoreTimeline
from gpumux.checkpoint.verifier import Verifier
from tests.support.images import make_image

pytestmark = pytest.mark.unit


async def test_an_unstamped_image_is_hashed_once_then_known(tmp_path: Path) -> None:
    image = make_image(tmp_path, "v1")
    (image.path / verified.STAMP).unlink(missing_ok=True)
    verifier = Verifier()
    first, second = RestoreTimeline(), RestoreTimeline()
    await verifier.check(image, first)
    await verifier.check(image, second)
    assert "sha256" in first.phases
    assert "sha256" not in second.phases
    assert (image.path / verified.STAMP).is_file()
    await verifier.close()


async def test_a_check_after_ahead_of_need_hashes_nothing(tmp_path: Path) -> None:
    image = make_image(tmp_path, "v1")
    (image.path / verified.STAMP).unlink(missing_ok=True)
    verifier = Verifier()
    verifier.ahead(image)
    verifier.ahead(image)  # idempotent while one runs
    timeline = RestoreTimeline()
    await verifier.check(image, timeline)
    assert "verify_ahead" in timeline.phases  # waited for the work begun earlier
    assert "sha256" not in timeline.phases
    await verifier.close()


async def test_a_bad_image_found_ahead_is_still_refused_by_the_check(tmp_path: Path) -> None:
    image = make_image(tmp_path, "v1")
    (image.path / verified.STAMP).unlink(missing_ok=True)
    (image.path / "pages-1.img").write_bytes(b"x" * 10_000)  # same size, other bytes
    verifier = Verifier()
    verifier.ahead(image)
    with pytest.raises(ImageInvalid, match="sha256"):
        await verifier.check(image, RestoreTimeline())
    await verifier.close()


async def test_remember_stamps_what_the_caller_hashed(tmp_path: Path) -> None:
    image = make_image(tmp_path, "v1")
    (image.path / verified.STAMP).unlink(missing_ok=True)
    verifier = Verifier()
    await verifier.remember(image)
    timeline = RestoreTimeline()
    await Verifier().check(image, timeline)  # a later run: from the stamp on disk
    assert "sha256" not in timeline.phases
    await verifier.close()


async def test_a_stamped_image_edited_in_place_is_refused(tmp_path: Path) -> None:
    image = make_image(tmp_path, "v1")
    verifier = Verifier()
    await verifier.remember(image)
    await verifier.check(image, RestoreTimeline())  # known: nothing hashed
    path = image.path / "pages-1.img"
    before = path.stat()
    path.write_bytes(b"x" * 10_000)  # same size, mtime put back: only ctime changed
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    timeline = RestoreTimeline()
    with pytest.raises(ImageInvalid, match="sha256"):
        await verifier.check(image, timeline)
    assert "image_checks" in timeline.phases  # it looked, found it changed, hashed
    await verifier.close()
