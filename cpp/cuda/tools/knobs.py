"""A/B timing of a _cuda knob's values: N=256 (or N) applications of BENCH
layers, packed (or float) in and out, timed as benchmarks/gpu.py times
them, the values alternating for ROUNDS rounds against the same run's cuDNN
bf16. Each row: ms per application (min of the repetitions), the ratio, and
what the call ran.

    python cpp/cuda/tools/knobs.py L2,L3,L4,L7 set_fast_tables_form wide,spread [3] [packed] [256]
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jax_binconv as jb
from jax_binconv import _cuda
from jax_binconv._bench_layers import LAYERS

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "benchmarks"))
from gpu import bench  # noqa: E402


def main(layers, knob, values, rounds="3", io="packed", n="256"):
    n, rounds = int(n), int(rounds)
    setter = getattr(_cuda, knob)
    getter = getattr(_cuda, "get_" + knob[4:], None)
    before = getter() if getter else None
    rng = np.random.default_rng(0)
    gpu = jax.devices("gpu")[0]
    print(f"device: {gpu.device_kind}; {knob} in {values}; {io}; N={n}; "
          f"wgmma registers {_cuda.wg_max_registers()}", flush=True)
    for name in layers.split(","):
        h, w, c, o, k, s = LAYERS[name]
        x = rng.standard_normal((n, h, w, c), np.float32)
        wf = rng.standard_normal((k, k, c, o)).astype(np.float32)
        wp = jax.device_put(jb.pack_weights(wf), gpu)
        if io == "packed":
            xin = jax.device_put(jb.pack_activations(x).words, gpu)

            def ours(words, wt, s=s, c=c):
                return jb.binary_conv2d(jb.PackedActivations(words, c), wt, strides=s,
                                        padding="SAME", output="packed")
        else:
            xin = jax.device_put(x, gpu)

            def ours(xx, wt, s=s):
                return jb.binary_conv2d(xx, wt, strides=s, padding="SAME")

        def cudnn(xx, wl, s=s):
            return lax.conv_general_dilated(xx, wl, (s, s), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

        x16 = jax.device_put(jnp.asarray(x, jnp.bfloat16), gpu)
        w16 = jax.device_put(jnp.asarray(wf, jnp.bfloat16), gpu)
        bf16 = bench(cudnn, (x16, w16), 10)[0]
        best = {}
        for r in range(rounds):
            for v in values.split(","):
                setter(int(v) if v.lstrip("-").isdigit() else v)
                jax.clear_caches()  # (a captured CUDA graph would keep the old value)
                t = bench(ours, (xin, wp), 10)[0]
                best[v] = min(best.get(v, t), t)
                extra = ""
                if hasattr(_cuda, "last_tables_form"):
                    extra = f" tables {_cuda.last_tables_form()} rounds {_cuda.last_tile_rounds()}"
                print(f"  {name} r{r} {v:>8}: {t:.4f} ms  bf16 {bf16:.4f} ms  {bf16 / t:5.2f}x  "
                      f"[{_cuda.last_kernel()} {_cuda.last_wgmma_form()}{extra}]", flush=True)
        print(f"  {name} best: " + ", ".join(f"{v} {t:.4f} ({bf16 / t:.2f}x)" for v, t in best.items()),
              flush=True)
    if before is not None:
        setter(before)


if __name__ == "__main__":
    main(*sys.argv[1:])
