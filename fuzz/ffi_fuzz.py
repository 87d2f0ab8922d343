"""Fuzz target: the C++ FFI handlers, called straight through ``jax.ffi.ffi_call``.

Python's argument checking (``jax_binconv.conv``) is bypassed: every input
decodes into operands, a result shape and attributes that go unchanged to
``jax_binconv_conv2d_cpu_v1`` (and, when loaded, the Metal shim's
``jax_binconv_conv2d_metalshim_v1``). The decoder first builds a call that
follows docs/ffi.md, then applies zero or more *mutations*: wrong dtypes,
ranks and sizes of every buffer, a result shape that does not match, attribute
values that are negative, zero, out of range, or large enough to overflow
int64 products (huge padding with a huge stride, huge dilation), NaN/Inf pad
values, garbage in the trailing bits of packed words, NaN/Inf in the data.

What each call must do:

* ``valid`` (the docs/ffi.md contract holds): succeed and agree with a plain
  numpy oracle of the contract (integer parts exactly, floats within a
  tolerance scaled by the magnitudes summed);
* ``invalid`` (the contract is broken): raise (``JaxRuntimeError`` with the
  handler's InvalidArgument, or a JAX-side error) -- never return a result;
* ``grey`` (the contract says nothing, e.g. H = 0 or attributes in the
  billions): either, but never crash.

Any crash (signal, sanitizer report) or violated expectation is a finding.

Usage::

    python fuzz/ffi_fuzz.py fuzz/corpus -max_total_time=600     # atheris (libFuzzer flags)
    python fuzz/ffi_fuzz.py --replay fuzz/corpus                  # each corpus file once
    python fuzz/ffi_fuzz.py --random 60                           # no atheris: random bytes

Run it under AddressSanitizer with ``fuzz/build.sh`` (see docs/hardening.md).
"""

from __future__ import annotations

import dataclasses
import os
import random
import sys
import time

import numpy as np

I64_MAX = 2**63 - 1
I64_MIN = -(2**63)
# Buffers the harness materializes stay small; the interesting sizes are
# in the attributes and the shapes, not in the bytes.
MAX_IN_ELEMS = 1 << 15
MAX_OUT_ELEMS = 1 << 16
# The kernel's padded scratch buffer is about N*Hp*Wp*C floats. Between these
# two sizes it is allocatable but large: the harness avoids that band (it
# would only measure the machine's memory); below it runs, above it the
# allocation must fail cleanly or the handler must refuse the attributes.
SCRATCH_OK = 1 << 24
SCRATCH_HUGE = 1 << 40

TARGETS = {"cpu": "jax_binconv_conv2d_cpu_v1", "metal_shim": "jax_binconv_conv2d_metalshim_v1",
           "cuda": "jax_binconv_conv2d_cuda_v1"}
# FFI_FUZZ_TARGETS=cuda fuzzes the CUDA handler instead (on a GPU machine;
# the operands then live on the GPU, where the CPU targets do not exist).
_WANT_TARGETS = [t for t in os.environ.get("FFI_FUZZ_TARGETS", "cpu,metal_shim").split(",") if t]
HOSTILE_INTS = [0, -1, -2, I64_MIN, I64_MAX, I64_MAX - 1, 2**62, 2**61 + 3, 2**32 + 1, 2**31,
                2**31 - 1, 2**30 + 1, 2**40, 1000003]
HOSTILE_FLOATS = [float("nan"), float("inf"), float("-inf"), 0.5, -2.0, 3.0, 1e30, -0.0]


# Known, still-open findings to steer around (comma-separated), so that a run
# keeps looking for new ones; each has a failing regression test named after
# it in tests/test_hardening.py:
#   bw_packed_out   BINARY_WEIGHTS with a packed result (never zeroed: garbage bits)
#                   -> test_bug_binary_weights_packed_output_not_zeroed (fixed: 08bc4d0)
#   int64_overflow  attributes above 2^40 (int64 overflow in the CPU handler's
#                   size arithmetic: UB, then a heap overflow)
#                   -> test_bug_huge_padding_overflows_scratch_size (fixed: 540cda9)
#   scratch_overflow  each attribute bounded (2^24) but N*Hp*Wp*C still overflows
#                   int64 (512 images of 1x1x2048 padded by 2^24)
#                   -> test_bug_huge_padding_overflows_scratch_size[bounded_pads_big_batch]
#                   (fixed: 02c5ae8)
_KNOWN = {k.strip() for k in os.environ.get("FFI_FUZZ_KNOWN", "").split(",") if k.strip()}
# Mutation kinds to leave out (comma-separated numbers, see decode()): lets a
# long run look past a known, still-open finding.
_SKIP_KINDS = {int(k) for k in os.environ.get("FFI_FUZZ_SKIP_KINDS", "").split(",") if k.strip()}


