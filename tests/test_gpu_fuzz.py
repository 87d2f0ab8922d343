"""Random configurations of the CUDA kernels against the reference
(seeded draws), aimed at the fast kernel's geometry: its slot rows,
image boundaries inside tiles, box classes of valid taps, odd channel
counts, both wgmma forms and the mma.sync kernel, float and packed x and
output, every activation, beta, the pad values, low-precision x and NCHW.

tests/test_gpu.py checks a fixed grid; this draws the cases between its
points. Integer accumulators are compared exactly and packed words bit for
bit (test_gpu.check). JAX_BINCONV_GPU_FUZZ_EXAMPLES sets the number of
draws (default 60, a few minutes on an H100), JAX_BINCONV_GPU_FUZZ_SEED
other draws; a longer soak on the GPU: `JAX_BINCONV_GPU_FUZZ_EXAMPLES=600
JAX_BINCONV_GPU_FUZZ_SEED=1 pytest tests/test_gpu_fuzz.py -s`.
Skipped, with the reason, where there is no GPU.
"""

from __future__ import annotations

import collections
import os

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import pad_values, rand_vec, rand_x

import jax_binconv as jb
from test_gpu import _GPUS, _REASON, _cuda_mod, _fast_knobs, _np, check

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _GPUS, reason=_REASON or "")]

EXAMPLES = int(os.environ.get("JAX_BINCONV_GPU_FUZZ_EXAMPLES", "60"))
# Another seed draws other cases (soak runs in parallel processes); unset
# (0), the draws are the same in every run.
SEED = int(os.environ.get("JAX_BINCONV_GPU_FUZZ_SEED", "0"))
# Print each draw before it runs (with pytest -s: which case a timeout hit).
VERBOSE = bool(os.environ.get("JAX_BINCONV_GPU_FUZZ_VERBOSE"))
# Binary MACs of a drawn case at most: the reference runs on the CPU.
MAX_MACS = 4e8

# The kernel policy of a draw: the library's default ("auto"), the fast
# kernel on mma.sync ("off"), on wgmma with A from registers ("rs") or from
# shared memory where that form runs ("on"), or the general kernel.
POLICIES = ["auto", "auto", "off", "rs", "on", "on", "on", "general"]
# The fast kernel's channel counts (64 or a multiple of 128), and others.
FAST_C = [64, 128, 256, 384, 512, 640, 768, 1024]

# Which kernels and forms the draws ran (test_the_fuzz_reached_every_kernel).
RAN = collections.Counter()


