"""Integer-only nonlinearities for Vision Transformers: exp, softmax, GELU, LayerNorm.

I-BERT style (Kim et al., "I-BERT: Integer-only BERT Quantization", ICML 2021): second-order
polynomials evaluated on integers, a shift-based range reduction for exp, a polynomial erf
for GELU, and an integer square root for LayerNorm. Written here once, in NumPy int64;
quantsim.emulate.nonlinear is the torch twin and must agree element for element.

Every op is split in two, like the rest of integer_ref:
- ``*_params(scale, ...)`` turns the real-valued scales into the op's integer constants
  (plain Python arithmetic on floats, done once at lowering time; both twins call the
  same function, so the constants are identical by construction);
- ``*_int(x, params)`` is the integer kernel: only int64 adds, multiplies, shifts,
  comparisons and floor divisions; the rounding rules and the integer square root are
  integer_ref.arith's.
``i_softmax``, ``i_gelu``, ``i_layernorm`` and ``i_exp`` wrap the two: integer input and
scale(s) in, ``(integer output, output scale)`` out.

The internal grid
    The polynomials need their argument on a fine grid: on a coarse 8-bit input grid,
    I-BERT's constant floor(-ln2 / s) is off by 1 % at s = 0.1 and by 44 % at s = 0.5, and
    the error compounds over the range-reduction steps. So each op first moves
    its input to the grid S = s / 2^t with 2^-(F+1) < S <= 2^-F (F = FINE_FRAC_BITS): an
    exact left shift by t when the input is coarser (the usual case), a rounding right
    shift when it is finer. t is a lowering-time constant.

Constants and their derivation
    exp(r) ≈ EXP_A r² + EXP_B r + EXP_C on r in (-ln2, 0] (I-BERT's least-squares fit;
    max relative error ≈ 2e-3), rewritten as EXP_A (r² + (EXP_B/EXP_A) r + EXP_C/EXP_A) so
    that on the grid S it is z = r (r + b) + c with b = floor(EXP_B/EXP_A / S),
    c = floor(EXP_C/EXP_A / S²), value z · EXP_A S². exp(x) = 2^-q exp(r) with
    x = q·(-ln2) + r: q = floor(x / x0), r = x - q·x0, x0 = floor(-ln2 / S); 2^-q is a right
    shift. Inputs below EXP_CLIP_LN2 · x0 (exp < 1e-9) are clipped there (I-BERT's n = 30).

    erf(u) ≈ sign(u) [ERF_A (min(|u|, -ERF_B) + ERF_B)² + 1] (I-BERT's fit on [0, 1.769]);
    on the grid S_u of u = x s / √2 this is E = sign(u) (c1 - (min(|u|, B) - B)²) with
    B = round(-ERF_B / S_u), c1 = round(1 / (|ERF_A| S_u²)), value E · |ERF_A| S_u².
    GELU(x) = x/2 (1 + erf(x / √2)) is then acc = x (c1 + E) at scale s |ERF_A| S_u² / 2,
    requantized to the output with a dyadic multiplier (arith.quantize_multiplier).

    LayerNorm over the last axis (C channels): the mean is kept with h fraction bits,
    y = x·2^h - round(Σx · 2^h / C) (integer division, ties up; a mean rounded to whole
    LSBs costs up to 0.5 output LSB at 8 bits), v = Σy² + eps_int with
    eps_int = round(eps · C · 4^h / s²) (v is C·var on the 2^-h LSB grid). h = min(8, ...)
    and k come from the input's bit width and C so that v · 4^k < 2^62.
    r = isqrt(v · 4^k) ≈ 2^k √v (exact integer square root, see isqrt). A per-row reciprocal
    inv = floor(2^Q / r) and u = round(y · inv / 2^(Q-k-F_LN)) give u ≈ (y / √v) 2^F_LN =
    z / √C · 2^F_LN with z the normalised value. gamma is quantized per tensor to
    LN_GAMMA_BITS (g), beta to the accumulator scale s_g √C / 2^F_LN (b), and
    acc = u · g + b is requantized to the output with one dyadic multiplier.

    softmax: e = i-exp(x - max x); the sum Σe over the row is at least c (the maximum's
    own exp) and at most L·c; one reciprocal per row, f = floor(2^P / Σe) with P = 62
    (e·f <= 2^62 since e <= Σe), and y = round(e · f / 2^(P - out_bits)), clamped to
    [0, 2^out_bits - 1]: unsigned, scale 2^-out_bits (a probability of exactly 1 saturates
    to 1 - 2^-out_bits).
    log2 softmax (RepQ-ViT / FQ-ViT's log2 quantizer of the attention probabilities): the
    same v = e·f, then k = round(-log2(v / 2^P)) in the log domain (softmax_log2_codes, one
    bit length and one mantissa comparison), code k meaning 2^-k for k = 0..K, K =
    log2_max_exp <= 2^out_bits - 2 (a lowering-time constant), and the zero code
    2^out_bits - 1 for everything below 2^-K·2^-1/2. attention·V then needs no multiplier:
    Σ_j v_j·2^-k_j is Σ_j v_j << (K - k_j) on the 2^-K grid (kernels_vit.log2_matmul_acc).

Float-nonlinearity mode (Liu et al. 2021 keep softmax and LayerNorm in float): the
``float_*`` functions dequantize, evaluate in float32 and quantize again. They exist for
the accuracy comparison only and are NEVER bit-exact between the two executors (libm and
torch's vectorised exp/erf differ in the last float bit); ``deviation`` measures by how much.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numba
import numpy as np

from . import arith

# --- constants (see the module docstring for the derivation) ------------------------------
FINE_FRAC_BITS = 14            # F: the polynomials' argument grid is 2^-14 .. 2^-15
LN2 = math.log(2.0)
EXP_A, EXP_B, EXP_C = 0.35815147, 0.96963238, 1.0  # exp(r) ≈ A r² + B r + C on (-ln2, 0]
EXP_CLIP_LN2 = 30              # exp(x) := exp(-30 ln2) ≈ 9.3e-10 below x = -30 ln2
ERF_A, ERF_B = -0.2888, -1.769  # erf(u) ≈ sign(u) [A (min(|u|, -B) + B)² + 1]
SOFTMAX_RECIP_BITS = 62        # P: f = floor(2^P / Σe)
SOFTMAX_QUANT = ("uniform", "log2")
LOG2_MANTISSA_BITS = 31        # the log2 codes' rounding compares a 32-bit mantissa of v ...
LOG2_SQRT2_Q31 = 3037000500    # ... against ceil(√2 · 2^31): log-domain round to nearest
LN_FRAC_BITS = 15              # F_LN: u = normalised / √C on a 2^-15 grid
LN_GAMMA_BITS = 16             # gamma quantized per tensor, signed narrow 16-bit
LN_ROW_BITS = 62               # v · 4^k < 2^62, so isqrt(v · 4^k) < 2^31
LN_MEAN_FRAC_BITS = 8          # h: fraction bits of the mean (at most; fewer for wide rows)
LN_EPS_MAX = 2**40             # eps_int saturates here (a tiny input scale would overflow)
ISQRT_ITERS = arith.ISQRT_ITERS  # Newton steps of isqrt (exact for every int64)


# --- integer primitives: integer_ref.arith (bit_length, isqrt, shift_pow2, round_div) ----------
bit_length, isqrt, shift_pow2, round_div = arith.bit_length, arith.isqrt, arith.shift_pow2, arith.round_div


# --- lowering-time helpers (plain Python) ----------------------------------------------------

def grid_shift(scale: float, frac_bits: int = FINE_FRAC_BITS) -> int:
    """t with 2^-(F+1) < scale / 2^t <= 2^-F: the power of two that moves `scale` onto the grid."""
    scale = float(scale)
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be positive and finite, got {scale}")
    t = math.ceil(math.log2(scale) + frac_bits)
    while math.ldexp(scale, -t) > math.ldexp(1.0, -frac_bits):  # guard log2 rounding
        t += 1
    while math.ldexp(scale, -(t - 1)) <= math.ldexp(1.0, -frac_bits):
        t -= 1
    return t


def _signed_max(bits: int) -> int:
    return arith.qrange(bits, True)[1]


# --- exp and softmax ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ExpParams:
    """Integer constants of i-exp for an input scale (see the module docstring)."""

    shift: int      # t: d on the grid S = s / 2^t
    pre_clip: int   # d >= -pre_clip in input units before the shift (keeps d << t small)
    x0: int         # floor(-ln2 / S) < 0
    b: int          # floor(EXP_B / EXP_A / S)
    c: int          # floor(EXP_C / EXP_A / S²)
    out_scale: float  # EXP_A · S²: real value of one unit of e

    def to_attrs(self) -> dict:
        return asdict(self)


def exp_params(scale: float) -> ExpParams:
    t = grid_shift(scale)
    s_grid = math.ldexp(float(scale), -t)
    x0 = math.floor(-LN2 / s_grid)
    # Clipping at -pre_clip before the shift never moves a value above the final clip
    # EXP_CLIP_LN2 · x0 >= -EXP_CLIP_LN2 (ln2 / S + 1); it only bounds d << t.
    pre_clip = math.ceil(math.ldexp(EXP_CLIP_LN2 * (LN2 / s_grid + 1) + 1, -t)) + 1
    return ExpParams(shift=t, pre_clip=pre_clip, x0=x0, b=math.floor(EXP_B / EXP_A / s_grid),
                     c=math.floor(EXP_C / EXP_A / s_grid**2), out_scale=EXP_A * s_grid**2)


def exp_int(d: np.ndarray, p: ExpParams) -> np.ndarray:
    """e ≈ exp(d · s) / p.out_scale for d <= 0 (input units); 0 <= e <= p.c."""
    d = np.maximum(np.asarray(d, dtype=np.int64), -p.pre_clip)
    d = np.maximum(shift_pow2(d, p.shift), EXP_CLIP_LN2 * p.x0)
    q = np.floor_divide(d, p.x0)  # 0 <= q <= EXP_CLIP_LN2
    r = d - p.x0 * q              # x0 < r <= 0
    z = r * (r + p.b) + p.c       # > 0: the polynomial has no real root
    return np.right_shift(z, q)


def i_exp(x: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
    """Integer exp of x <= 0 at scale `scale` -> (e, scale of e)."""
    p = exp_params(scale)
    return exp_int(x, p), p.out_scale


@dataclass(frozen=True)
class SoftmaxParams:
    exp: ExpParams
    recip_bits: int  # P
    out_bits: int
    # "uniform": y at scale 2^-out_bits; "log2": y = k with p ≈ 2^-k for k in 0..log2_max_exp and
    # the zero code 2^out_bits - 1 for smaller p (softmax_log2_codes)
    quant: str = "uniform"
    log2_max_exp: int = 0

    @property
    def out_scale(self) -> float:
        return math.ldexp(1.0, -self.out_bits)

    @property
    def qmax(self) -> int:
        return 2**self.out_bits - 1

    def to_attrs(self) -> dict:
        return {"exp": self.exp.to_attrs(), "recip_bits": self.recip_bits, "out_bits": self.out_bits,
                "quant": self.quant, "log2_max_exp": self.log2_max_exp}


def softmax_params(scale: float, out_bits: int = 8, quant: str = "uniform", log2_max_exp: int = 0) -> SoftmaxParams:
    if not 2 <= out_bits <= 16:
        raise ValueError(f"softmax output bits {out_bits} outside 2..16")
    if quant not in SOFTMAX_QUANT:
        raise ValueError(f"softmax quantizer {quant!r}: one of {', '.join(SOFTMAX_QUANT)}")
    if quant == "log2" and not 0 <= log2_max_exp <= min(2**out_bits - 2, SOFTMAX_RECIP_BITS):
        raise ValueError(f"log2 softmax: deepest exponent {log2_max_exp} outside 0..{2**out_bits - 2} "
                         f"(code 2^{out_bits} - 1 is the zero code)")
    return SoftmaxParams(exp_params(scale), SOFTMAX_RECIP_BITS, int(out_bits), quant,
                         int(log2_max_exp) if quant == "log2" else 0)


def softmax_fixed(x: np.ndarray, p: SoftmaxParams, mask=None) -> np.ndarray:
    """v = e·f with f = floor(2^P / Σe): the probabilities on the 2^-P grid (0 <= v <= 2^P).

    mask (broadcast against x's trailing axes, true = left out): masked entries take no part in the
    row's max or sum and come out 0 (Swin's shifted-window mask; see quantsim.graph.swin). Every row
    must keep at least one entry."""
    x = np.asarray(x, dtype=np.int64)
    if mask is not None:
        mask = np.broadcast_to(np.asarray(mask, bool), x.shape)
        row_max = np.where(mask, np.iinfo(np.int64).min, x).max(axis=-1, keepdims=True)
        e = np.where(mask, 0, exp_int(np.minimum(x - row_max, 0), p.exp))
    else:
        e = exp_int(x - x.max(axis=-1, keepdims=True), p.exp)
    total = e.sum(axis=-1, keepdims=True)  # >= p.exp.c > 0
    f = np.floor_divide(np.int64(1) << np.int64(p.recip_bits), total)
    return e * f


def softmax_int(x: np.ndarray, p: SoftmaxParams, mask=None) -> np.ndarray:
    """Integer softmax over the last axis -> unsigned out_bits: uniform codes at scale
    2^-out_bits, or (p.quant "log2") the log2 codes of softmax_log2_codes; mask: softmax_fixed's."""
    v = softmax_fixed(x, p, mask)
    if p.quant == "log2":
        return softmax_log2_codes(v, p)
    y = arith.rounding_rshift(v, np.int64(p.recip_bits - p.out_bits))
    return arith.clamp(y, 0, p.qmax)


