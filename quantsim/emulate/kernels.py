"""The torch twin of integer_ref.kernels: one function per IR op, on int64 tensors.

Every rounding goes through quantsim.emulate.arith (the twin of integer_ref.arith); the attribute
helpers (pair, resolve_padding, output_range, ...) are integer_ref.kernels' own. Convolutions and
matrix products run in floating point only where exactness is proven for the call: the bound
max_o sum|w_o| * max|x - zx| must stay below 2^24 (float32) or 2^53 (float64). When float32 is
not enough the activation is split into base-2^c digits, each digit product is exact in float32,
and the digits are recombined in int64.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from integer_ref import arith
from integer_ref import kernels as K
from quantsim.emulate.arith import (INT32_MAX, accumulator_value, divide_round_away, fma_float32, ieee_float32,
                                    multiply_by_quantized_multiplier, multiply_rshift_round, pow2,
                                    requantize_float32)

__all__ = ["MAX_FLOAT32_DIGITS", "requantize", "digit_plan", "exact_product", "conv2d_acc_bounded", "conv2d_acc",
           "linear_acc_bounded", "add", "add_gemmlowp", "add_float32", "avgpool_round_div", "maxpool",
           "avgpool_sum", "strided_slice", "pad_channels", "lut", "mul"]

MAX_FLOAT32_DIGITS = 3  # beyond this many float32 passes one float64 pass is cheaper


# --- requantization: the torch form of integer_ref.kernels.requantize ---------------------

def _requantize_engine(acc, bias, multiplier, shift, zy, lo, hi, channel_axis, acc_bits, mode, scale, divide,
                       acc_abs_bound=None, acc_overflow="count"):
    """kernels._requantize_engine; acc_abs_bound (proven |acc| bound) spares the range scans."""
    if mode not in K.REQUANT_MODES:
        raise ValueError(f"unknown requant mode {mode!r}; known: {', '.join(K.REQUANT_MODES)}")
    shape = [1] * acc.dim()
    if acc.dim():
        shape[channel_axis] = -1
    per = lambda v, dt: torch.as_tensor(v, dtype=dt, device=acc.device).reshape(shape)
    acc = acc.to(torch.int64)
    lim = 2 ** (acc_bits - 1)

    bias_max = 0 if bias is None else int(torch.as_tensor(bias).abs().max().ceil())
    total = None if acc_abs_bound is None else acc_abs_bound + bias_max
    in_int32 = total is not None and total <= INT32_MAX

    def count(v):
        if not v.numel() or (total is not None and total < lim):
            return 0
        lo_hi = torch.aminmax(v)
        if int(lo_hi[0]) >= -lim and int(lo_hi[1]) < lim:
            return 0
        return int(((v < -lim) | (v >= lim)).sum())
    if mode == "float32_bias":
        bf = None if bias is None else per(bias, torch.float32)
        overflows = count(acc)
        acc = accumulator_value(acc, acc_bits, acc_overflow) if overflows else acc
        return requantize_float32(acc, per(scale, torch.float32), zy, lo, hi, bf), overflows
    wide = acc if bias is None else acc + per(bias, torch.int64)
    overflows = count(wide)
    if overflows:  # values outside acc_bits exist: the accumulator's overflow rule decides
        wide = accumulator_value(wide, acc_bits, acc_overflow)
    if mode == "float32":
        return requantize_float32(wide, per(scale, torch.float32), zy, lo, hi), overflows
    v = multiply_by_quantized_multiplier(wide, per(multiplier, torch.int64), per(shift, torch.int64), in_int32)
    if divide is not None:
        v = divide_round_away(v, int(divide))
    return v.add_(zy).clamp_(lo, hi), overflows


def requantize(acc: torch.Tensor, bias, multiplier, shift, y_zero_point: int, lo: int, hi: int,
               channel_axis: int, acc_bits: int, acc_abs_bound: int | None = None,
               mode: str = "dyadic", scale=None, divide=None,
               acc_overflow: str = "count") -> tuple[torch.Tensor, int]:
    """kernels.requantize: acc + bias -> (clamped output, accumulator overflow count).

    acc_abs_bound (a proven bound on |acc|, e.g. from the GEMM) lets the common case skip
    the overflow count and the wide-product split: then ((acc + b)·M + 2^(n-1)) >> n is
    computed as (acc·M + (b·M + 2^(n-1))) >> n, in place, with the same value.
    """
    if mode != "dyadic":
        return _requantize_engine(acc, bias, multiplier, shift, y_zero_point, lo, hi, channel_axis,
                                  acc_bits, mode, scale, divide, acc_abs_bound, acc_overflow)
    shape = [1] * acc.dim()
    shape[channel_axis] = -1
    as_t = lambda v: torch.as_tensor(v, dtype=torch.int64, device=acc.device).reshape(shape)
    acc = acc.to(torch.int64)
    m, n = as_t(multiplier), as_t(shift)
    b = as_t(0 if bias is None else bias)
    if acc_abs_bound is None:
        lo_hi = torch.aminmax(acc) if acc.numel() else (torch.tensor(0), torch.tensor(0))
        acc_abs_bound = max(-int(lo_hi[0]), int(lo_hi[1]))
    total = acc_abs_bound + int(b.abs().max())
    lim = 2 ** (acc_bits - 1)
    overflows = 0
    if total >= lim - 1:
        wide = acc + b
        overflows = int(((wide < -lim) | (wide >= lim)).sum())
        if overflows and acc_overflow != "count":  # the accumulator's value, bias included
            acc, b = accumulator_value(wide, acc_bits, acc_overflow), torch.zeros_like(b)
    if total * max(int(m.max()), 1) < 2**62:
        half = torch.where(n > 0, pow2((n - 1).clamp_min(0)), torch.zeros_like(n))
        y = acc * m
        y.add_(b * m + half).bitwise_right_shift_(n)
    else:
        y = multiply_rshift_round(acc + b, m, n)
    if y_zero_point:
        y.add_(y_zero_point)
    return y.clamp_(lo, hi), overflows


# --- exact integer products on float hardware ---------------------------------------------

def digit_plan(w_l1_max: int, x_abs_max: int) -> tuple[torch.dtype, int, int]:
    """(float dtype, digit bits c, digit count k) that make each float product exact.

    One pass when the whole bound fits; otherwise x = sum_i d_i 2^(c i) with low digits in
    [0, 2^c) and a signed top digit in [-2^c, 2^c), where w_l1_max * 2^c < 2^24 (or 2^53).
    """
    for dtype, limit in ((torch.float32, arith.FLOAT32_EXACT), (torch.float64, arith.FLOAT64_EXACT)):
        if w_l1_max * x_abs_max < limit:
            return dtype, max(x_abs_max.bit_length(), 1), 1
        c = ((limit - 1) // max(w_l1_max, 1)).bit_length() - 1
        if c >= 1:
            k = -(-x_abs_max.bit_length() // c)
            if dtype == torch.float64 or k <= MAX_FLOAT32_DIGITS:
                return dtype, c, k
    raise ValueError(f"weights with sum|w| = {w_l1_max} cannot be multiplied exactly")


def exact_product(x: torch.Tensor, x_zero_point: int, w_l1_max: int, op,
                  x_range: tuple[int, int] | None = None) -> tuple[torch.Tensor, int]:
    """op(x - zx) exactly in int64 -> (result, bound on its magnitude).

    op(x_float, dtype) must return the float product of x_float with the integer weights
    (conv, matmul): it is linear in x, so it can be applied digit by digit. x_range, the
    input's quantized range, spares the pass over x when it already proves float32 exact.
    """
    x_abs_max = None
    if x_range is not None:
        x_abs_max = max(x_range[1] - x_zero_point, x_zero_point - x_range[0])
        if w_l1_max * x_abs_max >= arith.FLOAT32_EXACT:
            x_abs_max = None  # the real values may still fit: look at them
    if x_abs_max is None:
        lo_hi = torch.aminmax(x) if x.numel() else (torch.tensor(x_zero_point),) * 2
        x_abs_max = max(int(lo_hi[1]) - x_zero_point, x_zero_point - int(lo_hi[0]))
    dtype, c, k = digit_plan(w_l1_max, x_abs_max)
    with ieee_float32():
        limit = arith.FLOAT32_EXACT if dtype == torch.float32 else arith.FLOAT64_EXACT
        if k == 1 and x_abs_max + abs(x_zero_point) < limit:  # x and x - zx exact in dtype:
            xf = x.to(dtype)  # subtract there, one int64 pass less
            return op(xf.sub_(x_zero_point) if x_zero_point else xf, dtype).to(torch.int64), w_l1_max * x_abs_max
        xs = x - x_zero_point
        if k == 1:
            return op(xs.to(dtype), dtype).to(torch.int64), w_l1_max * x_abs_max
        acc = None
        for i in range(k):
            digit = torch.bitwise_right_shift(xs, c * i)
            if i < k - 1:
                digit = torch.bitwise_and(digit, 2**c - 1)
            part = op(digit.to(dtype), dtype).to(torch.int64)
            acc = part if acc is None else acc.add_(torch.bitwise_left_shift(part, c * i))
        return acc, w_l1_max * x_abs_max


def _conv_float(x: torch.Tensor, w: torch.Tensor, stride, dilation, groups, padding) -> torch.Tensor:
    """Float conv; on GPUs as unfold + GEMM so that no Winograd/FFT algorithm is picked."""
    if x.device.type == "cpu":
        return F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)
    if any(padding):
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    cols = F.unfold(x, (kh, kw), dilation=dilation, stride=stride)  # (N, C*kh*kw, L)
    ho = (h - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    cols = cols.reshape(n, groups, cg * kh * kw, ho * wo)
    out = torch.matmul(w.reshape(groups, o // groups, cg * kh * kw), cols)
    return out.reshape(n, o, ho, wo)


# --- ops: the torch form of integer_ref.kernels --------------------------------------------

def conv2d_acc_bounded(x, w_centered: torch.Tensor, w_l1_max: int, x_zero_point: int, stride,
                       dilation, groups: int, padding, x_range=None) -> tuple[torch.Tensor, int]:
    """kernels.conv2d_acc: exact sum (x - zx)(w - zw), zero-point padding contributes zero;
    returns (acc, bound on |acc|)."""
    stride, dilation = K.pair(stride), K.pair(dilation)
    kh, kw = w_centered.shape[2:]
    t, b, l, r = K.resolve_padding(padding, tuple(x.shape[2:]), (kh, kw), stride, dilation)
    weights = {}

    def op(xf, dtype):
        if dtype not in weights:
            weights[dtype] = w_centered.to(dtype)
        if t == b and l == r:  # symmetric: the conv pads with zeros itself, no copy
            return _conv_float(xf, weights[dtype], stride, dilation, groups, (t, l))
        return _conv_float(F.pad(xf, (l, r, t, b)), weights[dtype], stride, dilation, groups, (0, 0))
    return exact_product(x, x_zero_point, w_l1_max, op, x_range)


def conv2d_acc(x, w_centered, w_l1_max, x_zero_point, stride, dilation, groups, padding, x_range=None):
    return conv2d_acc_bounded(x, w_centered, w_l1_max, x_zero_point, stride, dilation, groups,
                              padding, x_range)[0]


def linear_acc_bounded(x, w_centered: torch.Tensor, w_l1_max: int, x_zero_point: int,
                       x_range=None) -> tuple[torch.Tensor, int]:
    weights = {}

    def op(xf, dtype):
        if dtype not in weights:
            weights[dtype] = w_centered.to(dtype)
        return torch.matmul(xf, weights[dtype].t())
    return exact_product(x, x_zero_point, w_l1_max, op, x_range)


def add(a, b, multiplier, shift, *, a_zero_point=0, b_zero_point=0, y_zero_point=0, lo, hi):
    """kernels.add, in place on one fresh int64 tensor; the shift is a scalar here."""
    ma, mb = (int(v) for v in torch.as_tensor(multiplier).reshape(-1).tolist())
    n = int(shift)
    acc = torch.mul(a, ma)
    acc.add_(b, alpha=mb)
    const = -(a_zero_point * ma + b_zero_point * mb) + ((1 << (n - 1)) if n > 0 else 0)
    if const:
        acc.add_(const)
    acc.bitwise_right_shift_(n)
    if y_zero_point:
        acc.add_(y_zero_point)
    return acc.clamp_(lo, hi)


def add_gemmlowp(a, b, multiplier, shift, *, left_shift=20, a_zero_point=0, b_zero_point=0,
                 y_zero_point=0, lo, hi):
    """kernels.add_gemmlowp: TFLite's quantized ADD."""
    m = [torch.tensor(int(v), dtype=torch.int64, device=a.device) for v in torch.as_tensor(multiplier).reshape(-1).tolist()]
    n = [torch.tensor(int(v), dtype=torch.int64, device=a.device) for v in torch.as_tensor(shift).reshape(-1).tolist()]
    sa = multiply_by_quantized_multiplier(torch.bitwise_left_shift(a - a_zero_point, left_shift), m[0], n[0])
    sb = multiply_by_quantized_multiplier(torch.bitwise_left_shift(b - b_zero_point, left_shift), m[1], n[1])
    return (multiply_by_quantized_multiplier(sa + sb, m[2], n[2]) + y_zero_point).clamp_(lo, hi)


