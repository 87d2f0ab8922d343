"""Flax NNX layers for binary networks: latent float weights, straight-through
training, weight clipping, batch-norm folding.

A binary layer keeps *latent* float weights ``w`` (a :class:`LatentWeight`
variable, a subclass of ``nnx.Param``) and uses ``bin(w)`` in the forward
pass (``bin(v) = -1 if v < 0 else +1``); the gradient reaching ``w`` is the
straight-through surrogate chosen by ``weight_estimator`` (SPEC section 8).
BinaryConnect/BinaryNet training keeps ``w`` in ``[-clip, clip]`` after every
optimizer step (Larq's ``weight_clip``): latent weights that run far past 0
can never flip back, and the default ``"ste"`` estimator passes no gradient
for ``|w| > 1``. Use :func:`clip_weights` (in place, exact) after
``optimizer.update`` or :func:`jax_binconv.nn.weight_clip` inside the optax
chain.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from .. import options
from ..conv import binary_conv2d, binary_dense
from ..packing import PackedActivations

__all__ = [
    "BinaryConv",
    "BinaryDense",
    "LatentWeight",
    "MaxPool",
    "binarize_weights",
    "binary_layers",
    "clip_weights",
    "fold_batch_norm",
]


class LatentWeight(nnx.Param):
    """The latent float weights of a binary layer (a trainable ``nnx.Param``).

    Filter on this type to treat binary weights apart from float parameters:
    ``nnx.state(model, LatentWeight)``, :func:`jax_binconv.nn.param_labels`
    (for ``optax.multi_transform``), :func:`jax_binconv.nn.flip_ratio`.
    """


def _pair(v, name):
    return options.int_pair(v, name, 1)


def _default_kernel_init(key, shape, dtype=jnp.float32):
    # Glorot-uniform over the latent weights: small values that flip readily
    # under Adam, clipped to [-1, 1] by construction.
    return nnx.initializers.glorot_uniform()(key, shape, dtype)


def _check_dims(dimension_numbers):
    if dimension_numbers is None:
        return ("NHWC", "HWIO", "NHWC")
    if (not isinstance(dimension_numbers, (tuple, list)) or len(dimension_numbers) != 3
            or not all(isinstance(s, str) for s in dimension_numbers)):
        raise TypeError("dimension_numbers for BinaryConv must be None or three layout strings "
                        f"such as ('NCHW', 'OIHW', 'NCHW'); got {dimension_numbers!r}")
    lhs, rhs, out = (s.upper() for s in dimension_numbers)
    for s, ref in ((lhs, "NHWC"), (rhs, "HWIO"), (out, "NHWC")):
        if sorted(s) != sorted(ref):
            raise ValueError(f"dimension_numbers: {s!r} is not a permutation of {ref!r}")
    return (lhs, rhs, out)


class _BinaryBase(nnx.Module):
    """Shared parameter handling of :class:`BinaryConv` and :class:`BinaryDense`."""

    def _init_affine(self, c, o, use_bias, use_scale, use_input_bias, use_input_scale,
                     scale_init, rngs):
        # nnx.data: an absent (None) parameter may later be set by fold_batch_norm.
        self.output_bias = nnx.data(nnx.Param(jnp.zeros((o,), jnp.float32))
                                    if use_bias else None)
        self.output_scale = nnx.data(nnx.Param(jnp.full((o,), scale_init, jnp.float32))
                                     if use_scale else None)
        self.input_bias = nnx.data(nnx.Param(jnp.zeros((c,), jnp.float32))
                                   if use_input_bias else None)
        self.input_scale = nnx.data(nnx.Param(jnp.ones((c,), jnp.float32))
                                    if use_input_scale else None)

    @staticmethod
    def _val(v):
        return None if v is None else v[...]

    def _affine_kwargs(self, x):
        packed = isinstance(x, PackedActivations)
        return dict(
            input_bias=None if packed else self._val(self.input_bias),
            input_scale=None if packed else self._val(self.input_scale),
            output_scale=self._val(self.output_scale),
            output_bias=self._val(self.output_bias),
        )

    def binary_kernel(self) -> jax.Array:
        """``bin(w)`` of the latent weights, in {-1, +1} (float32)."""
        w = self.kernel[...]
        return jnp.where(w < 0, -1.0, 1.0).astype(jnp.float32)

    @property
    def conv_type(self) -> options.BinaryConvType:
        return options.conv_type(self.type)


class BinaryConv(_BinaryBase):
    r"""Binary 2-D convolution with latent float weights (Flax NNX).

    Computes :func:`jax_binconv.binary_conv2d` of the input with the latent
    kernel ``w`` (shape ``[KH, KW, C/groups, O]``, or permuted as the ``rhs``
    string of ``dimension_numbers`` says):

    .. math::

        out = \mathrm{act}(acc(X, \mathrm{bin}(w)) \cdot s_o \cdot \beta + b_o),
        \qquad x' = (x + b^{in}) \cdot s^{in}

    with ``X = x'`` (``binary_weights``), ``bin(x')`` (``xnor``) or
    ``(bin(x')+1)/2`` (``and``). ``s_o`` is the learnable ``output_scale``
    (``use_scale``; 1 otherwise), ``b_o`` the ``output_bias``
    (``use_bias``), ``b^in``/``s^in`` the optional ``input_bias``/
    ``input_scale``. Gradients reach ``w`` through the
    ``weight_estimator`` surrogate and the input through
    ``input_estimator``; scales and biases get exact gradients.

    Args:
      in_features: C, input channels.
      out_features: O, output channels.
      kernel_size: int or (KH, KW).
      type: ``"xnor"`` (default), ``"and"`` or ``"binary_weights"``.
      strides, padding, dilation, groups, pad_value, beta_scaling,
        activation, negative_slope, dimension_numbers, input_estimator,
        weight_estimator: as in :func:`jax_binconv.binary_conv2d`
        (``dimension_numbers`` here as three layout strings).
      use_bias: learn ``output_bias`` (per output channel).
      use_scale: learn ``output_scale`` (per output channel), initialized to
        ``scale_init`` (e.g. ``1/K`` to keep outputs in ``[-1, 1]``).
      use_input_bias, use_input_scale: learn ``input_bias``/``input_scale``
        (per input channel). Also set by :func:`fold_batch_norm`.
      weight_clip: bound used by :func:`clip_weights` (``None``: no clip).
      kernel_init: initializer of the latent weights.
      rngs: ``nnx.Rngs``.

    Example:
      >>> layer = BinaryConv(16, 32, 3, rngs=nnx.Rngs(0))
      >>> layer(jnp.ones((2, 8, 8, 16))).shape
      (2, 8, 8, 32)
    """

    def __init__(self, in_features: int, out_features: int, kernel_size, *,
                 type: Any = "xnor", strides=1, padding="SAME", dilation=1,
                 groups: int = 1, pad_value: float = 0.0, beta_scaling: bool = False,
                 activation: str | None = None, negative_slope: float = 0.01,
                 dimension_numbers=None, input_estimator="ste", weight_estimator="ste",
                 use_bias: bool = False, use_scale: bool = False, scale_init: float = 1.0,
                 use_input_bias: bool = False, use_input_scale: bool = False,
                 weight_clip: float | None = 1.0,
                 kernel_init: Callable = _default_kernel_init, rngs: nnx.Rngs):
        kh, kw = _pair(kernel_size, "kernel_size")
        if in_features % groups or out_features % groups:
            raise ValueError(f"groups={groups} must divide in_features={in_features} and "
                             f"out_features={out_features}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.kernel_size = (kh, kw)
        self.type = options.conv_type(type).name.lower()
        self.strides = _pair(strides, "strides")
        self.padding = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
        self.dilation = _pair(dilation, "dilation")
        self.groups = int(groups)
        self.pad_value = float(pad_value)
        self.beta_scaling = bool(beta_scaling)
        self.activation = activation
        self.negative_slope = float(negative_slope)
        self.dimension_numbers = _check_dims(dimension_numbers)
        self.input_estimator = input_estimator
        self.weight_estimator = weight_estimator
        self.weight_clip = weight_clip
        hwio = (kh, kw, in_features // groups, out_features)
        shape = tuple(hwio["HWIO".index(ch)] for ch in self.dimension_numbers[1])
        self.kernel = LatentWeight(kernel_init(rngs.params(), shape, jnp.float32))
        self._init_affine(in_features, out_features, use_bias, use_scale, use_input_bias,
                          use_input_scale, scale_init, rngs)

    def conv_kwargs(self) -> dict:
        """The static ``binary_conv2d`` options of this layer."""
        dn = self.dimension_numbers
        return dict(type=self.type, strides=self.strides, padding=self.padding,
                    dilation=self.dilation, groups=self.groups, pad_value=self.pad_value,
                    beta_scaling=self.beta_scaling, activation=self.activation,
                    negative_slope=self.negative_slope,
                    dimension_numbers=None if dn == ("NHWC", "HWIO", "NHWC") else dn,
                    input_estimator=self.input_estimator,
                    weight_estimator=self.weight_estimator)

    def __call__(self, x, *, output: str = "float"):
        return binary_conv2d(x, self.kernel[...], output=output, **self.conv_kwargs(),
                             **self._affine_kwargs(x))


class BinaryDense(_BinaryBase):
    r"""Binary fully connected layer with latent float weights (Flax NNX).

    ``x [..., K]`` times ``bin(w)``, ``w [K, O]``: :func:`jax_binconv.binary_dense`,
    i.e. ``out = act(acc * s_o * beta + b_o)`` with ``acc = sum_k X_k W_k`` and
    ``X``, ``W`` as in :class:`BinaryConv` for ``type``; ``beta = mean_k |x'_k|``
    with ``beta_scaling``. Parameters and options as in :class:`BinaryConv`.

    Example:
      >>> BinaryDense(64, 10, rngs=nnx.Rngs(0))(jnp.ones((3, 64))).shape
      (3, 10)
    """

    def __init__(self, in_features: int, out_features: int, *, type: Any = "xnor",
                 beta_scaling: bool = False, activation: str | None = None,
                 negative_slope: float = 0.01, input_estimator="ste", weight_estimator="ste",
                 use_bias: bool = False, use_scale: bool = False, scale_init: float = 1.0,
                 use_input_bias: bool = False, use_input_scale: bool = False,
                 weight_clip: float | None = 1.0,
                 kernel_init: Callable = _default_kernel_init, rngs: nnx.Rngs):
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.type = options.conv_type(type).name.lower()
        self.beta_scaling = bool(beta_scaling)
        self.activation = activation
        self.negative_slope = float(negative_slope)
        self.input_estimator = input_estimator
        self.weight_estimator = weight_estimator
        self.weight_clip = weight_clip
        self.kernel = LatentWeight(kernel_init(rngs.params(), (in_features, out_features),
                                               jnp.float32))
        self._init_affine(in_features, out_features, use_bias, use_scale, use_input_bias,
                          use_input_scale, scale_init, rngs)

    def dense_kwargs(self) -> dict:
        """The static ``binary_dense`` options of this layer."""
        return dict(type=self.type, beta_scaling=self.beta_scaling, activation=self.activation,
                    negative_slope=self.negative_slope, input_estimator=self.input_estimator,
                    weight_estimator=self.weight_estimator)

    def __call__(self, x, *, output: str = "float"):
        return binary_dense(x, self.kernel[...], output=output, **self.dense_kwargs(),
                            **self._affine_kwargs(x))


class MaxPool(nnx.Module):
    """Max pooling over H and W of NHWC input, float or packed.

    On :class:`~jax_binconv.PackedActivations` it is the bitwise OR of the
    words over each window: ``bin`` is non-decreasing, so
    ``bin(max(v)) = max(bin(v))``, and on bits ``max`` is OR (a padded tap
    is ``-inf`` for floats, bit 0 for packed: both neutral). This lets
    :func:`jax_binconv.nn.to_inference` keep a pooled activation packed.

    >>> MaxPool(2)(jnp.arange(16.).reshape(1, 4, 4, 1))[0, :, :, 0]
    Array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
    """

    def __init__(self, window_shape=2, strides=None, padding="VALID"):
        self.window_shape = _pair(window_shape, "window_shape")
        self.strides = self.window_shape if strides is None else _pair(strides, "strides")
        self.padding = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)

    def _pads(self, shape):
        dims = (1,) + self.window_shape + (1,)
        strides = (1,) + self.strides + (1,)
        if isinstance(self.padding, str):
            return dims, strides, lax.padtype_to_pads(shape, dims, strides, self.padding)
        return dims, strides, ((0, 0),) + tuple(self.padding) + ((0, 0),)

    def __call__(self, x):
        if isinstance(x, PackedActivations):
            dims, strides, pads = self._pads(x.words.shape)
            words = lax.reduce_window(x.words, np.uint32(0), lax.bitwise_or, dims, strides, pads)
            return PackedActivations(words, x.channels)
        x = jnp.asarray(x)
        dims, strides, pads = self._pads(x.shape)
        return lax.reduce_window(x, -jnp.inf, lax.max, dims, strides, pads)


# ---------------------------------------------------------------- helpers


def binary_layers(model) -> list:
    """Every :class:`BinaryConv` / :class:`BinaryDense` inside ``model`` (itself included)."""
    return [m for _, m in nnx.iter_graph(model) if isinstance(m, _BinaryBase)]


def clip_weights(model, clip: float | None = None):
    """Clip latent weights in place to ``[-c, c]``, Larq's ``weight_clip``.

    ``c`` is ``clip`` if given, else each layer's ``weight_clip`` (layers with
    ``weight_clip=None`` are left alone). Call it after each optimizer step
    (inside the jitted step is fine). Returns ``model``.
    """
    for layer in binary_layers(model):
        c = layer.weight_clip if clip is None else clip
        if c is not None:
            layer.kernel[...] = jnp.clip(layer.kernel[...], -c, c)
    return model


def binarize_weights(model):
    """Set every latent weight to ``bin(w)`` in {-1, +1}, in place.

    Latent-free optimizers such as :func:`jax_binconv.nn.bop` work on
    +-1 weights; call this once before training with them. Returns ``model``.
    """
    for layer in binary_layers(model):
        layer.kernel[...] = layer.binary_kernel().astype(layer.kernel[...].dtype)
    return model


def _bn_factors(bn):
    """``(k, mean, bias)`` of an inference batch norm ``y = (x - mean) * k + bias``,
    ``k = scale * rsqrt(var + eps)`` (flax's formula, in float32)."""
    if not isinstance(bn, nnx.BatchNorm):
        raise TypeError(f"bn must be a flax.nnx.BatchNorm; got {type(bn).__name__}")
    mean = jnp.asarray(bn.mean[...], jnp.float32)
    k = lax.rsqrt(jnp.asarray(bn.var[...], jnp.float32) + bn.epsilon)
    if bn.scale is not None:
        k = k * jnp.asarray(bn.scale[...], jnp.float32)
    bias = (jnp.asarray(bn.bias[...], jnp.float32) if bn.bias is not None
            else jnp.zeros_like(mean))
    return k, mean, bias


def _vec_or(v, n, default):
    return jnp.full((n,), default, jnp.float32) if v is None else jnp.asarray(v[...], jnp.float32)


def fold_batch_norm(layer, bn, *, position: str = "after"):
    r"""Fold an inference-mode batch norm into a binary layer; returns a new layer.

    Batch norm in inference mode is the per-channel affine map
    ``BN(v) = (v - mean) k + bias`` with ``k = scale / sqrt(var + eps)``.

    ``position="after"`` (``layer`` then ``bn``): needs a linear layer
    activation. With ``out = acc s_o beta + b_o``,

    .. math::

        BN(out) = acc\,(s_o k)\,\beta + ((b_o - mean) k + bias)

    so ``output_scale <- s_o k`` and ``output_bias <- (b_o - mean) k + bias``
    (``k`` may be negative: ``output_scale`` may be).

    ``position="before"`` (``bn`` then ``layer``): with ``x' = (x + b^in) s^in``,

    .. math::

        (BN(x) + b^{in}) s^{in} = (x - mean + (bias + b^{in}) / k)\,(k s^{in})

    so ``input_bias <- (bias + b^in)/k - mean`` and ``input_scale <- k s^in``;
    every ``k`` must be non-zero (a zero ``scale`` makes the channel a constant,
    which ``(x + b) s`` cannot express).

    The result equals the unfolded pair up to float32 rounding (the integer
    accumulator is unchanged; a binarized value can differ only where
    ``x'`` is within rounding of 0).
    """
    if not isinstance(layer, _BinaryBase):
        raise TypeError(f"layer must be a BinaryConv or BinaryDense; got {type(layer).__name__}")
    k, mean, bias = _bn_factors(bn)
    new = nnx.clone(layer)
    if position == "after":
        o = layer.out_features
        if k.shape != (o,):
            raise ValueError(f"bn has {k.shape[0]} features; the layer has {o} output channels")
        if options.activation(layer.activation) != options.ACTIVATIONS["linear"]:
            raise ValueError("fold_batch_norm(position='after') needs a layer with a linear "
                             f"activation; this one has activation={layer.activation!r}")
        s = _vec_or(layer.output_scale, o, 1.0)
        b = _vec_or(layer.output_bias, o, 0.0)
        new.output_scale = nnx.Param(s * k)
        new.output_bias = nnx.Param((b - mean) * k + bias)
    elif position == "before":
        c = layer.in_features
        if k.shape != (c,):
            raise ValueError(f"bn has {k.shape[0]} features; the layer has {c} input channels")
        if bool(jnp.any(k == 0)):
            raise ValueError("fold_batch_norm(position='before'): the batch norm has a zero scale "
                             "for some channel; its output there is constant and cannot be "
                             "written as (x + input_bias) * input_scale")
        ib = _vec_or(layer.input_bias, c, 0.0)
        isc = _vec_or(layer.input_scale, c, 1.0)
        new.input_bias = nnx.Param((bias + ib) / k - mean)
        new.input_scale = nnx.Param(k * isc)
    else:
        raise ValueError(f"position must be 'after' or 'before'; got {position!r}")
    return new
