"""The ``sagakit`` command as a PostgreSQL role that may not read the log.

An operator's monitoring role without ``USAGE`` on the log's schema (or without ``SELECT`` on
its tables) was told "cannot connect to PostgreSQL: permission denied for schema ...": it
had connected, and the fix was a grant, which the message did not name.
"""

from __future__ import annotations

import asyncio

import pytest

from cli_helpers.run import cli
from pg_helpers.db import query
from pg_helpers.roles import as_role
from sagakit import PostgresStore, SagaOrchestrator, saga, step


@step
async def grants_note(x: str) -> str:
    return x


@saga(name="cli_grants_noted")
def noted(x: str):  # type: ignore[no-untyped-def]
    yield grants_note(x)


async def _write_log(dsn: str, schema: str) -> None:
    async with SagaOrchestrator(PostgresStore(dsn, schema=schema)) as orchestrator:
        await orchestrator.execute(noted("n"), saga_id="noted-1")


@pytest.mark.parametrize("granted", ["nothing", "usage only"])
@pytest.mark.parametrize("command", [["list"], ["show", "noted-1"], ["dead-letters"]])
def test_a_role_that_may_not_read_the_log_is_told_the_grants_it_needs(
    dsn: str,
    schema: str,
    role: str,
    granted: str,
    command: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    asyncio.run(_write_log(dsn, schema))
    if granted == "usage only":
        query(dsn, f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
    denied = f"schema {schema}" if granted == "nothing" else "table schema_migrations"
    assert cli("--db", as_role(dsn, role), "--schema", schema, *command) == (1, "")
    assert capsys.readouterr().err == (
        f"sagakit: cannot read the saga log in schema {schema!r} of that PostgreSQL "
        f"database: permission denied for {denied}; the role needs USAGE on schema {schema} "
        "and SELECT on its tables for `list`, `show` and `dead-letters` (GRANT USAGE ON "
        f"SCHEMA {schema} TO <role>; GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO "
        "<role>), and INSERT, UPDATE, DELETE too for the other commands\n"
    )
