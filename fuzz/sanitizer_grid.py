"""A compact reference grid for the sanitized kernels (tests/test_sanitizers.py).

Run inside a process that imports the ASan/UBSan build of jax_binconv (see
fuzz/asan_build.py). ``grid``: every case runs through the CPU kernel on each
ISA this machine has and through the Metal shim, and is compared with the
pure-JAX reference (integer accumulators exactly). ``hostile``: FFI calls with
attribute values that overflow int64 arithmetic must come back as errors.
Prints one line per failure and exits 1 on any; a sanitizer report aborts
the process (halt_on_error) and the caller reads it from stderr.
"""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jax_binconv as jb

jax.config.update("jax_default_matmul_precision", "highest")


def rand(seed, shape):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(shape).astype(np.float32)
    u = rng.random(shape)
    v[u < 0.1] = 0.0
    v[(u >= 0.1) & (u < 0.15)] = -0.0
    return jnp.asarray(v)


def grid_cases():
    T = ["binary_weights", "xnor", "and"]
    pv = {"binary_weights": [0.0, -0.75], "xnor": [0.0, 1.0, -1.0], "and": [0.0, 1.0]}
    cases = []
    for t in T:
        for c, o in ((1, 3), (31, 7), (33, 20), (64, 33), (130, 40)):
            cases.append((t, (2, 7, 6, c), (3, 3, c, o), {}))
        for k, pad in (((1, 1), "VALID"), ((5, 5), "SAME"), ((1, 3), ((0, 2), (1, 0))),
                       ((4, 4), ((3, 3), (3, 3)))):
            cases.append((t, (1, 6, 5, 40), k + (40, 9), {"padding": pad}))
        for s, d in (((2, 2), (1, 1)), ((1, 3), (2, 1)), ((3, 2), (2, 3))):
            cases.append((t, (2, 11, 10, 35), (3, 3, 35, 12),
                          {"strides": s, "dilation": d, "padding": "SAME"}))
        for v in pv[t]:
            cases.append((t, (1, 6, 6, 70), (3, 3, 70, 8), {"pad_value": v, "padding": ((2, 1), (0, 3))}))
        for g, c, o in ((2, 66, 8), (4, 64, 12), (3, 96, 9)):
            cases.append((t, (1, 6, 6, c), (3, 3, c // g, o), {"groups": g}))
        cases.append((t, (2, 7, 7, 45), (3, 3, 45, 20),
                      {"beta_scaling": True, "activation": "tanh", "input_bias": 0.1,
                       "input_scale": -1.5, "output_scale": 0.25, "output_bias": -1.0}))
        cases.append((t, (1, 1, 1, 40), (3, 3, 40, 5), {"padding": "SAME", "beta_scaling": True}))
        cases.append((t, (0, 5, 5, 8), (3, 3, 8, 4), {}))
        # Fewer outputs than a vector block, every border class (the fuzzer's
        # heap-buffer-overflow in the XNOR padding-correction table, see below).
        for o in (1, 5):
            cases.append((t, (2, 8, 6, 32), (3, 4, 32, o),
                          {"strides": (2, 1), "dilation": (1, 3), "padding": ((4, 0), (4, 4)),
                           "beta_scaling": True, "activation": "tanh"}))
        if t != "binary_weights":
            cases.append((t, (2, 6, 6, 66), (3, 3, 66, 70), {"output": "packed"}))
            cases.append((t, "packed", (3, 3, 96, 16), {"groups": 1, "beta_scaling": True}))
            cases.append((t, "packed", (3, 3, 48, 16), {"groups": 2, "pad_value": 1.0}))
            # ffi_fuzz input 9cafb990...: read 4 bytes past corr_tab in finish_tile_act
            # (cpp/cpu/conv_driver.h) with packed x, O = 1 < OBW, AVX2.
            cases.append((t, "packed32", (3, 4, 32, 1),
                          {"strides": (2, 1), "dilation": (1, 3), "padding": ((4, 0), (4, 4)),
                           "beta_scaling": True, "activation": "tanh"}))
    return cases


def run_grid():
    cpu = jb.lowering.available.get("cpu")
    shim = jb.lowering.available.get("metal_shim")
    if cpu is None:
        print(f"FAIL: the sanitized _cpu did not load: {jb.lowering.load_errors.get('_cpu')}")
        return 1
    isas = cpu.available_isas()
    failures, count = [], 0
    cases = grid_cases()
    xs_all, ws_all = [], []
    for i, (t, xs, ws, kw) in enumerate(cases):
        if xs == "packed":
            xs_all.append(jb.pack_activations(rand(i, (2, 7, 6, 96))))
        elif xs == "packed32":
            xs_all.append(jb.pack_activations(rand(i, (3, 8, 6, 32))))
        else:
            xs_all.append(rand(i, xs))
        ws_all.append(rand(i + 1000, ws))

    def all_cases(fn):
        # Every case in one program: one compilation per kernel, not one per case.
        def run(xs, ws):
            outs = []
            for (t, _, _, kw), x, w in zip(cases, xs, ws):
                y = fn(x, w, type=t, **kw)
                outs.append(y.words if kw.get("output") == "packed" else y)
            return outs
        return jax.jit(run)

    want_all = [np.asarray(v) for v in all_cases(jb.reference.binary_conv2d)(xs_all, ws_all)]
    # The CPU ISA is chosen per call: the same executable runs on every ISA.
    results = []
    for kernel in ["native"] + (["metal_shim"] if shim is not None else []):
        with jb.config.cpu_kernel_override(kernel):
            fk = all_cases(jb.binary_conv2d)
            for isa in (isas if kernel == "native" else [None]):
                if isa is not None:
                    cpu.set_isa(isa)
                results.append((kernel, isa, [np.asarray(v) for v in fk(xs_all, ws_all)]))
    for kernel, isa, got_all in results:
        for (t, xs, ws, kw), got, want in zip(cases, got_all, want_all):
            count += 1
            exact = t != "binary_weights" and not {"activation", "output_scale", "beta_scaling"} & set(kw)
            tol = 0 if exact or kw.get("output") == "packed" else 1e-5 * max(1.0, float(np.abs(want).max(initial=0)))
            if t == "binary_weights":
                tol *= 8
            if got.shape != want.shape or not np.allclose(got, want, rtol=0 if tol == 0 else 1e-5,
                                                          atol=tol, equal_nan=True):
                failures.append(f"{kernel}/{isa} type={t} x={xs} w={ws} {kw}: max diff "
                                f"{np.max(np.abs(got.astype(np.float64) - want)) if got.shape == want.shape else 'shape'}")
    cpu.set_isa(isas[-1])
    for line in failures:
        print("FAIL:", line)
    print(f"grid: {count} kernel runs, {len(failures)} failures")
    return 1 if failures else 0


# (x shape, w shape, result shape, attribute overrides): each must be an error.
HOSTILE = [
    ((1, 4, 4, 8), (4, 1, 1, 1), (1, 1, 4, 4),
     {"pad_top": 2**62, "pad_bottom": 2**62}),                     # H + pads overflows
    ((1, 4, 4, 8), (4, 1, 1, 1), (1, 1, 4, 4),
     {"pad_top": 2**61, "pad_bottom": 2**61, "stride_h": 2**63 - 1}),  # N*Hp*Wp*words overflows
    ((1, 4, 4, 8), (4, 1, 1, 1), (1, 4, 1, 4),
     {"pad_left": 2**62 - 5, "pad_right": 1, "stride_w": 2**62}),
    ((1, 4, 4, 8), (4, 3, 1, 1), (1, 1, 4, 4), {"dilation_h": 2**62}),  # (KH-1)*dil overflows
    ((1, 4, 4, 8), (4, 1, 1, 1), (1, 4, 4, 4), {"stride_h": -(2**63)}),
    ((1, 4, 4, 8), (4, 1, 1, 1), (1, 4, 4, 4), {"groups": 2**63 - 1}),
    ((1, 4, 4, 8), (4, 1, 1, 1), (1, 4, 4, 4), {"in_channels": -(2**63)}),
    ((1, 4, 4, 8), (4, 1, 1, 1), (1, 4, 4, 4), {"pad_right": -1}),
    ((1, 4, 4, 8), (4, 1, 1, 1), (1, 4, 4, 4), {"conv_type": -(2**31)}),
    ((1, 4, 4, 8), (4, 1, 1, 1), (1, 4, 4, 4), {"activation": 2**31 - 1}),
]


def run_hostile(want=("cpu", "metal_shim")):
    cases = list(HOSTILE)
    # Each attribute bounded by 2^24, but N*Hp*Wp*words = 2^64 (a batch of 512
    # 1x1x2048 images padded by 2^24 on every side).
    p = 2**24
    cases.append(((512, 1, 1, 2048), (4, 1, 1, 64), (512, 2, 2, 4),
                  {"pad_top": p, "pad_bottom": p - 1, "pad_left": p, "pad_right": p - 1,
                   "stride_h": p, "stride_w": p}))
    targets = [k for k in want if k in jb.lowering.available]
    if not targets:
        print(f"FAIL: none of {want} loaded: {jb.lowering.load_errors}")
        return 1
    failures, count = [], 0
    for xs, ws, rs, over in cases:
        attrs = dict(conv_type=np.int32(1), in_channels=xs[-1], stride_h=1, stride_w=1,
                     dilation_h=1, dilation_w=1, pad_top=0, pad_bottom=0, pad_left=0,
                     pad_right=0, groups=1, pad_value=np.float32(0), beta_scaling=False,
                     activation=np.int32(0), negative_slope=np.float32(0))
        for k, v in over.items():
            attrs[k] = np.int32(v) if k in ("conv_type", "activation") else int(v)
        o = ws[0]
        ops = (np.ones(xs, np.float32), np.zeros(ws, np.uint32), np.zeros(xs[-1], np.float32),
               np.ones(xs[-1], np.float32), np.ones(o, np.float32), np.zeros(o, np.float32))
        for tgt in targets:
            print(f"hostile {tgt} {over}", flush=True)  # the last line names a crash
            count += 1
            call = jax.ffi.ffi_call(jb.TARGETS[tgt], jax.ShapeDtypeStruct(rs, np.float32))
            try:
                call(*ops, **attrs).block_until_ready()
                failures.append(f"{tgt} {over}: returned a result instead of an error")
            except Exception as e:  # noqa: BLE001
                if "INVALID_ARGUMENT" not in str(e):
                    failures.append(f"{tgt} {over}: {type(e).__name__}: {str(e)[:200]}")
    for line in failures:
        print("FAIL:", line)
    print(f"hostile: {count} calls, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "grid"
    if what == "grid":
        sys.exit(run_grid())
    sys.exit(run_hostile(tuple(sys.argv[2].split(",")) if len(sys.argv) > 2 else ("cpu", "metal_shim")))
