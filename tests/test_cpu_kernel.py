"""The C++ CPU kernel (jax_binconv._cpu) against the pure-JAX reference.

Every ISA this machine can run (``_cpu.available_isas()``) is switched in with
``_cpu.set_isa`` and compared with ``jax_binconv.reference.binary_conv2d``:
integer accumulators exactly (linear activation, unit scale, zero bias), the
fused epilogue to 1e-5. The NEON kernels are checked by cross-compiling the
standalone self-test (cpp/cpu/selftest.cpp) for aarch64 and running it under
qemu-user when those tools are installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

import zlib

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

jb = pytest.importorskip("jax_binconv")
from jax_binconv import reference  # noqa: E402
from jax_binconv._hlo import custom_call_lines  # noqa: E402
from conftest import rand_x  # noqa: E402

try:
    from jax_binconv import _cpu
except ImportError as e:  # pragma: no cover - depends on the build
    pytest.skip(f"jax_binconv._cpu is not built ({e})", allow_module_level=True)

TARGET = "jax_binconv_conv2d_cpu_v1"  # direct calls (six operands); lowerings emit v2
ISAS = _cpu.available_isas()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _restore_isa_and_threads():
    isa, threads = _cpu.get_isa(), _cpu.get_num_threads()
    yield
    _cpu.set_isa(isa)
    _cpu.set_num_threads(threads)


def _rand_x(rng, shape, scale=1.0):
    """Normal values plus exact zeros and negative zeros (bin(0) = bin(-0.0) = +1)."""
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    flat = x.reshape(-1)
    flat[::5] = 0.0
    flat[2::11] = -0.0
    return x


def _conv_fn(**kw):
    return jax.jit(lambda x, w: jb.binary_conv2d(x, w, **kw))


def _assert_uses_kernel(fn, *args):
    text = fn.lower(*args).as_text()
    assert jb.TARGETS["cpu"] in text, "the CPU lowering did not call the C++ kernel"


def _each_isa(fn, *args):
    """Runs fn under every ISA; returns {isa: numpy result}."""
    out = {}
    for isa in ISAS:
        _cpu.set_isa(isa)
        out[isa] = jax.tree_util.tree_map(np.asarray, fn(*args))
    return out


# --------------------------------------------------------------------- grid

# (C, O, groups)
CHANNELS = [(1, 3, 1), (3, 5, 1), (31, 33, 1), (33, 40, 1), (65, 64, 1), (130, 70, 2),
            (64, 64, 4), (96, 36, 3)]
# (kernel, strides, dilation, padding)
GEOMETRIES = [
    ((3, 3), (1, 1), (1, 1), "SAME"),
    ((1, 1), (1, 1), (1, 1), "VALID"),
    ((3, 3), (2, 2), (1, 1), ((1, 2), (0, 1))),
    ((5, 5), (1, 2), (2, 1), "SAME"),
    ((1, 3), (2, 1), (1, 1), ((0, 0), (2, 1))),
    ((3, 3), (1, 1), (2, 2), "VALID"),
]
PAD_VALUES = {"binary_weights": [0.0, 0.75], "xnor": [0.0, 1.0, -1.0], "and": [0.0, 1.0]}


def _grid():
    cases = []
    i = 0
    for ctype, pvs in PAD_VALUES.items():
        for pv in pvs:
            for ch in CHANNELS:
                # every channel config meets every pad value; geometries rotate
                geo = GEOMETRIES[i % len(GEOMETRIES)]
                geo2 = GEOMETRIES[(i + 3) % len(GEOMETRIES)]
                cases.append((ctype, pv, ch, geo))
                if ch[0] in (33, 130):
                    cases.append((ctype, pv, ch, geo2))
                i += 1
    return cases


@pytest.mark.parametrize("ctype,pad_value,channels,geometry", _grid())
def test_integer_accumulators_exact(ctype, pad_value, channels, geometry):
    c, o, groups = channels
    kernel, strides, dilation, padding = geometry
    # crc32, not hash(): str hashes are salted per process, and a failure must reproduce.
    rng = np.random.default_rng(zlib.crc32(repr((ctype, pad_value, channels, kernel, strides)).encode()))
    x = _rand_x(rng, (2, 9, 8, c))
    w = rng.standard_normal(kernel + (c // groups, o)).astype(np.float32)
    ib = (0.2 * rng.standard_normal(c)).astype(np.float32)
    isc = rng.uniform(0.5, 2.0, c).astype(np.float32)
    kw = dict(type=ctype, strides=strides, padding=padding, dilation=dilation, groups=groups,
              input_bias=ib, input_scale=isc, pad_value=pad_value)
    fn = _conv_fn(**kw)
    _assert_uses_kernel(fn, x, w)
    ref = np.asarray(reference.binary_conv2d(x, w, **kw))
    for isa, got in _each_isa(fn, x, w).items():
        if ctype == "binary_weights":
            xs = np.abs((x + ib) * isc).max()
            k = kernel[0] * kernel[1] * (c // groups)
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * k * max(xs, 1.0),
                                       err_msg=f"isa={isa}")
        else:
            np.testing.assert_array_equal(got, ref, err_msg=f"isa={isa}")


@pytest.mark.parametrize("ctype", ["xnor", "and"])
@pytest.mark.parametrize("channels", [(33, 40, 1), (64, 70, 2), (96, 96, 3)])
def test_packed_output_and_packed_input(ctype, channels):
    c, o, groups = channels
    rng = np.random.default_rng(c * 7 + o)
    x = _rand_x(rng, (2, 7, 6, c))
    w = rng.standard_normal((3, 3, c // groups, o)).astype(np.float32)
    for pv in PAD_VALUES[ctype]:
        kw = dict(type=ctype, padding="SAME", groups=groups, pad_value=pv)
        ref = np.asarray(reference.binary_conv2d(x, w, **kw))
        f_pack_out = jax.jit(lambda x, w: jb.binary_conv2d(x, w, output="packed", **kw).words)
        _assert_uses_kernel(f_pack_out, x, w)
        want_words = np.asarray(jb.pack_activations(ref).words)
        # packed input: the bits of x; the reference sees bin(x) as floats
        xp = jb.pack_activations(x)
        xpm1 = np.where(x < 0, -1.0, 1.0).astype(np.float32)
        ref_in = np.asarray(reference.binary_conv2d(xpm1, w, **kw))
        f_pack_in = jax.jit(lambda xw, w: jb.binary_conv2d(jb.PackedActivations(xw, c), w, **kw))
        f_pack_both = jax.jit(
            lambda xw, w: jb.binary_conv2d(jb.PackedActivations(xw, c), w, output="packed", **kw).words)
        if groups == 1 or (c // groups) % 32 == 0:  # else Python unpacks before the kernel
            _assert_uses_kernel(f_pack_in, xp.words, w)
        for isa in ISAS:
            _cpu.set_isa(isa)
            got = np.asarray(f_pack_out(x, w))
            np.testing.assert_array_equal(got, want_words, err_msg=f"packed out, isa={isa}, pv={pv}")
            if o % 32:  # trailing bits of the last word stay 0
                assert not np.any(got[..., -1] >> np.uint32(o % 32)), isa
            np.testing.assert_array_equal(np.asarray(f_pack_in(xp.words, w)), ref_in,
                                          err_msg=f"packed in, isa={isa}, pv={pv}")
            np.testing.assert_array_equal(np.asarray(f_pack_both(xp.words, w)),
                                          np.asarray(jb.pack_activations(ref_in).words),
                                          err_msg=f"packed in+out, isa={isa}, pv={pv}")


ACTIVATIONS = [None, "relu", "relu6", "leaky_relu", "sigmoid", "tanh", "hard_tanh", "sign"]


@pytest.mark.parametrize("ctype", ["binary_weights", "xnor", "and"])
@pytest.mark.parametrize("beta", [False, True])
def test_epilogue_scales_beta_activations(ctype, beta):
    rng = np.random.default_rng(11 + beta)
    c, o = 40, 36
    x = _rand_x(rng, (2, 6, 7, c))
    w = rng.standard_normal((3, 3, c, o)).astype(np.float32)
    common = dict(type=ctype, padding=((1, 0), (2, 1)), beta_scaling=beta,
                  input_bias=(0.1 * rng.standard_normal(c)).astype(np.float32),
                  input_scale=rng.uniform(0.5, 2.0, c).astype(np.float32),
                  output_scale=rng.uniform(0.01, 0.2, o).astype(np.float32),
                  output_bias=rng.standard_normal(o).astype(np.float32))
    for act in ACTIVATIONS:
        kw = dict(common, activation=act, negative_slope=0.125)
        fn = _conv_fn(**kw)
        ref = np.asarray(reference.binary_conv2d(x, w, **kw))
        for isa, got in _each_isa(fn, x, w).items():
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-5,
                                       err_msg=f"isa={isa}, activation={act}")


def test_weight_cache_never_serves_stale_weights():
    """The kernel caches re-blocked weights by content: alternating weights of
    one shape (and a buffer donated back) must always give fresh results."""
    rng = np.random.default_rng(21)
    x = _rand_x(rng, (1, 6, 6, 70))
    ws = [rng.standard_normal((3, 3, 70, 40)).astype(np.float32) for _ in range(3)]
    ws.append(ws[0].copy())
    ws[3][0, 0, 0, 0] = -ws[3][0, 0, 0, 0]  # one bit differs from ws[0]
    fn = _conv_fn(type="xnor", padding="SAME")
    for isa in ISAS:
        _cpu.set_isa(isa)
        for w in ws + ws[::-1]:
            np.testing.assert_array_equal(np.asarray(fn(x, w)),
                                          np.asarray(reference.binary_conv2d(x, w, type="xnor", padding="SAME")),
                                          err_msg=isa)


@pytest.mark.parametrize("c", [64, 128, 192, 512])
def test_float_rows_packed_whole(c):
    """Float input with one group and C a multiple of 64 is binarized a whole
    input row at a time (AVX-512: one loop over the row's words, with and
    without the input affine); NaN, zeros and negative zeros included, on 1
    and 2 threads, integer sums exactly equal to the reference."""
    rng = np.random.default_rng(300 + c)
    x = _rand_x(rng, (2, 5, 7, c))
    x.reshape(-1)[3::37] = np.nan
    w = rng.standard_normal((3, 3, c, 40)).astype(np.float32)
    affines = (dict(), dict(input_bias=(0.2 * rng.standard_normal(c)).astype(np.float32),
                            input_scale=rng.uniform(0.5, 2.0, c).astype(np.float32)))
    for ctype in ("xnor", "and"):
        for aff in affines:
            kw = dict(type=ctype, padding="SAME", **aff)
            fn = _conv_fn(**kw)
            ref = np.asarray(reference.binary_conv2d(x, w, **kw))
            for threads in (1, 2):
                _cpu.set_num_threads(threads)
                for isa, got in _each_isa(fn, x, w).items():
                    np.testing.assert_array_equal(got, ref, err_msg=f"{isa} {threads} {ctype} {aff.keys()}")


def test_weight_cache_checks_every_block():
    """A cached candidate is picked by shape and a sample of the packed
    weights (first and last words), then checked block by block: weights that
    differ only in the middle (another block than the first), alternated,
    must never reuse the other's re-blocked copy; on 1 and 2 threads."""
    rng = np.random.default_rng(22)
    x = _rand_x(rng, (2, 9, 9, 128))
    w0 = rng.standard_normal((3, 3, 128, 96)).astype(np.float32)
    w1 = w0.copy()
    w1[1, 1, 70, 45] = -w1[1, 1, 70, 45]  # output 45: the second block of 32
    w2 = w0.copy()
    w2[2, 0, 3, 90] = -w2[2, 0, 3, 90]    # output 90: the last block
    for kw in (dict(type="xnor", padding="SAME"), dict(type="and", padding="SAME", pad_value=1.0)):
        fn = _conv_fn(**kw)
        refs = [np.asarray(reference.binary_conv2d(x, w, **kw)) for w in (w0, w1, w2)]
        for isa in ISAS:
            _cpu.set_isa(isa)
            for threads in (1, 2):
                _cpu.set_num_threads(threads)
                for i in (0, 1, 0, 2, 2, 1, 0):
                    np.testing.assert_array_equal(np.asarray(fn(x, [w0, w1, w2][i])), refs[i],
                                                  err_msg=f"{isa} threads={threads} w{i} {kw}")
    _cpu.set_num_threads(0)