def softmax_log2_codes(v: np.ndarray, p: SoftmaxParams) -> np.ndarray:
    """k = round(-log2(v / 2^P)) rounded in the log domain, i.e. to the nearer power of two by
    ratio: with L = floor(log2 v), k = P - L - 1 where v >= 2^L·√2 (tested as
    v >= LOG2_SQRT2_Q31 · 2^(L-31), the 32-bit mantissa of v against ceil(√2·2^31)), else P - L.
    So 2^-k <= √2·p, and a row's codes sum to at most √2 in value. v = 0 or k > log2_max_exp:
    the zero code 2^out_bits - 1."""
    v = np.asarray(v, dtype=np.int64)
    L = arith.bit_length(v) - 1                      # -1 where v = 0
    sh = L - LOG2_MANTISSA_BITS
    top = np.where(sh >= 0, np.right_shift(v, np.maximum(sh, 0)), np.left_shift(v, np.maximum(-sh, 0)))
    k = p.recip_bits - L - (top >= LOG2_SQRT2_Q31).astype(np.int64)
    zero = (v <= 0) | (k > p.log2_max_exp)
    return np.where(zero, np.int64(p.qmax), k)


def i_softmax(x: np.ndarray, scale: float, out_bits: int = 8) -> tuple[np.ndarray, float]:
    """Integer softmax of x (scale `scale`) over the last axis -> (y unsigned, 2^-out_bits)."""
    p = softmax_params(scale, out_bits)
    return softmax_int(x, p), p.out_scale


