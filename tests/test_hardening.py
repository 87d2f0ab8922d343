"""Hardening (issue 8): hostile and edge inputs, concurrency, leaks, determinism,
and regression tests named after the bugs the sanitizers and the fuzzer found.

Every numeric check compares the C++ CPU kernel (the default CPU lowering)
with ``jax_binconv.reference`` -- integer accumulators exactly.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_conv_matches, rand_vec, rand_x

import jax_binconv as jb

TYPES = ["binary_weights", "xnor", "and"]
# Subprocesses import the same jax_binconv as this process.
PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(jb.__file__)))


@pytest.fixture(scope="module", autouse=True)
def _needs_native_kernel():
    if "cpu" not in jb.lowering.available:
        pytest.fail(f"jax_binconv._cpu did not load ({jb.lowering.load_errors.get('_cpu')}): "
                    "these tests would only exercise the reference")


def _ref(x, w, **kw):
    return jax.jit(functools.partial(jb.reference.binary_conv2d, **kw))(x, w)


def _ours(x, w, **kw):
    return jax.jit(functools.partial(jb.binary_conv2d, **kw))(x, w)


# ------------------------------------------------------------ edge shapes


@pytest.mark.parametrize("t", TYPES)
def test_empty_batch_matches_reference_in_every_output_form(t):
    x = jnp.zeros((0, 5, 6, 40))
    w = rand_x(1, (3, 3, 40, 33))
    for kw in ({}, {"beta_scaling": True, "strides": 2}, {"output": "packed"}):
        ours, ref = _ours(x, w, type=t, **kw), _ref(x, w, type=t, **kw)
        if kw.get("output") == "packed":
            assert ours.words.shape == ref.words.shape == (0, 5, 6, 2)
        else:
            assert ours.shape == ref.shape and ours.dtype == ref.dtype
    # NCHW and a dense layer with no rows.
    y = jb.binary_conv2d(jnp.zeros((0, 40, 5, 6)), jnp.transpose(w, (3, 2, 0, 1)), type=t,
                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
    assert y.shape == (0, 33, 5, 6)
    assert jb.binary_dense(jnp.zeros((0, 7)), rand_x(2, (7, 3)), type=t).shape == (0, 3)


@pytest.mark.parametrize("t", TYPES)
def test_one_by_one_images(t):
    x = rand_x(3, (3, 1, 1, 37))
    for k, pad in (((1, 1), "VALID"), ((3, 3), "SAME"), ((2, 4), ((1, 0), (3, 0)))):
        w = rand_x(4, k + (37, 9))
        assert_conv_matches(x, w, type=t, padding=pad, beta_scaling=True,
                            output_scale=rand_vec(5, 9, signed=True))


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("padding", ["SAME", ((2, 2), (3, 1)), ((4, 0), (0, 4))])
def test_kernel_larger_than_image_with_padding(t, padding):
    x = rand_x(6, (2, 3, 2, 20))
    w = rand_x(7, (5, 5, 20, 6))
    pv = {"binary_weights": 0.5, "xnor": -1.0, "and": 1.0}[t]
    assert_conv_matches(x, w, type=t, padding=padding)
    assert_conv_matches(x, w, type=t, padding=padding, pad_value=pv, beta_scaling=True)


@pytest.mark.parametrize("t", TYPES)
def test_kernel_larger_than_image_without_padding_is_a_clear_error(t):
    x = rand_x(6, (2, 3, 2, 20))
    w = rand_x(7, (5, 5, 20, 6))
    for padding in ("VALID", ((1, 0), (1, 1))):
        with pytest.raises(ValueError, match=r"empty output.*smaller than the dilated kernel \(5, 5\)"):
            jb.binary_conv2d(x, w, type=t, padding=padding)
        with pytest.raises(ValueError, match="empty output"):
            jax.jit(lambda x, w: jb.binary_conv2d(x, w, type=t, padding=padding)).lower(x, w)


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("c,o", [(1, 5), (4097, 3), (70, 1), (1, 1)])
def test_extreme_channel_counts(t, c, o):
    x = rand_x(8 + c, (1, 5, 4, c))
    w = rand_x(9 + c, (3, 3, c, o))
    assert_conv_matches(x, w, type=t, beta_scaling=True, output_bias=rand_vec(10, o, -1, 1))


def test_c4097_with_groups_and_packed_activations():
    """4097 = 17 * 241: groups that start mid-word, a last word with one bit."""
    x = rand_x(11, (1, 4, 4, 4097))
    w = rand_x(12, (3, 3, 241, 34))
    assert_conv_matches(x, w, type="xnor", groups=17, pad_value=-1.0)
    p = jb.pack_activations(x)
    assert_conv_matches(p, rand_x(13, (1, 1, 4097, 2)), type="and", padding="VALID")


@pytest.mark.parametrize("t,pv", [("xnor", -1.0), ("xnor", 0.0), ("and", 1.0), ("and", 0.0),
                                  ("binary_weights", 0.0)])
def test_large_k_every_type_no_overflow(t, pv):
    """C = 8192, 3x3 (K = 73,728) with border corrections of the same size."""
    c = 8192
    x = jnp.ones((1, 3, 3, c))
    w = jnp.ones((3, 3, c, 2))
    y = np.asarray(jb.binary_conv2d(x, w, type=t, padding="SAME", pad_value=pv))[0, :, :, 0]
    inside = {"xnor": 1, "and": 1, "binary_weights": 1}[t]
    padded = pv
    # corner: 4 taps in the image, 5 padded; centre: 9 in the image
    assert y[1, 1] == 9 * c * inside
    assert y[0, 0] == 4 * c * inside + 5 * c * padded
    if t != "binary_weights":
        xr = rand_x(14, (1, 3, 3, c))
        wr = rand_x(15, (3, 3, c, 2))
        assert_conv_matches(xr, wr, type=t, padding="SAME", pad_value=pv)


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("k,s", [((1, 1), (5, 3)), ((2, 2), (4, 4)), ((3, 1), (7, 2))])
def test_stride_larger_than_kernel(t, k, s):
    x = rand_x(16, (2, 11, 9, 35))
    w = rand_x(17, k + (35, 8))
    for padding in ("SAME", "VALID"):
        assert_conv_matches(x, w, type=t, strides=s, padding=padding, beta_scaling=True)


@pytest.mark.parametrize("t", TYPES)
def test_dilation_makes_kernel_larger_than_image(t):
    x = rand_x(18, (2, 4, 5, 33))
    w = rand_x(19, (3, 3, 33, 7))
    pv = {"binary_weights": -2.0, "xnor": 1.0, "and": 1.0}[t]
    for dil, pad in (((3, 3), "SAME"), ((4, 2), ((4, 4), (2, 2))), ((5, 1), ((5, 6), (0, 0)))):
        assert_conv_matches(x, w, type=t, dilation=dil, padding=pad, beta_scaling=True)
        assert_conv_matches(x, w, type=t, dilation=dil, padding=pad, pad_value=pv)
    with pytest.raises(ValueError, match="empty output"):
        jb.binary_conv2d(x, w, type=t, dilation=(3, 3), padding="VALID")


# ------------------------------------------------------------ special values


def _special_x(seed, shape):
    x = np.array(rand_x(seed, shape))
    rng = np.random.default_rng(seed)
    special = np.array([np.nan, np.inf, -np.inf, -np.nan], np.float32)
    mask = rng.random(shape) < 0.15
    x[mask] = rng.choice(special, int(mask.sum()))
    return jnp.asarray(x)


@pytest.mark.parametrize("t", TYPES)
def test_nan_and_inf_inputs_binarize_per_spec(t):
    """bin(NaN) = +1, bin(+Inf) = +1, bin(-Inf) = -1; full-precision paths propagate."""
    x = _special_x(20, (2, 6, 6, 45))
    w = rand_x(21, (3, 3, 45, 10))
    assert_conv_matches(x, w, type=t)
    assert_conv_matches(x, w, type=t, beta_scaling=True, activation="tanh")
    if t != "binary_weights":
        assert_conv_matches(x, w, type=t, output="packed")
    # input_scale 0 turns +-Inf into NaN (Inf * 0), which must binarize to +1.
    scale = np.ones(45, np.float32)
    scale[::3] = 0.0
    assert_conv_matches(x, w, type=t, input_scale=jnp.asarray(scale))
    if t == "xnor":
        only = jnp.asarray(np.array([np.nan, np.inf, -np.inf, -np.nan], np.float32).reshape(1, 1, 1, 4))
        y = jb.binary_conv2d(only, jnp.ones((1, 1, 4, 1)), type="xnor", padding="VALID")
        # -NaN has its sign bit set but is still NaN: +1, like NaN.
        assert float(y[0, 0, 0, 0]) == 1 + 1 - 1 + 1


@pytest.mark.parametrize("t", TYPES)
def test_nan_in_scales_propagates(t):
    x = rand_x(22, (1, 5, 5, 16))
    w = rand_x(23, (3, 3, 16, 6))
    osc = np.ones(6, np.float32)
    osc[2] = np.nan
    ob = np.zeros(6, np.float32)
    ob[4] = np.nan
    y, _ = assert_conv_matches(x, w, type=t, output_scale=jnp.asarray(osc), output_bias=jnp.asarray(ob))
    y = np.asarray(y)
    assert np.isnan(y[..., 2]).all() and np.isnan(y[..., 4]).all()
    assert not np.isnan(y[..., [0, 1, 3, 5]]).any()
    # Through relu NaN stays NaN (comparisons are false); 'sign' gives bin(NaN) = +1.
    y, _ = assert_conv_matches(x, w, type=t, output_scale=jnp.asarray(osc), activation="relu")
    assert np.isnan(np.asarray(y)[..., 2]).all()
    y, _ = assert_conv_matches(x, w, type=t, output_scale=jnp.asarray(osc), activation="sign")
    assert (np.asarray(y)[..., 2] == 1.0).all()
    # A NaN input scale: x' = NaN for that channel, bin(NaN) = +1, and the
    # full-precision sum and beta become NaN.
    isc = np.ones(16, np.float32)
    isc[7] = np.nan
    y, _ = assert_conv_matches(x, w, type=t, input_scale=jnp.asarray(isc), beta_scaling=True)
    assert np.isnan(np.asarray(y)).all()
    y, _ = assert_conv_matches(x, w, type=t, input_scale=jnp.asarray(isc))
    assert np.isnan(np.asarray(y)).all() == (t == "binary_weights")


# ------------------------------------------------------------ operand forms


@pytest.mark.parametrize("t", TYPES)
def test_noncontiguous_and_transposed_inputs(t):
    base = np.asarray(rand_x(24, (3, 14, 12, 40)))
    x_strided = base[::2, ::-2, 1::2, ::2]  # negative and non-unit strides, numpy view
    assert not x_strided.flags.c_contiguous
    wbase = np.asarray(rand_x(25, (6, 20, 3, 3)))  # OIHW in memory
    w_view = wbase.transpose(2, 3, 1, 0)          # HWIO view, Fortran-like strides
    assert not w_view.flags.c_contiguous
    ref = _ref(jnp.asarray(np.ascontiguousarray(x_strided)), jnp.asarray(np.ascontiguousarray(w_view)),
               type=t, beta_scaling=True)
    out = jb.binary_conv2d(x_strided, w_view, type=t, beta_scaling=True)
    assert_conv_matches(jnp.asarray(x_strided), jnp.asarray(w_view), type=t, beta_scaling=True)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-4)
    # Transposes inside jit (XLA picks the layout) give the same numbers.
    f = jax.jit(lambda xn, wo: jb.binary_conv2d(jnp.transpose(xn, (0, 2, 3, 1)),
                                                  jnp.transpose(wo, (2, 3, 1, 0)), type=t,
                                                  beta_scaling=True))
    y = f(jnp.transpose(jnp.asarray(np.ascontiguousarray(x_strided)), (0, 3, 1, 2)),
          jnp.asarray(wbase))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(out))


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("wdtype", [np.int8, np.int32, np.uint8, np.int64, np.bool_])
def test_int_and_bool_weights_match_reference(t, wdtype):
    rng = np.random.default_rng(26)
    w = rng.integers(-3, 3, (3, 3, 24, 10))
    if wdtype == np.bool_:
        w = w > 0
    w = w.astype(wdtype)  # zeros included: bin(0) = +1; uint8 wraps negatives to > 0
    x = rand_x(27, (2, 6, 6, 24))
    assert_conv_matches(x, jnp.asarray(w), type=t, pad_value=1.0 if t != "binary_weights" else 0.5)
    as_float = jb.binary_conv2d(x, jnp.asarray(w.astype(np.float32) if wdtype != np.bool_
                                              else np.where(w, 1.0, -1.0).astype(np.float32)), type=t)
    np.testing.assert_array_equal(np.asarray(jb.binary_conv2d(x, jnp.asarray(w), type=t)),
                                  np.asarray(as_float))


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("xdtype,sdtype", [(jnp.bfloat16, jnp.float32), (jnp.float32, jnp.float16),
                                           (jnp.float16, jnp.bfloat16), (jnp.float32, jnp.int32),
                                           (jnp.float16, jnp.bool_)])
def test_mismatched_dtypes_of_x_and_scales(t, xdtype, sdtype):
    c, o = 20, 6
    x = rand_x(28, (2, 5, 5, c), xdtype)
    w = rand_x(29, (3, 3, c, o))
    cast = lambda v: (v > 1.0) if sdtype == jnp.bool_ else v.astype(sdtype)
    kw = dict(type=t, input_bias=cast(rand_vec(30, c, -1, 2)), input_scale=cast(rand_vec(31, c, 0.5, 3)),
              output_scale=cast(rand_vec(32, o, 0.5, 3)), output_bias=cast(rand_vec(33, o, -2, 2)),
              beta_scaling=True)
    out, ref = assert_conv_matches(x, w, **kw)
    assert out.dtype == xdtype


@pytest.mark.parametrize("t", TYPES)
def test_scalar_and_per_channel_scales_agree_bitwise(t):
    c, o = 24, 8
    x = rand_x(34, (2, 6, 6, c))
    w = rand_x(35, (3, 3, c, o))
    vals = dict(input_bias=0.25, input_scale=-1.5, output_scale=0.375, output_bias=-0.5)
    per_channel = {k: jnp.full((c if k.startswith("input") else o,), v, jnp.float32)
                   for k, v in vals.items()}
    want = np.asarray(jb.binary_conv2d(x, w, type=t, beta_scaling=True, **per_channel))
    for form in (lambda v: v, np.float32, lambda v: jnp.asarray(v, jnp.float32),
                 lambda v: jnp.asarray([v], jnp.float32), lambda v: np.float64(v)):
        got = jb.binary_conv2d(x, w, type=t, beta_scaling=True, **{k: form(v) for k, v in vals.items()})
        np.testing.assert_array_equal(np.asarray(got), want)
    assert_conv_matches(x, w, type=t, beta_scaling=True, **vals)


# ------------------------------------------------------------ concurrency and leaks


def _rss_kib():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _hammer(f, inputs, want, *, threads, reps, start_together):
    """Call f from `threads` threads at once, `reps` times each on rotating
    inputs; every result must equal the single-threaded one bit for bit."""
    errors = []
    barrier = threading.Barrier(threads) if start_together else None

    def worker(i):
        try:
            if barrier is not None:
                barrier.wait()
            for rep in range(reps):
                k = (i + rep) % len(inputs)
                for g, e in zip(f(inputs[k]), want[k]):
                    np.testing.assert_array_equal(np.asarray(g), e)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"thread {i}: {type(e).__name__}: {e}")

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in pool), "a thread hung"
    assert not errors, errors[:3]


def test_many_threads_call_one_jitted_function():
    c, o = 48, 40
    w = rand_x(36, (3, 3, c, o))
    f = jax.jit(lambda x: (jb.binary_conv2d(x, w, type="xnor", beta_scaling=True),
                           jb.binary_conv2d(x, w, type="binary_weights", strides=2),
                           jb.binary_conv2d(x, w, type="and", output="packed").words))
    inputs = [rand_x(100 + i, (2, 9, 9, c)) for i in range(12)]
    want = [jax.tree.map(np.asarray, f(x)) for x in inputs]
    ref = [np.asarray(_ref(x, w, type="xnor", beta_scaling=True)) for x in inputs[:3]]
    for wv, r in zip(want, ref):
        np.testing.assert_allclose(wv[0], r, rtol=1e-5)
    _hammer(f, inputs, want, threads=12, reps=15, start_together=True)


def test_many_threads_call_the_metal_shim():
    """The shim keeps its fibers and threadgroup memory per OS thread: calls
    from many threads at once must not see each other's state."""
    if "metal_shim" not in jb.lowering.available:
        pytest.skip(f"jax_binconv._metal_shim did not load: {jb.lowering.load_errors.get('_metal_shim')}")
    c, o = 48, 40
    # On the CPU device even where a GPU is the default (the shim is a CPU
    # lowering; a GPU call would lower for cuda).
    cpu = jax.devices("cpu")[0]
    w = jax.device_put(rand_x(42, (3, 3, c, o)), cpu)
    with jb.config.cpu_kernel_override("metal_shim"):
        f = jax.jit(lambda x: (jb.binary_conv2d(x, w, type="xnor", beta_scaling=True),
                               jb.binary_conv2d(x, w, type="binary_weights", strides=2),
                               jb.binary_conv2d(x, w[:, :, :24], type="and", groups=2,
                                                output="packed").words))
        assert jb.TARGETS["metal_shim"] in f.lower(jax.device_put(rand_x(0, (2, 9, 9, c)), cpu)).as_text()
        inputs = [jax.device_put(rand_x(200 + i, (2, 9, 9, c)), cpu) for i in range(8)]
        want = [jax.tree.map(np.asarray, f(x)) for x in inputs]
    _hammer(f, inputs, want, threads=8, reps=10, start_together=False)