def test_border_correction_follows_the_geometry():
    """The border correction (per output row/column class, from the weights'
    per-tap sums) is kept with the cached weights for the geometry it was
    built for: the same weights alternated over input sizes, paddings,
    strides and pad values must rebuild it whenever the geometry changes."""
    rng = np.random.default_rng(23)
    w = rng.standard_normal((3, 3, 64, 40)).astype(np.float32)
    xs = {hw: _rand_x(rng, (1, hw[0], hw[1], 64)) for hw in ((9, 9), (6, 11), (13, 5))}
    variants = [
        ((9, 9), dict(type="xnor", padding="SAME")),
        ((6, 11), dict(type="xnor", padding="SAME")),
        ((9, 9), dict(type="xnor", padding=((2, 0), (0, 2)))),
        ((13, 5), dict(type="xnor", padding="SAME", strides=2)),
        ((9, 9), dict(type="xnor", padding="SAME", pad_value=-1.0)),
        ((9, 9), dict(type="xnor", padding=((1, 1), (1, 1)), dilation=2)),
    ]
    fns = [_conv_fn(**kw) for _, kw in variants]
    refs = [np.asarray(reference.binary_conv2d(xs[hw], w, **kw)) for hw, kw in variants]
    for isa in ISAS:
        _cpu.set_isa(isa)
        for i in (0, 1, 0, 2, 3, 0, 4, 5, 1, 5, 0):
            np.testing.assert_array_equal(np.asarray(fns[i](xs[variants[i][0]], w)), refs[i],
                                          err_msg=f"{isa} {variants[i]}")


