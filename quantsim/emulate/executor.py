"""The torch twin of integer_ref: the same integer program, batched, on CPU or GPU.

    res = run(graph, x)                      # x: float NCHW torch tensor
    res.tensors[name]                        # torch int64, identical to integer_ref's output
    model = EmulatedModel(graph)             # nn.Module: images -> dequantized logits

Every op mirrors integer_ref.kernels; the rounding mirrors integer_ref.arith (the one
place the rules are written; tests compare the two element for element). Convolutions and
matrix products run in floating point only where exactness is proven for the call: the
bound max_o sum|w_o| * max|x - zx| must stay below 2^24 (float32) or 2^53 (float64). When
float32 is not enough the activation is split into base-2^c digits, each digit product is
exact in float32, and the digits are recombined in int64.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from integer_ref import arith
from integer_ref import kernels as K
from integer_ref.executor import ExecResult, check_value_ranges, interpret
from integer_ref.ir import Graph, Node

MAX_FLOAT32_DIGITS = 3  # beyond this many float32 passes one float64 pass is cheaper


# --- rounding: the torch form of integer_ref.arith ----------------------------------------

def _pow2(n: torch.Tensor) -> torch.Tensor:
    return torch.bitwise_left_shift(torch.ones_like(n), n)


def rounding_rshift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """arith.rounding_rshift: (x + 2^(n-1)) >> n, arithmetic (floor) shift on int64."""
    half = torch.where(shift > 0, _pow2((shift - 1).clamp_min(0)), torch.zeros_like(shift))
    return torch.bitwise_right_shift(x + half, shift)


def multiply_rshift_round(acc: torch.Tensor, multiplier: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """arith.multiply_rshift_round: exact floor((acc*M + 2^(n-1)) / 2^n) without int64 overflow."""
    # One product suffices when no |acc·M| + 2^(n-1) can reach 2^63: the bound from the two
    # maxima is cheaper than testing every element, and the result is the same exact floor.
    if acc.numel() == 0 or (int(acc.abs().max()) * int(multiplier.abs().max()) < 2**62 and int(shift.max()) <= 62):
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
    half = torch.where(shift > 0, _pow2((shift - 1).clamp_min(0)), torch.zeros_like(shift))
    lo = torch.bitwise_and(acc, _pow2(k) - 1)
    hi = torch.bitwise_right_shift(acc, k).clamp(-(2**32), 2**32 - 1)
    low_part = torch.bitwise_right_shift(lo * multiplier + half, k)
    return torch.where(fits, direct, torch.bitwise_right_shift(hi * multiplier + low_part, shift - k))


# --- the real engines' output stages: the torch form of arith's gemmlowp / float32 rules ----

INT32_MIN, INT32_MAX = arith.INT32_MIN, arith.INT32_MAX


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
    mask = _pow2(exponent) - 1
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
    half = torch.where(pos, _pow2((right - 1).clamp_min(0)), torch.zeros_like(right))
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


def _requantize_engine(acc, bias, multiplier, shift, zy, lo, hi, channel_axis, acc_bits, mode, scale, divide,
                       acc_abs_bound=None):
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
        return requantize_float32(acc, per(scale, torch.float32), zy, lo, hi, bf), count(acc)
    wide = acc if bias is None else acc + per(bias, torch.int64)
    if mode == "float32":
        return requantize_float32(wide, per(scale, torch.float32), zy, lo, hi), count(wide)
    overflows = count(wide)
    v = multiply_by_quantized_multiplier(wide, per(multiplier, torch.int64), per(shift, torch.int64), in_int32)
    if divide is not None:
        v = divide_round_away(v, int(divide))
    return v.add_(zy).clamp_(lo, hi), overflows


def requantize(acc: torch.Tensor, bias, multiplier, shift, y_zero_point: int, lo: int, hi: int,
               channel_axis: int, acc_bits: int, acc_abs_bound: int | None = None,
               mode: str = "dyadic", scale=None, divide=None) -> tuple[torch.Tensor, int]:
    """kernels.requantize: acc + bias -> (clamped output, accumulator overflow count).

    acc_abs_bound (a proven bound on |acc|, e.g. from the GEMM) lets the common case skip
    the overflow count and the wide-product split: then ((acc + b)·M + 2^(n-1)) >> n is
    computed as (acc·M + (b·M + 2^(n-1))) >> n, in place, with the same value.
    """
    if mode != "dyadic":
        return _requantize_engine(acc, bias, multiplier, shift, y_zero_point, lo, hi, channel_axis,
                                  acc_bits, mode, scale, divide, acc_abs_bound)
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
    if total * max(int(m.max()), 1) < 2**62:
        half = torch.where(n > 0, _pow2((n - 1).clamp_min(0)), torch.zeros_like(n))
        y = acc * m
        y.add_(b * m + half).bitwise_right_shift_(n)
    else:
        y = multiply_rshift_round(acc + b, m, n)
    if y_zero_point:
        y.add_(y_zero_point)
    return y.clamp_(lo, hi), overflows


# --- exact integer products on float hardware ---------------------------------------------

@contextlib.contextmanager
def _ieee_float32():
    """No TF32 (10-bit mantissa) on GPUs while exact products run."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


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
    with _ieee_float32():
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


