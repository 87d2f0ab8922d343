"""Device-side diagnosis helper: times the public API against a direct
ffi_call of our target, shows the compiled HLO of one call, and (mode
"ncu") runs each configuration a few times for Nsight Compute to capture.

    python cpp/cuda/tools/profile_run.py [time|ncu|hlo]
"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jax_binconv as jb

CFGS = [("L7", 256, 56, 256, 256), ("L6", 256, 28, 256, 256), ("L3", 1, 14, 256, 256),
        ("L4", 256, 7, 512, 512)]
if len(sys.argv) > 2:
    CFGS = [c for c in CFGS if c[0] in sys.argv[2].split(",")]


def make(name, n, hw, c, o, k=3):
    rng = np.random.default_rng(0)
    gpu = jax.devices("gpu")[0]
    x = jax.device_put(rng.standard_normal((n, hw, hw, c), np.float32), gpu)
    pw = jax.device_put(jb.pack_weights(rng.standard_normal((k, k, c, o), np.float32)), gpu)
    xp = jb.pack_activations(x)
    return x, xp, pw


def direct(words, wwords, c, o, packed_out):
    n, h, w, _ = words.shape
    out_c = -(-o // 32) if packed_out else o
    call = jax.ffi.ffi_call(jb.TARGETS["cuda"], jax.ShapeDtypeStruct(
        (n, h, w, out_c), jnp.uint32 if packed_out else jnp.float32))
    return call(words, wwords, jnp.zeros(c), jnp.ones(c), jnp.ones(o), jnp.zeros(o),
                conv_type=np.int32(1), in_channels=c, stride_h=1, stride_w=1, dilation_h=1,
                dilation_w=1, pad_top=1, pad_bottom=1, pad_left=1, pad_right=1, groups=1,
                pad_value=np.float32(0), beta_scaling=False, activation=np.int32(0),
                negative_slope=np.float32(0))


def loop(f, inner, unroll):
    def body(_, carry):
        xx, acc = carry
        xx, acc = lax.optimization_barrier((xx, acc))
        y = f(xx)
        y = y.words if isinstance(y, jb.PackedActivations) else y
        return xx, acc + y.reshape(-1)[0].astype(jnp.float32)
    return jax.jit(lambda xx: lax.fori_loop(0, inner, body, (xx, jnp.float32(0)), unroll=unroll)[1])


def tm(run, x, reps=10):
    run(x).block_until_ready()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run(x).block_until_ready()
        ts.append(time.perf_counter() - t0)
    return min(ts)


mode = sys.argv[1] if len(sys.argv) > 1 else "time"
for name, n, hw, c, o in CFGS:
    x, xp, pw = make(name, n, hw, c, o)
    k = 1 if name == "L6" else 3
    if k == 1:
        x, xp, pw = make(name, n, hw, c, o, k=1)
    pub_p = lambda words: jb.binary_conv2d(jb.PackedActivations(words, c), pw, output="packed",
                                          padding="SAME")
    pub_f = lambda xx: jb.binary_conv2d(xx, pw, padding="SAME")
    if mode == "hlo":
        txt = jax.jit(pub_p).lower(xp.words).compile().as_text()
        print(name, "packed HLO ops:", [l.strip()[:110] for l in txt.splitlines()
                                        if "custom-call" in l or "fusion(" in l or " while(" in l][:12])
        continue
    if mode == "ncu":
        for _ in range(2):
            jax.block_until_ready(jax.jit(pub_p)(xp.words))
            jax.block_until_ready(jax.jit(pub_f)(x))
        continue
    if mode == "ncu_packed":  # one packed call per configuration
        jax.block_until_ready(jax.jit(pub_p)(xp.words))
        continue
    inner = 40
    for label, f, arg in [("pub packed", pub_p, xp.words), ("pub float", pub_f, x)]:
        for unroll in (1, 8):
            t = tm(loop(f, inner, unroll), arg) / inner * 1e3
            print(f"{name} N={n} {label:11} unroll={unroll}: {t:.4f} ms", flush=True)
    if k == 3:
        f = lambda words: direct(words, pw.words, c, o, True)
        t = tm(loop(f, inner, 8), xp.words) / inner * 1e3
        print(f"{name} N={n} direct ffi packed unroll=8: {t:.4f} ms", flush=True)
