"""The public operations: argument checking, layout canonicalization, and the
choice between the primitive and the reference."""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import options, packing, reference
from .options import BinaryConvType
from .packing import PackedActivations, PackedWeights

_FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def binary_conv2d(
    x,
    w,
    *,
    type: Any = "xnor",
    strides=(1, 1),
    padding="SAME",
    dilation=(1, 1),
    groups: int = 1,
    input_bias=None,
    input_scale=None,
    output_scale=None,
    output_bias=None,
    beta_scaling: bool = False,
    pad_value: float = 0.0,
    activation: str | None = None,
    negative_slope: float = 0.01,
    dimension_numbers=None,
    input_estimator="ste",
    weight_estimator="ste",
    output: str = "float",
):
    r"""Binary 2-D convolution (Apple's ``MPSCNNBinaryConvolution``, extended).

    With ``x' = (x + input_bias) * input_scale`` and ``bin(v) = -1 if v < 0
    else +1``, for output pixel ``(n, yo, xo)`` and channel ``o`` of group g:

    .. math::

        acc = \sum_{dy, dx, c \in g} X[n, yo\,s_h + dy\,d_h - top, xo\,s_w + dx\,d_w - left, c]
              \; W_b[dy, dx, c, o]

        out = \mathrm{activation}(acc \cdot output\_scale_o \cdot \beta_{n,yo,xo} + output\_bias_o)

    where, by ``type``: ``BINARY_WEIGHTS`` uses ``X = x'`` and ``W_b = bin(w)``;
    ``XNOR`` uses ``bin(x')`` and ``bin(w)`` (``acc = K - 2 popcount(x XOR w)``);
    ``AND`` uses ``(bin(x')+1)/2`` and ``(bin(w)+1)/2`` (``acc = popcount(x AND w)``).
    A padded tap takes ``pad_value`` (after binarization): 0 by default
    ("zero padding"), +-1 allowed for XNOR, 0/1 for AND, any finite number
    for BINARY_WEIGHTS. With ``beta_scaling`` (XNOR-Net), ``beta`` is the mean
    over the window's taps of ``A = mean_c |x'|`` (padded taps add 0, the
    divisor stays KH*KW); otherwise 1. The full contract is
    ``docs/semantics.md``.

    Gradients (``jax.grad``, ``jvp``, ``vjp``) use straight-through
    estimators: each ``bin`` is differentiated as a surrogate chosen by
    ``input_estimator`` / ``weight_estimator``: ``"ste"`` (``1[|v| <= clip]``),
    ``"identity"``, ``"approx_sign"`` (``max(0, 2 - 2|v|)``) or ``"swish"``;
    pass ``("ste", clip)`` to set the clip (default 1.0).

    Args:
      x: ``[N, H, W, C]`` float32/bfloat16/float16 (layout per
        ``dimension_numbers``), or :class:`PackedActivations` (XNOR/AND only).
      w: ``[KH, KW, C/groups, O]`` latent float weights (bool/int accepted),
        or :class:`PackedWeights` from :func:`pack_weights`.
      type: ``BinaryConvType`` or ``"binary_weights" | "xnor" | "and"``.
      strides, dilation: int or pair (kernel dilation).
      padding: ``"SAME"``, ``"VALID"`` or ``((top, bottom), (left, right))``.
      groups: feature groups; divides C and O.
      input_bias, input_scale: scalar or ``[C]``.
      output_scale, output_bias: scalar or ``[O]``.
      beta_scaling: XNOR-Net scaling (SPEC section 5).
      pad_value: value of a padded tap after binarization.
      activation: ``None``/"linear", "relu", "relu6", "leaky_relu", "sigmoid",
        "tanh", "hard_tanh", "sign".
      negative_slope: slope of ``leaky_relu`` for negative inputs.
      dimension_numbers: as in ``lax.conv_general_dilated`` (default
        NHWC/HWIO/NHWC; e.g. ``("NCHW", "OIHW", "NCHW")``).
      input_estimator, weight_estimator: see above.
      output: ``"float"`` (x's dtype; float32 for packed x) or ``"packed"``
        (``bin(out)`` as :class:`PackedActivations`, NHWC; no gradient).

    Example:
      >>> x = jnp.ones((1, 8, 8, 64)); w = jnp.ones((3, 3, 64, 32))
      >>> binary_conv2d(x, w, type="xnor", padding="VALID")[0, 0, 0, 0]
      Array(576., dtype=float32)
    """
    return _binary_conv2d(
        x, w, type=type, strides=strides, padding=padding, dilation=dilation,
        groups=groups, input_bias=input_bias, input_scale=input_scale,
        output_scale=output_scale, output_bias=output_bias,
        beta_scaling=beta_scaling, pad_value=pad_value, activation=activation,
        negative_slope=negative_slope, dimension_numbers=dimension_numbers,
        input_estimator=input_estimator, weight_estimator=weight_estimator,
        output=output, use_reference=False)


