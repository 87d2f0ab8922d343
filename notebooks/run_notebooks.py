"""Execute the example notebooks top to bottom with nbclient (as CI does).

    python notebooks/run_notebooks.py [names...] [--out DIR] [--timeout SECONDS]

Each notebook runs in a fresh kernel with ``notebooks/`` as working directory,
the repository root on ``PYTHONPATH`` and the kernel's inline matplotlib
backend (figures become PNG outputs; no display needed). A cell
that raises (e.g. the accuracy assertion of 02_train_bnn) fails the run.
Executed copies are written to ``--out`` when given (the committed notebooks
stay without outputs). Prints each notebook's wall time.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
NOTEBOOKS = sorted(p.name for p in HERE.glob("[0-9][0-9]_*.ipynb"))


def run_notebook(name: str, out_dir: str | None = None, timeout: int = 600) -> float:
    """Execute ``notebooks/<name>``; returns the wall time in seconds."""
    import nbformat
    from nbclient import NotebookClient

    path = HERE / name
    nb = nbformat.read(path, as_version=4)
    env_before = {k: os.environ.get(k) for k in ("PYTHONPATH", "MPLBACKEND")}
    os.environ.pop("MPLBACKEND", None)  # let ipykernel use its inline backend
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + ([env_before["PYTHONPATH"]] if env_before["PYTHONPATH"] else []))
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(HERE)}})
        t0 = time.perf_counter()
        client.execute()
        elapsed = time.perf_counter() - t0
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if out_dir:
        out = pathlib.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out / name)
    return elapsed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=NOTEBOOKS)
    ap.add_argument("--out", default=None, help="write executed notebooks here")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = ap.parse_args(argv)
    total = 0.0
    for name in args.names:
        t = run_notebook(name if name.endswith(".ipynb") else name + ".ipynb", args.out,
                         args.timeout)
        total += t
        print(f"{name}: {t:.1f} s", flush=True)
    print(f"total: {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
