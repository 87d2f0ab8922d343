"""Flax NNX layers and training tools for binary networks (``pip install jax_binconv[nn]``).

* :class:`BinaryConv`, :class:`BinaryDense`: latent float weights, every
  ``binary_conv2d`` option, straight-through estimators.
* :func:`clip_weights` / :func:`weight_clip`: Larq's ``weight_clip``
  constraint (in place / as an optax transform).
* :func:`fold_batch_norm`, :func:`to_inference`: packed weights, folded batch
  norms and packed activations between binary layers, same predictions.
* :func:`bop` (Helwegen et al. 2019), :func:`binary_optimizer`,
  :func:`param_labels`: optax optimizers for binary + float parameters.
* :func:`flip_ratio`, :func:`latent_weights`: how many binary weights changed
  sign in a step.

Needs ``flax`` (NNX) and ``optax``.
"""

try:
    import flax.nnx  # noqa: F401
    import optax  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("jax_binconv.nn needs flax and optax: pip install 'jax_binconv[nn]' "
                      f"({e})") from e

from .inference import PackedBinaryConv, PackedBinaryDense, to_inference
from .layers import (BinaryConv, BinaryDense, LatentWeight, MaxPool, binarize_weights,
                     binary_layers, clip_weights, fold_batch_norm)
from .metrics import flip_ratio, latent_weights
from .optim import BopState, binary_optimizer, bop, param_labels, weight_clip

__all__ = [
    "BinaryConv",
    "BinaryDense",
    "BopState",
    "LatentWeight",
    "MaxPool",
    "PackedBinaryConv",
    "PackedBinaryDense",
    "binarize_weights",
    "binary_layers",
    "binary_optimizer",
    "bop",
    "clip_weights",
    "flip_ratio",
    "fold_batch_norm",
    "latent_weights",
    "param_labels",
    "to_inference",
    "weight_clip",
]
