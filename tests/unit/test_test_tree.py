"""The test tree's own rule: helpers live in `tests/support/`, never in a test module.

A test module (or conftest, or bench script) may import `tests.support.*`; it may not
import another test module or a conftest, whose collection side effects and fixtures
would come along (fixtures reach tests through conftest.py, not imports).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = "tests.support"


def imported_test_modules(path: Path) -> set[str]:
    """Modules under `tests` that `path` imports (anywhere in it), other than support."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else [f"(relative) {node.module}"]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {name for name in names if _outside_support(name)}
    return found


def _outside_support(name: str) -> bool:
    if name.startswith("(relative)"):
        return True
    in_tests = name == "tests" or name.startswith("tests.")
    return in_tests and name != SUPPORT and not name.startswith(SUPPORT + ".")


def sources() -> list[Path]:
    outside_support = [
        p for p in (ROOT / "tests").rglob("*.py") if (ROOT / "tests" / "support") not in p.parents
    ]
    return sorted(outside_support + list((ROOT / "bench").glob("*.py")))


def test_no_test_module_imports_another() -> None:
    offenders = {
        (str(path.relative_to(ROOT)), module)
        for path in sources()
        for module in imported_test_modules(path)
    }
    assert offenders == set(), "move the shared helper into tests/support/"


def test_support_imports_only_support() -> None:
    """tests/support is the bottom of the test tree: it never reaches into a test module."""
    for path in (ROOT / "tests" / "support").rglob("*.py"):
        assert not imported_test_modules(path), path


def test_the_rule_sees_each_kind_of_import(tmp_path: Path) -> None:
    source = tmp_path / "t.py"
    source.write_text(
        "import tests.unit.test_x\n"
        "from tests.faults import helpers\n"
        "from .sibling import y\n"
        "from tests.support.client import post\n"
        "def f():\n    from tests.integration.conftest import z\n"
    )
    assert imported_test_modules(source) == {
        "tests.unit.test_x",
        "tests.faults",
        "(relative) sibling",
        "tests.integration.conftest",
    }
