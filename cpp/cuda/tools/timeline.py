"""Device-side diagnosis helper for a build with -DJAX_BINCONV_TIMELINE: the
fast kernels keep globaltimer marks in registers and write them to a device
buffer when each block ends (TlRec in fast_conv.cuh; the wgmma kernel and
fast_tables_kernel only). This runs a chain of `depth` applications (packed
words in and out, or float32: io "float") of a BENCH layer inside one jit
(each call's kernels queued behind the previous one's, as in
benchmarks/gpu.py), reads the records of its last run
(_cuda.timeline_read) and prints, per launch, when it started and ended
relative to the chain's first launch, and for the wgmma kernel each mark's
median and max over blocks (per warpgroup) from the launch's first block
start, in microseconds.

    CMAKE_ARGS=-DCMAKE_CUDA_FLAGS=-DJAX_BINCONV_TIMELINE pip install --no-build-isolation -e .
    python cpp/cuda/tools/timeline.py L4 256 auto 6 [tile rounds, -1: estimated] [packed|float]

(Float x: each packing block of the fused launch writes a record too, so
keep depth x blocks under the buffer's 32768 records: L3 at N = 256, depth 4.)

Experiment switches combine with it (-DJAX_BINCONV_SWITCHES too, env
JAX_BINCONV_SW). The marks cost a few registers and timer reads; they do
not print while the kernel runs (session 13's printf per tile made L4's
calls 40x slower).
"""
import os
import sys

import jax
import numpy as np

import jax_binconv as jb
from jax_binconv import _cuda
from jax_binconv._bench_layers import LAYERS

REC = np.dtype([("grid", "<u8"), ("kind", "<i4"), ("block", "<i4"), ("smid", "<i4"),
                ("pad", "<i4"), ("t", "<u8", (20,))])
CONV_MARKS = ["slots issued", "prologue done", "t0 slots in", "t0 K start", "t0 K done",
              "table in", "t0 epi done", "t1 start", "t1 K start", "t1 K done", "t1 epi done",
              "t2 K start", "t2 K done", "t2 epi done", "end", "t1 rows", "t1 slots in",
              "t1 wg barrier", "t1 next issued"]


def main(layer="L4", n="256", mode="auto", depth="6", rounds="-1", io="packed"):
    _cuda.set_fast_wgmma(mode)
    if os.environ.get("JAX_BINCONV_PDL") == "0":  # (programmatic dependent launch off)
        _cuda.set_fast_pdl(False)
    _cuda.set_debug_tile_rounds(int(rounds))
    h, w, c, o, k, s = LAYERS[layer]
    assert c == o and s == 1, "a chain needs C == O and stride 1"
    rng = np.random.default_rng(0)
    xf = rng.standard_normal((int(n), h, w, c), np.float32)
    x = xf if io == "float" else jb.pack_activations(xf).words
    wp = jb.pack_weights(rng.standard_normal((k, k, c, o)).astype(np.float32))

    @jax.jit
    def f(words, wt):
        for _ in range(int(depth)):
            if io == "float":
                words = jb.binary_conv2d(words, wt, padding="SAME")
            else:
                words = jb.binary_conv2d(jb.PackedActivations(words, c), wt, padding="SAME",
                                         output="packed").words
        return words

    for _ in range(3):
        f(x, wp).block_until_ready()
    _cuda.timeline_read()  # (drop the warm-up runs' records)
    f(x, wp).block_until_ready()
    raw, size = _cuda.timeline_read()
    assert size == REC.itemsize, (size, REC.itemsize)
    print(f"{layer} N={n} {io} mode {mode}: {_cuda.last_kernel()} {_cuda.last_wgmma_form()}, "
          f"tile rounds {_cuda.last_tile_rounds()}", flush=True)
    analyze(np.frombuffer(raw, REC))


def analyze(r):
    if len(r) == 0:
        sys.exit("no records: a build with -DJAX_BINCONV_TIMELINE, and the wgmma kernel?")
    launches = []
    for g in np.unique(r["grid"]):
        rg = r[r["grid"] == g]
        conv = rg["kind"][0] != 0
        t = rg["t"].astype(np.int64)
        start = t[:, 0].min()
        end = (t[:, 15] if conv else t[:, 2]).max()
        launches.append((start, end, conv, rg))
    launches.sort(key=lambda v: v[0])
    t00 = launches[0][0]
    us = lambda v: v / 1000.0  # noqa: E731
    prev_end = None
    for i, (start, end, conv, rg) in enumerate(launches):
        nb = len(np.unique(rg["block"]))
        gap = f"  gap {us(start - prev_end):6.2f}" if prev_end is not None else ""
        print(f"[{i:2d}] {'conv  ' if conv else 'tables'} {nb:4d} blocks  start {us(start - t00):7.2f}"
              f"  end {us(end - t00):7.2f}  ({us(end - start):6.2f}){gap}")
        prev_end = end
        t = rg["t"].astype(np.int64)
        if not conv:
            # (float x: the fused launch's packing blocks have no popcount mark)
            tab = t[:, 3] > 0
            for sel, what in ((tab, "tables"), (~tab, "packing")):
                if not sel.any():
                    continue
                cols = []
                for m, name in ((0, "start"), (1, "past the wait"), (3, "popcounts"),
                                (4, "threshold"), (2, "end")):
                    v = t[sel, m]
                    v = v[v > 0] - start
                    if len(v):
                        cols.append(f"{name} {us(np.median(v)):.2f}/{us(v.max()):.2f}")
                print(f"       {what} ({int(sel.sum())}): " + ", ".join(cols))
            continue
        # Which blocks start late (the SMs still running the tables kernel?)
        b0 = {}
        for rec in rg:
            b0[rec["block"]] = min(b0.get(rec["block"], 1 << 62), int(rec["t"][0]))
        late = sorted(int(b) for b, v in b0.items() if v - start > 1000)
        if late:
            b1 = {}
            for rec in rg:
                b1[rec["block"]] = max(b1.get(rec["block"], 0), int(rec["t"][15]))
            ends = lambda bs: np.array([b1[b] - start for b in bs])  # noqa: E731
            late_set = set(late)
            on_time = [b for b in b0 if int(b) not in late_set]
            el, eo = ends(late), ends(on_time)
            print(f"       {len(late)} blocks start > 1 us late: {late[:4]}..{late[-2:]}, "
                  f"median {us(np.median([b0[b] - start for b in late])):.2f}; ends: late "
                  f"{us(np.median(el)):.2f}/{us(el.max()):.2f}, others "
                  f"{us(np.median(eo)):.2f}/{us(eo.max()):.2f}")
        for g in (1, 2):
            tg = t[rg["kind"] == g]
            if len(tg) == 0:
                continue
            cols = []
            for m, name in enumerate(CONV_MARKS, start=1):
                v = tg[:, m]
                v = v[v > 0] - start
                if len(v):
                    cols.append(f"{name} {us(np.median(v)):.2f}/{us(v.max()):.2f}")
            print(f"       wg{g - 1} ({len(tg)}): " + ", ".join(cols))


if __name__ == "__main__":
    main(*sys.argv[1:])
