"""Step and saga calls a saga's function makes as statements, found in its source.

Calling a step only builds a step call: the saga runs what its generator yields or what
its list function returns. ``credit(dst, amount)`` written as a statement (a forgotten
``yield``, or a call left out of the returned list) is dropped, and the saga completes
one step short. So is a call of a ``@saga`` function, which only builds a definition.
Read once per ``@saga`` function with :mod:`ast`, never per run.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import weakref
from collections.abc import Callable
from types import CodeType, FunctionType
from typing import Any, NamedTuple, cast

from ._steps import Step, _BoundStep
from ._tracebacks import hide_from_pytest
from .exceptions import SagaDefinitionError

# pytest shows a failing test's line, not this module's code (see _tracebacks).
__tracebackhide__ = hide_from_pytest


class CallStatement(NamedTuple):
    """A statement ``a.b.c(...)`` in a saga's body: the dotted name called, and its line;
    ``returned``: the call is a generator saga's return value (or an item of it)."""

    path: tuple[str, ...]
    line: int
    returned: bool = False


_UNRESOLVED = object()
_RETURNED = "a generator saga runs only the step calls it yields"
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_STATEMENTS = (ast.stmt, ast.excepthandler, ast.match_case)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_NAMED = (*_SCOPES, ast.ExceptHandler, ast.MatchAs, ast.MatchStar)  # bind their .name
_NESTED = (*_SCOPES, ast.Lambda)  # whose body has names of its own
# Per code object: a saga declared inside a function is declared again on every call.
_statements_of: weakref.WeakKeyDictionary[CodeType, tuple[CallStatement, ...]] = (
    weakref.WeakKeyDictionary()
)


def check_discarded_calls(
    fn: Callable[..., Any],
    saga_name: str,
    statements: tuple[CallStatement, ...] | None = None,
    *,
    saga_type: type[Any],
) -> tuple[CallStatement, ...]:
    """Raise :class:`SagaDefinitionError` for a statement of ``fn`` calling a step, or a
    saga function (of ``saga_type``: ``SagaFunction``, passed in as it imports this).

    ``statements``: those left to check (``None``: all of ``fn``'s). Returns the ones
    whose name does not resolve yet (a step declared below the saga), to check again at
    the saga's first call; a function whose source cannot be read is not checked.
    """
    try:
        function = inspect.unwrap(fn)
    except ValueError:  # a cycle of __wrapped__
        return ()
    if not isinstance(function, FunctionType):
        return ()
    if statements is None:
        statements = _call_statements(function)
    unresolved = []
    for statement in statements:
        found = _resolve(function, statement.path)
        kind = type(found)  # not isinstance(), which runs a __class__ property (a proxy's)
        if found is _UNRESOLVED:
            unresolved.append(statement)
        elif issubclass(kind, Step | _BoundStep):
            raise _discarded(function, saga_name, statement, cast(Step[Any, Any], found))
        elif issubclass(kind, saga_type):
            raise _discarded_saga(function, saga_name, statement, found)
    return tuple(unresolved)


def _discarded(
    function: FunctionType,
    saga_name: str,
    statement: CallStatement,
    found: Step[Any, Any] | _BoundStep[Any, Any],
) -> SagaDefinitionError:
    called = ".".join(statement.path)
    fix = (
        f"yield it: `yield {called}(...)`"
        if inspect.isgeneratorfunction(function)
        else f"put it in the returned list: `return [..., {called}(...)]`"
    )
    step_name = found._self_parent.name if isinstance(found, _BoundStep) else found.name
    where = f"{function.__code__.co_filename}:{statement.line}"
    if statement.returned:
        return SagaDefinitionError(
            f"saga {saga_name!r} returns a call of step {step_name!r} at {where}: "
            f"{_RETURNED}, so the saga would skip it; {fix}"
        )
    return SagaDefinitionError(
        f"saga {saga_name!r} calls step {step_name!r} as a statement at {where}: calling "
        f"a step only builds the step call, so the saga would skip it; {fix}"
    )


def _discarded_saga(
    function: FunctionType, saga_name: str, statement: CallStatement, found: Any
) -> SagaDefinitionError:
    """``found``, a ``SagaFunction``, called as a statement: its definition is dropped."""
    called = ".".join(statement.path)
    if not inspect.isgeneratorfunction(function):
        inline = (
            ""
            if found.is_generator  # its steps are known only by running it
            else f", or put its steps in the returned list: `return [..., *{called}(...).steps]`"
        )
    else:
        steps = (
            f"`yield from {called}.__wrapped__(...)`"
            if found.is_generator
            else f"`for call in {called}(...).steps: yield call`"
        )
        inline = f", or yield its steps as this saga's own: {steps}"
    where = f"{function.__code__.co_filename}:{statement.line}"
    fix = (
        "run it as a nested saga from a step: an @step that awaits "
        f"orchestrator.execute({called}(...)){inline}"
    )
    if statement.returned:
        return SagaDefinitionError(
            f"saga {saga_name!r} returns a call of saga {found.name!r} at {where}: "
            f"{_RETURNED}, so this saga would skip it; {fix}"
        )
    return SagaDefinitionError(
        f"saga {saga_name!r} calls saga {found.name!r} as a statement at {where}: calling "
        f"a saga only builds its definition, so this saga would skip it; {fix}"
    )