# --- GELU ----------------------------------------------------------------------------------

class SignedOutput:
    """A nonlinearity whose output is signed (narrow) out_bits: its quantized range."""

    @property
    def qrange(self) -> tuple[int, int]:
        return arith.qrange(self.out_bits, True)


@dataclass(frozen=True)
class GeluParams(SignedOutput):
    shift: int       # t: u = |x| << t is |x|/√2 on the grid S_u = s / (√2 · 2^t)
    pre_clip: int    # |x| is first clipped here (>= B / 2^t: no effect but bounds |x| << t)
    clip: int        # B = round(-ERF_B / S_u)
    one: int         # c1 = round(1 / (|ERF_A| S_u²))
    multiplier: int  # dyadic requant of acc = x (c1 + E): s |ERF_A| S_u² / (2 s_out) ≈ M / 2^n
    rshift: int
    out_bits: int
    out_scale: float

    def to_attrs(self) -> dict:
        return asdict(self)


def gelu_params(scale: float, out_scale: float | None = None, out_bits: int = 8) -> GeluParams:
    """Constants of i-GELU; the output is signed (narrow) out_bits at out_scale (default: scale)."""
    scale = float(scale)
    out_scale = scale if out_scale is None else float(out_scale)
    s_u0 = scale / math.sqrt(2.0)
    t = grid_shift(s_u0)
    s_u = math.ldexp(s_u0, -t)
    m, n = arith.quantize_multiplier(scale * abs(ERF_A) * s_u**2 / (2.0 * out_scale))
    clip = round(-ERF_B / s_u)
    return GeluParams(shift=t, pre_clip=math.ceil(math.ldexp(clip, -t)) + 1, clip=clip,
                      one=round(1.0 / (abs(ERF_A) * s_u**2)),
                      multiplier=m, rshift=n, out_bits=int(out_bits), out_scale=out_scale)