@pytest.mark.parametrize("ctype", ["xnor", "and"])
@pytest.mark.parametrize("activation", [None, "relu", "hard_tanh"])
def test_full_blocks_float_and_packed(ctype, activation):
    """O a multiple of 32: the AVX-512 kernel applies linear/ReLU epilogues
    straight from its registers (float rows and whole packed words)."""
    rng = np.random.default_rng(64)
    c, o = 70, 64
    x = _rand_x(rng, (2, 7, 9, c))
    w = rng.standard_normal((3, 3, c, o)).astype(np.float32)
    ob = (rng.integers(-4, 4, o) + 0.5).astype(np.float32)  # no ties at 0 for bin()
    for beta in (False, True):
        kw = dict(type=ctype, padding="SAME", activation=activation, beta_scaling=beta,
                  output_bias=ob, output_scale=rng.uniform(0.5, 2, o).astype(np.float32))
        ref = np.asarray(reference.binary_conv2d(x, w, **kw))
        f_packed = jax.jit(lambda x, w: jb.binary_conv2d(x, w, output="packed", **kw).words)
        for isa, got in _each_isa(_conv_fn(**kw), x, w).items():
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=f"{isa} beta={beta}")
        want = np.asarray(jb.pack_activations(ref).words)
        for isa, got in _each_isa(f_packed, x, w).items():
            if beta:  # beta makes z non-integer: allow bins that differ only where |z| is tiny
                bad = np.asarray(jb.unpack_activations(jb.PackedActivations(got ^ want, o), values="01"))
                assert not np.any(bad.astype(bool) & (np.abs(ref) > 1e-4)), isa
            else:
                np.testing.assert_array_equal(got, want, err_msg=isa)


