"""PostgreSQL: a generated-id saga none of whose writes reached the log, its end too.

A generated id's row goes out with step 0's start. When the server refuses that write
(rolled back) and then the saga's end, which carries the row again, nothing of the saga
is in the log: the warning and the note on the error must say so, not that the log
still shows it running, left for recovery.
"""

from __future__ import annotations

import logging

import pytest

from pg_helpers.db import opened, query
from sagakit import SagaOrchestrator, StoreError, saga, step
from store_helpers.unwritten import assert_told_nothing_logged

RAN: list[int] = []


@step
async def act(n: int) -> int:
    RAN.append(n)
    return n


@saga
def one(n: int):  # type: ignore[no-untyped-def]
    yield act(n)


def _refuse_new_rows(dsn: str, schema: str) -> None:
    """Make the server refuse (and roll back) every statement inserting a saga's row."""
    query(
        dsn,
        f'CREATE FUNCTION "{schema}".refuse() RETURNS trigger LANGUAGE plpgsql AS '
        "$$ BEGIN RAISE EXCEPTION 'no space left on device (injected)'; END $$",
    )
    query(
        dsn,
        f'CREATE TRIGGER refuse BEFORE INSERT ON "{schema}".sagas '
        f'FOR EACH ROW EXECUTE FUNCTION "{schema}".refuse()',
    )


@pytest.mark.asyncio
async def test_a_saga_with_nothing_in_the_log_is_not_said_left_for_recovery(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The warning said "the log still shows it running, left for recovery", and the
    # note that get_saga() tells how it ends, with nothing of it in the log to recover.
    RAN.clear()
    async with opened(dsn, schema) as store:
        _refuse_new_rows(dsn, schema)
        caplog.set_level(logging.WARNING, logger="sagakit")
        with pytest.raises(StoreError, match="no space left") as raised:
            await SagaOrchestrator(store).execute(one(1))
        assert await store.list_sagas() == []
    assert RAN == []  # its start unrecorded, step 0 never ran
    assert query(dsn, f'SELECT saga_id FROM "{schema}".sagas') == []
    assert_told_nothing_logged(caplog, raised.value)