def quantize(x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    """arith.quantize_float32: rint(x / s) + z in float32 (torch.round is half-to-even)."""
    s = torch.tensor(float(scale), dtype=torch.float32, device=x.device)
    q = torch.round(x.to(torch.float32) / s).to(torch.int64) + zero_point
    return q.clamp(qmin, qmax)


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


def fma_float32(x: torch.Tensor, r: float, c: torch.Tensor) -> torch.Tensor:
    """arith.fma_float32: one-rounding float32 x·r + c via a round-to-odd float64 sum."""
    p = x.to(torch.float64) * float(np.float32(r))
    c = c.to(torch.float64)
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)
    even = (s.view(torch.int64) & 1) == 0
    return torch.where((err != 0) & even, torch.nextafter(s, s + err), s).to(torch.float32)


def add_float32(a, b, scale, *, lo, hi):
    """kernels.add_float32: ONNX Runtime's QLinearAdd (x86-64 MLAS)."""
    ra, rb, f = (float(v) for v in np.ravel(np.asarray(scale, np.float32)))
    a, b = torch.broadcast_tensors(a, b)
    t = fma_float32(b, rb, torch.full(b.shape, f, dtype=torch.float32, device=b.device))
    t = fma_float32(a, ra, t)
    return torch.round(t).to(torch.int64).clamp_(lo, hi)


def dequant_quant_float32(x, x_zero_point, s_in, s_out, zero_point, lo, hi):
    """arith.dequant_quant_float32: DequantizeLinear then QuantizeLinear in float32."""
    f32 = lambda v: torch.tensor(float(np.float32(v)), dtype=torch.float32, device=x.device)
    v = (x - x_zero_point).to(torch.float32) * f32(s_in)
    q = torch.round(v / f32(s_out)).clamp_(-(2.0**62), 2.0**62)
    return (q.to(torch.int64) + zero_point).clamp_(lo, hi)


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


# --- the program --------------------------------------------------------------------------

class Prepared:
    """A graph's integer parameters as torch tensors on one device (made once per model)."""

    def __init__(self, graph: Graph, device):
        self.graph = graph
        self.device = torch.device(device)
        self.qp = {n.name: n.out for n in graph.nodes}
        self.acc_bits = int(graph.meta.get("acc_bits", 32))
        self.params = {n.name: self._node_params(n) for n in graph.nodes}

    def _node_params(self, node: Node) -> dict:
        p = node.params
        out = {k: v for k, v in p.items() if k in ("bias", "multiplier", "shift", "requant_scale")}
        if node.op in ("conv2d", "linear"):
            w = torch.as_tensor(p["weight"], dtype=torch.int64)
            zw = torch.as_tensor(p.get("weight_zero_point", 0), dtype=torch.int64)
            w = w - zw.reshape((-1,) + (1,) * (w.dim() - 1))
            out["w_centered"] = w.to(self.device)
            out["w_l1_max"] = K.weight_col_l1_max(w.numpy())
        return out


