"""The scenarios of tests/sharding_cases.py, for tests/test_sharding.py and
benchmarks/multi_gpu.py: their names, read from its source, and a runner of
one case in a process of its own. That module cannot be imported by a
process that has started JAX (it sets XLA_FLAGS and picks its devices when
imported); with the names read here, a new case cannot be left out."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

CASES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sharding_cases.py")


def case_names():
    """The names of sharding_cases.py's case_* functions, without "case_"."""
    with open(CASES_FILE) as f:
        tree = ast.parse(f.read())
    return [node.name[5:] for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("case_")]


def run_case(case, platform="cpu", timeout=600, cwd=None):
    """`python sharding_cases.py CASE` on `platform`'s devices (cpu: 8
    forced host devices; gpu: every GPU), with this jax_binconv importable:
    (passed, the process's stdout and stderr)."""
    import jax_binconv

    env = dict(os.environ, JAX_BINCONV_SHARDING_PLATFORM=platform)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(jax_binconv.__file__)), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, CASES_FILE, case], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=cwd)
    return r.returncode == 0 and f"ok {case}" in r.stdout, r.stdout, r.stderr