def binary_dense(
    x,
    w,
    *,
    type: Any = "xnor",
    input_bias=None,
    input_scale=None,
    output_scale=None,
    output_bias=None,
    beta_scaling: bool = False,
    activation: str | None = None,
    negative_slope: float = 0.01,
    input_estimator="ste",
    weight_estimator="ste",
    output: str = "float",
):
    r"""Binary fully connected layer (``MPSCNNBinaryFullyConnected``).

    ``x`` is ``[..., K]`` (or :class:`PackedActivations` with K channels and
    H = W = 1), ``w`` is ``[K, O]`` latent weights or :class:`PackedWeights`
    of a 1x1 kernel. Computes, per leading index,
    ``activation(acc * output_scale * beta + output_bias)`` with
    ``acc = sum_k X_k W_k`` (X, W as in :func:`binary_conv2d` for ``type``)
    and ``beta = mean_k |x'_k|`` when ``beta_scaling``. Same gradients.

    >>> binary_dense(jnp.ones((2, 100)), -jnp.ones((100, 3)))[0]
    Array([-100., -100., -100.], dtype=float32)
    """
    return _binary_dense(
        x, w, type=type, input_bias=input_bias, input_scale=input_scale,
        output_scale=output_scale, output_bias=output_bias,
        beta_scaling=beta_scaling, activation=activation,
        negative_slope=negative_slope, input_estimator=input_estimator,
        weight_estimator=weight_estimator, output=output, use_reference=False)


# ----------------------------------------------------------------------------


def _binary_dense(x, w, *, use_reference, output="float", **kw):
    if isinstance(x, PackedActivations):
        if x.words.ndim != 4 or x.words.shape[1:3] != (1, 1):
            raise ValueError(
                "x: PackedActivations for binary_dense must be [N, 1, 1, words]; "
                f"got words of shape {x.words.shape}")
        x4, lead = x, None
    else:
        x = jnp.asarray(x)
        if x.ndim < 1:
            raise ValueError(f"x must have at least one axis [..., K]; got shape {x.shape}")
        lead = x.shape[:-1]
        x4 = x.reshape((int(np.prod(lead, dtype=np.int64)), 1, 1, x.shape[-1]))
    if isinstance(w, PackedWeights):
        if w.words.shape[1:3] != (1, 1):
            raise ValueError(f"w: PackedWeights for binary_dense must be 1x1; got {w.shape}")
        w4 = w
    else:
        w = jnp.asarray(w)
        if w.ndim != 2:
            raise ValueError(f"w must be [K, O] for binary_dense; got shape {w.shape}")
        w4 = w.reshape((1, 1) + w.shape)
    y = _binary_conv2d(x4, w4, padding="VALID", output=output,
                       use_reference=use_reference, **kw)
    if output == "packed" or lead is None:
        return y
    return y.reshape(lead + (y.shape[-1],))


