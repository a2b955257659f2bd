"""A PostgreSQL password never reaches an error message, a traceback or the CLI's output.

libpq repeats a piece of a connection string it cannot parse: a percent-encoded token
of the password, the whole URL, a word of a password written unquoted. The
``StoreError`` of ``PostgresStore.open()`` and the CLI's "cannot connect" message
quoted it, and chained the driver's error that held it; the CLI took a libpq key=value
string for a SQLite file path and printed it in "no saga log at ...". None of these
needs a server: libpq refuses the strings before connecting.
"""

from __future__ import annotations

import traceback

import pytest

from sagakit import StoreError
from sagakit.cli import main
from sagakit.stores._dsn import redacted

pytest.importorskip("psycopg")

SECRET = "S3cr3t"

UNPARSABLE = [
    # (connection string, what the message still says)
    (f"postgresql://app:{SECRET}%zz@127.0.0.1:1/db", "invalid percent-encoded token"),
    (f"postgresql://app:{SECRET}@[::1/db", 'matching "]" in IPv6 host address'),
    (f"host=127.0.0.1 port=1 password={SECRET} word", 'missing "=" after'),
    (f"host=127.0.0.1 port=1 password=pw {SECRET}", 'missing "=" after'),
]


def _everything_printed(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


@pytest.mark.asyncio
@pytest.mark.parametrize(("dsn", "kept"), UNPARSABLE)
async def test_the_store_error_does_not_repeat_the_password(dsn: str, kept: str) -> None:
    from sagakit import PostgresStore

    store = PostgresStore(dsn, connect_timeout=5)
    with pytest.raises(StoreError) as raised:
        await store.open()
    await store.close()
    assert kept in str(raised.value)  # still says what is wrong
    assert "***" in str(raised.value)
    assert SECRET not in _everything_printed(raised.value)
    assert raised.value.__context__ is None  # nor holds the driver's error that has it
    assert SECRET not in repr(store)


@pytest.mark.parametrize(("dsn", "kept"), UNPARSABLE[:2])
def test_the_cli_does_not_print_the_password(
    dsn: str, kept: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--db", dsn, "list"]) == 1
    printed = capsys.readouterr()
    assert kept in printed.err
    assert SECRET not in printed.out + printed.err


def test_the_cli_refuses_a_key_value_connection_string_without_repeating_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["--db", f"host=db.internal password={SECRET} dbname=app", "list"])
    printed = capsys.readouterr()
    assert "not a key=value connection string" in printed.err
    assert "postgresql://USER:PASSWORD@HOST:PORT/DBNAME" in printed.err
    assert SECRET not in printed.out + printed.err


@pytest.mark.parametrize(
    ("dsn", "message", "expected"),
    [
        ("postgresql://a:pw%zz@h/d", 'token: "pw%zz"', 'token: "***"'),
        ("postgresql://a:p/w@h/d", 'value "p" for option "port"', 'value "***" for option "port"'),
        (
            "postgresql://h/d?sslmode=x&password=pw",
            "bad: postgresql://h/d?sslmode=x&password=pw",
            "bad: ***",
        ),
        ("host=h password='p w", "unterminated", "unterminated"),
        ("host=h password='p w' port=x", 'bad "p w"', 'bad "***"'),
        # Nothing secret: the message is kept as it is.
        ("postgresql://app@h:5432x/d", 'integer value "5432x"', 'integer value "5432x"'),
        ("host=h port=x", 'invalid integer value "x"', 'invalid integer value "x"'),
    ],
)
def test_redacted(dsn: str, message: str, expected: str) -> None:
    assert redacted(message, dsn) == expected
