"""Run sagakit's CLI in this process and capture what it prints."""

from __future__ import annotations

import io

from sagakit.cli import main


def cli(*argv: str) -> tuple[int, str]:
    """``sagakit *argv``: its exit code and everything it wrote to stdout."""
    out = io.StringIO()
    return main(list(argv), out), out.getvalue()
