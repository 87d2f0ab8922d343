"""Optax pieces for binary networks: the Bop optimizer, a weight-clip
transform, and labels that split binary from float parameters.

Bop (Helwegen et al., "Latent Weights Do Not Exist: Rethinking Binarized
Neural Network Optimization", NeurIPS 2019) keeps no latent weights: the
binary weights ``w`` in {-1, +1} are the parameters, and each step keeps an
exponential moving average of the gradient

    m_t = (1 - gamma) m_{t-1} + gamma g_t

and flips a weight when the average is strong enough and points the way
the weight points (so that flipping descends):

    w_t = -w_{t-1}  if |m_t| > tau and sign(m_t) == sign(w_{t-1}),
    w_t =  w_{t-1}  otherwise.

``gamma`` (adaptivity rate) and ``tau`` (threshold) are the paper's
hyper-parameters; its defaults for CIFAR-10 are ``gamma = 1e-4`` and
``tau = 1e-8``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from .layers import LatentWeight

__all__ = ["BopState", "binary_optimizer", "bop", "param_labels", "weight_clip"]


class BopState(NamedTuple):
    """Bop's state: the gradient moving average ``m`` (same tree as the params)."""

    momentum: optax.Updates


def _bin(v):
    # bin() of SPEC section 2: -1 for v < 0, +1 otherwise (0 and NaN give +1).
    return jnp.where(v < 0, -1.0, 1.0).astype(v.dtype)


def bop(threshold: float = 1e-8, gamma: float = 1e-4) -> optax.GradientTransformation:
    r"""The Bop optimizer as an optax ``GradientTransformation``.

    .. math::

        m \leftarrow (1-\gamma) m + \gamma g, \qquad
        w \leftarrow \begin{cases} -w & |m| > \tau \text{ and } \mathrm{bin}(m) = \mathrm{bin}(w)\\
                                    w & \text{otherwise}\end{cases}

    The returned update is ``-2 w`` where a weight flips and 0 elsewhere, so
    ``optax.apply_updates`` gives exactly ``-w`` (``w`` in {-1, +1}; call
    :func:`jax_binconv.nn.binarize_weights` once before training). ``params``
    must be passed to ``update``. Apply it only to binary weights: combine it
    with a float optimizer through :func:`binary_optimizer` or
    ``optax.multi_transform`` with :func:`param_labels`.

    Args:
      threshold: ``tau``, the flip threshold on ``|m|``.
      gamma: adaptivity rate of the moving average.
    """
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0; got {threshold!r}")
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1]; got {gamma!r}")

    def init(params):
        return BopState(jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.result_type(p)),
                                     params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("bop needs params: call tx.update(grads, state, params)")
        m = jax.tree.map(lambda mm, g: (1 - gamma) * mm + gamma * g.astype(mm.dtype),
                         state.momentum, updates)

        def step(mm, w):
            flip = (jnp.abs(mm) > threshold) & (_bin(mm) == _bin(w))
            return jnp.where(flip, -2 * w, jnp.zeros_like(w))

        return jax.tree.map(step, m, params), BopState(m)

    return optax.GradientTransformation(init, update)


def weight_clip(clip: float = 1.0) -> optax.GradientTransformation:
    r"""Turn updates into ones that keep parameters in ``[-clip, clip]``.

    ``u <- clip(p + u, -clip, clip) - p``, so ``apply_updates`` gives the
    clipped parameters (Larq's ``weight_clip`` constraint, as an optax
    transform; chain it *after* the optimizer, e.g.
    ``optax.chain(optax.adam(1e-3), weight_clip())``). For float32 parameters
    and ``clip = 1`` the result stays in ``[-1, 1]`` exactly: ``p + (q - p)``
    differs from ``q`` by at most half an ulp of 1 and rounds to even.
    """
    if not clip > 0:
        raise ValueError(f"clip must be > 0; got {clip!r}")

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("weight_clip needs params: call tx.update(grads, state, params)")
        new = jax.tree.map(lambda u, p: jnp.clip(p + u, -clip, clip) - p, updates, params)
        return new, state

    return optax.GradientTransformation(init, update)


def param_labels(model, binary: str = "binary", other: str = "float"):
    """Labels for ``optax.multi_transform``: ``binary`` for every
    :class:`LatentWeight`, ``other`` for every other ``nnx.Param`` of ``model``.

    The result is a tree with the structure of ``nnx.state(model, nnx.Param)``
    (what ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` passes to ``tx``).
    """
    state = nnx.state(model, nnx.Param)
    return jax.tree.map(lambda v: binary if isinstance(v, LatentWeight) else other, state,
                        is_leaf=lambda v: isinstance(v, nnx.Variable))


def binary_optimizer(model, binary_tx: optax.GradientTransformation,
                     float_tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``binary_tx`` for the latent/binary weights of ``model``, ``float_tx`` for
    every other parameter. Use with ``nnx.Optimizer(model, tx, wrt=nnx.Param)``.

    >>> tx = binary_optimizer(model, bop(1e-6, 1e-3), optax.adam(1e-3))  # doctest: +SKIP
    """
    return optax.multi_transform({"binary": binary_tx, "float": float_tx},
                                 param_labels(model))
