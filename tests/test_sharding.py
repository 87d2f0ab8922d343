"""binary_conv2d under jax.jit with sharded inputs (8 forced host devices, in
subprocesses since the device count is fixed when JAX starts): results equal
the unsharded op, the compiled HLO has no all-gather/all-to-all, the kernel
runs on local shards, gradients match. See tests/sharding_cases.py. The same
cases run on a machine's GPUs where it has two or more (skipped otherwise)."""

from __future__ import annotations

import pytest
from conftest import cuda_gpus
from sharding_case_names import case_names, run_case

import jax_binconv as jb

CASES = case_names()


def _run_case(case, tmp_path, platform="cpu"):
    ok, out, err = run_case(case, platform, cwd=str(tmp_path))
    assert ok, out[-3000:] + err[-6000:]
    return out


@pytest.mark.parametrize("case", CASES)
def test_sharding_case(case, tmp_path):
    _run_case(case, tmp_path)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES)
def test_sharding_case_on_gpus(case, tmp_path):
    """The same scenarios on the machine's GPUs (issue 9): our CUDA call on
    the local shards, no all-gather / all-to-all, results equal the
    unsharded op on one GPU."""
    gpus, reason = cuda_gpus()
    if reason:
        pytest.skip(reason)
    n = len(gpus)
    if n < 2 or n % 2:
        pytest.skip(f"needs an even number (2 or more) of GPUs; this machine has {n}")
    out = _run_case(case, tmp_path, platform="gpu")
    assert f"on {min(n, 8)} gpu devices" in out, out


def test_compat_hooks():
    """The private JAX hook our partitioned lowering relies on is still there
    and registered; if a JAX release moves it, this fails loudly."""
    from jax._src import dispatch

    from jax_binconv import _compat
    assert isinstance(dispatch.prim_requires_devices_during_lowering, set)
    assert _compat.devices_required_during_lowering(jb.binary_conv2d_p)
