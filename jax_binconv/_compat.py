"""The only module that touches private JAX (``jax._src``).

Each entry says why it is needed; ``tests/test_sharding.py::test_compat_hooks``
fails loudly when a JAX release moves or removes one.
"""

from __future__ import annotations


def require_devices_during_lowering(primitive) -> None:
    """Our lowering wraps the kernel call in ``custom_partitioning``, whose
    own lowering needs the device assignment. JAX only provides it while
    lowering jaxprs that contain a primitive registered in this set (jaxlib's
    cuDNN attention registers itself the same way); there is no public API."""
    from jax._src import dispatch

    dispatch.prim_requires_devices_during_lowering.add(primitive)


def devices_required_during_lowering(primitive) -> bool:
    from jax._src import dispatch

    return primitive in dispatch.prim_requires_devices_during_lowering


def result_aval(shape, dtype, sharding, operand_avals):
    """A ``ShapedArray`` for the primitive's result that varies over every
    manual (``shard_map``) axis its operands vary over.

    JAX 0.10 names this ``manual_axis_type`` (earlier releases: ``vma``)."""
    import jax

    kwargs = {}
    if sharding is not None:
        kwargs["sharding"] = sharding
    mats = [getattr(a, "manual_axis_type", None) for a in operand_avals]
    mats = [m for m in mats if m is not None]
    if mats:
        kwargs["manual_axis_type"] = max(mats, key=lambda m: len(getattr(m, "varying", ())))
    else:
        vmas = [getattr(a, "vma", None) for a in operand_avals]
        vmas = [v for v in vmas if v is not None]
        if vmas:
            kwargs["vma"] = frozenset().union(*vmas)
    return jax.core.ShapedArray(shape, dtype, **kwargs)
