"""Opening a SQLite saga log: file checks, pragmas, schema creation and migrations.

The schema is versioned (``sagakit_meta.schema_version``). A new log is created at
version 1 and brought up to date by the same migrations that upgrade an older log in
place: each runs once, in order, in the transaction (``BEGIN IMMEDIATE``) that records
the new version, so processes opening a log together migrate it exactly once. A log of a
newer sagakit is refused rather than misread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shlex
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, TypeAlias

from .._commands import command_line
from ..exceptions import CorruptLog, StoreError

_HEADER = b"SQLite format 3\x00"

Synchronous: TypeAlias = Literal["NORMAL", "FULL", "normal", "full"]
"""What ``SQLiteStore(synchronous=...)`` takes: how a commit is made to survive a crash
(any case; the store's ``synchronous`` attribute holds it upper case)."""


JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
"""Bytes the ``-wal`` file is cut back to when the WAL starts over: one that a long read
transaction made grow (no checkpoint can finish under it) does not keep that size."""

_V1 = """
CREATE TABLE IF NOT EXISTS sagakit_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sagakit_sagas (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    explicit INTEGER NOT NULL,
    factory INTEGER NOT NULL,
    policy TEXT NOT NULL,
    fingerprint TEXT,
    arguments TEXT NOT NULL,
    owner TEXT,
    recovery_attempts INTEGER NOT NULL DEFAULT 0,
    dead_letter TEXT,
    parked_at REAL,
    resolved INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER,
    steps_executed INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS sagakit_sagas_active ON sagakit_sagas (started_at)
    WHERE finished_at IS NULL;
CREATE INDEX IF NOT EXISTS sagakit_sagas_finished ON sagakit_sagas (finished_at)
    WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS sagakit_steps (
    saga_id TEXT NOT NULL,
    compensation INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    started_at REAL NOT NULL,
    duration REAL,
    error TEXT,
    result TEXT,
    PRIMARY KEY (saga_id, compensation, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sagakit_events (
    position INTEGER PRIMARY KEY,
    saga_id TEXT NOT NULL,
    saga_name TEXT NOT NULL,
    step_index INTEGER NOT NULL,
    step_name TEXT NOT NULL,
    compensation INTEGER NOT NULL,
    data TEXT NOT NULL,
    recorded_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sagakit_events_by_saga ON sagakit_events (saga_id, position);
"""
"""Version 1: the tables. An applied migration: its text must never change."""

_V2 = (
    # Records were listed by `started_at`, the wall clock at their start: a clock set back
    # (NTP) between two starts listed them out of order. `start_order` is a per-saga
    # counter that every start moves on: the step upsert (_sqlite_sql.UPSERT_STEP) sets
    # it past the saga's highest, on insert and on a start again alike.
    "ALTER TABLE sagakit_steps ADD COLUMN start_order INTEGER",
    # Existing records: numbered in the order they were listed (compensation, started_at,
    # idx), so they list as before, and the counter goes on past them.
    "UPDATE sagakit_steps SET start_order = (SELECT count(*) FROM sagakit_steps AS o "
    "WHERE o.saga_id = sagakit_steps.saga_id AND (o.compensation, o.started_at, o.idx) "
    "<= (sagakit_steps.compensation, sagakit_steps.started_at, sagakit_steps.idx))",
    # The history had no tie-breaker for sagas that finished at the same `finished_at`
    # (a coarse clock, or one set back). `finish_order` is a saga's place among those
    # that finished at its `finished_at`, in the order their ends were written: the
    # statement that sets `finished_at` sets it (_sqlite_sql.FINISHED, and resolve).
    "ALTER TABLE sagakit_sagas ADD COLUMN finish_order INTEGER",
    # Existing sagas: numbered in the order they were listed (the index's ties are in
    # rowid order).
    "UPDATE sagakit_sagas SET finish_order = (SELECT count(*) FROM sagakit_sagas AS o "
    "WHERE o.finished_at = sagakit_sagas.finished_at AND o.rowid <= sagakit_sagas.rowid) "
    "WHERE finished_at IS NOT NULL",
    "DROP INDEX IF EXISTS sagakit_sagas_finished",
    "CREATE INDEX sagakit_sagas_finished ON sagakit_sagas (finished_at, finish_order) "
    "WHERE finished_at IS NOT NULL",
)
"""Version 2: records listed in the order they last started; the history's tie-breaker."""

_V3 = (
    # `list_sagas()` (`sagakit list`) lists the newest sagas first, all of them or those of
    # one status: with only the partial indexes of running and finished sagas, SQLite read
    # every saga of the log and sorted them to return the first 100 (1.6 s for a log of a
    # million sagas). Each index ends with the rowid, the tie-breaker of those listings.
    "CREATE INDEX IF NOT EXISTS sagakit_sagas_started ON sagakit_sagas (started_at)",
    "CREATE INDEX IF NOT EXISTS sagakit_sagas_status ON sagakit_sagas (status, started_at)",
)
"""Version 3: the newest sagas, of every status or of one, listed without reading the log."""


def migrations() -> list[tuple[str, ...]]:
    """The statements of each schema version, version ``n`` at index ``n - 1``."""
    v1 = tuple(statement.strip() for statement in _V1.split(";") if statement.strip())
    return [v1, _V2, _V3]


SCHEMA_VERSION = len(migrations())


def check_file(path: str) -> None:
    """Refuse a file that is not a whole SQLite database before SQLite opens it."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise StoreError(
                f"cannot create saga log {path!r}: its directory {directory!r} does not "
                "exist; create it first"
            ) from None
        return
    except OSError as error:
        raise StoreError(f"cannot open saga log {path!r}: {error}") from error
    if size == 0:
        raise StoreError(
            f"saga log {path!r} is an empty file (truncated?); restore it from a backup, "
            "or delete it to start a new, empty log"
        )
    try:
        with open(path, "rb") as file:
            header = file.read(100)
    except OSError as error:
        raise StoreError(f"cannot read saga log {path!r}: {error}") from error
    if not header.startswith(_HEADER):
        raise StoreError(
            f"{path!r} is not a SQLite database (wrong header); point SQLiteStore at a "
            "sagakit log, or at a path that does not exist yet to create one"
        )
    if len(header) < 100:
        raise StoreError(f"saga log {path!r} is truncated ({size} bytes); restore it from a backup")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    valid_for = int.from_bytes(header[92:96], "big")
    changes = int.from_bytes(header[24:28], "big")
    if pages and valid_for == changes and size < pages * page_size and not _wal_in_use(path):
        raise StoreError(
            f"saga log {path!r} is truncated: {size} bytes, but its header says "
            f"{pages * page_size}; restore it from a backup"
        )


def _wal_in_use(path: str) -> bool:
    """Whether ``path`` has a ``-wal`` file holding frames: a checkpoint (of another
    process) may then be copying them into the file, its header (page 1) first, so the
    header says more pages than the file has until the copy ends."""
    try:
        return os.path.getsize(path + "-wal") > 0
    except OSError:
        return False


def connect(path: str, *, synchronous: Synchronous, busy_timeout: float) -> sqlite3.Connection:
    """A connection with the log's pragmas, in autocommit mode (we BEGIN ourselves)."""
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
    except sqlite3.Error as error:
        if conn is not None:  # opened, but a pragma failed (not a database, say)
            conn.close()
        damaged = corrupt_log(path, error)
        if damaged is not None:
            raise damaged from error
        raise StoreError(
            _unwritable(path, error) or f"cannot open saga log {path!r}: {error}"
        ) from error
    return conn


def _writable(path: str) -> bool:
    """Whether this process may write ``path``, by its effective ids, as SQLite opens."""
    return os.access(path, os.W_OK, effective_ids=os.access in os.supports_effective_ids)


def _unwritable(path: str, error: sqlite3.Error) -> str | None:
    """What to say when SQLite cannot write the log (``SQLITE_READONLY``, or
    ``SQLITE_CANTOPEN`` where this process may not write): the file, or its directory,
    where a WAL log's ``-wal`` and ``-shm`` files are created. None for another error."""
    code = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF
    directory = os.path.dirname(os.path.abspath(path))
    file_ok = not os.path.exists(path) or _writable(path)
    directory_ok = _writable(directory)
    if code == sqlite3.SQLITE_CANTOPEN and file_ok and directory_ok:
        return None  # not for want of permission
    if code not in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN):
        return None
    what = (
        "the file or its directory"
        if file_ok == directory_ok
        else f"its directory {directory!r}"
        if file_ok
        else "the file"
    )
    name = os.path.basename(path)
    if not os.path.exists(path):
        return (
            f"cannot create saga log {path!r} ({error}): this process may not write its "
            f"directory {directory!r}; give it write access there, or put the log in a "
            "directory it may write"
        )
    return (
        f"cannot write saga log {path!r} ({error}): this process may not write {what} "
        f"(SQLite writes the log, and creates {name}-wal and {name}-shm beside it); give "
        "it write access to both, or open the log with SQLiteStore(..., read_only=True) "
        "to only read it (as `sagakit list` and `show` do)"
    )


