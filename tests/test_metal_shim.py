"""The Metal kernel source (metal/binconv.metal), compiled as C++ through
metal/host_shim.h and run by the shim's threadgroup/barrier emulator, against
the pure-JAX reference over the reference grid: integer parts exactly,
float results within the SPEC tolerance.

Every case is one jit holding both the shim call and the reference (one
compile per case): the shim executes every GPU lane as a fiber, so the
spatial sizes here stay small.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (accumulator_kw, assert_accumulators_equal, assert_results_match,
                      assert_steps_near_zero, float_steps, pad_values, pre_activation_kw, rand_vec,
                      rand_x)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jax_binconv as jb

pytestmark = pytest.mark.skipif(
    "metal_shim" not in jb.lowering.available,
    reason=f"jax_binconv._metal_shim not built: {jb.lowering.load_errors.get('_metal_shim')}")

TARGET = "jax_binconv_conv2d_metalshim_v1"
TYPES = ["binary_weights", "xnor", "and"]
ACTIVATIONS = [None, "relu", "relu6", "leaky_relu", "sigmoid", "tanh", "hard_tanh", "sign"]
METAL_DIR = Path(__file__).resolve().parent.parent / "metal"


def check(x, w, **kw):
    """Shim result vs reference for one configuration, compared as
    conftest.assert_conv_matches does, all in one jit; returns the shim
    result."""
    bits = jb.options.conv_type(kw.get("type", "xnor")) != jb.BinaryConvType.BINARY_WEIGHTS
    acc_kw = accumulator_kw(kw)
    steps = float_steps(kw)

    def both(x, w):
        calls = [kw] + ([acc_kw] if bits else []) + ([pre_activation_kw(kw)] if steps else [])
        return [(jb.binary_conv2d(x, w, **c), jb.reference.binary_conv2d(x, w, **c))
                for c in calls]

    with jb.config.cpu_kernel_override("metal_shim"):
        f = jax.jit(both)
        assert TARGET in f.lower(x, w).as_text(), "the call did not lower to the Metal shim"
        res = f(x, w)
    ours, ref = res[0]
    if bits:
        assert_accumulators_equal(*res[1], acc_kw)
    if steps:
        assert_results_match(*res[-1], pre_activation_kw(kw))
        assert_steps_near_zero(ours, ref, res[-1][1])
    else:
        assert_results_match(ours, ref, kw)
    return ours


def case(t, c=33, o=20, k=(3, 3), hw=(6, 5), n=2, seed=0, groups=1, **kw):
    x = rand_x(seed, (n,) + hw + (c,))
    w = rand_x(seed + 1, k + (c // groups, o))
    return check(x, w, type=t, groups=groups, **kw)


# ------------------------------------------------------------------ the grid
# One axis at a time around a base case, for each type.

@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("c", [1, 3, 31, 33, 65, 130])
def test_channels(t, c):
    case(t, c=c, o=7 if c < 64 else 36, seed=c)


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("k", [(1, 1), (3, 3), (5, 5), (1, 3)])
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((1, 0), (2, 1))])
def test_kernels_and_padding(t, k, padding):
    case(t, k=k, padding=padding, hw=(6, 6), seed=k[0] * 10 + k[1])


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("strides,dilation", [((2, 2), (1, 1)), ((1, 2), (2, 1)),
                                              ((2, 1), (2, 2)), ((1, 1), (2, 2))])
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((0, 2), (1, 0))])
def test_strides_dilation(t, strides, dilation, padding):
    case(t, strides=strides, dilation=dilation, padding=padding, hw=(7, 6))


@pytest.mark.parametrize("t,pad_value", [(t, v) for t in TYPES for v in pad_values(t)])
@pytest.mark.parametrize("padding", ["SAME", ((2, 1), (0, 3))])
def test_pad_values(t, pad_value, padding):
    case(t, pad_value=pad_value, padding=padding, dilation=(1, 2))


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("groups,c,o", [(2, 66, 8), (4, 64, 12), (2, 130, 6), (4, 12, 8),
                                        (2, 6, 70)])
def test_groups(t, groups, c, o):
    case(t, c=c, o=o, groups=groups, beta_scaling=True)


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_epilogue(t, activation):
    c, o = 33, 20
    case(t, c=c, o=o, seed=3, activation=activation, negative_slope=0.2, beta_scaling=True,
         input_bias=rand_vec(5, c, -0.5, 0.5), input_scale=rand_vec(6, c, 0.5, 1.5, signed=True),
         output_scale=rand_vec(7, o, 0.01, 0.1, signed=True), output_bias=rand_vec(8, o, -2, 2))


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("padding,strides,dilation", [("SAME", 1, 1), ("VALID", 2, 1),
                                                      (((2, 0), (1, 2)), 1, 2)])
def test_beta_scaling(t, padding, strides, dilation):
    case(t, beta_scaling=True, padding=padding, strides=strides, dilation=dilation,
         output_scale=0.5, input_bias=0.1, input_scale=-1.5)


@pytest.mark.parametrize("t", TYPES)
def test_scalar_scales_and_biases(t):
    case(t, input_bias=0.25, input_scale=-2.0, output_scale=0.125, output_bias=-1.0)


@pytest.mark.parametrize("t", TYPES)
def test_nchw_and_low_precision(t):
    x = rand_x(11, (2, 20, 5, 6), jnp.bfloat16)
    w = rand_x(12, (12, 20, 3, 3))
    out = check(x.astype(jnp.float32), w, type=t, dimension_numbers=("NCHW", "OIHW", "NCHW"),
                strides=(2, 1))
    assert out.shape == (2, 12, 3, 6)


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("groups,o", [(1, 40), (2, 64), (2, 6), (4, 36)])
def test_packed_output(t, groups, o):
    """Packed results, including words shared by two groups (og % 32 != 0)."""
    c = 8 * groups
    out = case(t, c=c, o=o, groups=groups, output="packed", seed=o,
               output_scale=rand_vec(18, o, 0.5, 1.0, signed=True),
               output_bias=rand_vec(19, o, -3, 3))
    assert isinstance(out, jb.PackedActivations) and out.channels == o
    words = np.asarray(out.words)
    if o % 32:
        assert np.all(words[..., -1] >> (o % 32) == 0), "trailing bits of packed output must be 0"


@pytest.mark.parametrize("t", ["xnor", "and"])
@pytest.mark.parametrize("c,groups", [(33, 1), (64, 2), (96, 3), (130, 1)])
@pytest.mark.parametrize("pad_value", [0.0, 1.0])
def test_packed_input(t, c, groups, pad_value):
    x = jb.pack_activations(rand_x(16 + c, (2, 5, 6, c)))
    w = rand_x(17, (3, 3, c // groups, 4 * groups))
    check(x, w, type=t, groups=groups, pad_value=pad_value, beta_scaling=True,
          output_scale=rand_vec(18, 4 * groups, 0.5, 1.0, signed=True))
    check(x, w, type=t, groups=groups, pad_value=pad_value, output="packed", strides=2)


def test_packed_input_trailing_bits_are_ignored():
    """SPEC section 7: garbage in the trailing bits of a word changes nothing."""
    c = 40
    x = jb.pack_activations(rand_x(30, (1, 4, 4, c)))
    dirty = jb.PackedActivations(x.words | jnp.uint32(0xFFFFFF00) * (jnp.arange(2) == 1),
                                 c)
    w = rand_x(31, (3, 3, c, 5))
    with jb.config.cpu_kernel_override("metal_shim"):
        for t in ("xnor", "and"):
            f = jax.jit(lambda x, w: jb.binary_conv2d(x, w, type=t, pad_value=1.0))
            np.testing.assert_array_equal(np.asarray(f(dirty, w)), np.asarray(f(x, w)))


def test_special_values():
    """bin(0) = bin(-0.0) = bin(NaN) = +1, through the shim."""
    vals = np.array([0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30, np.nan, -0.0], np.float32)
    x = jnp.asarray(np.tile(vals, (1, 3, 3, 1)))
    with jb.config.cpu_kernel_override("metal_shim"):
        y = jax.jit(lambda x: jb.binary_conv2d(x, jnp.ones((1, 1, 8, 1)), type="xnor",
                                               padding="VALID"))(x)
    assert float(y[0, 0, 0, 0]) == 6 - 2
    xf = jnp.where(jnp.isnan(x), 2.0, x)  # NaN elsewhere makes beta/BW NaN: compare finite parts
    for t in TYPES:
        check(xf, rand_x(13, (1, 1, 8, 4)), type=t, padding="VALID")


def test_large_k_no_overflow():
    c = 8192
    check(rand_x(25, (1, 3, 3, c)), rand_x(26, (3, 3, c, 3)), type="xnor", padding="SAME")


@pytest.mark.parametrize("lanes", ["1", "7", "32", "256"])
def test_any_threadgroup_size(lanes, monkeypatch):
    """The macOS host lowers the lane count when a pipeline allows fewer
    threads: the kernels' tiling must not depend on it."""
    monkeypatch.setenv("JAX_BINCONV_METAL_SHIM_LANES", lanes)
    case("xnor", c=65, o=40, hw=(5, 7), beta_scaling=True, seed=int(lanes))
    case("binary_weights", c=33, o=33, hw=(4, 3), pad_value=0.5, seed=int(lanes))


