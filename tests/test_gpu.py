"""The CUDA kernel (target jax_binconv_conv2d_cuda_v3) against the pure-JAX
reference evaluated on the CPU, over the same grid as the CPU kernel.

Skipped, with the reason, where there is no GPU or jax_binconv._cuda did not
build. Ours runs on the GPU (operands committed there); the reference runs
on the CPU, so a CUDA bug cannot hide in both sides. Integer accumulators of
XNOR/AND must be equal exactly; full results within 1e-5 relative.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (GRID_CHANNELS, GRID_KERNELS, GRID_PADDINGS, assert_conv_matches, cuda_gpus,
                      pad_values, rand_vec, rand_x)

import jax_binconv as jb
from jax_binconv._hlo import custom_call_lines


_GPUS, _REASON = cuda_gpus()
GPU = _GPUS[0] if _GPUS else None
CPU = jax.devices("cpu")[0]
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(GPU is None, reason=_REASON or "")]

TYPES = ["binary_weights", "xnor", "and"]


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def _ours(x, w, **kw):
    f = jax.jit(functools.partial(jb.binary_conv2d, **kw))
    return f(jax.device_put(x, GPU), jax.device_put(w, GPU))


def _ref(x, w, **kw):
    kw = {k: (np.asarray(v) if isinstance(v, jax.Array) else v) for k, v in kw.items()}
    f = jax.jit(functools.partial(jb.reference.binary_conv2d, **kw))
    return f(jax.device_put(_np(x), CPU), jax.device_put(_np(w), CPU))


def _run_gpu(x, w, **kw):
    """(ours on the GPU, the reference on the CPU)."""
    return _ours(x, w, **kw), _ref(x, w, **kw)


def check(x, w, **kw):
    """conftest.assert_conv_matches with ours on the GPU and the reference on
    the CPU: integer parts exact (XNOR/AND), results within tolerance, packed
    words equal (BINARY_WEIGHTS' steps at 0: conftest.assert_steps_near_zero)."""
    kw = {k: (np.asarray(v) if isinstance(v, jax.Array) else v) for k, v in kw.items()}
    return assert_conv_matches(x, w, runner=_run_gpu, **kw)


def _case(t, c=33, o=20, k=(3, 3), hw=(9, 8), n=2, seed=0, groups=1, **kw):
    x = np.asarray(rand_x(seed, (n,) + hw + (c,)))
    w = np.asarray(rand_x(seed + 1, k + (c // groups, o)))
    return check(x, w, type=t, groups=groups, **kw)


# ------------------------------------------------------------ lowering


def test_cuda_lowering_contains_our_custom_call():
    """A silent fallback to the reference would make every other test vacuous."""
    x = jax.device_put(np.asarray(rand_x(0, (1, 6, 6, 8))), GPU)
    w = jax.device_put(np.asarray(rand_x(1, (3, 3, 8, 4))), GPU)
    lowered = jax.jit(lambda x, w: jb.binary_conv2d(x, w)).lower(x, w)
    assert jb.TARGETS["cuda"] in lowered.as_text()
    assert jb.TARGETS["cuda"] in lowered.compile().as_text()


# ------------------------------------------------------------ the grid

CHANNELS, KERNELS = GRID_CHANNELS, GRID_KERNELS
PADDINGS = GRID_PADDINGS + [((3, 3), (4, 0))]


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("c", CHANNELS)
def test_channels(t, c):
    _case(t, c=c, o=7 if c < 64 else 40, seed=c)


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("k", KERNELS)
@pytest.mark.parametrize("padding", PADDINGS)
def test_kernels_and_padding(t, k, padding):
    _case(t, k=k, padding=padding, seed=len(str(padding)) + 7 * k[0] + k[1])


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("strides,dilation", [((2, 2), (1, 1)), ((1, 2), (2, 1)),
                                              ((2, 1), (2, 2)), ((1, 1), (2, 2))])
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 1), (0, 3))])
def test_strides_dilation(t, strides, dilation, padding):
    _case(t, strides=strides, dilation=dilation, padding=padding, hw=(11, 10))


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("pv_index", [0, 1, 2])
@pytest.mark.parametrize("padding", ["SAME", ((2, 1), (0, 3)), ((4, 4), (4, 4))])
@pytest.mark.parametrize("c", [33, 256])
def test_pad_values(t, pv_index, padding, c):
    values = pad_values(t)
    if pv_index >= len(values):
        pytest.skip(f"type {t} allows only pad values {values}")
    _case(t, c=c, o=40, pad_value=values[pv_index], padding=padding, seed=pv_index + c)


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("groups,c,o", [(2, 66, 8), (4, 64, 12), (2, 130, 6), (4, 12, 8),
                                        (2, 256, 256), (4, 128, 100)])
def test_groups(t, groups, c, o):
    _case(t, c=c, o=o, groups=groups, seed=groups * c + o)


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("activation", [None, "relu", "relu6", "leaky_relu", "sigmoid", "tanh",
                                        "hard_tanh", "sign"])
def test_epilogue(t, activation):
    c, o = 33, 20
    x = np.asarray(rand_x(3, (2, 7, 7, c)))
    w = np.asarray(rand_x(4, (3, 3, c, o)))
    check(x, w, type=t, activation=activation, negative_slope=0.2,
          input_bias=rand_vec(5, c, -0.5, 0.5), input_scale=rand_vec(6, c, 0.5, 1.5, signed=True),
          output_scale=rand_vec(7, o, 0.01, 0.1, signed=True), output_bias=rand_vec(8, o, -2, 2),
          beta_scaling=True)


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("padding,strides,dilation", [("SAME", 1, 1), ("VALID", 2, 1),
                                                      (((2, 0), (1, 2)), 1, 2)])
@pytest.mark.parametrize("groups", [1, 2])
def test_beta_scaling(t, padding, strides, dilation, groups):
    _case(t, c=64, o=32, beta_scaling=True, padding=padding, strides=strides, dilation=dilation,
          output_scale=0.5, groups=groups)


@pytest.mark.parametrize("t", TYPES)
def test_scalar_scales_and_biases(t):
    _case(t, input_bias=0.25, input_scale=-2.0, output_scale=0.125, output_bias=-1.0)


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs(t, dtype):
    c, o = 40, 9
    x = rand_x(9, (2, 6, 6, c), dtype)
    w = np.asarray(rand_x(10, (3, 3, c, o)))
    out, _ = check(x, w, type=t, output_scale=0.05)
    assert out.dtype == dtype


@pytest.mark.parametrize("t", TYPES)
def test_nchw_oihw(t):
    c, o = 20, 12
    x = np.asarray(rand_x(11, (2, c, 7, 9)))
    w = np.asarray(rand_x(12, (o, c, 3, 3)))
    out, _ = check(x, w, type=t, dimension_numbers=("NCHW", "OIHW", "NCHW"), strides=(2, 1))
    assert out.shape == (2, o, 4, 9)


@pytest.mark.parametrize("t", ["xnor", "and"])
@pytest.mark.parametrize("c,o,groups", [(33, 66, 1), (64, 128, 2), (66, 132, 2), (96, 192, 3),
                                        (256, 100, 1), (64, 40, 4)])
