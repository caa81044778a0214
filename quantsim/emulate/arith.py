"""The torch twin of integer_ref.arith: the rounding and fixed-point primitives, on int64 tensors.

Each function mirrors the integer_ref.arith function its docstring names (the one place the
rules are written; tests/test_emulate_vs_ref.py compares the two element for element). The
per-op kernels built from them are in quantsim.emulate.kernels.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from integer_ref import arith

__all__ = ["INT32_MIN", "INT32_MAX", "pow2", "rounding_rshift", "multiply_rshift_round", "wrap_int32",
           "saturating_rounding_doubling_high_mul", "rounding_divide_by_pot", "multiply_by_quantized_multiplier",
           "divide_round_away", "requantize_float32", "quantize", "fma_float32", "dequant_quant_float32",
           "ieee_float32"]


# --- rounding: the torch form of integer_ref.arith ----------------------------------------

def pow2(n: torch.Tensor) -> torch.Tensor:
    return torch.bitwise_left_shift(torch.ones_like(n), n)


def rounding_rshift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """arith.rounding_rshift: (x + 2^(n-1)) >> n, arithmetic (floor) shift on int64."""
    half = torch.where(shift > 0, pow2((shift - 1).clamp_min(0)), torch.zeros_like(shift))
    return torch.bitwise_right_shift(x + half, shift)


def multiply_rshift_round(acc: torch.Tensor, multiplier: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """arith.multiply_rshift_round: exact floor((acc*M + 2^(n-1)) / 2^n) without int64 overflow."""
    # One product suffices when no |acc·M| + 2^(n-1) can reach 2^63: the bound from the two
    # maxima is cheaper than testing every element, and the result is the same exact floor.
    # (|acc| from min and max in Python ints: torch's abs() of INT64_MIN wraps to INT64_MIN.)
    if acc.numel() == 0 or (max(-int(acc.min()), int(acc.max())) * int(multiplier.abs().max()) < 2**62
                            and int(shift.max()) <= 62):
        return rounding_rshift(acc * multiplier, shift)
    if multiplier.dim() == 0 and shift.dim() == 0:
        # One M and n for the whole tensor (GELU, LayerNorm): the split alone gives arith's result on
        # every element (for |acc| < 2^31 it is exact, beyond that it is arith's split), so skip the
        # plain product and the select.
        n = int(shift)
        k = min(n, 31)
        lo = torch.bitwise_and(acc, (1 << k) - 1)
        hi = torch.bitwise_right_shift(acc, k).clamp_(-(2**32), 2**32 - 1)
        low_part = torch.bitwise_right_shift(lo * multiplier + ((1 << (n - 1)) if n > 0 else 0), k)
        return torch.bitwise_right_shift(hi * multiplier + low_part, n - k)
    fits = (acc > -(2**31)) & (acc < 2**31)  # arith._direct_product_fits
    direct = rounding_rshift(acc * multiplier, shift)
    k = shift.clamp_max(31)
    half = torch.where(shift > 0, pow2((shift - 1).clamp_min(0)), torch.zeros_like(shift))
    lo = torch.bitwise_and(acc, pow2(k) - 1)
    hi = torch.bitwise_right_shift(acc, k).clamp(-(2**32), 2**32 - 1)
    low_part = torch.bitwise_right_shift(lo * multiplier + half, k)
    return torch.where(fits, direct, torch.bitwise_right_shift(hi * multiplier + low_part, shift - k))


# --- the real engines' output stages: the torch form of arith's gemmlowp / float32 rules ----

INT32_MIN, INT32_MAX = arith.INT32_MIN, arith.INT32_MAX


def accumulator_value(acc: torch.Tensor, acc_bits: int, overflow: str) -> torch.Tensor:
    """arith.accumulator_value: what an acc_bits accumulator holds of the exact int64 sum."""
    if overflow == "count":
        return acc
    lim = 2 ** (acc_bits - 1)
    if overflow == "saturate":
        return acc.clamp(-lim, lim - 1)
    if overflow == "wrap":
        return ((acc + lim) & (2 * lim - 1)) - lim
    raise ValueError(f"unknown accumulator overflow mode {overflow!r}; known: {', '.join(arith.ACC_OVERFLOW_MODES)}")


def wrap_int32(x: torch.Tensor) -> torch.Tensor:
    """arith.wrap_int32: two's complement wrap of int64 values to int32."""
    return torch.bitwise_and(x - INT32_MIN, 0xFFFFFFFF) + INT32_MIN


