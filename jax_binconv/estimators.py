"""Straight-through estimators (SPEC section 8).

``bin(v)`` has derivative zero almost everywhere; training replaces it by a
surrogate derivative while keeping the exact forward value:

* ``"ste"`` (BinaryNet, Courbariaux et al. 2016; Larq ``ste_sign``):
  ``1[|v| <= clip]``;
* ``"identity"``: ``1``;
* ``"approx_sign"`` (Bi-Real Net, Liu et al. 2018): ``max(0, 2 - 2|v|)``;
* ``"swish"`` (SwishSign, Darabi et al. 2018; Larq, beta = 5):
  ``beta (2 - beta v tanh(beta v / 2)) / (1 + cosh(beta v))``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

SWISH_BETA = 5.0


def surrogate_grad(v: jax.Array, estimator: str, clip: float) -> jax.Array:
    """d bin(v) / dv under ``estimator`` (same dtype as ``v``)."""
    if estimator == "ste":
        g = (jnp.abs(v) <= clip).astype(v.dtype)
    elif estimator == "identity":
        g = jnp.ones_like(v)
    elif estimator == "approx_sign":
        g = jnp.maximum(0.0, 2.0 - 2.0 * jnp.abs(v)).astype(v.dtype)
    elif estimator == "swish":
        b = SWISH_BETA
        g = (b * (2.0 - b * v * jnp.tanh(b * v / 2.0)) / (1.0 + jnp.cosh(b * v))).astype(v.dtype)
    else:  # validated by options.estimator
        raise ValueError(f"unknown estimator {estimator!r}")
    return g


def sign(v: jax.Array) -> jax.Array:
    """``bin(v)``: -1 where ``v < 0``, else +1 (0, -0.0 and NaN give +1)."""
    return jnp.where(v < 0, -1.0, 1.0).astype(v.dtype)


@partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def ste_sign(v: jax.Array, estimator: str = "ste", clip: float = 1.0) -> jax.Array:
    """``bin(v)`` with the surrogate derivative of ``estimator``."""
    return sign(v)


@ste_sign.defjvp
def _ste_sign_jvp(estimator, clip, primals, tangents):
    (v,), (dv,) = primals, tangents
    return sign(v), surrogate_grad(v, estimator, clip) * dv