@pytest.mark.parametrize("ctype", ["xnor", "and"])
def test_full_blocks_tail_tiles(ctype):
    """The AVX-512 fused tile (12 pixels) runs a narrower tile for a layer's
    last pixels (N*Ho*Wo not a multiple of 12): every remainder 1..11 (and
    0), float and packed output, linear and ReLU, with border corrections,
    on 1 and 2 threads, exactly equal to the reference (unit scale, integer
    bias)."""
    rng = np.random.default_rng(65)
    c, o = 64, 64
    w = rng.standard_normal((3, 3, c, o)).astype(np.float32)
    ob = (rng.integers(-4, 4, o) + 0.5).astype(np.float32)  # no ties at 0 for bin()
    # N*Ho*Wo mod 12: 1, 8, 3, 4, 11, 1, 0, 2, 5, 6, 7, 9, 10
    for shape in ((1, 5, 5), (1, 4, 5), (1, 3, 9), (1, 4, 7), (1, 5, 7), (1, 7, 7), (2, 3, 4),
                  (1, 2, 7), (1, 17, 1), (1, 3, 6), (1, 5, 11), (1, 3, 7), (1, 2, 11)):
        x = _rand_x(rng, shape + (c,))
        for activation in (None, "relu"):
            kw = dict(type=ctype, padding="SAME", activation=activation, output_bias=ob)
            ref = np.asarray(reference.binary_conv2d(x, w, **kw))
            want = np.asarray(jb.pack_activations(ref).words)
            f_packed = jax.jit(lambda x, w, kw=kw: jb.binary_conv2d(x, w, output="packed", **kw).words)
            for threads in (1, 2):
                _cpu.set_num_threads(threads)
                for isa, got in _each_isa(_conv_fn(**kw), x, w).items():
                    np.testing.assert_array_equal(got, ref, err_msg=f"{isa} {shape} {activation} t={threads}")
                for isa, got in _each_isa(f_packed, x, w).items():
                    np.testing.assert_array_equal(got, want, err_msg=f"{isa} {shape} {activation} t={threads}")
    _cpu.set_num_threads(0)


