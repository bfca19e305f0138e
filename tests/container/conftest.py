"""Fixtures for the `container` tier: the image from deploy/Containerfile, built here on a
local Debian base by scripts/container-image, and the compose file parsed by a real parser.

`scripts/test` builds the image in its "container image" gate and passes the name in
`GPUMUX_CONTAINER_IMAGE` (empty when that gate failed). Without the variable the tier
builds the image itself (base cached, ~1 min once it is). In CI (`CI` set to true) a
missing tool, a non-root run or a failed build fails every test of the tier with the
reason; elsewhere a missing tool or root skips them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.container import (
    IMAGE_ENV_VAR,
    Container,
    build_image,
    require,
    working_container,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/container carries the `container` marker (`-m container`)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.container)


@pytest.fixture(scope="session")
def image() -> str:
    """The gpumux image's name in buildah's store (built on the local Debian base)."""
    require(os.geteuid() == 0, "buildah's chroot isolation needs root")
    for tool in ("buildah", "debootstrap"):
        require(
            shutil.which(tool) is not None, f"{tool} is not installed (scripts/test installs it)"
        )
    named = os.environ.get(IMAGE_ENV_VAR)
    if named is None:
        return build_image()
    if not named.strip():
        pytest.fail(
            f"{IMAGE_ENV_VAR} is empty: scripts/test's container image gate failed "
            "(see its output)",
            pytrace=False,
        )
    return named.strip()


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[Container]:
    """A working container of the image, shared by one module's tests, removed after."""
    yield from working_container(image)
