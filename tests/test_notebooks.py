"""The notebooks execute end to end (at small sizes) and produce their figures, so they never rot.

Each runs with nbclient in a fresh kernel on a temporary copy; TRITONWINO_NB_SMALL=1 keeps them small
(each takes about 10-15 s on 2 idle CPU cores). The wall-time bound below is loose on purpose: the
suite runs on 2 xdist workers next to the two-minute demo, and under that contention the same
notebook can take several times longer; the small-size check is what keeps them fast.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.e2e

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT_S = 120
WALL_LIMIT_S = 240


def _execute(name: str, tmp_path: Path, monkeypatch) -> tuple[nbformat.NotebookNode, float]:
    src = NOTEBOOKS / name
    nb_path = tmp_path / name
    shutil.copy(src, nb_path)
    nb = nbformat.read(nb_path, as_version=4)
    # The kernel inherits this process's environment: keep the notebook small, send its files
    # to tmp_path, and give it the tuning cache of the test session.
    monkeypatch.setenv("TRITONWINO_NB_SMALL", "1")
    monkeypatch.setenv("TRITONWINO_NB_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # One intra-op thread: several torch processes spinning on 2 shared cores slow each other down
    # far more than one thread per process does.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # The notebooks decide about the interpreter themselves (kernels.ipynb switches it on).
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    # Run the kernel with this interpreter (the venv), whatever python3 kernelspec is installed.
    client.kernel_manager_kwargs = {"kernel_cmd": [sys.executable, "-m", "ipykernel_launcher", "-f",
                                                   "{connection_file}"]}
    t0 = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - t0


def _outputs(nb: nbformat.NotebookNode) -> tuple[int, str]:
    """(number of PNG images shown, all text output)."""
    pngs, text = 0, []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            assert out.output_type != "error", out
            if out.output_type == "stream":
                text.append(out.text)
            data = out.get("data", {})
            pngs += "image/png" in data
            text.append(data.get("text/plain", ""))
    return pngs, "\n".join(text)


@pytest.mark.parametrize("name", ["walkthrough.ipynb", "kernels.ipynb"])
def test_outputs_are_cleared_in_git(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: clear the outputs before committing"


def test_walkthrough_runs(tmp_path, monkeypatch):
    nb, seconds = _execute("walkthrough.ipynb", tmp_path, monkeypatch)
    pngs, text = _outputs(nb)
    assert pngs == 3, f"expected the speedup, memory and accuracy plots, got {pngs} images"
    assert "max relative logit error" in text and "swapped" in text
    for png in ("speedup_vs_sparsity.png", "memory_vs_sparsity.png", "accuracy_vs_sparsity.png"):
        assert (tmp_path / "out" / png).stat().st_size > 10_000
    assert "small=True" in text
    assert seconds < WALL_LIMIT_S, f"walkthrough took {seconds:.0f} s at small size"


def test_kernels_runs(tmp_path, monkeypatch):
    nb, seconds = _execute("kernels.ipynb", tmp_path, monkeypatch)
    pngs, text = _outputs(nb)
    # matrices, importance, stage 1, sparsity patterns, packing, output maps
    assert pngs == 6, f"expected 6 figures, got {pngs}"
    assert "max |triton - torch|" in text and "two-kernel vs torch" in text and "one-kernel vs torch" in text
    assert "two kernels vs F.conv2d" in text and "one kernel vs F.conv2d" in text
    assert "layer C=16 K=32 8x8" in text  # the small size
    assert seconds < WALL_LIMIT_S, f"kernels notebook took {seconds:.0f} s at small size"
