"""Does XLA capture our CUDA calls into command buffers (CUDA graphs), and
what does a call cost with and without? (A diagnostic for benchmarks/gpu.py's
N=1 rows.)

    python benchmarks/gpu_graphs.py [--layer L2] [--n 1] [--copies 32]

For float and packed I/O: one jit of `copies` applications written out (as
in gpu.py), run several times; prints the time per application and how many
times XLA called our handler per run (0 after the first run: the calls were
captured and are replayed; `copies`: the handler runs every time). Run it
with XLA_FLAGS=--xla_gpu_enable_command_buffer= to compare with graphs off.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import jax_binconv as jb
from jax_binconv._bench_layers import LAYERS


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layer", default="L2")
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--copies", type=int, default=32)
    ap.add_argument("--runs", type=int, default=6)
    args = ap.parse_args()
    cu = jb.lowering.available["cuda"]
    gpu = jax.devices("gpu")[0]
    h, w, c, o, k, s = LAYERS[args.layer]
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.standard_normal((args.n, h, w, c), np.float32), gpu)
    wp = jax.device_put(jb.pack_weights(rng.standard_normal((k, k, c, o)).astype(np.float32)), gpu)
    xp = jax.device_put(jb.pack_activations(x), gpu)

    def one(io):
        def f(xx, wt):
            acc = 0.0
            for _ in range(args.copies):
                xx, acc = jax.lax.optimization_barrier((xx, acc))
                if io == "packed":
                    y = jb.binary_conv2d(jb.PackedActivations(xx, c), wt, strides=s,
                                         padding="SAME", output="packed").words
                else:
                    y = jb.binary_conv2d(xx, wt, strides=s, padding="SAME")
                acc = acc + y.reshape(-1)[0].astype(np.float32)
            return acc
        return jax.jit(f)

    for io, arg in (("float", x), ("packed", xp.words)):
        f = one(io)
        for r in range(args.runs):
            c0 = cu.handler_calls()
            t0 = time.perf_counter()
            f(arg, wp).block_until_ready()
            dt = (time.perf_counter() - t0) / args.copies * 1e6
            print(f"{args.layer} N={args.n} {io:6} run {r}: {dt:8.1f} us per application, "
                  f"handler called {cu.handler_calls() - c0} times", flush=True)


if __name__ == "__main__":
    main()
