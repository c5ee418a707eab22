"""What pyproject.toml and the Makefile promise a new user."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")
ROOT = Path(__file__).resolve().parents[1]


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_torch_is_a_range_without_a_cap_and_the_makefile_keeps_the_pin() -> None:
    """A cap would keep users on newer torch from installing at all; the pin only protects
    this machine from pulling a CUDA build, and lives in the Makefile."""
    torch = [d for d in _project()["project"]["dependencies"] if re.match(r"torch\b", d)]
    assert len(torch) == 1 and re.fullmatch(r"torch>=2\.4", torch[0].replace(" ", ""))
    assert re.search(r"^TORCH \?= torch==\d+\.\d+\.\d+$", (ROOT / "Makefile").read_text(), re.M)


def test_lint_is_set_up() -> None:
    project = _project()
    dev = " ".join(project["project"]["optional-dependencies"]["dev"])
    assert "ruff" in dev and "mypy" in dev
    ruff = project["tool"]["ruff"]
    assert ruff["line-length"] == 100
    assert set(ruff["lint"]["select"]) == {"E", "F", "W", "I", "B", "UP"}
    assert project["tool"]["mypy"]["files"] == ["lipcheck"]
    assert re.search(r"^lint: install\n(\t.*\n)*\t\$\(VENV\)/bin/ruff check",
                     (ROOT / "Makefile").read_text(), re.M)


def test_version_is_one_number_everywhere() -> None:
    from lipcheck import __version__
    assert _project()["project"]["version"] == __version__
