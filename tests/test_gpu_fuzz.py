"""Random configurations of the CUDA kernels against the reference
(seeded draws), aimed at the fast kernel's geometry: its slot rows,
image boundaries inside tiles, box classes of valid taps, odd channel
counts, both wgmma forms and the mma.sync kernel, float and packed x and
output, every activation, beta, the pad values, low-precision x and NCHW.

tests/test_gpu.py checks a fixed grid; this draws the cases between its
points (tests/fuzz_cases.py). Integer accumulators are compared exactly
and packed words bit for bit (test_gpu.check; BINARY_WEIGHTS' float sums
near a step at 0: conftest.assert_steps_near_zero).
JAX_BINCONV_GPU_FUZZ_EXAMPLES sets the number of draws (default 60, a few
minutes on an H100), JAX_BINCONV_GPU_FUZZ_SEED other draws; a longer soak on the GPU: `JAX_BINCONV_GPU_FUZZ_EXAMPLES=600
JAX_BINCONV_GPU_FUZZ_SEED=1 pytest tests/test_gpu_fuzz.py -s`. A failing draw is
shrunk (fuzz_cases.shrink: options off, fewer images, rows and channels,
one field at a time while it still fails; JAX_BINCONV_GPU_FUZZ_SHRINK
tries at most, default 40, 0 off) and the message gives the plainest
configuration found.
Skipped, with the reason, where there is no GPU.
"""

from __future__ import annotations

import collections
import os

import pytest
from fuzz_cases import FAST_C, case_inputs, check_draw, configuration
from test_gpu import _GPUS, _REASON, _cuda_mod, _fast_knobs, check

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _GPUS, reason=_REASON or "")]

EXAMPLES = int(os.environ.get("JAX_BINCONV_GPU_FUZZ_EXAMPLES", "60"))
# Another seed draws other cases (soak runs in parallel processes); unset
# (0), the draws are the same in every run.
SEED = int(os.environ.get("JAX_BINCONV_GPU_FUZZ_SEED", "0"))
# Print each draw before it runs (with pytest -s: which case a timeout hit).
VERBOSE = bool(os.environ.get("JAX_BINCONV_GPU_FUZZ_VERBOSE"))
# How many configurations a failing draw's shrink may try (0: none).
SHRINK = int(os.environ.get("JAX_BINCONV_GPU_FUZZ_SHRINK", "40"))
# Which kernels and forms the draws ran (test_the_fuzz_reached_every_kernel).
RAN = collections.Counter()


@pytest.mark.parametrize("index", range(EXAMPLES))
def test_random_configurations_match_the_reference(index):
    cfg = configuration(index, SEED)
    if VERBOSE:
        print("draw:", cfg, flush=True)
    t, c, groups, policy = cfg["t"], cfg["c"], cfg["groups"], cfg["policy"]
    kernel, form = check_draw(cfg, _check_draw, SHRINK)
    ran = kernel if kernel != "fast" else "fast/" + (form or "mma")
    RAN[ran] += 1
    if VERBOSE:
        print("ran:", ran, flush=True)
    if t == "binary_weights":
        assert kernel == "binary_weights", (policy, kernel, cfg)
    elif policy == "general" or groups > 1 or c not in FAST_C:
        assert kernel == "general", (policy, kernel, cfg)
    # (else the fast kernel where its shared memory fits: large C with
    # large windows runs the general one)


def _check_draw(cfg):
    """test_gpu.check of a drawn configuration under its kernel policy;
    returns (the kernel that ran, its wgmma form)."""
    x, wt, kw = case_inputs(cfg)
    mod = _cuda_mod()
    policy = cfg["policy"]
    knobs = ({"kernel": "general"} if policy == "general" else
             {} if policy == "auto" else {"fast_wgmma": policy})
    with _fast_knobs(mod, **knobs):
        check(x, wt, **kw)
        return mod.last_kernel(), mod.last_wgmma_form()


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
