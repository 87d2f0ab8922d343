"""Every bad input of SPEC section 1 gets a clear error naming the argument."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jax_binconv as jb

X = jnp.ones((1, 8, 8, 16))
W = jnp.ones((3, 3, 16, 8))


@pytest.mark.parametrize("kwargs,x,w,exc,match", [
    ({}, jnp.ones((8, 8, 16)), W, ValueError, r"x must be rank 4.*\(8, 8, 16\)"),
    ({}, X, jnp.ones((3, 16, 8)), ValueError, r"w must be rank 4"),
    ({}, X, jnp.ones((3, 3, 12, 8)), ValueError, r"C/groups = 12.*C = 16"),
    ({"groups": 3}, X, W, ValueError, r"groups=3 must divide the input channels C=16"),
    ({"groups": 2}, X, jnp.ones((3, 3, 8, 7)), ValueError, r"groups=2 must divide the output channels O=7"),
    ({"groups": 0}, X, W, ValueError, r"groups must be a positive int"),
    ({"strides": (0, 1)}, X, W, ValueError, r"strides must be >= 1"),
    ({"strides": -2}, X, W, ValueError, r"strides must be >= 1"),
    ({"dilation": (1, 0)}, X, W, ValueError, r"dilation must be >= 1"),
    ({"strides": (1, 2, 3)}, X, W, TypeError, r"strides must be an int or a pair"),
    ({"padding": "VALID"}, jnp.ones((1, 2, 8, 16)), W, ValueError, r"empty output"),
    ({"padding": "VALID", "dilation": 4}, X, W, ValueError, r"empty output"),
    ({"padding": ((-1, 0), (0, 0))}, X, W, ValueError, r"padding values must be >= 0"),
    ({"padding": "FULL"}, X, W, ValueError, r"padding must be 'SAME', 'VALID'"),
    ({"input_bias": jnp.ones(15)}, X, W, ValueError, r"input_bias must be a scalar or have shape \(16,\); got shape \(15,\)"),
    ({"input_scale": jnp.ones((16, 1))}, X, W, ValueError, r"input_scale must be a scalar"),
    ({"output_scale": jnp.ones(16)}, X, W, ValueError, r"output_scale must be a scalar or have shape \(8,\)"),
    ({"output_bias": jnp.ones(9)}, X, W, ValueError, r"output_bias must be a scalar or have shape \(8,\)"),
    ({"type": "xor"}, X, W, ValueError, r"type must be one of"),
    ({"type": 7}, X, W, ValueError, r"type must be one of"),
    ({"activation": "gelu"}, X, W, ValueError, r"activation must be None or one of"),
    ({"type": "xnor", "pad_value": 0.5}, X, W, ValueError, r"pad_value for type XNOR must be one of"),
    ({"type": "and", "pad_value": -1.0}, X, W, ValueError, r"pad_value for type AND must be one of"),
    ({"type": "binary_weights", "pad_value": float("inf")}, X, W, ValueError, r"pad_value must be finite"),
    ({"pad_value": jnp.float32(0.0)}, X, W, TypeError, r"pad_value must be a Python number"),
    ({}, jnp.ones((1, 8, 8, 16), jnp.int32), W, TypeError, r"x must be float32, bfloat16 or float16; got dtype int32"),
    ({}, jnp.ones((1, 8, 8, 16), jnp.complex64), W, TypeError, r"x must be float32.*complex64"),
    ({}, X, jnp.ones((3, 3, 16, 8), jnp.complex64), TypeError, r"w must be real"),
    ({"input_estimator": "tanh"}, X, W, ValueError, r"input_estimator must be one of"),
    ({"weight_estimator": ("ste", -1.0)}, X, W, ValueError, r"weight_estimator: clip must be a positive"),
    ({"output": "bits"}, X, W, ValueError, r"output must be 'float' or 'packed'"),
    ({"beta_scaling": "yes"}, X, W, TypeError, r"beta_scaling must be a bool"),
    ({"dimension_numbers": ("NCHW", "OIHW")}, X, W, ValueError, r"dimension_numbers"),
])
def test_bad_input_is_named(kwargs, x, w, exc, match):
    with pytest.raises(exc, match=match):
        jb.binary_conv2d(x, w, **kwargs)


def test_packed_input_restrictions():
    p = jb.pack_activations(X)
    with pytest.raises(ValueError, match="BINARY_WEIGHTS needs the full-precision input"):
        jb.binary_conv2d(p, W, type="binary_weights")
    with pytest.raises(ValueError, match="input_bias/input_scale cannot apply"):
        jb.binary_conv2d(p, W, input_scale=2.0)
    with pytest.raises(ValueError, match="always NHWC"):
        jb.binary_conv2d(p, jnp.ones((8, 16, 3, 3)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
    bad = jb.PackedActivations(p.words.astype(jnp.int32), 16)
    with pytest.raises(TypeError, match="uint32"):
        jb.binary_conv2d(bad, W)
    with pytest.raises(ValueError, match=r"ceil\(40/32\)"):
        jb.binary_conv2d(jb.PackedActivations(p.words, 40), jnp.ones((3, 3, 40, 8)))


def test_pack_weights_errors():
    with pytest.raises(ValueError, match="w must be rank 4"):
        jb.pack_weights(jnp.ones((3, 3, 4)))
    with pytest.raises(ValueError, match="layout must be a permutation"):
        jb.pack_weights(W, layout="HWIX")
    with pytest.raises(TypeError, match="PackedActivations"):
        jb.unpack_activations(X)


def test_dense_errors():
    with pytest.raises(ValueError, match=r"w must be \[K, O\]"):
        jb.binary_dense(jnp.ones((2, 5)), jnp.ones((5, 3, 1)))
    with pytest.raises(ValueError, match="C/groups = 4"):
        jb.binary_dense(jnp.ones((2, 5)), jnp.ones((4, 3)))


def test_errors_are_raised_at_trace_time():
    import jax
    with pytest.raises(ValueError, match="groups=3"):
        jax.jit(lambda x, w: jb.binary_conv2d(x, w, groups=3)).lower(X, W)


def test_int_and_bool_weights_are_accepted():
    wi = np.where(np.asarray(W) > 0, 1, -1).astype(np.int32)
    wi[0, 0, :4, :] = -3
    wb = wi > 0
    a = jb.binary_conv2d(X, jnp.asarray(wi))
    b = jb.binary_conv2d(X, jnp.asarray(wb))
    c = jb.binary_conv2d(X, jnp.asarray(wi, jnp.float32))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    np.testing.assert_array_equal(np.asarray(b), np.asarray(c))


@pytest.mark.parametrize("kwargs,match", [
    ({"strides": (1 << 25, 1)}, r"strides must be <= 2\^24"),
    ({"dilation": 1 << 25}, r"dilation must be <= 2\^24"),
    ({"padding": ((1 << 25, 0), (0, 0))}, r"padding values must be <= 2\^24"),
    ({"padding": ((1 << 24, 1 << 24), (1 << 24, 1 << 24))}, r"would exceed 2\^46 elements"),
])
def test_sizes_that_would_overflow_kernels_are_refused_at_trace_time(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jb.binary_conv2d(X, W, **kwargs)
