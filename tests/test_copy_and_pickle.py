"""Steps, saga functions and definitions survive copy, deepcopy and pickle.

A step is a function to its users, and functions copy as themselves and pickle by
reference; a definition is plain data. All of these raised wrapt's
"object proxy must define __reduce__()" (or, for copy.copy of a definition,
"SagaDefinition is immutable").
"""

from __future__ import annotations

import asyncio
import copy
import pickle
import traceback
from typing import Any

import pytest

from sagakit import SagaDefinition, SagaOrchestrator, saga, step
from sagakit.stores import CommittedThenCancelled
from sagakit.testing import InjectedFault, SimulatedCrash


@step(timeout=7)
async def cp_debit(account: str, amount: int) -> list[str]:
    return [f"debited {amount} from {account}"]


@cp_debit.compensate
async def cp_undo_debit(account: str, amount: int) -> list[str]:
    return [f"credited {amount} to {account}"]


@saga
def cp_transfer(account: str, amount: int):  # type: ignore[no-untyped-def]
    yield cp_debit(account, amount)


@saga
def cp_transfer_list(account: str, amount: int):  # type: ignore[no-untyped-def]
    return [cp_debit(account, amount)]


class CpBank:
    def __init__(self, name: str) -> None:
        self.name = name

    @step
    async def withdraw(self, amount: int) -> str:
        return f"{self.name}-{amount}"


@pytest.mark.parametrize("duplicate", [copy.copy, copy.deepcopy])
def test_a_step_and_a_saga_function_copy_as_themselves(duplicate: Any) -> None:
    assert duplicate(cp_debit) is cp_debit
    assert duplicate(CpBank.__dict__["withdraw"]) is CpBank.__dict__["withdraw"]
    assert duplicate(cp_transfer) is cp_transfer


def test_a_step_and_a_saga_function_pickle_by_reference() -> None:
    assert pickle.loads(pickle.dumps(cp_debit)) is cp_debit
    method_step = CpBank.__dict__["withdraw"]
    assert pickle.loads(pickle.dumps(method_step)) is method_step
    assert pickle.loads(pickle.dumps(cp_transfer)) is cp_transfer


def test_a_local_step_is_refused_by_pickle_with_its_name() -> None:
    @step
    async def local(x: int) -> int:
        return x

    with pytest.raises(pickle.PicklingError, match="step 'local'"):
        pickle.dumps(local)


def test_a_definition_copies() -> None:
    definition = SagaDefinition("cp-1").add_step(cp_debit("A", 1))
    assert copy.copy(definition) is definition  # immutable
    deep = copy.deepcopy(definition)
    assert deep.saga_id == "cp-1"
    assert deep.steps is not None
    assert [(c.step, c.args) for c in deep.steps] == [(cp_debit, ("A", 1))]


@pytest.mark.parametrize(
    "make",
    [
        lambda: SagaDefinition("cp-2").add_step(cp_debit("A", 2)),
        lambda: cp_transfer_list("A", 2).with_id("cp-2"),
        lambda: cp_transfer("A", 2).with_id("cp-2"),
    ],
)
def test_a_definition_pickles_and_runs(make: Any) -> None:
    definition = make()
    loaded = pickle.loads(pickle.dumps(definition))
    assert (loaded.name, loaded.saga_id, loaded.factory) == (
        definition.name,
        definition.saga_id,
        definition.factory,
    )
    assert (loaded.args, loaded.kwargs, loaded.recovery) == (
        definition.args,
        definition.kwargs,
        definition.recovery,
    )
    if definition.steps is not None:
        assert loaded.steps is not None
        assert [(c.step, c.args) for c in loaded.steps] == [
            (c.step, c.args) for c in definition.steps
        ]
    assert asyncio.run(SagaOrchestrator().execute(loaded)) == ["debited 2 from A"]


def test_a_method_step_call_pickles_with_its_instance() -> None:
    call = CpBank("north").withdraw(5)
    loaded = pickle.loads(pickle.dumps(call))
    assert loaded.step is call.step
    assert loaded.instance.name == "north"
    assert loaded.args == (5,)
    assert asyncio.run(SagaOrchestrator().execute(SagaDefinition("cp-3").add_step(loaded))) == [
        "north-5"
    ]


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (SimulatedCrash("crash"), "sagakit.testing.SimulatedCrash: crash"),
        (InjectedFault("boom"), "sagakit.testing.InjectedFault: boom"),
        (CommittedThenCancelled(7), "sagakit.stores.CommittedThenCancelled"),
    ],
)
def test_public_errors_of_private_modules_are_named_where_they_are_imported_from(
    error: BaseException, shown: str
) -> None:
    # Regression: tracebacks (and pytest) showed sagakit._hooks.SimulatedCrash,
    # sagakit.testing._faults.InjectedFault and sagakit.stores._protocol.CommittedThenCancelled,
    # private modules, rather than where they are imported from.
    assert traceback.format_exception_only(error)[-1].strip() == shown
    copied = pickle.loads(pickle.dumps(error))
    assert type(copied) is type(error)
    assert copied.args == error.args
    assert getattr(copied, "result", None) == getattr(error, "result", None)