def gelu_int(x: np.ndarray, p: GeluParams) -> np.ndarray:
    """Integer GELU, elementwise; needs |x| < 2^31 (acc = x (c1 + E) < 2^63)."""
    x = np.asarray(x, dtype=np.int64)
    u = np.minimum(shift_pow2(np.minimum(np.abs(x), p.pre_clip), p.shift), p.clip)
    e = np.sign(x) * (p.one - (u - p.clip) ** 2)  # erf(x/√2) / (|ERF_A| S_u²); 0 at x = 0
    acc = x * (p.one + e)
    lo, hi = p.qrange
    y = arith.multiply_rshift_round(acc, np.int64(p.multiplier), np.int64(p.rshift))
    return arith.clamp(y, lo, hi)


def i_gelu(x: np.ndarray, scale: float, out_scale: float | None = None,
           out_bits: int = 8) -> tuple[np.ndarray, float]:
    """Integer GELU of x at `scale` -> (y signed out_bits, out_scale)."""
    p = gelu_params(scale, out_scale, out_bits)
    return gelu_int(x, p), p.out_scale


# --- LayerNorm -------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerNormParams(SignedOutput):
    channels: int
    in_bits: int      # |x| < 2^(in_bits - 1): the bound the shifts were chosen for
    mean_shift: int   # h: y = x·2^h - round(Σx·2^h / C)
    eps: int          # eps_int = round(eps · C · 4^h / s²), saturated at LN_EPS_MAX
    sqrt_shift: int   # k: r = isqrt(v << 2k)
    recip_bits: int   # Q: inv = floor(2^Q / r)
    norm_shift: int   # Q - k - F_LN: u = round(y · inv / 2^norm_shift)
    gamma: np.ndarray  # (C,) int64, at scale gamma_scale
    beta: np.ndarray   # (C,) int64, at the accumulator scale gamma_scale · √C / 2^F_LN
    gamma_scale: float
    multiplier: int
    rshift: int
    out_bits: int
    out_scale: float
    center: int = 1   # 1: LayerNorm (subtract the mean, divide by √(Σy²/C)); 0: L2 normalize (x / ‖x‖)

    def to_attrs(self) -> dict:
        """Plain-number attributes (IR node attrs); gamma and beta are the node's params."""
        d = asdict(self)
        d.pop("gamma"), d.pop("beta")
        return d


