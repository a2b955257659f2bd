"""The plugin's hook wrappers stay out of the tracebacks of tests that are not about sagas:
an async fixture of the application's failing its setup shows its own error and pytest-asyncio's
frames, never ``sagakit/pytest_plugin.py``, which only passed it on."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def test_a_failing_fixture_of_the_application_shows_no_plugin_frame(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = strict
        asyncio_default_fixture_loop_scope = function
        """
    )
    # In a conftest.py, whose fixture errors pytest shows through pytest-asyncio's frames.
    pytester.makeconftest(
        """
        import pytest_asyncio

        @pytest_asyncio.fixture
        async def db():
            raise RuntimeError("db down")
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.asyncio
        async def test_query(db):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["E       RuntimeError: db down"])
    result.stdout.no_fnmatch_line("*sagakit*pytest_plugin.py*")
