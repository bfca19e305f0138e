"""An image whose writer is SIGKILLed at any moment is either complete and valid, or absent."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpumux.checkpoint import images

pytestmark = pytest.mark.integration

WRITER = """
import datetime, os, sys
from pathlib import Path
from gpumux.checkpoint import images

target = Path(sys.argv[1])
staging = images.staging_dir(target)
for i in range(8):
    (staging / f"pages-{i}.img").write_bytes(os.urandom(8 << 20))
print("written", flush=True)
images.publish(staging, target, dict(
    model="a", created=datetime.datetime.now(datetime.UTC).isoformat(),
    eviction="discard+checkpoint", tp=1, port=1, pids=[1], shm_files=[],
    criu_version="4.2.1", kernel="k", driver_version=None))
print("published", flush=True)
"""


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.3, 0.5, 0.8])
def test_killed_writer_never_leaves_a_valid_looking_partial_image(
    tmp_path: Path, delay: float
) -> None:
    target = tmp_path / "a" / "v1"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    time.sleep(delay)
    writer.kill()
    out, _ = writer.communicate(timeout=10)
    image = images.latest(tmp_path / "a")
    if image is None:
        assert "published" not in out
        assert not (target / images.MANIFEST).exists()
    else:
        images.verify(image, checksums=True)  # complete, or it would not be there
        assert len(image.manifest.files) == 8
    images.sweep_staging(tmp_path / "a")
    assert not list((tmp_path / "a").glob(".staging-*"))
