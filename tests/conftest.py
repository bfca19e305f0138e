"""Fixtures every tier shares (the integration and gpu tiers spawn real children).

Helpers live in `tests/support/` (see its `__init__`); fixtures that more than one
tier needs live here. No test module imports another test module.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import pytest

from gpumux.checkpoint.reserved_ports import RESERVED_PORTS
from gpumux.core.port_ranges import format_ports, parse_ports
from gpumux.procs import Reaper
from tests.support.criu import require_criu


@pytest.fixture(scope="session", autouse=True)
def host_reserved_ports() -> Iterator[None]:
    """Daemons under test run as root and reserve their images' ports on the host, as in
    production, and a pre-baked image's reservation outlives its daemon by design: at
    the end, take back what the session added to the list, never what was there."""
    try:
        before = parse_ports(RESERVED_PORTS.read_text())
    except (OSError, ValueError):
        before = None
    yield
    if before is None or not os.access(RESERVED_PORTS, os.W_OK):
        return
    after = parse_ports(RESERVED_PORTS.read_text())
    if after - before:
        RESERVED_PORTS.write_text(format_ports(after & before) + "\n")


@pytest.fixture
async def reaper() -> AsyncIterator[Reaper]:
    """The daemon's single child reaper, installed on the test's loop for its duration."""
    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())
    yield reaper
    reaper.uninstall()


@pytest.fixture
def criu() -> str:
    """A usable `criu` (root, >= 4.2): its path. Without one the test FAILS with the fix,
    never skips (`scripts/test` installs it). Modules of CRIU tests use it for every
    test: `pytestmark = [..., pytest.mark.usefixtures("criu")]`."""
    return require_criu()
