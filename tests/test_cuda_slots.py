"""The fast CUDA kernel's input-slot plan, checked on the CPU (no GPU needed).

A tile of 128 consecutive output pixels reads, for output row j of the tile
(image img0 + d) and tap row dy, slot row ``j*sh + d*E + dy*dh`` of its
buffer (cpp/cuda/fast_conv.cuh, fast_slot_row). Row (j, dy) is copied
unless at least ``dyback`` rows of its image precede it in the tile and dy is
not in ``dymask`` (row j - dyback already brought that input row into that
slot row). These tests replay that mapping in Python for every tile of many
geometries, with the plan the CUDA module computes (``_cuda.fast_slot_plan``),
and check that

* every slot row a tile copies or reads lies inside the buffer (``srows``),
* no slot row is copied twice in a tile (two unsynchronized asynchronous
  copies to one address are a race, even of equal bytes: compute-sanitizer
  racecheck reported it for stride 3 with dilation 2),
* every (row, tap row) the tile reads was copied with exactly its input row,
* the slot is wide enough for every tap of every output column.

The GPU tests check the kernel's results; these check the indexing for far
more geometries than a GPU run can afford, including CI without a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

import jax_binconv as jb

BM = 128  # output pixels per tile (kFastBM)


def _cuda():
    mod = jb.lowering.available.get("cuda")
    if mod is None:
        pytest.skip("jax_binconv._cuda not built (no nvcc): "
                    f"{jb.lowering.load_errors.get('_cuda')}")
    return mod


def _geometry(n, h, w, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr, c=128, o=64):
    return dict(conv_type=1, n=n, h=h, w=w, c=c, o=o, kh=kh, kw=kw, stride_h=sh, stride_w=sw,
                dilation_h=dh, dilation_w=dw, pad_top=pt, pad_bottom=pb, pad_left=pl,
                pad_right=pr, groups=1, pad_value=0.0, beta_scaling=False, activation=0,
                negative_slope=0.0, x_packed=True, out_packed=True)


def _out_size(size, k, s, d, p0, p1):
    return (size + p0 + p1 - ((k - 1) * d + 1)) // s + 1


def check_plan(g, max_tiles=400):
    plan = _cuda().fast_slot_plan(**g)
    assert plan is not None, g
    n, h, w = g["n"], g["h"], g["w"]
    kh, kw, sh, sw = g["kh"], g["kw"], g["stride_h"], g["stride_w"]
    dh, dw, pt = g["dilation_h"], g["dilation_w"], g["pad_top"]
    ho = _out_size(h, kh, sh, dh, pt, g["pad_bottom"])
    wo = _out_size(w, kw, sw, dw, g["pad_left"], g["pad_right"])
    m = n * ho * wo
    rmax, srows, erow = plan["rmax"], plan["srows"], plan["erow"]
    dymask, wslot, dyback = plan["dymask"], plan["wslot"], plan["dyback"]
    assert plan["mtiles"] == -(-m // BM)
    # Columns: pixel x*sw + dx*dw of the slot, for every output column and tap.
    assert (wo - 1) * sw + (kw - 1) * dw < wslot, (plan, g)
    tiles = range(plan["mtiles"])
    if len(tiles) > max_tiles:  # the first and last tiles, and a spread between
        pick = set(range(max_tiles // 2)) | set(range(len(tiles) - max_tiles // 4, len(tiles)))
        pick |= set(np.linspace(0, len(tiles) - 1, max_tiles // 4).astype(int).tolist())
        tiles = sorted(pick)
    for mt in tiles:
        m0 = mt * BM
        row0 = m0 // wo
        img0 = row0 // ho
        written = {}  # slot row -> input row (img, iy); rows outside the image read as zero
        for j in range(rmax):
            rg = row0 + j
            img, y = divmod(rg, ho)
            for dy in range(kh):
                iy = y * sh + dy * dh - pt
                content = (img, iy) if img < n and 0 <= iy < h else "zero"
                srow = j * sh + (img - img0) * erow + dy * dh
                assert 0 <= srow < srows, (mt, j, dy, srow, plan, g)
                issued = j < dyback or y < dyback or (dymask >> dy) & 1
                if issued:
                    assert srow not in written, (mt, j, dy, srow, written[srow], content, g)
                    written[srow] = content
        # What the tile reads: output rows of its valid pixels, every tap row.
        last = min(m0 + BM, m) - 1
        for rg in range(row0, last // wo + 1):
            j = rg - row0
            assert j < rmax, (mt, j, plan, g)
            img, y = divmod(rg, ho)
            for dy in range(kh):
                iy = y * sh + dy * dh - pt
                content = (img, iy) if 0 <= iy < h else "zero"
                srow = j * sh + (img - img0) * erow + dy * dh
                assert written.get(srow) == content, (mt, j, dy, srow, written.get(srow), g)


LAYERS = [  # BENCH.md layers at N = 256 (3x3 SAME, stride 1 or 2; L6 1x1)
    (256, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),
    (256, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),
    (256, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),
    (256, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),
    (256, 56, 56, 3, 3, 2, 2, 1, 1, 0, 1, 0, 1),
    (256, 28, 28, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0),
]


@pytest.mark.parametrize("geo", LAYERS)
def test_slot_plan_bench_layers(geo):
    check_plan(_geometry(*geo))


def test_slot_plan_random_geometries():
    """Strides, dilations, paddings (also wider than the window: rows with
    no valid tap), tiny and one-row images, many images per tile."""
    rng = np.random.default_rng(2026)
    checked = 0
    while checked < 300:
        kh, kw = (int(v) for v in rng.integers(1, 8, 2))
        sh, sw, dh, dw = (int(v) for v in rng.integers(1, 4, 4))
        h, w = (int(v) for v in rng.integers(1, 33, 2))
        pt, pb, pl, pr = (int(v) for v in rng.integers(0, 2 * max(kh, kw) + 1, 4))
        n = int(rng.integers(1, 12))
        if (_out_size(h, kh, sh, dh, pt, pb) < 1 or _out_size(w, kw, sw, dw, pl, pr) < 1
                or kh * kw > 64):
            continue
        g = _geometry(n, h, w, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr)
        if _cuda().fast_slot_plan(**g) is None:  # more box classes than the kernel lists
            continue
        check_plan(g, max_tiles=60)
        checked += 1


@pytest.mark.parametrize("c", [64, 384, 640, 768, 1152, 8192])
def test_slot_plan_is_the_c128_plan(c):
    """C = 64 (two 8-byte pixels per slot unit) and every multiple of 128 up
    to 8192 (p = C / 128 chunks per pixel need not be a power of two:
    AlexNet's 384, 640, ...) run the fast kernel too, on the slot rows C =
    128 copies: they do not depend on C."""
    for geo in LAYERS[:1] + LAYERS[2:5] + [(3, 9, 13, 3, 3, 1, 1, 2, 2, 2, 2, 2, 2)]:
        pc = _cuda().fast_slot_plan(**_geometry(*geo, c=c))
        assert pc is not None and pc == _cuda().fast_slot_plan(**_geometry(*geo)), (c, geo)
        if c == 64:
            check_plan(_geometry(*geo, c=64), max_tiles=60)


def test_slot_plan_none_where_the_fast_kernel_does_not_apply():
    for c in (32, 96, 192, 320, 8320):  # neither 64 nor a multiple of 128 up to 8192
        g = _geometry(2, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, c=c)
        assert _cuda().fast_slot_plan(**g) is None, c
    g = dict(_geometry(2, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, c=256), groups=2)
    assert _cuda().fast_slot_plan(**g) is None
    with pytest.raises(ValueError, match="fast_slot_plan"):
        _cuda().fast_slot_plan(**_geometry(2, 0, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1))
