"""Simulated process crashes of a PostgreSQL store, for :mod:`sagakit.testing`: a crash
of the process (``FaultInjector.crash(..., process=True)``), its restart
(``simulate_restart()``), and forgetting the runs the crash stopped.

:class:`SimulatedCrashes` is a base of :class:`~.postgres.PostgresStore`.
"""

from __future__ import annotations

from collections.abc import Collection

from .._tracebacks import hide_from_pytest
from ._pg_base import PostgresStoreBase
from ._pg_claims import unbound

# pytest shows a failing test's line, not this module's code, for an error this store
# raises on purpose (see _tracebacks).
__tracebackhide__ = hide_from_pytest


class SimulatedCrashes(PostgresStoreBase):
    """How :class:`~.postgres.PostgresStore` dies and restarts in a simulated crash."""

    def _crash_process(self, what: str) -> None:
        """A simulated crash of this process (``FaultInjector.crash(..., process=True)``):
        every saga of the store stops at its next write, and what they staged is lost."""
        if self._writer.dead is not None:  # dead already (told again by each saga it stops)
            return
        self._writer.crash(what)
        self._staged.clear()

    def _restart_process(self) -> None:
        """``simulate_restart()``: the store writes again, as a restarted process would."""
        self._writer.dead = None

    def _same_log(self, other: object) -> bool:
        """Whether ``other`` is another PostgreSQL store on this store's log (the same
        ``dsn`` and ``schema``): ``simulate_restart()`` of a store that no simulated crash
        stopped (a new one, to recover with) restarts those a crash did stop."""
        if other is self or not isinstance(other, SimulatedCrashes):
            return False
        # (Read so: the store's settings are PostgresStore's, not this base's.)
        return all(getattr(other, name) == getattr(self, name) for name in ("dsn", "schema"))

    def _forget_runs(self, saga_ids: Collection[str]) -> None:
        """Forget the runs of ``saga_ids`` that a simulated crash stopped (``"the process
        died"``: they never call finish()), and what they staged or left in doubt, as
        their next claim by this store would have, retiring them for good."""
        for saga_id in saga_ids:
            run = self._runs.get(saga_id)
            if run is not None and not unbound(run) and saga_id not in self._held:
                del self._runs[saga_id]
                self._staged.pop(saga_id, None)
                self._doubts.pop(saga_id, None)
                self._lost.pop(saga_id, None)


__all__ = ["SimulatedCrashes"]
