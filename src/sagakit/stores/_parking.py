"""What a claim that parks a saga after its recovery attempts writes and logs, alike on
SQLite and PostgreSQL (whose claim writes the same reason in SQL, see ``_pg_sql``)."""

from __future__ import annotations

import logging

logger: logging.Logger = logging.getLogger("sagakit")


def attempts_reason(attempts: int, max_attempts: int) -> str:
    """A dead letter's reason: the ``attempts`` recovery attempts made, and the limit."""
    # (Stopped, not only dead: a Ctrl-C on `sagakit recover` counts as an attempt too.)
    return (
        f"none of its {attempts} recovery attempt{'s' * (attempts != 1)} finished it: each "
        f"time its process died or was stopped (max_attempts={max_attempts})"
    )


def log_parked(name: str, saga_id: str, reason: str) -> None:
    """Log, at ``ERROR``, a saga a claim parked: why, and what an operator does about it."""
    logger.error(
        "sagakit parked saga %s (%s): %s; `sagakit resume` it once its cause is fixed, "
        "or `sagakit resolve` it",
        name,
        saga_id,
        reason,
        extra={"saga_id": saga_id, "saga_name": name},
    )


__all__ = ["attempts_reason", "log_parked"]
