"""The documentation's code runs against the real API, and the README matches CI.

Every ```python block of a page listed in ``RUNNABLE_PAGES`` is part of one script per page
(blocks run in order, so later blocks may use earlier definitions); the script must run to
the end without error, and print what the comment of each ``print(...)  # ...`` line shows.
Pages in ``AWAIT_PAGES`` are written as in a notebook: their blocks run
the same way but with top-level ``await``, after the first block of the page they build on,
and their blocks without top-level ``await`` also run under pytest, whose ``test_*``
functions must pass. ```py blocks are fragments (signatures, reveal_type) and are not run.
"""

from __future__ import annotations

import ast
import inspect
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
    _check_printed_as_commented(page, blocks, result.stdout)


_PRINT_COMMENT = re.compile(r"^[ \t]*print\(.*\)[ \t]+# (.+)$", re.M)


def _comment_pattern(comment: str) -> re.Pattern[str]:
    """``...`` stands for anything, and a duration (``12.5 ms``, ``25 µs``, ``400 ns``) for
    any duration."""
    pattern = re.escape(comment).replace(re.escape("..."), ".*")
    return re.compile(
        re.sub(r"\d+(?:\\\.\d+)?\\ (?:ms|µs|ns)\b", r"[\\d.]+\\ (?:ms|µs|ns)", pattern)
    )


def _check_printed_as_commented(page: str, blocks: list[str], stdout: str) -> None:
    """Each `print(...)  # shown` line's comment is what it printed, in order.

    A comment may go on in prose after the output, past a ", " or ": " (`# 2: two runs`).
    """
    lines = iter(stdout.splitlines())
    for comment in _PRINT_COMMENT.findall("\n".join(blocks)):
        cuts = [comment, *reversed([comment[: m.start()] for m in re.finditer(r"[,:] ", comment)])]
        patterns = [_comment_pattern(cut) for cut in cuts]
        for line in lines:
            if any(pattern.fullmatch(line) for pattern in patterns):
                break
        else:
            pytest.fail(f"{page}: nothing printed matches the comment `# {comment}`:\n{stdout}")


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
    _check_printed_as_commented(page, _await_page_blocks(page), result.stdout)


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


def test_getting_started_leads_to_every_example_and_page() -> None:
    # The docs site has no README: the page a newcomer starts from names every example,
    # and its next steps link the pages of the site's navigation that go beyond it.
    page = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    examples = sorted(
        p.name for p in (ROOT / "examples").iterdir() if p.suffix in {".py", ".ipynb"}
    )
    unnamed = [name for name in examples if f"examples/{name}" not in page]
    assert not unnamed, f"docs/getting-started.md does not name {unnamed}"
    following = page.split("\n## Next", 1)[1]
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8").split("\nnav:", 1)[1]
    pages = re.findall(r"^ +- [^:]+: (\S+\.md)$", nav, re.M)
    assert "getting-started.md" in pages
    unlinked = [
        name
        for name in pages
        if name not in {"index.md", "getting-started.md"}
        and not name.startswith("concepts/")  # the concepts are one entry, linked from here
        and f"]({name})" not in following
    ]
    assert not unlinked, f"docs/getting-started.md's next steps do not link {unlinked}"
    assert "](concepts/steps.md)" in following


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


def test_readme_development_names_every_check_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = " ".join(readme.split("## Development", 1)[1].split("\n## ", 1)[0].split())
    checks = [
        re.sub(r" --site-dir \S+", "", line.strip())
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip().split(" ", 1)[0] in {"ruff", "mypy", "mkdocs"}
    ]
    assert len(checks) == 4, checks
    unnamed = [check for check in checks if f"`{check}`" not in section]
    assert not unnamed, f"README.md's Development does not name what .ci/run runs: {unnamed}"


