"""Retry backoff without waiting."""

from __future__ import annotations

import asyncio
import math

from .._checks import as_float
from .._seconds import timeout_text
from ..exceptions import SagaDefinitionError


class InstantSleep:
    """A ``sleep`` for ``SagaOrchestrator(sleep=...)`` that records delays without waiting.

    Retry backoff then costs nothing; :attr:`delays` lists the requested waits. With
    ``scale`` > 0 it really waits ``seconds * scale`` (time scaling); at 0 it still
    yields to the event loop once, so concurrent tasks interleave as they would.
    """

    scale: float
    delays: list[float]

    def __init__(self, scale: float = 0.0) -> None:
        if (
            isinstance(scale, bool)
            or not isinstance(scale, int | float)
            or not 0 <= as_float(scale) < math.inf
        ):
            raise SagaDefinitionError(
                f"InstantSleep(scale=...) must be a finite number >= 0, got {scale!r}"
            )
        self.scale = as_float(scale)
        self.delays = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(seconds * self.scale)

    @property
    def total(self) -> float:
        """Seconds that would have been waited in all."""
        return sum(self.delays)

    def __repr__(self) -> str:
        return f"<InstantSleep {len(self.delays)} sleeps, {timeout_text(self.total)} skipped>"
