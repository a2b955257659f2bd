"""Every script under examples/ runs and prints what it promises.

Files named ``test_*.py`` under examples/ are pytest examples, not scripts; they are
left to their own tests, as are the scripts in ``TESTED_ELSEWHERE``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ALL_SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith(("test_", "_")))

# script -> the test file that runs it and checks its output (it needs a PostgreSQL server).
TESTED_ELSEWHERE = {"postgres_workers.py": "test_postgres_example.py"}
SCRIPTS = [p for p in ALL_SCRIPTS if p.name not in TESTED_ELSEWHERE]

# Lines each example must print (in this order), beyond running cleanly.
EXPECTED: dict[str, list[str]] = {
    "bank_transfer.py": [
        "1. alice sends 100 to bob (completes)",
        "  event: Debited(account='alice', amount=100.0)",
        "  event: Credited(account='bob', amount=100.0)",
        "  balances: alice=400.00, bob=200.00, carol=0.00, dave=0.00",
        "  returned the recorded events: True",
        "  balances: alice=400.00, bob=200.00, carol=0.00, dave=0.00",
        "  failed at step 1 (credit): account carol is closed",
        "  compensation events: [DebitReversed(account='bob', amount=50.0)]",
        "  step 'credit' timed out after 0.2 s",
        "  compensation events: [DebitReversed(account='alice', amount=25.0)]",
        "  failed: InsufficientFundsError: bob has 200.00, needs 1000.00",
        "  compensation events: []",
        "  inside 'transfer-5' step 'audit': 1 saga running",
        "    transfer-5: executing, 1/3 steps",
        "  running now: 0",
        "  finished sagas in history: 5",
        "    transfer-1: completed (debit=completed, credit=completed)",
        "    transfer-2: compensated (debit=completed, credit=failed)",
        "    transfer-3: compensated (debit=completed, credit=timed_out)",
        "    transfer-4: compensated (debit=failed)",
        "  balances: alice=390.00, bob=210.00, carol=0.00, dave=0.00",
        "money in the bank: 600.00 (no money lost or created)",
    ],
    "order_saga.py": [
        "  event: InventoryReserved(order_id='order-1', sku='book', quantity=2)",
        "  event: PaymentCaptured(order_id='order-1', payment_id='pay-order-1', amount=30.0)",
        "  event: OrderShipped(order_id='order-1', tracking='track-order-1')",
        "  FAILED at 'ship': CourierUnavailableError: no courier for Oslo",
        "  compensated: PaymentRefunded(order_id='order-2', payment_id='pay-order-2', amount=15.0)",
        "  compensated: InventoryReleased(order_id='order-2', sku='book', quantity=1)",
        "  stock: {'book': 3, 'lamp': 1}, payments held: ['pay-order-1']",
        "  TIMED OUT: step 'ship' exceeded 0.2 s",
        "  compensated: ShipmentCancelled(order_id='order-3')",
        "  compensated: PaymentRefunded(order_id='order-3', payment_id='pay-order-3', amount=45.0)",
        "  compensated: InventoryReleased(order_id='order-3', sku='lamp', quantity=1)",
        "    payment gateway dropped the connection for order-4; retrying",
        "  event: OrderShipped(order_id='order-4', tracking='track-order-4')",
        "  FAILED at 'reserve_inventory': OutOfStockError: only 0 lamp(s) left, 1 wanted",
        "  running: 0",
        "  history: 5 finished orders",
        "    order-4: completed, 3 step(s) done, "
        "{'reserve_inventory': 1, 'process_payment': 2, 'ship': 1}",
        "  newest two: ['order-4', 'order-5']",
        "  order-3 compensations: ship=completed, process_payment=completed, "
        "reserve_inventory=completed",
    ],
    "durable_transfer.py": [
        "  child exit: SIGKILL",
        "  balances: alice=70, bob=30",
        "  credit transfer-1:1: already applied by the bank, not applied twice",
        "  transfer-1: resumed, now completed",
        "  step 0 debit: completed",
        "  step 1 credit: completed",
        "  balances: alice=70, bob=30",
        "  event: Debited(account='alice', amount=30)",
        "  event: Credited(account='bob', amount=30)",
        "saga transfer-1 (transfer): completed",
        "step  0  debit   completed  1         Debited(account='alice', amount=30)",
        "step  1  credit  completed  1         Credited(account='bob', amount=30)",
    ],
    "projection.py": [
        "  t2 failed: account closed",
        "  #1 t1 step debit: Debited(account='alice', amount=30)",
        "  #2 t1 step credit: Credited(account='bob', amount=30)",
        "  #3 t2 step debit: Debited(account='alice', amount=5)",
        "  #4 t2 compensation debit: DebitReversed(account='alice', amount=5)",
        "  applied 4 events; position 4",
        "  net movements: alice=-30, bob=30",
        "  applied 2 events; position 6",
        "  applied 0 events on a second call",
        "  net movements: alice=-30, bob=20, carol=10",
        "  #3: Debited(account='alice', amount=5)",
        "  #4: DebitReversed(account='alice', amount=5)",
    ],
    "nested_sagas.py": [
        "    authorize 30 (order-1:1/payment:0)",
        "    capture 30 (order-1:1/payment:1)",
        "  order-1:1/payment (payment): completed [authorize=completed, capture=completed]",
        "  simulated crash at step 'capture'",
        "    reserve order-2",
        "    authorize 40 (order-2:1/payment:0)",
        "  order-2 (place_order): executing [reserve=completed, pay=running]",
        "  order-2:1/payment (payment): executing [authorize=completed, capture=running]",
        "  recovered order-2: resumed, now completed",
        "    capture 40 (order-2:1/payment:1)",
        "    ship order-2",
        "  order-2 (place_order): completed [reserve=completed, pay=completed, ship=completed]",
        "  order-2:1/payment (payment): completed [authorize=completed, capture=completed]",
        "  a second recover() finds: []",
        "  failed at 'ship': no courier today",
        "    refund 50 (order-3:1)",
        "    unreserve order-3",
        "  order-3 (place_order): compensated [reserve=completed, pay=completed, ship=failed]",
        "  order-3:1/payment (payment): completed [authorize=completed, capture=completed]",
    ],
    "operating_a_log.py": [
        "  recover(): nothing it could run",
        "  parked: transfer-7 (executing, 2 attempts): none of its 2 recovery attempts "
        "finished it: each time its process died or was stopped (max_attempts=2)",
        "  parked: transfer-8 (executing, 2 attempts): none of its 2 recovery attempts "
        "finished it: each time its process died or was stopped (max_attempts=2)",
        "  $ sagakit --db sagas.db dead-letters",
        "  (release is for a saga whose owner is gone, not a dead letter: it refuses)",
        "  $ sagakit --db sagas.db release transfer-7",
        "    (exit status 1)",
        "  $ sagakit --db sagas.db resume transfer-7",
        "    saga transfer-7 will be recovered by the next `sagakit recover`",
        "  recovered transfer-7: resumed, now completed",
        "    saga transfer-8 marked resolved",
        "    saga transfer-8 (transfer): failed",
        "    error: resolved by an operator: refunded alice by hand (was: none of its 2 "
        "recovery attempts finished it: each time its process died or was stopped "
        "(max_attempts=2))",
        "    step  1  credit  failed     1         "
        "interrupted; the saga was resolved by an operator",
        "  transfer-8 ran again: [Debited(account='alice', amount=20), "
        "Credited(account='mallory', amount=20)]",
        "  listener: saga_stopped transfer-9 (executing)",
        "    error: CancelledError: recovery was cancelled; the next recovery finishes the saga",
        "  after the cancellation transfer-9 is still executing in the log",
        "  listener: saga_finished transfer-9 (completed)",
        "  recovered transfer-9: resumed, now completed",
        "  transfer-7: completed, 2/2 steps",
        "  resolve on a read-only store: StoreError: saga log 'sagas.db' is opened read-only; "
        "open a SQLiteStore without read_only=True to write it",
        "  $ sagakit --db sagas.db list",
    ],
    "tracing.py": [
        "transfer-1 failed at 'send_receipt': smtp down",
        "  saga transfer: ERROR 'saga ended compensated'",
        "    step debit: OK [attempts=1]",
        "    step credit: OK [attempts=2, exception, sagakit.retry, bank.account=bob]",
        "    step send_receipt: ERROR 'ConnectionRefusedError: smtp down' [attempts=1, exception]",
        "    compensate credit: OK [attempts=1]",
        "    compensate debit: OK [attempts=1]",
        "saga span attributes: {'sagakit.saga.id': 'transfer-1', 'sagakit.saga.name': 'transfer', "
        "'sagakit.saga.status': 'compensated'}",
    ],
}


def run_script(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # A coroutine never awaited (a RuntimeWarning) fails the example.
    env = {**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"}
    return subprocess.run(
        [sys.executable, str(path)],
        cwd=cwd,  # a temporary directory: nothing an example writes lands in the repo
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.name != "__pycache__"}


def test_the_main_examples_exist() -> None:
    names = {p.name for p in SCRIPTS}
    assert set(EXPECTED) <= names


def test_every_example_script_has_its_output_checked() -> None:
    # A new example needs lines in EXPECTED (or a test of its own): exit code 0 is not enough.
    unchecked = {p.name for p in ALL_SCRIPTS} - set(EXPECTED) - set(TESTED_ELSEWHERE)
    assert not unchecked, f"add the lines these examples must print to EXPECTED: {unchecked}"
    for script, test_file in TESTED_ELSEWHERE.items():
        assert script in (Path(__file__).parent / test_file).read_text(encoding="utf-8")


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_example_script_runs(path: Path, tmp_path: Path) -> None:
    before = _files(EXAMPLES)
    result = run_script(path, tmp_path)

    assert result.returncode == 0, f"{path.name} failed:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.strip(), f"{path.name} printed nothing"
    # Run from another directory, it leaves nothing there (no sagas.db in the user's folder),
    # nor next to itself in the repository.
    assert list(tmp_path.iterdir()) == []
    assert _files(EXAMPLES) == before

    expected = EXPECTED[path.name]
    lines = result.stdout.splitlines()
    position = 0
    for line in expected:
        assert line in lines[position:], (
            f"{path.name}: missing (in order) {line!r}\n{result.stdout}"
        )
        position = lines.index(line, position) + 1


def test_the_tracing_example_without_the_sdk_says_what_to_install(tmp_path: Path) -> None:
    # The sagakit[otel] extra installs the OpenTelemetry API only; the example stopped
    # with a bare ModuleNotFoundError traceback without the SDK.
    blocked = (
        "import runpy, sys; sys.modules['opentelemetry.sdk.trace'] = None; "
        "runpy.run_path(sys.argv[1], run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", blocked, str(EXAMPLES / "tracing.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(
        "this example needs the OpenTelemetry SDK (opentelemetry.sdk.trace is missing): "
        "pip install opentelemetry-sdk"
    ), result.stderr
    assert "Traceback" not in result.stderr