def connect_read_only(path: str, *, busy_timeout: float) -> sqlite3.Connection:
    """A connection that cannot write the log: no pragma that writes, no journal change.

    A WAL log whose directory this process cannot write, with no ``-shm`` file and no
    ``-wal`` file holding commits (a backup on a read-only mount, say), is opened
    ``immutable``: SQLite then takes no locks and trusts that nobody writes it meanwhile.
    """
    uri = Path(path).absolute().as_uri()  # percent-encoded: "#", "?", "%" are not URI syntax
    query = "mode=ro"
    conn: sqlite3.Connection | None = None
    try:
        with open(path, "rb") as file:
            wal_mode = file.read(20)[18:20] == b"\x02\x02"
        directory = os.path.dirname(os.path.abspath(path))
        if (
            wal_mode
            and not os.access(directory, os.W_OK)
            and not os.path.exists(path + "-shm")
            and (not os.path.exists(path + "-wal") or os.path.getsize(path + "-wal") == 0)
        ):
            query = "immutable=1"
        conn = sqlite3.connect(
            f"{uri}?{query}",
            uri=True,
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens the file now
    except (OSError, sqlite3.Error) as error:
        if conn is not None:  # opened, but the file could not be read
            conn.close()
        damaged = corrupt_log(path, error) if isinstance(error, sqlite3.Error) else None
        if damaged is not None:
            raise damaged from error
        hint = ""
        if isinstance(error, sqlite3.OperationalError) and "unable to open" in str(error):
            hint = (
                " (a WAL log needs its -shm file, which SQLite cannot create in a directory "
                "this process cannot write: copy the log with its -wal file elsewhere)"
            )
        raise StoreError(f"cannot open saga log {path!r} read-only: {error}{hint}") from error
    return conn


def check_read_only(conn: sqlite3.Connection, path: str) -> None:
    """Check, without writing, that ``conn`` reads a sagakit log of the current schema."""
    with _closed_on_failure(conn, path, writing=False):
        version = _logged_version(conn, path)
        if version is None:
            raise StoreError(
                f"no saga log in {path!r} (a SQLite database without sagakit's tables); "
                "a read-only store creates none"
            )
        if version < SCHEMA_VERSION:
            raise StoreError(
                f"saga log {path!r} has schema version {version}, older than this sagakit's "
                f"({SCHEMA_VERSION}); upgrade it with `{command_line(path, 'upgrade')}` "
                "(or open it once with a writable SQLiteStore)"
            )
        _probe(conn)


@contextlib.contextmanager
def _closed_on_failure(conn: sqlite3.Connection, path: str, *, writing: bool) -> Iterator[None]:
    """Close ``conn`` if opening the log in it fails; a database error as a :class:`StoreError`."""
    try:
        yield
    except StoreError:
        conn.close()
        raise
    except sqlite3.DatabaseError as error:
        conn.close()
        raise _unusable(path, error, writing=writing) from error


_DAMAGED = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def corrupt_log(path: str, error: sqlite3.Error) -> CorruptLog | None:
    """A :class:`CorruptLog` if SQLite's ``error`` says the log at ``path`` is damaged
    (``SQLITE_CORRUPT``: "database disk image is malformed") or not a database
    (``SQLITE_NOTADB``), by its error code, extended codes included; else ``None``.
    Opening the log, a read and a write of a running store all say it so."""
    code = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF
    return CorruptLog(path, str(error)) if code in _DAMAGED else None


def _unusable(path: str, error: sqlite3.DatabaseError, *, writing: bool) -> StoreError:
    """What to raise when SQLite fails to open the log (``writing``: to create or migrate it)."""
    if writing:
        code = getattr(error, "sqlite_errorcode", None) or 0
        if code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            # Creating the schema takes the write lock: a busy file is not a damaged one.
            return StoreError(
                f"saga log {path!r} is locked by another connection that kept its write "
                f"lock longer than busy_timeout ({error}); try again, or raise busy_timeout"
            )
        unwritable = _unwritable(path, error)
        if unwritable is not None:
            return StoreError(unwritable)
    return CorruptLog(path, str(error))


def stored_schema_version(conn: sqlite3.Connection) -> tuple[bool, Any]:
    """Whether the database has sagakit's meta table, and the row of the schema version
    stored in it (``None`` when there is none), as read: what it means is the caller's."""
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sagakit_meta'"
    ).fetchone()
    if found is None:
        return False, None
    row = conn.execute("SELECT value FROM sagakit_meta WHERE key = 'schema_version'").fetchone()
    return True, row


