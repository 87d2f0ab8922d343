"""Lowering rules per platform and the registration of our FFI targets.

Every platform first gets the pure-JAX reference (``mlir.lower_fun``); the
platforms we have kernels for override it: ``cpu`` with the C++ popcount
kernel (or, on request, the Metal shim or the reference, see
:mod:`jax_binconv.config`), ``cuda`` with the tensor-core kernel when
``jax_binconv._cuda`` was built.

Before a kernel is called, operands are brought to the form of
``docs/ffi.md``: float32 input (bfloat16/float16 converted up, the result
converted back), weights packed to ``uint32 [O, KH, KW, ceil(Cg/32)]``.
"""

from __future__ import annotations

import functools
import importlib
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import mlir

from . import _compat, config, packing, reference, sharding
from .primitive import binary_conv2d_p, geometry

#: The targets lowerings emit now (docs/ffi.md). cpu v2 and cuda v3 take the
#: four per-channel vectors as one operand; cuda v2 and v3 have a workspace
#: result (the older targets stay registered for programs exported before).
TARGETS = {
    "cpu": "jax_binconv_conv2d_cpu_v2",
    "cuda": "jax_binconv_conv2d_cuda_v3",
    "metal_shim": "jax_binconv_conv2d_metalshim_v1",
}

# module name -> (JAX platform, target key)
_MODULES = {"_cpu": ("cpu", "cpu"), "_cuda": ("CUDA", "cuda"), "_metal_shim": ("cpu", "metal_shim")}

#: target key -> the imported extension module, for the ones that loaded.
available: dict[str, object] = {}
#: module name -> why it did not load.
load_errors: dict[str, str] = {}


def _register_targets():
    for modname, (platform, key) in _MODULES.items():
        try:
            mod = importlib.import_module(f"jax_binconv.{modname}")
        except ImportError as e:
            load_errors[modname] = str(e)
            continue
        for name, capsule in mod.registrations().items():
            jax.ffi.register_ffi_target(name, capsule, platform=platform)
        available[key] = mod


def pack_weights_canonical(w):
    """HWIO float/bool latent weights -> packed ``uint32 [O, KH, KW, words]``."""
    if w.dtype == jnp.uint32:
        return w
    return packing.pack_bits(packing.sign_bits(jnp.transpose(w, (3, 0, 1, 2))))


_WORKSPACE_SLACK = 4096


def _cuda_workspace(**geometry):
    """Bytes of the CUDA target's workspace result for one call."""
    return int(available["cuda"].workspace_bytes(**geometry))


def call_kernel(target, x, w, ib, isc, osc, ob, *, conv_type, strides, padding,
                dilation, groups, in_channels, pad_value, beta_scaling, activation,
                negative_slope, output, out_dtype, workspace=None, affine=False,
                **_estimators):
    """Emit the FFI call of ``target`` on canonical operands (docs/ffi.md).

    ``workspace``: for targets with a workspace result, a function of the
    call's geometry that gives its size in bytes; the result is dropped.
    ``affine``: the target takes input_bias, input_scale, output_scale and
    output_bias as one concatenated operand (at their defaults a non-splat
    constant, which XLA keeps as a literal instead of running a broadcast
    kernel per vector on every call)."""
    cg = in_channels // groups
    if x.dtype == jnp.uint32 and groups > 1 and cg % packing.BITS:
        # Groups would start mid-word: hand the kernels +-1 floats instead.
        x = jnp.where(packing.unpack_bits(x, in_channels), 1.0, -1.0).astype(jnp.float32)
        ib, isc = jnp.zeros_like(ib), jnp.ones_like(isc)
    elif x.dtype != jnp.uint32:
        x = x.astype(jnp.float32)
    w_words = pack_weights_canonical(w)
    kh, kw, o, ho, wo = geometry(x.shape, w_words.shape, True, dict(
        padding=padding, strides=strides, dilation=dilation))
    if output == "packed":
        result = jax.ShapeDtypeStruct(x.shape[:-3] + (ho, wo, packing.num_words(o)), jnp.uint32)
    else:
        result = jax.ShapeDtypeStruct(x.shape[:-3] + (ho, wo, o), jnp.float32)
    results = result
    if workspace is not None:
        n = math.prod(x.shape[:-3])  # a symbolic dimension under shape polymorphism
        nbytes = functools.partial(
            workspace,
            conv_type=int(conv_type),
            h=int(x.shape[-3]), w=int(x.shape[-2]), c=int(in_channels), o=int(o),
            kh=int(kh), kw=int(kw), stride_h=int(strides[0]), stride_w=int(strides[1]),
            dilation_h=int(dilation[0]), dilation_w=int(dilation[1]),
            pad_top=int(padding[0]), pad_bottom=int(padding[1]),
            pad_left=int(padding[2]), pad_right=int(padding[3]), groups=int(groups),
            pad_value=float(pad_value), beta_scaling=bool(beta_scaling),
            activation=int(activation), negative_slope=float(negative_slope),
            x_packed=x.dtype == jnp.uint32, out_packed=output == "packed")
        if isinstance(n, (int, np.integer)):
            nbytes = nbytes(n=int(n))
        else:
            # The workspace grows linearly with N, plus at most 256 bytes of
            # alignment per part (docs/ffi.md): N * size(1) + slack covers it.
            nbytes = n * nbytes(n=1) + _WORKSPACE_SLACK
        results = (result, jax.ShapeDtypeStruct((nbytes,), jnp.uint8))
    vectors = ((jnp.concatenate([jnp.asarray(v, jnp.float32) for v in (ib, isc, osc, ob)]),)
               if affine else (ib, isc, osc, ob))
    out = jax.ffi.ffi_call(target, results)(
        x, w_words, *vectors,
        conv_type=np.int32(conv_type), in_channels=int(in_channels),
        stride_h=int(strides[0]), stride_w=int(strides[1]),
        dilation_h=int(dilation[0]), dilation_w=int(dilation[1]),
        pad_top=int(padding[0]), pad_bottom=int(padding[1]),
        pad_left=int(padding[2]), pad_right=int(padding[3]),
        groups=int(groups), pad_value=np.float32(pad_value),
        beta_scaling=bool(beta_scaling), activation=np.int32(activation),
        negative_slope=np.float32(negative_slope))
    if workspace is not None:
        out = out[0]
    return out if output == "packed" else out.astype(out_dtype)