def test_api_reference_names_every_public_name() -> None:
    import sagakit
    import sagakit.stores
    import sagakit.testing

    reference = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    names = {*sagakit.__all__, *sagakit.stores.__all__, *sagakit.testing.__all__}
    otel = pytest.importorskip("sagakit.otel")
    names.update(otel.__all__)
    missing = sorted(name for name in names if f"`{name}`" not in reference)
    assert not missing, f"docs/api.md does not document {missing}"

    # ... and each name it gives a section of its own is public, importable where it says
    headed = {
        name
        for h in re.findall(r"^### (.*)", reference, re.M)
        for name in re.findall(r"`(\w+)`", h)
    }
    stale = sorted(headed - {*sagakit.__all__, *sagakit.stores.__all__})
    assert not stale, f"docs/api.md documents {stale}, which sagakit does not export"
    # The introduction says every name is importable from sagakit: it names the exceptions.
    introduction = reference.split("\n## ", 1)[0]
    elsewhere = sorted(set(sagakit.stores.__all__) - set(sagakit.__all__))
    unsaid = [name for name in elsewhere if f"`{name}`" not in introduction]
    assert not unsaid, f"docs/api.md's introduction does not say {unsaid} is in sagakit.stores"
    # The modules' names it lists (classes, constants, type aliases) are theirs.
    modules = reference.split("\n## Modules", 1)[1].split("\n## ", 1)[0]
    testing_part, otel_part = modules.split("- `sagakit.otel`", 1)
    otel_part = otel_part.split("- `sagakit.cli`", 1)[0]
    for part, exported in [(testing_part, sagakit.testing.__all__), (otel_part, otel.__all__)]:
        listed = set(re.findall(r"`([A-Z]\w*)`", part))
        stale = sorted(listed - set(exported) - set(sagakit.__all__))
        assert not stale, f"docs/api.md lists {stale} in a module that does not export it"
    # sagakit.cli, which the examples import, is listed with what it exports.
    import sagakit.cli

    assert "- `sagakit.cli`" in modules, "docs/api.md does not list the sagakit.cli module"
    cli_part = modules.split("- `sagakit.cli`", 1)[1]
    undocumented = [name for name in sagakit.cli.__all__ if f"`{name}(" not in cli_part]
    assert not undocumented, f"docs/api.md does not document sagakit.cli's {undocumented}"


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
        except SystemExit as exited:  # argparse's usage error, printed to stderr
            if exited.code != 0:  # (0: --version or --help, which print and stop)
                pytest.fail(f"the documented command line does not parse: {line}")


def test_every_command_line_option_is_documented() -> None:
    """Every subcommand and option of the `sagakit` parser is named on the pages of the
    durable stores, so one added to the code cannot stay undocumented."""
    import argparse

    from sagakit.cli import _parser

    text = "\n".join(
        (ROOT / page).read_text(encoding="utf-8")
        for page in ["docs/durability.md", "docs/postgres.md"]
    )
    parser = _parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [
        f"sagakit {name}"
        for name in commands.choices
        if f"sagakit --db sagas.db {name}" not in text
    ]
    for name, command in [("", parser), *commands.choices.items()]:
        for action in command._actions:
            if action.help == argparse.SUPPRESS:
                continue
            missing += [
                f"{name} {option}".strip()
                for option in action.option_strings
                if option.startswith("--")
                and option != "--help"
                and f"`{option}`" not in text
                and f" {option} " not in text
            ]
    assert not missing, f"docs/durability.md and docs/postgres.md do not name {missing}"


def _stub_source(block: str) -> str:
    """A ```py block of docs/api.md made parseable: bodiless defs and classes get `: ...`."""
    lines = []
    for line in block.splitlines():
        stripped = line.strip()
        bodiless = re.match(r"(def |class )", stripped) and not stripped.endswith((":", "("))
        if bodiless or re.match(r"\)( -> .+)?$", stripped):
            line += ": ..."
        lines.append(line)
    return "\n".join(lines)


def _documented_parameters(arguments: ast.arguments) -> list[tuple[str, str, str | None]]:
    """(name, kind, default source) of each parameter, as inspect.Parameter kinds name them."""
    positional = [*arguments.posonlyargs, *arguments.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(arguments.defaults))
    defaults += arguments.defaults
    params = [
        (arg.arg, "POSITIONAL_ONLY" if arg in arguments.posonlyargs else "POSITIONAL_OR_KEYWORD", d)
        for arg, d in zip(positional, defaults, strict=True)
    ]
    if arguments.vararg is not None:
        params.append((arguments.vararg.arg, "VAR_POSITIONAL", None))
    params += [
        (arg.arg, "KEYWORD_ONLY", d)
        for arg, d in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True)
    ]
    if arguments.kwarg is not None:
        params.append((arguments.kwarg.arg, "VAR_KEYWORD", None))
    return [(name, kind, None if d is None else ast.unparse(d)) for name, kind, d in params]


