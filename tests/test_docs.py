"""The documentation's code runs against the real API, and the README matches CI.

Every ```python block of a page listed in ``RUNNABLE_PAGES`` is part of one script per page
(blocks run in order, so later blocks may use earlier definitions); the script must run to
the end without error. Pages in ``AWAIT_PAGES`` are written as in a notebook: their blocks run
the same way but with top-level ``await``, after the first block of the page they build on,
and their blocks without top-level ``await`` also run under pytest, whose ``test_*``
functions must pass. ```py blocks are fragments (signatures, reveal_type) and are not run.
"""

from __future__ import annotations

import ast
import os
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

# page -> the page whose first block (the saga they share) runs before its blocks
AWAIT_PAGES = {
    "docs/testing.md": None,
    "docs/notebooks.md": "docs/testing.md",
    "docs/observability.md": "docs/testing.md",
}

# Runs a script with top-level `await`, as Jupyter and `python -m asyncio` do; `tmp_path`
# is defined for it, as pytest's fixture would be.
_AWAIT_DRIVER = """
import ast, asyncio, pathlib, sys

path = pathlib.Path(sys.argv[1])
code = compile(path.read_text(encoding="utf-8"), str(path), "exec",
               flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
namespace = {"__name__": "__main__", "tmp_path": pathlib.Path(sys.argv[2])}


async def main():
    outcome = eval(code, namespace)
    if outcome is not None:
        await outcome


asyncio.run(main())
"""

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


# Pages a user copies first: their code, as written, must pass `mypy --strict`.
TYPED_PAGES = ["README.md", "docs/index.md", "docs/getting-started.md"]


def test_first_pages_pass_mypy_strict(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    scripts = []
    for page in TYPED_PAGES:
        script = tmp_path / (Path(page).stem.lower().replace("-", "_") + ".py")
        blocks = _blocks((ROOT / page).read_text(encoding="utf-8"), "python")
        script.write_text("\n\n".join(blocks), encoding="utf-8")
        scripts.append(str(script))
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", os.devnull]
    result = subprocess.run(
        [*mypy, *scripts],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"mypy --strict refuses the pages' code:\n{result.stdout}"


def _await_page_blocks(page: str) -> list[str]:
    setup = AWAIT_PAGES[page]
    blocks = _blocks((ROOT / page).read_text(encoding="utf-8"), "python")
    assert blocks, f"{page} has no python blocks; remove it from AWAIT_PAGES"
    if setup is not None:
        blocks = _blocks((ROOT / setup).read_text(encoding="utf-8"), "python")[:1] + blocks
    return blocks


def _has_top_level_await(block: str) -> bool:
    try:
        compile(block, "<block>", "exec", dont_inherit=True)
    except SyntaxError:
        compile(block, "<block>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        return True
    return False


@pytest.mark.parametrize("page", AWAIT_PAGES)
def test_notebook_style_page_code_runs(page: str, tmp_path: Path) -> None:
    script = tmp_path / "page.py"
    script.write_text("\n\n".join(_await_page_blocks(page)), encoding="utf-8")
    driver = tmp_path / "driver.py"
    driver.write_text(_AWAIT_DRIVER, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-W", "error", str(driver), str(script), str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"the code of {page} failed:\n{result.stderr}"


@pytest.mark.parametrize(
    "page", [page for page in AWAIT_PAGES if "def test_" in (ROOT / page).read_text("utf-8")]
)
def test_page_tests_pass_under_pytest(page: str, tmp_path: Path) -> None:
    blocks = [block for block in _await_page_blocks(page) if not _has_top_level_await(block)]
    tests = sum(block.count("def test_") for block in blocks)
    module = tmp_path / "test_page.py"
    module.write_text("\n\n".join(blocks), encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-W",
            "error",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            str(module),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"the tests of {page} failed:\n{result.stdout}"
    assert f"{tests} passed" in result.stdout, result.stdout


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
    import sagakit.stores
    import sagakit.testing

    reference = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    names = {*sagakit.__all__, *sagakit.stores.__all__, *sagakit.testing.__all__}
    missing = sorted(name for name in names if f"`{name}`" not in reference)
    assert not missing, f"docs/api.md does not document {missing}"


def test_documented_command_lines_parse() -> None:
    """Every `sagakit ...` line of the docs' bash blocks names real subcommands and flags."""
    import shlex

    from sagakit.cli import _parser

    parser = _parser()
    lines = [
        line.split(" #", 1)[0]
        for page in [
            "README.md",
            *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("docs/**/*.md")),
        ]
        for block in _blocks((ROOT / page).read_text(encoding="utf-8"), "bash")
        for line in block.splitlines()
        if line.startswith("sagakit ")
    ]
    assert len(lines) >= 10, lines
    for line in lines:
        try:
            parser.parse_args(shlex.split(line)[1:])
        except SystemExit:  # argparse's usage error, printed to stderr
            pytest.fail(f"the documented command line does not parse: {line}")
