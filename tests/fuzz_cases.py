"""Random configurations of binary_conv2d (seeded draws) for the kernel
fuzz tests: tests/test_gpu_fuzz.py (the CUDA kernels) and test_conv.py's
CPU-kernel draws. Aimed at the CUDA fast kernel's geometry; see
test_gpu_fuzz.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from conftest import pad_values, rand_vec, rand_x

import jax_binconv as jb
from jax_binconv.conv import _resolve_padding

# Binary MACs of a drawn case at most: the reference runs on the CPU.
MAX_MACS = 4e8

# The kernel policy of a draw: the library's default ("auto"), the fast
# kernel on mma.sync ("off"), on wgmma with A from registers ("rs") or from
# shared memory where that form runs ("on"), or the general kernel.
POLICIES = ["auto", "auto", "off", "rs", "on", "on", "on", "general"]
# The fast kernel's channel counts (64 or a multiple of 128), and others.
FAST_C = [64, 128, 256, 384, 512, 640, 768, 1024]


def _out_hw(h, w, eff, strides, pad):
    """Output rows and columns (0 where the padded input is smaller than the
    window), with binary_conv2d's own reading of `pad`."""
    pt, pb, pl, pr = _resolve_padding(pad, (h, w), eff, strides)
    return (max(0, (h + pt + pb - eff[0]) // strides[0] + 1),
            max(0, (w + pl + pr - eff[1]) // strides[1] + 1))


def configuration(index, seed=0):
    """Draw `index` of `seed`: a dict of the case. Sizes are cut (images,
    then rows) to at most MAX_MACS."""
    rng = np.random.default_rng([seed, index])
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    t = pick(["xnor", "and", "xnor", "and", "binary_weights"])
    if t != "binary_weights" and rng.random() < 0.8:
        c, groups = pick(FAST_C), 1
    else:
        groups = pick([1, 1, 2, 3])
        c = groups * int(rng.integers(1, 71))
    o = pick([32, 64, 128, 256]) if rng.random() < 0.4 else int(rng.integers(1, 301))
    o = groups * max(1, o // groups)
    kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    if rng.random() < 0.4:
        kh = kw = 3
    sh, sw = pick([1, 1, 1, 2, 3]), pick([1, 1, 1, 1, 2, 3])
    dh, dw = pick([1, 1, 1, 2]), pick([1, 1, 1, 2])
    # Many small images (several to a 128-row tile), a few larger ones, or
    # more 128-row tiles than an H100 has SMs (blocks loop over tiles).
    shape = pick(["small", "few", "few", "many"])
    if shape == "small":
        n, h, w = int(rng.integers(1, 81)), int(rng.integers(1, 9)), int(rng.integers(1, 9))
    elif shape == "few":
        n, h, w = int(rng.integers(1, 6)), int(rng.integers(1, 41)), int(rng.integers(1, 41))
    else:
        n, h, w = int(rng.integers(8, 65)), int(rng.integers(14, 41)), int(rng.integers(14, 41))
    r = rng.random()
    pad = ("SAME" if r < 0.4 else "VALID" if r < 0.55 else
           tuple(tuple(int(v) for v in rng.integers(0, 5, 2)) for _ in range(2)))
    eff_h, eff_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    h, w = max(h, eff_h), max(w, eff_w)  # (VALID: at least one output pixel)
    ho, wo = _out_hw(h, w, (eff_h, eff_w), (sh, sw), pad)
    per_row = wo * o * kh * kw * (c // groups)
    while n > 1 and n * ho * per_row > MAX_MACS:
        n = max(1, n // 2)
    while h > eff_h and ho * per_row > MAX_MACS:
        h = max(eff_h, h // 2)
        ho = _out_hw(h, w, (eff_h, eff_w), (sh, sw), pad)[0]
    if ho <= 0 or wo <= 0:  # (explicit padding smaller than the window)
        pad = "SAME"
    output = pick(["float", "packed"])
    # (bin() of relu, relu6 and sigmoid is +1 everywhere: packed output
    # draws them rarely)
    acts = ([None, "relu", "relu6", "leaky_relu", "sigmoid", "tanh", "hard_tanh", "sign"]
            if output == "float" else
            [None, None, "leaky_relu", "tanh", "hard_tanh", "sign", "sign", "relu"])
    return dict(
        t=t, c=c, o=o, groups=groups, k=(kh, kw), strides=(sh, sw), dilation=(dh, dw),
        shape=(n, h, w), padding=pad, pv=pick(pad_values(t)),
        x_packed=t != "binary_weights" and rng.random() < 0.5, output=output,
        activation=pick(acts), beta=rng.random() < 0.4, input_affine=rng.random() < 0.5,
        policy=pick(POLICIES), seed=int(rng.integers(0, 2**20)),
        # (drawn last: the draws before them are those of the first version)
        dtype=pick(["float32"] * 4 + ["bfloat16", "float16"]),
        nchw=rng.random() < 0.2)


def case_inputs(cfg):
    """(x, w, keyword arguments of binary_conv2d) of a drawn case: numpy
    arrays (a PackedActivations of them for packed x)."""
    t, c, o, groups, seed = cfg["t"], cfg["c"], cfg["o"], cfg["groups"], cfg["seed"]
    n, h, w = cfg["shape"]
    # float x in float32, bfloat16 or float16; NCHW / OIHW for float x and
    # output (packed activations are NHWC words)
    low = cfg["dtype"] != "float32" and not cfg["x_packed"]
    x = np.asarray(rand_x(seed, (n, h, w, c), getattr(jnp, cfg["dtype"]) if low else jnp.float32))
    wt = np.asarray(rand_x(seed + 1, cfg["k"] + (c // groups, o)))
    nchw = cfg["nchw"] and not cfg["x_packed"] and cfg["output"] == "float"
    k = cfg["k"][0] * cfg["k"][1] * (c // groups)
    # Output biases of the accumulators' size, so that packed output's
    # thresholds and the activations' bends fall among the values.
    kw = dict(type=t, strides=cfg["strides"], dilation=cfg["dilation"], padding=cfg["padding"],
              groups=groups, pad_value=cfg["pv"], beta_scaling=cfg["beta"],
              activation=cfg["activation"], output=cfg["output"],
              output_scale=np.asarray(rand_vec(seed + 2, o, 0.25, 2.0, signed=True)),
              output_bias=np.asarray(rand_vec(seed + 3, o, -0.3, 0.3))
              * (np.float32(np.sqrt(k)) if not cfg["beta"] else np.float32(1.0)))
    if nchw:
        x, wt = x.transpose(0, 3, 1, 2), wt.transpose(3, 2, 0, 1)
        kw["dimension_numbers"] = ("NCHW", "OIHW", "NCHW")
    if cfg["x_packed"]:
        x = jax.tree.map(np.asarray, jb.pack_activations(x))
    elif cfg["input_affine"]:
        kw.update(input_bias=np.asarray(rand_vec(seed + 4, c, -0.3, 0.3)),
                  input_scale=np.asarray(rand_vec(seed + 5, c, 0.5, 1.5, signed=True)))
    return x, wt, kw


def _fits(cfg):
    """Whether cfg's window fits its padded input (at least one output pixel)."""
    n, h, w = cfg["shape"]
    eff = tuple((k - 1) * d + 1 for k, d in zip(cfg["k"], cfg["dilation"]))
    ho, wo = _out_hw(h, w, eff, cfg["strides"], cfg["padding"])
    return ho > 0 and wo > 0


def simpler(cfg):
    """The configurations one step plainer than `cfg`, each changing one
    field toward the plainest case (no options, float32 NHWC, one small
    image, few channels); those whose window does not fit are left out.
    What shrink() walks."""
    plain = dict(activation=None, beta=False, input_affine=False, output="float",
                 x_packed=False, dtype="float32", nchw=False, policy="auto",
                 strides=(1, 1), dilation=(1, 1), padding="VALID", pv=0.0)
    for key, value in plain.items():
        if cfg[key] != value:
            yield {**cfg, key: value}
    n, h, w = cfg["shape"]
    for shape in ((1, 1, 1), (1, h, w), (n // 2, h, w), (n, h // 2, w), (n, h, w // 2), (n, h - 1, w),
                  (n, h, w - 1)):
        if min(shape) >= 1 and shape != (n, h, w):
            yield {**cfg, "shape": shape}
    kh, kw = cfg["k"]
    for k in ((1, 1), (kh - 1, kw), (kh, kw - 1)):
        if min(k) >= 1 and k != (kh, kw):
            yield {**cfg, "k": k}
    g, c, o = cfg["groups"], cfg["c"], cfg["o"]
    if g > 1:
        yield {**cfg, "groups": 1, "c": c // g, "o": max(1, o // g)}
    # channels: one a group, the next smaller of the fast kernel's counts,
    # half
    smaller_c = [v for v in FAST_C if v < c] if c in FAST_C else []
    for cc in dict.fromkeys([g] + smaller_c[-1:] + [g * max(1, c // g // 2)]):
        if cc != c:
            yield {**cfg, "c": cc}
    for oo in dict.fromkeys((g, g * max(1, o // g // 2))):
        if oo != o:
            yield {**cfg, "o": oo}


def shrink(cfg, fails, budget=40):
    """A plainer configuration that still fails: greedily the first of
    simpler(cfg) for which fails(cfg) is true, from there again, until none
    is or `budget` calls of `fails` are spent. `fails` returns whether a
    configuration shows the failure (an error of another kind, e.g. a
    combination the library rejects, counts as not failing). Returns
    (configuration, calls made)."""
    calls = 0
    while calls < budget:
        for nxt in simpler(cfg):
            if not _fits(nxt):
                continue
            calls += 1
            if fails(nxt):
                cfg = nxt
                break
            if calls >= budget:
                break
        else:
            break
    return cfg, calls


def fails_like(check, cfg, error=AssertionError):
    """Whether check(cfg) raises `error` (the comparison failing); any other
    exception counts as not failing (see shrink)."""
    try:
        check(cfg)
    except error:
        return True
    except Exception:  # noqa: BLE001 (a configuration the library rejects)
        return False
    return False


def check_draw(cfg, check, budget):
    """check(cfg)'s result; if it fails (AssertionError), the same error
    with the draw and, unless `budget` is 0, the plainest configuration
    found that still fails check(configuration) (shrink)."""
    try:
        return check(cfg)
    except AssertionError as error:
        msg = f"draw {cfg} failed:\n{error}"
        if budget > 0:
            small, calls = shrink(cfg, lambda c: fails_like(check, c), budget)
            msg += (f"\nplainest configuration that still fails ({calls} tries; "
                    f"replay with fuzz_cases.case_inputs): {small}")
        raise AssertionError(msg) from None
