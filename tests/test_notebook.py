"""The quickstart notebook runs top to bottom in a real Jupyter kernel (nbclient +
ipykernel), on the built-in SmolLM2, and saves the folders its cells name."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


@pytest.mark.real
def test_quickstart_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # the kernel is this interpreter, with the tests' model cache and no hub
    monkeypatch.setenv("EMOCIRCUITS_CACHE", os.environ["EMOCIRCUITS_CACHE"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    client = NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on failure
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert len(html) >= 5  # each result shows itself as a table
    assert sum(h.count("data:image/png;base64") for h in html) >= 2  # with figures inline
    out = tmp_path / "runs" / "quickstart"
    assert (out / "vectors.safetensors").is_file()
    assert (out / "geometry" / "summary.json").is_file()
    assert json.loads((out / "sweep" / "sweep.json").read_text())["recommended"]["gratitude"]
    assert (out / "steer.jsonl").is_file() and (out / "patch" / "patching.csv").is_file()
