"""A child process for the deploy tests: one version of a saga module (the directory
``CODE`` holding ``deploymod.py``) runs, recovers or works a log.

Each step appends ``<step> <idempotency key>`` to the file ``SAGAKIT_CRASH_LOG``, each
compensation ``undo-<step> ...``; ``SAGAKIT_DIE_IN=<step>`` SIGKILLs the process in that
step, once it has acted; ``SAGAKIT_BLOCK_IN=<step>`` blocks it in that step, once it has acted,
until the file ``<SAGAKIT_CRASH_LOG>.go`` exists. Outcomes and the log's state are printed as JSON.

    python versions.py CODE run DB SAGA SAGA_ID [ARG...]
    python versions.py CODE recover DB
    python versions.py CODE resume DB SAGA_ID
    python versions.py CODE work DB SECONDS     # a worker, stopped after SECONDS or SIGTERM
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any

from sagakit import PostgresStore, SagaOrchestrator, SQLiteStore, current_step


def write(text: str) -> str:
    """Append ``text`` and the step's idempotency key to the effects file; its path."""
    context = current_step()
    key = context.idempotency_key if context is not None else "-"
    path = os.environ["SAGAKIT_CRASH_LOG"]
    with open(path, "a") as log:
        log.write(f"{text} {key}\n")
    return path


async def effect(text: str) -> None:
    path = write(text)
    if os.environ.get("SAGAKIT_DIE_IN") == text:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("SAGAKIT_BLOCK_IN") == text:
        # The test process makes the file: no event of this process tells.
        while not os.path.exists(path + ".go"):  # noqa: ASYNC110, ASYNC240
            await asyncio.sleep(0.02)


def open_store(db: str) -> Any:
    if db.startswith("postgresql://"):
        dsn, _, schema = db.partition("#")
        return PostgresStore(dsn, schema=schema, lease=1.0)
    return SQLiteStore(db)


async def main(argv: list[str]) -> None:
    code, action, db, *rest = argv
    sys.path.insert(0, code)
    import deploymod

    store = open_store(db)
    try:
        orchestrator = SagaOrchestrator(store)
        if action == "run":
            name, saga_id, *args = rest
            definition = getattr(deploymod, name)(*(int(arg) for arg in args))
            await orchestrator.execute(definition, saga_id=saga_id)
        elif action == "resume":
            await store.resume_dead_letter(rest[0])
        elif action == "recover":
            outcomes = await orchestrator.recover()
            print(json.dumps([[o.saga_id, o.action, str(o.status)] for o in outcomes]))
        else:
            stop = asyncio.Event()
            asyncio.get_running_loop().call_later(float(rest[0]), stop.set)
            await orchestrator.run_worker(poll_interval=0.05, stop=stop)
    finally:
        await store.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    asyncio.run(main(sys.argv[1:]))