def add_float32(a, b, scale, *, lo, hi):
    """kernels.add_float32: ONNX Runtime's QLinearAdd (x86-64 MLAS)."""
    ra, rb, f = (float(v) for v in np.ravel(np.asarray(scale, np.float32)))
    a, b = torch.broadcast_tensors(a, b)
    t = fma_float32(b, rb, torch.full(b.shape, f, dtype=torch.float32, device=b.device))
    t = fma_float32(a, ra, t)
    return torch.round(t).to(torch.int64).clamp_(lo, hi)


def avgpool_round_div(x, *, lo, hi, kernel, stride=None, padding=0):
    """kernels.avgpool_round_div: TFLite's AVERAGE_POOL_2D (raw sum / in-bounds count)."""
    kernel, stride = K.pair(kernel), K.pair(stride if stride is not None else kernel)
    t, b, l, r = K.resolve_padding(padding, tuple(x.shape[2:]), kernel, stride)
    sums = _windows(F.pad(x, (l, r, t, b)), kernel, stride).sum(dim=(4, 5))
    ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=torch.int64, device=x.device)
    counts = _windows(F.pad(ones, (l, r, t, b)), kernel, stride).sum(dim=(4, 5))
    return divide_round_away(sums, counts).clamp_(lo, hi)


def _windows(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    (kh, kw), (sh, sw) = kernel, stride
    return x.unfold(2, kh, sh).unfold(3, kw, sw)  # (N, C, Ho, Wo, kh, kw) view


def maxpool(x, kernel, stride, padding):
    kernel, stride = K.pair(kernel), K.pair(stride if stride is not None else kernel)
    t, b, l, r = K.resolve_padding(padding, tuple(x.shape[2:]), kernel, stride)
    xp = F.pad(x, (l, r, t, b), value=K.INT64_MIN)
    return _windows(xp, kernel, stride).amax(dim=(4, 5))


def avgpool_sum(x, x_zero_point, kernel, stride, padding):
    kernel, stride = K.pair(kernel), K.pair(stride if stride is not None else kernel)
    t, b, l, r = K.resolve_padding(padding, tuple(x.shape[2:]), kernel, stride)
    xp = F.pad(x - x_zero_point, (l, r, t, b))
    return _windows(xp, kernel, stride).sum(dim=(4, 5))


def strided_slice(x, step, begin=(0, 0)):
    (sh, sw), (bh, bw) = K.pair(step), K.pair(begin)
    return x[:, :, bh::sh, bw::sw]


def pad_channels(x, before, after, zero_point=0):
    return F.pad(x, (0, 0, 0, 0, int(before), int(after)), value=zero_point)


def pad(x, pads, zero_point: int = 0):
    """kernels.pad: constant padding with the zero point, pads [[before, after], ...] per axis."""
    flat = [int(v) for b, a in reversed(pads) for v in (b, a)]  # F.pad lists the last axis first
    return F.pad(x, flat, value=zero_point)


def roll(x, shifts, dims):
    """kernels.roll: torch.roll."""
    return torch.roll(x, [int(v) for v in shifts], [int(d) for d in dims])


def concat(xs, axis: int = 1):
    """kernels.concat: the inputs joined along `axis`."""
    return torch.cat(list(xs), dim=int(axis))


def slice_axis(x, axis: int, start: int, stop: int):
    """kernels.slice_axis: x[start:stop] along one axis."""
    return x.narrow(int(axis), int(start), int(stop) - int(start))


def lut(x, table: torch.Tensor, in_min: int):
    """kernels.lut: y = table[x - in_min], the index clamped to the table."""
    return table[(x - int(in_min)).clamp_(0, table.numel() - 1)]


def mul(a, b, multiplier, shift, *, a_zero_point=0, b_zero_point=0, y_zero_point=0, lo, hi):
    """kernels.mul: y = clamp(((a - za)(b - zb)·M + 2^(n-1)) >> n + zy), b broadcast over a."""
    acc = (a - a_zero_point) * (b - b_zero_point)
    m = torch.tensor(int(np.ravel(np.asarray(multiplier))[0]), dtype=torch.int64, device=acc.device)
    n = torch.tensor(int(np.ravel(np.asarray(shift))[0]), dtype=torch.int64, device=acc.device)
    return (multiply_rshift_round(acc, m, n) + y_zero_point).clamp_(lo, hi)
