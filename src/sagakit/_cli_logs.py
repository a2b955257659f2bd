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

from ._seconds import seconds_number, timeout_text
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


def _is_busy(error: BaseException) -> bool:
    code = getattr(error, "sqlite_errorcode", None) or 0
    return isinstance(error, sqlite3.Error) and code & 0xFF in (
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
    )


def is_locked(error: BaseException) -> bool:
    """Whether ``error`` (a store's :class:`StoreError`) failed because another
    connection held the SQLite log's lock past the busy timeout."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if _is_busy(cause):
            return True
        seen.add(id(cause))
        cause = cause.__cause__
    return False


def lock_holders(path: str) -> list[str]:
    """The other processes holding a write lock of the SQLite log at ``path`` (its
    file: an exclusive lock; its ``-shm``: a WAL write or checkpoint), as ``process PID
    (NAME)``, read from Linux's ``/proc/locks``; empty where that tells nothing (another
    system, a process of another PID namespace or host)."""
    files = set()
    for name in (path, f"{path}-shm"):
        try:
            found = os.stat(name)
        except OSError:
            continue
        files.add((os.major(found.st_dev), os.minor(found.st_dev), found.st_ino))
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            lines = locks.read().splitlines()
    except OSError:
        return []
    pids: list[int] = []
    for line in lines:
        # "1: POSIX  ADVISORY  WRITE 21454 fe:00:2162791 1073741824 1073741824"
        fields = line.split()
        if "->" in fields:  # a process waiting for the lock, not holding it
            continue
        try:
            kind, pid_text, where = fields[3], fields[4], fields[5]
            major, minor, inode = where.split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
            pid = int(pid_text)
        except (IndexError, ValueError):
            continue
        mine = pid <= 0 or pid == os.getpid()  # (an open file description's lock: -1)
        if kind == "WRITE" and key in files and not mine and pid not in pids:
            pids.append(pid)
    holders = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as comm:
                name = comm.read().strip()
        except OSError:
            name = ""
        holders.append(f"process {pid} ({name})" if name else f"process {pid}")
    return holders


def locked_message(path: str, busy_timeout: float) -> str:
    """What the CLI says when the SQLite log at ``path`` stayed locked by another
    process for ``busy_timeout`` seconds: who holds it, and what to do (the store's own
    message names ``SQLiteStore(busy_timeout=...)``, which a CLI user cannot pass)."""
    holders = lock_holders(path)
    who = (
        (", ".join(holders[:3]) + (", ..." if len(holders) > 3 else ""))
        + (" holds" if len(holders) == 1 else " hold")
        if holders
        else "another process holds"
    )
    waited = (
        f"waited {timeout_text(busy_timeout)} for it" if busy_timeout else "did not wait for it"
    )
    return (
        f"saga log {path!r} is locked: {who} its write lock, and sagakit {waited} "
        f"(--busy-timeout {seconds_number(busy_timeout)}); that process is writing, or keeps a "
        "transaction or an exclusive lock open (a `sqlite3` shell, a backup, PRAGMA "
        "locking_mode=EXCLUSIVE): let it finish or end it, then try again, or wait longer "
        "with --busy-timeout SECONDS"
    )


def check_sqlite_log(path: str, busy_timeout: float = 5.0) -> int | None:
    """:class:`StoreError` unless ``path`` is a SQLite file holding a saga log; the log's
    schema version, where it could be read (``sagakit upgrade`` says what it did).

    A file SQLite cannot read is left to the store, whose message says what is wrong;
    a log another process keeps locked for ``busy_timeout`` seconds is a
    :class:`StoreError` naming it (:func:`locked_message`), without a second wait.
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
        conn = sqlite3.connect(
            f"{Path(path).absolute().as_uri()}?mode=ro", uri=True, timeout=busy_timeout
        )
    except sqlite3.Error:
        return None
    try:
        found, version = stored_schema_version(conn)
    except sqlite3.DatabaseError as error:
        if _is_busy(error):
            raise StoreError(locked_message(path, busy_timeout)) from error
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
    name = check_schema_name(schema)
    import psycopg  # the postgres extra; an ImportError reaches the CLI's message

    redacted_reason: str | None = None
    row: Any = None
    version: int | None = None
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, int(connect_timeout))) as conn:
            try:
                row = conn.execute(
                    "SELECT to_regclass(%s)", (f'"{schema}".schema_migrations',)
                ).fetchone()
                if row is not None and row[0] is not None:
                    latest: Any = conn.execute(
                        f'SELECT coalesce(max(version), 0) FROM "{name}".schema_migrations'
                    ).fetchone()
                    version = int(latest[0])
            except psycopg.errors.InsufficientPrivilege as error:
                # Connected, but the role may not read the schema: not "cannot connect".
                raise StoreError(
                    f"cannot read the saga log in schema {schema!r} of that PostgreSQL "
                    f"database: {_one_line(error)}; the role needs USAGE on schema {schema} "
                    "and SELECT on its tables for `list`, `show` and `dead-letters` (GRANT "
                    f"USAGE ON SCHEMA {schema} TO <role>; GRANT SELECT ON ALL TABLES IN "
                    f"SCHEMA {schema} TO <role>), and INSERT, UPDATE, DELETE too for the "
                    "other commands"
                ) from error
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


__all__ = [
    "check_postgres_log",
    "check_sqlite_log",
    "is_locked",
    "lock_holders",
    "locked_message",
    "url_problem",
]
