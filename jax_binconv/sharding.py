"""Partitioning of the kernel call under ``jax.jit`` with sharded inputs.

A plain XLA custom call is opaque to the SPMD partitioner: it would
all-gather a batch-sharded input and run the whole batch on every device.
We wrap the kernel call in ``jax.experimental.custom_partitioning`` with a
Shardy sharding rule, so that

* the batch (every leading dim of ``x``) keeps its sharding: each device
  convolves its own shard;
* the output channels keep the sharding of the weights' ``O`` axis (and of
  ``output_scale``/``output_bias``): model parallel;
* spatial dims, input channels and the kernel window are replicated (a
  device needs the whole window and all channels of its pixels).

Output-channel sharding is kept only where each shard is self-contained:
``groups == 1`` (or whole groups per shard) and, for packed output, shards
that are whole 32-bit words.
"""

from __future__ import annotations

import functools

import jax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from . import packing


def _spec(sharding, ndim):
    spec = tuple(getattr(sharding, "spec", ()) or ())
    return spec + (None,) * (ndim - len(spec))


def _axis_size(mesh, entry):
    if entry is None:
        return 1
    names = entry if isinstance(entry, tuple) else (entry,)
    size = 1
    for n in names:
        size *= mesh.shape[n]
    return size


def _o_axis(w_shape, w_packed):
    return 0 if w_packed else 3


def _decide(mesh, arg_shapes, params):
    """(arg shardings, result sharding) that the kernel supports."""
    x, w = arg_shapes[0], arg_shapes[1]
    lead = len(x.shape) - 3
    xs = _spec(x.sharding, len(x.shape))
    batch = xs[:lead]
    used = set()
    for e in batch:
        if e is not None:
            used.update(e if isinstance(e, tuple) else (e,))
    w_packed = w.dtype == jax.numpy.uint32
    o_dim = _o_axis(w.shape, w_packed)
    o_entry = _spec(w.sharding, len(w.shape))[o_dim]
    if o_entry is not None:
        names = set(o_entry if isinstance(o_entry, tuple) else (o_entry,))
        o = w.shape[o_dim]
        k = _axis_size(mesh, o_entry)
        ok = not (names & used) and o % k == 0
        groups = params["groups"]
        # Packed output: only the rule's need_replication on O is safe (the
        # result's last dim is words, not channels).
        ok = ok and params["output"] == "float"
        if groups > 1:
            ok = False  # input channels of a group would have to follow the shard
        if not ok:
            o_entry = None
    x_sh = NamedSharding(mesh, P(*batch, None, None, None))
    w_spec = [None] * 4
    w_spec[o_dim] = o_entry
    w_sh = NamedSharding(mesh, P(*w_spec))
    rep = NamedSharding(mesh, P(None))
    o_sh = NamedSharding(mesh, P(o_entry))
    out_sh = NamedSharding(mesh, P(*batch, None, None, o_entry))
    return (x_sh, w_sh, rep, rep, o_sh, o_sh), out_sh


def _sharding_rule(x_ndim, w_packed, x_packed, output, groups):
    lead = " ".join(f"b{i}" for i in range(x_ndim - 3))
    xc = "cx" if x_packed else "c"
    w = "o kh kw cw" if w_packed else "kh kw ci o"
    out_c = "ow" if output == "packed" else "o"
    rule = f"{lead} h w {xc}, {w}, c, c, o, o -> {lead} ho wo {out_c}"
    need = ["h", "w", xc, "kh", "kw", "cw" if w_packed else "ci", "ho", "wo"]
    if xc != "c":
        need.append("c")
    if output == "packed":
        need.append("ow")
    if output == "packed" or groups > 1:
        need.append("o")
    # Shardy wants special factors listed in the order they first appear.
    order = []
    for tok in rule.replace(",", " ").replace("->", " ").split():
        if tok not in order:
            order.append(tok)
    return rule, tuple(sorted(set(need), key=order.index))


def _without_mesh(fn):
    """``fn`` traced with no mesh in context.

    JAX traces the per-shard function while compiling the caller, so a
    caller's ``jax.set_mesh`` with Explicit axes is still in effect: on JAX
    0.11 that gave the per-shard ops sharding annotations (``Sharding``
    custom calls) inside code the partitioner has already processed, and the
    program failed at run time ("No registered implementation for custom
    call to Sharding", seen on two H100s). The shard's operands are local
    arrays: no mesh applies to them."""

    def local(*args):
        with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), ())):
            return fn(*args)

    return local


@functools.lru_cache(maxsize=512)
def partitioned_kernel_call(call, frozen_params, x_ndim, w_packed, x_packed):
    """A ``custom_partitioning`` function for the kernel call ``call(*operands, **params)``."""
    params = dict(frozen_params)

    def fn(x, w, ib, isc, osc, ob):
        return call(x, w, ib, isc, osc, ob, **params)

    cp = custom_partitioning(fn)

    def partition(mesh, arg_shapes, result_shape):
        arg_sh, out_sh = _decide(mesh, arg_shapes, params)
        return mesh, _without_mesh(fn), out_sh, arg_sh

    rule, need = _sharding_rule(x_ndim, w_packed, x_packed, params["output"], params["groups"])
    cp.def_partition(partition=partition, sharding_rule=rule,
                     need_replication_factors=need)
    return cp


def output_sharding(x_aval, w_aval, params):
    """Output sharding for the abstract value (Explicit mesh axes), or None."""
    xs = getattr(x_aval, "sharding", None)
    mesh = getattr(xs, "mesh", None)
    if mesh is None or getattr(mesh, "empty", True):
        return None
    lead = x_aval.ndim - 3
    batch = _spec(xs, x_aval.ndim)[:lead]
    w_packed = w_aval.dtype == jax.numpy.uint32
    o_entry = None
    ws = getattr(w_aval, "sharding", None)
    if ws is not None and getattr(ws, "mesh", None) is not None and not ws.mesh.empty:
        o_entry = _spec(ws, w_aval.ndim)[_o_axis(w_aval.shape, w_packed)]
    if o_entry is not None:
        fake = [type("A", (), {"shape": x_aval.shape, "sharding": xs, "dtype": x_aval.dtype}),
                type("A", (), {"shape": w_aval.shape, "sharding": ws, "dtype": w_aval.dtype})]
        _, out = _decide(mesh, fake, params)
        return NamedSharding(mesh, out.spec)
    return NamedSharding(mesh, P(*batch, None, None, None))


def explicit_conv_shardings(x_aval, w_aval, params):
    """For the JVP's ordinary convolutions under Explicit mesh axes: the
    output sharding of the full-size conv and of the one-channel beta conv.
    ``(None, None)`` outside explicit sharding (XLA propagates it then)."""
    xs = getattr(x_aval, "sharding", None)
    mesh = getattr(xs, "mesh", None)
    if mesh is None or getattr(mesh, "empty", True):
        return None, None
    if not any(t == jax.sharding.AxisType.Explicit for t in getattr(mesh, "axis_types", ())):
        return None, None
    out = output_sharding(x_aval, w_aval, params)
    spec = tuple(out.spec) + (None,) * (x_aval.ndim - len(tuple(out.spec)))
    # The JVP works on the batch folded into one leading dim.
    lead = spec[: x_aval.ndim - 3]
    if len(lead) != 1:
        raise NotImplementedError(
            "binary_conv2d: gradients under Explicit sharding support one batch dim; "
            f"got x of rank {x_aval.ndim}")
    return NamedSharding(mesh, P(*spec)), NamedSharding(mesh, P(spec[0], None, None, None))
