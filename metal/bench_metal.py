"""Metal vs CPU kernel vs XLA float32 convolution on the BENCH.md layers (macOS).

Run on a Mac after `pip install -e .`:

    python metal/bench_metal.py            # N=1 and N=8, all layers
    python metal/bench_metal.py --check    # also compare Metal with the CPU kernel

The backend is chosen per call through JAX_BINCONV_BACKEND (read by the C++
handler at every call), so the three variants are timed interleaved in one
process, as BENCH.md asks. Use the crossover it shows to set
JAX_BINCONV_METAL_MIN_MACS (metal_host.mm's kAutoMinBinaryMacs).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jax_binconv as jb

LAYERS = [  # id, H=W, C, O, kernel, stride (BENCH.md)
    ("L1", 56, 64, 64, 3, 1), ("L2", 28, 128, 128, 3, 1), ("L3", 14, 256, 256, 3, 1),
    ("L4", 7, 512, 512, 3, 1), ("L5", 56, 64, 128, 3, 2), ("L6", 28, 256, 256, 1, 1),
    ("L7", 56, 256, 256, 3, 1),
]


def timeit(fn, *args, reps=20):
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return min(ts), float(np.median(ts))


def with_backend(name, fn):
    def run(*args):
        old = os.environ.get("JAX_BINCONV_BACKEND")
        os.environ["JAX_BINCONV_BACKEND"] = name
        try:
            return jax.block_until_ready(fn(*args))
        finally:
            if old is None:
                del os.environ["JAX_BINCONV_BACKEND"]
            else:
                os.environ["JAX_BINCONV_BACKEND"] = old
    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--batches", default="1,8")
    args = ap.parse_args()
    if sys.platform != "darwin":
        print("This benchmark needs macOS (the Metal path lives in the CPU handler there).")
        return
    print(f"{'layer':5} {'N':>3} {'MMAC':>8} {'metal ms':>9} {'cpu ms':>8} {'xla ms':>8} "
          f"{'cpu/metal':>9} {'xla/metal':>9}")
    for n in [int(b) for b in args.batches.split(",")]:
        for lid, hw, c, o, k, s in LAYERS:
            kx, kw_ = jax.random.split(jax.random.PRNGKey(0))
            x = jax.random.normal(kx, (n, hw, hw, c))
            w = jax.random.normal(kw_, (k, k, c, o))
            pw = jb.pack_weights(w)
            f = jax.jit(lambda x, w: jb.binary_conv2d(x, w, type="xnor", strides=s))
            ref = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
                x, w, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
            metal, cpu = with_backend("metal", f), with_backend("cpu", f)
            if args.check:
                np.testing.assert_array_equal(np.asarray(metal(x, pw)), np.asarray(cpu(x, pw)))
            tm, tc, tx = timeit(metal, x, pw)[0], timeit(cpu, x, pw)[0], timeit(ref, x, w)[0]
            ho = -(-hw // s)
            macs = n * ho * ho * o * k * k * c / 1e6
            print(f"{lid:5} {n:3} {macs:8.1f} {tm*1e3:9.3f} {tc*1e3:8.3f} {tx*1e3:8.3f} "
                  f"{tc/tm:9.2f} {tx/tm:9.2f}")


if __name__ == "__main__":
    main()
