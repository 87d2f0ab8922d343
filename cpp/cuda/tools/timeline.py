"""Device-side diagnosis helper for a build with -DJAX_BINCONV_TIMELINE (the
wgmma kernel prints globaltimer marks of its prologue and first tile, see
fast_conv.cuh): runs a chain of `depth` packed applications of a BENCH
layer inside one jit (each call's kernels queued behind the previous one's,
as in benchmarks/gpu.py), a few times.

    CMAKE_ARGS=-DCMAKE_CUDA_FLAGS=-DJAX_BINCONV_TIMELINE pip install --no-build-isolation -e .
    python cpp/cuda/tools/timeline.py L4 256 on 4 > tl.txt
    python cpp/cuda/tools/timeline.py --analyze tl.txt

--analyze summarizes the per-block ("TB": start, end) and per-tile ("TT":
iteration start, K loop start, K loop end, epilogue end) lines of every call
in microseconds from that call's first block start: mean and max over the
blocks, per tile index of a warpgroup. Caveat (S13-2): the per-tile printf
slows the kernel a lot (L4's calls took ~1 ms instead of ~25 us), so only
each warpgroup's first tile, before any printf of its block, shows
undisturbed times; the later tiles and the ends do not, and the split into
calls can go wrong.
"""
import sys

import jax
import numpy as np

import jax_binconv as jb
from jax_binconv import _cuda
from jax_binconv._bench_layers import LAYERS


def main(layer="L4", n="256", mode="on", depth="4"):
    _cuda.set_fast_wgmma(mode)
    h, w, c, o, k, s = LAYERS[layer]
    assert c == o and s == 1, "a chain needs C == O and stride 1"
    rng = np.random.default_rng(0)
    x = jb.pack_activations(rng.standard_normal((int(n), h, w, c), np.float32)).words
    wp = jb.pack_weights(rng.standard_normal((k, k, c, o)).astype(np.float32))

    @jax.jit
    def f(words, wt):
        for _ in range(int(depth)):
            words = jb.binary_conv2d(jb.PackedActivations(words, c), wt, padding="SAME",
                                     output="packed").words
        return words

    for _ in range(3):
        f(x, wp).block_until_ready()
    print(layer, n, mode, "ran", _cuda.last_kernel(), _cuda.last_wgmma_form(), flush=True)


def analyze(path):
    tb, tt = [], []
    for line in open(path):
        f = line.split()
        if f[:1] == ["TB"]:
            tb.append((int(f[1]), int(f[2]), int(f[3]), int(f[4])))
        elif f[:1] == ["TT"]:
            tt.append(tuple(int(v) for v in f[1:9]))
    if not tb:
        sys.exit("no TB lines: a build with -DJAX_BINCONV_TIMELINE?")
    # Calls: blocks sorted by start, a new call where a start is > 4 us after
    # the previous one's (a call's blocks start within ~1-2 us).
    starts = sorted(set(r[2] for r in tb))
    calls, cur = [], [starts[0]]
    for v in starts[1:]:
        if v - cur[-1] > 4000:
            calls.append(cur)
            cur = []
        cur.append(v)
    calls.append(cur)
    us = lambda v: v / 1000.0  # noqa: E731
    for ci, c in enumerate(calls):
        t0, t1 = c[0], c[-1]
        blocks = [r for r in tb if t0 <= r[2] <= t1]
        ids = {r[0] for r in blocks}
        ends = [r[3] - t0 for r in blocks]
        prev_end = max((r[3] for r in tb if r[3] < t0), default=None)
        gap = f", gap after the previous call's last end {us(t0 - prev_end):.2f}" if prev_end else ""
        print(f"call {ci}: {len(ids)} blocks, starts within {us(t1 - t0):.2f} us{gap}; ends mean "
              f"{us(sum(ends) / len(ends)):.2f} max {us(max(ends)):.2f}")
        t_next = calls[ci + 1][0] if ci + 1 < len(calls) else t0 + 10**9
        tiles = [r for r in tt if r[0] in ids and t0 <= r[4] < t_next]
        for g in (0, 1):
            for j in range(max((r[2] for r in tiles), default=-1) + 1):
                rs = [r for r in tiles if r[1] == g and r[2] == j]
                if not rs:
                    continue
                cols = []
                for i, name in ((4, "it"), (5, "kstart"), (6, "kdone"), (7, "epidone")):
                    v = [r[i] - t0 for r in rs]
                    cols.append(f"{name} {us(sum(v) / len(v)):6.2f}/{us(max(v)):6.2f}")
                kl = [r[6] - r[5] for r in rs]
                ep = [r[7] - r[6] for r in rs]
                print(f"  wg{g} tile {j} ({len(rs):3d}): " + "  ".join(cols) +
                      f"  | K loop {us(sum(kl) / len(kl)):.2f}  epi {us(sum(ep) / len(ep)):.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--analyze"]:
        analyze(sys.argv[2])
    else:
        main(*sys.argv[1:])
