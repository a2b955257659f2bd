"""The ``sagakit`` logger, set up by ``import sagakit`` (any of its modules).

Set up here, not by the module logging transitions, so that a store or recovery used
alone logs through it too: the package imports this module, and nothing else, eagerly.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("sagakit")
logger.addHandler(logging.NullHandler())

_FIELDS = (
    "saga_id",
    "saga_name",
    "saga_status",
    "step_name",
    "step_index",
    "attempt",
    "transition",
)


class _StructuredFields(logging.Filter):
    """Give every record of the ``sagakit`` logger all the structured fields (``None``
    where they do not apply), so one formatter using them works for every record —
    recovery's, workers' and stores' too, not only the transitions'.

    The texts a message quotes (saga ids and names, errors) are given on one line, control
    characters escaped; the structured fields keep them as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        for name in _FIELDS:
            fields.setdefault(name, None)
        args = record.args
        if isinstance(args, tuple) and any(
            isinstance(arg, str) and not arg.isprintable() for arg in args
        ):
            from .records import one_line  # rarely needed: not loaded by `import sagakit`

            record.args = tuple(one_line(arg) if isinstance(arg, str) else arg for arg in args)
        return True


logger.addFilter(_StructuredFields())
