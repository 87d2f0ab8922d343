"""The scenario names of tests/sharding_cases.py, read from its source: that
module cannot be imported by a process that has started JAX (it sets
XLA_FLAGS and picks its devices when imported), so tests/test_sharding.py
and benchmarks/multi_gpu.py, which run each case in a process of its own,
take the list from here, and a new case cannot be left out."""

from __future__ import annotations

import ast
import os

CASES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sharding_cases.py")


def case_names():
    """The names of sharding_cases.py's case_* functions, without "case_"."""
    with open(CASES_FILE) as f:
        tree = ast.parse(f.read())
    return [node.name[5:] for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("case_")]