class Reader:
    """Deterministic decoding of fuzz bytes (zeros once exhausted)."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def below(self, n: int) -> int:
        if n <= 1:
            return 0
        v = self.byte()
        if n > 256:
            v = v | (self.byte() << 8)
        return v % n

    def between(self, lo: int, hi: int) -> int:
        return lo + self.below(hi - lo + 1)

    def chance(self, num: int, den: int = 256) -> bool:
        return self.byte() * den < num * 256

    def pick(self, seq):
        return seq[self.below(len(seq))]

    def u32(self) -> int:
        return self.byte() | (self.byte() << 8) | (self.byte() << 16) | (self.byte() << 24)


@dataclasses.dataclass
class Spec:
    target: str
    isa: str | None
    operands: list            # numpy arrays, in docs/ffi.md order
    result_shape: tuple
    result_dtype: object
    attrs: dict
    expect: str               # "valid" | "invalid" | "grey"
    mutations: list


def _out_dim(size, pad_a, pad_b, k, dil, stride):
    span = size + pad_a + pad_b - ((k - 1) * dil + 1)
    return span // stride + 1 if span >= 0 and stride >= 1 else 0


def _prod(shape):
    p = 1
    for s in shape:
        p *= int(s)
    return p


def decode(data: bytes, targets=("cpu", "metal_shim"), isas=("scalar",)) -> Spec:
    """Bytes -> one FFI call and what it must do (see the module docstring)."""
    r = Reader(data)
    target = r.pick(list(targets))
    isa = r.pick(list(isas)) if target == "cpu" else None
    ctype = r.pick([1, 1, 2, 0])
    groups = r.pick([1, 1, 1, 2, 3, 4])
    cg = r.between(1, 40) if not r.chance(12) else r.pick([32, 64, 96, 4097, 160])
    og = r.between(1, 12)
    c, o = cg * groups, og * groups
    kh, kw = r.between(1, 4), r.between(1, 4)
    sh, sw = r.pick([1, 1, 2, 3, 5]), r.pick([1, 1, 2, 3, 5])
    dh, dw = r.pick([1, 1, 2, 3]), r.pick([1, 1, 2, 3])
    lead = [r.pick([1, 1, 2, 3])]
    if r.chance(30):
        lead.append(r.pick([1, 2]))
    h, w = r.between(1, 9), r.between(1, 9)
    pads = [r.between(0, 4) for _ in range(4)]
    x_packed = ctype != 0 and r.chance(50)
    out_packed = r.chance(50) and not (ctype == 0 and "bw_packed_out" in _KNOWN)
    pad_value = r.pick({0: [0.0, 0.75, -2.0, 1.0], 1: [0.0, 1.0, -1.0], 2: [0.0, 1.0]}[ctype])
    attrs = dict(conv_type=ctype, in_channels=c, stride_h=sh, stride_w=sw, dilation_h=dh,
                 dilation_w=dw, pad_top=pads[0], pad_bottom=pads[1], pad_left=pads[2],
                 pad_right=pads[3], groups=groups, pad_value=pad_value,
                 beta_scaling=r.chance(100), activation=r.between(0, 7),
                 negative_slope=r.pick([0.0, 0.01, 0.3, -1.5]))
    muts = []
    # Shrink until the materialized buffers stay small.
    while _prod(lead) * h * w * c > MAX_IN_ELEMS and h * w > 1:
        h, w = max(1, h // 2), max(1, w // 2)
    if r.chance(6) and "scratch_overflow" not in _KNOWN:
        # Attributes each within any sane per-attribute bound (2^20..2^24)
        # but a padded scratch of N*Hp*Wp*C that overflows int64: a big
        # batch of 1x1 images with many channels, padding ~P on every side
        # and a stride of P (so the output stays a few pixels).
        lead, h, w = [r.pick([128, 256, 512, 1024])], 1, 1
        groups, og = 1, r.between(1, 4)
        cg = c = r.pick([1024, 2048, 4096])
        o = og
        kh = kw = 1
        big = r.pick([2**24, 2**23, 2**22, 2**20])
        # big - 1 makes Hp = Wp = 2 * big exactly: N*Hp*Wp*words wraps to 0.
        pads = [big, big - r.pick([1, 1, 1, 0, 2]), big, big - r.pick([1, 1, 1, 0, 2])]
        attrs.update(in_channels=c, groups=1, stride_h=big, stride_w=big, dilation_h=1,
                     dilation_w=1, pad_top=pads[0], pad_bottom=pads[1], pad_left=pads[2],
                     pad_right=pads[3])
        muts.append(f"bounded_huge_pad={big},N={lead[0]},C={c}")
    seed = r.u32()
    rng = np.random.default_rng(seed)

    # ---- data
    xf = rng.standard_normal(tuple(lead) + (h, w, c)).astype(np.float32)
    u = rng.random(xf.shape)
    xf[u < 0.1] = 0.0
    xf[(u >= 0.1) & (u < 0.15)] = -0.0
    if r.chance(30):
        special = np.array([np.nan, np.inf, -np.inf, 1e-45, -1e-45], np.float32)
        idx = rng.random(xf.shape) < 0.05
        xf[idx] = rng.choice(special, int(idx.sum()))
    words = lambda n: (n + 31) // 32
    if x_packed:
        bits = (~(xf < 0)).astype(np.uint64)
        x = _pack(bits, c)
    else:
        x = xf
    wbits = rng.random((o, kh, kw, cg)) < 0.5
    wpk = _pack(wbits.astype(np.uint64), cg)
    garbage = r.chance(60)
    if garbage and cg % 32:
        # Bits past Cg (x) / C (packed x) must never reach a result.
        wpk[..., -1] |= np.uint32(~np.uint32((1 << (cg % 32)) - 1))
        if x_packed and c % 32:
            x[..., -1] |= np.uint32(~np.uint32((1 << (c % 32)) - 1))
    ib = (rng.standard_normal(c) * 0.3).astype(np.float32)
    isc = rng.uniform(0.5, 1.5, c).astype(np.float32) * rng.choice([-1, 1], c).astype(np.float32)
    osc = rng.uniform(0.1, 1.0, o).astype(np.float32) * rng.choice([-1, 1], o).astype(np.float32)
    ob = (rng.standard_normal(o)).astype(np.float32)
    if x_packed:
        ib, isc = np.zeros(c, np.float32), np.ones(c, np.float32)
    operands = [x, wpk, ib, isc, osc, ob]

    # ---- mutations (each may make the call invalid or grey)
    n_mut = r.pick([0, 0, 0, 1, 1, 2, 3])
    result_dtype = np.uint32 if out_packed else np.float32
    res_override = None
    for _ in range(n_mut):
        kind = r.between(0, 15)
        if kind in _SKIP_KINDS or (kind in (1, 2) and "int64_overflow" in _KNOWN):
            continue
        try:
            if kind == 0:  # one integer attribute takes a hostile value
                name = r.pick(["in_channels", "stride_h", "stride_w", "dilation_h", "dilation_w",
                               "pad_top", "pad_bottom", "pad_left", "pad_right", "groups"])
                attrs[name] = r.pick([v for v in HOSTILE_INTS
                                      if "int64_overflow" not in _KNOWN or abs(v) <= 2**40])
                muts.append(f"{name}={attrs[name]}")
            elif kind == 1:  # huge padding with a huge stride: tiny output, overflowing scratch size
                side = r.pick(["h", "w"])
                big = r.pick([2**61, 2**62 - 5, 2**60 + 7, 2**40, 2**33])
                a, b = ("pad_top", "pad_bottom") if side == "h" else ("pad_left", "pad_right")
                attrs[a], attrs[b] = big, r.pick([big, 0, 1])
                attrs["stride_h" if side == "h" else "stride_w"] = r.pick([I64_MAX, 2**62, big])
                muts.append(f"hugepad_{side}={attrs[a]},{attrs[b]}")
            elif kind == 2:  # huge dilation
                name = r.pick(["dilation_h", "dilation_w"])
                attrs[name] = r.pick([2**62, 2**61 + 1, I64_MAX, 2**31 + 1])
                muts.append(f"{name}={attrs[name]}")
            elif kind == 3:
                attrs["conv_type"] = r.pick([-1, 3, 2**31 - 1, -(2**31), 255])
                muts.append(f"conv_type={attrs['conv_type']}")
            elif kind == 4:
                attrs["activation"] = r.pick([-1, 8, 100, 2**31 - 1, -(2**31)])
                muts.append(f"activation={attrs['activation']}")
            elif kind == 5:
                attrs["pad_value"] = r.pick(HOSTILE_FLOATS)
                muts.append(f"pad_value={attrs['pad_value']}")
            elif kind == 6:
                attrs["negative_slope"] = r.pick(HOSTILE_FLOATS)
                muts.append(f"negative_slope={attrs['negative_slope']}")
            elif kind == 7:  # x dtype
                dt = r.pick([np.float16, np.int32, np.uint8, np.int8, np.uint32, np.float32])
                if dt == np.uint32 and operands[0].dtype == np.float32:
                    operands[0] = operands[0].view(np.uint32)
                else:
                    operands[0] = operands[0].astype(dt)
                muts.append(f"x.dtype={np.dtype(dt).name}")
            elif kind == 8:  # x rank / dims
                op = r.between(0, 3)
                x0 = operands[0]
                if op == 0:
                    if x0.ndim > 1 and x0.shape[0] > 0:
                        operands[0] = x0.reshape(x0.shape[1:]) if x0.shape[0] == 1 else x0[0]
                elif op == 1:
                    operands[0] = x0[..., :-1] if x0.shape[-1] > 1 else np.concatenate([x0, x0], -1)
                elif op == 2:
                    operands[0] = np.concatenate([x0, x0[..., :1]], -1)
                else:  # H or W = 0 (the contract does not say)
                    axis = x0.ndim - 3 + r.below(2)
                    operands[0] = np.take(x0, [], axis=axis)
                muts.append(f"x.shape={operands[0].shape}")
            elif kind == 9:  # w dtype / rank / dims
                op = r.between(0, 4)
                w0 = operands[1]
                if op == 0:
                    operands[1] = w0.astype(r.pick([np.int32, np.float32, np.uint8]))
                elif op == 1:
                    operands[1] = w0.reshape(w0.shape[:-2] + (w0.shape[-2] * w0.shape[-1],))
                elif op == 2:
                    operands[1] = np.concatenate([w0, w0[..., :1]], -1)
                elif op == 3:
                    operands[1] = w0[1:] if w0.shape[0] > 1 else np.take(w0, [], axis=0)
                else:
                    operands[1] = np.take(w0, [], axis=1 + r.below(2))
                muts.append(f"w={operands[1].dtype.name}{operands[1].shape}")
            elif kind == 10:  # a scale/bias vector
                i = 2 + r.below(4)
                v = operands[i]
                op = r.between(0, 3)
                if op == 0:
                    operands[i] = v[:-1]
                elif op == 1:
                    operands[i] = np.concatenate([v, v[:1]])
                elif op == 2:
                    operands[i] = v.reshape(1, -1)
                else:
                    operands[i] = v.astype(r.pick([np.float16, np.int32]))
                muts.append(f"operand{i}={operands[i].dtype.name}{operands[i].shape}")
            elif kind == 11:  # result dtype
                result_dtype = r.pick([np.float16, np.int32, np.uint8, np.int8])

                muts.append(f"result_dtype={np.dtype(result_dtype).name}")
            elif kind == 12:  # result shape off by one somewhere / wrong rank
                res_override = ("perturb", r.between(0, 5))
                muts.append(f"result_perturb={res_override[1]}")
            elif kind == 13:  # in_channels off by a little
                attrs["in_channels"] = max(0, c + r.pick([-1, 1, 32, -32, c]))
                muts.append(f"in_channels={attrs['in_channels']}")
            elif kind == 14:  # groups that do not divide
                attrs["groups"] = r.pick([groups + 1, 2 * groups, c + 1, o * c])
                muts.append(f"groups={attrs['groups']}")
            else:  # flip packed-ness of the result or of x without telling
                if r.chance(128):
                    result_dtype = np.float32 if result_dtype == np.uint32 else np.uint32
                    if "bw_packed_out" in _KNOWN and attrs["conv_type"] == 0:
                        result_dtype = np.float32
                    muts.append("result_packing_flipped")
                else:
                    operands[0] = (operands[0].view(np.uint32) if operands[0].dtype == np.float32
                                   else operands[0].astype(np.float32))
                    muts.append("x_packing_flipped")
        except (IndexError, ValueError):  # a shape op that an earlier mutation made
            muts.append(f"kind{kind}_not_applicable")  # impossible (rank too low...)

    # ---- keep out of the allocatable-but-huge scratch band (see SCRATCH_*)
    x0, w0 = operands[0], operands[1]
    a = attrs
    if x0.ndim >= 3:
        hp = x0.shape[-3] + max(0, a["pad_top"]) + max(0, a["pad_bottom"])
        wp = x0.shape[-2] + max(0, a["pad_left"]) + max(0, a["pad_right"])
        scratch = _prod(x0.shape[:-3]) * hp * wp * max(1, x0.shape[-1])
        if SCRATCH_OK < scratch < SCRATCH_HUGE:
            for k in ("pad_top", "pad_bottom", "pad_left", "pad_right"):
                a[k] = min(a[k], 64)
            muts.append("pads_clamped")

    # ---- the result shape the contract asks for, then its mutations
    out_c = w0.shape[0] if w0.ndim == 4 else o
    if result_dtype == np.uint32:
        out_c = words(out_c)
    if x0.ndim >= 3 and w0.ndim == 4:
        ho = _out_dim(x0.shape[-3], a["pad_top"], a["pad_bottom"], w0.shape[1], a["dilation_h"],
                      a["stride_h"])
        wo = _out_dim(x0.shape[-2], a["pad_left"], a["pad_right"], w0.shape[2], a["dilation_w"],
                      a["stride_w"])
        res = tuple(x0.shape[:-3]) + (ho, wo, out_c)
    else:
        res = tuple(lead) + (1, 1, out_c)
    if res_override is not None:
        res = list(res)
        p = res_override[1]
        if p == 5:
            res = res[1:] if len(res) > 1 else res + [1]
        else:
            j = p % len(res)
            res[j] = res[j] + 1 if res[j] < 4 else res[j] - 1
        res = tuple(res)
    # XLA never runs a call whose result has no elements (nothing to compute),
    # and allocates the result in full: keep every dim in [1, small].
    res = tuple(max(1, min(int(d), 2**62)) for d in res)
    if _prod(res) > MAX_OUT_ELEMS:
        res = tuple(list(res[:-3]) + [1, 1, res[-1]]) if len(res) >= 3 else (1,)
    expect = _classify(operands, a, result_dtype, res)
    return Spec(target, isa, operands, res, result_dtype, a, expect, muts)


def _pack(bits, channels):
    """bool/uint64 [..., channels] -> uint32 words, LSB first (SPEC section 7)."""
    nw = (channels + 31) // 32
    padded = np.zeros(bits.shape[:-1] + (nw * 32,), np.uint64)
    padded[..., :channels] = bits
    weights = (np.uint64(1) << np.arange(32, dtype=np.uint64))
    return (padded.reshape(bits.shape[:-1] + (nw, 32)) * weights).sum(-1).astype(np.uint32)


def _unpack(words, channels):
    bits = (words[..., None] >> np.arange(32, dtype=np.uint32)) & 1
    return bits.reshape(words.shape[:-1] + (words.shape[-1] * 32,))[..., :channels].astype(bool)


def _classify(operands, a, result_dtype, res=None):
    """'valid', 'invalid' or 'grey' for the call as docs/ffi.md states it."""
    x, w, ib, isc, osc, ob = operands
    c, g = a["in_channels"], a["groups"]
    bad = []
    if a["conv_type"] not in (0, 1, 2):
        bad.append("conv_type")
    if not 0 <= a["activation"] <= 7:
        bad.append("activation")
    if min(a["stride_h"], a["stride_w"], a["dilation_h"], a["dilation_w"]) < 1:
        bad.append("stride/dilation")
    if min(a["pad_top"], a["pad_bottom"], a["pad_left"], a["pad_right"]) < 0:
        bad.append("pad")
    if c < 1 or g < 1 or c % g:
        bad.append("groups/in_channels")
    pv = a["pad_value"]
    if not np.isfinite(pv) or (a["conv_type"] == 1 and pv not in (-1.0, 0.0, 1.0)) or \
            (a["conv_type"] == 2 and pv not in (0.0, 1.0)):
        bad.append("pad_value")
    packed = x.dtype == np.uint32
    if x.dtype not in (np.float32, np.uint32) or x.ndim < 4:
        bad.append("x")
    elif c >= 1 and x.shape[-1] != ((c + 31) // 32 if packed else c):
        bad.append("x last dim")
    if packed and a["conv_type"] == 0:
        bad.append("packed x with BINARY_WEIGHTS")
    if w.dtype != np.uint32 or w.ndim != 4 or min(w.shape[:3]) < 1:
        bad.append("w")
    elif g >= 1 and (w.shape[0] % g or (c >= 1 and c % g == 0 and w.shape[3] != (c // g + 31) // 32)):
        bad.append("w dims")
    o = w.shape[0] if w.ndim == 4 else -1
    for v, n in ((ib, c), (isc, c), (osc, o), (ob, o)):
        if v.dtype != np.float32 or v.shape != (n,):
            bad.append("vector")
    if result_dtype not in (np.float32, np.uint32):
        bad.append("result dtype")
    if bad:
        return "invalid"
    eff_h = (w.shape[1] - 1) * a["dilation_h"] + 1
    eff_w = (w.shape[2] - 1) * a["dilation_w"] + 1
    if x.ndim >= 4 and (x.shape[-3] + a["pad_top"] + a["pad_bottom"] < eff_h or
                        x.shape[-2] + a["pad_left"] + a["pad_right"] < eff_w):
        return "invalid"  # empty output (docs/ffi.md: Ho, Wo >= 1)
    if res is not None:
        ho = _out_dim(x.shape[-3], a["pad_top"], a["pad_bottom"], w.shape[1], a["dilation_h"],
                      a["stride_h"])
        wo = _out_dim(x.shape[-2], a["pad_left"], a["pad_right"], w.shape[2], a["dilation_w"],
                      a["stride_w"])
        oc = (o + 31) // 32 if result_dtype == np.uint32 else o
        if tuple(res) != tuple(x.shape[:-3]) + (ho, wo, oc):
            return "invalid"
    if 0 in x.shape[-3:-1]:
        return "grey"  # H or W = 0: docs/ffi.md does not say
    if packed and g > 1 and (c // g) % 32:
        return "grey"  # docs/ffi.md: Python guarantees Cg % 32 == 0 here
    big = max(a[k] for k in ("stride_h", "stride_w", "dilation_h", "dilation_w", "pad_top",
                             "pad_bottom", "pad_left", "pad_right"))
    if big > 1 << 20:
        return "grey"  # the handler may refuse attributes this large
    hp = x.shape[-3] + a["pad_top"] + a["pad_bottom"]
    wp = x.shape[-2] + a["pad_left"] + a["pad_right"]
    if _prod(x.shape[:-3]) * hp * wp * x.shape[-1] > SCRATCH_HUGE:
        return "grey"  # a padded copy this large may fail to allocate (an error, not a crash)
    return "valid"


# ----------------------------------------------------------------- the oracle


def _act(z, act, slope):
    with np.errstate(all="ignore"):
        if act == 1:
            return np.where(z < 0, np.float32(0), z)
        if act == 2:
            return np.where(z < 0, np.float32(0), np.where(z > 6, np.float32(6), z))
        if act == 3:
            return np.where(z < 0, z * np.float32(slope), z)
        if act == 4:
            return (np.float32(1) / (np.float32(1) + np.exp(-z))).astype(np.float32)
        if act == 5:
            return np.tanh(z)
        if act == 6:
            return np.where(z < -1, np.float32(-1), np.where(z > 1, np.float32(1), z))
        if act == 7:
            return np.where(z < 0, np.float32(-1), np.float32(1))
    return z


def _oracle_dims(x, w, a):
    """The sizes both oracles start from, and x with its batch dims flattened."""
    ct, c, g = a["conv_type"], a["in_channels"], a["groups"]
    cg, o, kh, kw = c // g, w.shape[0], w.shape[1], w.shape[2]
    lead = x.shape[:-3]
    xn = x.reshape((_prod(lead),) + x.shape[-3:])
    n, h, wd = xn.shape[:3]
    return ct, c, g, cg, o, o // g, kh, kw, lead, xn, n, h, wd


def oracle(operands, a):
    """docs/ffi.md's computation in numpy: (z before activation, output, tolerance of z)."""
    x, w, ib, isc, osc, ob = operands
    ct, c, g, cg, o, og, kh, kw, lead, xn, n, h, wd = _oracle_dims(x, w, a)
    with np.errstate(all="ignore"):
        if x.dtype == np.uint32:
            b = _unpack(xn, c)
            X = b.astype(np.float64) if ct == 2 else np.where(b, 1.0, -1.0)
            A = np.ones((n, h, wd), np.float64)
        else:
            xp = (xn + ib) * isc  # float32, as the kernels
            if ct == 0:
                X = xp.astype(np.float64)
            else:
                b = ~(xp < 0)
                X = b.astype(np.float64) if ct == 2 else np.where(b, 1.0, -1.0)
            A = np.abs(xp).astype(np.float64).sum(-1) / c
    wb = _unpack(w, cg)
    Wb = wb.astype(np.float64) if ct == 2 else np.where(wb, 1.0, -1.0)
    pt, pb, pl, pr = a["pad_top"], a["pad_bottom"], a["pad_left"], a["pad_right"]
    sh, sw, dh, dw = a["stride_h"], a["stride_w"], a["dilation_h"], a["dilation_w"]
    Xp = np.pad(X, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=a["pad_value"])
    Ap = np.pad(A, ((0, 0), (pt, pb), (pl, pr)))
    ho = _out_dim(h, pt, pb, kh, dh, sh)
    wo = _out_dim(wd, pl, pr, kw, dw, sw)
    acc = np.zeros((n, ho, wo, o))
    mag = np.zeros((n, ho, wo, o))
    bsum = np.zeros((n, ho, wo))
    with np.errstate(all="ignore"):
        for dy in range(kh):
            for dx in range(kw):
                ys, xs = dy * dh, dx * dw
                patch = Xp[:, ys:ys + (ho - 1) * sh + 1:sh, xs:xs + (wo - 1) * sw + 1:sw, :]
                bsum += Ap[:, ys:ys + (ho - 1) * sh + 1:sh, xs:xs + (wo - 1) * sw + 1:sw]
                for gi in range(g):
                    pg = patch[..., gi * cg:(gi + 1) * cg]
                    wg = Wb[gi * og:(gi + 1) * og, dy, dx, :]
                    acc[..., gi * og:(gi + 1) * og] += pg @ wg.T
                    mag[..., gi * og:(gi + 1) * og] += np.abs(pg).sum(-1, keepdims=True)
        beta = (bsum / (kh * kw)).astype(np.float32)[..., None] if a["beta_scaling"] else \
            np.float32(1)
        z = acc.astype(np.float32) * osc
        z = z * beta
        z = z + ob
        # float32 sums in another order: error ~ eps * (sum of |terms|) per step
        tol = (mag * np.abs(osc) * np.abs(beta) + np.abs(ob) + 1) * 2e-5
        if ct == 0 or a["beta_scaling"]:
            tol = tol * 4
        out = _act(z.astype(np.float32), a["activation"], a["negative_slope"])
    shape = lead + (ho, wo, o)
    return z.reshape(shape), out.reshape(shape), tol.reshape(shape)


