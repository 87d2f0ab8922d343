"""Same-process A/B of the fast CUDA kernel's variants (knobs that do not
change results), so that run-to-run and card-to-card spread cancels out.

    python benchmarks/gpu_ab.py [--layers L2,L3] [--batch 256] [--rounds 5]
        [--variants "tma=1,pdl=1;tma=0,pdl=1;wcopy=1"]

Knobs (default first): tma=1|0 (input slots by tensor map or cp.async),
pdl=1|0 (programmatic dependent launch), wcopy=2|1|0 (weights by one
tensor-map box, bulk row copies or cp.async), fprep=1|0 (float x: packing
and tables in one kernel or two), tfirst=0|1 (that one kernel's tables
blocks after the packing's or before them), rounds=-1|r (the wgmma
kernel's first r rounds of M tiles to the blocks that start on time: -1
the per-call estimate, set_debug_tile_rounds), wg=auto|on|off|rs
(set_fast_wgmma: "on" takes A from shared memory wherever that form runs;
each variant's line gives the form its last call ran: "ss", "rs" or ""
for mma.sync),
split=1|0 (set_fast_wg_split: with one tile a block and float output, the
shared-memory form's second warpgroup runs the epilogue of the tile's
channels 64-127), half=1|0 (set_fast_wg_skip_half: the shared-memory
form's tiles whose rows 64-127 hold no pixel run rows 0-63 only; float
output or packed output by thresholds), htiles=1|0
(set_fast_wg_half_tiles: that form in tiles of 64 rows where twice the
tiles fit the SMs; the same outputs), hall=0|1
(set_fast_wg_half_tiles_always: those 64-row tiles also where they do not
fit the SMs at once, blocks looping over more of them).

For each layer the variants are timed in turn, --rounds times, each time as
a fresh jit (XLA captures our launches into a CUDA graph with the knobs in
effect then; the knobs are also set before every timing in case it
re-records). Prints per variant the min per-application time over rounds
and its ratio to the first variant, then the median over rounds (where
the two orders disagree, or a variant's min and median lie far apart, the
difference is noise). XNOR; packed input and output, or
float32 (--io float).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu import bench, layer_case  # noqa: E402


def parse_variant(text):
    v = dict(tma=1, pdl=1, wcopy=2, fprep=1, rounds=-1, wg="auto", split=1, half=1, htiles=1,
             tfirst=0, hall=0)
    for part in filter(None, text.split(",")):
        key, val = part.split("=")
        if key not in v:
            raise SystemExit(f"unknown knob {key!r} ({', '.join(v)})")
        v[key] = val if key == "wg" else int(val)
    return v


def apply_variant(mod, v):
    mod.set_tma_slots(bool(v["tma"]))
    mod.set_fast_pdl(bool(v["pdl"]))
    mod.set_fast_weight_copy(["cp.async", "bulk", "tensor_map"][v["wcopy"]])
    mod.set_fast_fused_prep(bool(v["fprep"]))
    mod.set_fast_fused_tables_first(bool(v["tfirst"]))
    mod.set_debug_tile_rounds(v["rounds"])
    mod.set_fast_wgmma(v["wg"])
    mod.set_fast_wg_split(bool(v["split"]))
    mod.set_fast_wg_skip_half(bool(v["half"]))
    mod.set_fast_wg_half_tiles(bool(v["htiles"]))
    mod.set_fast_wg_half_tiles_always(bool(v["hall"]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", default="L2,L3,L4,L7")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--variants", default="tma=1,pdl=1;tma=0;pdl=0")
    ap.add_argument("--io", choices=["packed", "float"], default="packed",
                    help="input and output: packed words or float32")
    ap.add_argument("--chain", action="store_true",
                    help="each application's result is the next one's input (gpu.py --chain; "
                         "layers with C = O and stride 1)")
    args = ap.parse_args(argv)
    from jax_binconv import _cuda as mod

    variants = [parse_variant(t) for t in args.variants.split(";")]
    gpu = jax.devices("gpu")[0]
    print(f"device: {gpu.device_kind}; jax {jax.__version__}; N={args.batch}; io={args.io}"
          + ("; chained applications" if args.chain else ""))
    rng = np.random.default_rng(0)
    for name in args.layers.split(","):
        ours, ours_args, _, _ = layer_case(name, args.batch, args.io, gpu, rng)

        times = [[] for _ in variants]  # per variant, a time a round
        picked = [None] * len(variants)  # the tile rounds the last call ran
        forms = [None] * len(variants)  # and its wgmma form
        for _ in range(args.rounds):
            for i, v in enumerate(variants):
                apply_variant(mod, v)
                t = bench(ours, ours_args, args.reps, chain=args.chain)[0]
                times[i].append(t)
                picked[i], forms[i] = mod.last_tile_rounds(), mod.last_wgmma_form()
                if mod.last_wg_half_tiles():
                    forms[i] += ", 64-row tiles"
        best = [min(ts) for ts in times]
        med = [float(np.median(ts)) for ts in times]
        for v, t, m, r, f in zip(variants, best, med, picked, forms):
            print(f"  {name} {v}: {t * 1e3:8.2f} us  ({best[0] / t:5.3f}x of the first; median "
                  f"{m * 1e3:.2f} us, {med[0] / m:5.3f}x)  tile rounds {r}, wgmma form {f!r}",
                  flush=True)
    apply_variant(mod, parse_variant(""))


if __name__ == "__main__":
    main()