def test_nan_input_binarizes_to_plus_one():
    rng = np.random.default_rng(5)
    x = _rand_x(rng, (1, 5, 5, 70))
    x[0, 2, 2, :10] = np.nan
    w = rng.standard_normal((3, 3, 70, 8)).astype(np.float32)
    kw = dict(type="xnor", padding="SAME")
    ref = np.asarray(reference.binary_conv2d(np.where(np.isnan(x), 1.0, x).astype(np.float32), w, **kw))
    for isa, got in _each_isa(_conv_fn(**kw), x, w).items():
        np.testing.assert_array_equal(got, ref, err_msg=isa)


def test_large_k_no_overflow():
    """C = 8192, 3x3: 73728-term integer sums, several words per tap."""
    rng = np.random.default_rng(8192)
    c, o = 8192, 10
    x = _rand_x(rng, (1, 4, 5, c))
    w = rng.standard_normal((3, 3, c, o)).astype(np.float32)
    for ctype, pv in [("xnor", 0.0), ("xnor", 1.0), ("and", 1.0)]:
        kw = dict(type=ctype, padding="SAME", pad_value=pv)
        ref = np.asarray(reference.binary_conv2d(x, w, **kw))
        # a constant input reaches the extreme sum K*KH*KW for XNOR
        for isa, got in _each_isa(_conv_fn(**kw), x, w).items():
            np.testing.assert_array_equal(got, ref, err_msg=f"{isa} {ctype} pv={pv}")
    ones = np.ones((1, 3, 3, c), np.float32)
    wpos = np.ones((3, 3, c, o), np.float32)
    for isa, got in _each_isa(_conv_fn(type="xnor", padding="VALID"), ones, wpos).items():
        assert np.all(got == 9 * c), isa


@pytest.mark.parametrize("o", [256, 264])
def test_large_float_output(o):
    """Outputs over 4 MiB take the streaming-store path (aligned rows for
    O=256; every other row misaligned for O=264)."""
    rng = np.random.default_rng(o)
    x = _rand_x(rng, (5, 32, 32, 40))  # 5*32*32*o*4 bytes > 4 MiB
    w = rng.standard_normal((1, 1, 40, o)).astype(np.float32)
    kw = dict(type="xnor", padding="VALID")
    ref = np.asarray(reference.binary_conv2d(x, w, **kw))
    for isa, got in _each_isa(_conv_fn(**kw), x, w).items():
        np.testing.assert_array_equal(got, ref, err_msg=isa)


def test_rank5_batch_and_vmap():
    rng = np.random.default_rng(3)
    x = _rand_x(rng, (2, 3, 6, 6, 17))
    w = rng.standard_normal((3, 3, 17, 9)).astype(np.float32)
    fn = jax.jit(jax.vmap(lambda xi: jb.binary_conv2d(xi, w, type="xnor", padding="SAME")))
    got = np.asarray(fn(x))
    want = np.stack([np.asarray(reference.binary_conv2d(x[i], w, type="xnor", padding="SAME"))
                     for i in range(2)])
    np.testing.assert_array_equal(got, want)


def _direct_call(x, w, ib, isc, osc, ob, out_shape, out_dtype=np.float32, **attrs):
    a = dict(conv_type=np.int32(1), in_channels=x.shape[-1], stride_h=1, stride_w=1,
             dilation_h=1, dilation_w=1, pad_top=1, pad_bottom=1, pad_left=1, pad_right=1,
             groups=1, pad_value=np.float32(0.0), beta_scaling=False, activation=np.int32(0),
             negative_slope=np.float32(0.0))
    a.update(attrs)
    f = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(out_shape, out_dtype))
    return f(x, w, ib, isc, osc, ob, **a)


