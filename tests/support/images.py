"""Small CRIU image directories made through `images.publish`, for unit tests of the
image, stamp and verifier modules (no CRIU: the files are placeholders)."""

from __future__ import annotations

import datetime
from pathlib import Path

from gpumux.checkpoint import images
from gpumux.checkpoint.images import Image


def fields(model: str = "a", **extra: object) -> dict[str, object]:
    """Manifest fields of an image of `model` (all but version and files)."""
    return {
        "model": model,
        "created": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC).isoformat(),
        "eviction": "discard+checkpoint",
        "tp": 1,
        "port": 8000,
        "pids": [10, 11],
        "shm_files": [],
        "criu_version": "4.2.1",
        "kernel": "6.18",
        "driver_version": None,
        **extra,
    }


def make_image(root: Path, version: str, model: str = "a", **extra: object) -> Image:
    """A published image `root/model/version` of two image files and one shm copy."""
    target = root / model / version
    staging = images.staging_dir(target)
    (staging / "pages-1.img").write_bytes(b"p" * 10_000)
    (staging / "core-10.img").write_bytes(b"c" * 100)
    (staging / "stats-dump").write_bytes(b"s")  # CRIU's own, not part of the image
    (staging / "shm").mkdir()
    (staging / "shm" / "psm_1").write_bytes(b"\0" * 64)
    return images.publish(staging, target, fields(model, **extra))
