"""Execute every example notebook top to bottom (nbclient), as CI does.

Each notebook asserts its own results (02_train_bnn asserts >= 95% test
accuracy on the digits). Skipped, with the reason, when the `[notebooks]`
extra is not installed.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NEEDED = ("nbclient", "nbformat", "ipykernel", "flax", "optax", "matplotlib", "sklearn")
MISSING = [m for m in NEEDED if importlib.util.find_spec(m) is None]

pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"notebooks need the [notebooks] extra; missing: {', '.join(MISSING)} "
    "(pip install 'jax_binconv[notebooks]')")

NOTEBOOKS = sorted(p.name for p in NB_DIR.glob("[0-9][0-9]_*.ipynb"))


def test_all_notebooks_found():
    assert NOTEBOOKS == ["01_quickstart.ipynb", "02_train_bnn.ipynb", "03_export.ipynb"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path):
    sys.path.insert(0, str(NB_DIR))
    try:
        from run_notebooks import run_notebook
    finally:
        sys.path.remove(str(NB_DIR))
    elapsed = run_notebook(name, out_dir=str(tmp_path), timeout=600)
    import nbformat
    nb = nbformat.read(tmp_path / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), "a code cell did not run"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    print(f"{name}: {elapsed:.1f} s")
