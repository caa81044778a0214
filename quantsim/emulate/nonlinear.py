"""The torch twin of integer_ref.nonlinear: integer exp, softmax, GELU and LayerNorm.

Same constants (taken from integer_ref.nonlinear's ``*_params`` functions, computed once
in plain Python), same int64 steps in the same order, so the outputs are identical to
the NumPy reference element for element, on CPU or GPU. Only int64 tensor ops are used:
add, multiply, shifts, comparisons, floor division; the rounding shifts are
quantsim.emulate.arith's twins of integer_ref.arith.

The ``float_*`` functions are the float-nonlinearity mode (dequantize, float32 op,
quantize again), for the comparison with Liu et al. 2021, who keep softmax and LayerNorm
in float. They are never bit-exact against integer_ref's float mode (torch and NumPy
evaluate exp/erf/sqrt differently in the last float bit): ``measure_deviation`` reports
how far the float mode and the integer mode are from each other and from float64.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from integer_ref import arith
from integer_ref import nonlinear as NL
from integer_ref.nonlinear import (EXP_CLIP_LN2, ExpParams, GeluParams, LayerNormParams, SoftmaxParams,
                                   exp_params, gelu_params, layernorm_params, softmax_params)
from quantsim.emulate.arith import multiply_rshift_round, rounding_rshift

__all__ = ["bit_length", "isqrt", "exp_int", "i_exp", "softmax_int", "i_softmax", "gelu_int", "i_gelu",
           "layernorm_int", "i_layernorm", "float_softmax", "float_gelu", "float_layernorm",
           "measure_deviation", "exp_params", "softmax_params", "gelu_params", "layernorm_params"]


def _i64(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.int64) if not isinstance(x, torch.Tensor) else x.to(torch.int64)


def _scalar(v: int, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(int(v), dtype=torch.int64, device=like.device)


# --- integer primitives ------------------------------------------------------------------------

def bit_length(x: torch.Tensor) -> torch.Tensor:
    """nonlinear.bit_length: bits of x >= 0 by a 6-step binary search on shifts."""
    v = _i64(x).clone()
    n = torch.zeros_like(v)
    for s in (32, 16, 8, 4, 2, 1):
        t = torch.bitwise_right_shift(v, s)
        big = t > 0
        v = torch.where(big, t, v)
        n = n + big.to(torch.int64) * s
    return n + (v > 0).to(torch.int64)


def isqrt(x: torch.Tensor) -> torch.Tensor:
    """nonlinear.isqrt: floor(sqrt(x)) for int64 x >= 0 in ISQRT_ITERS Newton steps."""
    x = _i64(x)
    y = torch.bitwise_left_shift(torch.ones_like(x), torch.bitwise_right_shift(bit_length(x) + 1, 1))
    for _ in range(NL.ISQRT_ITERS):
        y = torch.minimum(y, torch.bitwise_right_shift(y + torch.div(x, y.clamp_min(1), rounding_mode="floor"), 1))
    return y


def shift_pow2(x: torch.Tensor, t: int) -> torch.Tensor:
    """nonlinear.shift_pow2: x · 2^t, rounding right shift (ties up) for t < 0."""
    if t >= 0:
        return torch.bitwise_left_shift(x, t)
    return rounding_rshift(x, _scalar(-t, x))


def round_div(a: torch.Tensor, b: int) -> torch.Tensor:
    """nonlinear.round_div: round(a / b), b > 0, ties up."""
    return torch.div(2 * a + b, 2 * b, rounding_mode="floor")


# --- exp and softmax -----------------------------------------------------------------------------

def exp_int(d: torch.Tensor, p: ExpParams) -> torch.Tensor:
    d = _i64(d).clamp_min(-p.pre_clip)
    d = shift_pow2(d, p.shift).clamp_min(EXP_CLIP_LN2 * p.x0)
    q = torch.div(d, p.x0, rounding_mode="floor")
    r = d - p.x0 * q
    z = r * (r + p.b) + p.c
    return torch.bitwise_right_shift(z, q)


def i_exp(x: torch.Tensor, scale: float) -> tuple[torch.Tensor, float]:
    p = exp_params(scale)
    return exp_int(x, p), p.out_scale


def softmax_fixed(x: torch.Tensor, p: SoftmaxParams, mask: torch.Tensor | None = None) -> torch.Tensor:
    """nonlinear.softmax_fixed; mask (bool, broadcast against x, true = left out) as there."""
    x = _i64(x)
    if mask is not None:
        mask = mask.to(torch.bool).expand(x.shape)
        row_max = x.masked_fill(mask, torch.iinfo(torch.int64).min).amax(dim=-1, keepdim=True)
        e = exp_int((x - row_max).clamp_max_(0), p.exp).masked_fill_(mask, 0)
    else:
        e = exp_int(x - x.amax(dim=-1, keepdim=True), p.exp)
    total = e.sum(dim=-1, keepdim=True)
    f = torch.div(torch.full_like(total, 1 << p.recip_bits), total, rounding_mode="floor")
    return e * f


def softmax_int(x: torch.Tensor, p: SoftmaxParams, mask: torch.Tensor | None = None) -> torch.Tensor:
    """nonlinear.softmax_int."""
    v = softmax_fixed(x, p, mask)
    if p.quant == "log2":
        return softmax_log2_codes(v, p)
    y = rounding_rshift(v, _scalar(p.recip_bits - p.out_bits, v))
    return y.clamp_(0, p.qmax)


def softmax_log2_codes(v: torch.Tensor, p: SoftmaxParams) -> torch.Tensor:
    """nonlinear.softmax_log2_codes: k = round(-log2(v / 2^P)) in the log domain, zero code 2^b - 1."""
    L = bit_length(v) - 1
    sh = L - NL.LOG2_MANTISSA_BITS
    top = torch.where(sh >= 0, torch.bitwise_right_shift(v, sh.clamp_min(0)),
                      torch.bitwise_left_shift(v, (-sh).clamp_min(0)))
    k = p.recip_bits - L - (top >= NL.LOG2_SQRT2_Q31).to(torch.int64)
    zero = (v <= 0) | (k > p.log2_max_exp)
    return torch.where(zero, torch.full_like(k, p.qmax), k)


def i_softmax(x: torch.Tensor, scale: float, out_bits: int = 8) -> tuple[torch.Tensor, float]:
    p = softmax_params(scale, out_bits)
    return softmax_int(x, p), p.out_scale


# --- GELU --------------------------------------------------------------------------------------------

def gelu_int(x: torch.Tensor, p: GeluParams) -> torch.Tensor:
    x = _i64(x)
    u = shift_pow2(x.abs().clamp_max(p.pre_clip), p.shift).clamp_max(p.clip)
    d = u - p.clip
    e = torch.sign(x) * (p.one - d * d)
    acc = x * (p.one + e)
    lo, hi = p.qrange
    y = multiply_rshift_round(acc, _scalar(p.multiplier, acc), _scalar(p.rshift, acc))
    return y.clamp_(lo, hi)


def i_gelu(x: torch.Tensor, scale: float, out_scale: float | None = None,
           out_bits: int = 8) -> tuple[torch.Tensor, float]:
    p = gelu_params(scale, out_scale, out_bits)
    return gelu_int(x, p), p.out_scale


# --- LayerNorm -------------------------------------------------------------------------------------

def layernorm_int(x: torch.Tensor, p: LayerNormParams) -> torch.Tensor:
    x = _i64(x)
    if x.shape[-1] != p.channels:
        raise ValueError(f"LayerNorm over {p.channels} channels got a last axis of {x.shape[-1]}")
    lim = 2 ** (p.in_bits - 1)
    if x.numel() and (int(x.min()) < -lim or int(x.max()) >= lim):
        raise ValueError(f"LayerNorm input leaves its declared {p.in_bits}-bit range")
    y = torch.bitwise_left_shift(x, p.mean_shift)
    if p.center:
        y = y - round_div(torch.bitwise_left_shift(x.sum(dim=-1, keepdim=True), p.mean_shift), p.channels)
    v = (y * y).sum(dim=-1, keepdim=True) + p.eps
    r = isqrt(torch.bitwise_left_shift(v, 2 * p.sqrt_shift)).clamp_min(1)
    inv = torch.div(torch.full_like(r, 1 << p.recip_bits), r, rounding_mode="floor")
    u = rounding_rshift(y * inv, _scalar(p.norm_shift, y))
    gamma = torch.as_tensor(p.gamma, dtype=torch.int64, device=x.device)
    beta = torch.as_tensor(p.beta, dtype=torch.int64, device=x.device)
    acc = u * gamma + beta
    lo, hi = p.qrange
    y = multiply_rshift_round(acc, _scalar(p.multiplier, acc), _scalar(p.rshift, acc))
    return y.clamp_(lo, hi)


def i_layernorm(x: torch.Tensor, scale: float, gamma, beta, eps: float, out_scale: float, out_bits: int = 8,
                in_bits: int = 16) -> tuple[torch.Tensor, float]:
    g = gamma.detach().cpu().double().numpy() if isinstance(gamma, torch.Tensor) else gamma
    b = beta.detach().cpu().double().numpy() if isinstance(beta, torch.Tensor) else beta
    p = layernorm_params(scale, g, b, eps, out_scale, out_bits, in_bits)
    return layernorm_int(x, p), p.out_scale


# --- float-nonlinearity mode (never bit-exact) ------------------------------------------------------

def _requant(y: torch.Tensor, out_scale: float, bits: int, signed: bool) -> torch.Tensor:
    lo, hi = arith.qrange(bits, signed)
    return torch.round(y.float() / torch.tensor(out_scale, dtype=torch.float32)).to(torch.int64).clamp_(lo, hi)


def _dequant(x: torch.Tensor, scale: float) -> torch.Tensor:
    return x.to(torch.float32) * torch.tensor(scale, dtype=torch.float32, device=x.device)


def float_softmax(x: torch.Tensor, scale: float, out_bits: int = 8) -> tuple[torch.Tensor, float]:
    out_scale = math.ldexp(1.0, -out_bits)
    return _requant(torch.softmax(_dequant(x, scale), dim=-1), out_scale, out_bits, False), out_scale


def float_gelu(x: torch.Tensor, scale: float, out_scale: float | None = None,
               out_bits: int = 8) -> tuple[torch.Tensor, float]:
    out_scale = float(scale) if out_scale is None else float(out_scale)
    return _requant(F.gelu(_dequant(x, scale)), out_scale, out_bits, True), out_scale


def float_layernorm(x: torch.Tensor, scale: float, gamma, beta, eps: float, out_scale: float,
                    out_bits: int = 8) -> tuple[torch.Tensor, float]:
    xf = _dequant(x, scale)
    g = torch.as_tensor(gamma, dtype=torch.float32, device=x.device)
    b = torch.as_tensor(beta, dtype=torch.float32, device=x.device)
    y = F.layer_norm(xf, (xf.shape[-1],), g, b, float(eps))
    return _requant(y, out_scale, out_bits, True), float(out_scale)


_REFERENCE = {
    "softmax": lambda xf, kw: torch.softmax(xf, dim=-1),
    "gelu": lambda xf, kw: F.gelu(xf),
    "layernorm": lambda xf, kw: F.layer_norm(xf, (xf.shape[-1],), torch.as_tensor(kw["gamma"], dtype=xf.dtype),
                                             torch.as_tensor(kw["beta"], dtype=xf.dtype), float(kw["eps"])),
}
_MODES = {
    "softmax": (i_softmax, float_softmax),
    "gelu": (i_gelu, float_gelu),
    "layernorm": (i_layernorm, float_layernorm),
}


def measure_deviation(op: str, x: torch.Tensor, scale: float, **kwargs) -> dict:
    """Integer mode vs float mode vs the float64 op on the same integer input.

    kwargs are the op's (out_bits, out_scale, gamma, beta, eps, in_bits). Returns the max and
    mean absolute error of each mode against float64 in real units and output LSBs, and how
    many outputs of the two modes differ. Report numbers only: neither mode is bit-exact
    against float, and the float mode is never bit-exact between executors.
    """
    if op not in _MODES:
        raise ValueError(f"unknown nonlinearity {op!r}; known: {', '.join(_MODES)}")
    int_fn, float_fn = _MODES[op]
    x = _i64(x)
    float_kwargs = {k: v for k, v in kwargs.items() if k != "in_bits"}
    yi, s_out = int_fn(x, scale, **kwargs)
    yf, _ = float_fn(x, scale, **float_kwargs)
    ref = _REFERENCE[op](x.double() * scale, kwargs)
    err_i = (yi.double() * s_out - ref).abs()
    err_f = (yf.double() * s_out - ref).abs()
    return {"op": op, "elements": int(x.numel()), "out_scale": s_out,
            "int_max_abs": float(err_i.max()), "int_mean_abs": float(err_i.mean()),
            "int_max_lsb": float(err_i.max()) / s_out,
            "float_max_abs": float(err_f.max()), "float_mean_abs": float(err_f.mean()),
            "float_max_lsb": float(err_f.max()) / s_out,
            "modes_differing": int((yi != yf).sum()), "modes_max_lsb": int((yi - yf).abs().max())}
