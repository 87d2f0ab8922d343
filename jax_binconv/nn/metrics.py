"""Metrics researchers track while training binary networks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .layers import LatentWeight

__all__ = ["flip_ratio", "latent_weights"]


def latent_weights(model) -> dict:
    """A snapshot of every :class:`LatentWeight` of ``model`` as a pure dict of
    arrays (safe to keep across in-place optimizer updates)."""
    return nnx.to_pure_dict(nnx.state(model, LatentWeight))


def _arrays(tree):
    if isinstance(tree, nnx.Module):
        tree = latent_weights(tree)
    leaves = jax.tree.leaves(tree, is_leaf=lambda v: isinstance(v, nnx.Variable))
    return [v[...] if isinstance(v, nnx.Variable) else jnp.asarray(v) for v in leaves]


def flip_ratio(before, after) -> jax.Array:
    r"""Fraction of binary weights whose sign changed between two snapshots.

    .. math::

        \mathrm{flip\ ratio} = \frac{\#\{i : \mathrm{bin}(w^{before}_i) \ne
        \mathrm{bin}(w^{after}_i)\}}{\#\{i\}}

    with ``bin(v) = -1 if v < 0 else +1``. ``before`` and ``after`` are pytrees
    of arrays with the same structure (e.g. two :func:`latent_weights`
    snapshots, taken before and after an optimizer step), or arrays. Returns
    a float32 scalar in [0, 1] (0 for empty trees).
    """
    a, b = _arrays(before), _arrays(after)
    if len(a) != len(b):
        raise ValueError(f"before and after have {len(a)} and {len(b)} arrays")
    flips = jnp.zeros((), jnp.float32)
    total = 0
    for x, y in zip(a, b):
        if x.shape != y.shape:
            raise ValueError(f"shape mismatch: {x.shape} vs {y.shape}")
        flips = flips + jnp.sum((x < 0) != (y < 0)).astype(jnp.float32)
        total += x.size
    return flips / max(total, 1)
