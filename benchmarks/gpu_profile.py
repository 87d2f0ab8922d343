"""One BENCH layer through jax_binconv's CUDA kernel, for a profiler.

    ncu --kernel-name regex:conv python benchmarks/gpu_profile.py L3 256 auto

Runs the layer (XNOR, packed weights, SAME) a few times with packed or float
input/output under the given kernel policy: ``auto`` (the library's default),
``mma`` / ``wgmma`` / ``rs`` (the fast kernel with its K loop on mma.sync /
wgmma / wgmma with A from registers: set_fast_wgmma("off") / ("on") /
("rs")) or ``general``.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

import jax_binconv as jb
from jax_binconv import _cuda
from jax_binconv._bench_layers import LAYERS


def main(layer="L3", n="256", policy="auto", io="packed", reps="3"):
    _cuda.set_kernel("general" if policy == "general" else "auto")
    _cuda.set_fast_wgmma({"wgmma": "on", "rs": "rs", "mma": "off"}.get(policy, "auto"))
    h, w, c, o, k, s = LAYERS[layer]
    n = int(n)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n, h, w, c), np.float32))
    wp = jb.pack_weights(rng.standard_normal((k, k, c, o)).astype(np.float32))
    if io == "packed":
        xin = jb.pack_activations(x).words
        f = jax.jit(lambda xx, wt: jb.binary_conv2d(jb.PackedActivations(xx, c), wt, strides=s,
                                                    padding="SAME", output="packed").words)
    else:
        xin = x
        f = jax.jit(lambda xx, wt: jb.binary_conv2d(xx, wt, strides=s, padding="SAME"))
    for _ in range(int(reps)):
        f(xin, wp).block_until_ready()
    print(layer, n, policy, io, "ran", _cuda.last_kernel(), _cuda.last_wgmma_form())


if __name__ == "__main__":
    main(*sys.argv[1:])