def _check_parameters(
    where: str,
    documented: list[tuple[str, str, str | None]],
    real: list[tuple[str, str, object]],
    namespace: dict[str, object],
) -> list[str]:
    problems = []
    shown = [(name, kind) for name, kind, _ in documented]
    actual = [(name, kind) for name, kind, _ in real]
    if shown != actual:
        return [f"{where}: docs/api.md shows {shown}, the code has {actual}"]
    for (name, _, doc_default), (_, _, default) in zip(documented, real, strict=True):
        if (doc_default is None) != (default is inspect.Parameter.empty):
            problems.append(f"{where}: {name} default {doc_default} in docs, {default!r} in code")
        elif doc_default is not None and eval(doc_default, namespace) != default:
            problems.append(f"{where}: {name} = {doc_default} in docs, {default!r} in code")
    return problems


def _real_parameters(fn: object) -> list[tuple[str, str, object]]:
    signature = inspect.signature(fn)  # type: ignore[arg-type]
    return [
        (p.name, p.kind.name, p.default) for p in signature.parameters.values() if p.name != "self"
    ]


def test_api_reference_signatures_match_the_code() -> None:
    """The signatures and dataclass fields of docs/api.md are the real ones, defaults included."""
    import asyncio
    import dataclasses

    import sagakit
    from sagakit._sagas import _SAGA_OPTIONS
    from sagakit._steps import _DEFAULT_OPTIONS

    # The public names: vars(sagakit) does not hold them, imported when used (PEP 562).
    namespace: dict[str, object] = {name: getattr(sagakit, name) for name in sagakit.__all__}
    namespace["asyncio"] = asyncio
    reference = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    problems: list[str] = []
    checked = 0
    for block in _blocks(reference, "py"):
        decorator = re.match(r"@(step|saga)\n@\1(\(.*?\n?\))\n", block, re.S)
        if decorator is not None:
            options = ast.parse(f"def f{decorator.group(2)}: ...").body[0]
            assert isinstance(options, ast.FunctionDef)
            documented = _documented_parameters(options.args)
            if decorator.group(1) == "step":
                real = [(name, "KEYWORD_ONLY", v) for name, v in _DEFAULT_OPTIONS.items()]
            else:
                real = [(name, "KEYWORD_ONLY", v) for name, v in _SAGA_OPTIONS.items()]
            problems += _check_parameters(f"@{decorator.group(1)}", documented, real, namespace)
            checked += 1
            continue
        for node in ast.parse(_stub_source(block)).body:
            if isinstance(node, ast.FunctionDef):
                real = _real_parameters(getattr(sagakit, node.name))
                problems += _check_parameters(
                    node.name, _documented_parameters(node.args), real, namespace
                )
                checked += 1
            elif isinstance(node, ast.ClassDef):
                cls = getattr(sagakit, node.name)
                fields = [n for n in node.body if isinstance(n, ast.AnnAssign)]
                init = [
                    n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"
                ]
                if fields:
                    documented = [
                        (f.target.id, "POSITIONAL_OR_KEYWORD", f.value and ast.unparse(f.value))
                        for f in fields
                        if isinstance(f.target, ast.Name)
                    ]
                    no_default = {dataclasses.MISSING: inspect.Parameter.empty}
                    real = [
                        (f.name, "POSITIONAL_OR_KEYWORD", no_default.get(f.default, f.default))
                        for f in dataclasses.fields(cls)
                    ]
                    problems += _check_parameters(node.name, documented, real, namespace)
                    checked += 1
                for fn in init:
                    documented = [p for p in _documented_parameters(fn.args) if p[0] != "self"]
                    real = _real_parameters(cls.__init__)
                    problems += _check_parameters(node.name, documented, real, namespace)
                    checked += 1
    assert checked >= 15, f"only {checked} signatures found in docs/api.md"
    assert not problems, "\n".join(problems)


def test_every_pytest_plugin_setting_is_documented() -> None:
    """docs/testing.md names every fixture, command-line option, ini key and marker keyword
    of the pytest plugin, so one added to the plugin cannot stay undocumented."""
    from sagakit import pytest_plugin

    source = (ROOT / "src" / "sagakit" / "pytest_plugin.py").read_text(encoding="utf-8")
    fixtures = re.findall(
        r"^ *@pytest(?:_asyncio)?\.fixture[^\n]*\n *(?:async )?def (\w+)", source, re.M
    )
    assert len(fixtures) >= 5, fixtures
    names = [f"`{name}`" for name in fixtures]
    for ini in pytest_plugin._SETTINGS:
        names += [f"`{ini}`", f"`--{ini.replace('_', '-')}=yes` or `=no`"]
    names += [f"`{keyword}=`" for keyword in (*pytest_plugin._MATRIX_KWARGS, "strict")]
    names.append(f"`@pytest.mark.{pytest_plugin._MARKER}(...)`")
    names.append(f"`@pytest.mark.{pytest_plugin._FAULTS}(strict=...)`")
    page = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    missing = [name for name in names if name not in page]
    assert not missing, f"docs/testing.md does not name {missing}"