def test_empty_batch():
    c, o = 40, 12
    x = np.zeros((0, 5, 5, c), np.float32)
    w = np.zeros((o, 3, 3, 2), np.uint32)
    ones_c, ones_o = np.ones(c, np.float32), np.ones(o, np.float32)
    for isa in ISAS:
        _cpu.set_isa(isa)
        out = _direct_call(x, w, ones_c, ones_c, ones_o, ones_o, (0, 5, 5, o))
        assert out.shape == (0, 5, 5, o)


@pytest.mark.parametrize("bad", ["bias_len", "w_words", "out_shape", "x_dtype", "pad_value", "groups"])
def test_handler_rejects_bad_buffers(bad):
    """Shapes that Python would never send: the handler must error, not crash."""
    c, o = 40, 12
    x = np.ones((1, 5, 5, c), np.float32)
    w = np.zeros((o, 3, 3, 2), np.uint32)
    ib, isc, osc, ob = (np.ones(c, np.float32), np.ones(c, np.float32),
                        np.ones(o, np.float32), np.ones(o, np.float32))
    out_shape, attrs = (1, 5, 5, o), {}
    if bad == "bias_len":
        ib = np.ones(c - 1, np.float32)
    elif bad == "w_words":
        w = np.zeros((o, 3, 3, 3), np.uint32)
    elif bad == "out_shape":
        out_shape = (1, 4, 5, o)
    elif bad == "x_dtype":
        x = np.ones((1, 5, 5, c), np.int32)
    elif bad == "pad_value":
        attrs["pad_value"] = np.float32(0.5)
    elif bad == "groups":
        attrs["groups"] = 3
    with pytest.raises(Exception, match="jax_binconv_conv2d_cpu_v1"):
        jax.block_until_ready(_direct_call(x, w, ib, isc, osc, ob, out_shape, **attrs))


TARGET_V2 = "jax_binconv_conv2d_cpu_v2"


def test_v2_affine_operand_matches_v1():
    """v2 (what lowerings emit) takes the four vectors as one operand; on
    random inputs and vectors it gives v1's result bit for bit on every ISA,
    and a wrong-sized affine is refused by name."""
    c, o = 70, 40
    x = np.asarray(rand_x(31, (2, 7, 6, c)))
    w = np.asarray(jb.pack_weights(np.asarray(rand_x(32, (3, 3, c, o)))).words)
    rng = np.random.default_rng(33)
    ib, isc = rng.normal(0, 0.3, c).astype(np.float32), rng.uniform(-2, 2, c).astype(np.float32)
    osc, ob = rng.uniform(-2, 2, o).astype(np.float32), rng.normal(0, 3, o).astype(np.float32)
    a = dict(conv_type=np.int32(1), in_channels=c, stride_h=1, stride_w=1, dilation_h=1,
             dilation_w=1, pad_top=1, pad_bottom=1, pad_left=1, pad_right=1, groups=1,
             pad_value=np.float32(0.0), beta_scaling=True, activation=np.int32(3),
             negative_slope=np.float32(0.1))
    v2 = jax.ffi.ffi_call(TARGET_V2, jax.ShapeDtypeStruct((2, 7, 6, o), np.float32))
    for isa in ISAS:
        _cpu.set_isa(isa)
        want = np.asarray(_direct_call(x, w, ib, isc, osc, ob, (2, 7, 6, o), **a))
        got = np.asarray(v2(x, w, np.concatenate([ib, isc, osc, ob]), **a))
        np.testing.assert_array_equal(got, want, err_msg=isa)
    with pytest.raises(Exception, match="jax_binconv_conv2d_cpu_v2.*affine"):
        np.asarray(v2(x, w, np.concatenate([ib, isc, osc]), **a))
    with pytest.raises(Exception, match="jax_binconv_conv2d_cpu_v2.*in_channels"):
        np.asarray(v2(x, w, np.concatenate([ib, isc, osc, ob]), **dict(a, in_channels=0)))


def test_default_vectors_are_one_constant():
    """With every scale and bias at its default, the compiled program hands
    the kernel one constant operand: no broadcast kernel per call."""
    x = jnp.asarray(rand_x(34, (1, 8, 8, 64)))
    w = jb.pack_weights(np.asarray(rand_x(35, (3, 3, 64, 32))))
    text = jax.jit(lambda x, w: jb.binary_conv2d(x, w, padding="SAME")).lower(x, w).compile().as_text()
    call = custom_call_lines(text, TARGET_V2)
    assert len(call) == 1, text
    assert "fusion" not in call[0].split("custom-call(")[1].split(")")[0], call[0]
    assert re.search(r"f32\[192\]\{0\} constant\(", text), text


