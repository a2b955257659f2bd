"""Several worker processes sharing one PostgreSQL saga log: crashes, pauses, races, load.

Each test gets its own schema. Steps log their effects in ``<schema>.effects``
(outside the saga log), so the tests count how often each step really ran.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from pg_helpers.db import Worker, query, wait_until

pytestmark = pytest.mark.skipif(
    not os.environ.get("SAGAKIT_TEST_POSTGRES_DSN"),
    reason="PostgreSQL tests need SAGAKIT_TEST_POSTGRES_DSN "
    "(e.g. postgresql://postgres@127.0.0.1:5432/test)",
)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        if worker.proc.poll() is None:
            os.kill(worker.proc.pid, signal.SIGCONT)
        worker.kill()


def effects(dsn: str, schema: str) -> Counter[tuple[str, int, str]]:
    rows = query(dsn, f'SELECT saga_id, step_index, kind FROM "{schema}".effects')
    return Counter((saga_id, index, kind) for saga_id, index, kind in rows)


def statuses(dsn: str, schema: str) -> dict[str, str]:
    return dict(query(dsn, f'SELECT saga_id, status FROM "{schema}".sagas'))


def all_completed(dsn: str, schema: str, ids: list[str]) -> bool:
    found = statuses(dsn, schema)
    return all(found.get(saga_id) == "completed" for saga_id in ids)


def test_sigkilled_worker_sagas_are_finished_by_another(
    dsn: str, schema: str, workers: list[Worker]
) -> None:
    ids = [f"kill-{n}" for n in range(3)]
    victim = Worker(dsn, schema, "victim", ids=ids, hang_at=2, hang=300.0, lease=1.0)
    workers.append(victim)
    for _ in ids:
        victim.wait_for("HANG")  # every saga is inside step 2, steps 0 and 1 done
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()

    rescuer = Worker(dsn, schema, "rescuer", worker=True, lease=1.0)
    workers.append(rescuer)
    rescuer.wait_for("READY")
    wait_until(lambda: all_completed(dsn, schema, ids), "the rescuer to finish the sagas")
    rescuer.proc.send_signal(signal.SIGTERM)
    rescuer.wait_for("STOPPED")
    assert rescuer.exit_code() == 0

    ran = effects(dsn, schema)
    for saga_id in ids:
        # Completed steps never ran again; the interrupted one ran again (resume).
        assert ran[(saga_id, 0, "do")] == 1
        assert ran[(saga_id, 1, "do")] == 1
        assert ran[(saga_id, 2, "do")] == 2
        assert ran[(saga_id, 3, "do")] == 1
        assert ran[(saga_id, 4, "do")] == 1
    assert not [key for key in ran if key[2] == "undo"]
    by_worker = query(
        dsn,
        f'SELECT worker, step_index FROM "{schema}".effects WHERE step_index >= 3',
    )
    assert {worker for worker, _ in by_worker} == {"rescuer"}
    attempts = query(dsn, f'SELECT recovery_attempts, fence FROM "{schema}".sagas')
    assert attempts == [(1, 2)] * 3


def test_sigstopped_worker_writes_nothing_after_another_took_over(
    dsn: str, schema: str, workers: list[Worker], tmp_path: Path
) -> None:
    victim = Worker(dsn, schema, "victim", ids=["paused"], hang_at=2, hang=2.0, lease=1.0)
    workers.append(victim)
    victim.wait_for("HANG")
    victim.proc.send_signal(signal.SIGSTOP)  # paused inside step 2, past its lease

    # The rescuer claims the saga, re-runs step 2 and holds it open inside step 3,
    # so the old owner wakes up while the saga is still running under a new owner.
    go_on = tmp_path / "go-on"
    rescuer = Worker(
        dsn, schema, "rescuer", worker=True, lease=1.0, hang_at=3, hang_file=str(go_on)
    )
    workers.append(rescuer)
    rescuer.wait_for("HANG")

    def snapshot() -> tuple[object, ...]:
        return (
            # Everything but the lease, which the rescuer's heartbeat keeps renewing.
            query(
                dsn,
                f"SELECT saga_id, status, error, updated_at, finished_at, owner, fence "
                f'FROM "{schema}".sagas',
            ),
            query(dsn, f'SELECT * FROM "{schema}".steps ORDER BY compensation, step_index'),
            query(dsn, f'SELECT * FROM "{schema}".events ORDER BY position'),
        )

    before = snapshot()
    assert before[0][0][1:] == ("executing", None, before[0][0][3], None, rescuer_owner(before), 2)
    victim.proc.send_signal(signal.SIGCONT)
    (outcome,) = victim.outcomes()
    assert victim.exit_code() == 0
    assert outcome == {"id": "paused", "outcome": "lease_lost"}
    assert snapshot() == before  # the woken worker recorded nothing
    ran = effects(dsn, schema)
    assert not [key for key in ran if key[2] == "undo"]  # and compensated nothing
    victim_steps = query(
        dsn, f"SELECT step_index FROM \"{schema}\".effects WHERE worker = 'victim'"
    )
    assert sorted(index for (index,) in victim_steps) == [0, 1, 2]  # and ran nothing more

    go_on.touch()
    wait_until(lambda: all_completed(dsn, schema, ["paused"]), "the rescuer to finish the saga")
    ran = effects(dsn, schema)
    assert [ran[("paused", n, "do")] for n in range(5)] == [1, 1, 2, 1, 1]
    rescuer.proc.send_signal(signal.SIGTERM)
    assert rescuer.exit_code() == 0


def rescuer_owner(snapshot: tuple[object, ...]) -> object:
    """The owner column of the only saga (asserted separately: not None)."""
    rows = snapshot[0]
    assert isinstance(rows, list)
    owner = rows[0][5]
    assert owner is not None
    return owner


def test_same_saga_ids_submitted_concurrently_run_once(
    dsn: str, schema: str, workers: list[Worker]
) -> None:
    ids = [f"dup-{n}" for n in range(20)]
    pair = [
        Worker(dsn, schema, name, ids=ids, hang_at=1, hang=0.2, barrier=True, concurrency=20)
        for name in ("left", "right")
    ]
    workers.extend(pair)
    for worker in pair:
        worker.wait_for("READY")
    for worker in pair:
        worker.go()
    outcomes = [worker.outcomes() for worker in pair]

    for index, saga_id in enumerate(ids):
        got = sorted(outcome[index]["outcome"] for outcome in outcomes)
        # One ran it; the other was refused while it ran, or got the recorded result.
        assert got in (["already_executing", "done"], ["done", "done"])
        assert [o[index]["id"] for o in outcomes] == [saga_id, saga_id]
    ran = effects(dsn, schema)
    assert sorted(ran.values()) == [1] * (len(ids) * 5)  # every step ran exactly once
    runners = query(
        dsn, f'SELECT saga_id, count(DISTINCT worker) FROM "{schema}".effects GROUP BY 1'
    )
    assert all(count == 1 for _, count in runners)
    assert all_completed(dsn, schema, ids)


def test_thousand_sagas_over_three_workers_run_each_step_exactly_once(
    dsn: str, schema: str, workers: list[Worker]
) -> None:
    ids = [f"load-{n:04d}" for n in range(1000)]
    trio = [
        # Every worker is offered every id, in its own order: the database decides.
        Worker(dsn, schema, f"w{n}", ids=ids[n * 333 :] + ids[: n * 333], barrier=True,
               concurrency=50, lease=2.0, heartbeat=0.5)
        for n in range(3)
    ]  # fmt: skip
    workers.extend(trio)
    for worker in trio:
        worker.wait_for("READY")
    for worker in trio:
        worker.go()
    results = [worker.outcomes() for worker in trio]
    for worker in trio:
        assert worker.exit_code() == 0

    done = Counter(o["id"] for outcomes in results for o in outcomes if o["outcome"] == "done")
    assert set(done) == set(ids)
    assert not [o for outcomes in results for o in outcomes if o["outcome"] not in (
        "done", "already_executing")]  # fmt: skip
    assert all_completed(dsn, schema, ids)
    ran = effects(dsn, schema)
    assert len(ran) == 5000
    assert set(ran.values()) == {1}  # every step of every saga ran exactly once
    assert not [key for key in ran if key[2] == "undo"]
    per_worker = dict(query(dsn, f'SELECT worker, count(*) FROM "{schema}".effects GROUP BY 1'))
    assert set(per_worker) == {"w0", "w1", "w2"}  # the work was spread over all three
    events = query(dsn, f'SELECT count(*), count(DISTINCT position) FROM "{schema}".events')
    assert events == [(5000, 5000)]


def test_sigterm_releases_leases_for_immediate_takeover(
    dsn: str, schema: str, workers: list[Worker]
) -> None:
    # A long lease: without the release, another worker would wait 60 s.
    victim = Worker(
        dsn, schema, "victim", ids=["handover"], worker=True, hang_at=1, hang=300.0,
        lease=60.0, heartbeat=5.0,
    )  # fmt: skip
    workers.append(victim)
    victim.wait_for("HANG")
    victim.proc.send_signal(signal.SIGTERM)
    (outcome,) = victim.outcomes()
    assert victim.exit_code() == 0
    assert outcome["outcome"] in ("lease_lost", "cancelled")

    (row,) = query(
        dsn,
        f'SELECT owner, lease_until <= now(), released, fence, status FROM "{schema}".sagas',
    )
    assert row == (None, True, True, 2, "executing")
    assert not [key for key in effects(dsn, schema) if key[2] == "undo"]  # not compensated

    rescuer = Worker(dsn, schema, "rescuer", worker=True, lease=60.0, heartbeat=5.0)
    workers.append(rescuer)
    wait_until(lambda: all_completed(dsn, schema, ["handover"]), "the rescuer to take over")
    rescuer.proc.send_signal(signal.SIGTERM)
    assert rescuer.exit_code() == 0
    # A handed-over saga does not count as a crash.
    assert query(dsn, f'SELECT recovery_attempts FROM "{schema}".sagas') == [(0,)]
    assert [effects(dsn, schema)[("handover", n, "do")] for n in range(5)] == [1, 2, 1, 1, 1]