def test_repeated_calls_keep_memory_flat():
    """10,000 calls: resident memory must not grow (a 1 KiB/call leak = 10 MiB)."""
    c, o = 64, 32
    x = rand_x(37, (1, 8, 8, c))
    w = jb.pack_weights(rand_x(38, (3, 3, c, o)))
    f = jax.jit(lambda x, s: (jb.binary_conv2d(x, w, type="xnor", beta_scaling=True, output_scale=s),
                              jb.binary_conv2d(x, w, type="and", output="packed").words))
    g = jax.jit(lambda x: jb.binary_conv2d(x, w, type="binary_weights", activation="relu"))
    s = jnp.ones((o,))
    for _ in range(500):  # warm up: compile, arenas, allocator pools
        jax.block_until_ready((f(x, s), g(x)))
    before = _rss_kib()
    for i in range(5000):
        out = f(x, s)
        out2 = g(x)
        if i % 1000 == 0:
            jax.block_until_ready((out, out2))
    jax.block_until_ready((out, out2))
    grown = _rss_kib() - before
    assert grown < 8 * 1024, f"RSS grew by {grown} KiB over 10,000 calls"


def test_recompiling_many_shapes_does_not_leak():
    """New shapes each compile a new executable; after clearing JAX's caches,
    nothing of ours (registrations, scratch) may stay behind per shape."""
    def burst(offset):
        for i in range(20):
            h = 4 + (i + offset) % 9
            c = 8 + 3 * ((i + offset) % 13)
            x = rand_x(i, (1, h, h + 1, c))
            w = rand_x(i + 1, (3, 3, c, 5 + i % 4))
            jax.block_until_ready(jb.binary_conv2d(x, w, type=TYPES[i % 3], strides=1 + i % 2))
        jax.clear_caches()

    burst(0)
    before = _rss_kib()
    for k in range(3):
        burst(200 + 50 * k)
    grown = _rss_kib() - before
    # 60 compilations; XLA/LLVM keep a little global state of their own.
    assert grown < 32 * 1024, f"RSS grew by {grown} KiB over 60 recompilations"
    # Our targets are registered once, at import, and nowhere else.
    assert set(jb.lowering.available) <= {"cpu", "metal_shim", "cuda"}


