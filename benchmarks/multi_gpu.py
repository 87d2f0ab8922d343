"""binary_conv2d sharded over two (or more) GPUs: checks and a timing.

    NCCL_NVLS_ENABLE=0 python benchmarks/multi_gpu.py [--n 512] [--reps 10]

Checks, on a 1-D mesh over the GPUs (Auto and Explicit axes):
  * data parallel (x sharded on the batch) and model parallel (weights and
    the result sharded on output channels), forward and gradients, equal to
    the same program on one GPU;
  * the compiled program runs our CUDA custom call on the local shard and
    contains no all-gather / all-to-all (activations are never gathered);
  * a packed chain stays batch-sharded.
Then times a data-parallel step of four BENCH.md L3 layers (14x14, 256->256)
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

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jax_binconv as jb
from jax_binconv._hlo import collectives, custom_call_lines, custom_call_shapes
from gpu import bench  # benchmarks/gpu.py: the timed loop of every GPU benchmark

TARGET = jb.TARGETS["cuda"]  # --platform cpu (a dry run on forced host devices) swaps it
OPTS = dict(type="xnor", beta_scaling=True, activation="hard_tanh")


def kernel_shapes(text):
    """Result shapes of our custom calls in the compiled (per-device) program."""
    return custom_call_shapes(text, TARGET)


PLATFORM = "gpu"


def check(ndev):
    rng = np.random.default_rng(0)
    n, hw, c, o = 4 * ndev, 10, 128, 64 * ndev
    x = jnp.asarray(rng.standard_normal((n, hw, hw, c), np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, c, o), np.float32))
    s = jnp.linspace(0.05, 0.1, o)

    def fwd(x, w, s):
        return jb.binary_conv2d(x, w, output_scale=s, **OPTS)

    def loss(x, w, s):
        y = jb.binary_conv2d(x, w, output_scale=s, input_estimator="approx_sign", **OPTS)
        return jnp.sum(y * jnp.cos(y))

    want = jax.jit(fwd)(x, w, s)
    want_g = jax.jit(jax.grad(loss, (0, 1, 2)))(x, w, s)
    for at in (AxisType.Auto, AxisType.Explicit):
        mesh = jax.make_mesh((ndev,), ("d",), axis_types=(at,))
        for name, xs_spec, w_spec, local in (
                ("data", P("d"), P(), f"{n // ndev},{hw},{hw},{o}"),
                ("model", P(), P(None, None, None, "d"), f"{n},{hw},{hw},{o // ndev}")):
            xs = jax.device_put(x, NamedSharding(mesh, xs_spec))
            ws = jax.device_put(w, NamedSharding(mesh, w_spec))
            ss = jax.device_put(s, NamedSharding(mesh, P(w_spec[3] if len(w_spec) == 4 else None)))
            with jax.set_mesh(mesh):
                f = jax.jit(fwd)
                text = f.lower(xs, ws, ss).compile().as_text()
                g = jax.jit(jax.grad(loss, (0, 1, 2)))
                gtext = g.lower(xs, ws, ss).compile().as_text()
                for t in (text, gtext):
                    bad = [ln.strip()[:300] for ln in custom_call_lines(t, "Sharding")]
                    assert not bad, (name, at.name, "leftover Sharding custom calls", bad[:3])
                y = f(xs, ws, ss)
                got = g(xs, ws, ss)
            np.testing.assert_array_equal(np.asarray(y), np.asarray(want))
            for a, b in zip(got, want_g):
                # The weight gradients are float32 sums over the batch that XLA
                # adds up per device and then across devices (another order
                # than one GPU's: 4 H100s gave 2.6e-5 on elements of 0.07,
                # in an array whose elements reach ~10): tolerance relative
                # to the array's largest element.
                a, b = np.asarray(a), np.asarray(b)
                np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * max(1.0, np.abs(b).max()))
            assert not collectives(text), (name, collectives(text))
            assert not collectives(gtext), (name, collectives(gtext))
            assert kernel_shapes(text) == [local], (name, kernel_shapes(text))
            gmax = ", ".join(f"{float(np.abs(np.asarray(b)).max()):.3g}" for b in want_g)
            print(f"  {name} parallel ({at.name}): forward equal, gradients within 2e-5 of "
                  f"each array's largest element ({gmax}), kernel result "
                  f"{kernel_shapes(text)[0]} per device, no all-gather/all-to-all")
    mesh = jax.make_mesh((ndev,), ("d",), axis_types=(AxisType.Auto,))
    w2 = jnp.asarray(rng.standard_normal((3, 3, o, 64), np.float32))

    def chain(x, w, w2):
        return jb.binary_conv2d(jb.binary_conv2d(x, w, output="packed"), w2)

    xs = jax.device_put(x, NamedSharding(mesh, P("d")))
    with jax.set_mesh(mesh):
        f = jax.jit(chain)
        y = f(xs, w, w2)
        text = f.lower(xs, w, w2).compile().as_text()
    np.testing.assert_array_equal(np.asarray(y), np.asarray(jax.jit(chain)(x, w, w2)))
    assert not collectives(text), collectives(text)
    assert y.sharding.spec[0] == "d", y.sharding.spec
    print(f"  packed chain: batch-sharded result {y.sharding.spec}, equal, no all-gather")


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
    global PLATFORM, TARGET
    PLATFORM = args.platform
    if PLATFORM == "cpu":
        TARGET = jb.TARGETS["cpu"]
    gpus = jax.devices(PLATFORM)
    assert len(gpus) >= 2, f"needs two or more devices; got {gpus}"
    assert PLATFORM == "cpu" or "cuda" in jb.lowering.available, jb.lowering.load_errors
    print(f"{len(gpus)} x {gpus[0].device_kind}; jax {jax.__version__}")
    print("checks:")
    check(len(gpus))
    if args.checks_only:
        return
    print(f"timing: four L3 layers, N={args.n}, data parallel")
    bench_steps(len(gpus), args.n, args.reps)


if __name__ == "__main__":
    main()
