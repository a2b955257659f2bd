"""The documentation's code runs against the real API, and the README matches CI.

Every ```python block of a page listed in ``RUNNABLE_PAGES`` is part of one script per page
(blocks run in order, so later blocks may use earlier definitions); the script must run to
the end without error. ```py blocks are fragments (signatures, reveal_type) and are not run.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

RUNNABLE_PAGES = [
    "README.md",
    "docs/index.md",
    "docs/getting-started.md",
    "docs/concepts/steps.md",
    "docs/concepts/compensation.md",
    "docs/concepts/sagas.md",
    "docs/concepts/errors.md",
    "docs/concepts/timeouts.md",
    "docs/concepts/retries.md",
    "docs/concepts/cancellation.md",
    "docs/concepts/saga-ids.md",
    "docs/concepts/monitoring.md",
    "docs/from-hand-written.md",
]

_BLOCK = re.compile(r"^( *)```(\w+)[^\n]*\n(.*?)^\1```", re.S | re.M)


def _blocks(text: str, language: str) -> list[str]:
    return [textwrap.dedent(m.group(3)) for m in _BLOCK.finditer(text) if m.group(2) == language]


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_page_code_runs(page: str, tmp_path: Path) -> None:
    blocks = _blocks((ROOT / page).read_text(encoding="utf-8"), "python")
    assert blocks, f"{page} has no python blocks; remove it from RUNNABLE_PAGES"
    script = tmp_path / "page.py"
    script.write_text("\n\n".join(blocks), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"the code of {page} failed:\n{result.stderr}"


def test_readme_quick_start_is_two_commands_matching_ci() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [block.strip() for block in _blocks(section, "bash")]
    assert len(commands) == 2, commands
    install_and_run, test_command = commands
    assert "\n" not in install_and_run
    assert "\n" not in test_command
    script = re.search(r"\.venv/bin/python (\S+\.py)$", install_and_run)
    assert script is not None, install_and_run
    assert (ROOT / script.group(1)).is_file(), f"{script.group(1)} does not exist"

    ci_lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert test_command in ci_lines, "CI must run the README's test command as written"


def test_api_reference_names_every_public_name() -> None:
    import sagakit

    reference = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    missing = [name for name in sagakit.__all__ if f"`{name}`" not in reference]
    assert not missing, f"docs/api.md does not document {missing}"
