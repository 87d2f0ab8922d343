"""The pure-JAX reference: it *defines* the semantics (docs/semantics.md).

Every kernel is tested against it, the primitive's JVP differentiates its
surrogate (the same formula with each ``bin`` replaced by a straight-through
estimator, :mod:`jax_binconv.estimators`), and it is the lowering on every
platform without a kernel of its own.

The canonical form used here and by the primitive: ``x`` is NHWC with any
number of leading batch dims (float, or ``uint32`` packed words), ``w`` is
HWIO float latent weights (or ``uint32 [O, KH, KW, ceil(Cg/32)]`` packed
words), and the four scale/bias operands are float32 vectors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import packing
from .estimators import sign, ste_sign
from .options import ACTIVATIONS, BinaryConvType

_HIGHEST = lax.Precision.HIGHEST


def binary_conv2d(x, w, **kwargs):
    """The reference ``binary_conv2d``: same signature and result as
    :func:`jax_binconv.binary_conv2d`, computed with ordinary JAX ops
    (float convolutions of the binarized values), differentiable with the
    straight-through surrogate of SPEC section 8."""
    from .conv import _binary_conv2d

    return _binary_conv2d(x, w, use_reference=True, **kwargs)


def binary_dense(x, w, **kwargs):
    """The reference ``binary_dense`` (see :func:`jax_binconv.binary_dense`)."""
    from .conv import _binary_dense

    return _binary_dense(x, w, use_reference=True, **kwargs)


# ----------------------------------------------------------------------------
# Canonical pieces. Each is small so that the JVP rule of the primitive can
# reuse exactly these formulas.


def input_prime(x, input_bias, input_scale):
    """``x' = (x + input_bias) * input_scale``, computed in float32."""
    return (x.astype(jnp.float32) + input_bias) * input_scale


def binarize_input(xp, conv_type, estimator=("ste", 1.0)):
    """The input column of SPEC section 2 (float32), with the STE surrogate."""
    if conv_type == BinaryConvType.BINARY_WEIGHTS:
        return xp
    b = ste_sign(xp, *estimator)
    return (b + 1.0) * 0.5 if conv_type == BinaryConvType.AND else b


def packed_input_values(words, channels, conv_type):
    """Unpack packed activations to the input column (+-1 or 0/1)."""
    bits = packing.unpack_bits(words, channels)
    if conv_type == BinaryConvType.AND:
        return bits.astype(jnp.float32)
    return jnp.where(bits, 1.0, -1.0).astype(jnp.float32)


def weight_values(w, conv_type, estimator=("ste", 1.0), in_channels_per_group=None):
    """The weight column of SPEC section 2 in HWIO float32."""
    if w.dtype == jnp.uint32:
        bits = packing.unpack_bits(w, in_channels_per_group)
        b = jnp.transpose(jnp.where(bits, 1.0, -1.0), (1, 2, 3, 0)).astype(jnp.float32)
    elif w.dtype == jnp.bool_:
        b = jnp.where(w, 1.0, -1.0).astype(jnp.float32)
    else:
        b = ste_sign(w.astype(jnp.float32), *estimator)
    if conv_type == BinaryConvType.AND:
        return (b + 1.0) * 0.5
    return b


def accumulate(xb, wb, *, strides, padding, dilation, groups, pad_value):
    """SPEC sections 3 and 4: ``acc = sum X[padded] * Wb`` (NHWC x, HWIO w)."""
    (top, bottom, left, right) = padding
    xpad = jnp.pad(
        xb,
        ((0, 0), (top, bottom), (left, right), (0, 0)),
        constant_values=np.float32(pad_value),
    )
    return lax.conv_general_dilated(
        xpad,
        wb,
        window_strides=strides,
        padding="VALID",
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
        precision=_HIGHEST,
        preferred_element_type=jnp.float32,
    )


def exact_integers(acc):
    """XNOR / AND accumulators rounded to the exact integers they are (SPEC
    section 3; the pad values these types allow keep them integers).

    A backend's float convolution need not be exact: on a GPU cuDNN may pick
    a Winograd algorithm even at HIGHEST precision (240 came out as 239.99997
    at K = 36873 on an H100). Rounding restores the integer; the gradient
    passes straight through (the value is ``acc`` plus a constant).
    """
    return acc + lax.stop_gradient(jnp.round(acc) - acc)


