"""Demo: ``python -m jax_binconv``.

For a few layer shapes of benchmarks (BENCH.md), checks our CPU kernel
against the pure-JAX reference (integer accumulators exactly) and times it
against XLA's float32 convolution on the same shapes, in this process.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import jax_binconv as jb
from jax_binconv import lowering

from ._bench_layers import LAYERS  # id: (H, W, C, O, k, stride)


def _time(fn, *args, reps):
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.min(ts)), float(np.median(ts))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m jax_binconv", description=__doc__)
    ap.add_argument("--layers", default="L2,L3,L4,L6")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)

    target = lowering.lowered_kernel_name("cpu")
    isa = ""
    if "cpu" in lowering.available and hasattr(lowering.available["cpu"], "get_isa"):
        isa = f", ISA {lowering.available['cpu'].get_isa()}"
    print(f"jax_binconv {jb.__version__} on {jax.devices()[0].platform}: kernel target "
          f"{target or 'none (pure-JAX reference)'}{isa}; {os.cpu_count()} cores")
    print(f"{'layer':6} {'shape (NHWC -> O)':24} {'check':8} {'ours ms':>9} {'XLA f32 ms':>11} {'speed-up':>9}")
    ok_all = True
    for name in args.layers.split(","):
        h, w, c, o, k, s = LAYERS[name.strip()]
        kx, kw = jax.random.split(jax.random.PRNGKey(0))
        x = jax.random.normal(kx, (args.batch, h, w, c), jnp.float32)
        wt = jax.random.normal(kw, (k, k, c, o), jnp.float32)
        ours = jax.jit(functools.partial(jb.binary_conv2d, type="xnor", strides=s))
        ref = jax.jit(functools.partial(jb.reference.binary_conv2d, type="xnor", strides=s))
        ok = bool(np.array_equal(np.asarray(ours(x, wt)), np.asarray(ref(x, wt))))
        ok_all &= ok
        # Baseline: the float convolution of the same shapes (what a float
        # network would run), and ours with weights already packed.
        xla = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
            x, w, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
        pw = jb.pack_weights(wt)
        t_ours, _ = _time(ours, x, pw, reps=args.reps)
        t_xla, _ = _time(xla, x, wt, reps=args.reps)
        print(f"{name:6} {str((args.batch, h, w, c)) + ' -> ' + str(o):24} "
              f"{'exact' if ok else 'MISMATCH':8} {t_ours * 1e3:9.3f} {t_xla * 1e3:11.3f} "
              f"{t_xla / t_ours:8.1f}x")
    if not ok_all:
        raise SystemExit("kernel result differs from the reference")


if __name__ == "__main__":
    main()
