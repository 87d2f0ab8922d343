"""Device-side diagnosis helper for a build with -DJAX_BINCONV_TIMELINE (the
wgmma kernel prints globaltimer marks of its prologue and first tile, see
fast_conv.cuh): runs a chain of `depth` packed applications of a BENCH
layer inside one jit (each call's kernels queued behind the previous one's,
as in benchmarks/gpu.py), a few times.

    CMAKE_ARGS=-DCMAKE_CUDA_FLAGS=-DJAX_BINCONV_TIMELINE pip install --no-build-isolation -e .
    python cpp/cuda/tools/timeline.py L4 256 on 4
"""
import sys

import jax
import numpy as np

import jax_binconv as jb
from jax_binconv import _cuda
from jax_binconv._bench_layers import LAYERS


def main(layer="L4", n="256", mode="on", depth="4"):
    _cuda.set_fast_wgmma(mode)
    h, w, c, o, k, s = LAYERS[layer]
    assert c == o and s == 1, "a chain needs C == O and stride 1"
    rng = np.random.default_rng(0)
    x = jb.pack_activations(rng.standard_normal((int(n), h, w, c), np.float32)).words
    wp = jb.pack_weights(rng.standard_normal((k, k, c, o)).astype(np.float32))

    @jax.jit
    def f(words, wt):
        for _ in range(int(depth)):
            words = jb.binary_conv2d(jb.PackedActivations(words, c), wt, padding="SAME",
                                     output="packed").words
        return words

    for _ in range(3):
        f(x, wp).block_until_ready()
    print(layer, n, mode, "ran", _cuda.last_kernel(), _cuda.last_wgmma_form(), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
