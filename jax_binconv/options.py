"""Enumerations and argument normalization shared by the public API, the
reference and the primitive. Every error names the argument, what was
expected and what was given (SPEC section 1)."""

from __future__ import annotations

import enum
import numbers
from typing import Any

import numpy as np


class BinaryConvType(enum.IntEnum):
    """How the product inside the convolution is computed (SPEC section 2).

    * ``BINARY_WEIGHTS``: full-precision input times ``bin(w)`` in {-1, +1}.
    * ``XNOR``: ``bin(x') * bin(w)`` in {-1, +1}; a dot product over K bits is
      ``K - 2 * popcount(xbits XOR wbits)``.
    * ``AND``: ``[x' >= 0] * [w >= 0]`` in {0, 1}; a dot product is
      ``popcount(xbits AND wbits)``.

    The integer values are part of the kernels' FFI contract.
    """

    BINARY_WEIGHTS = 0
    XNOR = 1
    AND = 2


# Order and values mirror binconv::Activation in cpp/common/binconv_params.h.
ACTIVATIONS = {
    "linear": 0,
    "relu": 1,
    "relu6": 2,
    "leaky_relu": 3,
    "sigmoid": 4,
    "tanh": 5,
    "hard_tanh": 6,
    "sign": 7,
}
ACTIVATION_NAMES = {v: k for k, v in ACTIVATIONS.items()}

ESTIMATORS = ("ste", "identity", "approx_sign", "swish")

OUTPUTS = ("float", "packed")


def conv_type(value: Any, name: str = "type") -> BinaryConvType:
    if isinstance(value, BinaryConvType):
        return value
    if isinstance(value, str):
        key = value.strip().upper()
        if key in BinaryConvType.__members__:
            return BinaryConvType[key]
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        try:
            return BinaryConvType(int(value))
        except ValueError:
            pass
    raise ValueError(
        f"{name} must be one of BinaryConvType.BINARY_WEIGHTS/XNOR/AND or the strings "
        f"'binary_weights', 'xnor', 'and'; got {value!r}"
    )


def activation(value: Any, name: str = "activation") -> int:
    if value is None:
        return ACTIVATIONS["linear"]
    if isinstance(value, str) and value.strip().lower() in ACTIVATIONS:
        return ACTIVATIONS[value.strip().lower()]
    raise ValueError(
        f"{name} must be None or one of {sorted(ACTIVATIONS)}; got {value!r}"
    )


def estimator(value: Any, name: str) -> tuple[str, float]:
    """Normalize an estimator spec: ``"ste"`` or ``("ste", clip)``."""
    clip = 1.0
    est = value
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(
                f"{name} must be a name or a (name, clip) pair; got {value!r}"
            )
        est, clip = value
    if not isinstance(est, str) or est.strip().lower() not in ESTIMATORS:
        raise ValueError(f"{name} must be one of {list(ESTIMATORS)}; got {est!r}")
    est = est.strip().lower()
    if isinstance(clip, bool) or not isinstance(clip, numbers.Real):
        raise TypeError(f"{name}: clip must be a positive number; got {clip!r}")
    clip = float(clip)
    if not (clip > 0 and np.isfinite(clip)):
        raise ValueError(f"{name}: clip must be a positive finite number; got {clip!r}")
    return est, clip


# Mirrors cpp/common/ffi_conv.h: bounds that keep every kernel's size
# arithmetic inside int64 (checked here at trace time, and again by the kernels).
MAX_GEOMETRY = 1 << 24
MAX_ELEMENTS = 1 << 46


def int_pair(value: Any, name: str, minimum: int) -> tuple[int, int]:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value, value)
    try:
        seq = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints; got {value!r}") from None
    if len(seq) != 2 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in seq
    ):
        raise TypeError(f"{name} must be an int or a pair of ints; got {value!r}")
    seq = tuple(int(v) for v in seq)
    if any(v < minimum for v in seq):
        raise ValueError(f"{name} must be >= {minimum} in each dimension; got {seq}")
    if any(v > MAX_GEOMETRY for v in seq):
        raise ValueError(f"{name} must be <= 2^24 in each dimension; got {seq}")
    return seq


def output_kind(value: Any) -> str:
    if value not in OUTPUTS:
        raise ValueError(f"output must be 'float' or 'packed'; got {value!r}")
    return value