# ------------------------------------------------------------ determinism

_DET_SCRIPT = textwrap.dedent("""
    import hashlib, json, os, sys
    import jax, jax.numpy as jnp, numpy as np
    import jax_binconv as jb
    cpu = jb.lowering.available["cpu"]
    if len(sys.argv) > 1 and sys.argv[1] != "-":
        cpu.set_num_threads(int(sys.argv[1]))
    rng = np.random.default_rng(7)
    def arr(*shape):
        v = rng.standard_normal(shape).astype(np.float32)
        v[rng.random(shape) < 0.1] = 0.0
        return jnp.asarray(v)
    cases = [
        ("xnor_beta", arr(2, 23, 21, 96), arr(3, 3, 96, 70),
         dict(type="xnor", beta_scaling=True, activation="tanh", output_scale=arr(70), pad_value=-1.0)),
        ("and_groups", arr(2, 19, 17, 96), arr(3, 3, 32, 66),
         dict(type="and", groups=3, strides=2, beta_scaling=True, output_bias=arr(66))),
        ("bw_float_acc", arr(3, 17, 19, 200), arr(3, 3, 200, 90),
         dict(type="binary_weights", beta_scaling=True, input_bias=arr(200), output_scale=arr(90),
              pad_value=0.5)),
        ("bw_dense", arr(64, 1, 1, 1000), arr(1, 1, 1000, 130), dict(type="binary_weights")),
        ("packed", arr(2, 16, 16, 64), arr(3, 3, 64, 100), dict(type="xnor", output="packed")),
    ]
    out = {"pool_threads": 0, "max_workers": 0, "hashes": {}, "isa_rel_diff": {}}
    first = {}
    for isa in cpu.available_isas():
        cpu.set_isa(isa)
        for name, x, w, kw in cases:
            y = jax.jit(lambda x, w, kw=kw: jb.binary_conv2d(x, w, **kw))(x, w)
            y = np.asarray(y.words if kw.get("output") == "packed" else y)
            st = cpu.last_call_stats()
            out["pool_threads"] = max(out["pool_threads"], st["pool_threads"])
            out["max_workers"] = max(out["max_workers"], st["workers"])
            out["hashes"][isa + "/" + name] = hashlib.sha256(y.tobytes()).hexdigest()
            if name in first and y.dtype == np.float32:
                d = np.abs(y.astype(np.float64) - first[name]) / np.maximum(np.abs(first[name]), 1e-30)
                out["isa_rel_diff"][name] = max(out["isa_rel_diff"].get(name, 0.0), float(d.max()))
            first.setdefault(name, y.astype(np.float64) if y.dtype == np.float32 else y)
    print(json.dumps(out))
""")