# One callable per target, so that cached partitioned wrappers are shared;
# with the operand / result conventions of that target's version.
_CALL_OPTIONS = {"cpu": dict(affine=True), "cuda": dict(workspace=_cuda_workspace, affine=True)}
_CALLS = {key: functools.partial(call_kernel, target, **_CALL_OPTIONS.get(key, {}))
          for key, target in TARGETS.items()}


def _kernel_lowering(key):
    """Lower to the kernel call, wrapped so the SPMD partitioner keeps batch and
    output-channel shardings (see :mod:`jax_binconv.sharding`)."""

    def rule(ctx, *args, **params):
        x_aval, w_aval = ctx.avals_in[0], ctx.avals_in[1]
        cp = sharding.partitioned_kernel_call(
            _CALLS[key], tuple(sorted(params.items())), x_aval.ndim,
            w_aval.dtype == jnp.uint32, x_aval.dtype == jnp.uint32)
        return mlir.lower_fun(lambda *a: cp(*a), multiple_results=False)(ctx, *args)

    return rule


_reference_lowering = mlir.lower_fun(reference.conv_canonical, multiple_results=False)


def _cpu_lowering(ctx, *args, **params):
    choice = config.cpu_kernel()
    if choice == "native" and "cpu" not in available:
        choice = "reference"
    if choice == "metal_shim" and "metal_shim" not in available:
        raise RuntimeError("jax_binconv: the Metal shim was requested but jax_binconv._metal_shim "
                           f"did not load: {load_errors.get('_metal_shim')}")
    if choice == "reference":
        return _reference_lowering(ctx, *args, **params)
    return _kernel_lowering("cpu" if choice == "native" else choice)(ctx, *args, **params)


def lowered_kernel_name(platform="cpu"):
    """The target a lowering on ``platform`` emits now (for tests and the demo)."""
    if platform == "cpu":
        choice = config.cpu_kernel()
        if choice == "native":
            return TARGETS["cpu"] if "cpu" in available else None
        return TARGETS.get(choice)
    return TARGETS.get(platform) if platform in available else None


_register_targets()
if "cpu" not in available:
    warnings.warn(
        "jax_binconv: the C++ CPU kernel (jax_binconv._cpu) did not load "
        f"({load_errors.get('_cpu')}); CPU calls use the slow pure-JAX reference. "
        "(Running from a source checkout? Its jax_binconv/ has no compiled modules: "
        "run from another directory, or install with `pip install -e .`.)",
        RuntimeWarning, stacklevel=2)

_compat.require_devices_during_lowering(binary_conv2d_p)
mlir.register_lowering(binary_conv2d_p, _reference_lowering)
mlir.register_lowering(binary_conv2d_p, _cpu_lowering, platform="cpu")
if "cuda" in available:
    mlir.register_lowering(binary_conv2d_p, _kernel_lowering("cuda"), platform="cuda")
