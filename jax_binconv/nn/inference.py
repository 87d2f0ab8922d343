"""Convert a trained binary network into an inference network: packed weights,
folded batch norms, and packed activations between consecutive binary layers.

How the packed links stay exact
-------------------------------
``binary_conv2d(..., output="packed")`` stores ``bin(out)`` of the layer's own
epilogue. The next binary layer, in the training model, binarizes
``x' = (y + b^in) s^in`` where ``y`` is the previous output after whatever
batch norms sit in between. A packed input forbids ``input_bias`` /
``input_scale`` (its bits are already made), so that affine map, and the
batch norms, must move into the *producer's* epilogue -- and a naive
rescaling (``s_o <- s_o s^in``, ...) changes float rounding, so a bit could
differ where ``x'`` is within an ulp of 0.

For an XNOR or AND producer without beta scaling the accumulator ``acc`` is
an integer in ``[-K, K]`` (``K = KH KW C/groups``), and every step from
``acc`` to the consumer's bit (epilogue, activation, batch norm, input
affine, ``bin``) is monotone per channel. So we *tabulate* the training
model's bit for every possible ``acc`` of every output channel (evaluating
exactly the training computation: the reference epilogue, the flax batch
norm modules, the consumer's input affine), find the threshold ``T`` where
it changes, and give the producer the epilogue

* ``output_scale = +1, output_bias = 0.5 - T`` (bit = ``acc >= T``), or
* ``output_scale = -1, output_bias = T + 0.5`` (bit = ``acc <= T``), or
* ``output_scale = 0, output_bias = +-1`` (a constant channel),

with a linear activation: ``bin(out)`` is then the training bit for every
integer ``acc``, exactly. Max pooling between the two (:class:`MaxPool`)
stays on the packed words (bitwise OR), valid because ``bin`` commutes with
``max`` under non-decreasing maps; it is allowed only after the batch norms
and when the consumer's ``input_scale`` is >= 0.

Everywhere else the link stays float: a producer with beta scaling or of
type ``binary_weights`` (its accumulator is not an integer table), a consumer
with beta scaling (it would see ``|x'| = 1``) or of type ``binary_weights``
(it needs the float input), anything but batch norms then max pools in
between, a max pool with a negative consumer ``input_scale``, a conv/dense
mix, a non-NHWC layout. There the producer's following batch norms
are folded into its ``output_scale``/``output_bias`` when its activation is
linear (kept as modules otherwise), and a batch norm right before a binary
layer with float input is folded into its ``input_bias``/``input_scale``
(:func:`jax_binconv.nn.fold_batch_norm`; equal up to float32 rounding).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from .. import options, reference
from ..conv import binary_conv2d, binary_dense
from ..options import BinaryConvType
from ..packing import PackedActivations, PackedWeights, pack_weights, sign_bits
from .layers import BinaryConv, BinaryDense, MaxPool, _BinaryBase, fold_batch_norm

__all__ = ["PackedBinaryConv", "PackedBinaryDense", "to_inference"]


class PackedBits(nnx.Variable):
    """uint32 words of packed binary weights (not trainable)."""


class _PackedBase(nnx.Module):
    def _setup(self, layer: _BinaryBase, output: str):
        self.type = layer.type
        self.output = output
        o = layer.out_features
        c = layer.in_features

        def vec(v):
            return nnx.data(None if v is None else nnx.Variable(jnp.asarray(v[...], jnp.float32)))

        self.output_scale = vec(layer.output_scale)
        self.output_bias = vec(layer.output_bias)
        self.input_bias = vec(layer.input_bias)
        self.input_scale = vec(layer.input_scale)
        self.in_features, self.out_features = c, o

    def weights(self) -> PackedWeights:
        return PackedWeights(self.words[...], self.in_channels_per_group)

    def _affine(self, x):
        def val(v):
            return None if v is None else v[...]
        packed = isinstance(x, PackedActivations)
        if packed and (self.input_bias is not None or self.input_scale is not None):
            raise ValueError("this layer has an input affine map and cannot take packed input")
        return dict(input_bias=val(self.input_bias), input_scale=val(self.input_scale),
                    output_scale=val(self.output_scale), output_bias=val(self.output_bias))


class PackedBinaryConv(_PackedBase):
    """Inference form of :class:`BinaryConv`: :class:`PackedWeights`, float or
    packed input, float or packed (``output="packed"``) output."""

    def __init__(self, layer: BinaryConv, output: str = "float"):
        self._setup(layer, output)
        rhs = layer.dimension_numbers[1]
        pw = pack_weights(layer.kernel[...], layout=rhs, groups=layer.groups)
        self.words = PackedBits(pw.words)
        self.in_channels_per_group = pw.in_channels_per_group
        self.kwargs = {k: v for k, v in layer.conv_kwargs().items()
                       if k not in ("input_estimator", "weight_estimator")}

    def __call__(self, x):
        return binary_conv2d(x, self.weights(), output=self.output, **self.kwargs,
                             **self._affine(x))


class PackedBinaryDense(_PackedBase):
    """Inference form of :class:`BinaryDense` (1x1 :class:`PackedWeights`)."""

    def __init__(self, layer: BinaryDense, output: str = "float"):
        self._setup(layer, output)
        pw = pack_weights(layer.kernel[...][None, None])
        self.words = PackedBits(pw.words)
        self.in_channels_per_group = pw.in_channels_per_group
        self.kwargs = {k: v for k, v in layer.dense_kwargs().items()
                       if k not in ("input_estimator", "weight_estimator")}

    def __call__(self, x):
        # Packed activations between dense layers keep the leading dims of the
        # float input as lead + (1, 1, words); binary_dense wants [N, 1, 1, words].
        if isinstance(x, PackedActivations):
            lead = x.words.shape[:-3]
            xin = PackedActivations(x.words.reshape((-1, 1, 1, x.words.shape[-1])), x.channels)
        else:
            lead = jnp.shape(x)[:-1]
            xin = x
        y = binary_dense(xin, self.weights(), output=self.output, **self.kwargs,
                         **self._affine(x))
        if isinstance(y, PackedActivations):
            return PackedActivations(y.words.reshape(lead + (1, 1, y.words.shape[-1])),
                                     y.channels)
        return y.reshape(lead + (y.shape[-1],))


def _packed_form(layer, output="float"):
    cls = PackedBinaryConv if isinstance(layer, BinaryConv) else PackedBinaryDense
    return cls(layer, output)


def _is_nhwc(layer):
    return (not isinstance(layer, BinaryConv)
            or layer.dimension_numbers == ("NHWC", "HWIO", "NHWC"))


def _acc_range(layer):
    if isinstance(layer, BinaryConv):
        k = layer.kernel_size[0] * layer.kernel_size[1] * (layer.in_features // layer.groups)
    else:
        k = layer.in_features
    return (0 if layer.conv_type == BinaryConvType.AND else -k), k


def _threshold_epilogue(producer, bns, consumer):
    """``(output_scale, output_bias)`` making ``bin(out)`` of ``producer`` equal
    the bit the training model feeds ``consumer``, for every integer acc; or
    ``None`` when some channel's bit is not monotone in acc."""
    lo, hi = _acc_range(producer)
    o = producer.out_features
    acc = jnp.broadcast_to(jnp.arange(lo, hi + 1, dtype=jnp.float32)[:, None], (hi - lo + 1, o))

    def vec(v, default):
        return jnp.full((o,), default, jnp.float32) if v is None else jnp.asarray(v[...],
                                                                                 jnp.float32)

    z = reference.epilogue(acc, vec(producer.output_scale, 1.0), None,
                           vec(producer.output_bias, 0.0),
                           options.activation(producer.activation), producer.negative_slope)
    for bn in bns:
        z = bn(z)
    if consumer.in_features != o:
        return None
    if consumer.input_bias is not None or consumer.input_scale is not None:
        z = reference.input_prime(z, vec(consumer.input_bias, 0.0), vec(consumer.input_scale, 1.0))
    bits = np.asarray(sign_bits(z))  # [values, O]
    scale = np.zeros(o, np.float32)
    bias = np.zeros(o, np.float32)
    for ch in range(o):
        b = bits[:, ch]
        if b.all() or not b.any():
            scale[ch], bias[ch] = 0.0, (1.0 if b[0] else -1.0)
            continue
        idx = np.flatnonzero(b)
        if b[-1] and np.all(b[idx[0]:]):  # 0...0 1...1: bit = acc >= T
            scale[ch], bias[ch] = 1.0, 0.5 - (lo + idx[0])
        elif b[0] and np.all(b[:idx[-1] + 1]):  # 1...1 0...0: bit = acc <= T
            scale[ch], bias[ch] = -1.0, (lo + idx[-1]) + 0.5
        else:
            return None
    return jnp.asarray(scale), jnp.asarray(bias)