def test_isa_switch_api():
    assert "scalar" in ISAS
    assert _cpu.get_isa() in ISAS
    for isa in ISAS:
        _cpu.set_isa(isa)
        assert _cpu.get_isa() == isa
    with pytest.raises(ValueError):
        _cpu.set_isa("sse9")
    for isa in {"scalar", "avx2", "avx512", "neon"} - set(ISAS):
        with pytest.raises(ValueError):
            _cpu.set_isa(isa)


def test_env_forces_isa_in_fresh_process():
    code = ("import jax_binconv._cpu as c; print(c.get_isa())")
    env = dict(os.environ, JAX_BINCONV_CPU_ISA="scalar", PYTHONPATH=ROOT + os.pathsep +
               os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([os.sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.stdout.strip() == "scalar", r.stderr
    env["JAX_BINCONV_CPU_ISA"] = "bogus"
    r = subprocess.run([os.sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.stdout.strip() == ISAS[-1] and "JAX_BINCONV_CPU_ISA" in r.stderr


@pytest.mark.parametrize("packed_io", [False, True])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_thread_split_is_deterministic_lazy_packing(packed_io, activation):
    """Without beta scaling, with cached weights, one parallel phase packs
    input rows on demand (whichever thread needs a row first packs it, others
    wait for it): bit-identical results for 1, 2 and 3 threads on every ISA,
    float or packed input and output, several images (items span them)."""
    rng = np.random.default_rng(98)
    c, o = 128, 96
    x = _rand_x(rng, (3, 13, 11, c))
    w = rng.standard_normal((3, 3, c, o)).astype(np.float32)
    kw = dict(type="xnor", padding="SAME", activation=activation,
              output_scale=rng.uniform(0.5, 2, o).astype(np.float32),
              output_bias=(rng.integers(-4, 4, o) + 0.5).astype(np.float32))
    if packed_io:
        xin = jb.pack_activations(jnp.asarray(x)).words
        fn = jax.jit(lambda xw, w: jb.binary_conv2d(jb.PackedActivations(xw, c), w, output="packed",
                                                    **kw).words)
        want = np.asarray(jb.pack_activations(reference.binary_conv2d(x, w, **kw)).words)
    else:
        xin = x
        fn = _conv_fn(**kw)
        want = np.asarray(reference.binary_conv2d(x, w, **kw))
    for isa in ISAS:
        _cpu.set_isa(isa)
        for threads in (1, 2, 3, 0):
            _cpu.set_num_threads(threads)
            for _ in range(2):  # the second call finds the weights cached
                got = np.asarray(fn(xin, w))
                if packed_io:
                    np.testing.assert_array_equal(got, want, err_msg=f"{isa} threads={threads}")
                else:
                    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5,
                                               err_msg=f"{isa} threads={threads}")
                    if threads != 1:
                        np.testing.assert_array_equal(got, first, err_msg=f"{isa} threads={threads}")
                    else:
                        first = got
    _cpu.set_num_threads(0)


@pytest.mark.parametrize("ctype", ["xnor", "and", "binary_weights"])
def test_thread_split_is_deterministic(ctype):
    """Bit-identical results for 1, 2 and 3 threads on every ISA, on a layer
    big enough to split into many items. (Across ISAs only the integer part is
    identical: beta's channel sum is vectorized differently per ISA.)"""
    rng = np.random.default_rng(99)
    c, o = 96, 80
    x = _rand_x(rng, (2, 20, 18, c))
    w = rng.standard_normal((3, 3, c, o)).astype(np.float32)
    kw = dict(type=ctype, padding="SAME", beta_scaling=True,
              output_scale=rng.uniform(0.01, 0.1, o).astype(np.float32),
              output_bias=rng.standard_normal(o).astype(np.float32), activation="tanh")
    fn = _conv_fn(**kw)
    results = {}
    for isa in ISAS:
        _cpu.set_isa(isa)
        for threads in (1, 2, 3, 0):
            _cpu.set_num_threads(threads)
            results[(isa, threads)] = np.asarray(fn(x, w))
            if threads == 2:
                assert _cpu.last_call_stats()["pool_threads"] >= 1
    for (isa, threads), r in results.items():
        np.testing.assert_array_equal(r.view(np.uint32), results[(isa, 1)].view(np.uint32),
                                      err_msg=f"{isa} threads={threads}")
    for isa in ISAS:
        np.testing.assert_allclose(results[(isa, 1)], results[(ISAS[0], 1)], rtol=1e-5,
                                   atol=1e-6, err_msg=isa)


# ----------------------------------------------------- ARM64 NEON under qemu

def _find(*names):
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    return None


def test_native_kernels_under_address_sanitizer():
    """The x86/ARM kernels built into cpp/cpu/selftest.cpp with ASan+UBSan:
    every case of the self-test grid, plus out-of-bounds reads that a normal
    run only turns into a rare crash."""
    import platform
    cxx = _find("g++", "c++")
    if cxx is None:
        pytest.skip("no native C++ compiler")
    src = os.path.join(ROOT, "cpp", "cpu")
    files = [os.path.join(src, "selftest.cpp"), os.path.join(src, "kernels_scalar.cpp")]
    flags = {}
    if platform.machine() in ("x86_64", "AMD64"):
        files += [os.path.join(src, "kernels_avx2.cpp"), os.path.join(src, "kernels_avx512.cpp")]
        flags = {"kernels_avx2.cpp": ["-mavx2", "-mpopcnt"],
                 "kernels_avx512.cpp": ["-mpopcnt", "-mavx512f", "-mavx512bw", "-mavx512dq",
                                        "-mavx512vl", "-mavx512vpopcntdq"]}
    elif platform.machine() in ("aarch64", "arm64"):
        files.append(os.path.join(src, "kernels_neon.cpp"))
    common = ["-O1", "-g", "-std=c++17", "-ffp-contract=off", "-fsanitize=address,undefined",
              "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", f"-I{src}",
              f"-I{os.path.join(ROOT, 'cpp', 'common')}"]
    with tempfile.TemporaryDirectory() as tmp:
        objs = []
        for f in files:
            obj = os.path.join(tmp, os.path.basename(f) + ".o")
            r = subprocess.run([cxx, *common, *flags.get(os.path.basename(f), []), "-c", f, "-o", obj],
                               capture_output=True, text=True, timeout=300)
            if r.returncode != 0 and "sanitize" in r.stderr:
                pytest.skip("the compiler has no ASan/UBSan runtime: " + r.stderr[-300:])
            assert r.returncode == 0, r.stderr[-3000:]
            objs.append(obj)
        exe = os.path.join(tmp, "selftest")
        r = subprocess.run([cxx, *common, *objs, "-o", exe, "-pthread"], capture_output=True,
                           text=True, timeout=300)
        if r.returncode != 0 and ("asan" in r.stderr or "ubsan" in r.stderr):
            pytest.skip("the compiler has no ASan/UBSan runtime: " + r.stderr[-300:])
        assert r.returncode == 0, r.stderr[-3000:]
        r = subprocess.run([exe, "--quick"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0 and "0 failures" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


def test_neon_kernels_under_qemu():
    """Cross-compiles cpp/cpu/selftest.cpp with the scalar and NEON kernels
    for aarch64 and runs it under qemu-user (integer sums exact vs a naive
    direct convolution). On an aarch64 host it builds and runs natively."""
    import platform
    native = platform.machine() in ("aarch64", "arm64")
    cxx = _find("g++", "c++") if native else _find("aarch64-linux-gnu-g++")
    if cxx is None:
        pytest.skip("no aarch64 cross compiler (apt-get install g++-aarch64-linux-gnu)")
    runner = [] if native else [_find("qemu-aarch64-static", "qemu-aarch64")]
    if not native and runner[0] is None:
        pytest.skip("no qemu-user (apt-get install qemu-user-static)")
    src = os.path.join(ROOT, "cpp", "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "selftest")
        cmd = [cxx, "-O2", "-std=c++17", "-ffp-contract=off", "-static", f"-I{src}",
               f"-I{os.path.join(ROOT, 'cpp', 'common')}",
               os.path.join(src, "selftest.cpp"), os.path.join(src, "kernels_scalar.cpp"),
               os.path.join(src, "kernels_neon.cpp"), "-o", exe, "-pthread"]
        if native:
            cmd.remove("-static")
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        r = subprocess.run(runner + [exe, "--quick"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0 and "0 failures" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
