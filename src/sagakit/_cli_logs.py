"""Checking that ``--db`` names an existing saga log, before the CLI opens it.

Opening a store creates and migrates its tables; the CLI only inspects and repairs,
so it refuses a file or schema that holds no saga log instead of creating one.
"""

from __future__ import annotations

import os
import re
import shlex
import sqlite3
from pathlib import Path
from typing import Any

from .exceptions import StoreError
from .stores._dsn import redacted
from .stores._pg_schema import SCHEMA_VERSION as PG_SCHEMA_VERSION
from .stores._pg_schema import check_schema_name
from .stores._sqlite_schema import _HEADER as SQLITE_HEADER
from .stores._sqlite_schema import stored_schema_version


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)
# A libpq key=value connection string: "host=db password=... dbname=app".
_CONNINFO = re.compile(
    r"\s*(?:host|hostaddr|port|dbname|user|password|passfile|service|sslmode|"
    r"connect_timeout|options|application_name|target_session_attrs)\s*=",
    re.IGNORECASE,
)


def url_problem(db: str) -> str | None:
    """What is wrong with a ``--db`` that is a URL of a kind sagakit does not read (a
    SQLAlchemy dialect URL, a ``sqlite://`` URL, another database) or a libpq key=value
    connection string, or ``None``.

    The message never repeats the URL, which may hold a password.
    """
    if os.path.exists(db):
        return None
    if _CONNINFO.match(db):
        # Taken for a file path, it was repeated in "no saga log at ...", password and all.
        return (
            "--db takes a SQLite file path or a postgresql:// URL, not a key=value "
            "connection string: write it postgresql://USER:PASSWORD@HOST:PORT/DBNAME"
        )
    found = _URL.fullmatch(db)
    if found is None:
        return None
    scheme = found.group(1).lower()
    dialect, _, driver = scheme.partition("+")
    if dialect in ("postgresql", "postgres"):
        if driver:
            return (
                f"--db takes a PostgreSQL URL as libpq reads it, not a SQLAlchemy dialect URL "
                f"({found.group(1)}://...): write it postgresql://..."
            )
        return (
            f"--db takes a PostgreSQL URL in lowercase: write {found.group(1)}:// as postgresql://"
        )
    if dialect == "sqlite":
        path = found.group(2).removeprefix("/")  # sqlite:///x.db is x.db, sqlite:////x.db /x.db
        return (
            f"--db takes the SQLite log's file path, not a {found.group(1)}:// URL: "
            f"--db {shlex.quote(path) if path else 'PATH'}"
        )
    return (
        f"--db takes a SQLite file path or a postgresql:// URL; a {found.group(1)}:// URL "
        "names no saga log sagakit can read"
    )


def check_sqlite_log(path: str) -> int | None:
    """:class:`StoreError` unless ``path`` is a SQLite file holding a saga log; the log's
    schema version, where it could be read (``sagakit upgrade`` says what it did).

    A file SQLite cannot read is left to the store, whose message says what is wrong.
    """
    if not os.path.exists(path):
        home = os.path.expanduser(path)
        if home != path:
            # `--db=~/sagas.db`: no shell expands a ~ after the "=" of an option.
            raise StoreError(
                f"no saga log at {path!r}: a ~ is not expanded in --db=~/...; "
                f"pass --db {shlex.quote(home)}"
            )
        raise StoreError(f"no saga log at {path!r}; pass the path your application uses")
    try:
        with open(path, "rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except OSError:
        return None
    if header and header != SQLITE_HEADER:  # (an empty file is an empty database)
        raise StoreError(
            f"no saga log in {path!r} (it is not a SQLite database); "
            "pass the path your application's SQLiteStore uses"
        )
    try:
        # Percent-encoded: a "#", "?" or "%" in a file name is not URI syntax.
        conn = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        found, version = stored_schema_version(conn)
    except sqlite3.DatabaseError:
        return None
    finally:
        conn.close()
    if not found:
        raise StoreError(
            f"no saga log in {path!r} (it is a SQLite database without sagakit's tables); "
            "pass the path your application's SQLiteStore uses"
        )
    try:
        return int(version[0])
    except (TypeError, ValueError, IndexError):
        return None  # the store says what is wrong with it


def check_postgres_log(
    dsn: str,
    schema: str,
    connect_timeout: float = 10.0,
    *,
    missing_ok: bool = False,
    read_only: bool = False,
) -> int | None:
    """:class:`StoreError` unless the database is reachable and ``schema`` holds a log
    (with ``missing_ok``, a schema without one is no error); the log's schema version,
    ``None`` where there is no log.

    With ``read_only`` (``list``, ``show``, ``dead-letters``), a log at an older schema
    version is refused too, naming ``sagakit upgrade``: opening the store would migrate
    it, DDL that holds every worker's writes while it builds indexes (version 6).
    """
    check_schema_name(schema)
    import psycopg  # the postgres extra; an ImportError reaches the CLI's message

    redacted_reason: str | None = None
    version: int | None = None
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, int(connect_timeout))) as conn:
            row: Any = conn.execute(
                "SELECT to_regclass(%s)", (f'"{schema}".schema_migrations',)
            ).fetchone()
            if row is not None and row[0] is not None:
                latest: Any = conn.execute(
                    f'SELECT coalesce(max(version), 0) FROM "{schema}".schema_migrations'
                ).fetchone()
                version = int(latest[0])
    except psycopg.Error as error:
        said = _one_line(error)
        if redacted(said, dsn) == said:
            raise StoreError(f"cannot connect to PostgreSQL: {said}") from error
        # libpq repeated a piece of the DSN, the password: raised below, where no
        # traceback chains the driver's error that holds it.
        redacted_reason = redacted(said, dsn)
    if redacted_reason is not None:
        raise StoreError(f"cannot connect to PostgreSQL: {redacted_reason}")
    found = row is not None and row[0] is not None
    if not found and not missing_ok:
        raise StoreError(
            f"no saga log in schema {schema!r} of that PostgreSQL database; pass the "
            "schema your application's PostgresStore uses (--schema)"
        )
    if read_only and version is not None and version < PG_SCHEMA_VERSION:
        raise StoreError(
            f"PostgreSQL schema {schema!r} is at saga-log version {version}, older than this "
            f"sagakit's ({PG_SCHEMA_VERSION}); `list`, `show` and `dead-letters` do not "
            f"migrate it: upgrade it with `sagakit --db ... --schema {schema} upgrade` (as a "
            "role that may migrate the schema), or open it once with a PostgresStore"
        )
    return version


__all__ = ["check_postgres_log", "check_sqlite_log", "url_problem"]
