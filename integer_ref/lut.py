"""Lookup-table activations: the table of an elementwise function over every input code.

An elementwise activation f of a b-bit integer tensor has only qmax - qmin + 1 possible
inputs, so the integer program holds it as a table (op ``lut``, params ``table``): output code
y = table[x - in_min], built once at lowering time and read identically by both executors.
This is what accelerators build for activations (a 2^b-entry ROM/SRAM next to the vector
unit), it is exact by construction, and one op covers every elementwise function:

- ``hardswish``  f(r) = r · relu6(r + 3) / 6      piecewise polynomial on rationals:
- ``hardsigmoid`` f(r) = relu6(r + 3) / 6          computed EXACTLY (fractions.Fraction of the
  float64 scales, which are dyadic rationals) and rounded half to even: each entry is the
  correctly rounded real value, the best any integer form (multiply + dyadic requant) can give;
- ``sigmoid``, ``silu`` (r · sigmoid(r)), ``tanh`` (MaxViT's head): float64 evaluation, rounded half to even (no
  exact rational form; the table, not its construction, is the contract between executors).

Entry i is f(s_in · (in_min + i - z_in)) quantized to the output: rint(f / s_out) + z_out,
clamped to [lo, hi]. Tables are built only for inputs up to LUT_MAX_BITS bits.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

LUT_MAX_BITS = 16  # a 2^16-entry table at most
FUNCTIONS = ("hardswish", "hardsigmoid", "sigmoid", "silu", "tanh")


def _hardswish(r: Fraction) -> Fraction:
    return r * min(max(r + 3, Fraction(0)), Fraction(6)) / 6


def _hardsigmoid(r: Fraction) -> Fraction:
    return min(max(r + 3, Fraction(0)), Fraction(6)) / 6


EXACT = {"hardswish": _hardswish, "hardsigmoid": _hardsigmoid}


def float_function(name: str, r: np.ndarray) -> np.ndarray:
    """The real function in float64 (also the float model's reference)."""
    r = np.asarray(r, np.float64)
    if name == "hardswish":
        return r * np.clip(r + 3.0, 0.0, 6.0) / 6.0
    if name == "hardsigmoid":
        return np.clip(r + 3.0, 0.0, 6.0) / 6.0
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-r))
    if name == "silu":
        return r / (1.0 + np.exp(-r))
    if name == "tanh":
        return np.tanh(r)
    raise ValueError(f"no lookup table for function {name!r}; known: {', '.join(FUNCTIONS)}")


def build_table(name: str, in_min: int, in_max: int, in_scale: float, in_zero_point: int,
                out_scale: float, out_zero_point: int, lo: int, hi: int) -> np.ndarray:
    """int64 table of in_max - in_min + 1 entries (see the module docstring)."""
    n = in_max - in_min + 1
    if n > 2 ** LUT_MAX_BITS:
        raise ValueError(f"a {name} lookup table over {n} input codes (at most 2^{LUT_MAX_BITS})")
    codes = range(in_min, in_max + 1)
    if name in EXACT:
        f, s_in, s_out = EXACT[name], Fraction(float(in_scale)), Fraction(float(out_scale))
        vals = [round(f(s_in * (q - in_zero_point)) / s_out) for q in codes]  # half to even
        y = np.asarray(vals, np.int64)
    else:
        r = float(in_scale) * (np.arange(in_min, in_max + 1, dtype=np.float64) - in_zero_point)
        y = np.rint(float_function(name, r) / float(out_scale)).astype(np.int64)
    return np.clip(y + int(out_zero_point), lo, hi).astype(np.int64)
