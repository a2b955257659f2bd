"""No merge-conflict markers left in the project's text files (a merge resolved in the
code but not in CHANGELOG.md or the docs still builds, imports and passes every other
test)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEXT = ("*.py", "*.md", "*.toml", "*.cfg", "*.ipynb", "*.yml", "*.yaml", "*.txt")
PARTS = ("src", "tests", "docs", "examples", "benchmarks")
MARKER = re.compile(r"^(<{7}|>{7}|\|{7})( |$)|^={7}$", re.MULTILINE)


def _text_files() -> list[Path]:
    found = [path for pattern in TEXT for path in ROOT.glob(pattern)]
    for part in PARTS:
        found += [path for pattern in TEXT for path in (ROOT / part).rglob(pattern)]
    return sorted(set(found))


def test_the_project_has_text_files_to_check() -> None:
    names = {path.name for path in _text_files()}
    assert {"CHANGELOG.md", "README.md", "pyproject.toml", "__init__.py"} <= names


@pytest.mark.parametrize("path", _text_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_no_conflict_markers(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    lines = [
        f"{text.count(chr(10), 0, found.start()) + 1}: {found.group(0)}"
        for found in MARKER.finditer(text)
    ]
    assert not lines, f"merge-conflict markers left in {path.name} (resolve them): {lines}"