# (page, where the list of a record's attributes begins, where it ends, the record's class)
_RECORD_LISTS = [
    ("docs/testing.md", "(`FiredFault`:", " — ", "sagakit.testing:FiredFault"),
    ("docs/testing.md", "a `FaultMatrixReport` (", ")", "sagakit.testing:FaultMatrixReport"),
    ("docs/testing.md", "each `FaultCase` has", ". ", "sagakit.testing:FaultCase"),
    ("docs/testing.md", "by `@step` object. A", ". Its `repr()`", "sagakit.testing:RecordedRun"),
    ("docs/api.md", "dead owner and now claimed:", "\n\n", "sagakit:OrphanedSaga"),
    ("docs/api.md", "`.compensations`):", "\n\n", "sagakit:LoggedStep"),
    ("docs/api.md", "after failing recovery:", ". ", "sagakit:DeadLetter"),
    ("docs/api.md", "durable log's ordered stream:", ". Read", "sagakit:StoredEvent"),
    ("docs/api.md", "one orphaned saga:", ". ", "sagakit:RecoveryOutcome"),
    ("docs/concepts/monitoring.md", "| field | meaning |", "\n\n", "sagakit:SagaMetadata"),
    ("docs/concepts/monitoring.md", "compensation of a run:", "Both", "sagakit:StepRecord"),
    (
        "docs/concepts/monitoring.md",
        "A `Transition` is a frozen record:",
        "\n\n",
        "sagakit:Transition",
    ),
    ("docs/concepts/saga-ids.md", "`StepContext` also carries", ". ", "sagakit:StepContext"),
]


@pytest.mark.parametrize(("page", "start", "end", "target"), _RECORD_LISTS)
def test_documented_record_attributes_are_the_real_ones(
    page: str, start: str, end: str, target: str
) -> None:
    """A record's attribute list in the docs names every field, and only real attributes:
    a renamed or added field cannot leave the list stale (FaultCase's `step` was "name")."""
    import dataclasses
    import importlib

    module, name = target.split(":")
    cls = getattr(importlib.import_module(module), name)
    text = (ROOT / page).read_text(encoding="utf-8")
    assert start in text, f"{page} no longer lists the attributes of {name} after {start!r}"
    listed = text.split(start, 1)[1].split(end, 1)[0]
    named = set(re.findall(r"`([a-z_]+)`", listed))
    fields = {field.name for field in dataclasses.fields(cls)}
    assert fields <= named, f"{page} does not list {sorted(fields - named)} of {name}"
    unknown = sorted(n for n in named if not hasattr(cls, n) and n not in fields)
    assert not unknown, f"{page} lists {unknown} as attributes of {name}, which has none such"


def test_testing_page_signatures_match_the_code() -> None:
    """The call signatures of docs/testing.md's tables (FaultInjector's and SagaRecorder's
    methods) and of run_fault_matrix are the real ones, defaults included."""
    import sagakit.testing as testing

    page = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    namespace: dict[str, object] = {**vars(testing)}
    sections = {
        testing.FaultInjector: page.split("\n## Fault injection", 1)[1].split("\n## ", 1)[0],
        testing.SagaRecorder: page.split("\n## The recorder", 1)[1].split("\n## ", 1)[0],
    }
    documented = [
        (getattr(owner, name), f"{owner.__name__}.{name}", f"def {name}({params}): ...")
        for owner, section in sections.items()
        for name, params in re.findall(r"^\| `(\w+)\((.*?)\)` \|", section, re.M)
    ]
    found = re.search(r"`run_fault_matrix\((.*?)\)`:", page, re.S)
    assert found is not None, "docs/testing.md no longer gives run_fault_matrix's signature"
    params = " ".join(found.group(1).split())
    documented.append((testing.run_fault_matrix, "run_fault_matrix", f"def f({params}): ..."))
    assert len(documented) >= 12, [where for _, where, _ in documented]
    problems: list[str] = []
    for fn, where, source in documented:
        node = ast.parse(source).body[0]
        assert isinstance(node, ast.FunctionDef)
        shown = _documented_parameters(node.args)
        problems += _check_parameters(where, shown, _real_parameters(fn), namespace)
    assert not problems, "\n".join(problems)