def oracle_direct(operands, a, out_shape):
    """The same as :func:`oracle`, tap by tap with Python integers, for
    attributes too large to pad arrays with (tiny outputs only)."""
    x, w, ib, isc, osc, ob = operands
    ct, c, g, cg, o, og, kh, kw, lead, xn, n, h, wd = _oracle_dims(x, w, a)
    ho, wo = out_shape[-3], out_shape[-2]
    with np.errstate(all="ignore"):
        if x.dtype == np.uint32:
            b = _unpack(xn, c)
            X = b.astype(np.float64) if ct == 2 else np.where(b, 1.0, -1.0)
            A = np.ones((n, h, wd))
        else:
            xp = (xn + ib) * isc
            X = xp.astype(np.float64) if ct == 0 else (
                (~(xp < 0)).astype(np.float64) if ct == 2 else np.where(xp < 0, -1.0, 1.0))
            A = np.abs(xp).astype(np.float64).sum(-1) / c
    wb = _unpack(w, cg)
    Wb = wb.astype(np.float64) if ct == 2 else np.where(wb, 1.0, -1.0)
    acc = np.zeros((n, ho, wo, o))
    mag = np.zeros((n, ho, wo, o))
    bsum = np.zeros((n, ho, wo))
    pv = np.full(c, a["pad_value"], np.float64)
    for yo in range(ho):
        for xo in range(wo):
            for dy in range(kh):
                y = yo * a["stride_h"] + dy * a["dilation_h"] - a["pad_top"]
                for dx in range(kw):
                    xx = xo * a["stride_w"] + dx * a["dilation_w"] - a["pad_left"]
                    inside = 0 <= y < h and 0 <= xx < wd
                    for ni in range(n):
                        col = X[ni, y, xx] if inside else pv
                        if inside:
                            bsum[ni, yo, xo] += A[ni, y, xx]
                        for gi in range(g):
                            v = col[gi * cg:(gi + 1) * cg]
                            with np.errstate(all="ignore"):
                                acc[ni, yo, xo, gi * og:(gi + 1) * og] += Wb[gi * og:(gi + 1) * og, dy, dx] @ v
                            mag[ni, yo, xo, gi * og:(gi + 1) * og] += np.abs(v).sum()
    with np.errstate(all="ignore"):
        beta = (bsum / (kh * kw)).astype(np.float32)[..., None] if a["beta_scaling"] else np.float32(1)
        z = acc.astype(np.float32) * osc
        z = z * beta
        z = z + ob
        tol = (mag * np.abs(osc) * np.abs(beta) + np.abs(ob) + 1) * 8e-5
        out = _act(z.astype(np.float32), a["activation"], a["negative_slope"])
    shape = lead + (ho, wo, o)
    return z.reshape(shape), out.reshape(shape), tol.reshape(shape)