def saturating_rounding_doubling_high_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """arith.saturating_rounding_doubling_high_mul (gemmlowp), int32 values in int64."""
    ab = a * b
    q = ab + torch.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    trunc = torch.div(q, 2**31, rounding_mode="trunc")
    return torch.where((a == INT32_MIN) & (b == INT32_MIN), torch.full_like(trunc, INT32_MAX), trunc)


def rounding_divide_by_pot(x: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """arith.rounding_divide_by_pot: x / 2^e to nearest, ties away from zero."""
    mask = pow2(exponent) - 1
    threshold = torch.bitwise_right_shift(mask, 1) + (x < 0).to(torch.int64)
    return torch.bitwise_right_shift(x, exponent) + (torch.bitwise_and(x, mask) > threshold).to(torch.int64)


def _fits_int32(x: torch.Tensor) -> bool:
    if not x.numel():
        return True
    lo, hi = torch.aminmax(x)
    return int(lo) >= INT32_MIN and int(hi) <= INT32_MAX


def multiply_by_quantized_multiplier(x: torch.Tensor, multiplier: torch.Tensor, shift: torch.Tensor,
                                     x_is_int32: bool = False) -> torch.Tensor:
    """arith.multiply_by_quantized_multiplier: TFLite's double-rounding Q31 rescale.

    Fast form for the common case (x already int32, no left shift, 0 <= M < 2^31): with
    C's truncating division rewritten as a floor, SaturatingRoundingDoublingHighMul is
    exactly (x·M + 2^30) >> 31, and RoundingDivideByPOT by e > 0 is
    (v + 2^(e-1) - [v < 0]) >> e; both in place. The twin tests check it against arith.
    """
    right = shift.clamp_min(0)
    if int(shift.min()) < 0 or int(multiplier.min()) < 0 or not (x_is_int32 or _fits_int32(x)):
        xs = wrap_int32(torch.bitwise_left_shift(wrap_int32(x), (-shift).clamp_min(0)))
        return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(xs, multiplier), right)
    y = x * multiplier
    y.add_(1 << 30).bitwise_right_shift_(31)
    pos = right > 0
    corr = (y < 0) & pos
    half = torch.where(pos, pow2((right - 1).clamp_min(0)), torch.zeros_like(right))
    return y.add_(half).sub_(corr.to(torch.int64)).bitwise_right_shift_(right)


def divide_round_away(x: torch.Tensor, count) -> torch.Tensor:
    """arith.divide_round_away: C's (x ± c/2) / c, the sign of x choosing ±."""
    c = torch.as_tensor(count, dtype=torch.int64, device=x.device)
    num = torch.where(x > 0, x + c // 2, x - c // 2)
    return torch.div(num, c, rounding_mode="trunc")


def requantize_float32(acc: torch.Tensor, scale: torch.Tensor, zero_point: int, lo: int, hi: int,
                       bias_f32: torch.Tensor | None = None) -> torch.Tensor:
    """arith.requantize_float32: rint(float32(acc) [+ bias] * scale) + z, in float32."""
    v = acc.to(torch.float32)
    if bias_f32 is not None:
        v = v + bias_f32
    v = torch.round(v * scale).clamp_(-(2.0**62), 2.0**62)
    return (v.to(torch.int64) + zero_point).clamp_(lo, hi)


def quantize(x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    """arith.quantize_float32: rint(x / s) + z in float32 (torch.round is half-to-even)."""
    s = torch.tensor(float(scale), dtype=torch.float32, device=x.device)
    q = torch.round(x.to(torch.float32) / s).to(torch.int64) + zero_point
    return q.clamp(qmin, qmax)


def fma_float32(x: torch.Tensor, r: float, c: torch.Tensor) -> torch.Tensor:
    """arith.fma_float32: one-rounding float32 x·r + c via a round-to-odd float64 sum."""
    p = x.to(torch.float64) * float(np.float32(r))
    c = c.to(torch.float64)
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)
    even = (s.view(torch.int64) & 1) == 0
    return torch.where((err != 0) & even, torch.nextafter(s, s + err), s).to(torch.float32)


def dequant_quant_float32(x, x_zero_point, s_in, s_out, zero_point, lo, hi):
    """arith.dequant_quant_float32: DequantizeLinear then QuantizeLinear in float32."""
    f32 = lambda v: torch.tensor(float(np.float32(v)), dtype=torch.float32, device=x.device)
    v = (x - x_zero_point).to(torch.float32) * f32(s_in)
    q = torch.round(v / f32(s_out)).clamp_(-(2.0**62), 2.0**62)
    return (q.to(torch.int64) + zero_point).clamp_(lo, hi)


# --- exact integer products on float hardware ---------------------------------------------

@contextlib.contextmanager
def ieee_float32():
    """No TF32 (10-bit mantissa) on GPUs while exact products run."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
