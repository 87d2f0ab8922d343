"""Shared helpers: random inputs with the values where sign bugs hide, and
comparisons of a kernel path against the reference (integer parts exact)."""

from __future__ import annotations

import functools
import os

# Workers of `pytest -n` share a GPU where there is one: each takes GPU
# memory as it needs it instead of XLA's default 75% at start.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jax_binconv as jb  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """`pytest -n auto`: a worker per core, at most 8 (each holds its own
    JAX runtime and compilation caches, ~1 GB)."""
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else (os.cpu_count() or 1), 8))


def cuda_gpus():
    """(the GPUs JAX sees, None) where jax_binconv's CUDA kernels loaded, else
    ([], why not): the skip reason of GPU-only tests."""
    try:
        devs = jax.devices("gpu")
    except RuntimeError as e:
        return [], f"no GPU visible to JAX ({e})"
    if not devs:
        return [], "no GPU visible to JAX"
    if "cuda" not in jb.lowering.available:
        return [], ("jax_binconv._cuda did not load: "
                    f"{jb.lowering.load_errors.get('_cuda', 'not built')}")
    return devs, None


def rand_x(seed, shape, dtype=jnp.float32, zero_frac=0.1):
    """Normal values with exact zeros and -0.0 sprinkled in (bin(0) = bin(-0.0) = +1)."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(shape).astype(np.float32)
    u = rng.random(shape)
    v[u < zero_frac] = 0.0
    v[(u >= zero_frac) & (u < 1.5 * zero_frac)] = -0.0
    return jnp.asarray(v).astype(dtype)


def rand_vec(seed, n, lo=0.5, hi=1.5, signed=False):
    rng = np.random.default_rng(seed)
    v = rng.uniform(lo, hi, n).astype(np.float32)
    if signed:
        v *= rng.choice([-1.0, 1.0], n).astype(np.float32)
    return jnp.asarray(v)


def pad_values(t):
    """The pad values each type allows (SPEC section 4), for the test grids."""
    return {"binary_weights": [0.0, 0.75, -2.0], "xnor": [0.0, 1.0, -1.0], "and": [0.0, 1.0]}[t]


# Grid axes shared by the kernel test files (CPU kernel, CUDA kernel): channel
# counts that straddle word boundaries, kernel shapes, paddings.
GRID_CHANNELS = [1, 3, 31, 33, 65, 130]
GRID_KERNELS = [(1, 1), (3, 3), (5, 5), (1, 3)]
GRID_PADDINGS = ["SAME", "VALID", ((1, 0), (2, 1)), ((0, 2), (0, 0))]


INTEGER_KEYS = ("input_bias", "input_scale", "type", "strides", "padding", "dilation",
                "groups", "pad_value", "dimension_numbers")


def float_steps(kw):
    """Whether a call's result steps at 0 over a float sum: BINARY_WEIGHTS
    with packed output or the `sign` activation (see assert_steps_near_zero)."""
    return (jb.options.conv_type(kw.get("type", "xnor")) == jb.BinaryConvType.BINARY_WEIGHTS
            and (kw.get("output") == "packed"
                 or jb.options.activation(kw.get("activation")) == jb.options.ACTIVATIONS["sign"]))


def pre_activation_kw(kw):
    """The call whose float result is `kw`'s pre-activation (float output,
    no activation): what assert_steps_near_zero measures the steps by."""
    return {**kw, "output": "float", "activation": None}


def assert_steps_near_zero(ours, ref, pre):
    """BINARY_WEIGHTS' sum is a float sum in each kernel's own order
    (docs/semantics.md, section 9), so where it lies within rounding of 0 a
    step at 0 (a packed bit, `sign`) may land on the other side. `ours` and
    `ref` (PackedActivations or floats) may differ only where the
    reference's pre-activation `pre` (float output, no activation) is that
    close to 0 (1e-4 of its largest magnitude); they are equal elsewhere."""
    if isinstance(ref, jb.PackedActivations):
        off = np.asarray(jb.packing.unpack_bits(np.asarray(ours.words) ^ np.asarray(ref.words),
                                                ref.channels))
    else:
        off = np.asarray(ours, np.float32) != np.asarray(ref, np.float32)
    if np.any(off):
        pre = np.asarray(pre, np.float32)
        tol = 1e-4 * max(1.0, float(np.max(np.abs(pre))))
        assert np.all(np.abs(pre[off]) <= tol), (
            f"{int(off.sum())} results differ, pre-activation up to "
            f"{float(np.max(np.abs(pre[off]))):.3g} from 0 (tolerance {tol:.3g})")


def run_both(x, w, **kw):
    """(kernel result, reference result), each under a fresh jit."""
    ours = jax.jit(functools.partial(jb.binary_conv2d, **kw))(x, w)
    ref = jax.jit(functools.partial(jb.reference.binary_conv2d, **kw))(x, w)
    return ours, ref


def accumulator_kw(kw):
    """The call whose result is `kw`'s bare XNOR / AND accumulator (no
    output scale, bias, beta or activation)."""
    return {k: v for k, v in kw.items() if k in INTEGER_KEYS}


def assert_accumulators_equal(ours, ref, acc_kw):
    """XNOR / AND accumulators (accumulator_kw's call): equal, and integers."""
    a, b = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
    np.testing.assert_array_equal(a, b, err_msg=f"integer accumulators differ for {acc_kw}")
    assert np.all(a == np.round(a))


def assert_results_match(ours, ref, kw):
    """One call's full results, ours against the reference's: packed words
    equal, float results within tolerance (1e-5 relative for float32, two
    ulps of a narrower dtype; BINARY_WEIGHTS' float sums 8x that, for their
    summation order)."""
    if kw.get("output") == "packed":
        assert isinstance(ours, jb.PackedActivations) and isinstance(ref, jb.PackedActivations)
        assert ours.channels == ref.channels
        np.testing.assert_array_equal(np.asarray(ours.words), np.asarray(ref.words),
                                      err_msg=str(kw))
        return
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    o, r = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
    rtol = 1e-5 if ours.dtype == jnp.float32 else 2 * float(jnp.finfo(ours.dtype).eps)
    finite = np.abs(r[np.isfinite(r)])
    atol = rtol * max(1.0, float(finite.max()) if finite.size else 1.0)
    if jb.options.conv_type(kw.get("type", "xnor")) == jb.BinaryConvType.BINARY_WEIGHTS:
        atol *= 8
    np.testing.assert_allclose(o, r, rtol=rtol, atol=atol, err_msg=str(kw))


def assert_conv_matches(x, w, *, runner=None, **kw):
    """Integer accumulators exactly equal (XNOR/AND), full results as
    assert_results_match (BINARY_WEIGHTS' steps at 0: see
    assert_steps_near_zero). `runner(x, w, **kw)` gives (ours, reference):
    run_both by default; test_gpu.py passes its own (ours on the GPU, the
    reference on the CPU). Returns that pair for the full call."""
    runner = runner or run_both
    if jb.options.conv_type(kw.get("type", "xnor")) != jb.BinaryConvType.BINARY_WEIGHTS:
        acc_kw = accumulator_kw(kw)
        assert_accumulators_equal(*runner(x, w, **acc_kw), acc_kw)
    if float_steps(kw):
        _, pre = assert_conv_matches(x, w, runner=runner, **pre_activation_kw(kw))
        ours, ref = runner(x, w, **kw)
        assert_steps_near_zero(ours, ref, pre)
        return ours, ref
    ours, ref = runner(x, w, **kw)
    assert_results_match(ours, ref, kw)
    return ours, ref


