"""Test helpers for PostgreSQL login roles: a throwaway role, its DSN, read-only grants."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

from pg_helpers.db import query


def as_role(dsn: str, role: str) -> str:
    """``dsn`` logging in as ``role`` (no password: the test server trusts local users)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}"))


def fresh_role(dsn: str) -> Iterator[str]:
    """A new login role without the right to create schemas; dropped afterwards."""
    name = f"sk_role_{uuid.uuid4().hex[:8]}"
    query(dsn, f'CREATE ROLE "{name}" LOGIN')
    try:
        yield name
    finally:
        query(dsn, f'DROP OWNED BY "{name}" CASCADE')
        query(dsn, f'DROP ROLE IF EXISTS "{name}"')


def grant_reading(dsn: str, schema: str, role: str) -> None:
    """Let ``role`` read, and only read, the saga log in ``schema`` (an operator's grants)."""
    query(dsn, f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
    query(dsn, f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"')
