"""jax_binconv: binary (1-bit) convolution for JAX.

Apple's ``MPSCNNBinaryConvolution`` (binary weights, XNOR and AND popcount
convolutions, input/output scale and bias, XNOR-Net beta scaling, fused
activation) as a JAX primitive with straight-through gradients, vmap, jit and
export, backed by popcount kernels. The semantics are in docs/semantics.md.
"""

from . import config, reference
from .conv import binary_conv2d, binary_dense
from .estimators import ste_sign
from .lowering import TARGETS
from .options import BinaryConvType
from .packing import (PackedActivations, PackedWeights, pack_activations,
                      pack_weights, unpack_activations)
from .primitive import binary_conv2d_p

__version__ = "0.1.0"

__all__ = [
    "BinaryConvType",
    "PackedActivations",
    "PackedWeights",
    "TARGETS",
    "binary_conv2d",
    "binary_conv2d_p",
    "binary_dense",
    "config",
    "pack_activations",
    "pack_weights",
    "reference",
    "ste_sign",
    "unpack_activations",
]
