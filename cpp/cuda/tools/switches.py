"""Where a call's time goes: N=256 packed (or float) applications of BENCH layers timed
with the experiment switches of a -DJAX_BINCONV_SWITCHES build (env
JAX_BINCONV_SW, read by launch_conv at every call; see BINCONV_SW in
fast_conv.cuh). Results are wrong with any switch set: timings only. Each
row: ms per application (min of the repetitions, as benchmarks/gpu.py
times them), the same run's cuDNN bf16 and the ratio.

    CMAKE_ARGS=-DCMAKE_CUDA_FLAGS=-DJAX_BINCONV_SWITCHES pip install --no-build-isolation -e .
    python cpp/cuda/tools/switches.py L2,L3,L4,L7 0,1,2,4,8,16,9,6 [wgmma mode] [N] [packed|float]
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jax_binconv import _cuda
from jax_binconv._bench_layers import LAYERS

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "benchmarks"))
from gpu import bench, layer_case  # noqa: E402


def main(layers="L2,L3,L4,L7", sws="0,1,2,4,8,16", mode="auto", n="256", io="packed"):
    _cuda.set_fast_wgmma(mode)
    n = int(n)
    rng = np.random.default_rng(0)
    gpu = jax.devices("gpu")[0]
    print(f"device: {gpu.device_kind}; wgmma mode {mode}; N={n}; {io} I/O", flush=True)
    for name in layers.split(","):
        s = LAYERS[name][5]
        ours, ours_args, x, wf = layer_case(name, n, io, gpu, rng)

        def cudnn(xx, wl, s=s):
            return lax.conv_general_dilated(xx, wl, (s, s), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

        x16 = jax.device_put(jnp.asarray(x, jnp.bfloat16), gpu)
        w16 = jax.device_put(jnp.asarray(wf, jnp.bfloat16), gpu)
        bf16 = bench(cudnn, (x16, w16), 10)[0]
        for sw in sws.split(","):
            os.environ["JAX_BINCONV_SW"] = sw
            jax.clear_caches()  # (a captured CUDA graph would keep the old value)
            t = bench(ours, ours_args, 10)[0]
            print(f"  {name} sw={sw:>3}: {t:.4f} ms  bf16 {bf16:.4f} ms  {bf16 / t:5.2f}x  "
                  f"[{_cuda.last_kernel()} {_cuda.last_wgmma_form()}]", flush=True)
        os.environ["JAX_BINCONV_SW"] = "0"


if __name__ == "__main__":
    main(*sys.argv[1:])
