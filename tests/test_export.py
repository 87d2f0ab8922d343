"""jax.export round trip: serialize a function using binary_conv2d, then load
and call it in a fresh process that only imports jax_binconv."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rand_x

import jax_binconv as jb

pytest.importorskip("flatbuffers", reason="jax.export serialization needs the flatbuffers package")


def _model(x, w1, w2):
    y = jb.binary_conv2d(x, w1, type="xnor", beta_scaling=True, activation="relu",
                         output_scale=0.1)
    p = jb.binary_conv2d(y, w2, type="xnor", output="packed")
    return jb.binary_conv2d(p, w2[:, :, :, :8].transpose(0, 1, 3, 2)[:, :, :8, :], type="and")


def test_export_round_trip_in_fresh_process(tmp_path):
    x = rand_x(0, (2, 8, 8, 16))
    w1 = rand_x(1, (3, 3, 16, 8))
    w2 = rand_x(2, (3, 3, 8, 8))
    disabled = [jax.export.DisabledSafetyCheck.custom_call(t) for t in jb.TARGETS.values()]
    exp = jax.export.export(jax.jit(_model), disabled_checks=disabled)(x, w1, w2)
    # Exported for the default backend: our CPU target here, the CUDA one
    # (with its workspace result) on a GPU machine.
    backend = jax.default_backend()
    assert jb.TARGETS["cuda" if backend == "gpu" else backend] in exp.mlir_module()
    blob = tmp_path / "model.bin"
    blob.write_bytes(exp.serialize())
    np.savez(tmp_path / "inputs.npz", x=np.asarray(x), w1=np.asarray(w1), w2=np.asarray(w2))
    expected = np.asarray(jax.jit(_model)(x, w1, w2))
    script = textwrap.dedent(f"""
        import numpy as np, jax
        import jax_binconv  # registers the FFI targets
        exp = jax.export.deserialize(open({str(blob)!r}, "rb").read())
        a = np.load({str(tmp_path / 'inputs.npz')!r})
        np.save({str(tmp_path / 'out.npy')!r}, np.asarray(exp.call(a["x"], a["w1"], a["w2"])))
    """)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(jb.__file__)),
                                         env.get("PYTHONPATH", "")])
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300,
                   cwd=str(tmp_path))
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def test_exported_call_without_import_fails_loudly(tmp_path):
    """Without importing jax_binconv the target is unknown: an error, not a wrong answer."""
    x = rand_x(0, (1, 6, 6, 8))
    w = rand_x(1, (3, 3, 8, 4))
    disabled = [jax.export.DisabledSafetyCheck.custom_call(t) for t in jb.TARGETS.values()]
    exp = jax.export.export(jax.jit(lambda x, w: jb.binary_conv2d(x, w)),
                            disabled_checks=disabled)(x, w)
    blob = tmp_path / "m.bin"
    blob.write_bytes(exp.serialize())
    script = (f"import jax, numpy as np; e = jax.export.deserialize(open({str(blob)!r}, 'rb').read());"
              "e.call(np.ones((1, 6, 6, 8), np.float32), np.ones((3, 3, 8, 4), np.float32))")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       cwd=str(tmp_path))
    assert r.returncode != 0
    backend = jax.default_backend()
    assert jb.TARGETS["cuda" if backend == "gpu" else backend] in (r.stderr + r.stdout)


def test_export_with_symbolic_batch():
    """One serialized program serves every batch size (shape polymorphism)."""
    w = rand_x(3, (3, 3, 16, 8))
    f = jax.jit(lambda x: jb.binary_conv2d(x, w, beta_scaling=True, activation="relu"))
    disabled = [jax.export.DisabledSafetyCheck.custom_call(t) for t in jb.TARGETS.values()]
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape("b, 8, 8, 16"), jnp.float32)
    exp = jax.export.deserialize(jax.export.export(f, disabled_checks=disabled)(spec).serialize())
    assert str(exp.out_avals[0].shape[0]) == "b"
    for n in (1, 3, 5):
        x = rand_x(n, (n, 8, 8, 16))
        np.testing.assert_array_equal(np.asarray(exp.call(x)), np.asarray(f(x)))


@pytest.mark.skipif("cuda" not in jb.lowering.available,
                    reason="jax_binconv._cuda was not built (no nvcc at install time)")
@pytest.mark.parametrize("out", ["float", "packed"])
def test_cuda_lowering_sizes_the_workspace_without_a_gpu(out):
    """Lowering for CUDA (here: exporting, which needs no GPU) emits target v2
    with a uint8 workspace result of _cuda.workspace_bytes; with a symbolic
    batch, a size linear in it that covers every concrete batch."""
    import re
    cu = jb.lowering.available["cuda"]
    w = rand_x(4, (3, 3, 128, 64))
    f = jax.jit(lambda x: jb.binary_conv2d(x, w, padding="SAME", beta_scaling=True, output=out))
    disabled = [jax.export.DisabledSafetyCheck.custom_call(t) for t in jb.TARGETS.values()]
    geo = dict(conv_type=1, h=14, w=14, c=128, o=64, kh=3, kw=3, stride_h=1, stride_w=1,
               dilation_h=1, dilation_w=1, pad_top=1, pad_bottom=1, pad_left=1, pad_right=1,
               groups=1, pad_value=0.0, beta_scaling=True, activation=0, negative_slope=0.01,
               x_packed=False, out_packed=out == "packed")
    for n in (1, 5):
        text = jax.export.export(f, platforms=("cuda",), disabled_checks=disabled)(
            jax.ShapeDtypeStruct((n, 14, 14, 128), jnp.float32)).mlir_module()
        call = [ln for ln in text.splitlines() if "custom_call @jax_binconv" in ln]
        assert len(call) == 1 and "jax_binconv_conv2d_cuda_v3" in call[0]
        # x, w and the four vectors as one affine operand
        assert call[0].split("cuda_v3(")[1].split(")")[0].count("%") == 3, call[0]
        assert re.search(rf"tensor<{cu.workspace_bytes(n=n, **geo)}xui8>\)", call[0]), call[0]
    # Shape polymorphism: the workspace is N * size(1) + slack, which bounds
    # size(N) for every N (it grows linearly, plus alignment).
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape("b, 14, 14, 128"), jnp.float32)
    text = jax.export.export(f, platforms=("cuda",), disabled_checks=disabled)(spec).mlir_module()
    assert "tensor<?xui8>" in text
    one = cu.workspace_bytes(n=1, **geo)
    for n in (1, 2, 7, 64, 1000):
        assert cu.workspace_bytes(n=n, **geo) <= n * one + jb.lowering._WORKSPACE_SLACK
