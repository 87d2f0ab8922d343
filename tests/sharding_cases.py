"""Sharding scenarios, each run in its own process. Used by
tests/test_sharding.py: ``python tests/sharding_cases.py CASE`` exits 0 when
every check holds.

By default on 8 forced host devices (XLA_FLAGS must be set before JAX
starts). With ``JAX_BINCONV_SHARDING_PLATFORM=gpu`` on every GPU of the
machine instead (two or more; the CUDA kernel's custom call is the one
checked): the meshes then have len(GPUs) devices, the 2-D one
(len / 2, 2)."""

from __future__ import annotations

import os
import sys

PLATFORM = os.environ.get("JAX_BINCONV_SHARDING_PLATFORM", "cpu")
if PLATFORM == "cpu":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_force_host_platform_device_count=8").strip()
else:
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # (NVLink multicast: see KINDS.md)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jax_binconv as jb  # noqa: E402
from jax_binconv._hlo import collectives, custom_call_lines, custom_call_shapes  # noqa: E402

DEVICES = jax.devices(PLATFORM)
NDEV = min(len(DEVICES), 8)
DEVICES = DEVICES[:NDEV]
TARGET = jb.TARGETS["cuda" if PLATFORM == "gpu" else "cpu"]
# A 1-D mesh over every device; a 2-D one (batch, model), model axis of 2.
MESH_1D = (NDEV,)
MESH_2D = (NDEV // 2, 2)


def make_mesh(shape, names, axis_types):
    return jax.make_mesh(shape, names, axis_types=axis_types, devices=DEVICES)


OPTS = dict(type="xnor", beta_scaling=True, activation="hard_tanh")


def data(n=8, c=64, o=64, hw=10):
    x = jax.random.normal(jax.random.PRNGKey(0), (n, hw, hw, c))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, c, o))
    s = jnp.linspace(0.05, 0.1, o)
    return x, w, s


def kernel_shapes(compiled_text):
    """Result shapes of our custom calls in the compiled (per-device) HLO."""
    return custom_call_shapes(compiled_text, TARGET)


def assert_partitioned(compiled_text):
    """No all-gather / all-to-all, and no `Sharding` custom call left over
    (a partitioner that gave up leaves them around the op)."""
    assert not collectives(compiled_text), collectives(compiled_text)
    left = [ln.strip()[:300] for ln in custom_call_lines(compiled_text, "Sharding")]
    assert not left, ("leftover Sharding custom calls", left[:3])


def unit_axes_dropped(spec, mesh, ndim):
    """spec padded with None to ndim entries, the names of size-1 mesh axes
    as None too (JAX may leave them out of a result's sharding: a 2-D mesh
    over two GPUs is (1, 2))."""
    spec = tuple(spec) + (None,) * (ndim - len(tuple(spec)))
    return tuple(None if name is not None and mesh.shape[name] == 1 else name for name in spec)


def check_forward(mesh, x_spec, w_spec, expect_out_spec, expect_local):
    x, w, s = data()
    want = jb.binary_conv2d(x, w, output_scale=s, **OPTS)
    xs = jax.device_put(x, NamedSharding(mesh, x_spec))
    ws = jax.device_put(w, NamedSharding(mesh, w_spec))
    ss = jax.device_put(s, NamedSharding(mesh, P(w_spec[3])))
    with jax.set_mesh(mesh):
        f = jax.jit(lambda x, w, s: jb.binary_conv2d(x, w, output_scale=s, **OPTS))
        y = f(xs, ws, ss)
        text = f.lower(xs, ws, ss).compile().as_text()
    np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=1e-6, atol=1e-6)
    assert unit_axes_dropped(y.sharding.spec, mesh, 4) == \
        unit_axes_dropped(expect_out_spec, mesh, 4), y.sharding.spec
    assert_partitioned(text)
    shapes = kernel_shapes(text)
    assert shapes == [expect_local], shapes


def case_data_parallel():
    for at in (AxisType.Auto, AxisType.Explicit):
        mesh = make_mesh(MESH_1D, ("b",), (at,))
        check_forward(mesh, P("b"), P(None, None, None, None), ("b", None, None, None),
                      f"{8 // NDEV},10,10,64")


def case_model_parallel():
    for at in (AxisType.Auto, AxisType.Explicit):
        mesh = make_mesh(MESH_1D, ("m",), (at,))
        check_forward(mesh, P(), P(None, None, None, "m"), (None, None, None, "m"),
                      f"8,10,10,{64 // NDEV}")


def case_two_d():
    for at in (AxisType.Auto, AxisType.Explicit):
        mesh = make_mesh(MESH_2D, ("b", "m"), (at, at))
        check_forward(mesh, P("b"), P(None, None, None, "m"), ("b", None, None, "m"),
                      f"{8 // MESH_2D[0]},10,10,32")


