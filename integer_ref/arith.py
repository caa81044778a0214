"""The rounding and fixed-point primitives of the numeric contract, in one place.

Every integer op in integer_ref (and its torch twin in quantsim.emulate) calls these;
nothing else in the project rounds, shifts or clamps on its own. Plain NumPy, int64.
"""
from __future__ import annotations

import math

import numpy as np

FLOAT32_EXACT = 2**24  # integers below this magnitude are exact in float32 arithmetic
FLOAT64_EXACT = 2**53


def qrange(bits: int, signed: bool, narrow: bool = True) -> tuple[int, int]:
    """Integer range of a quantized tensor.

    Signed tensors use the restricted (narrow) range [-(2^(b-1)-1), 2^(b-1)-1] so that
    sign-magnitude and two's complement hold the same values; imported models may use
    the full range (narrow=False).
    """
    if not 2 <= bits <= 32:
        raise ValueError(f"bit width {bits} is outside 2..32")
    if signed:
        hi = 2 ** (bits - 1) - 1
        return (-hi if narrow else -hi - 1), hi
    return 0, 2**bits - 1


def round_half_even(x: np.ndarray) -> np.ndarray:
    """float -> nearest integer, ties to even (np.rint and torch.round agree)."""
    return np.rint(x)


def quantize_float32(x: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    """q = clamp(rint(x / s) + z) computed in float32, as both executors do."""
    xf = np.asarray(x, dtype=np.float32)
    q = np.rint(xf / np.float32(scale)).astype(np.int64) + zero_point
    return np.clip(q, qmin, qmax)


def quantize_multiplier(m: float, mult_bits: int = 31) -> tuple[int, int]:
    """Real multiplier m > 0 as an integer M of mult_bits bits and a right shift n.

    m ≈ M / 2^n with 2^(mult_bits-1) <= M < 2^mult_bits (M normalised for full precision).
    A shift beyond 62 cannot be applied to an int64 product; M is then reduced so that
    n = 62, which loses only bits that would round away anyway.
    """
    if not (m > 0 and math.isfinite(m)):
        raise ValueError(f"requantization multiplier must be positive and finite, got {m}")
    mantissa, exponent = math.frexp(m)  # m = mantissa * 2^exponent, mantissa in [0.5, 1)
    multiplier = int(round(mantissa * 2**mult_bits))
    shift = mult_bits - exponent
    if multiplier == 2**mult_bits:  # rounding carried into the next power of two
        multiplier //= 2
        shift -= 1
    if shift > 62:
        multiplier = int(round(multiplier / 2 ** (shift - 62)))
        shift = 62
    if shift < 0:
        raise ValueError(f"requantization multiplier {m} is too large for a right shift")
    return multiplier, shift


def quantize_multipliers(m: np.ndarray, mult_bits: int = 31) -> tuple[np.ndarray, np.ndarray]:
    """Vector form of quantize_multiplier (per output channel)."""
    pairs = [quantize_multiplier(float(v), mult_bits) for v in np.ravel(m)]
    mult = np.array([p[0] for p in pairs], dtype=np.int64).reshape(np.shape(m))
    shift = np.array([p[1] for p in pairs], dtype=np.int64).reshape(np.shape(m))
    return mult, shift


def rounding_rshift(x: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """(x + 2^(n-1)) >> n with an arithmetic (floor) shift: round half up. n = 0 is identity."""
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    half = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    return np.right_shift(x + half, shift)


def requantize_dyadic(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray,
                      zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    """y = clamp(((acc * M + 2^(n-1)) >> n) + z, qmin, qmax). M, n broadcast against acc."""
    prod = np.asarray(acc, dtype=np.int64) * np.asarray(multiplier, dtype=np.int64)
    return np.clip(rounding_rshift(prod, shift) + zero_point, qmin, qmax)


def gemm_bound(a_rows_l1_max: float, b_abs_max: float) -> float:
    """Largest magnitude any partial sum of an integer product can reach."""
    return float(a_rows_l1_max) * float(b_abs_max)


def exact_float_dtype(bound: float):
    """Smallest float type in which every partial sum below `bound` is an exact integer."""
    if bound < FLOAT32_EXACT:
        return np.float32
    if bound < FLOAT64_EXACT:
        return np.float64
    return None


def tf_same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) for one spatial axis; the extra goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def conv_output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int,
                     dilation: int = 1) -> int:
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1
