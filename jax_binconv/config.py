"""Run-time choices that are read when a function is lowered.

``JAX_BINCONV_CPU_KERNEL`` (environment) or :func:`cpu_kernel_override`
(context manager) choose what the ``cpu`` lowering emits:

* ``"native"`` (default): the C++ popcount kernel (``jax_binconv._cpu``;
  on macOS it dispatches large layers to Metal, see ``JAX_BINCONV_BACKEND``);
* ``"metal_shim"``: the Metal kernel source compiled as C++ (test-only
  module ``jax_binconv._metal_shim``);
* ``"reference"``: the pure-JAX reference.

The choice is read at lowering time: ``jax.jit`` caches compiled programs,
so trace a fresh function (or call ``jax.clear_caches()``) after changing it.
The ISA of the native CPU kernel is chosen per call instead:
``JAX_BINCONV_CPU_ISA`` or :func:`jax_binconv.cpu_isa.set_isa`.
"""

from __future__ import annotations

import contextlib
import os

CPU_KERNELS = ("native", "metal_shim", "reference")
_override: str | None = None


def cpu_kernel() -> str:
    """The CPU kernel the next lowering will use."""
    if _override is not None:
        return _override
    value = os.environ.get("JAX_BINCONV_CPU_KERNEL", "native").strip().lower() or "native"
    if value not in CPU_KERNELS:
        raise ValueError(f"JAX_BINCONV_CPU_KERNEL must be one of {CPU_KERNELS}; got {value!r}")
    return value


@contextlib.contextmanager
def cpu_kernel_override(name: str):
    """Lower CPU calls inside the block with the kernel ``name`` (see module doc)."""
    global _override
    if name not in CPU_KERNELS:
        raise ValueError(f"name must be one of {CPU_KERNELS}; got {name!r}")
    previous, _override = _override, name
    try:
        yield
    finally:
        _override = previous
