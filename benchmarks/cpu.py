"""CPU benchmark of jax_binconv's C++ kernel against XLA's float32 convolution.

    python benchmarks/cpu.py                 # full table (about 1 minute on 2 cores)
    python benchmarks/cpu.py --quick         # fewer repetitions, N=1 only

What it does (method of ../shared/BENCH.md):
1. Builds benchmarks/ceiling.cpp with g++ -O3 and the flags of the best ISA
   this CPU runs (AVX-512 VPOPCNTDQ, AVX2, scalar POPCNT or NEON; chosen at
   run time from /proc/cpuinfo, never -march=native) and runs it: the best
   XOR + popcount + add rate of this processor, 1 thread and all threads.
2. For each thread count, starts a child process whose CPU affinity is that
   many cores *before* jax is imported: XLA sizes its intra-op thread pool
   (which our FFI handler also uses) from the CPUs it may run on. In jax
   0.10 the XLA_FLAGS route does not work for this: "intra_op_parallelism_threads"
   is not an XLA flag and --xla_cpu_multi_thread_eigen=false leaves the FFI
   pool at 2 threads. The child also caps our kernel with _cpu.set_num_threads.
3. Times every BENCH.md layer at N=1 and N=8: XLA float32
   lax.conv_general_dilated under jit (NHWC/HWIO), ours with float input
   (binary_conv2d, XNOR, pre-packed weights, float output), ours with packed
   input and packed output (PackedActivations in and out: the 1-bit path
   between binary layers); then a chain of four L3 layers, float32 XLA vs
   ours packed (float in -> packed -> packed -> packed -> float out).
   Warm-up, then >= 20 interleaved repetitions, block_until_ready; min and
   median reported; speed-up = XLA min / ours min, same run. Each timed call
   follows an untimed call of the same function (steady state: caches and
   thread pools equally warm for XLA and for ours), and the functions
   alternate within every repetition. The repetitions of every case are
   spread over --rounds rounds (default 3) over all cases, so that a burst
   of load from other processes spoils at most part of a case's samples.
   --after-xla times each of ours right after an XLA convolution instead
   (cold caches and a sleeping helper thread for ours, while XLA follows
   one of ours).

Binary MACs of a layer: N * Ho * Wo * O * KH * KW * C. "% ceil" compares our
rate with the ceiling measured for the same number of threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# BENCH.md's layers, read from the file itself: importing the jax_binconv
# package would import jax before child() sets the CPU affinity.
def _load_layers():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_bench_layers", os.path.join(ROOT, "jax_binconv", "_bench_layers.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.LAYERS


LAYERS = _load_layers()  # id: (H, W, C, O, k, stride)


# ------------------------------------------------------------------ ceiling

def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") or line.startswith("Features"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def build_and_run_ceiling(seconds: float) -> dict:
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        print("ceiling: no C++ compiler found; % of ceiling not reported")
        return {}
    flags = _cpu_flags()
    machine = platform.machine()
    if machine in ("x86_64", "AMD64") and {"avx512f", "avx512bw", "avx512_vpopcntdq"} <= flags:
        isa, extra = "avx512", ["-mavx512f", "-mavx512bw", "-mavx512vpopcntdq", "-DCEIL_AVX512",
                                "-mpopcnt"]
    elif machine in ("x86_64", "AMD64") and "avx2" in flags:
        isa, extra = "avx2", ["-mavx2", "-mpopcnt", "-DCEIL_AVX2"]
    elif machine in ("x86_64", "AMD64") and "popcnt" in flags:
        isa, extra = "popcnt", ["-mpopcnt"]
    else:
        isa, extra = machine, []
    out_dir = os.path.join(ROOT, "build", "bench")
    os.makedirs(out_dir, exist_ok=True)
    exe = os.path.join(out_dir, f"ceiling_{isa}")
    cmd = [cxx, "-O3", "-std=c++17", "-pthread", *extra, os.path.join(HERE, "ceiling.cpp"), "-o", exe]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print("ceiling: build failed:\n" + r.stderr[-2000:])
        return {}
    r = subprocess.run([exe, str(seconds)], capture_output=True, text=True)
    print(f"# ceiling ({isa} build: {' '.join(extra) or 'baseline flags'})")
    for line in r.stdout.splitlines():
        print("  " + line)
    vals = dict(re.findall(r"^(ceiling_gmacs_1t|ceiling_gmacs_all|threads_all)=([\d.]+)", r.stdout, re.M))
    if not vals:
        return {}
    return {1: float(vals["ceiling_gmacs_1t"]), int(float(vals["threads_all"])): float(vals["ceiling_gmacs_all"])}


# -------------------------------------------------------------------- child

def child(threads: int, batches: list[int], layers: list[str], reps: int, chain: bool,
          after_xla: bool = False, rounds: int = 3):
    # Must precede the jax import: XLA sizes its intra-op pool from the affinity mask.
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cpus[:threads])
    sys.path.insert(0, ROOT)
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jax_binconv as jb
    from jax_binconv import _cpu

    _cpu.set_num_threads(threads)
    rng = np.random.default_rng(0)

    def timeit(fns, args, reps, ts):
        """Interleaved timing of fns (fns[0] is XLA's); appends to ts[i].

        Default (steady state): in each repetition every function runs twice
        in a row and the second call is timed, so each timed call follows a
        call of the same function: caches and thread pools (XLA's Eigen
        threads, our helper thread) are in the same warm state for both
        sides, and the functions alternate within every repetition, so the
        machine's noise hits them alike. With after_xla, XLA instead runs
        (untimed) before each of ours: ours then starts with cold caches and
        a sleeping helper while XLA follows one of ours (small footprint),
        which is the harsher case for ours."""

        def once(i, record=True):
            t0 = time.perf_counter()
            jax.block_until_ready(fns[i](*args[i]))
            if record:
                ts[i].append(time.perf_counter() - t0)

        for _ in range(reps):
            for i in range(len(fns)):
                if after_xla:
                    if i > 0:
                        once(0, record=False)
                    once(i)
                else:
                    once(i, record=False)
                    once(i)

    def emit(rec):
        rec.update(threads=threads, isa=_cpu.get_isa())
        print("RESULT " + json.dumps(rec), flush=True)

    # Every case is set up (and compiled, and warmed up) first; then the
    # repetitions run in `rounds` rounds over all cases, so that a burst of
    # load from other processes on the shared machine spoils at most part of
    # one case's samples (min and median are over all rounds).
    cases = []
    dn = ("NHWC", "HWIO", "NHWC")
    for n in batches:
        for name in layers:
            h, w, c, o, k, s = LAYERS[name]
            x = jnp.asarray(rng.standard_normal((n, h, w, c)).astype(np.float32))
            wf = jnp.asarray(rng.standard_normal((k, k, c, o)).astype(np.float32))
            pw = jb.pack_weights(wf)
            xp = jb.pack_activations(x)
            xla = jax.jit(lambda x, w, s=s: jax.lax.conv_general_dilated(x, w, (s, s), "SAME", dimension_numbers=dn))
            ours = jax.jit(lambda x, pw, s=s: jb.binary_conv2d(x, pw, type="xnor", strides=(s, s), padding="SAME"))
            ours_p = jax.jit(lambda xw, pw, s=s, c=c: jb.binary_conv2d(
                jb.PackedActivations(xw, c), pw, type="xnor", strides=(s, s), padding="SAME",
                output="packed").words)
            ho = (h + s - 1) // s
            cases.append(dict(rec=dict(kind="layer", layer=name, n=n, macs=n * ho * ho * o * k * k * c),
                              keys=("xla", "ours", "packed"), fns=[xla, ours, ours_p],
                              args=[(x, wf), (x, pw), (xp.words, pw)]))
    if chain:
        h, w, c, o, k, s = LAYERS["L3"]

        def f_chain(x, ws):
            for wi in ws:
                x = jax.lax.conv_general_dilated(x, wi, (1, 1), "SAME", dimension_numbers=dn)
            return x

        def b_chain(x, pws):
            y = jb.binary_conv2d(x, pws[0], type="xnor", padding="SAME", output="packed")
            for pwi in pws[1:3]:
                y = jb.binary_conv2d(y, pwi, type="xnor", padding="SAME", output="packed")
            return jb.binary_conv2d(y, pws[3], type="xnor", padding="SAME")

        for n in batches:
            x = jnp.asarray(rng.standard_normal((n, h, w, c)).astype(np.float32))
            ws = [jnp.asarray(rng.standard_normal((3, 3, c, c)).astype(np.float32)) for _ in range(4)]
            pws = [jb.pack_weights(wi) for wi in ws]
            cases.append(dict(rec=dict(kind="chain", layer="4xL3", n=n, macs=4 * n * h * w * c * c * 9),
                              keys=("xla", "ours"), fns=[jax.jit(f_chain), jax.jit(b_chain)],
                              args=[(x, ws), (x, pws)]))
    for cs in cases:
        for f, a in zip(cs["fns"], cs["args"]):
            for _ in range(3):
                jax.block_until_ready(f(*a))
        cs["ts"] = [[] for _ in cs["fns"]]
    rounds = max(1, min(rounds, reps))
    for r in range(rounds):
        for cs in cases:
            timeit(cs["fns"], cs["args"], reps * (r + 1) // rounds - reps * r // rounds, cs["ts"])
    for cs in cases:
        rec = dict(cs["rec"])
        for key, t in zip(cs["keys"], cs["ts"]):
            rec[key] = (float(np.min(t)), float(np.median(t)))
        emit(rec)


# ------------------------------------------------------------------- parent

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", default=None, help="comma list, default 1 and all cores")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--layers", default=",".join(LAYERS))
    ap.add_argument("--quick", action="store_true", help="N=1, 8 reps")
    ap.add_argument("--no-chain", action="store_true")
    ap.add_argument("--rounds", type=int, default=3,
                    help="spread each case's repetitions over this many rounds over all cases")
    ap.add_argument("--after-xla", action="store_true",
                    help="time each of ours right after an XLA call (cold case) instead of after itself")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick:
        a.reps, a.batches = 8, "1"
    batches = [int(v) for v in a.batches.split(",")]
    layers = a.layers.split(",")
    if a.child:
        child(a.child, batches, layers, max(a.reps, 1), not a.no_chain, a.after_xla, a.rounds)
        return
    ncpu = len(os.sched_getaffinity(0))
    threads = [int(v) for v in a.threads.split(",")] if a.threads else sorted({1, ncpu})
    print(f"# machine: {platform.machine()}, {ncpu} CPUs available; "
          f"{_model_name()}; load average {os.getloadavg()[0]:.2f}")
    ceiling = build_and_run_ceiling(0.05 if a.quick else 0.1)
    rows = []
    for t in threads:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", str(t), "--reps", str(a.reps),
               "--batches", a.batches, "--layers", a.layers, "--rounds", str(a.rounds)] \
            + (["--no-chain"] if a.no_chain else []) \
            + (["--after-xla"] if a.after_xla else [])
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            print(f"child for {t} threads failed:\n{r.stderr[-3000:]}")
            continue
        rows += [json.loads(line[7:]) for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    _print_table(rows, ceiling, a.after_xla)
    print(f"# load average at the end: {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min)")


def _model_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _print_table(rows, ceiling, after_xla=False):
    isa = rows[0]["isa"] if rows else "?"
    order = ("each of ours timed right after an XLA call" if after_xla
             else "each timed call follows a call of the same function")
    print(f"\n# kernel ISA: {isa}; times in ms, min (median) of interleaved reps ({order}); "
          "speed-up = XLA f32 min / ours min")
    hdr = (f"{'layer':6} {'N':>2} {'thr':>3} | {'ours ms':>17} {'XLA f32 ms':>17} {'speed-up':>8} "
           f"{'GMAC/s':>7} {'% ceil':>6} | {'packed in/out ms':>17} {'speed-up':>8} {'% ceil':>6}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        ceil = ceiling.get(r["threads"])
        o, x = r["ours"], r["xla"]
        rate = r["macs"] / o[0] / 1e9
        pc = f"{100 * rate / ceil:5.0f}%" if ceil else "   n/a"
        line = (f"{r['layer']:6} {r['n']:>2} {r['threads']:>3} | {o[0]*1e3:7.3f} ({o[1]*1e3:7.3f}) "
                f"{x[0]*1e3:7.3f} ({x[1]*1e3:7.3f}) {x[0]/o[0]:7.1f}x {rate:7.0f} {pc:>6}")
        if r["kind"] == "layer":
            p = r["packed"]
            prate = r["macs"] / p[0] / 1e9
            ppc = f"{100 * prate / ceil:5.0f}%" if ceil else "   n/a"
            line += f" | {p[0]*1e3:7.3f} ({p[1]*1e3:7.3f}) {x[0]/p[0]:7.1f}x {ppc:>6}"
        else:
            line += " | (chain: float in, 3 packed links, float out)"
        print(line)


if __name__ == "__main__":
    main()
