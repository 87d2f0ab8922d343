"""The C++ CPU kernel (through the primitive's cpu lowering) against the
pure-JAX reference over a grid of shapes and options."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (GRID_CHANNELS, GRID_KERNELS, GRID_PADDINGS, assert_conv_matches,
                      assert_steps_near_zero, pad_values, rand_vec, rand_x)
from fuzz_cases import _fits, case_inputs, check_draw, configuration, shrink, simpler
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jax_binconv as jb

TYPES = ["binary_weights", "xnor", "and"]


def test_cpu_lowering_contains_our_custom_call():
    """A silent fallback to the reference would make every other test here vacuous."""
    assert "cpu" in jb.lowering.available, jb.lowering.load_errors.get("_cpu")
    # On the CPU device, also where a GPU is the default (it would lower for cuda).
    x, w = jax.device_put((rand_x(0, (1, 6, 6, 8)), rand_x(1, (3, 3, 8, 4))), jax.devices("cpu")[0])
    text = jax.jit(lambda x, w: jb.binary_conv2d(x, w)).lower(x, w).as_text()
    assert jb.TARGETS["cpu"] in text
    compiled = jax.jit(lambda x, w: jb.binary_conv2d(x, w)).lower(x, w).compile().as_text()
    assert jb.TARGETS["cpu"] in compiled


def test_reference_override_lowers_without_custom_call():
    x, w = jax.device_put((rand_x(0, (1, 6, 6, 8)), rand_x(1, (3, 3, 8, 4))), jax.devices("cpu")[0])
    with jb.config.cpu_kernel_override("reference"):
        text = jax.jit(lambda x, w: jb.binary_conv2d(x, w)).lower(x, w).as_text()
    assert jb.TARGETS["cpu"] not in text


# ---------------------------------------------------------------- the grid
# One axis varied at a time around a base case, for each type, plus channel
# counts that straddle word boundaries.

CHANNELS, KERNELS, PADDINGS = GRID_CHANNELS, GRID_KERNELS, GRID_PADDINGS


def _case(t, c=33, o=20, k=(3, 3), hw=(9, 8), n=2, seed=0, groups=1, **kw):
    x = rand_x(seed, (n,) + hw + (c,))
    w = rand_x(seed + 1, k + (c // groups, o))
    assert_conv_matches(x, w, type=t, groups=groups, **kw)


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("c", CHANNELS)
def test_channels(t, c):
    _case(t, c=c, o=7 if c < 64 else 40, seed=c)


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("k", KERNELS)
@pytest.mark.parametrize("padding", PADDINGS)
def test_kernels_and_padding(t, k, padding):
    # A seed that is the same in every process (str hashes are salted per process).
    _case(t, k=k, padding=padding, seed=len(str(padding)) + 7 * k[0] + k[1])


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("strides,dilation", [((2, 2), (1, 1)), ((1, 2), (2, 1)), ((2, 1), (2, 2)),
                                              ((1, 1), (2, 2))])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_strides_dilation(t, strides, dilation, padding):
    _case(t, strides=strides, dilation=dilation, padding=padding, hw=(11, 10))


@pytest.mark.parametrize("t,pad_value", [(t, v) for t in TYPES for v in pad_values(t)])
@pytest.mark.parametrize("padding", ["SAME", ((2, 1), (0, 3))])
def test_pad_values(t, pad_value, padding):
    _case(t, pad_value=pad_value, padding=padding)


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("groups,c,o", [(2, 66, 8), (4, 64, 12), (2, 130, 6), (4, 12, 8)])
def test_groups(t, groups, c, o):
    _case(t, c=c, o=o, groups=groups)


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("activation", [None, "relu", "relu6", "leaky_relu", "sigmoid", "tanh",
                                        "hard_tanh", "sign"])
def test_epilogue(t, activation):
    c, o = 33, 20
    x = rand_x(3, (2, 7, 7, c))
    w = rand_x(4, (3, 3, c, o))
    assert_conv_matches(
        x, w, type=t, activation=activation, negative_slope=0.2,
        input_bias=rand_vec(5, c, -0.5, 0.5), input_scale=rand_vec(6, c, 0.5, 1.5, signed=True),
        output_scale=rand_vec(7, o, 0.01, 0.1, signed=True), output_bias=rand_vec(8, o, -2, 2),
        beta_scaling=True)


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("padding,strides,dilation", [("SAME", 1, 1), ("VALID", 2, 1),
                                                      (((2, 0), (1, 2)), 1, 2)])
def test_beta_scaling(t, padding, strides, dilation):
    _case(t, beta_scaling=True, padding=padding, strides=strides, dilation=dilation,
          output_scale=0.5)


@pytest.mark.parametrize("t", TYPES)
def test_scalar_scales_and_biases(t):
    _case(t, input_bias=0.25, input_scale=-2.0, output_scale=0.125, output_bias=-1.0)


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs(t, dtype):
    c, o = 40, 9
    x = rand_x(9, (2, 6, 6, c), dtype)
    w = rand_x(10, (3, 3, c, o))
    out, _ = assert_conv_matches(x, w, type=t, output_scale=0.05)
    assert out.dtype == dtype


@pytest.mark.parametrize("t", TYPES)
def test_nchw_oihw(t):
    c, o = 20, 12
    x = rand_x(11, (2, c, 7, 9))
    w = rand_x(12, (o, c, 3, 3))
    out, _ = assert_conv_matches(x, w, type=t, dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                 strides=(2, 1))
    assert out.shape == (2, o, 4, 9)
    # Same numbers as the NHWC call.
    nhwc = jb.binary_conv2d(jnp.transpose(x, (0, 2, 3, 1)), jnp.transpose(w, (2, 3, 1, 0)),
                            type=t, strides=(2, 1))
    np.testing.assert_allclose(np.asarray(out), np.transpose(np.asarray(nhwc), (0, 3, 1, 2)),
                               rtol=1e-6, atol=1e-5)


def test_special_values_at_zero_and_clip():
    """bin(0) = bin(-0.0) = +1; values at +-clip binarize by sign."""
    c, o = 8, 4
    vals = np.array([0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30, 0.0, -0.0], np.float32)
    x = jnp.asarray(np.tile(vals, (1, 3, 3, 1)))
    w = rand_x(13, (1, 1, c, o))
    for t in TYPES:
        assert_conv_matches(x, w, type=t, padding="VALID")
    # Direct check of bin on the zero signs: XNOR with all-+1 weights counts
    # +1 for 0.0, -0.0, 1, 1e-30 and -1 for -1, -1e-30.
    y = jb.binary_conv2d(x, jnp.ones((1, 1, c, 1)), type="xnor", padding="VALID")
    assert float(y[0, 0, 0, 0]) == 6 - 2


def test_nan_binarizes_to_plus_one():
    x = jnp.full((1, 2, 2, 4), jnp.nan)
    y = jb.binary_conv2d(x, jnp.ones((1, 1, 4, 1)), type="xnor", padding="VALID")
    np.testing.assert_array_equal(np.asarray(y), 4.0)


@pytest.mark.parametrize("t", ["xnor", "and"])
def test_zero_padding_needs_correction(t):
    """With pad_value 0, border outputs count fewer taps than interior ones."""
    c = 64
    x = jnp.ones((1, 4, 4, c))
    w = jnp.ones((3, 3, c, 1))
    y = np.asarray(jb.binary_conv2d(x, w, type=t, padding="SAME"))[0, :, :, 0]
    assert y[0, 0] == 4 * c and y[0, 1] == 6 * c and y[1, 1] == 9 * c
    y1 = np.asarray(jb.binary_conv2d(x, w, type=t, padding="SAME", pad_value=1.0))[0, :, :, 0]
    assert np.all(y1 == 9 * c)
    if t == "xnor":
        ym = np.asarray(jb.binary_conv2d(x, w, type=t, padding="SAME", pad_value=-1.0))[0, :, :, 0]
        assert ym[0, 0] == 4 * c - 5 * c


@pytest.mark.parametrize("t", TYPES)
def test_packed_weights_equal_float_weights(t):
    c, o = 70, 10
    x = rand_x(14, (2, 6, 6, c))
    w = rand_x(15, (3, 3, c, o))
    a = jb.binary_conv2d(x, w, type=t, beta_scaling=True)
    b = jb.binary_conv2d(x, jb.pack_weights(w), type=t, beta_scaling=True)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # OIHW packing too.
    p = jb.pack_weights(jnp.transpose(w, (3, 2, 0, 1)), layout="OIHW")
    np.testing.assert_array_equal(np.asarray(p.words), np.asarray(jb.pack_weights(w).words))


@pytest.mark.parametrize("t", ["xnor", "and"])
@pytest.mark.parametrize("c,groups", [(33, 1), (64, 2), (66, 2), (96, 3)])
def test_packed_activations_in_and_out(t, c, groups):
    o = 2 * c
    x = rand_x(16, (2, 7, 7, c))
    w = rand_x(17, (3, 3, c, o))
    scale = rand_vec(18, o, 0.5, 1.0, signed=True)
    bias = rand_vec(19, o, -3, 3)
    packed, ref_packed = assert_conv_matches(x, w, type=t, output="packed", output_scale=scale,
                                             output_bias=bias)
    assert isinstance(packed, jb.PackedActivations) and packed.channels == o
    # The packed output is bin(float output).
    f = jb.binary_conv2d(x, w, type=t, output_scale=scale, output_bias=bias)
    np.testing.assert_array_equal(np.asarray(jb.pack_activations(f).words), np.asarray(packed.words))
    # Packed input equals the float input it packs.
    w2 = rand_x(20, (3, 3, o // groups, 8 * groups))
    for pv in (0.0, 1.0):
        assert_conv_matches(packed, w2, type=t, groups=groups, pad_value=pv, beta_scaling=True)
        via_float = jb.binary_conv2d(jb.unpack_activations(packed), w2, type=t, groups=groups,
                                     pad_value=pv, beta_scaling=True)
        direct = jb.binary_conv2d(packed, w2, type=t, groups=groups, pad_value=pv, beta_scaling=True)
        np.testing.assert_allclose(np.asarray(direct), np.asarray(via_float), rtol=1e-6)


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("groups,o", [(3, 18), (3, 33), (3, 6), (2, 64), (1, 40)])
def test_packed_output_with_groups(t, groups, o):
    """Regression (found by fuzzing): BINARY_WEIGHTS packed output with groups
    whose channels share a word left the output words unzeroed."""
    x = rand_x(40, (2, 11, 11, 3 * 4 if groups == 3 else 8))
    w = rand_x(41, (3, 3, x.shape[-1] // groups, o))
    assert_conv_matches(x, w, type=t, groups=groups, output="packed", strides=5)
    assert_conv_matches(x, w, type=t, groups=groups, output="packed", padding="VALID")


def test_trailing_bits_of_packed_input_are_ignored_by_nobody():
    """Packed words must keep trailing bits 0; pack_activations guarantees it."""
    x = rand_x(21, (1, 3, 3, 40))
    p = jb.pack_activations(x)
    assert np.all((np.asarray(p.words)[..., 1] >> 8) == 0)


def test_empty_batch():
    x = jnp.zeros((0, 5, 5, 8))
    w = rand_x(22, (3, 3, 8, 4))
    for t in TYPES:
        y = jb.binary_conv2d(x, w, type=t)
        assert y.shape == (0, 5, 5, 4)


@pytest.mark.parametrize("t", TYPES)
def test_binary_dense(t):
    k, o = 100, 24
    x = rand_x(23, (3, 5, k))
    w = rand_x(24, (k, o))
    y = jb.binary_dense(x, w, type=t, beta_scaling=True, output_scale=0.1, activation="tanh")
    r = jb.reference.binary_dense(x, w, type=t, beta_scaling=True, output_scale=0.1,
                                  activation="tanh")
    assert y.shape == (3, 5, o)
    np.testing.assert_allclose(np.asarray(y), np.asarray(r), rtol=1e-5, atol=1e-5)
    # Against a plain matrix product of the binarized values.
    xb = jnp.where(x < 0, -1.0, 1.0)
    wb = jnp.where(w < 0, -1.0, 1.0)
    if t == "and":
        xb, wb = (xb + 1) / 2, (wb + 1) / 2
    if t == "binary_weights":
        xb = x
    acc = jnp.einsum("abk,ko->abo", xb, wb, precision="highest")
    beta = jnp.mean(jnp.abs(x), axis=-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(y), np.asarray(jnp.tanh(acc * 0.1 * beta)),
                               rtol=1e-5, atol=1e-5)


def test_large_k_no_overflow():
    """C = 8192, 3x3: K = 73,728 taps, beyond any 16-bit accumulator."""
    c = 8192
    x = jnp.ones((1, 3, 3, c))
    w = jnp.ones((3, 3, c, 2))
    y = jb.binary_conv2d(x, w, type="xnor", padding="VALID")
    np.testing.assert_array_equal(np.asarray(y), 9 * c)
    xr = rand_x(25, (1, 4, 4, c))
    wr = rand_x(26, (3, 3, c, 3))
    assert_conv_matches(xr, wr, type="xnor", padding="SAME")


# ---------------------------------------------------------------- fuzzing


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    t=st.sampled_from(TYPES),
    n=st.integers(1, 2), h=st.integers(1, 9), w=st.integers(1, 9),
    c=st.integers(1, 80), o=st.integers(1, 40),
    kh=st.integers(1, 4), kw=st.integers(1, 4),
    sh=st.integers(1, 3), sw=st.integers(1, 3), dh=st.integers(1, 2), dw=st.integers(1, 2),
    groups=st.sampled_from([1, 2, 4]),
    pad=st.one_of(st.sampled_from(["SAME", "VALID"]),
                  st.tuples(st.tuples(st.integers(0, 3), st.integers(0, 3)),
                            st.tuples(st.integers(0, 3), st.integers(0, 3)))),
    pv_index=st.integers(0, 2), beta=st.booleans(),
    act=st.sampled_from([None, "relu", "tanh", "sign", "leaky_relu"]),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_random_configurations(t, n, h, w, c, o, kh, kw, sh, sw, dh, dw, groups, pad,
                                          pv_index, beta, act, seed):
    c = max(groups, c - c % groups)
    o = max(groups, o - o % groups)
    eff = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
    if pad == "VALID" and (eff[0] > h or eff[1] > w):
        return
    if isinstance(pad, tuple) and (h + sum(pad[0]) < eff[0] or w + sum(pad[1]) < eff[1]):
        return
    pv = pad_values(t)[pv_index % len(pad_values(t))]
    x = rand_x(seed, (n, h, w, c))
    wt = rand_x(seed + 1, (kh, kw, c // groups, o))
    assert_conv_matches(x, wt, type=t, strides=(sh, sw), dilation=(dh, dw), padding=pad,
                        groups=groups, pad_value=pv, beta_scaling=beta, activation=act,
                        output_scale=rand_vec(seed, o, 0.1, 1.0, signed=True),
                        output_bias=rand_vec(seed + 2, o, -1, 1))


@pytest.mark.parametrize("index", range(24))
def test_fuzz_draws_on_the_cpu_kernel(index):
    """The CUDA fuzz test's first draws (tests/fuzz_cases.py: the fast GPU
    kernel's channel counts up to 1024, many images or many rows, packed
    x and output, bfloat16 / float16 x, NCHW) through the CPU kernel
    against the reference."""
    check_draw(configuration(index), _check_draw_cpu, 40)


def _check_draw_cpu(cfg):
    x, w, kw = case_inputs(cfg)
    assert_conv_matches(x, w, **kw)


def test_fuzz_shrink_finds_the_plainest_failing_configuration():
    """fuzz_cases.shrink, on a known failure (a stand-in predicate): every
    field that does not matter goes to its plainest value, those that do
    stay, within the budget."""
    cfg = {**configuration(3), "t": "xnor", "c": 512, "groups": 1, "beta": True,
           "activation": "tanh", "output": "packed", "x_packed": True, "nchw": False,
           "shape": (9, 12, 10), "k": (3, 3), "strides": (2, 1), "padding": "SAME"}

    def fails(c):
        return c["beta"] and c["activation"] == "tanh" and c["c"] >= 128

    small, calls = shrink(cfg, fails, budget=200)
    assert fails(small) and calls <= 200
    assert (small["beta"], small["activation"], small["c"]) == (True, "tanh", 128)
    assert (small["output"], small["x_packed"], small["policy"]) == ("float", False, "auto")
    assert small["shape"] == (1, 1, 1) and small["k"] == (1, 1) and small["o"] == 1
    assert small["strides"] == small["dilation"] == (1, 1) and small["padding"] == "VALID"
    # a budget stops it early; a configuration with no failing neighbour is kept
    assert shrink(cfg, fails, budget=3)[1] == 3
    assert shrink(cfg, lambda c: False, budget=500) == (cfg, len([c for c in simpler(cfg)
                                                                  if _fits(c)]))


@pytest.mark.parametrize("index", range(6))
def test_fuzz_shrink_steps_are_valid_calls(index):
    """Every step shrink may take from a draw is a call binary_conv2d
    accepts (shapes only, jax.eval_shape), so that a shrink does not stop at
    configurations the library rejects."""
    cfg = configuration(index)
    steps = [c for c in simpler(cfg) if _fits(c)]
    assert steps
    for c in steps:
        x, w, kw = case_inputs(c)
        jax.eval_shape(lambda x, w: jb.binary_conv2d(x, w, **kw), x, w)


def test_binary_weights_steps_may_differ_only_near_zero():
    """BINARY_WEIGHTS' packed bits and sign() values step at 0 over a float
    sum in each kernel's order (semantics section 9). The comparison every
    kernel test uses for them (conftest.assert_steps_near_zero) lets a
    result differ where the pre-activation is within rounding of 0, and
    fails it anywhere else."""
    pre = np.array([3.0, -2.0, 1e-7, 5.0, -4.0], np.float32).reshape(1, 1, 1, 5)
    ref = np.where(pre < 0, -1.0, 1.0).astype(np.float32)       # sign(), bin()
    near, far = ref.copy(), ref.copy()
    near[..., 2], far[..., 1] = -1.0, 1.0
    assert_steps_near_zero(ref, ref, pre)
    assert_steps_near_zero(near, ref, pre)
    with pytest.raises(AssertionError, match="1 results differ"):
        assert_steps_near_zero(far, ref, pre)
    pref = jb.pack_activations(jnp.asarray(pre))
    pnear, pfar = (jb.PackedActivations(pref.words ^ np.uint32(1 << c), 5) for c in (2, 4))
    assert_steps_near_zero(pnear, pref, pre)
    with pytest.raises(AssertionError, match="1 results differ"):
        assert_steps_near_zero(pfar, pref, pre)


@pytest.mark.parametrize("t", ["xnor", "and"])
def test_reference_accumulators_are_exact_where_the_backend_is_not(monkeypatch, t):
    """The reference rounds XNOR / AND accumulators to the integers they are:
    a backend's float convolution may be off by a few ulps (cuDNN picked a
    Winograd algorithm on an H100: 239.99997 for 240 at K = 36873). Simulated
    here by an `accumulate` that adds such errors; values equal the exact
    ones, and gradients still pass through."""
    x = rand_x(31, (2, 6, 5, 33))
    w = rand_x(32, (3, 3, 33, 7))
    kw = dict(type=t, output_bias=rand_vec(33, 7, -1, 1), beta_scaling=True)

    def f(x, w):
        return jb.reference.binary_conv2d(x, w, **kw)

    def grads(x, w):
        return jax.grad(lambda x, w: (f(x, w) * jnp.arange(7.0)).sum(), argnums=(0, 1))(x, w)

    exact, gexact = f(x, w), grads(x, w)
    real, calls = jb.reference.accumulate, []

    def inexact(*args, **kwargs):
        calls.append(1)
        acc = real(*args, **kwargs)
        return acc + 3e-5 * jnp.where(jnp.sin(acc * 12.9898) > 0, 1.0, -1.0)

    monkeypatch.setattr(jb.reference, "accumulate", inexact)
    np.testing.assert_array_equal(np.asarray(f(x, w)), np.asarray(exact))
    for a, b in zip(grads(x, w), gexact):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    assert calls, "the inexact accumulate was not used"