def _logged_version(conn: sqlite3.Connection, path: str) -> int | None:
    """The log's schema version, ``None`` for a file without the schema yet."""
    has_meta, row = stored_schema_version(conn)
    if not has_meta:
        return None
    try:
        version = int(row[0]) if row else 0
    except (TypeError, ValueError):
        raise StoreError(_no_valid_version(path, row)) from None
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"saga log {path!r} has schema version {version}, newer than this "
            f"sagakit understands ({SCHEMA_VERSION}); upgrade sagakit"
        )
    if version < 1:
        raise StoreError(_no_valid_version(path, row))
    return version


def _no_valid_version(path: str, row: Any) -> str:
    """What to say of a log whose ``sagakit_meta`` holds no schema version it can be at
    (``row``, as read: ``None`` where there is none); a library or a CLI user can act on it."""
    stored = "none stored" if not row else repr(row[0])
    return (
        f"saga log {path!r} has no valid schema version ({stored}): it is not a sagakit log, "
        "or it is damaged; check that it is the file your application's saga log is in, and "
        f"whether it is damaged (`sqlite3 {shlex.quote(path)} 'PRAGMA integrity_check'`), "
        "then restore it from a backup"
    )


def _probe(conn: sqlite3.Connection) -> None:
    """Fail now, not at the first read, if pages past the header are damaged."""
    conn.execute("SELECT id FROM sagakit_sagas ORDER BY id DESC LIMIT 1").fetchone()
    conn.execute("SELECT max(position) FROM sagakit_events").fetchone()


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    """Create the schema, or bring it to :data:`SCHEMA_VERSION` (in the caller's transaction)."""
    version = _logged_version(conn, path)
    current = 0 if version is None else version
    scripts = migrations()
    for number in range(current + 1, SCHEMA_VERSION + 1):
        for statement in scripts[number - 1]:
            conn.execute(statement)
    if version is None:
        conn.execute(
            "INSERT INTO sagakit_meta (key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )
    elif current < SCHEMA_VERSION:
        conn.execute(
            "UPDATE sagakit_meta SET value = ? WHERE key = 'schema_version'",
            (str(SCHEMA_VERSION),),
        )


LOG_MODE = 0o660
"""Permissions of a new log, less the umask's: never readable by other users."""


def create(path: str) -> None:
    """Create a log at ``path``, schema included, unless another process does first.

    ``sqlite3.connect`` creates an empty file, and the first write fills it in: another
    process opening the path in between found an empty file and refused it as truncated.
    The log is built under a temporary name next to it, then hard-linked into place.
    Where hard links fail for another reason than a file already there (a file system
    without them), it is renamed into place unless a file is there (Linux's
    ``renameat2(RENAME_NOREPLACE)``, macOS's ``renamex_np(RENAME_EXCL)``): a plain rename
    would replace a log another process created meanwhile, and maybe wrote to. Where
    neither works, the file is created empty in place, for its owner and group all the
    same, and :func:`connect` fills it in: there only, the empty-file race remains.
    """
    temporary = f"{path}.{os.getpid()}-{secrets.token_hex(4)}.new"
    try:
        # For its owner and group only (the group as the umask allows), not every user of
        # the machine: the log holds the sagas' arguments and results. SQLite gives its
        # WAL and shared-memory files the same permissions.
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, LOG_MODE))
        conn = sqlite3.connect(temporary, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")
            _migrate(conn, temporary)
            conn.execute("COMMIT")
        finally:
            conn.close()  # (the last connection: its WAL goes into the file)
        try:
            os.link(temporary, path)
        except FileExistsError:
            raise
        except OSError:  # no hard links here
            if not rename_no_replace(temporary, path):
                # Not even that: created empty, with the log's permissions (not SQLite's
                # default, readable by every user); the open below fills it in.
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, LOG_MODE))
    except (OSError, sqlite3.Error):
        pass  # FileExistsError: another process created it; else the open below does
    finally:
        for name in (temporary, f"{temporary}-wal", f"{temporary}-shm"):
            with contextlib.suppress(OSError):
                os.remove(name)