def layernorm_params(scale: float, gamma, beta, eps: float, out_scale: float, out_bits: int = 8,
                     in_bits: int = 16, center: bool = True) -> LayerNormParams:
    """center=False: the L2 normalization x / sqrt(‖x‖² + eps) (F.normalize; Swin v2's cosine attention):
    the same kernel without the mean, v = ‖x‖² (not C·var), so eps and the output scale lose their C."""
    gamma = np.asarray(gamma, dtype=np.float64).ravel()
    beta = np.asarray(beta, dtype=np.float64).ravel()
    c = gamma.size
    if beta.size != c or c < 1:
        raise ValueError(f"gamma ({gamma.size}) and beta ({beta.size}) must have the channel count")
    if not 2 <= in_bits <= 24:
        raise ValueError(f"LayerNorm input bits {in_bits} outside 2..24")
    scale, out_scale = float(scale), float(out_scale)
    h = max(0, min(LN_MEAN_FRAC_BITS, (LN_ROW_BITS - 2 - c.bit_length() - 2 * in_bits) // 2))
    norm = c if center else 1  # v / norm is what the square root normalises by: C·var / C, or ‖x‖²
    eps_int = min(round(float(eps) * norm * 4**h / scale**2), LN_EPS_MAX)
    v_max = c * (1 << (2 * (in_bits + h))) + eps_int    # |y| <= 2^(in_bits + h)
    if v_max.bit_length() > LN_ROW_BITS:
        raise ValueError(f"LayerNorm over {c} channels of {in_bits}-bit inputs overflows int64")
    k = max(0, (LN_ROW_BITS - v_max.bit_length()) // 2)
    q = min(62, 62 - in_bits - h + k)                   # |y| · 2^Q / 2^k < 2^62
    norm_shift = q - k - LN_FRAC_BITS
    if norm_shift < 0:
        raise ValueError(f"LayerNorm over {c} channels of {in_bits}-bit inputs leaves no fraction bits")
    g_max = float(np.abs(gamma).max())
    gamma_scale = g_max / _signed_max(LN_GAMMA_BITS) if g_max > 0 else 1.0
    g_int = np.clip(np.rint(gamma / gamma_scale), -_signed_max(LN_GAMMA_BITS), _signed_max(LN_GAMMA_BITS))
    acc_scale = gamma_scale * math.sqrt(norm) / 2**LN_FRAC_BITS
    b_int = np.rint(beta / acc_scale)
    m, n = arith.quantize_multiplier(acc_scale / out_scale)
    return LayerNormParams(channels=c, in_bits=int(in_bits), mean_shift=h, eps=int(eps_int), sqrt_shift=k, recip_bits=q,
                           norm_shift=norm_shift, gamma=g_int.astype(np.int64), beta=b_int.astype(np.int64),
                           gamma_scale=gamma_scale, multiplier=m, rshift=n, out_bits=int(out_bits),
                           out_scale=out_scale, center=int(bool(center)))


def layernorm_int(x: np.ndarray, p: LayerNormParams) -> np.ndarray:
    """Integer LayerNorm over the last axis -> signed out_bits at p.out_scale."""
    x = np.asarray(x, dtype=np.int64)
    if x.shape[-1] != p.channels:
        raise ValueError(f"LayerNorm over {p.channels} channels got a last axis of {x.shape[-1]}")
    lim = 2 ** (p.in_bits - 1)
    if x.size and (x.min() < -lim or x.max() >= lim):
        raise ValueError(f"LayerNorm input leaves its declared {p.in_bits}-bit range")
    y = np.left_shift(x, p.mean_shift)
    if p.center:
        y = y - round_div(np.left_shift(x.sum(axis=-1, keepdims=True), p.mean_shift), np.int64(p.channels))
    v = (y * y).sum(axis=-1, keepdims=True) + p.eps
    r = np.maximum(isqrt(np.left_shift(v, 2 * p.sqrt_shift)), 1)
    inv = np.floor_divide(np.int64(1) << np.int64(p.recip_bits), r)
    u = arith.rounding_rshift(y * inv, np.int64(p.norm_shift))
    acc = u * p.gamma + p.beta
    lo, hi = p.qrange
    return arith.clamp(arith.multiply_rshift_round(acc, np.int64(p.multiplier), np.int64(p.rshift)), lo, hi)


def i_layernorm(x: np.ndarray, scale: float, gamma, beta, eps: float, out_scale: float, out_bits: int = 8,
                in_bits: int = 16) -> tuple[np.ndarray, float]:
    """Integer LayerNorm of x at `scale` over the last axis -> (y signed out_bits, out_scale)."""
    p = layernorm_params(scale, gamma, beta, eps, out_scale, out_bits, in_bits)
    return layernorm_int(x, p), p.out_scale


# --- float-nonlinearity mode (never bit-exact; for the accuracy comparison) -------------------

def _erf_scalar(v):
    return math.erf(v)


@functools.cache
def _erf():
    """math.erf as a NumPy ufunc, compiled (or read from Numba's cache) on first use: done at import,
    it cost every importer of integer_ref a few tenths of a second (a Ray worker, `--help`)."""
    return numba.vectorize(["float32(float32)", "float64(float64)"], cache=True)(_erf_scalar)


def _requant(y: np.ndarray, out_scale: float, bits: int, signed: bool) -> np.ndarray:
    lo, hi = arith.qrange(bits, signed)
    return arith.quantize_float32(y, out_scale, 0, lo, hi)


def float_softmax(x: np.ndarray, scale: float, out_bits: int = 8) -> tuple[np.ndarray, float]:
    """Dequantize, float32 softmax over the last axis, quantize unsigned at 2^-out_bits."""
    xf = np.asarray(x, dtype=np.float32) * np.float32(scale)
    e = np.exp(xf - xf.max(axis=-1, keepdims=True))
    out_scale = math.ldexp(1.0, -out_bits)
    return _requant(e / e.sum(axis=-1, keepdims=True), out_scale, out_bits, False), out_scale


def float_gelu(x: np.ndarray, scale: float, out_scale: float | None = None,
               out_bits: int = 8) -> tuple[np.ndarray, float]:
    """Dequantize, float32 erf-GELU, quantize signed at out_scale (default: scale)."""
    out_scale = float(scale) if out_scale is None else float(out_scale)
    xf = np.asarray(x, dtype=np.float32) * np.float32(scale)
    y = np.float32(0.5) * xf * (np.float32(1.0) + _erf()(xf * np.float32(1.0 / math.sqrt(2.0))))
    return _requant(y, out_scale, out_bits, True), out_scale


def float_layernorm(x: np.ndarray, scale: float, gamma, beta, eps: float, out_scale: float,
                    out_bits: int = 8) -> tuple[np.ndarray, float]:
    """Dequantize, float32 LayerNorm over the last axis, quantize signed at out_scale."""
    xf = np.asarray(x, dtype=np.float32) * np.float32(scale)
    mean = xf.mean(axis=-1, keepdims=True)
    var = ((xf - mean) ** 2).mean(axis=-1, keepdims=True)
    y = (xf - mean) / np.sqrt(var + np.float32(eps))
    y = y * np.asarray(gamma, np.float32) + np.asarray(beta, np.float32)
    return _requant(y, out_scale, out_bits, True), float(out_scale)


def deviation(a: np.ndarray, b: np.ndarray, scale: float = 1.0) -> dict:
    """How far two integer tensors (same scale) are apart: counts and sizes, in LSB and real units."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    diff = np.abs(a - b)
    n = int(diff.size)
    max_lsb = int(diff.max(initial=0))
    return {"elements": n, "differing": int(np.count_nonzero(diff)),
            "max_abs_lsb": max_lsb, "mean_abs_lsb": float(diff.mean()) if n else 0.0,
            "max_abs": max_lsb * float(scale), "identical": not bool(np.any(diff))}
