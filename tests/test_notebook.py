"""The quickstart notebook, executed top to bottom on the real slide with the shipped model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

from midog.inference.onnx_detector import default_model_path  # noqa: E402
from tests.conftest import REPO_ROOT  # noqa: E402

NOTEBOOK = REPO_ROOT / "notebooks" / "quickstart.ipynb"

pytestmark = pytest.mark.slow


def _write_cv_folds(folder: Path) -> None:
    """Write a three-fold ``cv_folds.csv`` with the columns the notebook plots."""
    folder.mkdir()
    (folder / "cv_folds.csv").write_text(
        "fold,status,f1,precision,recall,ap\n0,done,0.71,0.70,0.72,0.68\n1,done,0.66,0.61,0.72,0.63\n"
        "2,failed,,,,\n"
    )


@pytest.fixture(scope="module")
def executed(shared_data, tmp_path_factory):
    """Run the notebook with a CV report present; return the executed notebook."""
    model = default_model_path()
    if not model.is_file():
        pytest.skip(
            f"the shipped model {model} is missing; train and export it first (midog train, midog export)"
        )
    tmp_path = tmp_path_factory.mktemp("notebook")
    _write_cv_folds(tmp_path / "cv")
    patch = pytest.MonkeyPatch()
    patch.setenv("MIDOG_SHARED_DATA", str(shared_data))
    patch.setenv("MIDOG_QUICKSTART_OUTPUT", str(tmp_path / "out"))
    patch.setenv("MIDOG_CV_REPORT", str(tmp_path / "cv"))
    # The kernel spec starts "python" from PATH; put this interpreter's first.
    patch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    try:
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        client = nbclient.NotebookClient(
            notebook,
            timeout=1200,
            kernel_name="python3",
            resources={"metadata": {"path": str(NOTEBOOK.parent)}},
        )
        client.execute()
    finally:
        patch.undo()
    nbformat.write(notebook, tmp_path / "quickstart.executed.ipynb")
    return notebook


def _text_outputs(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                parts.append(output["text"])
    return "".join(parts)


def _num_images(notebook) -> int:
    return sum(
        "image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", [])
    )


def test_notebook_reports_figures(executed):
    assert "mitotic figures at score >=" in _text_outputs(executed)


def test_notebook_reports_hotspot(executed):
    assert "2 mm² rectangle:" in _text_outputs(executed)


def test_notebook_plots_cv_report(executed):
    text = _text_outputs(executed)
    assert "No cross-validation report" not in text
    assert "0.71" in text


def test_notebook_shows_images(executed):
    # Thumbnails and the CV plot always; the crops where the model found a candidate.
    assert _num_images(executed) >= 2


def test_notebook_writes_outputs(executed):
    assert "wrote cmu-1-small-region.summary.json" in _text_outputs(executed)
