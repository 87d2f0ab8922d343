"""The packed-bit layout of SPEC section 7, written once for Python.

Bit ``i`` (least significant first) of ``uint32`` word ``j`` holds channel
``32*j + i``; ``1`` means ``+1`` (``1`` for AND), ``0`` means ``-1`` (``0``).
Trailing bits of the last word are 0. The C++ mirror is
``cpp/common/binconv_params.h``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

BITS = 32


def num_words(channels: int) -> int:
    return -(-int(channels) // BITS)


def pack_bits(bits: jax.Array) -> jax.Array:
    """Pack a boolean array along its last axis into uint32 words."""
    c = bits.shape[-1]
    words = num_words(c)
    bits = bits.astype(jnp.uint32)
    pad = words * BITS - c
    if pad:
        bits = jnp.pad(bits, [(0, 0)] * (bits.ndim - 1) + [(0, pad)])
    bits = bits.reshape(bits.shape[:-1] + (words, BITS))
    shifts = jnp.arange(BITS, dtype=jnp.uint32)
    # Distinct bit positions: the sum is the bitwise OR.
    return jnp.sum(bits << shifts, axis=-1, dtype=jnp.uint32)


def unpack_bits(words: jax.Array, channels: int) -> jax.Array:
    """Inverse of :func:`pack_bits`: a boolean array with ``channels`` on the last axis."""
    shifts = jnp.arange(BITS, dtype=jnp.uint32)
    bits = (words[..., None] >> shifts) & jnp.uint32(1)
    bits = bits.reshape(words.shape[:-1] + (words.shape[-1] * BITS,))
    return bits[..., :channels].astype(jnp.bool_)


def sign_bits(v: jax.Array) -> jax.Array:
    """``bin(v) == +1`` as a boolean: ``v >= 0``, with 0, -0.0 and NaN giving True."""
    if v.dtype == jnp.bool_:
        return v
    return jnp.logical_not(v < 0)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class PackedWeights:
    """Binarized convolution weights, packed: ``uint32 [O, KH, KW, ceil(Cg/32)]``.

    ``in_channels_per_group`` (``Cg``) is kept beside the words because the
    word count alone does not give it. Make them with :func:`pack_weights`.
    Packed weights carry no gradient: use them for inference.
    """

    words: Any
    in_channels_per_group: int

    def tree_flatten(self):
        return (self.words,), (self.in_channels_per_group,)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], *aux)

    @property
    def shape(self):
        """Logical HWIO shape ``(KH, KW, Cg, O)``."""
        o, kh, kw, _ = self.words.shape
        return (kh, kw, self.in_channels_per_group, o)

    def unpack(self, dtype=jnp.float32) -> jax.Array:
        """The +-1 weights in HWIO layout."""
        bits = unpack_bits(self.words, self.in_channels_per_group)
        return jnp.transpose(jnp.where(bits, 1, -1).astype(dtype), (1, 2, 3, 0))


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class PackedActivations:
    """Binarized activations, packed along channels: ``uint32 [N, H, W, ceil(C/32)]``.

    ``channels`` is the logical channel count. A bit 1 means +1 (XNOR) or 1
    (AND). Produced by ``binary_conv2d(..., output="packed")`` or
    :func:`pack_activations`; accepted as ``x`` by ``binary_conv2d`` with the
    XNOR and AND types. Carries no gradient.
    """

    words: Any
    channels: int

    def tree_flatten(self):
        return (self.words,), (self.channels,)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], *aux)

    @property
    def shape(self):
        """Logical NHWC shape."""
        return tuple(self.words.shape[:-1]) + (self.channels,)


def _check_words(words, name):
    dtype = getattr(words, "dtype", None)
    if dtype != np.uint32:
        raise TypeError(f"{name} must be a uint32 array of packed words; got dtype {dtype}")


def pack_weights(w, *, layout: str = "HWIO", groups: int = 1) -> PackedWeights:
    """Binarize and pack latent float weights (SPEC section 7).

    ``w`` is in ``layout`` (``"HWIO"`` default, or any permutation such as
    ``"OIHW"``); its ``I`` axis holds the channels of one group (``C/groups``).
    ``groups`` is accepted for symmetry with ``binary_conv2d`` and only
    checked to divide O. Float weights binarize with ``w >= 0 -> +1`` (NaN -> +1);
    boolean weights map True -> +1, False -> -1.

    >>> pw = pack_weights(jnp.ones((3, 3, 64, 128)))
    >>> pw.words.shape
    (128, 3, 3, 2)
    """
    w = jnp.asarray(w)
    if w.ndim != 4:
        raise ValueError(f"w must be rank 4 ({layout}); got shape {w.shape}")
    if sorted(layout) != sorted("HWIO") or len(layout) != 4:
        raise ValueError(f"layout must be a permutation of 'HWIO'; got {layout!r}")
    if jnp.issubdtype(w.dtype, jnp.complexfloating):
        raise TypeError(f"w must be real; got dtype {w.dtype}")
    perm = tuple(layout.index(ch) for ch in "OHWI")
    wt = jnp.transpose(w, perm)
    if wt.shape[0] % groups:
        raise ValueError(f"groups={groups} must divide the output channels O={wt.shape[0]}")
    return PackedWeights(pack_bits(sign_bits(wt)), int(wt.shape[3]))


def pack_activations(x, *, layout: str = "NHWC") -> PackedActivations:
    """Binarize (``bin``, SPEC section 2) and pack activations along channels."""
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be rank 4 ({layout}); got shape {x.shape}")
    if sorted(layout) != sorted("NHWC") or len(layout) != 4:
        raise ValueError(f"layout must be a permutation of 'NHWC'; got {layout!r}")
    xt = jnp.transpose(x, tuple(layout.index(ch) for ch in "NHWC"))
    return PackedActivations(pack_bits(sign_bits(xt)), int(xt.shape[3]))


def unpack_activations(p: PackedActivations, *, dtype=jnp.float32, values: str = "pm1") -> jax.Array:
    """Unpack to NHWC floats: ``values="pm1"`` gives -1/+1, ``"01"`` gives 0/1."""
    if not isinstance(p, PackedActivations):
        raise TypeError(f"p must be a PackedActivations; got {type(p).__name__}")
    bits = unpack_bits(p.words, p.channels)
    if values == "pm1":
        return jnp.where(bits, 1, -1).astype(dtype)
    if values == "01":
        return bits.astype(dtype)
    raise ValueError(f"values must be 'pm1' or '01'; got {values!r}")
