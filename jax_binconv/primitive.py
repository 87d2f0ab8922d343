"""The ``binary_conv2d`` primitive: abstract evaluation, eager impl, JVP by
straight-through estimators, and batching. Lowerings live in
:mod:`jax_binconv.lowering`.

Operands are canonical (see :mod:`jax_binconv.reference`): ``x`` NHWC with
leading batch dims (float or packed uint32), ``w`` HWIO float or packed
uint32 ``[O, KH, KW, words]``, then ``input_bias``, ``input_scale`` (``[C]``)
and ``output_scale``, ``output_bias`` (``[O]``), all float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching

from . import _compat, packing, reference
from .estimators import surrogate_grad
from .options import ACTIVATIONS, BinaryConvType

binary_conv2d_p = Primitive("jax_binconv_conv2d")
binary_conv2d_p.multiple_results = False


# ---------------------------------------------------------------- shapes


def geometry(x_shape, w_shape, w_packed, params):
    """(kh, kw, o, ho, wo) of a canonical call."""
    if w_packed:
        o, kh, kw, _ = w_shape
    else:
        kh, kw, _, o = w_shape
    (t, b, l, r) = params["padding"]
    sh, sw = params["strides"]
    dh, dw = params["dilation"]
    h, w = x_shape[-3], x_shape[-2]
    ho = (h + t + b - ((kh - 1) * dh + 1)) // sh + 1
    wo = (w + l + r - ((kw - 1) * dw + 1)) // sw + 1
    return kh, kw, o, ho, wo


def _abstract_eval(x, w, ib, isc, osc, ob, **params):
    kh, kw, o, ho, wo = geometry(x.shape, w.shape, w.dtype == jnp.uint32, params)
    if params["output"] == "packed":
        shape, dtype = x.shape[:-3] + (ho, wo, packing.num_words(o)), jnp.uint32
    else:
        shape, dtype = x.shape[:-3] + (ho, wo, o), params["out_dtype"]
    from .sharding import output_sharding
    sh = output_sharding(x, w, params)
    return _compat.result_aval(shape, dtype, sh, (x, w, ib, isc, osc, ob))


binary_conv2d_p.def_abstract_eval(_abstract_eval)


# ---------------------------------------------------------------- impl


@functools.lru_cache(maxsize=256)
def _jitted_bind(frozen_params):
    params = dict(frozen_params)
    return jax.jit(lambda *args: binary_conv2d_p.bind(*args, **params))


def _impl(*args, **params):
    return _jitted_bind(tuple(sorted(params.items())))(*args)


binary_conv2d_p.def_impl(_impl)


# ---------------------------------------------------------------- JVP


def _conv_nhwc(lhs, rhs, params, padding, out_sharding):
    return lax.conv_general_dilated(
        lhs, rhs, window_strides=params["strides"], padding=padding,
        rhs_dilation=params["dilation"], dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=params["groups"], precision=lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32, out_sharding=out_sharding)


def _is_zero(t):
    return type(t) is ad.Zero


def _jvp(primals, tangents, **params):
    x, w, ib, isc, osc, ob = primals
    dx, dw, dib, disc, dosc, dob = tangents
    ctype = BinaryConvType(params["conv_type"])
    x_packed = x.dtype == jnp.uint32
    w_packed = w.dtype == jnp.uint32 or w.dtype == jnp.bool_
    if params["output"] == "packed":
        if not all(_is_zero(t) for t in tangents):
            raise ValueError(
                "binary_conv2d: gradients are not defined through output='packed' "
                "(packed bits carry no gradient); use output='float' while training")
        return binary_conv2d_p.bind(*primals, **params), _zero_out(primals, params)

    # Primal accumulator from the kernel: linear, unit scale, no beta, float32.
    acc_params = dict(params, activation=ACTIVATIONS["linear"], beta_scaling=False,
                      out_dtype=np.dtype(np.float32))
    o = osc.shape[0]
    acc = binary_conv2d_p.bind(x, w, jnp.zeros_like(ib) if x_packed else ib,
                               jnp.ones_like(isc) if x_packed else isc,
                               jnp.ones((o,), jnp.float32), jnp.zeros((o,), jnp.float32),
                               **acc_params)
    from .sharding import explicit_conv_shardings
    out_sh, beta_sh = explicit_conv_shardings(jax.typeof(x), jax.typeof(w), params)
    acc, lead = reference.flatten_batch(acc)
    xf, _ = reference.flatten_batch(x)
    kh, kw, _, _, _ = geometry(x.shape, w.shape, w.dtype == jnp.uint32, params)
    (t, b, l, r) = params["padding"]
    cg = params["in_channels"] // params["groups"]

    # x' and its tangent (float inputs only).
    if x_packed:
        xb = reference.packed_input_values(xf, params["in_channels"], ctype)
        xp = dxp = None
    else:
        def prime(xx, bb, ss):
            return reference.input_prime(xx, bb, ss)
        if all(_is_zero(tt) for tt in (dx, dib, disc)):
            xp, dxp = prime(xf, ib, isc), None
        else:
            dxf, _ = reference.flatten_batch(ad.instantiate_zeros(dx))
            xp, dxp = jax.jvp(prime, (xf, ib, isc),
                              (dxf, ad.instantiate_zeros(dib), ad.instantiate_zeros(disc)))
        xb = lax.stop_gradient(reference.binarize_input(xp, ctype, params["input_estimator"]))

    wb = reference.weight_values(lax.stop_gradient(w) if not w_packed else w, ctype,
                                 params["weight_estimator"], cg)

    # Tangent of the accumulator: the surrogate is bilinear in (X, W).
    dacc = None
    if dxp is not None:
        if ctype == BinaryConvType.BINARY_WEIGHTS:
            dxb = dxp
        else:
            g = surrogate_grad(xp, *params["input_estimator"])
            dxb = g * dxp * (0.5 if ctype == BinaryConvType.AND else 1.0)
        dacc = _conv_nhwc(dxb, wb, params, ((t, b), (l, r)), out_sh)
    if not w_packed and not _is_zero(dw):
        wf = w.astype(jnp.float32)
        g = surrogate_grad(wf, *params["weight_estimator"])
        dwb = g * dw.astype(jnp.float32) * (0.5 if ctype == BinaryConvType.AND else 1.0)
        xpad = jnp.pad(xb, ((0, 0), (t, b), (l, r), (0, 0)),
                       constant_values=np.float32(params["pad_value"]))
        term = _conv_nhwc(xpad, dwb, params, "VALID", out_sh)
        dacc = term if dacc is None else dacc + term

    # beta and its tangent.
    beta = dbeta = None
    if params["beta_scaling"]:
        def beta_fn(xprime):
            a = jnp.mean(jnp.abs(xprime), axis=-1, keepdims=True)
            return reference.beta_image(a, kernel_size=(kh, kw), strides=params["strides"],
                                        padding=params["padding"], dilation=params["dilation"],
                                        out_sharding=beta_sh)
        if x_packed:
            beta = beta_fn(jnp.ones(xf.shape[:-1] + (1,), jnp.float32))
        elif dxp is None:
            beta = beta_fn(xp)
        else:
            beta, dbeta = jax.jvp(beta_fn, (xp,), (dxp,))

    # z = acc * os * beta + ob, then the activation, differentiated exactly.
    def pre(acc_, osc_, beta_, ob_):
        return reference.epilogue(acc_, osc_, beta_, ob_, ACTIVATIONS["linear"], 0.0)

    dacc = jnp.zeros_like(acc) if dacc is None else dacc
    if beta is None:
        z, dz = jax.jvp(lambda a, s, bias: pre(a, s, None, bias), (acc, osc, ob),
                        (dacc, ad.instantiate_zeros(dosc), ad.instantiate_zeros(dob)))
    else:
        dbeta = jnp.zeros_like(beta) if dbeta is None else dbeta
        z, dz = jax.jvp(pre, (acc, osc, beta, ob),
                        (dacc, ad.instantiate_zeros(dosc), dbeta, ad.instantiate_zeros(dob)))
    act = functools.partial(reference.activation_fn, activation=params["activation"],
                            negative_slope=params["negative_slope"])
    out, dout = jax.jvp(act, (z,), (dz,))
    out = out.reshape(lead + out.shape[1:]).astype(params["out_dtype"])
    dout = dout.reshape(lead + dout.shape[1:]).astype(params["out_dtype"])
    return out, dout


def _zero_out(primals, params):
    aval = _abstract_eval(*[jax.typeof(p) for p in primals], **params)
    return ad.Zero(aval.to_tangent_aval())


ad.primitive_jvps[binary_conv2d_p] = _jvp


# ---------------------------------------------------------------- batching


def _batch(args, dims, **params):
    x, *rest = args
    xd, *rest_dims = dims
    if all(d is None for d in rest_dims):
        # Only x is mapped: it becomes one more leading batch dim, which the
        # kernels already fold into N (no reshape, so sharding types survive).
        x = jnp.moveaxis(x, xd, 0)
        return binary_conv2d_p.bind(x, *rest, **params), 0
    # Weights, scales or biases differ per mapped index: run them one by one.
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    moved = [batching.bdim_at_front(a, d, size) for a, d in zip(args, dims)]
    out = lax.map(lambda a: binary_conv2d_p.bind(*a, **params), tuple(moved))
    return out, 0


batching.primitive_batchers[binary_conv2d_p] = _batch
