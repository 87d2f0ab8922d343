"""The C++ kernels built with AddressSanitizer + UndefinedBehaviorSanitizer
(issue 8, item 1): the CPU kernel (every ISA this machine runs) and the Metal
shim run a reference grid, and hostile FFI attributes, in a subprocess that
preloads the sanitizer runtime. Any sanitizer report fails the test.

The build (fuzz/asan_build.py) is incremental in build/sanitizers (or
$JAX_BINCONV_SANITIZER_BUILD_DIR): about 1-2 minutes from scratch on 2 cores.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "fuzz"))
import asan_build  # noqa: E402


@pytest.fixture(scope="module")
def san_env():
    try:
        asan_build.runtime_libs()
    except asan_build.SanitizerUnavailable as e:
        pytest.skip(f"no sanitizer runtime: {e}")
    return asan_build.sanitizer_env(asan_build.sanitized_package())


def _run(env, *args, timeout=600):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "fuzz", "sanitizer_grid.py"), *args],
                          env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    report = asan_build.sanitizer_report(out)
    assert report is None, f"sanitizer report (exit {proc.returncode}):\n{report}\n" \
                           f"last step: {proc.stdout.strip().splitlines()[-1:] }"
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{out[-4000:]}"
    return proc.stdout


def test_sanitized_modules_are_the_ones_imported(san_env):
    code = ("import jax_binconv as jb, sys; m = jb.lowering.available; "
            "print(m['cpu'].__file__); print(m.get('metal_shim') and m['metal_shim'].__file__)")
    # cwd: not the repository root, whose jax_binconv/ would come first on sys.path.
    proc = subprocess.run([sys.executable, "-c", code], env=san_env, capture_output=True, text=True,
                          timeout=120, cwd=san_env["PYTHONPATH"].split(os.pathsep)[0])
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = proc.stdout.split()
    assert files[0].startswith(san_env["PYTHONPATH"].split(os.pathsep)[0]), files
    ldd = subprocess.run(["ldd", files[0]], capture_output=True, text=True).stdout
    assert "libasan" in ldd and "libubsan" in ldd, ldd


def test_reference_grid_under_asan_ubsan(san_env):
    out = _run(san_env, "grid")
    assert " 0 failures" in out and "kernel runs" in out, out


def test_hostile_attributes_under_asan_ubsan(san_env):
    """Attribute values whose arithmetic overflows int64 must be refused with
    InvalidArgument before any size is computed (no UB, no crash)."""
    out = _run(san_env, "hostile")
    assert " 0 failures" in out, out
