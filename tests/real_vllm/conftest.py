"""Fixtures for the `real_vllm` tier: the CPU build of vLLM prepared by scripts/setup-real-vllm.sh.

`scripts/test` runs the setup and passes the `vllm` binary in `GPUMUX_REAL_VLLM`. In CI
(`CI` set to true) a missing or broken setup fails every test of the tier with the
reason; elsewhere a missing variable skips them (run the setup script and export its
output to include them).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.cpu_vllm import ENV_VAR, RealVllm


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/real_vllm carries the `real_vllm` marker (`-m real_vllm`)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.real_vllm)


@pytest.fixture(scope="session")
def real_vllm() -> RealVllm:
    """The prepared vLLM; fails in CI and skips elsewhere when the setup is missing."""
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        reason = (
            f"{ENV_VAR} is not set: run scripts/setup-real-vllm.sh and export "
            f"{ENV_VAR}=<the path it prints> (scripts/test does both)"
        )
        if _in_ci():
            pytest.fail(f"real_vllm tier cannot run in CI: {reason}", pytrace=False)
        pytest.skip(reason)
    real = RealVllm(Path(value))
    problems = []
    if not os.access(real.vllm, os.X_OK):
        problems.append(f"{real.vllm} is not an executable")
    problems += [
        f"model directory {real.model_dir(name)} is incomplete"
        for name in ("tiny-a", "tiny-b")
        if not (real.model_dir(name) / "model.safetensors").is_file()
    ]
    if problems:
        # A variable that is set but points at nothing is a broken setup, never a skip.
        pytest.fail(
            f"{ENV_VAR}={value}: " + "; ".join(problems) + " (re-run scripts/setup-real-vllm.sh)",
            pytrace=False,
        )
    return real