def case_grads():
    x, w, s = data()

    def loss(x, w, s):
        y = jb.binary_conv2d(x, w, output_scale=s, input_estimator="approx_sign", **OPTS)
        return jnp.sum(y * jnp.cos(y))

    want = jax.grad(loss, (0, 1, 2))(x, w, s)
    for at in (AxisType.Auto, AxisType.Explicit):
        mesh = make_mesh(MESH_2D, ("b", "m"), (at, at))
        xs = jax.device_put(x, NamedSharding(mesh, P("b")))
        ws = jax.device_put(w, NamedSharding(mesh, P(None, None, None, "m")))
        ss = jax.device_put(s, NamedSharding(mesh, P("m")))
        with jax.set_mesh(mesh):
            g = jax.jit(jax.grad(loss, (0, 1, 2)))
            got = g(xs, ws, ss)
            text = g.lower(xs, ws, ss).compile().as_text()
        for a, b in zip(got, want):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
        assert unit_axes_dropped(got[0].sharding.spec, mesh, 4)[0] == \
            unit_axes_dropped(("b",), mesh, 1)[0], got[0].sharding.spec
        assert tuple(got[1].sharding.spec)[3] == "m", got[1].sharding.spec
        assert_partitioned(text)
        # The forward kernel ran on the local shard only.
        assert kernel_shapes(text) == [f"{8 // MESH_2D[0]},10,10,32"], kernel_shapes(text)


def case_shard_map():
    x, w, s = data()
    mesh = make_mesh(MESH_1D, ("b",), (AxisType.Auto,))

    def local(x, w):
        return jb.binary_conv2d(x, w, **OPTS)

    f = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("b"), P()), out_specs=P("b")))
    np.testing.assert_allclose(np.asarray(f(x, w)), np.asarray(local(x, w)), rtol=1e-6, atol=1e-6)
    text = f.lower(x, w).compile().as_text()
    assert not collectives(text), collectives(text)

    def loss(x, w):
        return jnp.sum(jnp.sin(jax.shard_map(local, mesh=mesh, in_specs=(P("b"), P()),
                                             out_specs=P("b"))(x, w)))
    g = jax.jit(jax.grad(loss, (0, 1)))(x, w)
    r = jax.grad(lambda x, w: jnp.sum(jnp.sin(local(x, w))), (0, 1))(x, w)
    for a, b in zip(g, r):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def case_packed_chain():
    """A data-parallel chain on packed activations stays sharded, 1 bit per value."""
    x, w, s = data(c=64, o=64)
    w2 = jax.random.normal(jax.random.PRNGKey(3), (3, 3, 64, 64))
    mesh = make_mesh(MESH_2D, ("b", "m"), (AxisType.Auto, AxisType.Auto))

    def chain(x, w, w2):
        p = jb.binary_conv2d(x, w, type="xnor", output="packed")
        return jb.binary_conv2d(p, w2, type="xnor")

    want = chain(x, w, w2)
    xs = jax.device_put(x, NamedSharding(mesh, P("b")))
    with jax.set_mesh(mesh):
        f = jax.jit(chain)
        y = f(xs, w, w2)
        text = f.lower(xs, w, w2).compile().as_text()
    np.testing.assert_array_equal(np.asarray(y), np.asarray(want))
    assert not collectives(text), collectives(text)
    # Packed output with weights sharded on O: the weights are gathered (the
    # packed result's last dim is words), the result stays batch-sharded.
    ws = jax.device_put(w, NamedSharding(mesh, P(None, None, None, "m")))
    with jax.set_mesh(mesh):
        p = jax.jit(lambda x, w: jb.binary_conv2d(x, w, output="packed").words)(xs, ws)
    np.testing.assert_array_equal(np.asarray(p), np.asarray(
        jb.binary_conv2d(x, w, output="packed").words))


def case_checks_can_fail():
    """The HLO checks above find what they look for: a program that gathers
    a batch-sharded array has an all-gather, a sharding constraint is a
    Sharding custom call before partitioning, and the unsharded op's call
    has the whole batch as its result shape."""
    x, w, s = data()
    mesh = make_mesh(MESH_1D, ("b",), (AxisType.Auto,))
    xs = jax.device_put(x, NamedSharding(mesh, P("b")))
    with jax.set_mesh(mesh):
        gather = jax.jit(lambda x: x * 2, out_shardings=NamedSharding(mesh, P()))
        text = gather.lower(xs).compile().as_text()
    assert collectives(text), "no all-gather found in a program that gathers"
    with jax.set_mesh(mesh):
        constrained = jax.jit(
            lambda x: jax.lax.with_sharding_constraint(x * 2, NamedSharding(mesh, P("b"))))
        hlo = constrained.lower(xs).as_text(dialect="hlo")  # before partitioning
    try:
        assert_partitioned(hlo)
    except AssertionError:
        pass
    else:
        raise AssertionError("no Sharding custom call found before partitioning")
    xr = jax.device_put(x, DEVICES[0])
    text = jax.jit(lambda x, w: jb.binary_conv2d(x, w, **OPTS)).lower(xr, w).compile().as_text()
    assert kernel_shapes(text) == ["8,10,10,64"], kernel_shapes(text)


CASES = {k[5:]: v for k, v in globals().items() if k.startswith("case_")}

if __name__ == "__main__":
    if PLATFORM == "cpu":
        assert NDEV == 8, DEVICES
    else:
        assert NDEV >= 2 and NDEV % 2 == 0, f"needs an even number of GPUs (2 or more): {DEVICES}"
        assert "cuda" in jb.lowering.available, jb.lowering.load_errors
    CASES[sys.argv[1]]()
    print("ok", sys.argv[1], f"on {NDEV} {PLATFORM} devices")
