"""Executing a completed saga id again returns its recorded events, read back exactly.

The idempotent ``execute()`` of a completed id read its events as monitoring does,
where a value the reading process cannot decode (its codec not registered, its class
gone, a pickle without ``allow_pickle``) shows as its raw JSON: the caller got
``[{"__sk__": "codec", "t": "money", "v": "5"}]`` back as if it were the step's event.
It raises a ``SerializationError`` naming the step instead; monitoring still shows the
raw JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from sagakit import Codec, JsonSerializer, SagaOrchestrator, SerializationError, saga, step

pytestmark = pytest.mark.asyncio


class Money:
    def __init__(self, amount: Decimal) -> None:
        self.amount = amount

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and other.amount == self.amount


MONEY = Codec(Money, "completed_strict.money", lambda m: str(m.amount), lambda v: Money(Decimal(v)))


@step
async def cs_pay(amount: int) -> Money:
    return Money(Decimal(amount))


@saga(name="completed_strict.pay")
def pay(amount: int) -> Any:
    yield cs_pay(amount)


async def test_an_undecodable_event_of_a_completed_id_is_refused(
    durable_store: Callable[..., Any],
) -> None:
    writer = SagaOrchestrator(durable_store(serializer=JsonSerializer(codecs=[MONEY])))
    try:
        assert await writer.execute(pay(5), saga_id="strict-1") == [Money(Decimal(5))]
    finally:
        await writer.close()

    store = durable_store()  # the codec is not registered here
    reader = SagaOrchestrator(store)
    try:
        with pytest.raises(SerializationError, match=r"cs_pay.*codec 'completed_strict.money'"):
            await reader.execute(pay(5), saga_id="strict-1")
        # Monitoring still shows what it cannot decode as its raw JSON.
        shown = await store.get("strict-1")
        assert shown is not None
        assert shown.events[0]["t"] == "completed_strict.money"
        # The same process, with the codec, gets the events back.
        again = SagaOrchestrator(durable_store(serializer=JsonSerializer(codecs=[MONEY])))
        try:
            assert await again.execute(pay(5), saga_id="strict-1") == [Money(Decimal(5))]
        finally:
            await again.close()
    finally:
        await reader.close()
