"""``sagakit --version``: the installed distribution's version, as argparse prints it."""

from __future__ import annotations

import importlib.metadata

import pytest

from sagakit.cli import main


@pytest.mark.parametrize("before", [[], ["--db", "sagas.db"]])
def test_version_prints_the_installed_distribution_s_version_and_exits_0(
    capsys: pytest.CaptureFixture[str], before: list[str]
) -> None:
    # Regression: there was no --version (argparse: "the following arguments are
    # required: command"), so an operator could not tell which sagakit a host runs.
    with pytest.raises(SystemExit) as exited:
        main([*before, "--version"])
    assert exited.value.code == 0
    captured = capsys.readouterr()
    assert captured.out == f"sagakit {importlib.metadata.version('sagakit')}\n"
    assert captured.err == ""


def test_help_offers_version(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--version" in capsys.readouterr().out
