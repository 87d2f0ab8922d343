"""binary_conv2d sharded over two (or more) GPUs: checks and a timing.

    NCCL_NVLS_ENABLE=0 python benchmarks/multi_gpu.py [--n 512] [--reps 10]

Checks first: every scenario of tests/sharding_cases.py (data parallel,
model parallel, a 2-D mesh, Auto and Explicit axes, gradients, shard_map,
a packed chain; each equal to the unsharded op, our CUDA call on the local
shard, no all-gather / all-to-all), each in its own process on all the
GPUs, as tests/test_sharding.py runs them. Then times a data-parallel step of four BENCH.md L3 layers (14x14, 256->256)
at batch N on one GPU and on all of them (and at N / GPUs on one GPU: each
GPU's own share): the forward chain with packed links
and a training step (gradients of a loss with respect to the four latent
weights, float links). Timed with benchmarks/gpu.py's loop (steps written out
inside one jit); min and median ms per step over the repetitions. The
forward is timed twice: every step on the same x, an element of each result
folded into a carry (gpu.py's default), and chained (each step's result is
the next one's x, as in gpu.py --chain).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jax_binconv as jb
from gpu import bench  # benchmarks/gpu.py: the timed loop of every GPU benchmark

PLATFORM = "gpu"


def check():
    """tests/sharding_cases.py's scenarios on PLATFORM's devices, a process
    each (JAX fixes its devices when it starts)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "tests"))
    from sharding_case_names import case_names, run_case
    failed = []
    for case in case_names():
        ok, out, err = run_case(case, PLATFORM, timeout=900)
        print(f"  {case}: " + (out.strip().splitlines()[-1] if ok else
                                "FAILED\n" + out[-2000:] + err[-4000:]), flush=True)
        failed += [] if ok else [case]
    assert not failed, f"sharding cases failed: {failed}"


def bench_steps(ndev, n, reps):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, 14, 14, 256), np.float32)
    ws = [rng.standard_normal((3, 3, 256, 256), np.float32) / 48 for _ in range(4)]

    def fwd(x, w0, w1, w2, w3):
        h = jb.binary_conv2d(x, w0, output="packed")
        h = jb.binary_conv2d(h, w1, output="packed")
        h = jb.binary_conv2d(h, w2, output="packed")
        return jb.binary_conv2d(h, w3, beta_scaling=True)

    def loss(x, w0, w1, w2, w3):
        h = x
        for w in (w0, w1, w2, w3):
            h = jb.binary_conv2d(h, w, output_bias=0.1, activation="hard_tanh")
        return jnp.mean(h * h)

    def step(x, w0, w1, w2, w3):
        return jax.grad(loss, (1, 2, 3, 4))(x, w0, w1, w2, w3)

    rows = []
    # (devices, batch): one device, all of them, and one device with one
    # device's share of the batch (what each device runs in the second: how
    # far the speed-up is the kernels' own time at the smaller batch).
    for k, nb in ((1, n), (ndev, n), (1, n // ndev)):
        mesh = jax.make_mesh((k,), ("d",), axis_types=(AxisType.Auto,),
                             devices=jax.devices(PLATFORM)[:k])
        xs = jax.device_put(x[:nb], NamedSharding(mesh, P("d")))
        wr = [jax.device_put(w, NamedSharding(mesh, P())) for w in ws]
        with jax.set_mesh(mesh):
            t_f = bench(fwd, [xs] + wr, reps)
            t_c = bench(fwd, [xs] + wr, reps, chain=True)
            t_s = bench(step, [xs] + wr, reps)
        rows.append((k, t_f, t_c, t_s))
        print(f"  {k} GPU(s), N={nb}: forward {t_f[0]:.4f} ms (median {t_f[1]:.4f}), chained "
              f"{t_c[0]:.4f} ms (median {t_c[1]:.4f}), training step {t_s[0]:.4f} ms "
              f"(median {t_s[1]:.4f})", flush=True)
    (_, f1, c1, s1), (_, fk, ck, sk), (_, fh, ch, sh) = rows
    print(f"speed-up on {ndev} GPUs: forward {f1[0] / fk[0]:.2f}x, chained forward "
          f"{c1[0] / ck[0]:.2f}x, training step {s1[0] / sk[0]:.2f}x (min over min)")
    print(f"one GPU at N={n // ndev} over {ndev} GPUs at N={n} (1.00: no cost of the "
          f"sharding itself): forward {fh[0] / fk[0]:.2f}, chained forward {ch[0] / ck[0]:.2f}, "
          f"training step {sh[0] / sk[0]:.2f}; one GPU, N={n} over N={n // ndev}: forward "
          f"{f1[0] / fh[0]:.2f}x, chained {c1[0] / ch[0]:.2f}x, training step {s1[0] / sh[0]:.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--checks-only", action="store_true")
    ap.add_argument("--platform", default="gpu", choices=["gpu", "cpu"],
                    help="cpu: a dry run of the script on forced host devices")
    args = ap.parse_args()
    global PLATFORM
    PLATFORM = args.platform
    gpus = jax.devices(PLATFORM)
    assert len(gpus) >= 2, f"needs two or more devices; got {gpus}"
    assert PLATFORM == "cpu" or "cuda" in jb.lowering.available, jb.lowering.load_errors
    print(f"{len(gpus)} x {gpus[0].device_kind}; jax {jax.__version__}")
    print("checks (tests/sharding_cases.py):")
    check()
    if args.checks_only:
        return
    print(f"timing: four L3 layers, N={args.n}, data parallel")
    bench_steps(len(gpus), args.n, args.reps)


if __name__ == "__main__":
    main()