def test_empty_batch():
    with jb.config.cpu_kernel_override("metal_shim"):
        y = jax.jit(lambda x, w: jb.binary_conv2d(x, w))(jnp.zeros((0, 5, 5, 8)),
                                                        rand_x(22, (3, 3, 8, 4)))
    assert y.shape == (0, 5, 5, 4)


def test_vmap_leading_batch_dims():
    x = rand_x(40, (3, 2, 4, 4, 10))
    w = rand_x(41, (3, 3, 10, 6))
    with jb.config.cpu_kernel_override("metal_shim"):
        y = jax.jit(jax.vmap(lambda x: jb.binary_conv2d(x, w)))(x)
    r = jax.vmap(lambda x: jb.reference.binary_conv2d(x, w))(x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(r))


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    t=st.sampled_from(TYPES), n=st.integers(1, 2), h=st.integers(1, 7), w=st.integers(1, 7),
    c=st.integers(1, 70), o=st.integers(1, 40), kh=st.integers(1, 4), kw=st.integers(1, 4),
    sh=st.integers(1, 3), sw=st.integers(1, 3), dh=st.integers(1, 2), dw=st.integers(1, 2),
    groups=st.sampled_from([1, 2, 4]),
    pad=st.one_of(st.sampled_from(["SAME", "VALID"]),
                  st.tuples(st.tuples(st.integers(0, 3), st.integers(0, 3)),
                            st.tuples(st.integers(0, 3), st.integers(0, 3)))),
    pv_index=st.integers(0, 2), beta=st.booleans(), packed_out=st.booleans(),
    act=st.sampled_from(ACTIVATIONS), seed=st.integers(0, 2**16),
)
def test_hypothesis_random_configurations(t, n, h, w, c, o, kh, kw, sh, sw, dh, dw, groups, pad,
                                          pv_index, beta, packed_out, act, seed):
    """Random shapes and options (seeded, bounded) through the shim."""
    c = max(groups, c - c % groups)
    o = max(groups, o - o % groups)
    eff = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
    if pad == "VALID" and (eff[0] > h or eff[1] > w):
        return
    if isinstance(pad, tuple) and (h + sum(pad[0]) < eff[0] or w + sum(pad[1]) < eff[1]):
        return
    values = pad_values(t)
    check(rand_x(seed, (n, h, w, c)), rand_x(seed + 1, (kh, kw, c // groups, o)), type=t,
          strides=(sh, sw), dilation=(dh, dw), padding=pad, groups=groups,
          pad_value=values[pv_index % len(values)], beta_scaling=beta, activation=act,
          negative_slope=0.3, output="packed" if packed_out and t != "binary_weights" else "float",
          output_scale=rand_vec(seed, o, 0.1, 1.0, signed=True),
          output_bias=rand_vec(seed + 2, o, -1, 1))


def test_concurrent_calls_from_many_threads():
    """The runner keeps its fibers and threadgroup memory per OS thread:
    calls running at the same time on several threads must not mix."""
    import concurrent.futures

    cases = [(rand_x(60 + i, (1, 5, 6, 40 + i)), rand_x(70 + i, (3, 3, 40 + i, 33)))
             for i in range(4)]
    with jb.config.cpu_kernel_override("metal_shim"):
        fns = [jax.jit(lambda x, w: jb.binary_conv2d(x, w, beta_scaling=True)) for _ in cases]
        expected = [np.asarray(f(x, w)) for f, (x, w) in zip(fns, cases)]

        def run(i):
            x, w = cases[i % 4]
            return i % 4, np.asarray(fns[i % 4](x, w))

        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            for i, y in ex.map(run, range(32)):
                np.testing.assert_array_equal(y, expected[i])


# ------------------------------------------- the handler rejects bad calls

def _ffi(x, w, *, c, out_shape=None, out_dtype=jnp.float32, o=None, **attrs):
    o = o if o is not None else w.shape[0]
    a = dict(conv_type=np.int32(1), in_channels=c, stride_h=1, stride_w=1, dilation_h=1,
             dilation_w=1, pad_top=0, pad_bottom=0, pad_left=0, pad_right=0, groups=1,
             pad_value=np.float32(0), beta_scaling=False, activation=np.int32(0),
             negative_slope=np.float32(0))
    a.update(attrs)
    if out_shape is None:
        out_shape = x.shape[:-3] + (x.shape[-3] - w.shape[1] + 1, x.shape[-2] - w.shape[2] + 1, o)
    ones = lambda n: jnp.ones((n,), jnp.float32)  # noqa: E731
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(out_shape, out_dtype))
    return jax.jit(lambda x, w: call(x, w, 0 * ones(c), ones(c), ones(o), 0 * ones(o), **a))(x, w)


def test_direct_call_matches_contract():
    x = jnp.ones((1, 4, 4, 40), jnp.float32)
    w = jnp.full((3, 3, 3, 2), 0xFFFFFFFF, jnp.uint32)  # O=3, 3x3, 2 words (40 channels)
    y = _ffi(x, w, c=40)
    # Trailing weight bits are set here on purpose: only 40 channels count.
    np.testing.assert_array_equal(np.asarray(y), 9 * 40)


@pytest.mark.parametrize("bad", [
    dict(w_words=3),                      # w's last dim != ceil(Cg/32)
    dict(conv_type=np.int32(7)),
    dict(activation=np.int32(99)),
    dict(pad_value=np.float32(0.5)),      # XNOR allows only -1, 0, 1
    dict(conv_type=np.int32(2), pad_value=np.float32(-1)),
    dict(stride_h=0),
    dict(groups=3),                       # does not divide 40
    dict(pad_top=-1),
    dict(in_channels=41),                 # x's last dim disagrees
    dict(out_shape=(1, 2, 2, 4)),         # wrong result shape
    dict(out_dtype=jnp.int32),
    dict(dilation_w=2),                   # dilated kernel larger than the input
])
def test_bad_calls_return_errors(bad):
    bad = dict(bad)
    x = jnp.ones((1, 4, 4, 40), jnp.float32)
    w = jnp.zeros((3, 3, 3, bad.pop("w_words", 2)), jnp.uint32)
    c = bad.pop("in_channels", 40)
    with pytest.raises(Exception, match="metalshim"):
        np.asarray(_ffi(x, w, c=c, **bad))


# ------------------------------------------- the shim's barrier emulation

def _selftest(name, groups, lanes):
    data = list(range(1000, 1000 + groups * lanes))
    out = jb.lowering.available["metal_shim"].run_selftest(name, data, groups, lanes)
    return np.array(data).reshape(groups, lanes), np.array(out).reshape(groups, lanes)


@pytest.mark.parametrize("lanes", [1, 2, 33, 64, 1024])
def test_barrier_makes_threadgroup_writes_visible(lanes):
    data, out = _selftest("selftest_reverse", 3, lanes)
    np.testing.assert_array_equal(out, data[:, ::-1])


def test_missing_barrier_is_observable():
    """Without the barrier the reversal reads slots other lanes have not
    written yet: the shim must give a wrong answer, as a GPU may."""
    data, out = _selftest("selftest_reverse_racy", 3, 64)
    assert not np.array_equal(out, data[:, ::-1])


def test_divergent_barrier_is_an_error():
    with pytest.raises(RuntimeError, match="divergent threadgroup_barrier"):
        _selftest("selftest_divergent", 2, 64)


def test_threadgroup_size_limit():
    with pytest.raises(RuntimeError, match="1024"):
        _selftest("selftest_reverse", 1, 1025)


# ------------------------------------------------ the kernel source itself

def test_source_keeps_to_what_the_shim_emulates():
    """host_shim.h maps `threadgroup` to per-threadgroup static storage: that
    is only faithful for arrays declared in a kernel body, never for
    threadgroup pointers, references or parameters."""
    for path in (METAL_DIR / "binconv.metal", METAL_DIR / "shim" / "selftest.metal"):
        code = re.sub(r"//[^\n]*", "", path.read_text())
        for m in re.finditer(r"\bthreadgroup\s+([^;]*);", code):
            decl = m.group(1)
            assert re.fullmatch(r"\s*\w+\s+\w+\s*\[[^\]]+\]\s*", decl), \
                f"{path.name}: threadgroup declaration the shim cannot emulate: {decl!r}"
        assert "[[threadgroup(" not in code


def test_embedded_source_is_self_contained():
    """The host's run-time fallback compiles this string without include paths."""
    src = jb.lowering.available["metal_shim"].embedded_metal_source()
    assert "#include \"" not in src and "struct BinconvArgs" in src
    for name in ("binconv_pack_input", "binconv_mean_abs", "binconv_conv_bits",
                 "binconv_conv_float"):
        assert f"kernel void {name}(" in src
    # And every kernel the dispatch plan names exists in the source.
    plan = (METAL_DIR / "binconv_plan.h").read_text()
    for name in re.findall(r'return "(binconv_\w+)";', plan):
        assert f"kernel void {name}(" in src


def test_registered_target_name():
    assert set(jb.lowering.available["metal_shim"].registrations()) == {TARGET}
    assert os.path.basename(jb.lowering.available["metal_shim"].__file__).startswith("_metal_shim")


# ----------------------------- compile checks that need no Mac (clang only)

def _clang():
    for name in ("clang++", "clang++-19", "clang++-18", "clang++-17", "clang++-16", "clang++-15",
                 "clang++-14"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("clang++ not installed (apt-get install clang): compile checks skipped")


def test_kernel_source_compiles_with_clang_too():
    """binconv.metal is clang-based MSL: clang must accept the shim build as
    well as g++ does, warnings as errors."""
    cmd = [_clang(), "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
           "-I", str(METAL_DIR / "shim_include"), "-I", str(METAL_DIR), "-I",
           str(METAL_DIR / "shim"), str(METAL_DIR / "shim" / "kernels_shim.cc")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_host_code_against_mock_sdk(tmp_path):
    """metal_host.mm as Objective-C++ with ARC, against metal/tools/mock_sdk:
    declarations of exactly the Foundation/Metal API it uses, transcribed from
    Apple's documentation. Catches Objective-C syntax, ARC and C++ errors and
    selectors that do not match the transcription; a real Mac build is still
    the authority (docs/apple.md)."""
    (tmp_path / "binconv_metal_source.h").write_text(
        "#pragma once\nnamespace binconv { inline constexpr char kMetalSource[] = \"\"; }\n")
    cmd = [_clang(), "-std=c++17", "-x", "objective-c++", "-fobjc-arc", "-fblocks",
           "-fobjc-runtime=macosx-13.0", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
           "-isystem", str(METAL_DIR / "tools" / "mock_sdk"), "-I", str(METAL_DIR),
           "-I", str(METAL_DIR.parent / "cpp" / "common"), "-I", str(tmp_path),
           str(METAL_DIR / "metal_host.mm")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ------------------------------------------- the real Metal path (macOS only)

macos_only = pytest.mark.skipif(sys.platform != "darwin", reason="the Metal host code runs on macOS")


def _native(x, w, backend, monkeypatch, **kw):
    monkeypatch.setenv("JAX_BINCONV_BACKEND", backend)
    with jb.config.cpu_kernel_override("native"):
        return jax.block_until_ready(jax.jit(lambda x, w: jb.binary_conv2d(x, w, **kw))(x, w))


@macos_only
@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("output", ["float", "packed"])
def test_metal_gpu_equals_cpu_kernel(t, output, monkeypatch):
    """JAX_BINCONV_BACKEND=metal fails loudly without a device, so this really
    compares the GPU with the C++ kernel."""
    x = rand_x(50, (2, 9, 8, 70))
    w = rand_x(51, (3, 3, 35, 66))
    kw = dict(type=t, groups=2, beta_scaling=True, strides=(1, 2), padding=((1, 0), (2, 1)),
              output_scale=rand_vec(52, 66, 0.1, 1.0, signed=True), activation="tanh",
              output=output)
    gpu = _native(x, w, "metal", monkeypatch, **kw)
    cpu = _native(x, w, "cpu", monkeypatch, **kw)
    if output == "packed":
        np.testing.assert_array_equal(np.asarray(gpu.words), np.asarray(cpu.words))
    else:
        np.testing.assert_allclose(np.asarray(gpu), np.asarray(cpu), rtol=1e-5, atol=1e-5)


@macos_only
def test_metal_bad_backend_value_is_an_error(monkeypatch):
    with pytest.raises(Exception, match="JAX_BINCONV_BACKEND"):
        _native(rand_x(53, (1, 4, 4, 8)), rand_x(54, (3, 3, 8, 4)), "gpu", monkeypatch)