def test_code_fragments_not_run_call_with_real_keywords() -> None:
    """The ```py fragments no test runs (and the pages' code that needs a server) pass only
    keywords the sagakit callables they call take: a renamed option cannot stay in them."""
    import sagakit
    import sagakit.stores
    import sagakit.testing

    public = {
        name: getattr(module, name)
        for module in (sagakit, sagakit.stores, sagakit.testing)
        for name in module.__all__
    }
    methods: dict[str, list[object]] = {}  # `store.read_events(...)`: any class's method
    for obj in public.values():
        if inspect.isclass(obj):
            for name in dir(obj):
                if not name.startswith("_") and callable(getattr(obj, name, None)):
                    methods.setdefault(name, []).append(getattr(obj, name))

    def takes(fn: object, keywords: list[str]) -> bool:
        parameters = inspect.signature(fn).parameters  # type: ignore[arg-type]
        return set(keywords) <= set(parameters) or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
        )

    problems, checked = [], 0
    for path in sorted(ROOT.glob("docs/**/*.md")):
        page = str(path.relative_to(ROOT))
        if page == "docs/api.md":  # signatures, checked above
            continue
        text = path.read_text(encoding="utf-8")
        blocks = _blocks(text, "py")
        if page not in RUNNABLE_PAGES and page not in AWAIT_PAGES:
            blocks += _blocks(text, "python")
        for block in blocks:
            for node in ast.walk(ast.parse(block)):
                if not isinstance(node, ast.Call):
                    continue
                keywords = [k.arg for k in node.keywords if k.arg is not None]
                func = node.func
                if isinstance(func, ast.Name) and func.id in public:
                    candidates = [public[func.id]]
                elif isinstance(func, ast.Attribute) and func.attr in methods:
                    candidates = methods[func.attr]
                else:
                    continue
                checked += 1
                if keywords and not any(takes(fn, keywords) for fn in candidates):
                    problems.append(f"{page}: {ast.unparse(node)}")
    assert checked >= 10, f"only {checked} calls found in the fragments"
    assert not problems, "\n".join(problems)


def test_statuses_diagram_has_every_change_of_status_a_run_makes() -> None:
    """docs/concepts/statuses.md's state diagram draws each change of a saga's status that
    a run makes: a KeyboardInterrupt in a step ends it FAILED straight from EXECUTING."""
    import asyncio
    import contextlib
    import itertools

    from sagakit import Retry, SagaOrchestrator, SagaRunError, SagaStatus, Transition, saga, step

    page = (ROOT / "docs" / "concepts" / "statuses.md").read_text(encoding="utf-8")
    (diagram,) = [m.group(3) for m in _BLOCK.finditer(page) if m.group(2) == "mermaid"]
    drawn = set(re.findall(r"^\s*([A-Z_]+) --> ([A-Z_]+)", diagram, re.M))

    @step
    async def reserve(outcome: str) -> None:
        pass

    @reserve.compensate
    async def release(outcome: str) -> None:
        if outcome == "undo fails":
            raise RuntimeError("cannot release")
        if outcome == "undo interrupted":
            raise KeyboardInterrupt

    @step
    async def ship(outcome: str) -> None:
        if outcome == "interrupted":
            raise KeyboardInterrupt
        if outcome != "completes":
            raise RuntimeError("cannot ship")

    @saga(name="test_docs.statuses_order")
    def order(outcome: str):  # type: ignore[no-untyped-def]
        yield reserve(outcome)
        yield ship(outcome)

    made: set[tuple[str, str]] = set()
    outcomes = ["completes", "fails", "undo fails", "interrupted", "undo interrupted"]
    for outcome in outcomes:
        statuses = [SagaStatus.NOT_STARTED]

        def listen(transition: Transition, statuses: list[SagaStatus] = statuses) -> None:
            if transition.status != statuses[-1]:
                statuses.append(transition.status)

        orchestrator = SagaOrchestrator(listeners=[listen], compensation_retry=Retry(attempts=1))
        with contextlib.suppress(SagaRunError, KeyboardInterrupt):
            asyncio.run(orchestrator.execute(order(outcome)))
        assert statuses[-1].is_finished, (outcome, statuses)
        made.update((a.name, b.name) for a, b in itertools.pairwise(statuses))
    missing = sorted(made - drawn)
    assert not missing, f"docs/concepts/statuses.md's diagram does not draw {missing}"