@pytest.mark.parametrize("pv_index", [0, 1])
def test_packed_in_and_out(t, c, o, groups, pv_index):
    pv = pad_values(t)[pv_index]
    x = np.asarray(rand_x(16 + c, (2, 7, 7, c)))
    w = np.asarray(rand_x(17 + o, (3, 3, c // groups, o)))
    scale = rand_vec(18, o, 0.5, 1.0, signed=True)
    bias = rand_vec(19, o, -3, 3)
    packed, _ = check(x, w, type=t, output="packed", output_scale=scale, output_bias=bias,
                      groups=groups, pad_value=pv)
    assert isinstance(packed, jb.PackedActivations) and packed.channels == o
    # packed input (groups over the packed channels as Python allows them)
    g2 = groups if (o // groups) % 32 == 0 else 1
    w2 = np.asarray(rand_x(20, (3, 3, o // g2, 8 * g2)))
    check(_np(packed), w2, type=t, groups=g2, pad_value=pv, beta_scaling=True)
    check(_np(packed), w2, type=t, groups=g2, pad_value=pv, output="packed",
          output_scale=rand_vec(21, 8 * g2, -1, 1))


@pytest.mark.parametrize("t", ["xnor", "and"])
def test_packed_chain(t):
    """float -> packed -> packed -> float, three layers, against the reference chain."""
    x = np.asarray(rand_x(30, (3, 12, 12, 48)))
    ws = [np.asarray(rand_x(31 + i, s)) for i, s in
          enumerate([(3, 3, 48, 64), (3, 3, 64, 96), (1, 3, 96, 40)])]
    sc = [rand_vec(40 + i, s[-1], -1, 1) for i, s in enumerate([(64,), (96,), (40,)])]

    def chain(conv, x, w0, w1, w2):
        h = conv(x, w0, type=t, output="packed", output_bias=sc[0])
        h = conv(h, w1, type=t, output="packed", strides=2, output_bias=sc[1])
        return conv(h, w2, type=t, padding="VALID", beta_scaling=True, output_scale=sc[2])

    ours = jax.jit(functools.partial(chain, jb.binary_conv2d))(
        *jax.device_put([x] + ws, GPU))
    ref = jax.jit(functools.partial(chain, jb.reference.binary_conv2d))(
        *jax.device_put([x] + ws, CPU))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------ edge cases


def test_special_values():
    vals = np.array([0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30, np.nan, -np.inf], np.float32)
    x = np.tile(vals, (1, 3, 3, 1))
    w = np.asarray(rand_x(13, (1, 1, 8, 4)))
    for t in ["xnor", "and"]:
        check(x, w, type=t, padding="VALID")
    y = _ours(x, np.ones((1, 1, 8, 1), np.float32), type="xnor", padding="VALID")
    # +1: 0, -0, 1, 1e-30, nan; -1: -1, -1e-30, -inf
    assert float(y[0, 0, 0, 0]) == 5 - 3


@pytest.mark.parametrize("t", TYPES)
def test_empty_batch(t):
    x = np.zeros((0, 5, 5, 8), np.float32)
    w = np.asarray(rand_x(22, (3, 3, 8, 4)))
    y = _ours(x, w, type=t)
    assert y.shape == (0, 5, 5, 4)


@pytest.mark.parametrize("t", TYPES)
def test_tiny_shapes(t):
    _case(t, c=1, o=1, hw=(1, 1), n=1, k=(1, 1))
    _case(t, c=2, o=3, hw=(1, 2), n=1, k=(3, 3), padding="SAME")
    _case(t, c=5, o=2, hw=(2, 1), n=3, k=(2, 1), padding="VALID")


def test_extra_batch_dims():
    x = np.asarray(rand_x(50, (2, 3, 5, 5, 40)))
    w = np.asarray(rand_x(51, (3, 3, 40, 16)))
    ours = np.asarray(_ours(x.reshape(6, 5, 5, 40), w))
    both = jax.jit(jax.vmap(lambda xi: jb.binary_conv2d(xi, jnp.asarray(w))))(
        jax.device_put(x, GPU))
    np.testing.assert_array_equal(np.asarray(both).reshape(ours.shape), ours)


@pytest.mark.parametrize("t", ["xnor", "and"])
def test_large_k_no_overflow(t):
    c = 8192
    x = np.ones((1, 3, 3, c), np.float32)
    w = np.ones((3, 3, c, 2), np.float32)
    y = _ours(x, w, type=t, padding="VALID")
    np.testing.assert_array_equal(np.asarray(y), 9 * c)
    check(np.asarray(rand_x(25, (2, 4, 4, c))), np.asarray(rand_x(26, (3, 3, c, 3))), type=t,
          padding="SAME")


def test_big_layer_matches():
    """A full-size tile grid: several M and N blocks, border and interior rows."""
    x = np.asarray(rand_x(60, (4, 28, 28, 128)))
    w = np.asarray(rand_x(61, (3, 3, 128, 256)))
    for t in ["xnor", "and"]:
        check(x, w, type=t)
        check(x, w, type=t, output="packed", output_bias=rand_vec(62, 256, -5, 5))


def test_trailing_garbage_bits_do_not_change_results():
    """SPEC 7: no kernel may let trailing bits change a result (ffi_call directly)."""
    c, o = 40, 16
    x = np.asarray(rand_x(70, (2, 6, 6, c)))
    w = np.asarray(rand_x(71, (3, 3, c, o)))
    px = np.asarray(jb.pack_activations(x).words)
    pw = np.asarray(jb.pack_weights(w).words)
    dirty_x = px.copy()
    dirty_x[..., -1] |= np.uint32(0xFFFFFF00)  # channels 40..63 do not exist
    dirty_w = pw.copy()
    dirty_w[..., -1] |= np.uint32(0xFFFFFF00)
    for conv_type in (1, 2):
        outs = [np.asarray(_ffi(xx, ww, c, conv_type)) for xx, ww in
                [(px, pw), (dirty_x, pw), (px, dirty_w), (dirty_x, dirty_w)]]
        for other in outs[1:]:
            np.testing.assert_array_equal(outs[0], other)


def _workspace_bytes(x_shape, w_shape, attrs, x_packed, out_packed):
    """v2's workspace size for a direct call (what the lowering computes)."""
    o, kh, kw, _ = w_shape
    keys = ("stride_h", "stride_w", "dilation_h", "dilation_w", "pad_top", "pad_bottom",
            "pad_left", "pad_right", "groups")
    return jb.lowering.available["cuda"].workspace_bytes(
        conv_type=int(attrs["conv_type"]), n=int(np.prod(x_shape[:-3])), h=x_shape[-3],
        w=x_shape[-2], c=int(attrs["in_channels"]), o=o, kh=kh, kw=kw,
        **{k: int(attrs[k]) for k in keys}, pad_value=float(attrs["pad_value"]),
        beta_scaling=bool(attrs["beta_scaling"]), activation=int(attrs["activation"]),
        negative_slope=float(attrs["negative_slope"]), x_packed=x_packed, out_packed=out_packed)


def _target_call(result, args, attrs, size_attrs=None, ws_bytes=None, target=None):
    """Jitted direct call of the CUDA target on GPU operands (x, w and the four
    vectors). v2 and v3 (default) get their workspace result, sized from
    `size_attrs` (default `attrs`) unless `ws_bytes` is given; v1 has none;
    v3 takes the vectors concatenated into one operand."""
    target = target or jb.TARGETS["cuda"]
    if target.endswith("_v3"):
        args = list(args[:2]) + [np.concatenate([np.asarray(v, np.float32) for v in args[2:]])]
    if target.endswith("_v1"):
        call = jax.ffi.ffi_call(target, result)
        return jax.jit(lambda *a: call(*a, **attrs))(*jax.device_put(args, GPU))
    if ws_bytes is None:
        ws_bytes = _workspace_bytes(args[0].shape, args[1].shape, size_attrs or attrs,
                                    args[0].dtype == np.uint32, result.dtype == jnp.uint32)
    call = jax.ffi.ffi_call(target, (result, jax.ShapeDtypeStruct((ws_bytes,), jnp.uint8)))
    return jax.jit(lambda *a: call(*a, **attrs)[0])(*jax.device_put(args, GPU))


def _ffi(x, w, c, ctype, pad=1, pad_value=0.0, result_dtype=jnp.float32, ws_bytes=None,
         target=None, **over):
    o, kh, kw, _ = w.shape
    n, h, wd = x.shape[:3]
    ho, wo = h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1
    out_c = o if result_dtype == jnp.float32 else -(-o // 32)
    base = dict(conv_type=np.int32(ctype), in_channels=c, stride_h=1, stride_w=1,
                dilation_h=1, dilation_w=1, pad_top=pad, pad_bottom=pad, pad_left=pad,
                pad_right=pad, groups=1, pad_value=np.float32(pad_value), beta_scaling=False,
                activation=np.int32(0), negative_slope=np.float32(0))
    attrs = dict(base, **over)
    args = [x, w, np.zeros(c, np.float32), np.ones(c, np.float32), np.ones(o, np.float32),
            np.zeros(o, np.float32)]
    # The workspace is sized from the valid attributes: a bad one must be
    # refused by the handler itself.
    return _target_call(jax.ShapeDtypeStruct((n, ho, wo, out_c), result_dtype), args, attrs,
                        size_attrs=base, ws_bytes=ws_bytes, target=target)


def test_handler_rejects_bad_attributes():
    """Bad attributes come back as errors, not crashes."""
    c, o = 40, 16
    px = np.asarray(jb.pack_activations(np.asarray(rand_x(72, (1, 5, 5, c)))).words)
    pw = np.asarray(jb.pack_weights(np.asarray(rand_x(73, (3, 3, c, o)))).words)
    for over in [dict(pad_value=np.float32(0.5)), dict(conv_type=np.int32(7)),
                 dict(conv_type=np.int32(0)), dict(in_channels=70), dict(groups=3),
                 dict(activation=np.int32(99))]:
        for target in ("jax_binconv_conv2d_cuda_v1", "jax_binconv_conv2d_cuda_v2",
                       "jax_binconv_conv2d_cuda_v3"):
            with pytest.raises(Exception, match=target):
                np.asarray(_ffi(px, pw, c, 1, target=target, **over))
    # and the device is still fine afterwards
    np.asarray(_ffi(px, pw, c, 1))


@pytest.mark.parametrize("c", [40, 256])  # general kernel, fast kernel
def test_v1_target_and_workspace_check(c):
    """v1 (pool scratch) and v2 (four vector operands), kept for old exports,
    give v3's result bit for bit; v2 and v3 refuse a workspace smaller than
    the call needs, by name."""
    o = 64
    x = np.asarray(rand_x(74, (2, 7, 7, c)))
    w = np.asarray(jb.pack_weights(np.asarray(rand_x(75, (3, 3, c, o)))).words)
    v2 = np.asarray(_ffi(x, w, c, 1, target="jax_binconv_conv2d_cuda_v2"))
    ref = np.asarray(_ref(x, np.asarray(rand_x(75, (3, 3, c, o))), padding="SAME"))
    np.testing.assert_allclose(v2, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(_ffi(x, w, c, 1, target="jax_binconv_conv2d_cuda_v1")),
                                  v2)
    # 256 bytes: less than either kernel needs here (float x is packed into
    # the workspace) once the start is aligned.
    for target in ("jax_binconv_conv2d_cuda_v2", "jax_binconv_conv2d_cuda_v3"):
        with pytest.raises(Exception, match=target + ".*workspace"):
            np.asarray(_ffi(x, w, c, 1, ws_bytes=256, target=target))
    np.testing.assert_array_equal(np.asarray(_ffi(x, w, c, 1)), v2)


def test_v3_affine_operand_matches_v2():
    """v3 (what lowerings emit) takes input_bias, input_scale, output_scale
    and output_bias as one operand: on random vectors it gives v2's result
    bit for bit (float and packed output), and a wrong-sized affine or a bad
    in_channels is refused by name."""
    c, o = 256, 72
    x = np.asarray(rand_x(76, (2, 8, 7, c)))
    w = np.asarray(jb.pack_weights(np.asarray(rand_x(77, (3, 3, c, o)))).words)
    rng = np.random.default_rng(78)
    vecs = [rng.normal(0, 0.3, c), rng.uniform(-2, 2, c), rng.uniform(-2, 2, o),
            rng.normal(0, 3, o)]
    vecs = [v.astype(np.float32) for v in vecs]
    attrs = dict(conv_type=np.int32(1), in_channels=c, stride_h=1, stride_w=1, dilation_h=1,
                 dilation_w=1, pad_top=1, pad_bottom=1, pad_left=1, pad_right=1, groups=1,
                 pad_value=np.float32(0.0), beta_scaling=True, activation=np.int32(3),
                 negative_slope=np.float32(0.1))
    for res in (jax.ShapeDtypeStruct((2, 8, 7, o), jnp.float32),
                jax.ShapeDtypeStruct((2, 8, 7, 3), jnp.uint32)):
        v2 = np.asarray(_target_call(res, [x, w, *vecs], attrs, target="jax_binconv_conv2d_cuda_v2"))
        v3 = np.asarray(_target_call(res, [x, w, *vecs], attrs, target="jax_binconv_conv2d_cuda_v3"))
        np.testing.assert_array_equal(v3, v2)
        assert np.unique(v3).size > 2  # not a constant output
    res = jax.ShapeDtypeStruct((2, 8, 7, o), jnp.float32)
    ws = _workspace_bytes(x.shape, w.shape, attrs, False, False)
    call = jax.ffi.ffi_call("jax_binconv_conv2d_cuda_v3",
                            (res, jax.ShapeDtypeStruct((ws,), jnp.uint8)))
    with pytest.raises(Exception, match="jax_binconv_conv2d_cuda_v3.*affine"):
        np.asarray(jax.jit(lambda *a: call(*a, **attrs)[0])(
            *jax.device_put([x, w, np.concatenate(vecs[:3])], GPU)))
    with pytest.raises(Exception, match="jax_binconv_conv2d_cuda_v3.*in_channels"):
        np.asarray(jax.jit(lambda *a: call(*a, **dict(attrs, in_channels=0))[0])(
            *jax.device_put([x, w, np.concatenate(vecs)], GPU)))


def test_default_vectors_are_one_constant_on_gpu():
    """With every scale and bias at its default, the compiled GPU program
    hands the kernel one constant operand: no broadcast kernel per call."""
    import re
    x = jax.device_put(np.asarray(rand_x(79, (1, 8, 8, 128))), GPU)
    w = jax.device_put(jb.pack_weights(np.asarray(rand_x(80, (3, 3, 128, 32)))), GPU)
    text = jax.jit(lambda x, w: jb.binary_conv2d(x, w, padding="SAME")).lower(x, w).compile().as_text()
    call = custom_call_lines(text, jb.TARGETS["cuda"])
    assert len(call) == 1, text
    assert "fusion" not in call[0].split("custom-call(")[1].split(")")[0], call[0]
    assert re.search(r"f32\[320\]\{0\} constant\(", text), text


def test_repeated_calls_in_one_jit_follow_their_inputs():
    """Many calls in one jit (XLA may capture them into a CUDA graph and replay
    it): every call of the jitted function, with new inputs each time, equals
    the reference; the float and packed links feed each other."""
    c = 128
    ws = [np.asarray(rand_x(80 + i, (3, 3, c, c))) for i in range(6)]

    def chain(conv, x, *ws):
        y = x
        for i, w in enumerate(ws):
            y = conv(y, w, padding="SAME", output="packed" if i % 2 == 0 else "float",
                     activation="relu" if i % 2 else "linear")
        return y

    ours = jax.jit(functools.partial(chain, jb.binary_conv2d))
    ref = jax.jit(functools.partial(chain, jb.reference.binary_conv2d))
    for seed in (81, 82, 83):
        x = np.asarray(rand_x(seed, (2, 9, 9, c)))
        got = np.asarray(ours(*jax.device_put([x, *ws], GPU)))
        want = np.asarray(ref(*jax.device_put([x, *ws], CPU)))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"input seed {seed}")



# ------------------------------------------------------------ gradients


def _loss(conv, **static):
    def f(x, w, p):
        y = conv(x, w, **p, **static)
        return jnp.sum(y * jnp.cos(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape)))
    return f


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("est", ["ste", "approx_sign"])
def test_grad_under_jit_on_gpu(t, est):
    c, o = 12, 8
    x = np.asarray(rand_x(80, (2, 6, 5, c))) * 0.8
    w = np.asarray(rand_x(81, (3, 3, c, o))) * 0.8
    p = dict(input_bias=np.asarray(rand_vec(82, c, -0.2, 0.2)),
             input_scale=np.asarray(rand_vec(83, c, 0.5, 1.5, signed=True)),
             output_scale=np.asarray(rand_vec(84, o, 0.05, 0.2, signed=True)),
             output_bias=np.asarray(rand_vec(85, o, -0.5, 0.5)))
    static = dict(type=t, input_estimator=est, weight_estimator=est, beta_scaling=True,
                  activation="tanh", padding=((1, 0), (0, 2)),
                  pad_value={"binary_weights": 0.5, "xnor": -1.0, "and": 1.0}[t])
    gfun = jax.jit(jax.grad(_loss(jb.binary_conv2d, **static), argnums=(0, 1, 2)))
    assert jb.TARGETS["cuda"] in gfun.lower(*jax.device_put((x, w, p), GPU)).as_text()
    g = gfun(*jax.device_put((x, w, p), GPU))
    r = jax.jit(jax.grad(_loss(jb.reference.binary_conv2d, **static), argnums=(0, 1, 2)))(
        *jax.device_put((x, w, p), CPU))
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(r)):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(b).max())))


# ------------------------------------------------------------ packed thresholds


def _edge_scales(o, seed):
    """Output scales and biases that make acc * scale + bias hit 0 exactly,
    with negative and zero scales among them."""
    rng = np.random.default_rng(seed)
    scale = rng.choice([0.5, 0.25, -0.5, -2.0, 0.0, 1.0, -0.0, 3.0], o).astype(np.float32)
    k = rng.integers(-20, 21, o).astype(np.float32)
    bias = (-k * np.where(scale == 0, 1.0, scale)).astype(np.float32)
    bias[::7] = 0.0
    return scale, bias


@pytest.mark.parametrize("t", ["xnor", "and"])
@pytest.mark.parametrize("activation", [None, "relu", "relu6", "leaky_relu", "sigmoid", "tanh",
                                        "hard_tanh", "sign"])
def test_packed_output_edges(t, activation):
    """Packed output goes through exact per-column integer thresholds when
    there is no beta; the bits must equal bin(reference) at every edge."""
    c, o = 70, 64
    x = np.asarray(rand_x(90, (2, 9, 9, c)))
    w = np.asarray(rand_x(91, (3, 3, c, o)))
    scale, bias = _edge_scales(o, 92)
    check(x, w, type=t, output="packed", activation=activation, negative_slope=0.3,
          output_scale=scale, output_bias=bias, padding=((2, 0), (1, 1)))
    w2 = np.asarray(rand_x(96, (3, 3, c // 2, o)))
    check(x, w2, type=t, output="packed", activation=activation, negative_slope=0.3,
          output_scale=scale, output_bias=bias, pad_value=1.0, groups=2)
    # C = 128: the fast kernel, whose table holds one bound per (box class,
    # channel) and a flip bit per channel (empty, full, rising and falling
    # edges; 70 channels: a partial last word).
    x3 = np.asarray(rand_x(97, (2, 9, 9, 128)))
    w3 = np.asarray(rand_x(98, (3, 3, 128, 70)))
    scale3, bias3 = _edge_scales(70, 99)
    check(x3, w3, type=t, output="packed", activation=activation, negative_slope=0.3,
          output_scale=scale3, output_bias=bias3, padding=((2, 0), (1, 1)))
    assert _cuda_mod().last_kernel() == "fast"


def test_packed_output_nonfinite_scales_match_float_path():
    """Self-consistency where the reference is not the point: packed bits
    equal bin() of our own float output, also for inf/nan scales and biases."""
    c, o = 40, 40
    x = np.asarray(rand_x(93, (2, 6, 6, c)))
    w = np.asarray(rand_x(94, (3, 3, c, o)))
    px = np.asarray(jb.pack_activations(x).words)
    pw = np.asarray(jb.pack_weights(w).words)
    scale, bias = _edge_scales(o, 95)
    scale[:6] = [np.inf, -np.inf, np.nan, 1.0, 0.0, -1.0]
    bias[:6] = [0.0, 1.0, 0.0, np.inf, -np.inf, np.nan]
    for act in (0, 1, 3, 6, 7):
        outs = []
        for rdt in (jnp.float32, jnp.uint32):
            attrs = dict(conv_type=np.int32(1), in_channels=c, stride_h=1, stride_w=1,
                         dilation_h=1, dilation_w=1, pad_top=1, pad_bottom=1, pad_left=1,
                         pad_right=1, groups=1, pad_value=np.float32(0), beta_scaling=False,
                         activation=np.int32(act), negative_slope=np.float32(0.5))
            outs.append(np.asarray(_target_call(
                jax.ShapeDtypeStruct((2, 6, 6, o if rdt == jnp.float32 else 2), rdt),
                [px, pw, np.zeros(c, np.float32), np.ones(c, np.float32), scale, bias], attrs)))
        expect = np.asarray(jb.pack_activations(outs[0]).words)
        np.testing.assert_array_equal(outs[1], expect, err_msg=f"activation {act}")


# ------------------------------------------------------------ the fast kernel
# XNOR/AND with groups = 1 and C = 64 or a multiple of 128 run
# fast_conv_kernel (cpp/cuda/fast_conv.cuh); everything else, or
# set_kernel("general"), the general one. Both are checked on the same cases,
# and that the intended kernel really ran.

FAST_CASES = [
    # (c, o, hw, n, k, strides, dilation, padding)
    (128, 128, (28, 28), 2, (3, 3), 1, 1, "SAME"),
    (256, 96, (14, 14), 3, (3, 3), 1, 1, "SAME"),
    (512, 130, (7, 7), 5, (3, 3), 1, 1, "SAME"),
    (256, 300, (9, 11), 2, (3, 3), 2, 1, "SAME"),
    (128, 64, (13, 6), 3, (5, 3), (1, 2), (2, 1), ((3, 1), (0, 2))),
    (256, 33, (6, 40), 2, (1, 1), 1, 1, "VALID"),
    (512, 40, (5, 5), 2, (3, 3), 1, 1, ((4, 4), (4, 4))),   # rows with no valid tap
    (128, 257, (1, 150), 3, (1, 7), 1, 1, "SAME"),
    (256, 128, (3, 3), 70, (3, 3), 1, 1, "SAME"),     # many images per tile
    (256, 64, (11, 10), 3, (3, 3), (2, 1), (2, 1), "SAME"),  # slot rows shared at stride 2
    (128, 40, (9, 9), 4, (1, 1), 2, 1, "VALID"),      # 1x1 stride 2: rows between unused
    (128, 32, (2, 300), 2, (3, 3), 1, 1, "SAME"),     # slot wider than a tensor-map box
    (128, 48, (17, 9), 2, (5, 3), (3, 1), (2, 1), "SAME"),  # stride 3, dilation 2: no row shared
    (256, 96, (20, 6), 5, (3, 1), (2, 1), 1, ((1, 1), (0, 0))),  # stride 2 across images
    (128, 160, (1, 40), 7, (3, 3), 1, 1, "SAME"),     # one row per image: a boundary per row
    # C = 64: two 8-byte pixels per 16-byte K chunk (taps dx, dx + 1 where
    # the dilation along x is 1, else one tap and an unused half)
    (64, 64, (12, 10), 3, (3, 3), 1, 1, "SAME"),
    (64, 128, (15, 14), 2, (3, 3), 2, 1, "SAME"),      # L5's stride 2
    (64, 40, (9, 13), 3, (3, 3), 1, (1, 2), "SAME"),   # dilation 2 along x: a tap per chunk
    (64, 70, (6, 8), 2, (1, 1), 1, 1, "VALID"),        # 1x1: one tap, half a chunk
    (64, 33, (7, 9), 4, (2, 4), (1, 3), 1, ((1, 0), (2, 1))),  # even kw, stride 3
    (64, 96, (5, 6), 2, (3, 3), 1, 1, ((3, 3), (3, 3))),  # rows and columns with no valid tap
    (64, 50, (8, 11), 2, (1, 5), 1, 1, "SAME"),        # kw = 5: taps (0, 1), (2, 3), (4, -)
    # C a multiple of 128 but not a power of two: p = C / 128 chunks per
    # pixel, so a K step's two chunks straddle taps where p is odd
    (384, 96, (13, 13), 2, (3, 3), 1, 1, "SAME"),      # AlexNet's 384
    (640, 70, (6, 7), 3, (3, 3), (2, 1), 1, "SAME"),   # p = 5, stride 2
    (768, 130, (7, 7), 2, (3, 3), 1, 1, "SAME"),       # p = 6
]
# C = 64 cases: slots and weights by cp.async on every GPU.
_C64_CASES = {i for i, case in enumerate(FAST_CASES) if case[0] == 64}
# Fast-kernel cases whose slot row is wider than 256 pixels (the tensor
# map's box limit): cp.async copies them on every GPU.
_NO_TMA_CASES = {11}
# Cases whose wgmma plan needs more shared memory than an H100 block has
# (four slot buffers, two per warpgroup; the weights padded to whole
# 1024-bit K blocks, plus 1 KB of alignment) while the mma.sync plan fits:
# they run mma.sync under the "wgmma" policy too (C = 640 with stride 2: 45
# K chunks, rows for stride 2; C = 768: 54 K chunks, 43 KB per slot buffer).
_WG_NO_FIT_CASES = {23, 24}


# Cases where A from shared memory would run but its plan does not fit (16
# groups' boxes per slot buffer, four buffers): case 6 (C = 512 with 64 box
# classes of table rows) runs the register-A form instead.
_SS_NO_FIT_CASES = {6}


def _ss_case(case):
    """Whether the wgmma kernel takes A from shared memory (plan_wgmma_ss)
    on this case: C a multiple of 128 with C / 128 one or even, stride 1
    along x, and its shared memory fits."""
    c, o, hw, n, k, s, d, pad = FAST_CASES[case]
    sw = s if isinstance(s, int) else s[1]
    p = c // 128
    return (c % 128 == 0 and (p == 1 or p % 2 == 0) and sw == 1
            and case not in _WG_NO_FIT_CASES and case not in _SS_NO_FIT_CASES)


def _cuda_mod():
    from jax_binconv import _cuda
    return _cuda


@pytest.fixture(params=["auto", "auto-cp.async", "wgmma", "wgmma-rs", "general"])
def kernel_policy(request):
    """auto: the fast kernel with its K loop on mma.sync (set_fast_wgmma("off")),
    input slots by tensor map on sm_90; auto-cp.async: the same with cp.async
    slot copies (what older GPUs run); wgmma: the fast kernel with its K loop
    on wgmma wherever it can run (set_fast_wgmma("on"): compute capability
    9.0, C != 64, shared memory that fits; elsewhere the same as auto), A
    from shared memory where that form runs (_ss_case), else from registers;
    wgmma-rs: the same with A always from registers (set_fast_wgmma("rs"));
    general: the general kernel. (The library's default, set_fast_wgmma("auto"),
    picks between the fast variants: test_fast_wgmma_auto_mode.)"""
    mod = _cuda_mod()
    old, old_tma, old_wg = mod.get_kernel(), mod.get_tma_slots(), mod.get_fast_wgmma()
    mod.set_kernel("general" if request.param == "general" else "auto")
    mod.set_tma_slots(request.param in ("auto", "wgmma", "wgmma-rs"))
    mod.set_fast_wgmma({"wgmma": "on", "wgmma-rs": "rs"}.get(request.param, "off"))
    jax.clear_caches()  # no executable whose CUDA graph was captured under another policy
    yield request.param
    mod.set_kernel(old)
    mod.set_tma_slots(old_tma)
    mod.set_fast_wgmma(old_wg)


def _sm90():
    return int(jax.devices("gpu")[0].compute_capability.split(".")[0]) >= 9


def _expect_path(policy, case=None):
    mod = _cuda_mod()
    assert mod.last_kernel() == ("general" if policy == "general" else "fast")
    if policy != "general":
        # wgmma: turned on, compute capability 9.0 with sm_90a code, C != 64.
        wg = (policy in ("wgmma", "wgmma-rs") and mod.wgmma_available()
              and case not in _C64_CASES and case not in _WG_NO_FIT_CASES)
        ss = wg and policy == "wgmma" and case is not None and _ss_case(case)
        # (A from shared memory: a box per group of 8 pixels, never wider
        # than a tensor-map box)
        tma = (policy in ("auto", "wgmma", "wgmma-rs") and _sm90()
               and (case not in _NO_TMA_CASES or ss) and case not in _C64_CASES)
        assert mod.last_tma_slots() == tma
        if case is not None:
            assert mod.last_wgmma() == wg
            assert mod.last_wgmma_form() == ("ss" if ss else "rs" if wg else "")
            # Weights (mma.sync): one tensor-map box where O is a multiple
            # of 32 (every case's K is short enough), else a bulk copy per
            # row; cp.async before sm_90 and for C = 64. wgmma: a box per
            # 8-row group where O is a multiple of 128, else cp.async.
            o = FAST_CASES[case][1]
            want = ("tensor_map" if o % 32 == 0 else "bulk") if _sm90() else "cp.async"
            if case in _C64_CASES:
                want = "cp.async"
            if wg:
                want = "tensor_map" if o % 128 == 0 else "cp.async"
            assert mod.last_weight_copy() == want


@pytest.mark.parametrize("t", ["xnor", "and"])
@pytest.mark.parametrize("case", range(len(FAST_CASES)))
def test_fast_kernel_float_io(kernel_policy, t, case):
    c, o, hw, n, k, s, d, pad = FAST_CASES[case]
    pv = pad_values(t)[case % len(pad_values(t))]
    x = np.asarray(rand_x(500 + case, (n,) + hw + (c,)))
    w = np.asarray(rand_x(600 + case, k + (c, o)))
    check(x, w, type=t, strides=s, dilation=d, padding=pad, pad_value=pv,
          output_scale=rand_vec(700 + case, o, 0.5, 1.5, signed=True),
          output_bias=rand_vec(800 + case, o, -2, 2),
          input_bias=rand_vec(900 + case, c, -0.2, 0.2), beta_scaling=case % 2 == 1,
          activation=[None, "relu", "tanh", "leaky_relu"][case % 4])
    _expect_path(kernel_policy, case)


@pytest.mark.parametrize("t", ["xnor", "and"])
@pytest.mark.parametrize("case", range(len(FAST_CASES)))
def test_fast_kernel_packed_io(kernel_policy, t, case):
    c, o, hw, n, k, s, d, pad = FAST_CASES[case]
    pv = pad_values(t)[(case + 1) % len(pad_values(t))]
    x = np.asarray(rand_x(510 + case, (n,) + hw + (c,)))
    xp = _np(jb.pack_activations(jnp.asarray(x)))
    w = np.asarray(rand_x(610 + case, k + (c, o)))
    check(xp, w, type=t, strides=s, dilation=d, padding=pad, pad_value=pv, output="packed",
          output_scale=rand_vec(710 + case, o, 0.5, 1.5, signed=True),
          output_bias=rand_vec(810 + case, o, -40, 40), beta_scaling=case % 3 == 0,
          activation=[None, "relu6", "sign", "sigmoid"][case % 4])
    _expect_path(kernel_policy, case)


@contextlib.contextmanager
def _fast_knobs(mod, **values):
    """The _cuda knobs set_<name>(value) for the block, restored after it;
    XLA's caches cleared on both sides (no executable whose CUDA graph was
    captured with other knobs)."""
    old = {name: getattr(mod, "get_" + name)() for name in values}
    for name, value in values.items():
        getattr(mod, "set_" + name)(value)
    jax.clear_caches()
    try:
        yield
    finally:
        for name, value in old.items():
            getattr(mod, "set_" + name)(value)
        jax.clear_caches()


@pytest.mark.parametrize("case", [1, 2, 8])
@pytest.mark.parametrize("knob,value", [("fast_pdl", False), ("fast_weight_copy", "bulk"),
                                        ("fast_weight_copy", "cp.async"),
                                        ("fast_fused_prep", False),
                                        ("fast_fused_tables_first", True), ("fast_wgmma", "on"),
                                        ("fast_wg_split", False), ("fast_wg_skip_half", False),
                                        ("fast_wg_half_tiles", False),
                                        ("fast_wg_half_tiles_always", True),
                                        ("fast_wgmma", "rs"), ("fast_wgmma", "off")])
def test_fast_kernel_knobs(knob, value, case):
    """The fast kernel's benchmark knobs away from their defaults:
    programmatic dependent launch off (set_fast_pdl(False), the launch path
    of drivers that refuse it) and the weights by one bulk copy per channel
    row or by 16-byte cp.async (what GPUs before sm_90 run) instead of one
    tensor-map box; float x packed by a kernel of its own before the tables
    kernel instead of both in one, or in one with the tables' blocks first;
    the K loop on wgmma wherever it can run
    (compute capability 9.0) or never, instead of where it pays; with one
    tile a block, the wgmma kernel's whole epilogue on its first warpgroup
    (set_fast_wg_split(False)); tiles whose rows 64-127 hold no pixel
    running all 128 rows (set_fast_wg_skip_half(False)); 128-row tiles
    where 64-row ones would fit (set_fast_wg_half_tiles(False)). Packed and float
    results still equal the reference."""
    mod = _cuda_mod()
    with _fast_knobs(mod, **{knob: value}):
        c, o, hw, n, k, s, d, pad = FAST_CASES[case]
        x = np.asarray(rand_x(530 + case, (n,) + hw + (c,)))
        w = np.asarray(rand_x(630 + case, k + (c, o)))
        for output in ("float", "packed"):
            check(x, w, type="xnor", strides=s, dilation=d, padding=pad, output=output,
                  output_bias=rand_vec(730 + case, o, -30, 30))
            assert mod.last_kernel() == "fast"
            if knob == "fast_weight_copy" and _sm90():
                # (the wgmma kernel has no bulk mode: cp.async instead)
                bulk_as = "cp.async" if mod.last_wgmma() else "bulk"
                assert mod.last_weight_copy() == (bulk_as if value == "bulk" else value)
            if knob == "fast_wgmma":
                wg = value in ("on", "rs") and mod.wgmma_available()
                assert mod.last_wgmma() == wg
                # (cases 1, 2, 8: A from shared memory where "on")
                assert mod.last_wgmma_form() == (("ss" if value == "on" else "rs") if wg else "")
        assert getattr(mod, "get_" + knob)() == value


@pytest.mark.parametrize("form", ["rs", "ss"])
@pytest.mark.parametrize("shape", [(128, 128, (28, 28), 2), (256, 128, (3, 3), 70),
                                   (512, 256, (7, 7), 3)], ids=["c128", "images", "c512"])
def test_fast_wgmma_waits_for_weights(form, shape):
    """The wgmma kernel's first tiles wait for their weights (tensor-map
    copies): with set_debug_weight_delay(200) their shared memory holds ones
    and warpgroup 1 issues the copies 200 us late, so a K loop that read the
    weights before they land would give wrong sums. Both forms (A from
    registers, from shared memory), float and packed output, exact. (Session
    12 lost the register-A form's wait; every test passed by luck.)"""
    mod = _cuda_mod()
    if not mod.wgmma_available():
        pytest.skip("the wgmma kernel needs compute capability 9.0 and a build with sm_90a code")
    with pytest.raises(ValueError, match="us"):
        mod.set_debug_weight_delay(-1)
    c, o, hw, n = shape
    with _fast_knobs(mod, fast_wgmma="rs" if form == "rs" else "on", debug_weight_delay=200):
        x = np.asarray(rand_x(1500 + c, (n,) + hw + (c,)))
        w = np.asarray(rand_x(1600 + c, (3, 3, c, o)))
        for output in ("float", "packed"):
            check(x, w, type="xnor", padding="SAME", output=output,
                  output_bias=rand_vec(1700 + c, o, -30, 30))
            assert mod.last_wgmma_form() == form
            assert mod.last_weight_copy() == "tensor_map"
        assert mod.get_debug_weight_delay() == 200


@pytest.mark.parametrize("form", ["rs", "ss"])
@pytest.mark.parametrize("rounds", [0, 1, 3, 64, -1])
def test_fast_wgmma_tile_rounds(form, rounds):
    """The wgmma kernel's tile order: its first `rounds` rounds of M tiles go
    to the blocks that start first, the last opad / 32 blocks (which wait for
    fast_tables_kernel's SMs) take that many tiles fewer, and every tile is
    still computed once (set_debug_tile_rounds; -1, the default, estimates
    the rounds per call; too many for the tiles are cut to what fits). Two N
    tiles (O = 256), packed x, float and packed output, exact;
    last_tile_rounds gives the rounds the call ran with."""
    mod = _cuda_mod()
    if not mod.wgmma_available():
        pytest.skip("the wgmma kernel needs compute capability 9.0 and a build with sm_90a code")
    with pytest.raises(ValueError, match="rounds"):
        mod.set_debug_tile_rounds(-2)
    n, hw, c, o = 40, 28, 128, 256
    sms = jax.devices("gpu")[0].core_count
    # (M tiles: 128 output pixels; A from shared memory: 16 groups of 8
    # pixels of one output row)
    mtiles = -(-n * hw * hw // 128) if form == "rs" else -(-n * hw * -(-hw // 8) // 16)
    ntiles = o // 128
    assert mtiles * ntiles > sms, "the test needs more tiles than SMs"
    grid = (sms // ntiles) * ntiles
    # (fast_tables_kernel: a block per 32 channels, its SMs the late ones)
    early, mstep = (grid - min(-(-o // 32), grid)) // ntiles, grid // ntiles
    with _fast_knobs(mod, fast_wgmma="rs" if form == "rs" else "on", debug_tile_rounds=rounds):
        # (packed x: with float x the convolution waits for the tables kernel
        # that packs it, every block alike, and the plain order runs)
        x = _np(jb.pack_activations(jnp.asarray(rand_x(1800 + rounds, (n, hw, hw, c)))))
        w = np.asarray(rand_x(1900 + rounds, (3, 3, c, o)))
        for output in ("float", "packed"):
            check(x, w, type="xnor", padding="SAME", output=output,
                  output_bias=rand_vec(2000 + rounds, o, -30, 30))
            assert mod.last_wgmma_form() == form
            got = mod.last_tile_rounds()
            if rounds >= 0:
                want = min(rounds, mtiles // early) if 1 <= early < mstep else 0
                assert got == want
            else:
                assert got >= 0
        assert mod.get_debug_tile_rounds() == rounds


def test_fast_wgmma_auto_mode():
    """set_fast_wgmma("auto"), the default: on a GPU that can run the wgmma
    kernel (compute capability 9.0, sm_90a code) it runs where every SM gets a
    128-row tile and the K loop has at least 3 steps; with fewer tiles, a 1x1
    kernel over 256 channels (1 step), or packed output through the float
    epilogue (beta with float x), the mma.sync kernel runs, except for
    packed x to packed output by thresholds with at least 12 K steps, or 9
    with at most half as many tiles as SMs, and float x to float output
    with at least 12 K steps, or 9 with at least 12 tiles or at most half
    as many tiles as SMs (half tiles, set_fast_wg_half_tiles), which run the
    wgmma kernel with A from shared memory (packed: C = 256 and 512, 3x3,
    at N = 1; C = 256, 3x3 at 14x14 with 3/4 as many tiles as SMs does not;
    nor C = 128, 5 steps, or float x to packed output. Float: C = 512, 3x3
    at 7x7, N = 1, with beta too, and C = 256, 3x3 at 14x14, N = 4, 14
    tiles; N = 1 there, 4 tiles, with half tiles only; not C = 128, 5
    steps). Its A operand
    comes from shared memory for packed output by thresholds with at least
    12 K steps (C = 512, 3x3: 18), or 9 where Wo is a multiple of 8 (C =
    256, 3x3 at 16x16), else from registers (C = 256, 3x3 at 14x14: 9
    steps, Wo = 14; float output). All exact. Unknown modes are refused."""
    mod = _cuda_mod()
    old = mod.get_fast_wgmma()
    with pytest.raises(ValueError, match="auto"):
        mod.set_fast_wgmma("fast")
    assert mod.get_fast_wgmma() == old
    with _fast_knobs(mod, fast_wgmma="auto"):
        sms = jax.devices("gpu")[0].core_count
        ht = mod.get_fast_wg_half_tiles() and mod.get_fast_wg_skip_half()
        big = -(-sms * 64 // (14 * 14)) + 1  # ceil(n 196 / 128) * 2 tiles >= SMs
        big7 = -(-sms * 32 // (7 * 7)) + 1  # ceil(n 49 / 128) * 4 tiles >= SMs
        big16 = -(-sms // 4) + 1  # n 256 / 128 * 2 tiles >= SMs
        # ceil(n 196 / 128) * 2 tiles: about 3/4 of the SMs (more than half,
        # fewer than all)
        mid = max(1, (3 * sms // 8) * 128 // 196)
        # (n, hw, c, k, beta, output, form: "ss", "rs" or "" for mma.sync;
        # output "packed-x": packed x and output)
        cases = [(big, 14, 256, (3, 3), False, "packed", "rs"),
                 (big16, 16, 256, (3, 3), False, "packed", "ss"),
                 (big16, 16, 256, (3, 3), False, "float", "rs"),
                 (1, 14, 256, (3, 3), False, "packed", ""),
                 (1, 14, 256, (3, 3), False, "packed-x", "ss"),
                 (1, 7, 512, (3, 3), False, "packed-x", "ss"),
                 (1, 28, 128, (3, 3), False, "packed-x", ""),
                 (mid, 14, 256, (3, 3), False, "packed-x", ""),
                 (1, 14, 256, (1, 1), False, "packed-x", ""),
                 (big, 14, 256, (1, 1), False, "packed", ""),
                 (big, 14, 256, (3, 3), True, "packed", ""),
                 (big7, 7, 512, (3, 3), False, "packed", "ss"),
                 (big7, 7, 512, (3, 3), False, "float", "rs"),
                 (1, 7, 512, (3, 3), False, "float", "ss"),
                 (1, 7, 512, (3, 3), True, "float", "ss"),
                 (4, 14, 256, (3, 3), False, "float", "ss"),
                 (1, 14, 256, (3, 3), False, "float", "ss" if ht else ""),
                 (1, 28, 128, (3, 3), False, "float", "")]
        for n, hw, c, k, beta, output, form in cases:
            x = np.asarray(rand_x(950 + n, (n, hw, hw, c)))
            if output == "packed-x":
                x, output = _np(jb.pack_activations(jnp.asarray(x))), "packed"
            w = np.asarray(rand_x(960 + k[0], k + (c, c)))
            check(x, w, type="xnor", padding="SAME", output=output, beta_scaling=beta,
                  output_bias=rand_vec(970, c, -30, 30))
            assert mod.last_kernel() == "fast"
            want = form if mod.wgmma_available() else ""
            assert mod.last_wgmma() == bool(want), (n, c, k, beta, output)
            assert mod.last_wgmma_form() == want, (n, c, k, beta, output)


def _check_ss_case(mod, seed, step, n, h, w, c, o, t, beta, io, act):
    """One 3x3 SAME case of the wgmma shared-memory-form tests below, exact
    against the reference, on the fast kernel and (where wgmma runs) that
    form. io "float": float x and output; "packed": float x, packed output;
    "packed-x": packed x and output. Seeds seed + k step. Returns the output
    kind."""
    x = np.asarray(rand_x(seed, (n, h, w, c)))
    output = "float" if io == "float" else "packed"
    if io == "packed-x":
        x = _np(jb.pack_activations(jnp.asarray(x)))
    wt = np.asarray(rand_x(seed + step, (3, 3, c, o)))
    check(x, wt, type=t, padding="SAME", output=output, beta_scaling=beta, activation=act,
          output_scale=rand_vec(seed + 2 * step, o, 0.5, 1.5, signed=True),
          output_bias=rand_vec(seed + 3 * step, o, -30, 30))
    case = (n, h, w, c, o, t, beta, io, act)
    assert mod.last_kernel() == "fast", case
    if mod.wgmma_available():
        assert mod.last_wgmma_form() == "ss", case
    return output


@pytest.mark.parametrize("split", [True, False])
def test_fast_wgmma_split_epilogue(split):
    """The wgmma kernel's shared-memory form with one tile a block (fewer
    tiles than SMs; at most a quarter as many, as in every case here: 2 to
    6 tiles) and float output: warpgroup 1, which has no tile, runs
    the epilogue of the tile's channels 64-127 where the weights span 3 K
    blocks or more (C = 256 and 512, 3x3), with warpgroup 0's accumulators
    for them and the X1 terms handed over through shared memory
    (set_fast_wg_split, the default), or warpgroup 0 runs the whole tile
    (off). Float output with beta and activations, O not a multiple of 128
    (a last N tile with channels 64-127 partly or wholly past O: O = 200,
    130), several images a tile, pixels past Wo in a group (Wo = 12, 9), a
    tile whose rows 64-127 are empty (7x7, N = 1), and C = 128 (2 K blocks:
    no handover). Packed output (by thresholds, or through the float
    epilogue: float x with beta) never splits. All exact."""
    mod = _cuda_mod()
    with _fast_knobs(mod, fast_wgmma="on", fast_wg_split=split):
        # (n, h, w, c, o, type, beta, io, activation; io "packed-x": packed x
        # and output, by thresholds; "packed": float x with beta, packed
        # output through the float epilogue)
        cases = [(1, 16, 12, 256, 200, "xnor", True, "float", "relu"),
                 (4, 7, 7, 512, 128, "xnor", False, "float", None),
                 (1, 7, 7, 512, 130, "and", True, "float", "sigmoid"),
                 (2, 9, 9, 256, 130, "xnor", False, "float", "hard_tanh"),
                 (1, 14, 14, 256, 256, "and", False, "float", "tanh"),
                 (2, 9, 9, 256, 130, "xnor", True, "packed", "tanh"),
                 (2, 12, 12, 128, 128, "and", True, "float", "leaky_relu"),
                 (1, 14, 14, 256, 256, "xnor", True, "packed-x", None),
                 (1, 12, 16, 256, 96, "and", False, "packed-x", "relu")]
        for i, (n, h, w_, c, o, t, beta, io, act) in enumerate(cases):
            output = _check_ss_case(mod, 1200 + i, 10, n, h, w_, c, o, t, beta, io, act)
            if mod.wgmma_available():
                # (C = 128 at 3x3: 2 K blocks, too few for the handover)
                want = split and output == "float" and c >= 256
                assert mod.last_wg_split() == want, cases[i]


@pytest.mark.parametrize("skip", [True, False])
def test_fast_wgmma_skip_half(skip):
    """The wgmma kernel's shared-memory form on tiles whose rows 64-127
    (groups 8-15 of 8 pixels) hold no pixel: with set_fast_wg_skip_half
    (the default) such a tile issues the MMAs and runs the epilogue of
    rows 0-63 only where the output is float or packed by thresholds; off,
    and for packed output through the float epilogue (whose kernels it made
    ptxas serialize, S24-5), it runs all 128. 7x7 at N = 1 (7 groups: the only
    tile, with the split float epilogue, by thresholds, through the float
    epilogue), the last of 2-3 tiles (7x7 N = 3 and 5, 9x9 N = 1: 5, 3, 2
    groups in it), a tile that is not (7x7 N = 2: 14 groups), and blocks
    with 2 tiles whose second is (N = 300: 2100 groups, 264 tiles). Float
    output with beta and activations, packed output by thresholds and
    through the float epilogue, O = 130 and 96. All exact."""
    mod = _cuda_mod()
    with _fast_knobs(mod, fast_wgmma="on", fast_wg_skip_half=skip):
        # (n, hw, c, o, type, beta, io, activation; io as in
        # test_fast_wgmma_split_epilogue)
        cases = [(1, 7, 512, 512, "xnor", False, "float", None),
                 (1, 7, 512, 130, "and", True, "float", "sigmoid"),
                 (1, 7, 512, 512, "xnor", False, "packed-x", None),
                 (1, 7, 512, 130, "and", False, "packed-x", "sign"),
                 (1, 7, 512, 256, "xnor", True, "packed", "tanh"),
                 (3, 7, 256, 256, "xnor", False, "packed-x", "relu"),
                 (5, 7, 256, 128, "and", True, "float", "relu"),
                 (1, 9, 256, 96, "and", False, "packed-x", None),
                 (1, 9, 256, 130, "xnor", False, "float", "hard_tanh"),
                 (2, 7, 512, 256, "xnor", False, "float", None),
                 (300, 7, 256, 256, "xnor", False, "packed-x", None),
                 (300, 7, 256, 256, "and", False, "float", "leaky_relu")]
        for i, (n, hw, c, o, t, beta, io, act) in enumerate(cases):
            _check_ss_case(mod, 1300 + i, 20, n, hw, hw, c, o, t, beta, io, act)


@pytest.mark.parametrize("half_tiles,always", [(True, False), (False, False), (True, True)])
def test_fast_wgmma_half_tiles(half_tiles, always):
    """The wgmma kernel's shared-memory form in tiles of 64 rows (8 groups
    of 8 pixels) where twice the tiles still fit the SMs
    (set_fast_wg_half_tiles, the default; off: 128-row tiles): 14x14 and
    9x9 at N = 1 (4 and 3 half tiles a channel tile), Wo = 12 (pixels past
    Wo in every group), 56x56 at N = 1 (98 tiles), with the split float
    epilogue (few tiles), and packed output by thresholds; packed output
    through the float epilogue keeps 128-row tiles; nor does it apply at 7x7 at N = 1
    (7 groups: one tile either way) or N = 300 (too many tiles). With
    set_fast_wg_half_tiles_always also where they do not fit the SMs at
    once (N = 300 and N = 40 at 14x14: blocks loop over several 64-row
    tiles, with the other warpgroup's). All exact, and last_wg_half_tiles()
    as the rule says."""
    mod = _cuda_mod()
    sms = getattr(jax.devices("gpu")[0], "core_count", None)
    with _fast_knobs(mod, fast_wgmma="on", fast_wg_half_tiles=half_tiles,
                     fast_wg_half_tiles_always=always):
        # (n, h, w, c, o, type, beta, io, activation; io as in
        # test_fast_wgmma_split_epilogue)
        cases = [(1, 14, 14, 256, 256, "xnor", False, "float", None),
                 (1, 14, 14, 256, 130, "and", True, "float", "sigmoid"),
                 (1, 14, 14, 256, 256, "xnor", False, "packed-x", None),
                 (1, 9, 9, 256, 96, "and", False, "packed-x", "relu"),
                 (2, 16, 12, 256, 200, "xnor", True, "packed", "tanh"),
                 (2, 16, 12, 256, 200, "and", False, "float", "leaky_relu"),
                 (1, 56, 56, 256, 256, "xnor", False, "packed-x", None),
                 (1, 56, 56, 256, 256, "and", False, "float", "relu"),
                 (1, 7, 7, 512, 512, "xnor", False, "float", None),
                 (300, 7, 7, 256, 256, "xnor", False, "packed-x", None)]
        if always:
            cases += [(300, 7, 7, 512, 200, "and", True, "float", "tanh"),
                      (40, 14, 14, 256, 256, "xnor", False, "float", None),
                      (40, 14, 14, 256, 130, "xnor", False, "packed-x", "relu")]
        for i, (n, h, w_, c, o, t, beta, io, act) in enumerate(cases):
            output = _check_ss_case(mod, 1400 + i, 20, n, h, w_, c, o, t, beta, io, act)
            if mod.wgmma_available():
                groups = n * h * -(-w_ // 8)
                half, full, ntiles = -(-groups // 8), -(-groups // 16), -(-o // 128)
                if sms is not None:
                    # (packed output by thresholds too: packed x without
                    # beta here)
                    want = (half_tiles and (output == "float" or io == "packed-x") and
                            half > full and (always or half * ntiles <= sms))
                    assert mod.last_wg_half_tiles() == want, (cases[i], sms)


def test_fast_weight_copy_knob_rejects_unknown_mode():
    mod = _cuda_mod()
    with pytest.raises(ValueError, match="tensor_map"):
        mod.set_fast_weight_copy("tma")
    assert mod.get_fast_weight_copy() == "tensor_map"


@pytest.mark.parametrize("beta", [False, True])
@pytest.mark.parametrize("activation", [None, "relu", "relu6", "leaky_relu", "sigmoid", "tanh",
                                        "hard_tanh", "sign"])
def test_fast_kernel_float_activations_and_edges(activation, beta):
    """The fast kernel's float epilogue (activations as compares and selects,
    sigmoid and tanh out of line) on every activation, with scales and biases
    that hit 0, +-inf and NaN, and with beta."""
    c, o = 128, 70
    x = np.asarray(rand_x(520, (2, 9, 9, c)))
    w = np.asarray(rand_x(521, (3, 3, c, o)))
    scale, bias = _edge_scales(o, 522)
    scale[:6] = [np.inf, -np.inf, np.nan, 1.0, 0.0, -1.0]
    bias[:6] = [0.0, 1.0, 0.0, np.inf, -np.inf, np.nan]
    check(x, w, type="xnor", activation=activation, negative_slope=0.3, beta_scaling=beta,
          output_scale=scale, output_bias=bias)
    assert _cuda_mod().last_kernel() == "fast"


def test_fast_kernel_persistent_blocks_and_big_batch():
    """More tiles than resident blocks: each block walks several M tiles."""
    mod = _cuda_mod()
    x = np.asarray(rand_x(42, (160, 14, 14, 256)))
    w = np.asarray(rand_x(43, (3, 3, 256, 256)))
    check(x, w, type="xnor", output_bias=rand_vec(44, 256, -5, 5))
    assert mod.last_kernel() == "fast"


def test_fast_kernel_not_used_where_it_does_not_apply():
    mod = _cuda_mod()
    x = np.asarray(rand_x(45, (2, 6, 6, 192)))   # 192 channels: neither 64 nor a multiple of 128
    w = np.asarray(rand_x(46, (3, 3, 192, 32)))
    check(x, w, type="xnor")
    assert mod.last_kernel() == "general"
    x = np.asarray(rand_x(47, (2, 6, 6, 256)))
    w = np.asarray(rand_x(48, (3, 3, 128, 32)))
    check(x, w, type="xnor", groups=2)
    assert mod.last_kernel() == "general"


def test_set_kernel_rejects_unknown_names():
    with pytest.raises(ValueError, match="auto"):
        _cuda_mod().set_kernel("fastest")