def _run_det(threads="-", env_extra=None, prefix=()):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.pop("JAX_BINCONV_CPU_THREADS", None)
    env["JAX_PLATFORMS"] = "cpu"  # the CPU kernel's threads and ISAs, also where a GPU is present
    env.update(env_extra or {})
    env["PYTHONPATH"] = PKG_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(list(prefix) + [sys.executable, "-c", _DET_SCRIPT, threads], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_bit_identical_across_runs_threads_and_isas():
    """Same inputs -> the same bits, whatever the thread count (1, XLA's pool,
    8 virtual devices' pool) or ISA (scalar/AVX2/AVX-512), including beta
    scaling and the BINARY_WEIGHTS float accumulation."""
    runs = {
        "default": _run_det(),
        "default_again": _run_det(),
        "env_cap_1": _run_det(env_extra={"JAX_BINCONV_CPU_THREADS": "1"}),
        "eight_devices_cap_3": _run_det("3", env_extra={
            "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}),
    }
    base = runs["default"]["hashes"]
    isas = {k.split("/")[0] for k in base}
    assert "scalar" in isas
    # The thread settings really differ (else this test proves nothing).
    assert runs["env_cap_1"]["max_workers"] == 1
    assert max(r["max_workers"] for r in runs.values()) >= 2, {k: r["max_workers"] for k, r in runs.items()}
    for name, r in runs.items():
        assert r["hashes"] == base, f"{name} differs from default: " + str(
            [k for k in base if r["hashes"].get(k) != base[k]])
    # Across ISAs: the BINARY_WEIGHTS float sums and packed bits are
    # bit-identical (the driver fixes their order); beta of XNOR/AND (the mean
    # of |x'| over channels, summed in each ISA's vector order) may differ in
    # the last bits -- within SPEC's 1e-5, but not bit-reproducible across
    # machines with different ISAs (reported to the CPU owner).
    by_case = {}
    for k, h in base.items():
        by_case.setdefault(k.split("/", 1)[1], set()).add(h)
    for name in ("bw_float_acc", "bw_dense", "packed"):
        assert len(by_case[name]) == 1, f"{name} differs between ISAs"
    rel = runs["default"]["isa_rel_diff"]
    assert all(v <= 1e-5 for v in rel.values()), rel  # SPEC section 6 tolerance


def test_same_process_repeated_calls_bit_identical():
    x = rand_x(40, (2, 13, 11, 150))
    w = rand_x(41, (3, 3, 150, 48))
    fs = [jax.jit(functools.partial(jb.binary_conv2d, type=t, beta_scaling=True, input_bias=0.1))
          for t in TYPES]
    first = [np.asarray(f(x, w)) for f in fs]
    for _ in range(20):
        for f, want in zip(fs, first):
            assert np.asarray(f(x, w)).tobytes() == want.tobytes()


# ------------------------------------------------------------ regressions (bugs found)


@pytest.mark.parametrize("o", [40, 64])
@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_bug_binary_weights_packed_output_not_zeroed(isa, o):
    """Found by fuzz/ffi_fuzz.py: BINARY_WEIGHTS with output="packed" OR-ed its
    bits into an output buffer it never cleared (cpp/cpu/conv_driver.h,
    run_float; run_binary does clear it), so results carried garbage bits from
    whatever XLA's allocator left there. Fixed in 08bc4d0. O=64 also covers
    blocks that own whole words (stored, not OR-ed), here a word of zeros."""
    cpu = jb.lowering.available["cpu"]
    if isa not in cpu.available_isas():
        pytest.skip(f"this CPU cannot run {isa}")
    previous = cpu.get_isa()
    cpu.set_isa(isa)
    try:
        rng = np.random.default_rng(0)
        x = np.abs(rng.standard_normal((2, 8, 8, 16))).astype(np.float32)
        w = rng.standard_normal((3, 3, 16, o)).astype(np.float32)
        w[..., :32] = -1.0  # a whole word of negative outputs: all its bits 0
        # On the CPU device (the ISA under test), also where a GPU is the default.
        x, w = jax.device_put((x, w), jax.devices("cpu")[0])
        want = np.asarray(_ref(x, w, type="binary_weights", output="packed").words)

        @jax.jit
        def f(x, w):
            # A freed temporary full of ones-bits that XLA may hand to the result.
            junk = jnp.full((2, 8, 8, 64), -1, jnp.int32).sum()
            return jb.binary_conv2d(x + 0 * junk, w, type="binary_weights", output="packed").words

        bad = 0
        for _ in range(10):
            bad += int((np.asarray(f(x, w)) != want).sum())
            bad += int((np.asarray(jb.binary_conv2d(x, w, type="binary_weights",
                                                    output="packed").words) != want).sum())
        assert bad == 0, f"{bad} packed words differ from the reference over 20 calls"
    finally:
        cpu.set_isa(previous)


_OVERFLOW_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, jax
    import jax_binconv as jb
    n, c, h = (int(v) for v in sys.argv[1:4])
    attrs = dict(conv_type=np.int32(1), in_channels=c, stride_h=1, stride_w=1, dilation_h=1,
                 dilation_w=1, pad_top=0, pad_bottom=0, pad_left=0, pad_right=0, groups=1,
                 pad_value=np.float32(0), beta_scaling=False, activation=np.int32(0),
                 negative_slope=np.float32(0))
    attrs.update({k: int(v) for k, v in (a.split("=") for a in sys.argv[4:])})
    x = np.ones((n, h, h, c), np.float32)
    w = np.zeros((4, 1, 1, (c + 31) // 32), np.uint32)
    ho = (h + attrs["pad_top"] + attrs["pad_bottom"] - 1) // attrs["stride_h"] + 1
    wo = (h + attrs["pad_left"] + attrs["pad_right"] - 1) // attrs["stride_w"] + 1
    # v1 (six operands): its checks are the ones v2 runs after splitting its
    # affine operand (tests/test_cpu_kernel.py covers the split).
    f = jax.ffi.ffi_call("jax_binconv_conv2d_cpu_v1", jax.ShapeDtypeStruct((n, ho, wo, 4), np.float32))
    try:
        y = f(x, w, np.zeros(c, np.float32), np.ones(c, np.float32), np.ones(4, np.float32),
              np.zeros(4, np.float32), **attrs)
        # Correct answer: every tap of every output is padding (acc = 0), or
        # the centre tap reads the image (acc = -c), by where the window lands.
        print("RESULT", np.unique(np.asarray(y)).tolist())
    except Exception as e:
        print("ERROR", type(e).__name__, str(e).splitlines()[0])
""")


@pytest.mark.parametrize("shape,attrs", [
    # Hp = H + 2^61 + 2^61 overflows; a stride of 2^63-1 keeps the output 1 row.
    ((1, 8, 4), ["pad_top=2305843009213693952", "pad_bottom=2305843009213693952",
                 "stride_h=9223372036854775807"]),
    ((1, 8, 4), ["pad_left=4611686018427387899", "pad_right=1", "stride_w=4611686018427387904"]),
    # Every attribute <= 2^24, but N*Hp*Wp*words = 2^9 * 2^25 * 2^25 * 2^5 = 2^64.
    ((512, 2048, 1), ["pad_top=16777216", "pad_bottom=16777215", "pad_left=16777216",
                      "pad_right=16777215", "stride_h=16777216", "stride_w=16777216"]),
], ids=["pad_h_2^61", "pad_w_2^62", "bounded_pads_big_batch"])
def test_bug_huge_padding_overflows_scratch_size(shape, attrs):
    """Found by fuzz/ffi_fuzz.py: the CPU handler accepted padding/stride
    values whose size products overflow int64 (N*Hp*Wp*words in
    cpp/cpu/conv_driver.h run_binary): the scratch buffer came out tiny and the
    packing loop wrote far past it (SIGSEGV; under UBSan 'signed integer
    overflow' first). 540cda9 bounds each attribute by 2^24, which fixes the
    first two; the third stays within that bound and overflowed until 02c5ae8
    (size products checked in cpp/common/ffi_conv.h). It must be an
    InvalidArgument error (or the right numbers)."""
    # (JAX_PLATFORMS=cpu: the CPU handler, also where a GPU is the default device.)
    env = dict(os.environ, PYTHONPATH=PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _OVERFLOW_SCRIPT, *map(str, shape)] + attrs,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (f"the process died with {proc.returncode} "
                                  f"(signal {-proc.returncode if proc.returncode < 0 else '-'}): "
                                  f"{proc.stderr[-1500:]}")
    out = proc.stdout.strip()
    if out.startswith("RESULT"):
        assert set(json.loads(out.split(" ", 1)[1])) <= {0.0, -float(shape[1])}, out
    else:
        assert out.startswith("ERROR") and "INVALID_ARGUMENT" in out, out


def test_bug_cuda_attributes_truncated_to_int32():
    """Found by reading cpp/cuda (first run on a GPU in session 9, S9-9): the
    CUDA handler bounds image and kernel sizes but not strides, dilations or
    padding, and binconv_kernels.cu narrows them to int (EpiArgs). With
    pad_top = 2^32 and stride_h = 2^33 the single output row lies entirely in
    the padding (acc = 0 with pad_value 0), but (int)2^32 = 0 makes the kernel
    read image row 0 (acc = -8). Must be an InvalidArgument error or zeros."""
    try:
        gpu = jax.devices("gpu")[0]
    except RuntimeError:
        pytest.skip("no GPU visible to JAX")
    if "cuda" not in jb.lowering.available:
        pytest.skip(f"jax_binconv._cuda did not load: {jb.lowering.load_errors.get('_cuda')}")
    attrs = dict(conv_type=np.int32(1), in_channels=8, stride_h=2**33, stride_w=1, dilation_h=1,
                 dilation_w=1, pad_top=2**32, pad_bottom=0, pad_left=0, pad_right=0, groups=1,
                 pad_value=np.float32(0), beta_scaling=False, activation=np.int32(0),
                 negative_slope=np.float32(0))
    ops = [jax.device_put(a, gpu) for a in (
        np.ones((1, 4, 4, 8), np.float32), np.zeros((4, 1, 1, 1), np.uint32),
        np.zeros(8, np.float32), np.ones(8, np.float32), np.ones(4, np.float32),
        np.zeros(4, np.float32))]
    # v1: these six operands and one result (TARGETS["cuda"] is v3: three
    # operands and a workspace result; called with v1's operands XLA killed
    # the process instead of reporting the wrong arity, see docs/ffi.md).
    call = jax.ffi.ffi_call("jax_binconv_conv2d_cuda_v1", jax.ShapeDtypeStruct((1, 1, 4, 4), np.float32))
    try:
        y = np.asarray(jax.jit(lambda *a: call(*a, **attrs))(*ops))
    except Exception as e:  # noqa: BLE001
        assert "INVALID_ARGUMENT" in str(e), e
        return
    np.testing.assert_array_equal(y, 0.0, err_msg="rows inside the padding read the image")
