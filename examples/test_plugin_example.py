"""Testing a saga with the sagakit pytest plugin (installed with sagakit; nothing to register).

Run it with ``pytest examples/test_plugin_example.py`` (pytest-asyncio in strict mode:
async tests carry ``@pytest.mark.asyncio``).

Fixtures used here:
  saga_orchestrator  a fresh orchestrator per test on saga_store, reporting to saga_recorder
                     and sleeping with saga_sleep (retry backoff without waiting)
  saga_store         its store: in memory, unless a conftest.py overrides the fixture to run
                     these tests on SQLite or PostgreSQL (see docs/testing.md)
  saga_recorder      the ordered trail of every run, with assert_* helpers
  saga_faults        a fault injector active for this test only
  saga_sleep         the instant sleep: .delays lists the backoff that was skipped
  saga_fault_matrix  await it with a saga: every step fails, then times out, once each

The last test simulates a crash of the process right after ``credit`` acted, and
checks that recovery from the SQLite saga log finishes the transfer once.

Options (marker keyword > command line > ini file):
  @pytest.mark.saga_fault_matrix(timeouts=False)   this test only
  --saga-matrix-timeouts=no / saga_matrix_timeouts = false
  --saga-instant-sleep=no / saga_instant_sleep = false   (really wait between retries)
  @pytest.mark.saga_faults(strict=True)            a fault that never fired fails the test
                                                   (set for this whole module below)
  --saga-strict-faults=yes / saga_strict_faults = true   (off by default)
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    Retry,
    SagaOrchestrator,
    SagaStatus,
    SQLiteStore,
    StepCall,
    StepFailed,
    StepTimeout,
    current_step,
    saga,
    step,
)
from sagakit.pytest_plugin import FaultMatrix
from sagakit.testing import (
    FaultInjector,
    InstantSleep,
    SagaRecorder,
    SimulatedCrash,
    simulate_restart,
)

# Every fault a test here injects must fire: a step renamed later would otherwise leave a
# fault that hits nothing, and a test that may pass without the failure it is about.
pytestmark = pytest.mark.saga_faults(strict=True)


@dataclass(frozen=True)
class Debited:
    account: str
    amount: int


@dataclass(frozen=True)
class Credited:
    account: str
    amount: int


class InsufficientFundsError(Exception):
    pass


balances = {"alice": 100, "bob": 0}
credited: set[str] = set()  # the idempotency keys the bank has applied


@step
async def debit(account: str, amount: int) -> Debited:
    if balances[account] < amount:
        raise InsufficientFundsError(account)
    balances[account] -= amount
    return Debited(account, amount)


@debit.compensate
async def refund(account: str, amount: int) -> None:
    balances[account] += amount


@step(retry=Retry(attempts=3, backoff=2.0, jitter=0, on=ConnectionError))
async def credit(account: str, amount: int) -> Credited:
    context = current_step()
    assert context is not None
    if context.idempotency_key not in credited:  # the bank applies each key once
        credited.add(context.idempotency_key)
        balances[account] += amount
    return Credited(account, amount)


@credit.compensate
async def take_back(account: str, amount: int) -> None:
    balances[account] -= amount


@step
async def send_receipt(account: str, amount: int) -> None:
    return None


@saga
def transfer(source: str, target: str, amount: int) -> Generator[StepCall[Any], Any, None]:
    yield debit(source, amount)
    yield credit(target, amount)
    yield send_receipt(source, amount)


@pytest.fixture(autouse=True)
def _fresh_balances() -> None:
    balances.update(alice=100, bob=0)
    credited.clear()


@pytest.mark.asyncio
async def test_transfer_completes(
    saga_orchestrator: SagaOrchestrator, saga_recorder: SagaRecorder
) -> None:
    events = await saga_orchestrator.execute(transfer("alice", "bob", 30))
    assert events == [Debited("alice", 30), Credited("bob", 30)]
    saga_recorder.assert_status(SagaStatus.COMPLETED)
    saga_recorder.assert_completed("debit", "credit", "send_receipt")


@pytest.mark.asyncio
async def test_a_failing_receipt_undoes_the_transfer(
    saga_orchestrator: SagaOrchestrator, saga_recorder: SagaRecorder, saga_faults: FaultInjector
) -> None:
    saga_faults.fail(send_receipt, ConnectionRefusedError("smtp down"))
    with pytest.raises(StepFailed):
        await saga_orchestrator.execute(transfer("alice", "bob", 30))
    saga_recorder.assert_compensated("credit", "debit")
    saga_recorder.assert_status(SagaStatus.COMPENSATED)
    assert balances == {"alice": 100, "bob": 0}


@pytest.mark.asyncio
async def test_credit_retries_without_waiting(
    saga_orchestrator: SagaOrchestrator, saga_faults: FaultInjector, saga_sleep: InstantSleep
) -> None:
    saga_faults.fail("credit", ConnectionError("bank busy"), times=2)
    await saga_orchestrator.execute(transfer("alice", "bob", 30))
    assert saga_sleep.delays == [2.0, 4.0]  # six seconds of backoff, skipped
    assert balances == {"alice": 70, "bob": 30}


@pytest.mark.asyncio
async def test_a_timeout_without_waiting(
    saga_orchestrator: SagaOrchestrator, saga_recorder: SagaRecorder, saga_faults: FaultInjector
) -> None:
    saga_faults.timeout(send_receipt)  # times out at once, whatever its timeout is
    with pytest.raises(StepTimeout):
        await saga_orchestrator.execute(transfer("alice", "bob", 30))
    saga_recorder.assert_compensated("credit", "debit")
    assert balances == {"alice": 100, "bob": 0}


@pytest.mark.asyncio
async def test_every_failure_of_transfer_is_compensated(saga_fault_matrix: FaultMatrix) -> None:
    report = await saga_fault_matrix(transfer("alice", "bob", 30))
    assert len(report.cases) == 6  # three steps, each failing and timing out


@pytest.mark.saga_fault_matrix(timeouts=False)
@pytest.mark.asyncio
async def test_failures_only(saga_fault_matrix: FaultMatrix) -> None:
    report = await saga_fault_matrix(transfer("alice", "bob", 30))
    assert {case.mode for case in report.cases} == {"fail"}


@pytest.mark.asyncio
async def test_a_crash_after_credit_is_finished_by_recovery(
    tmp_path: Path, saga_faults: FaultInjector
) -> None:
    store = SQLiteStore(tmp_path / "sagas.db")
    saga_faults.crash(credit, after=True)  # credit acts, then the process "dies"
    with pytest.raises(SimulatedCrash):
        await SagaOrchestrator(store).execute(transfer("alice", "bob", 30).with_id("t-1"))
    assert balances == {"alice": 70, "bob": 30}  # the log still says credit is running
    await simulate_restart(store)  # this "process" is gone
    await store.close()

    async with SagaOrchestrator(SQLiteStore(tmp_path / "sagas.db")) as restarted:
        outcomes = await restarted.recover()  # runs credit again, same idempotency key
        assert [(o.saga_id, o.action, o.status) for o in outcomes] == [
            ("t-1", "resumed", SagaStatus.COMPLETED)
        ]
        events = await restarted.execute(transfer("alice", "bob", 30), saga_id="t-1")
    assert events == [Debited("alice", 30), Credited("bob", 30)]  # recorded, not re-run
    assert balances == {"alice": 70, "bob": 30}  # credited once
