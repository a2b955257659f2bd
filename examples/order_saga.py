"""Order saga: reserve inventory, process the payment (10 s timeout), ship.

Shows an order that completes, one whose shipping fails (the payment is refunded
and the stock released, in reverse order), one whose courier hangs (a timeout:
the shipment itself is cancelled too, since its effect is unknown), a payment
gateway that needs a retry, and the monitoring calls. The refund compensation
takes the ``PaymentCaptured`` event that ``process_payment`` returned, followed by
the step's arguments. Events are frozen dataclasses, in the style of eventsourcing.

Run it with ``python examples/order_saga.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from sagakit import (
    Retry,
    SagaOrchestrator,
    StepCall,
    StepFailed,
    StepTimeout,
    saga,
    step,
)

PAYMENT_TIMEOUT = 10.0  # seconds the payment gateway may take
COURIER_TIMEOUT = 0.2  # small, so the timeout case runs fast

# ---------------------------------------------------------------- domain events


@dataclass(frozen=True)
class InventoryReserved:
    order_id: str
    sku: str
    quantity: int


@dataclass(frozen=True)
class InventoryReleased:
    order_id: str
    sku: str
    quantity: int


@dataclass(frozen=True)
class PaymentCaptured:
    order_id: str
    payment_id: str
    amount: float


@dataclass(frozen=True)
class PaymentRefunded:
    order_id: str
    payment_id: str
    amount: float


@dataclass(frozen=True)
class OrderShipped:
    order_id: str
    tracking: str


@dataclass(frozen=True)
class ShipmentCancelled:
    order_id: str


class OutOfStockError(Exception):
    """Not enough items in the warehouse."""


class CourierUnavailableError(Exception):
    """No courier can take the parcel."""


# ---------------------------------------------------------------- fake services


stock: dict[str, int] = {}
payments: dict[str, float] = {}  # payment id -> captured amount
gateway_failures: list[str] = []  # order ids whose next payment attempt fails once
courier: dict[str, str] = {}  # order id -> "ok", "down" or "hangs"


def reset_services() -> None:
    stock.clear()
    stock.update({"book": 5, "lamp": 1})
    payments.clear()
    gateway_failures.clear()
    courier.clear()


# ---------------------------------------------------------------- steps


@step
async def reserve_inventory(order_id: str, sku: str, quantity: int) -> InventoryReserved:
    await asyncio.sleep(0)
    if stock[sku] < quantity:
        raise OutOfStockError(f"only {stock[sku]} {sku}(s) left, {quantity} wanted")
    stock[sku] -= quantity
    return InventoryReserved(order_id, sku, quantity)


@reserve_inventory.compensate
async def release_inventory(order_id: str, sku: str, quantity: int) -> InventoryReleased:
    stock[sku] += quantity
    return InventoryReleased(order_id, sku, quantity)


@step(timeout=PAYMENT_TIMEOUT, retry=Retry(attempts=3, backoff=0.01, on=ConnectionError))
async def process_payment(order_id: str, amount: float) -> PaymentCaptured:
    """Capture the payment; the event carries the payment id."""
    await asyncio.sleep(0)
    if order_id in gateway_failures:
        gateway_failures.remove(order_id)
        print(f"    payment gateway dropped the connection for {order_id}; retrying")
        raise ConnectionError("payment gateway connection reset")
    payment_id = f"pay-{order_id}"
    payments[payment_id] = amount
    return PaymentCaptured(order_id, payment_id, amount)


@process_payment.compensate
async def refund_payment(
    captured: PaymentCaptured | None, order_id: str, amount: float
) -> PaymentRefunded | None:
    """Result-first form: refund exactly the payment that was captured."""
    if captured is None:  # only when the payment step itself timed out
        return None
    del payments[captured.payment_id]
    return PaymentRefunded(order_id, captured.payment_id, captured.amount)


@step(timeout=COURIER_TIMEOUT)
async def ship(order_id: str, address: str) -> OrderShipped:
    mode = courier.get(order_id, "ok")
    if mode == "hangs":
        await asyncio.sleep(60)
    if mode == "down":
        raise CourierUnavailableError(f"no courier for {address}")
    return OrderShipped(order_id, f"track-{order_id}")


@ship.compensate
async def cancel_shipment(order_id: str, address: str) -> ShipmentCancelled:
    """Runs when shipping timed out: whether the courier took the parcel is unknown."""
    return ShipmentCancelled(order_id)


@saga
def place_order(
    order_id: str, sku: str, quantity: int, amount: float, address: str
) -> Generator[StepCall[Any], Any, None]:
    yield reserve_inventory(order_id, sku, quantity)
    captured = yield process_payment(order_id, amount)
    print(f"    captured {captured.payment_id}")
    yield ship(order_id, address)


async def run_order(orchestrator: SagaOrchestrator, order_id: str, *args: Any) -> None:
    try:
        events = await orchestrator.execute(place_order(order_id, *args), saga_id=order_id)
    except StepTimeout as error:
        print(f"  TIMED OUT: step {error.step_name!r} exceeded {error.timeout:g} s")
        for event in error.compensation_events:
            print(f"  compensated: {event}")
    except StepFailed as error:
        print(f"  FAILED at {error.step_name!r}: {type(error.error).__name__}: {error.error}")
        for event in error.compensation_events:
            print(f"  compensated: {event}")
    else:
        for event in events:
            print(f"  event: {event}")
    print(f"  stock: {dict(sorted(stock.items()))}, payments held: {sorted(payments)}")


async def main() -> None:
    reset_services()
    orchestrator = SagaOrchestrator()
    print("sagakit order saga example")

    print("\n1. order-1: 2 books to Paris (completes)")
    await run_order(orchestrator, "order-1", "book", 2, 30.0, "Paris")

    print("\n2. order-2: the courier is down (payment refunded, stock released)")
    courier["order-2"] = "down"
    await run_order(orchestrator, "order-2", "book", 1, 15.0, "Oslo")

    print("\n3. order-3: the courier hangs (timeout; shipment cancelled, refund, release)")
    courier["order-3"] = "hangs"
    await run_order(orchestrator, "order-3", "lamp", 1, 45.0, "Rome")

    print("\n4. order-4: the payment gateway drops once (retried, completes)")
    gateway_failures.append("order-4")
    await run_order(orchestrator, "order-4", "lamp", 1, 45.0, "Lima")

    print("\n5. order-5: out of stock (nothing to undo)")
    await run_order(orchestrator, "order-5", "lamp", 1, 45.0, "Kyiv")

    print("\n6. monitoring")
    print(f"  running: {await orchestrator.running_count()}")
    print(f"  history: {await orchestrator.history_count()} finished orders")
    for meta in await orchestrator.get_history():
        attempts = {r.name: r.attempts for r in meta.steps}
        print(f"    {meta.id}: {meta.status}, {meta.steps_executed} step(s) done, {attempts}")
    last_two = await orchestrator.get_history(limit=2)
    print(f"  newest two: {[m.id for m in last_two]}")
    order3 = await orchestrator.get_saga("order-3")
    assert order3 is not None
    undone = [f"{r.name}={r.status}" for r in order3.compensations]
    print(f"  order-3 compensations: {', '.join(undone)}")


if __name__ == "__main__":
    asyncio.run(main())