def beta_image(absmean, *, kernel_size, strides, padding, dilation, out_sharding=None):
    """SPEC section 5: average over the convolution's taps of ``A``, padded taps 0.

    ``absmean`` is ``A = mean_c |x'|`` as ``[N, H, W, 1]``.
    """
    kh, kw = kernel_size
    ones = jnp.ones((kh, kw, 1, 1), jnp.float32)
    (top, bottom, left, right) = padding
    s = lax.conv_general_dilated(
        absmean,
        ones,
        window_strides=strides,
        padding=((top, bottom), (left, right)),
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=_HIGHEST,
        out_sharding=out_sharding,
    )
    return s / np.float32(kh * kw)


def activation_fn(z, activation, negative_slope):
    """The named activations of SPEC section 6 (NaN propagates except in sign)."""
    if activation == ACTIVATIONS["linear"]:
        return z
    if activation == ACTIVATIONS["relu"]:
        return jnp.where(z < 0, 0.0, z)
    if activation == ACTIVATIONS["relu6"]:
        return jnp.where(z < 0, 0.0, jnp.where(z > 6, 6.0, z))
    if activation == ACTIVATIONS["leaky_relu"]:
        return jnp.where(z < 0, z * np.float32(negative_slope), z)
    if activation == ACTIVATIONS["sigmoid"]:
        return 1.0 / (1.0 + jnp.exp(-z))
    if activation == ACTIVATIONS["tanh"]:
        return jnp.tanh(z)
    if activation == ACTIVATIONS["hard_tanh"]:
        return jnp.where(z < -1, -1.0, jnp.where(z > 1, 1.0, z))
    if activation == ACTIVATIONS["sign"]:
        return sign(z)
    raise ValueError(f"unknown activation code {activation}")


def epilogue(acc, output_scale, beta, output_bias, activation, negative_slope):
    """``activation(((acc * output_scale) * beta) + output_bias)`` in float32."""
    z = acc * output_scale
    if beta is not None:
        z = z * beta
    z = z + output_bias
    return activation_fn(z, activation, negative_slope)


def flatten_batch(x):
    """Fold every leading dim of a rank >= 4 array into one batch dim."""
    lead = x.shape[:-3]
    if len(lead) == 1:
        return x, lead
    # -1 rather than a product, so symbolic (jax.export) batch sizes work.
    return x.reshape((-1,) + x.shape[-3:]), lead


def conv_canonical(x, w, input_bias, input_scale, output_scale, output_bias, *,
                   conv_type, strides, padding, dilation, groups, in_channels,
                   pad_value, beta_scaling, activation, negative_slope, output,
                   out_dtype, input_estimator, weight_estimator):
    """The whole operation on canonical operands (see the module docstring)."""
    conv_type = BinaryConvType(conv_type)
    x, lead = flatten_batch(x)
    cg = in_channels // groups
    if x.dtype == jnp.uint32:
        xb = packed_input_values(x, in_channels, conv_type)
        absmean = jnp.ones(x.shape[:-1] + (1,), jnp.float32)
    else:
        xp = input_prime(x, input_bias, input_scale)
        xb = binarize_input(xp, conv_type, input_estimator)
        absmean = jnp.mean(jnp.abs(xp), axis=-1, keepdims=True) if beta_scaling else None
    wb = weight_values(w, conv_type, weight_estimator, cg)
    acc = accumulate(xb, wb, strides=strides, padding=padding, dilation=dilation,
                     groups=groups, pad_value=pad_value)
    if conv_type != BinaryConvType.BINARY_WEIGHTS:
        acc = exact_integers(acc)
    beta = None
    if beta_scaling:
        beta = beta_image(absmean, kernel_size=wb.shape[:2], strides=strides,
                          padding=padding, dilation=dilation)
    out = epilogue(acc, output_scale, beta, output_bias, activation, negative_slope)
    out = out.reshape(lead + out.shape[1:])
    if output == "packed":
        return packing.pack_bits(packing.sign_bits(out))
    return out.astype(out_dtype)
