"""The walkthrough notebook runs top to bottom (nbclient), so it cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is in the dev extra")
nbclient = pytest.importorskip("nbclient", reason="nbclient is in the dev extra")

NOTEBOOK = Path(__file__).parent.parent / "examples" / "saga_walkthrough.ipynb"


def _outputs(notebook: object, mime: str) -> list[str]:
    found = []
    for cell in notebook.cells:  # type: ignore[attr-defined]
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if mime in data:
                found.append(data[mime])
            elif mime == "stream" and output.get("output_type") == "stream":
                found.append(output["text"])
    return found


def test_the_walkthrough_notebook_executes(tmp_path: Path) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    kernel = notebook.metadata["kernelspec"]["name"]
    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        pytest.skip(f"no Jupyter kernel {kernel!r} installed (pip install ipykernel)")
    client = nbclient.NotebookClient(
        notebook, timeout=120, kernel_name=kernel, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error

    html = "".join(_outputs(notebook, "text/html"))
    assert 'class="sagakit-definition"' in html
    assert html.count('class="sagakit-saga"') == 2  # the completed and the compensated run
    assert "compensations, in the order they ran" in html
    markdown = _outputs(notebook, "text/markdown")
    assert any(m.startswith("```mermaid\nflowchart LR") for m in markdown)
    assert any(":::failed" in m for m in markdown)
    streams = "".join(_outputs(notebook, "stream"))
    assert "fault matrix of saga 'transfer': 6 cases" in streams
    assert "FAIL" not in streams