def check_result(spec: Spec, y):
    if _oracle_can(spec):
        z, out, tol = oracle(spec.operands, spec.attrs)
    else:
        rs = spec.result_shape
        z, out, tol = oracle_direct(spec.operands, spec.attrs, rs)
    y = np.asarray(y)
    slope = abs(spec.attrs["negative_slope"]) if spec.attrs["activation"] == 3 else 1.0
    if spec.result_dtype == np.uint32:
        o = out.shape[-1]
        bits = _unpack(y, ((o + 31) // 32) * 32)
        assert not bits[..., o:].any(), "packed result has trailing bits set"
        got = bits[..., :o]
        want = ~(out < 0)
        clear = ~(np.abs(z) <= tol * 4)  # near 0 the sign may round either way
        bad = (got != want) & clear
        assert not bad.any(), f"packed bits differ at {np.argwhere(bad)[:5].tolist()}"
        return
    nan_o, nan_y = np.isnan(out), np.isnan(y)
    sure = ~(np.abs(z) <= tol * 4) if spec.attrs["activation"] == 7 else np.ones_like(nan_o)
    assert np.array_equal(nan_o & sure, nan_y & sure), \
        f"NaN pattern differs at {np.argwhere((nan_o != nan_y) & sure)[:5].tolist()}"
    ok = nan_o | ~sure | (out == y) | (np.abs(out - y) <= tol * max(1.0, slope))
    assert ok.all(), (f"result differs from the oracle at {np.argwhere(~ok)[:5].tolist()}: "
                      f"got {y[~ok][:5]}, want {out[~ok][:5]} (tol {tol[~ok][:5]})")


# ----------------------------------------------------------------- running

_jb = None


def setup():
    global _jb
    import jax

    if "cuda" not in _WANT_TARGETS:
        jax.config.update("jax_platforms", "cpu")
    import jax_binconv as jb

    _jb = jb
    got = sorted(k for k in _WANT_TARGETS if k in jb.lowering.available)
    if not got:
        raise SystemExit(f"ffi_fuzz: none of {_WANT_TARGETS} loaded: {jb.lowering.load_errors}")
    return got


def run_spec(spec: Spec):
    """Run one call; raise AssertionError when it breaks its expectation."""
    import jax

    if spec.isa is not None:
        _jb.lowering.available["cpu"].set_isa(spec.isa)
    a = spec.attrs
    attrs = dict(
        conv_type=np.int32(a["conv_type"]), in_channels=int(a["in_channels"]),
        stride_h=int(a["stride_h"]), stride_w=int(a["stride_w"]),
        dilation_h=int(a["dilation_h"]), dilation_w=int(a["dilation_w"]),
        pad_top=int(a["pad_top"]), pad_bottom=int(a["pad_bottom"]),
        pad_left=int(a["pad_left"]), pad_right=int(a["pad_right"]), groups=int(a["groups"]),
        pad_value=np.float32(a["pad_value"]), beta_scaling=bool(a["beta_scaling"]),
        activation=np.int32(a["activation"]), negative_slope=np.float32(a["negative_slope"]))
    call = jax.ffi.ffi_call(TARGETS[spec.target],
                            jax.ShapeDtypeStruct(spec.result_shape, spec.result_dtype))
    try:
        y = np.asarray(call(*spec.operands, **attrs))
    except Exception as e:  # noqa: BLE001 - any error is an error return
        if spec.expect == "valid":
            raise AssertionError(f"valid call failed: {type(e).__name__}: {e}\n{describe(spec)}")
        return "error"
    if spec.expect == "invalid":
        raise AssertionError(f"invalid call returned a result of shape {y.shape}\n{describe(spec)}")
    if spec.expect == "valid" or (spec.expect == "grey" and (_oracle_can(spec) or
                                                            _oracle_direct_can(spec))):
        try:
            check_result(spec, y)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{describe(spec)}") from None
    return "ok"


def _oracle_can(spec: Spec) -> bool:
    a = spec.attrs
    return max(a[k] for k in ("stride_h", "stride_w", "dilation_h", "dilation_w", "pad_top",
                              "pad_bottom", "pad_left", "pad_right")) <= 64


def _oracle_direct_can(spec: Spec) -> bool:
    rs = spec.result_shape
    return len(rs) >= 3 and _prod(rs[:-1]) <= 64


def describe(spec: Spec) -> str:
    ops = ", ".join(f"{o.dtype.name}{list(o.shape)}" for o in spec.operands)
    return (f"target={spec.target} isa={spec.isa} expect={spec.expect} mutations={spec.mutations}\n"
            f"operands: {ops}\nresult: {np.dtype(spec.result_dtype).name}"
            f"{list(spec.result_shape)}\nattrs: {spec.attrs}")


_targets: list = []
_isas: tuple = ("scalar",)
_stats = {"ok": 0, "error": 0, "inputs": 0}


_last_path = os.environ.get("FFI_FUZZ_LAST")
_history_path = os.environ.get("FFI_FUZZ_HISTORY")


def test_one_input(data: bytes):
    if _last_path:  # so that a crash (signal) can be replayed: the input it died on
        with open(_last_path, "w") as fh:
            fh.write(data.hex())
    _stats["inputs"] = _stats.get("inputs", 0) + 1
    if _stats["inputs"] % 200 == 0:
        # Every new shape or attribute set is a new compiled executable; JAX
        # caches them all, which a long run would otherwise keep forever.
        import jax

        jax.clear_caches()
    spec = decode(data, _targets, _isas)
    if _history_path:
        with open(_history_path, "a") as fh:
            fh.write(f"{data.hex()} {spec.target} {spec.isa} {spec.expect} {spec.mutations}\n")
    _stats[run_spec(spec)] += 1


def _init():
    global _targets, _isas
    _targets = setup()
    if "cpu" in _targets:
        _isas = tuple(_jb.lowering.available["cpu"].available_isas())
    print(f"ffi_fuzz: targets {_targets}, cpu ISAs {list(_isas)}", file=sys.stderr)


def main(argv):
    if len(argv) > 1 and argv[1] == "--replay":
        _init()
        files = []
        for p in argv[2:]:
            files += sorted(os.path.join(p, f) for f in os.listdir(p)) if os.path.isdir(p) else [p]
        for f in files:
            with open(f, "rb") as fh:
                test_one_input(fh.read())
        print(f"ffi_fuzz: replayed {len(files)} inputs: {_stats}", file=sys.stderr)
        return 0
    if len(argv) > 1 and argv[1] == "--random":
        _init()
        seconds = float(argv[2]) if len(argv) > 2 else 60.0
        rng = random.Random(int(os.environ.get("FFI_FUZZ_SEED", "0")))
        keep_going = os.environ.get("FFI_FUZZ_KEEP_GOING") == "1"
        t0, count, failures = time.time(), 0, {}
        while time.time() - t0 < seconds:
            data = bytes(rng.getrandbits(8) for _ in range(rng.choice([16, 48, 96])))
            try:
                test_one_input(data)
            except AssertionError as e:
                print(f"ffi_fuzz: failing input (hex): {data.hex()}", file=sys.stderr)
                if not keep_going:
                    raise
                key = str(e).splitlines()[0][:60]
                if key not in failures:
                    print(f"ffi_fuzz: {e}", file=sys.stderr)
                failures.setdefault(key, []).append(data.hex())
            count += 1
        for key, inputs in failures.items():
            print(f"ffi_fuzz: {len(inputs)} x {key!r}, e.g. {inputs[0]}", file=sys.stderr)
        print(f"ffi_fuzz: {count} random inputs in {seconds:.0f} s: {_stats}", file=sys.stderr)
        return 0
    import atheris

    _init()
    # Coverage feedback from the harness's own decisions (which mutation,
    # which expectation, which branch of the checks); jax itself is left
    # uninstrumented, it would only slow every input down.
    g = globals()
    for name in ("decode", "_classify", "run_spec", "check_result", "oracle"):
        g[name] = atheris.instrument_func(g[name])
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