def _can_take_packed(layer):
    return (layer.conv_type in (BinaryConvType.XNOR, BinaryConvType.AND)
            and not layer.beta_scaling and _is_nhwc(layer))


def _integer_producer(layer):
    return (layer.conv_type in (BinaryConvType.XNOR, BinaryConvType.AND)
            and not layer.beta_scaling and _is_nhwc(layer))


def _check_eval(bn):
    if not bn.use_running_average:
        raise ValueError("to_inference: batch norms must be in inference mode; call model.eval() "
                         "first (or pass use_running_average=True)")


def _convert_sequence(layers):
    layers = list(layers)
    n = len(layers)
    out = []
    packed_in = False  # whether the next binary layer receives packed input
    i = 0
    while i < n:
        layer = layers[i]
        if isinstance(layer, _BinaryBase):
            j = i + 1
            bns, pools = [], []
            while j < n and isinstance(layers[j], nnx.BatchNorm):
                _check_eval(layers[j])
                bns.append(layers[j])
                j += 1
            while j < n and isinstance(layers[j], MaxPool):
                pools.append(layers[j])
                j += 1
            nxt = layers[j] if j < n else None
            link = None
            if (isinstance(nxt, _BinaryBase) and _can_take_packed(nxt)
                    and _integer_producer(layer) and _is_nhwc(layer)
                    and not (isinstance(layer, BinaryDense) and isinstance(nxt, BinaryConv))
                    and not (isinstance(layer, BinaryConv) and isinstance(nxt, BinaryDense))):
                monotone_ok = (not pools or nxt.input_scale is None
                               or bool(jnp.all(nxt.input_scale[...] >= 0)))
                if monotone_ok:
                    link = _threshold_epilogue(layer, bns, nxt)
            src = layer
            if link is not None:
                src = nnx.clone(layer)
                src.output_scale = nnx.Param(link[0])
                src.output_bias = nnx.Param(link[1])
                src.activation = None
                new = _packed_form(src, "packed")
                out.append(_Packed(new, packed_in))
                out.extend(pools)
                packed_in = True
                i = j
                continue
            # float link: fold following batch norms while the activation is linear
            k = 0
            while (k < len(bns)
                   and options.activation(src.activation) == options.ACTIVATIONS["linear"]):
                src = fold_batch_norm(src, bns[k], position="after")
                k += 1
            out.append(_Packed(_packed_form(src, "float"), packed_in))
            out.extend(bns[k:])
            out.extend(pools)
            packed_in = False
            i = j
            continue
        if (isinstance(layer, nnx.BatchNorm) and i + 1 < n
                and isinstance(layers[i + 1], _BinaryBase)):
            _check_eval(layer)
            k_ok = True
            try:
                layers[i + 1] = fold_batch_norm(layers[i + 1], layer, position="before")
            except ValueError:
                k_ok = False
            if not k_ok:
                out.append(layer)
            i += 1
            continue
        out.append(layer)
        packed_in = False
        i += 1
    return [o.layer if isinstance(o, _Packed) else o for o in _drop_affines(out)]


