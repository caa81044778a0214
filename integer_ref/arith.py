"""The rounding and fixed-point primitives of the numeric contract, in one place.

Every integer op in integer_ref calls these (their torch twins are quantsim.emulate.arith);
nothing else in the project rounds, shifts or clamps on its own. Plain NumPy, int64.
"""
from __future__ import annotations

import math

import numba
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
    """y = clamp(((acc * M + 2^(n-1)) >> n) + z, qmin, qmax). M, n broadcast against acc.

    The product is formed without int64 overflow (multiply_rshift_round), so accumulators
    that left acc_bits still requantize to the right saturated value.
    """
    return np.clip(multiply_rshift_round(acc, multiplier, shift) + zero_point, qmin, qmax)


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


# --- additions: exact wide requantization, clamping and the exact integer GEMM ---------

MULT_LIMIT = 2**31  # multipliers are at most 31-bit so that the split products below fit int64


def clamp(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Saturate to [lo, hi]: the output range of an op (qmin..qmax, ReLU, ReLU6)."""
    return np.clip(x, lo, hi)


def multiply_rshift_round(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """floor((acc * M + 2^(n-1)) / 2^n), exact for any int64 acc where acc * M would overflow.

    The product acc * M needs up to 94 bits. Split acc = hi * 2^k + lo with k = min(n, 31) and
    0 <= lo < 2^k; then floor((acc*M + r) / 2^n) = (hi*M + ((lo*M + r) >> k)) >> (n - k), and
    every term fits int64. For n >= 31 this is exact for every int64 acc. For n < 31, hi is
    saturated to [-2^32, 2^32): the result is then still at least 2^32 - 1 in magnitude, i.e.
    beyond every quantized range, so clamping gives the same answer.
    Requires 0 <= M < 2^31 and 0 <= n <= 62 (quantize_multiplier guarantees both). Elements
    with |acc| < 2^31 take the plain formula, the rest the split (see _direct_product_fits).
    """
    acc = np.asarray(acc, dtype=np.int64)
    multiplier = np.asarray(multiplier, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    # Fast path (the common case): every plain product and its rounding term fit int64.
    fits = _direct_product_fits(acc, multiplier)
    direct = rounding_rshift(acc * multiplier, shift)
    if fits.all():
        return direct
    k = np.minimum(shift, 31)
    half = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    lo = np.bitwise_and(acc, np.left_shift(np.int64(1), k) - 1)
    hi = np.clip(np.right_shift(acc, k), -(2**32), 2**32 - 1)
    low_part = np.right_shift(lo * multiplier + half, k)
    return np.where(fits, direct, np.right_shift(hi * multiplier + low_part, shift - k))


def _direct_product_fits(acc: np.ndarray, multiplier: np.ndarray) -> np.ndarray:
    """Per element: |acc| < 2^31, so with M < 2^31, acc * M + 2^(n-1) cannot overflow int64.

    (A rule on acc alone: cheap per element in the fused kernels, and the same everywhere.)
    """
    return (acc > -(2**31)) & (acc < 2**31)


@numba.njit(cache=True, nogil=True)
def clamp_scalar(x, lo, hi):
    return min(max(x, lo), hi)


@numba.njit(cache=True, nogil=True)
def rounding_rshift_scalar(x, shift):
    """One element of rounding_rshift, for the fused Numba kernels."""
    half = (np.int64(1) << (shift - 1)) if shift > 0 else np.int64(0)
    return (x + half) >> shift


@numba.njit(cache=True, nogil=True)
def requantize_scalar(acc, multiplier, shift, zero_point, lo, hi):
    """One element of requantize_dyadic with multiply_rshift_round's exact wide product;
    for the fused Numba kernels. Same rule per element as the vector form (tests check)."""
    if -(2**31) < acc < 2**31:  # the rule of _direct_product_fits
        r = rounding_rshift_scalar(acc * multiplier, shift)
    else:
        half = (np.int64(1) << (shift - 1)) if shift > 0 else np.int64(0)
        k = min(shift, 31)
        low = acc & ((np.int64(1) << k) - 1)
        high = min(max(acc >> k, -(2**32)), 2**32 - 1)
        r = (high * multiplier + ((low * multiplier + half) >> k)) >> (shift - k)
    return clamp_scalar(r + zero_point, lo, hi)


ACC_OVERFLOW_MODES = ("count", "saturate", "wrap")


def accumulator_value(acc: np.ndarray, acc_bits: int, overflow: str) -> np.ndarray:
    """What an acc_bits accumulator holds of the exact sum `acc` (int64):
    count: the exact sum (an accumulator wide enough; values outside acc_bits are only counted);
    saturate: clamped to the signed range (an accumulator with guard bits that saturates when
    written back: the clamp of the exact sum, whatever the order of the additions);
    wrap: two's complement modulo 2^acc_bits (the same for any order of the additions)."""
    if overflow == "count":
        return acc
    lim = 2 ** (acc_bits - 1)
    if overflow == "saturate":
        return np.clip(acc, -lim, lim - 1)
    if overflow == "wrap":
        return ((np.asarray(acc, np.int64) + lim) & (2 * lim - 1)) - lim
    raise ValueError(f"unknown accumulator overflow mode {overflow!r}; known: {', '.join(ACC_OVERFLOW_MODES)}")


@numba.njit(cache=True, nogil=True)
def accumulator_scalar(v, lim, overflow_code):
    """accumulator_value on one int64; overflow_code is the index in ACC_OVERFLOW_MODES."""
    if overflow_code == 1:
        return min(max(v, -lim), lim - 1)
    if overflow_code == 2:
        return ((v + lim) & (2 * lim - 1)) - lim
    return v


def count_outside(acc: np.ndarray, acc_bits: int) -> int:
    """How many accumulator values leave the signed acc_bits range (reported, not wrapped)."""
    lim = 2 ** (acc_bits - 1)
    acc = np.asarray(acc)
    return int(np.count_nonzero((acc < -lim) | (acc >= lim)))


def value_range(acc: np.ndarray) -> tuple[int, int]:
    """(min, max) of the exact accumulator values, widened to include 0 (which changes neither
    their peak magnitude nor the width that holds them; an empty tensor gives (0, 0))."""
    acc = np.asarray(acc)
    return min(int(acc.min(initial=0)), 0), max(int(acc.max(initial=0)), 0)


def signed_bits_needed(low: int, high: int) -> int:
    """The narrowest signed accumulator holding every value in [low, high]: the smallest b >= 2
    with -2^(b-1) <= low and high < 2^(b-1) (bit length of the peak magnitude + 1, one less when
    the peak is a negative power of two)."""
    return 1 + max(1, max(int(high), 0).bit_length(), max(-int(low) - 1, 0).bit_length())


def exact_matmul(a: np.ndarray, b: np.ndarray, b_col_l1_max: int | None = None) -> np.ndarray:
    """a @ b for integer matrices, exact in int64, on float BLAS where that is proven exact.

    Every partial sum of output (i, j) is bounded by sum_k |a_ik||b_kj| <= max|a| * max_j
    sum_k |b_kj|; below 2^24 float32 is exact, below 2^53 float64, otherwise int64 matmul.
    b_col_l1_max may be passed when it is known in advance (weights).
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if b_col_l1_max is None:
        b_col_l1_max = int(np.abs(b.astype(np.int64)).sum(axis=-2).max(initial=0))
    a_max = int(np.abs(a).max(initial=0)) if a.size else 0
    dtype = exact_float_dtype(gemm_bound(b_col_l1_max, a_max))
    if dtype is None:
        return np.matmul(a.astype(np.int64), b.astype(np.int64))
    return np.matmul(a.astype(dtype), b.astype(dtype)).astype(np.int64)


# --- requantization modes of real engines ------------------------------------------------
#
# "gemmlowp": TFLite's reference kernels (tensorflow/lite/kernels/internal/common.h and
# gemmlowp/fixedpoint). The multiplier is a Q31 integer M (2^30 <= M < 2^31) with a power
# of two; the IR stores the power as a right shift n (negative n: a left shift of the
# input, as TFLite's positive `shift`). Values are int32 in the engine: inputs are wrapped
# to int32 the way the engine's int32 arithmetic wraps.
# "float32": ONNX Runtime / qnnpack: float32(acc) times a float32 multiplier, ties to even.
# "float32_bias": fbgemm: the bias is added in float32 before the float32 multiplier.

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def wrap_int32(x: np.ndarray) -> np.ndarray:
    """Two's complement wrap of int64 values to int32 (what int32 arithmetic does)."""
    x = np.asarray(x, dtype=np.int64)
    return ((x - INT32_MIN) & 0xFFFFFFFF) + INT32_MIN


def round_half_away(x):
    """float -> nearest integer, ties away from zero (C++ std::round, TfLiteRound)."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def quantize_multiplier_q31(m: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier: m -> (M, exponent), m ≈ M * 2^(exponent - 31).

    frexp, then M = round-half-away(mantissa * 2^31); a carry to 2^31 halves M and bumps
    the exponent; exponents below -31 flush to (0, 0). m = 0 gives (0, 0).
    """
    m = float(m)
    if m == 0.0:
        return 0, 0
    if not (m > 0 and math.isfinite(m)):
        raise ValueError(f"requantization multiplier must be positive and finite, got {m}")
    mantissa, exponent = math.frexp(m)
    q = int(round_half_away(mantissa * 2.0**31))
    if q == 2**31:
        q //= 2
        exponent += 1
    if exponent < -31:
        return 0, 0
    return q, exponent


def quantize_multipliers_q31(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vector form of quantize_multiplier_q31 -> (M, right shift n = -exponent)."""
    pairs = [quantize_multiplier_q31(float(v)) for v in np.ravel(m)]
    mult = np.array([p[0] for p in pairs], dtype=np.int64).reshape(np.shape(m))
    shift = np.array([-p[1] for p in pairs], dtype=np.int64).reshape(np.shape(m))
    return mult, shift


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 values (held in int64).

    (a*b + nudge) / 2^31 with C's truncating division, nudge = 2^30 for a*b >= 0 else
    1 - 2^30; the one overflow case a = b = INT32_MIN saturates to INT32_MAX.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b  # |a|, |b| <= 2^31: fits int64
    q = ab + np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    trunc = np.where(q >= 0, q >> 31, -((-q) >> 31))
    return np.where((a == INT32_MIN) & (b == INT32_MIN), np.int64(INT32_MAX), trunc)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT: x / 2^e rounded to nearest, ties away from zero."""
    x = np.asarray(x, dtype=np.int64)
    e = np.asarray(exponent, dtype=np.int64)
    mask = np.left_shift(np.int64(1), e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + (remainder > threshold)


def multiply_by_quantized_multiplier(x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """TFLite MultiplyByQuantizedMultiplier (double rounding), with n = shift a right shift.

    x is wrapped to int32, shifted left by max(-n, 0) (int32 wrap, as in C), multiplied by
    SaturatingRoundingDoublingHighMul, then RoundingDivideByPOT by max(n, 0).
    """
    n = np.asarray(shift, dtype=np.int64)
    left = np.maximum(-n, 0)
    right = np.maximum(n, 0)
    xs = wrap_int32(np.left_shift(wrap_int32(x), left))
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(xs, multiplier), right)


def divide_round_away(x: np.ndarray, count: np.ndarray) -> np.ndarray:
    """TFLite's integer mean: x > 0 ? (x + c/2) / c : (x - c/2) / c, C truncating division."""
    x = np.asarray(x, dtype=np.int64)
    c = np.asarray(count, dtype=np.int64)
    num = np.where(x > 0, x + c // 2, x - c // 2)
    q = np.abs(num) // c
    return np.where(num < 0, -q, q)


def requantize_gemmlowp(acc: np.ndarray, multiplier, shift, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    """y = clamp(MultiplyByQuantizedMultiplier(acc, M, n) + z): TFLite's conv/FC output stage."""
    return np.clip(multiply_by_quantized_multiplier(acc, multiplier, shift) + zero_point, qmin, qmax)


def requantize_float32(acc: np.ndarray, scale_f32, zero_point: int, qmin: int, qmax: int,
                       bias_f32=None) -> np.ndarray:
    """y = clamp(rint(float32(acc) [+ bias_f32] * scale_f32) + z), every step in float32.

    Without bias_f32: ONNX Runtime QLinearConv/MatMul and qnnpack (integer bias already in
    acc). With bias_f32: fbgemm, the float bias b / float32(s_x*s_w) added in float32.
    """
    v = np.asarray(acc).astype(np.float32)
    if bias_f32 is not None:
        v = v + np.asarray(bias_f32, dtype=np.float32)
    v = np.clip(np.rint(v * np.asarray(scale_f32, dtype=np.float32)), -(2.0**62), 2.0**62)
    return np.clip(v.astype(np.int64) + zero_point, qmin, qmax)


def fma_float32(x: np.ndarray, r, c) -> np.ndarray:
    """float32 fused multiply-add round32(x·r + c) with one rounding, exactly: x an integer
    array below 2^29 in magnitude (so x·r is exact in float64), r and c float32. The float64
    sum is rounded to odd (its TwoSum error nudges an inexact even result one ulp toward the
    true value), which makes the second rounding to float32 correct (53 >= 24 + 2 bits)."""
    p = np.asarray(x, np.float64) * np.asarray(r, np.float32).astype(np.float64)
    c = np.asarray(c, np.float32).astype(np.float64)
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)
    even = (s.view(np.int64) & 1) == 0 if s.ndim else (np.asarray(s).view(np.int64) & 1) == 0
    s = np.where((err != 0) & even, np.nextafter(s, s + err), s)
    return s.astype(np.float32)


def add_float32(a: np.ndarray, b: np.ndarray, scale3, qmin: int, qmax: int) -> np.ndarray:
    """ONNX Runtime's QLinearAdd on x86-64 (MLAS AVX2 kernel). scale3 = float32 [r_a, r_b, f]:
    r_a = s_a/s_y, r_b = s_b/s_y, f = z_y - (r_a·z_a + r_b·z_b) (all float32, the zero points
    are folded into f). Per element, on the raw inputs: t = fma(b, r_b, f); t = fma(a, r_a, t);
    y = clamp(rint_half_even(t))."""
    ra, rb, f = (np.float32(v) for v in np.ravel(np.asarray(scale3, np.float32)))
    t = fma_float32(b, rb, np.full(np.shape(b), f, np.float32))
    t = fma_float32(a, ra, t)
    return np.clip(np.rint(t).astype(np.int64), qmin, qmax)


def add_float32_constant(ra: np.float32, rb: np.float32, za: int, zb: int, zy: int) -> np.float32:
    """add_float32's f: the zero-point constant of MLAS's AVX2 QLinearAdd, float32(z_y) - (r_a·z_a + r_b·z_b),
    as compiled (the inner sum contracted to one FMA: fma(r_a, z_a, r_b·z_b))."""
    inner = fma_float32(np.array(za), ra, np.float32(rb * np.float32(zb)))
    return np.float32(np.float32(zy) - np.float32(inner))


def dequant_quant_float32(x: np.ndarray, x_zero_point: int, s_in, s_out, zero_point: int,
                          qmin: int, qmax: int) -> np.ndarray:
    """ONNX Runtime's DequantizeLinear then QuantizeLinear (float data movement between them is
    exact): v = float32(x - z_x) · float32(s_in); y = clamp(rint_half_even(v / float32(s_out)) + z_y)."""
    v = (np.asarray(x, np.int64) - x_zero_point).astype(np.float32) * np.float32(s_in)
    q = np.rint(v / np.float32(s_out))
    return np.clip(np.clip(q, -(2.0**62), 2.0**62).astype(np.int64) + zero_point, qmin, qmax)


# --- integer primitives of the nonlinear ops (integer_ref.nonlinear) -----------------------
# Torch twins: quantsim.emulate.nonlinear (bit_length, isqrt, shift_pow2, round_div).

ISQRT_ITERS = 6  # Newton steps from a power-of-two start: exact for every int64 x >= 0


def bit_length(x: np.ndarray) -> np.ndarray:
    """Per element: the number of bits of x >= 0 (0 for 0), like int.bit_length.

    A 6-step binary search on shifts (32, 16, 8, 4, 2, 1): a leading-zero counter.
    """
    v = np.asarray(x, dtype=np.int64).copy()
    n = np.zeros(v.shape, dtype=np.int64)
    for s in (32, 16, 8, 4, 2, 1):
        t = np.right_shift(v, s)
        big = t > 0
        v = np.where(big, t, v)
        n = n + np.where(big, s, 0)
    return n + (v > 0)


def isqrt(x: np.ndarray) -> np.ndarray:
    """floor(sqrt(x)) for int64 x >= 0, exactly (equals math.isqrt), in ISQRT_ITERS steps.

    Start at y0 = 2^ceil(bits(x)/2), which lies in [sqrt(x), 2 sqrt(x)]; the integer Newton
    step y <- min(y, floor((y + floor(x / y)) / 2)) never goes below isqrt(x) and, from a
    start within a factor 2, reaches it in 6 steps for every x < 2^63 (the relative error
    squares each step: 1, 1/4, 1/40, 3e-4, 5e-8, 1e-15 < 2^-32).
    """
    x = np.asarray(x, dtype=np.int64)
    y = np.left_shift(np.int64(1), np.right_shift(bit_length(x) + 1, 1))
    for _ in range(ISQRT_ITERS):
        y = np.minimum(y, np.right_shift(y + np.floor_divide(x, np.maximum(y, 1)), 1))
    return y


def shift_pow2(x: np.ndarray, t: int) -> np.ndarray:
    """x * 2^t: an exact left shift for t >= 0, rounding_rshift (ties up) for t < 0."""
    x = np.asarray(x, dtype=np.int64)
    if t >= 0:
        return np.left_shift(x, t)
    return rounding_rshift(x, np.int64(-t))


def round_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """round(a / b) for int64 a and b > 0, ties up: floor((2a + b) / 2b)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    return np.floor_divide(2 * a + b, 2 * b)