def _call_statements(function: FunctionType) -> tuple[CallStatement, ...]:
    """The statements of ``function``'s own body (not of functions or classes in it)
    calling a dotted name that is not one of its local variables, nor a name it declares
    ``global`` or ``nonlocal`` (it may rebind it before the call). Only those its compiled
    code makes, on a line and with names the code has: a class-private ``__name`` is
    another name once Python mangles it, and a file edited since import, another body."""
    code = function.__code__
    known = _statements_of.get(code)
    if known is None:
        known = _statements_of[code] = tuple(_find_call_statements(function))
    return known


def _find_call_statements(function: FunctionType) -> list[CallStatement]:
    found = _parsed(function)
    if found is None:
        return []
    body, first_line = found
    code = function.__code__
    local = {*code.co_varnames, *code.co_cellvars} - _comprehension_variables(body)
    loaded = {*code.co_names, *code.co_freevars}
    lines = {line for *_, line in code.co_lines()}
    generator = bool(code.co_flags & inspect.CO_GENERATOR)
    rebound: set[str] = set()
    statements = []

    def note(call: ast.Call, at: ast.expr | ast.stmt, returned: bool) -> None:
        path = _dotted(call.func)
        line = first_line + at.lineno - 1
        last = first_line + (at.end_lineno or at.lineno) - 1
        compiled = not lines.isdisjoint(range(line, last + 1))  # the code has its lines
        if path and path[0] not in local and compiled and loaded.issuperset(path):
            statements.append(CallStatement(path, line, returned))

    pending: list[ast.AST] = list(body.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Global | ast.Nonlocal):
            rebound.update(node.names)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            note(node.value, node, returned=False)
        elif generator and isinstance(node, ast.Return) and node.value is not None:
            value = node.value
            items = value.elts if isinstance(value, ast.List | ast.Tuple) else [value]
            for item in items:
                if isinstance(item, ast.Call):
                    note(item, item, returned=True)
        elif not isinstance(node, _SCOPES):
            pending.extend(n for n in ast.iter_child_nodes(node) if isinstance(n, _STATEMENTS))
    kept = (statement for statement in statements if statement.path[0] not in rebound)
    return sorted(kept, key=lambda statement: statement.line)


def _comprehension_variables(function: ast.FunctionDef) -> set[str]:
    """The names ``function``'s comprehensions bind that its own scope does not.

    Python 3.12+ inlines a list, set or dict comprehension (PEP 709), listing its
    variables among the function's ``co_varnames``: a step named like one is no local.
    """
    own = {argument.arg for argument in ast.walk(function.args) if isinstance(argument, ast.arg)}
    comprehended: set[str] = set()
    pending: list[tuple[ast.AST, bool]] = [(node, False) for node in function.body]
    while pending:
        node, in_comprehension = pending.pop()
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            (comprehended if in_comprehension else own).add(node.id)
        elif isinstance(node, ast.NamedExpr):  # binds in the function, even in a comprehension
            own.add(node.target.id)
            pending.append((node.value, in_comprehension))
            continue
        elif isinstance(node, ast.alias):  # import a.b (binds a), import a.b as c
            own.add((node.asname or node.name).partition(".")[0])
        elif isinstance(node, _NAMED):
            if node.name:
                own.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            own.add(node.rest)
        inner = in_comprehension or isinstance(node, _COMPREHENSIONS)
        for field, value in ast.iter_fields(node):
            if field == "body" and isinstance(node, _NESTED):
                continue  # a nested scope's own names (its decorators, defaults are ours)
            children = value if isinstance(value, list) else [value]
            pending.extend((child, inner) for child in children if isinstance(child, ast.AST))
    return comprehended - own


def _parsed(function: FunctionType) -> tuple[ast.FunctionDef, int] | None:
    """``function``'s syntax tree and the line it starts on, or ``None`` without source."""
    try:
        lines, first_line = inspect.getsourcelines(function)
        source = "".join(lines)
        if source[:1].isspace():  # declared in a block: parse it in one
            source, first_line = "if True:\n" + source, first_line - 1
        tree = ast.parse(source)
    except Exception:  # no source (exec'd code, a REPL) or none Python can parse
        return None
    node = tree.body[0] if tree.body else None
    if isinstance(node, ast.If):
        node = node.body[0]
    if not isinstance(node, ast.FunctionDef) or node.name != function.__code__.co_name:
        return None  # a lambda, or a source file changed since it was imported
    return node, first_line


def _dotted(node: ast.expr) -> tuple[str, ...]:
    """``("a", "b", "c")`` for the expression ``a.b.c``; empty for anything else."""
    names: list[str] = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ()
    names.append(node.id)
    return tuple(reversed(names))


def _resolve(function: FunctionType, path: tuple[str, ...]) -> object:
    """What the dotted name ``path`` is in ``function`` now, read without running any
    code (no property or ``__getattr__``); ``_UNRESOLVED`` if not there yet."""
    root, *attributes = path
    value: object = _UNRESOLVED
    code = function.__code__
    if root in code.co_freevars:
        cell = (function.__closure__ or ())[code.co_freevars.index(root)]
        try:
            value = cell.cell_contents
        except ValueError:  # assigned below the saga in the enclosing function
            return _UNRESOLVED
    elif root in function.__globals__:
        value = function.__globals__[root]
    else:
        value = vars(builtins).get(root, _UNRESOLVED)
    for attribute in attributes:
        if value is _UNRESOLVED:
            break
        try:
            value = inspect.getattr_static(value, attribute, _UNRESOLVED)
        except Exception:  # an object that cannot be looked into: not a step
            return None
        if issubclass(type(value), staticmethod | classmethod):
            value = value.__func__  # type: ignore[attr-defined]
    return value


__all__ = ["CallStatement", "check_discarded_calls"]