_AT_FDCWD = -100  # Linux: paths relative to the working directory
_RENAME_NOREPLACE = 1  # Linux renameat2()
_RENAME_EXCL = 0x4  # macOS renamex_np()
_UNSUPPORTED = frozenset(
    code
    for code in (
        getattr(errno, "EINVAL", None),
        getattr(errno, "ENOSYS", None),
        getattr(errno, "ENOTSUP", None),
        getattr(errno, "EOPNOTSUPP", None),
    )
    if code is not None
)


def rename_no_replace(source: str, target: str) -> bool:
    """Rename ``source`` to ``target`` atomically unless ``target`` exists
    (:class:`FileExistsError` then, ``target`` untouched). ``False``, with nothing renamed,
    where neither the C library nor the file system can do that."""
    import ctypes  # here: only where hard links fail

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - no C library to load (Windows)
        return False
    old, new = os.fsencode(source), os.fsencode(target)
    renameat2 = getattr(libc, "renameat2", None)  # Linux: glibc >= 2.28
    renamex_np = getattr(libc, "renamex_np", None)  # macOS >= 10.12
    if renameat2 is not None:
        renameat2.argtypes = [
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_uint,
        ]
        done = renameat2(_AT_FDCWD, old, _AT_FDCWD, new, _RENAME_NOREPLACE)
    elif renamex_np is not None:  # pragma: no cover - macOS
        renamex_np.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
        done = renamex_np(old, new, _RENAME_EXCL)
    else:  # pragma: no cover - another C library
        return False
    if done == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), target)


def prepare(conn: sqlite3.Connection, path: str) -> None:
    """Switch to WAL, create or check the schema; :class:`StoreError` on a bad file."""
    with _closed_on_failure(conn, path, writing=True):
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal" and path != ":memory:":
            raise StoreError(f"saga log {path!r} cannot use WAL journaling (got {mode!r})")
        # A log already up to date is only read (no write lock: another process may be
        # writing); creating or migrating one takes the write lock, and looks again under it.
        version = _logged_version(conn, path)
        if version is None or version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                _migrate(conn, path)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        _probe(conn)


__all__ = [
    "JOURNAL_SIZE_LIMIT",
    "SCHEMA_VERSION",
    "Synchronous",
    "check_file",
    "check_read_only",
    "connect",
    "corrupt_log",
    "connect_read_only",
    "create",
    "migrations",
    "prepare",
]