def _resolve_padding(padding, in_hw, eff_k, strides):
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return (0, 0, 0, 0)
        if mode == "SAME":
            pads = []
            for size, k, s in zip(in_hw, eff_k, strides):
                out = -(-size // s)
                total = max((out - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            return tuple(pads)
        raise ValueError(f"padding must be 'SAME', 'VALID' or ((top, bottom), (left, right)); got {padding!r}")
    try:
        (t, b), (l, r) = padding
        vals = (t, b, l, r)
    except (TypeError, ValueError):
        raise ValueError(
            f"padding must be 'SAME', 'VALID' or ((top, bottom), (left, right)); got {padding!r}") from None
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in vals):
        raise TypeError(f"padding values must be ints; got {padding!r}")
    if any(v < 0 for v in vals):
        raise ValueError(f"padding values must be >= 0; got {padding!r}")
    if any(v > options.MAX_GEOMETRY for v in vals):
        raise ValueError(f"padding values must be <= 2^24; got {padding!r}")
    return tuple(int(v) for v in vals)


def _vector(value, length, name, default):
    # Defaults and concrete host values stay numpy: XLA embeds them as
    # literals, where a traced broadcast would be one more tiny kernel per
    # call on a GPU. Traced and device values go through jnp.
    if value is None:
        return np.full((length,), default, np.float32)
    xp = np if isinstance(value, (numbers.Real, np.ndarray, np.generic)) else jnp
    v = xp.asarray(value)
    if not (xp.issubdtype(v.dtype, xp.floating) or xp.issubdtype(v.dtype, xp.integer)
            or v.dtype == xp.bool_):
        raise TypeError(f"{name} must be a real number or array; got dtype {v.dtype}")
    if v.ndim == 0 or v.shape == (1,):
        return xp.broadcast_to(v.reshape(()).astype(np.float32), (length,))
    if v.shape != (length,):
        raise ValueError(f"{name} must be a scalar or have shape ({length},); got shape {v.shape}")
    return v.astype(np.float32)


def _dimension_specs(dimension_numbers, x_ndim, w_ndim):
    if dimension_numbers is None:
        return (0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2)
    if x_ndim != 4 or w_ndim != 4:
        raise ValueError(f"x and w must be rank 4; got ranks {x_ndim} and {w_ndim}")
    try:
        dn = lax.conv_dimension_numbers((1,) * 4, (1,) * 4, dimension_numbers)
    except Exception as e:  # lax raises TypeError/ValueError/AssertionError variously
        raise ValueError(f"dimension_numbers: {e} (got {dimension_numbers!r})") from None
    if len(dn.lhs_spec) != 4:
        raise ValueError(f"dimension_numbers must describe 2-D convolutions; got {dimension_numbers!r}")
    return tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec)


def _binary_conv2d(x, w, *, type="xnor", strides=(1, 1), padding="SAME",
                   dilation=(1, 1), groups=1, input_bias=None, input_scale=None,
                   output_scale=None, output_bias=None, beta_scaling=False,
                   pad_value=0.0, activation=None, negative_slope=0.01,
                   dimension_numbers=None, input_estimator="ste",
                   weight_estimator="ste", output="float", use_reference=False):
    ctype = options.conv_type(type)
    act = options.activation(activation)
    in_est = options.estimator(input_estimator, "input_estimator")
    w_est = options.estimator(weight_estimator, "weight_estimator")
    strides = options.int_pair(strides, "strides", 1)
    dilation = options.int_pair(dilation, "dilation", 1)
    output = options.output_kind(output)
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral) or groups < 1:
        raise ValueError(f"groups must be a positive int; got {groups!r}")
    groups = int(groups)
    if not isinstance(beta_scaling, (bool, np.bool_)):
        raise TypeError(f"beta_scaling must be a bool; got {beta_scaling!r}")
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real) \
            or not np.isfinite(negative_slope):
        raise TypeError(f"negative_slope must be a finite real number; got {negative_slope!r}")

    x_packed = isinstance(x, PackedActivations)
    w_packed = isinstance(w, PackedWeights)
    lhs_spec, rhs_spec, out_spec = _dimension_specs(
        dimension_numbers,
        4 if x_packed else jnp.ndim(x),
        4 if w_packed else jnp.ndim(w))

    # ---- x
    if x_packed:
        if ctype == BinaryConvType.BINARY_WEIGHTS:
            raise ValueError("x: PackedActivations hold binarized values; type BINARY_WEIGHTS "
                             "needs the full-precision input (use XNOR or AND)")
        if input_bias is not None or input_scale is not None:
            raise ValueError("input_bias/input_scale cannot apply to PackedActivations x: "
                             "its binarization is already done")
        packing._check_words(x.words, "x.words")
        if x.words.ndim != 4 or x.words.shape[-1] != packing.num_words(x.channels):
            raise ValueError(f"x: PackedActivations words must be [N, H, W, ceil({x.channels}/32)]; "
                             f"got shape {x.words.shape}")
        if lhs_spec != (0, 3, 1, 2):
            raise ValueError("x: PackedActivations are always NHWC; dimension_numbers must "
                             f"use an NHWC input; got {dimension_numbers!r}")
        xc = x.words
        n, h, wd, c = x.shape
        out_dtype = np.dtype(np.float32)
    else:
        x = jnp.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"x must be rank 4 (N, H, W, C in the layout of dimension_numbers); "
                             f"got shape {x.shape}")
        if x.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"x must be float32, bfloat16 or float16; got dtype {x.dtype}")
        xc = jnp.transpose(x, (lhs_spec[0], lhs_spec[2], lhs_spec[3], lhs_spec[1]))
        n, h, wd, c = xc.shape
        out_dtype = np.dtype(x.dtype)

    # ---- w
    if w_packed:
        packing._check_words(w.words, "w.words")
        if w.words.ndim != 4 or w.words.shape[-1] != packing.num_words(w.in_channels_per_group):
            raise ValueError(f"w: PackedWeights words must be [O, KH, KW, ceil(Cg/32)]; got {w.words.shape}")
        wc = w.words
        kh, kw, cg, o = w.shape
    else:
        w = jnp.asarray(w)
        if w.ndim != 4:
            raise ValueError(f"w must be rank 4 (KH, KW, C/groups, O in the layout of "
                             f"dimension_numbers); got shape {w.shape}")
        if jnp.issubdtype(w.dtype, jnp.complexfloating):
            raise TypeError(f"w must be real; got dtype {w.dtype}")
        wc = jnp.transpose(w, (rhs_spec[2], rhs_spec[3], rhs_spec[1], rhs_spec[0]))
        if wc.dtype != jnp.bool_ and not jnp.issubdtype(wc.dtype, jnp.floating):
            wc = wc.astype(jnp.float32)  # ints: bin() by sign, as for floats
        kh, kw, cg, o = wc.shape

    if c % groups:
        raise ValueError(f"groups={groups} must divide the input channels C={c}")
    if o % groups:
        raise ValueError(f"groups={groups} must divide the output channels O={o}")
    if cg * groups != c:
        raise ValueError(f"w expects C/groups = {cg} input channels per group, i.e. C = {cg * groups} "
                         f"with groups={groups}; x has C = {c}")
    if min(kh, kw, cg, o) < 1:
        raise ValueError(f"w must have non-empty dims; got HWIO shape {(kh, kw, cg, o)}")
    if h < 1 or wd < 1 or c < 1:
        raise ValueError(f"x must have non-empty spatial and channel dims; got NHWC shape {(n, h, wd, c)}")

    eff_k = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    pads = _resolve_padding(padding, (h, wd), eff_k, strides)
    ho = (h + pads[0] + pads[1] - eff_k[0]) // strides[0] + 1
    wo = (wd + pads[2] + pads[3] - eff_k[1]) // strides[1] + 1
    if h + pads[0] + pads[1] < eff_k[0] or wd + pads[2] + pads[3] < eff_k[1]:
        raise ValueError(
            f"padding {padding!r} leaves an empty output: the padded input "
            f"{(h + pads[0] + pads[1], wd + pads[2] + pads[3])} is smaller than the dilated "
            f"kernel {eff_k}")

    # A symbolic batch (jax.export) is checked by the kernels at run time.
    n_known = max(n, 1) if isinstance(n, (int, np.integer)) else 1
    padded = n_known * (h + pads[0] + pads[1]) * (wd + pads[2] + pads[3]) * (c + groups)
    if padded > options.MAX_ELEMENTS or n_known * ho * wo * o > options.MAX_ELEMENTS:
        raise ValueError(
            f"x {(n, h, wd, c)} with padding {pads} and {o} output channels is too large: "
            "the padded input or the result would exceed 2^46 elements")

    # ---- pad_value
    if isinstance(pad_value, bool) or not isinstance(pad_value, numbers.Real):
        raise TypeError(f"pad_value must be a Python number (static); got {pad_value!r}")
    pad_value = float(pad_value)
    allowed = {BinaryConvType.XNOR: (-1.0, 0.0, 1.0), BinaryConvType.AND: (0.0, 1.0)}.get(ctype)
    if allowed is not None and pad_value not in allowed:
        raise ValueError(f"pad_value for type {ctype.name} must be one of {allowed}; got {pad_value!r}")
    if not np.isfinite(pad_value):
        raise ValueError(f"pad_value must be finite; got {pad_value!r}")
    pad_value = pad_value + 0.0  # -0.0 -> 0.0 so equal calls hash equal

    ib = _vector(input_bias, c, "input_bias", 0.0)
    isc = _vector(input_scale, c, "input_scale", 1.0)
    osc = _vector(output_scale, o, "output_scale", 1.0)
    ob = _vector(output_bias, o, "output_bias", 0.0)

    params = dict(
        conv_type=int(ctype), strides=strides, padding=pads, dilation=dilation,
        groups=groups, in_channels=int(c), pad_value=pad_value,
        beta_scaling=bool(beta_scaling), activation=act,
        negative_slope=float(negative_slope), output=output, out_dtype=out_dtype,
        input_estimator=in_est, weight_estimator=w_est)

    if use_reference:
        y = reference.conv_canonical(xc, wc, ib, isc, osc, ob, **params)
    else:
        from .primitive import binary_conv2d_p
        y = binary_conv2d_p.bind(xc, wc, ib, isc, osc, ob, **params)

    if output == "packed":
        return PackedActivations(y, int(o))
    src = [0] * 4
    src[out_spec[0]], src[out_spec[1]], src[out_spec[2]], src[out_spec[3]] = 0, 3, 1, 2
    return jnp.transpose(y, src)