def _table_rows(page: str) -> dict[str, list[str]]:
    """The rows of a page's tables, by their first cell without backticks."""
    text = (ROOT / page).read_text(encoding="utf-8")
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_documented_defaults_are_the_code_s() -> None:
    from sagakit import DEFAULT_TIMEOUT, Retry, SagaOrchestrator
    from sagakit.stores import MemoryStore

    policy = Retry()
    retry_table = _table_rows("docs/concepts/retries.md")
    for field in ("attempts", "backoff", "multiplier", "max_backoff", "jitter"):
        assert retry_table[field][0] == f"`{getattr(policy, field)!r}`", field
    assert retry_table["on"][0] == f"`({policy.on[0].__name__},)`"

    steps_table = _table_rows("docs/concepts/steps.md")
    assert steps_table["timeout"][0].startswith(f"`{DEFAULT_TIMEOUT!r}`")
    compensation = inspect.signature(SagaOrchestrator).parameters["compensation_retry"].default
    assert (
        steps_table["compensation_retry"][0]
        == f"the orchestrator's ({compensation.attempts} attempts)"
    )
    retries = (ROOT / "docs" / "concepts" / "retries.md").read_text(encoding="utf-8")
    said = (
        f"`Retry(attempts={compensation.attempts}, backoff={compensation.backoff}, "
        f"max_backoff={compensation.max_backoff})`"
    )
    assert said in retries, said

    limit = inspect.signature(MemoryStore).parameters["history_limit"].default
    monitoring = (ROOT / "docs" / "concepts" / "monitoring.md").read_text(encoding="utf-8")
    assert f"keeps the last **{limit:,}** finished runs" in monitoring


def _sql_from_text(tree: ast.AST) -> list[str]:
    """The calls of ``tree`` handing a query built from text (an f-string, ``+``, ``%`` or
    ``str.format``) to ``execute``/``executemany``, to ``psycopg.sql.SQL`` or to a helper
    named ``sql`` or ``*_sql``."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name not in ("execute", "executemany", "sql", "SQL") and not name.endswith("_sql"):
            continue
        query = node.args[0]
        built = (
            isinstance(query, ast.JoinedStr)
            or (isinstance(query, ast.BinOp) and isinstance(query.op, ast.Add | ast.Mod))
            or (
                isinstance(query, ast.Call)
                and isinstance(query.func, ast.Attribute)
                and query.func.attr == "format"
                and isinstance(query.func.value, ast.Constant)
            )
        )
        if built:
            found.append(ast.unparse(node))
    return found


def _shown_code() -> list[tuple[str, ast.Module]]:
    """The examples, and the pages' code blocks (those that are Python: not signatures)."""
    shown = [
        (str(path.relative_to(ROOT)), ast.parse(path.read_text(encoding="utf-8")))
        for path in sorted(ROOT.glob("examples/*.py"))
    ]
    for path in [ROOT / "README.md", *sorted(ROOT.glob("docs/**/*.md"))]:
        text = path.read_text(encoding="utf-8")
        for language in ("py", "python"):
            for n, block in enumerate(_blocks(text, language)):
                try:
                    tree = ast.parse(block)
                except SyntaxError:  # a signature: `*,` on a line of its own
                    continue
                shown.append((f"{path.relative_to(ROOT)} ({language} block {n})", tree))
    return shown


def test_shown_sql_is_never_built_from_text() -> None:
    """The examples and the docs pass psycopg a query as a literal string (values as
    parameters) or composed with ``psycopg.sql`` (names as ``Identifier``): psycopg types
    queries as ``LiteralString``, so pyright refused ``execute(f"... {schema} ...")`` in
    examples/postgres_workers.py and in docs/testing.md's PostgreSQL fixture."""
    shown = _shown_code()
    assert any(where.startswith("examples/postgres_workers.py") for where, _ in shown)
    assert any(where.startswith("docs/testing.md (py") for where, _ in shown)
    problems = [f"{where}: {call}" for where, tree in shown for call in _sql_from_text(tree)]
    assert not problems, "\n".join(problems)
