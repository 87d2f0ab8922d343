"""Random configurations of the CUDA kernels against the reference
(Hypothesis, seeded), aimed at the fast kernel's geometry: its slot rows,
image boundaries inside tiles, box classes of valid taps, odd channel
counts, both wgmma forms and the mma.sync kernel, float and packed x and
output, every activation, beta and the pad values.

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

import numpy as np
import pytest
from conftest import pad_values, rand_vec, rand_x
from hypothesis import HealthCheck, assume, given, seed, settings
from hypothesis import strategies as st

import jax_binconv as jb
from test_gpu import _GPUS, _REASON, _cuda_mod, _fast_knobs, _np, check

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _GPUS, reason=_REASON or "")]

EXAMPLES = int(os.environ.get("JAX_BINCONV_GPU_FUZZ_EXAMPLES", "60"))
# Another seed draws other cases (soak runs in parallel processes); unset,
# the draws are the same in every run.
SEED = os.environ.get("JAX_BINCONV_GPU_FUZZ_SEED")
# Print each draw before it runs (with pytest -s: which case a timeout hit).
VERBOSE = bool(os.environ.get("JAX_BINCONV_GPU_FUZZ_VERBOSE"))
# Binary MACs of a drawn case at most: the reference runs on the CPU.
MAX_MACS = 4e8

# The kernel policy of a draw: the library's default ("auto"), the fast
# kernel on mma.sync ("off"), on wgmma with A from registers ("rs") or from
# shared memory where that form runs ("on"), or the general kernel.
POLICIES = ["auto", "off", "rs", "on", "general"]
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


@st.composite
def configurations(draw):
    t = draw(st.sampled_from(["xnor", "and", "xnor", "and", "binary_weights"]))
    fast = t != "binary_weights" and draw(st.integers(0, 4)) > 0
    if fast:
        c = draw(st.sampled_from(FAST_C))
        groups = 1
    else:
        groups = draw(st.sampled_from([1, 1, 2, 3]))
        c = groups * draw(st.integers(1, 70))
    o = draw(st.one_of(st.sampled_from([32, 64, 128, 256]), st.integers(1, 300)))
    if groups > 1:
        o = groups * max(1, o // groups)
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.sampled_from([1, 1, 1, 2, 3])), draw(st.sampled_from([1, 1, 1, 2, 3]))
    dh, dw = draw(st.sampled_from([1, 1, 1, 2])), draw(st.sampled_from([1, 1, 1, 2]))
    # Many small images (several to a 128-row tile) or a few larger ones.
    if draw(st.booleans()):
        n, h, w = draw(st.integers(1, 80)), draw(st.integers(1, 8)), draw(st.integers(1, 8))
    else:
        n, h, w = draw(st.integers(1, 5)), draw(st.integers(1, 40)), draw(st.integers(1, 40))
    pad = draw(st.one_of(
        st.sampled_from(["SAME", "VALID"]),
        st.tuples(st.tuples(st.integers(0, 4), st.integers(0, 4)),
                  st.tuples(st.integers(0, 4), st.integers(0, 4)))))
    ho = _out_size(h, kh, sh, dh, pad if isinstance(pad, str) else pad[0])
    wo = _out_size(w, kw, sw, dw, pad if isinstance(pad, str) else pad[1])
    assume(ho > 0 and wo > 0)
    assume(n * ho * wo * o * kh * kw * (c // groups) <= MAX_MACS)
    return dict(
        t=t, c=c, o=o, groups=groups, k=(kh, kw), strides=(sh, sw), dilation=(dh, dw),
        shape=(n, h, w), padding=pad,
        pv=draw(st.sampled_from(pad_values(t))),
        x_packed=t != "binary_weights" and draw(st.booleans()),
        output=(output := draw(st.sampled_from(["float", "packed"]))),
        # (bin() of relu, relu6 and sigmoid is +1 everywhere: packed output
        # draws them rarely)
        activation=draw(st.sampled_from(
            [None, "relu", "relu6", "leaky_relu", "sigmoid", "tanh", "hard_tanh", "sign"]
            if output == "float" else
            [None, None, "leaky_relu", "tanh", "hard_tanh", "sign", "sign", "relu"])),
        beta=draw(st.booleans()),
        input_affine=draw(st.booleans()),
        policy=draw(st.sampled_from(POLICIES)),
        seed=draw(st.integers(0, 2**20)),
    )


@settings(max_examples=EXAMPLES, derandomize=SEED is None, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@seed(int(SEED or 0))
@given(configurations())
def test_random_configurations_match_the_reference(cfg):
    if VERBOSE:
        print("draw:", cfg, flush=True)
    t, c, o, groups, seed = cfg["t"], cfg["c"], cfg["o"], cfg["groups"], cfg["seed"]
    n, h, w = cfg["shape"]
    x = np.asarray(rand_x(seed, (n, h, w, c)))
    wt = np.asarray(rand_x(seed + 1, cfg["k"] + (c // groups, o)))
    k = cfg["k"][0] * cfg["k"][1] * (c // groups)
    # Output biases of the accumulators' size, so that packed output's
    # thresholds and the activations' bends fall among the values.
    kw = dict(type=t, strides=cfg["strides"], dilation=cfg["dilation"], padding=cfg["padding"],
              groups=groups, pad_value=cfg["pv"], beta_scaling=cfg["beta"],
              activation=cfg["activation"], output=cfg["output"],
              output_scale=rand_vec(seed + 2, o, 0.25, 2.0, signed=True),
              output_bias=rand_vec(seed + 3, o, -0.3, 0.3) * (np.sqrt(k) if not cfg["beta"]
                                                             else 1.0))
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
        RAN[kernel] += 1
        if kernel == "fast":
            RAN["fast/" + (mod.last_wgmma_form() or "mma")] += 1
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
    assert RAN["general"] > 0 and RAN["fast/mma"] > 0, dict(RAN)
    if _cuda_mod().wgmma_available():
        assert RAN["fast/rs"] > 0 and RAN["fast/ss"] > 0, dict(RAN)
