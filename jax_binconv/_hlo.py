"""Reading compiled HLO text (``jax.jit(f).lower(...).compile().as_text()``),
written once for the tests and benchmarks that check what XLA made of a
program: our custom calls, their result shapes, and collectives."""

from __future__ import annotations

import re


def custom_call_lines(text: str, target: str) -> list[str]:
    """The instructions of ``text`` that call the custom-call target
    ``target`` (its whole name), one line each."""
    key = f'custom_call_target="{target}"'
    return [ln for ln in text.splitlines() if key in ln]


def custom_call_shapes(text: str, target: str) -> list[str]:
    """The float32 result shapes of the calls to ``target``, as their dims
    ("8,10,10,64"): in a compiled sharded program, the per-device shape."""
    return re.findall(r"= \(?f32\[([\d,]+)\][^\n]*custom_call_target=\"" + re.escape(target) +
                      r"\"", text)


def collectives(text: str) -> list[str]:
    """The all-gather and all-to-all instructions' names in ``text`` (a
    sharded binary_conv2d should need neither)."""
    return re.findall(r"\b(all-gather|all-to-all)\b", text)
