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
