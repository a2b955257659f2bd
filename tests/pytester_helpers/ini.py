"""The pytest.ini that the pytester-run plugin tests write for their inner pytest."""

from __future__ import annotations

import pytest


def write_ini(pytester: pytest.Pytester, mode: str = "strict", extra: str = "") -> None:
    """pytest-asyncio in ``mode``, function-scoped fixture loops, warnings as errors."""
    pytester.makeini(
        f"""
        [pytest]
        asyncio_mode = {mode}
        asyncio_default_fixture_loop_scope = function
        filterwarnings = error
        {extra}
        """
    )
