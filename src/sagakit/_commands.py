"""Command lines of the ``sagakit`` CLI, written into messages for a user to paste."""

from __future__ import annotations

import shlex
from collections.abc import Sequence


def command_line(db: str, command: str, *arguments: str, options: Sequence[str] = ()) -> str:
    """``sagakit --db DB COMMAND ARGUMENTS OPTIONS``, for a message to copy into a shell:
    each word quoted (an id with a space or a quote), and ``--`` before arguments when one
    starts with ``-`` (an id argparse would take for an option; the options then go
    before it)."""
    words = ["sagakit", "--db", db, command]
    if any(argument.startswith("-") for argument in arguments):
        words += [*options, "--", *arguments]
    else:
        words += [*arguments, *options]
    return " ".join(shlex.quote(word) for word in words)