class _Packed:
    """Conversion-time wrapper: a packed layer and whether its input is packed."""

    def __init__(self, layer, packed_input):
        self.layer, self.packed_input = layer, packed_input


def _drop_affines(items):
    # A consumer fed packed bits had its input affine baked into the producer.
    for it in items:
        if isinstance(it, _Packed) and it.packed_input:
            it.layer.input_bias = nnx.data(None)
            it.layer.input_scale = nnx.data(None)
    return items


def _replace_in_graph(model):
    model = nnx.clone(model)
    for _, parent in list(nnx.iter_graph(model)):
        if isinstance(parent, _BinaryBase):
            continue
        if isinstance(parent, nnx.Module):
            for name, child in list(vars(parent).items()):
                if isinstance(child, _BinaryBase):
                    setattr(parent, name, _packed_form(child, "float"))
        elif isinstance(parent, (list, nnx.List)):
            for idx, child in enumerate(list(parent)):
                if isinstance(child, _BinaryBase):
                    parent[idx] = _packed_form(child, "float")
    return model


def to_inference(model):
    """An inference copy of ``model`` computing what ``model`` computes in
    inference mode (call ``model.eval()`` first), with packed weights.

    For an ``nnx.Sequential`` (or a list/tuple of layers) the layer sequence is
    rewritten:

    * each :class:`BinaryConv`/:class:`BinaryDense` becomes a
      :class:`PackedBinaryConv`/:class:`PackedBinaryDense` holding
      :class:`~jax_binconv.PackedWeights` (1 bit per weight);
    * two binary layers separated only by batch norms and (after them)
      :class:`MaxPool` layers are linked by packed activations: the
      producer emits ``binary_conv2d(..., output="packed")`` with a threshold
      epilogue that reproduces the training model's bits exactly (see the
      module docstring), and the consumer reads the packed words;
    * other batch norms are folded into the neighbouring binary layer's
      output (following) or input (preceding) scale and bias.

    Predictions equal the training model's; float outputs agree to float32
    rounding of the folded batch norms. Any other module is converted by
    replacing each binary layer in place by its packed-weight form (float
    activations, no folding: the data flow is not known). The input model is
    not modified.
    """
    if isinstance(model, nnx.Sequential):
        return nnx.Sequential(*_convert_sequence(nnx.clone(model).layers))
    if isinstance(model, (list, tuple)):
        return nnx.Sequential(*_convert_sequence([nnx.clone(m) if isinstance(m, nnx.Module)
                                                  else m for m in model]))
    if isinstance(model, _BinaryBase):
        return _packed_form(model, "float")
    if isinstance(model, nnx.Module):
        return _replace_in_graph(model)
    raise TypeError(f"model must be an nnx.Module or a list of layers; got {type(model).__name__}")
