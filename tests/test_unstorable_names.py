"""Step and saga names that no saga log can store are refused when declared.

A name holding a NUL character or a lone surrogate (an undecodable byte of a file
name, say) was accepted, and each store failed its own way when it came to write it:
PostgreSQL refused the record, leaving the saga ``compensating`` in the log for good
(its compensation records named the step too); SQLite raised a bare
``UnicodeEncodeError`` from ``execute()`` for a saga name, a ``StoreError`` for a step
name, and stored a NUL that PostgreSQL would refuse. Declaring either is now a
``SagaDefinitionError`` saying which character, on every store alike.
"""

from __future__ import annotations

from typing import Any

import pytest

from sagakit import SagaDefinition, SagaDefinitionError, saga, step

UNSTORABLE = [
    pytest.param("ship\x00it", "a NUL character", id="nul"),
    pytest.param("ship\udcff", "a lone surrogate", id="surrogate"),
]


async def _ship(item: str) -> str:
    return item


@pytest.mark.parametrize(("name", "problem"), UNSTORABLE)
def test_a_step_name_a_log_cannot_store_is_refused(name: str, problem: str) -> None:
    with pytest.raises(SagaDefinitionError, match=rf"@step\(name=\.\.\.\) .*{problem}"):
        step(name=name)(_ship)


@pytest.mark.parametrize(("name", "problem"), UNSTORABLE)
def test_a_function_name_a_log_cannot_store_is_refused(name: str, problem: str) -> None:
    async def renamed(item: str) -> str:
        return item

    renamed.__name__ = name
    with pytest.raises(SagaDefinitionError, match=problem):
        step(renamed)


@pytest.mark.parametrize(("name", "problem"), UNSTORABLE)
def test_a_saga_name_a_log_cannot_store_is_refused(name: str, problem: str) -> None:
    def order(item: str) -> Any:
        yield ship(item)

    with pytest.raises(SagaDefinitionError, match=rf"@saga\(name=\.\.\.\) .*{problem}"):
        saga(name=name)(order)
    with pytest.raises(SagaDefinitionError, match=rf"SagaDefinition\(name=\.\.\.\) .*{problem}"):
        SagaDefinition(name=name)


@step
async def ship(item: str) -> str:
    return item


def test_other_unicode_names_are_kept() -> None:
    # Anything else a log stores as it is: accents, emoji, right-to-left text.
    for name in ("expédier", "📦 ship", "שלח", "a'; DROP TABLE sagas;--"):
        assert step(name=name)(_ship).name == name
        assert SagaDefinition(name=name).name == name