def run_node(node: Node, args: list, prep: Prepared):
    """Evaluate one node in torch -> (output, accumulator overflow count)."""
    a, out, p, qp = node.attrs, node.out, prep.params[node.name], prep.qp
    lo, hi = K.output_range(a, out.qmin, out.qmax)
    zin = [qp[i].zero_point if i in qp else 0 for i in node.inputs]
    x = args[0]
    x_range = (qp[node.inputs[0]].qmin, qp[node.inputs[0]].qmax) if node.inputs[0] in qp else None
    mode = a.get("requant", "dyadic")
    rq = lambda acc, axis, bound=None: requantize(acc, p.get("bias"), p.get("multiplier"), p.get("shift"),
                                                  out.zero_point, lo, hi, axis, prep.acc_bits, bound,
                                                  mode, p.get("requant_scale"), a.get("divide"))
    if node.op == "quantize":
        return quantize(x, float(a.get("scale", out.scale)), a.get("zero_point", out.zero_point),
                        out.qmin, out.qmax), 0
    if node.op == "conv2d":
        padding = "tf_same" if a.get("padding_mode") == "tf_same" else a.get("padding", 0)
        acc, bound = conv2d_acc_bounded(x, p["w_centered"], p["w_l1_max"], zin[0], a.get("stride", 1),
                                        a.get("dilation", 1), a.get("groups", 1), padding, x_range)
        return rq(acc, 1, bound)
    if node.op == "linear":
        acc, bound = linear_acc_bounded(x, p["w_centered"], p["w_l1_max"], zin[0], x_range)
        return rq(acc, x.dim() - 1, bound)
    if node.op == "add" and mode == "gemmlowp":
        return add_gemmlowp(x, args[1], p["multiplier"], p["shift"], left_shift=a.get("left_shift", 20),
                            a_zero_point=zin[0], b_zero_point=zin[1], y_zero_point=out.zero_point,
                            lo=lo, hi=hi), 0
    if node.op == "add" and mode == "float32":
        return add_float32(x, args[1], p["requant_scale"], lo=lo, hi=hi), 0
    if node.op == "add":
        if mode != "dyadic":
            raise NotImplementedError(f"op 'add' has no {mode!r} requantization (node {node.name!r})")
        return add(x, args[1], p["multiplier"], p["shift"], a_zero_point=zin[0],
                   b_zero_point=zin[1], y_zero_point=out.zero_point, lo=lo, hi=hi), 0
    if node.op == "clamp":
        return x.clamp(lo, hi), 0
    if node.op == "maxpool":
        return maxpool(x, a["kernel"], a.get("stride"), a.get("padding", 0)), 0
    if node.op == "avgpool" and mode == "round_div":
        return avgpool_round_div(x, lo=lo, hi=hi, kernel=a["kernel"], stride=a.get("stride"),
                                 padding=a.get("padding", 0)), 0
    if node.op == "requantize" and mode == "float32_dq":
        s_in, s_out = np.ravel(np.asarray(p["requant_scale"], np.float32))
        return dequant_quant_float32(x, zin[0], s_in, s_out, out.zero_point, lo, hi), 0
    if node.op == "requantize":
        return rq((x - zin[0]).reshape(1, -1), 0)[0].reshape(x.shape), 0
    if node.op == "avgpool":
        return rq(avgpool_sum(x, zin[0], a["kernel"], a.get("stride"), a.get("padding", 0)), 1)
    if node.op == "global_avgpool":
        return rq((x - zin[0]).sum(dim=(2, 3), keepdim=True), 1)
    if node.op == "reshape":
        return x.reshape(K.batch_shape(a["shape"], x.shape[0])), 0
    if node.op == "strided_slice":
        return strided_slice(x, a["step"], a.get("begin", (0, 0))), 0
    if node.op == "pad_channels":
        return pad_channels(x, a["before"], a["after"], zin[0]), 0
    from quantsim.emulate import kernels_vit as emulate_vit  # ViT ops: the twin of integer_ref.kernels_vit
    if node.op in emulate_vit.OPS:
        return emulate_vit.run_node(node, args, prep)
    raise NotImplementedError(f"quantsim.emulate.executor has no kernel for op {node.op!r} (node {node.name!r})")


@torch.no_grad()
def run(graph: Graph, x: torch.Tensor, keep: str = "outputs", prepared: Prepared | None = None) -> ExecResult:
    """Run the program on float NCHW images; int64 torch tensors, same names as integer_ref."""
    if keep not in ("all", "outputs"):
        raise ValueError(f"keep must be 'all' or 'outputs', got {keep!r}")
    check_value_ranges(graph)
    x = torch.as_tensor(x)
    prep = prepared if prepared is not None and prepared.device == x.device else Prepared(graph, x.device)
    return interpret(graph, x, keep, lambda node, args: run_node(node, args, prep))


class EmulatedModel(torch.nn.Module):
    """The integer program as a module: float images -> dequantized graph.outputs[0]."""

    def __init__(self, graph: Graph, out_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.graph = graph
        self.out_dtype = out_dtype
        self._prepared: dict[str, Prepared] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = str(x.device)
        if key not in self._prepared:
            self._prepared[key] = Prepared(self.graph, x.device)
        name = self.graph.outputs[0]
        q = run(self.graph, x, keep="outputs", prepared=self._prepared[key]).tensors[name]
        qp = self.graph[name].out
        scale = torch.as_tensor(qp.scale, dtype=torch.float64, device=q.device)
        if scale.dim() > 0 and scale.numel() > 1:
            shape = [1] * q.dim()
            shape[qp.axis if qp.axis is not None else 1] = -1
            scale = scale.reshape(shape)
        return ((q - qp.zero_point).to(torch.float64) * scale).to(self.out_dtype)