def _out_size(size, k, s, d, pad):
    eff = (k - 1) * d + 1
    if pad == "SAME":
        return -(-size // s)
    if pad == "VALID":
        return (size - eff) // s + 1 if size >= eff else 0
    return (size + pad[0] + pad[1] - eff) // s + 1 if size + pad[0] + pad[1] >= eff else 0


def configuration(index):
    """Draw `index` (seeded by it and JAX_BINCONV_GPU_FUZZ_SEED): a dict of
    the case. Sizes are cut (images, then rows) to at most MAX_MACS."""
    rng = np.random.default_rng([SEED, index])
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    t = pick(["xnor", "and", "xnor", "and", "binary_weights"])
    if t != "binary_weights" and rng.random() < 0.8:
        c, groups = pick(FAST_C), 1
    else:
        groups = pick([1, 1, 2, 3])
        c = groups * int(rng.integers(1, 71))
    o = pick([32, 64, 128, 256]) if rng.random() < 0.4 else int(rng.integers(1, 301))
    o = groups * max(1, o // groups)
    kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    if rng.random() < 0.4:
        kh = kw = 3
    sh, sw = pick([1, 1, 1, 2, 3]), pick([1, 1, 1, 1, 2, 3])
    dh, dw = pick([1, 1, 1, 2]), pick([1, 1, 1, 2])
    # Many small images (several to a 128-row tile), a few larger ones, or
    # more 128-row tiles than an H100 has SMs (blocks loop over tiles).
    shape = pick(["small", "few", "few", "many"])
    if shape == "small":
        n, h, w = int(rng.integers(1, 81)), int(rng.integers(1, 9)), int(rng.integers(1, 9))
    elif shape == "few":
        n, h, w = int(rng.integers(1, 6)), int(rng.integers(1, 41)), int(rng.integers(1, 41))
    else:
        n, h, w = int(rng.integers(8, 65)), int(rng.integers(14, 41)), int(rng.integers(14, 41))
    r = rng.random()
    pad = ("SAME" if r < 0.4 else "VALID" if r < 0.55 else
           tuple(tuple(int(v) for v in rng.integers(0, 5, 2)) for _ in range(2)))
    eff_h, eff_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    h, w = max(h, eff_h), max(w, eff_w)  # (VALID: at least one output pixel)
    ho = _out_size(h, kh, sh, dh, pad if isinstance(pad, str) else pad[0])
    wo = _out_size(w, kw, sw, dw, pad if isinstance(pad, str) else pad[1])
    per_row = wo * o * kh * kw * (c // groups)
    while n > 1 and n * ho * per_row > MAX_MACS:
        n = max(1, n // 2)
    while h > eff_h and ho * per_row > MAX_MACS:
        h = max(eff_h, h // 2)
        ho = _out_size(h, kh, sh, dh, pad if isinstance(pad, str) else pad[0])
    if ho <= 0 or wo <= 0:  # (explicit padding smaller than the window)
        pad = "SAME"
    output = pick(["float", "packed"])
    # (bin() of relu, relu6 and sigmoid is +1 everywhere: packed output
    # draws them rarely)
    acts = ([None, "relu", "relu6", "leaky_relu", "sigmoid", "tanh", "hard_tanh", "sign"]
            if output == "float" else
            [None, None, "leaky_relu", "tanh", "hard_tanh", "sign", "sign", "relu"])
    return dict(
        t=t, c=c, o=o, groups=groups, k=(kh, kw), strides=(sh, sw), dilation=(dh, dw),
        shape=(n, h, w), padding=pad, pv=pick(pad_values(t)),
        x_packed=t != "binary_weights" and rng.random() < 0.5, output=output,
        activation=pick(acts), beta=rng.random() < 0.4, input_affine=rng.random() < 0.5,
        policy=pick(POLICIES), seed=int(rng.integers(0, 2**20)),
        # (drawn last: the draws before them are those of the first version)
        dtype=pick(["float32"] * 4 + ["bfloat16", "float16"]),
        nchw=rng.random() < 0.2)


@pytest.mark.parametrize("index", range(EXAMPLES))
def test_random_configurations_match_the_reference(index):
    cfg = configuration(index)
    if VERBOSE:
        print("draw:", cfg, flush=True)
    t, c, o, groups, seed = cfg["t"], cfg["c"], cfg["o"], cfg["groups"], cfg["seed"]
    n, h, w = cfg["shape"]
    # float x in float32, bfloat16 or float16; NCHW / OIHW for float x and
    # output (packed activations are NHWC words)
    low = cfg["dtype"] != "float32" and not cfg["x_packed"]
    x = np.asarray(rand_x(seed, (n, h, w, c), getattr(jnp, cfg["dtype"]) if low else jnp.float32))
    wt = np.asarray(rand_x(seed + 1, cfg["k"] + (c // groups, o)))
    nchw = cfg["nchw"] and not cfg["x_packed"] and cfg["output"] == "float"
    k = cfg["k"][0] * cfg["k"][1] * (c // groups)
    # Output biases of the accumulators' size, so that packed output's
    # thresholds and the activations' bends fall among the values.
    kw = dict(type=t, strides=cfg["strides"], dilation=cfg["dilation"], padding=cfg["padding"],
              groups=groups, pad_value=cfg["pv"], beta_scaling=cfg["beta"],
              activation=cfg["activation"], output=cfg["output"],
              output_scale=rand_vec(seed + 2, o, 0.25, 2.0, signed=True),
              output_bias=rand_vec(seed + 3, o, -0.3, 0.3) * (np.sqrt(k) if not cfg["beta"]
                                                             else 1.0))
    if nchw:
        x, wt = x.transpose(0, 3, 1, 2), wt.transpose(3, 2, 0, 1)
        kw["dimension_numbers"] = ("NCHW", "OIHW", "NCHW")
    if cfg["x_packed"]:
        x = _np(jb.pack_activations(x))
    elif cfg["input_affine"]:
        kw.update(input_bias=rand_vec(seed + 4, c, -0.3, 0.3),
                  input_scale=rand_vec(seed + 5, c, 0.5, 1.5, signed=True))
    mod = _cuda_mod()
    policy = cfg["policy"]
    knobs = ({"kernel": "general"} if policy == "general" else
             {} if policy == "auto" else {"fast_wgmma": policy})
    with _fast_knobs(mod, **knobs):
        check(x, wt, **kw)
        kernel = mod.last_kernel()
        ran = kernel if kernel != "fast" else "fast/" + (mod.last_wgmma_form() or "mma")
        RAN[ran] += 1
        if VERBOSE:
            print("ran:", ran, flush=True)
        if t == "binary_weights":
            assert kernel == "binary_weights", (policy, kernel, cfg)
        elif policy == "general" or groups > 1 or c not in FAST_C:
            assert kernel == "general", (policy, kernel, cfg)
        # (else the fast kernel where its shared memory fits: large C with
        # large windows runs the general one)


def test_the_fuzz_reached_every_kernel():
    """The draws above (run first, in file order) ran the general kernel, the
    mma.sync fast kernel and both wgmma forms where the GPU has them: a fuzz
    whose cases all fell back to one path would check little."""
    if not RAN:
        pytest.skip("the fuzz test above did not run in this session (selected alone)")
    print("kernels run by the draws:", dict(RAN))
    assert RAN["general"] > 0 and RAN["binary_weights"] > 0 and RAN["fast/mma"] > 0, dict(RAN)
    if _cuda_mod().wgmma_available():
        assert RAN["fast/rs"] > 0 and RAN["fast/ss"] > 0, dict(RAN)
