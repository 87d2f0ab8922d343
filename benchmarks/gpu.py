"""GPU benchmark of jax_binconv's CUDA kernel (method: ../shared/BENCH.md).

    python benchmarks/gpu.py [--layers L1,L2] [--batches 1,64,256] [--reps 20]

Layers L1-L7 at N = 1, 64, 256; ours with float32 input/output and with
packed input/output (XNOR, packed weights); baselines cuDNN bfloat16 and
float32 through ``lax.conv_general_dilated`` in the same process. Each timed
call runs the layer many times inside one jit (written out one after the
other, or ``lax.fori_loop`` with ``--loop fori``), so Python dispatch is not
what is measured; per-application times are reported (min
and median over the repetitions). Ours (float and packed) and both
baselines are compiled first, then timed in turn within every repetition
(interleaved, as BENCH.md asks), so that the machine's drift during a run
hits them alike; the --also / --wgmma both rows, which need another knob
setting, are timed after them. Ceilings come from our own
micro-benchmarks on the same device (``jax_binconv._cuda.measure_ceilings``):
the b1 tensor-core MMA rate and the device-to-device copy bandwidth; the
memory floor of a layer is (bytes of x read + bytes of the result written)
over that bandwidth (measured on a 1 GiB copy).

The float rows have a same-run reference ("pass", ``--no-pass`` drops it):
XLA's own cheapest kernel over the same bytes (``xla_pass``: x read once,
a tensor of the result's shape written), timed in the same interleaved loop
as ours and the baselines, so with the same per-application overhead; "x
pass" is its time over ours (1.0: ours as fast as a plain elementwise pass
over the same tensors). It says how far a float row is from what this card
does with the same bytes in this harness; the issue's figure stays %memfl.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jax_binconv as jb

from jax_binconv._bench_layers import LAYERS  # id: (H, W, C, O, k, stride)


def _timed_loop(apply, inner, loop, chain=False):
    """jit of `inner` applications of `apply(x, *rest)`.

    loop="unrolled" (default): the applications are written out one after the
    other in one XLA computation, so nothing but the kernels runs between
    them. loop="fori": a ``lax.fori_loop``, which on the GPU adds XLA's
    per-iteration loop overhead (a predicate round trip) to every application.

    chain=False (default): every application reads the same x. The
    optimization barrier ties x to the carry, so XLA's GPU compiler can
    neither hoist the loop-invariant convolution out of the loop nor merge
    the unrolled copies (its CPU compiler drops the barrier and keeps one
    copy: this loop is for the GPU); one output element is folded into the
    carry so the result is used. That fold is a small XLA kernel of its own
    after every application, between two of ours.
    chain=True: each application's result is the next one's x (as layers
    follow each other in a network; it needs a result of x's shape and
    type), and one element of the last result is returned: no kernel
    runs between two applications but theirs. Neither costs memory traffic.
    """

    def body(_, carry):
        xx, rest, acc = carry
        xx, acc = lax.optimization_barrier((xx, acc))
        y = jax.tree.leaves(apply(xx, *rest))[0]  # PackedActivations: its words
        if chain:
            return y, rest, acc
        return xx, rest, acc + y.reshape(-1)[0].astype(jnp.float32)

    @jax.jit
    def run(xx, *rest):
        carry = (xx, rest, jnp.float32(0))
        if loop == "fori":
            carry = lax.fori_loop(0, inner, body, carry)
        else:
            for i in range(inner):
                carry = body(i, carry)
        return carry[0].reshape(-1)[0].astype(jnp.float32) if chain else carry[2]

    return run


def prepare(apply, args, loop="unrolled", target_ms=4.0, chain=False):
    """The timed loop of apply(*args) (see _timed_loop), compiled and warmed
    up, with as many applications as make a repetition last about target_ms:
    (run, inner). args[0] is tied to the loop carry."""
    inner = 8
    run = _timed_loop(apply, inner, loop, chain)
    run(*args).block_until_ready()
    t0 = time.perf_counter()
    run(*args).block_until_ready()
    per = (time.perf_counter() - t0) * 1e3 / inner
    # One re-calibration so that each repetition lasts about target_ms (at
    # most 128 unrolled copies: compile time grows with them).
    cap = 128 if loop == "unrolled" else 5000
    inner = int(max(4, min(cap, target_ms / max(per, 1e-4))))
    run = _timed_loop(apply, inner, loop, chain)
    run(*args).block_until_ready()
    return run, inner


def bench_interleaved(cases, reps, loop="unrolled", target_ms=4.0, chain=False):
    """[(min, median) ms per application] for cases [(apply, args), ...]:
    each is prepared first (compiled, calibrated), then every repetition
    times each case once, in turn (BENCH.md: baselines interleaved with
    ours), so that a drift of the machine's speed during the run (clocks,
    other tenants) hits all of them alike. The cases must not depend on
    knobs that differ between them (a knob's effect is fixed when XLA
    captures its launches, and identical computations may share one
    executable): time such variants one after the other, with
    jax.clear_caches() between them, as gpu_ab.py and --also do. chain:
    see _timed_loop (every case then needs a result of its x's shape)."""
    runs = [prepare(apply, args, loop, target_ms, chain) for apply, args in cases]
    times = [[] for _ in cases]
    for _ in range(reps):
        for (run, inner), (_, args), ts in zip(runs, cases, times):
            t0 = time.perf_counter()
            run(*args).block_until_ready()
            ts.append((time.perf_counter() - t0) * 1e3 / inner)
    return [(min(ts), statistics.median(ts)) for ts in times]


def bench(apply, args, reps, loop="unrolled", target_ms=4.0, chain=False):
    """(min, median) ms per application of apply(*args) (one case of
    bench_interleaved)."""
    return bench_interleaved([(apply, args)], reps, loop, target_ms, chain)[0]


def layer_data(name, n, gpu, rng):
    """A BENCH layer's operands: float32 input x (NHWC, on `gpu`), float
    weights wf (HWIO, host, scaled by 1/sqrt(fan-in) for the baselines) and
    their packed words (on `gpu`)."""
    h, w, c, o, k, s = LAYERS[name]
    x = jax.device_put(rng.standard_normal((n, h, w, c), np.float32), gpu)
    wf = rng.standard_normal((k, k, c, o)).astype(np.float32) / np.sqrt(k * k * c)
    return x, wf, jax.device_put(jb.pack_weights(wf), gpu)


def ours_fn(name, io, type="xnor"):
    """Our application of layer `name` (SAME padding): float32 in and out
    (io "float", args (x, packed weights)) or packed words in and out (io
    "packed", args (x's words, packed weights))."""
    h, w, c, o, k, s = LAYERS[name]
    if io == "packed":
        def ours(words, wt):
            return jb.binary_conv2d(jb.PackedActivations(words, c), wt, type=type, strides=s,
                                    padding="SAME", output="packed")
    else:
        def ours(xx, wt):
            return jb.binary_conv2d(xx, wt, type=type, strides=s, padding="SAME")
    return ours


def xla_pass(name):
    """XLA's cheapest kernel over layer `name`'s float bytes: reads all of x
    (N, H, W, C) once and writes a float32 tensor of the result's shape (N,
    Ho, Wo, O). Stride 1, C = O: -x (one fusion). Otherwise x's s x s blocks
    summed (H, W multiples of s here), their C channels repeated to O."""
    h, w, c, o, k, s = LAYERS[name]
    if o % c:
        raise ValueError(f"xla_pass: {name}: O = {o} is not a multiple of C = {c}")

    def run(xx):
        n = xx.shape[0]
        y = -xx if s == 1 else xx.reshape(n, h // s, s, w // s, s, c).sum((2, 4))
        y = y if o == c else jnp.tile(y, (1, 1, 1, o // c))
        # (the timed loop folds one element of the result into its carry:
        # without the barrier XLA computes that element alone)
        return lax.optimization_barrier(y)
    return run


def layer_case(name, n, io, gpu, rng):
    """A BENCH layer as the A/B tools (gpu_ab.py, cpp/cuda/tools/switches.py)
    time it: (ours, args, x, wf): XNOR, the operands and application of
    main's rows (layer_data, ours_fn) for one io; x and wf are the float
    input and weights (for a baseline)."""
    x, wf, wpk = layer_data(name, n, gpu, rng)
    xin = jax.device_put(jb.pack_activations(x).words, gpu) if io == "packed" else x
    return ours_fn(name, io), (xin, wpk), x, wf


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", default=",".join(LAYERS))
    ap.add_argument("--batches", default="1,64,256")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--type", default="xnor")
    ap.add_argument("--loop", choices=["unrolled", "fori"], default="unrolled",
                    help="how applications are repeated inside the timed jit")
    ap.add_argument("--kernel", choices=["auto", "general"], default="auto",
                    help="jax_binconv._cuda.set_kernel policy for ours")
    ap.add_argument("--wgmma", choices=["auto", "on", "off", "rs", "both"], default="auto",
                    help="jax_binconv._cuda.set_fast_wgmma mode for ours: the fast kernel's K "
                         "loop on wgmma (compute capability 9.0) where it pays (auto, the "
                         "default), wherever it can run (on) or never (off: mma.sync); rs: "
                         "wgmma with A always from registers; both: on, and off timed in the "
                         "same run (rows 'float-mma', 'packed-mma')")
    ap.add_argument("--also", default="",
                    help="comma list of set_fast_wgmma modes (off, rs, on, auto) whose rows "
                         "are timed too, in the same run: rows 'float-<mode>', 'packed-<mode>'")
    ap.add_argument("--chain", action="store_true",
                    help="each application's result is the next one's input (layers with C = O "
                         "and stride 1; the others as without it), instead of every application "
                         "reading the same x and folding an element of its result into a carry "
                         "(an XLA kernel after each; see _timed_loop)")
    ap.add_argument("--no-pass", action="store_true",
                    help="skip the float rows' reference (XLA's own pass over the same bytes)")
    args = ap.parse_args(argv)

    gpu = jax.devices("gpu")[0]
    if "cuda" not in jb.lowering.available:
        sys.exit(f"jax_binconv._cuda not available: {jb.lowering.load_errors.get('_cuda')}")
    from jax_binconv import _cuda

    _cuda.set_kernel(args.kernel)
    has_wg = hasattr(_cuda, "set_fast_wgmma")  # (older builds, for A/B of trees)

    def set_wg(mode):
        try:
            _cuda.set_fast_wgmma(mode)
        except TypeError:  # builds before the "auto" mode: a bool, off by default
            _cuda.set_fast_wgmma(mode == "on")

    main_mode = "on" if args.wgmma == "both" else args.wgmma  # ours' rows
    if has_wg:
        set_wg(main_mode)
    elif args.wgmma in ("on", "both"):
        sys.exit("--wgmma: this build of jax_binconv._cuda has no wgmma kernel")
    print(f"device: {gpu.device_kind}; jax {jax.__version__}; loop {args.loop}; "
          f"kernel policy {args.kernel}; wgmma {args.wgmma}; "
          f"{'chained applications' if args.chain else 'an element of each result folded'} "
          f"(available: {has_wg and _cuda.wgmma_available()})")
    ceil = _cuda.measure_ceilings(1 << 30)
    mma_rate, copy_bw = ceil["mma_macs_per_s"], ceil["copy_bytes_per_s"]
    print(f"ceilings: b1 MMA {mma_rate:.3e} binary MAC/s; copy {copy_bw / 1e9:.0f} GB/s "
          "(read + write)")

    rng = np.random.default_rng(0)
    rows = []
    unchained = []
    for name in args.layers.split(","):
        h, w, c, o, k, s = LAYERS[name]
        chain = args.chain and c == o and s == 1
        if args.chain and not chain:
            unchained.append(name)
        ours_f, ours_p = ours_fn(name, "float", args.type), ours_fn(name, "packed", args.type)
        for n in [int(b) for b in args.batches.split(",")]:
            x, wf, wpk = layer_data(name, n, gpu, rng)
            xp = jax.device_put(jb.pack_activations(x), gpu)
            ho, wo = -(-h // s), -(-w // s)
            macs = n * ho * wo * o * k * k * c

            def cudnn(xx, wl, s=s):
                return lax.conv_general_dilated(xx, wl, (s, s), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))

            w16 = jax.device_put(jnp.asarray(wf, jnp.bfloat16), gpu)
            w32 = jax.device_put(jnp.asarray(wf), gpu)
            x16 = x.astype(jnp.bfloat16)
            # ours (float, packed) and both baselines, interleaved repetition
            # by repetition. The path is that of our last handler call: the
            # packed rows' (prepared after the float rows'; XLA replays the
            # captured launches without calling the handler again).
            cases = [(ours_f, (x, wpk)), (ours_p, (xp.words, wpk)), (cudnn, (x16, w16)),
                     (cudnn, (x, w32))]
            if not args.no_pass:
                cases.append((xla_pass(name), (x,)))
            t_of, t_op, t_16, t_32, *t_pass = bench_interleaved(cases, args.reps, args.loop,
                                                                chain=chain)
            wg_ran = has_wg and _cuda.last_wgmma()
            form = (getattr(_cuda, "last_wgmma_form", lambda: "")() or "") if wg_ran else ""
            extra = []
            also = [m for m in args.also.split(",") if m]
            if args.wgmma == "both":
                also = ["off"] + also
            for mode in also:
                set_wg(mode)
                jax.clear_caches()
                tag = "mma" if mode == "off" else mode
                extra += [(f"float-{tag}", bench(ours_f, (x, wpk), args.reps, args.loop,
                                                 chain=chain)),
                          (f"packed-{tag}", bench(ours_p, (xp.words, wpk), args.reps, args.loop,
                                                  chain=chain))]
            if also:
                set_wg(main_mode)
                jax.clear_caches()
            bytes_f = 4 * (n * h * w * c + n * ho * wo * o)
            bytes_p = 4 * (n * h * w * -(-c // 32) + n * ho * wo * -(-o // 32))
            timed = [("float", t_of), ("packed", t_op)] + extra
            for io, t in timed:
                nbytes = bytes_f if io.startswith("float") else bytes_p
                ms = t[0]
                rows.append(dict(
                    layer=name, n=n, io=io, ours=ms, ours_med=t[1], bf16=t_16[0], f32=t_32[0],
                    tmacs=macs / (ms * 1e-3) / 1e12, pct_mma=100 * macs / (ms * 1e-3) / mma_rate,
                    pct_mem=100 * (nbytes / copy_bw) / (ms * 1e-3),
                    xpass=(t_pass[0][0] if t_pass and io.startswith("float") else None)))
            r = rows[-len(timed):]
            paths = _cuda.last_kernel() + (f" wgmma {form}" if wg_ran else "")
            print(f"  {name} N={n} [{paths}]: " + ", ".join(
                f"{q['io']} {q['ours']:.4f} ms" for q in r) +
                  f", bf16 {t_16[0]:.4f} ms, f32 {t_32[0]:.4f} ms" +
                  (f", pass {t_pass[0][0]:.4f} ms" if t_pass else ""), flush=True)

    print()
    print(f"{'layer':5} {'N':>4} {'io':10} {'ours ms':>9} {'(med)':>9} {'bf16 ms':>9} "
          f"{'f32 ms':>9} {'x bf16':>7} {'x f32':>7} {'TMAC/s':>8} {'%MMA':>6} {'%memfl':>7}"
          f" {'pass ms':>9} {'x pass':>7}")

    def opt(v, fmt, width):
        return f"{v:{width}{fmt}}" if v is not None else " " * width
    for r in rows:
        print(f"{r['layer']:5} {r['n']:4d} {r['io']:10} {r['ours']:9.4f} {r['ours_med']:9.4f} "
              f"{r['bf16']:9.4f} {r['f32']:9.4f} {r['bf16'] / r['ours']:7.2f} "
              f"{r['f32'] / r['ours']:7.2f} {r['tmacs']:8.1f} {r['pct_mma']:6.1f} "
              f"{r['pct_mem']:7.1f} {opt(r['xpass'], '.4f', 9)} "
              f"{opt(r['xpass'] / r['ours'] if r['xpass'] else None, '.2f', 7)}")
    print(f"\n%MMA: of the measured b1 MMA rate {mma_rate:.3e} MAC/s; %memfl: memory floor "
          f"(x read + result written at {copy_bw / 1e9:.0f} GB/s, a 1 GiB copy) over our time "
          "(100 = at floor). Float rows: pass = XLA's own kernel over the same bytes (xla_pass), "
          "x pass = its time over ours. Times: min over repetitions, per application" +
          (f"; chained applications (--chain), but {', '.join(unchained)} (C != O or "
           "stride 2): an element of each result folded." if unchained else
           "; chained applications (--chain)." if args.chain else "."))


if __name__ == "__main__":
    main()
