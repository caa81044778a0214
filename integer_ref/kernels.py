"""One plain function per IR op: the integer semantics, written once.

Tensors are NumPy int64 (NCHW for images); every rounding, shift and clamp goes through
integer_ref.arith. quantsim.emulate.kernels mirrors each function in torch and must agree with it
element for element. The helpers at the top turn node attributes into plain numbers so
that both executors read the attributes the same way.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import arith

INT64_MIN = np.iinfo(np.int64).min
CONV_THREADS = 2  # blocks of images in flight at once
CONV_BLOCK_BYTES = 64 << 20  # im2col buffer per block of images; 4 MiB blocks measured 2x slower


# --- attribute helpers (shared with quantsim.emulate.kernels and executor) -----------------------

def pair(v) -> tuple[int, int]:
    """An int or a 2-list as (h, w)."""
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    h, w = v
    return int(h), int(w)


def resolve_padding(padding, size_hw, kernel_hw, stride_hw, dilation_hw=(1, 1)) -> tuple[int, int, int, int]:
    """[top, bottom, left, right]; 'tf_same' is computed from the input size like TensorFlow."""
    if isinstance(padding, str):
        if padding != "tf_same":
            raise ValueError(f"unknown padding mode {padding!r}")
        t, b = arith.tf_same_padding(size_hw[0], kernel_hw[0], stride_hw[0], dilation_hw[0])
        l, r = arith.tf_same_padding(size_hw[1], kernel_hw[1], stride_hw[1], dilation_hw[1])
        return t, b, l, r
    if padding is None:
        return 0, 0, 0, 0
    if isinstance(padding, (int, np.integer)):
        return (int(padding),) * 4
    if len(padding) == 2:  # symmetric [ph, pw]
        return int(padding[0]), int(padding[0]), int(padding[1]), int(padding[1])
    t, b, l, r = padding
    return int(t), int(b), int(l), int(r)


def batch_shape(shape, n: int) -> tuple[int, ...]:
    """A reshape target with its leading -1 meaning 'the batch axis as is'."""
    shape = [int(s) for s in shape]
    if shape and shape[0] == -1:
        shape[0] = n
    return tuple(shape)


def weight_col_l1_max(w: np.ndarray) -> int:
    """max over output channels of sum |w|: with max|x| it bounds every partial sum."""
    w = np.asarray(w, dtype=np.int64)
    return int(np.abs(w.reshape(w.shape[0], -1)).sum(axis=1).max(initial=0))


# --- ops ----------------------------------------------------------------------------------

def quantize(x: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    return arith.quantize_float32(x, float(scale), zero_point, qmin, qmax)


def _windows(x: np.ndarray, kernel_hw, stride_hw, dilation_hw) -> np.ndarray:
    """View (N, C, Ho, Wo, kh, kw) of the (already padded) input; no copy."""
    (kh, kw), (sh, sw), (dh, dw) = kernel_hw, stride_hw, dilation_hw
    win = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    return win[:, :, ::sh, ::sw, ::dh, ::dw]


def _pad_hw(x: np.ndarray, pad, value) -> np.ndarray:
    t, b, l, r = pad
    if not any(pad):
        return x
    return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=value)


def conv2d_acc(x: np.ndarray, weight: np.ndarray, x_zero_point: int, w_zero_point,
               stride, dilation, groups: int, padding, x_range: tuple[int, int] | None = None) -> np.ndarray:
    """Exact accumulator sum (x - zx)(w - zw) over each window: (N, O, Ho, Wo), int64 or an
    exactly-integer float array (possibly a transposed view).

    Padding holds the input zero point, i.e. contributes zero. Depthwise convs (one input
    channel per group) run as a sum of shifted products in int64; the rest as one GEMM per
    group over the whole batch, on float BLAS where the partial-sum bound proves that exact.
    x_range, the input's quantized range, lets the bound skip a pass over x when it suffices.
    """
    stride, dilation = pair(stride), pair(dilation)
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    pad = resolve_padding(padding, (h, w), (kh, kw), stride, dilation)
    ho = arith.conv_output_size(h, kh, stride[0], pad[0], pad[1], dilation[0])
    wo = arith.conv_output_size(w, kw, stride[1], pad[2], pad[3], dilation[1])
    x = np.ascontiguousarray(x, dtype=np.int64)
    ws = np.asarray(weight, np.int64) - np.reshape(np.asarray(w_zero_point, np.int64), (-1, 1, 1, 1))
    if cg == 1 and groups > 1:
        xs = _pad_hw(x - x_zero_point, pad, 0)
        return _depthwise_acc(_windows(xs, (kh, kw), stride, dilation), ws, groups)
    og, kg = o // groups, cg * kh * kw
    dtype = _exact_dtype(x, x_zero_point, weight_col_l1_max(ws), x_range)
    cols = _im2col(x, x_zero_point, (kh, kw), stride, dilation, pad, (ho, wo), dtype)
    acc = np.empty((o, n * ho * wo), dtype=dtype)
    w2 = ws.reshape(groups, og, kg).astype(dtype)
    for g in range(groups):  # one GEMM per group; groups == 1 is the common case
        np.matmul(w2[g], cols[g * kg:(g + 1) * kg], out=acc[g * og:(g + 1) * og])
    return acc.reshape(o, n, ho, wo).transpose(1, 0, 2, 3)


def _exact_dtype(x, x_zero_point: int, w_l1_max: int, x_range):
    """The cheapest GEMM type exact for this call: try the range bound, then the real max|x - zx|."""
    if x_range is not None:
        dtype = arith.exact_float_dtype(arith.gemm_bound(
            w_l1_max, max(x_range[1] - x_zero_point, x_zero_point - x_range[0])))
        if dtype is np.float32:
            return dtype
    x_abs_max = max(int(x.max(initial=x_zero_point)) - x_zero_point,
                    x_zero_point - int(x.min(initial=x_zero_point)))
    return arith.exact_float_dtype(arith.gemm_bound(w_l1_max, x_abs_max)) or np.int64


def _im2col(x, zx, kernel, stride, dilation, pad, out_hw, dtype) -> np.ndarray:
    """cols[(c*kh + i)*kw + j, (b*ho + oh)*wo + ow] = x[b, c, ih, iw] - zx (0 in the padding).

    Rows ordered like weight.reshape(O, -1), so the accumulator is one GEMM W @ cols whose
    columns run over the batch. Built from a zero-padded channel-major copy by kh*kw strided
    block copies (measured 3x faster than an element loop in Numba).
    """
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw), (t, b, l, r), (ho, wo) = kernel, stride, dilation, pad, out_hw
    xp = np.zeros((c, n, h + t + b, w + l + r), dtype=dtype)
    xp[:, :, t:t + h, l:l + w] = (x - zx if zx else x).transpose(1, 0, 2, 3)
    cols = np.empty((c, kh, kw, n, ho, wo), dtype=dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = xp[:, :, i * dh:i * dh + (ho - 1) * sh + 1:sh, j * dw:j * dw + (wo - 1) * sw + 1:sw]
    return cols.reshape(c * kh * kw, n * ho * wo)


def _depthwise_acc(win: np.ndarray, ws: np.ndarray, groups: int) -> np.ndarray:
    """Each output channel reads one input channel (channel multiplier o // groups)."""
    o, _, kh, kw = ws.shape
    mult = o // groups
    src = win[:, np.arange(o) // mult] if mult > 1 else win  # (N, O, Ho, Wo, kh, kw)
    acc = np.zeros(src.shape[:4], dtype=np.int64)
    for i in range(kh):  # kh*kw vectorised multiply-adds, exact in int64
        for j in range(kw):
            acc += src[..., i, j] * ws[:, 0, i, j][None, :, None, None]
    return acc


REQUANT_MODES = ("dyadic", "gemmlowp", "float32", "float32_bias")


class AccStats(int):
    """What requantize saw of an accumulator: the count of values outside acc_bits (the int
    itself, as requantize always returned) and the range [low, high] of the exact acc + bias
    (arith.value_range: widened to include 0), hence `peak` and `bits_needed`.

    An int subclass rather than a third return value: every caller of requantize, of the MAC
    kernels and of executor.run_node reads (output, overflows) and keeps working unchanged;
    the executor picks the range up where it records the count. Parts (image blocks, batch
    chunks) combine with `merge`, never with sum() (which would drop the range)."""

    def __new__(cls, overflows: int, low: int = 0, high: int = 0):
        stats = super().__new__(cls, int(overflows))
        stats.low, stats.high = int(low), int(high)
        return stats

    @property
    def peak(self) -> int:
        """max |acc + bias|."""
        return max(self.high, -self.low)

    @property
    def bits_needed(self) -> int:
        return arith.signed_bits_needed(self.low, self.high)

    @staticmethod
    def merge(parts) -> "AccStats":
        parts = list(parts)
        return AccStats(sum(int(p) for p in parts), min((p.low for p in parts), default=0),
                        max((p.high for p in parts), default=0))


def requantize(acc: np.ndarray, bias, multiplier, shift, y_zero_point: int, lo: int, hi: int,
               channel_axis: int, acc_bits: int, mode: str = "dyadic", scale=None,
               divide=None, acc_overflow: str = "count") -> tuple[np.ndarray, AccStats]:
    """acc + bias -> (clamped output, AccStats: count of accumulator values outside acc_bits,
    and the range of the exact acc + bias, measured here where the accumulator is formed).

    acc may be int64 or a float array holding exact integers (from an exact GEMM).
    mode picks the output stage (arith): dyadic (M, n), gemmlowp (Q31 M, n; then an
    optional rounded division by `divide`, TFLite's integer mean), float32 (float32
    `scale`), float32_bias (float32 `scale`, float32 `bias` added before it).
    acc_overflow: what the accumulator holds of acc + bias (arith.accumulator_value).
    """
    if mode != "dyadic":
        return _requantize_engine(acc, bias, multiplier, shift, y_zero_point, lo, hi, channel_axis,
                                  acc_bits, mode, scale, divide, acc_overflow)
    shape = acc.shape
    ch = shape[channel_axis]
    acc3 = acc.reshape(int(np.prod(shape[:channel_axis])), ch, int(np.prod(shape[channel_axis + 1:])))
    per_channel = [np.ascontiguousarray(np.broadcast_to(np.asarray(v, np.int64), (ch,)))
                   for v in (0 if bias is None else bias, multiplier, shift)]
    y = np.empty(acc3.shape, dtype=np.int64)
    overflows, low, high = _requantize_3d(acc3, *per_channel, np.int64(y_zero_point), np.int64(lo),
                                          np.int64(hi), np.int64(2 ** (acc_bits - 1)),
                                          np.int64(arith.ACC_OVERFLOW_MODES.index(acc_overflow)), y)
    return y.reshape(shape), AccStats(overflows, low, high)


def _requantize_engine(acc, bias, multiplier, shift, zy, lo, hi, channel_axis, acc_bits, mode, scale, divide,
                       acc_overflow="count"):
    """The real engines' output stages, vectorised over per-channel parameters."""
    if mode not in REQUANT_MODES:
        raise ValueError(f"unknown requant mode {mode!r}; known: {', '.join(REQUANT_MODES)}")
    acc = np.asarray(acc)
    ch = acc.shape[channel_axis] if acc.ndim else 1
    bshape = [1] * acc.ndim
    if acc.ndim:
        bshape[channel_axis] = -1

    def per(v, dtype):
        return np.broadcast_to(np.asarray(v, dtype), (ch,)).reshape(bshape) if acc.ndim else np.asarray(v, dtype)
    acc = acc.astype(np.int64)
    if mode == "float32_bias":  # the bias is added in float32: the integer accumulator holds acc alone
        overflows = AccStats(arith.count_outside(acc, acc_bits), *arith.value_range(acc))
        acc = arith.accumulator_value(acc, acc_bits, acc_overflow)
        bf = None if bias is None else per(bias, np.float32)
        return arith.requantize_float32(acc, per(scale, np.float32), zy, lo, hi, bias_f32=bf), overflows
    wide = acc if bias is None else acc + per(bias, np.int64)
    overflows = AccStats(arith.count_outside(wide, acc_bits), *arith.value_range(wide))
    wide = arith.accumulator_value(wide, acc_bits, acc_overflow)
    if mode == "float32":
        return arith.requantize_float32(wide, per(scale, np.float32), zy, lo, hi), overflows
    v = arith.multiply_by_quantized_multiplier(wide, per(multiplier, np.int64), per(shift, np.int64))
    if divide is not None:
        v = arith.divide_round_away(v, int(divide))
    return arith.clamp(v + zy, lo, hi), overflows


@numba.njit(cache=True, nogil=True)
def _requantize_3d(acc, bias, multiplier, shift, zy, lo, hi, acc_lim, overflow_code, out):
    """Fused bias + overflow count + range of acc + bias (from 0: arith.value_range) + accumulator
    + arith.requantize_scalar over (outer, channel, inner), in one pass -> (overflows, low, high)."""
    overflows = 0
    low = np.int64(0)
    high = np.int64(0)
    for a in range(acc.shape[0]):
        for ch in range(acc.shape[1]):
            m, s, bi = multiplier[ch], shift[ch], bias[ch]
            for i in range(acc.shape[2]):
                v = np.int64(acc[a, ch, i]) + bi
                overflows += v < -acc_lim or v >= acc_lim
                low = min(low, v)
                high = max(high, v)
                v = arith.accumulator_scalar(v, acc_lim, overflow_code)
                out[a, ch, i] = arith.requantize_scalar(v, m, s, zy, lo, hi)
    return overflows, low, high


def conv2d(x, weight, bias, multiplier, shift, *, x_zero_point=0, w_zero_point=0, y_zero_point=0,
           lo, hi, stride=1, dilation=1, groups=1, padding=0, acc_bits=32, x_range=None,
           requant="dyadic", scale=None, acc_overflow="count"):
    """Integer conv2d: exact accumulation, bias, requantization per output channel
    (dyadic by default; `requant` names another output stage, see requantize)."""
    # Images go through in blocks so that the kh*kw-times expanded im2col buffer stays bounded,
    # and blocks run on CONV_THREADS threads (im2col copies, BLAS and Numba release the GIL).
    col_bytes = 4 * weight[0].size * max(1, x.shape[2] * x.shape[3] // (pair(stride)[0] * pair(stride)[1]))
    n = x.shape[0]
    block = max(1, min(CONV_BLOCK_BYTES // col_bytes, -(-n // CONV_THREADS)))

    def one_block(b0):
        acc = conv2d_acc(x[b0:b0 + block], weight, x_zero_point, w_zero_point, stride, dilation,
                         groups, padding, x_range)
        return requantize(acc, bias, multiplier, shift, y_zero_point, lo, hi, 1, acc_bits, requant, scale,
                          acc_overflow=acc_overflow)
    starts = range(0, n, block)
    if len(starts) > 1 and CONV_THREADS > 1:
        parts = list(_pool().map(one_block, starts))
    else:
        parts = [one_block(b0) for b0 in starts]
    y = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
    return y, AccStats.merge(p[1] for p in parts)


_POOL = None


def _pool():
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(CONV_THREADS, thread_name_prefix="integer_ref")
    return _POOL


def linear(x, weight, bias, multiplier, shift, *, x_zero_point=0, w_zero_point=0, y_zero_point=0,
           lo, hi, acc_bits=32, requant="dyadic", scale=None, acc_overflow="count"):
    """Integer linear over the last axis: y = requant(sum_k (x - zx)(w - zw) + bias)."""
    xs = np.asarray(x, np.int64) - x_zero_point
    ws = np.asarray(weight, np.int64) - np.reshape(np.asarray(w_zero_point, np.int64), (-1, 1))
    acc = arith.exact_matmul(xs.reshape(-1, xs.shape[-1]), ws.T, weight_col_l1_max(ws))
    acc = acc.reshape(xs.shape[:-1] + (ws.shape[0],))
    return requantize(acc, bias, multiplier, shift, y_zero_point, lo, hi, acc.ndim - 1, acc_bits,
                      requant, scale, acc_overflow=acc_overflow)


def add(a, b, multiplier, shift, *, a_zero_point=0, b_zero_point=0, y_zero_point=0, lo, hi):
    """Residual add: y = clamp(((a - za)·Ma + (b - zb)·Mb + 2^(n-1)) >> n + zy)."""
    ma, mb = (int(v) for v in np.ravel(multiplier))
    a, b = np.broadcast_arrays(np.asarray(a, np.int64), np.asarray(b, np.int64))
    out = np.empty(a.shape, dtype=np.int64)
    _add_requant(np.ascontiguousarray(a).ravel(), np.ascontiguousarray(b).ravel(), a_zero_point,
                 b_zero_point, ma, mb, int(np.asarray(shift)), y_zero_point, lo, hi, out.ravel())
    return out


@numba.njit(cache=True, nogil=True)
def _add_requant(a, b, za, zb, ma, mb, shift, zy, lo, hi, out):
    for i in range(a.size):
        v = arith.rounding_rshift_scalar((a[i] - za) * ma + (b[i] - zb) * mb, shift)
        out[i] = arith.clamp_scalar(v + zy, lo, hi)


def add_gemmlowp(a, b, multiplier, shift, *, left_shift=20, a_zero_point=0, b_zero_point=0,
                 y_zero_point=0, lo, hi):
    """TFLite's quantized ADD (reference add.h): each input (x - z) * 2^left_shift is rescaled
    by its own Q31 multiplier (M_a, n_a), (M_b, n_b), the sum by (M_y, n_y); shifts are right
    shifts. multiplier and shift hold [a, b, output]."""
    (ma, mb, my), (na, nb, ny) = (np.ravel(multiplier).tolist(), np.ravel(shift).tolist())
    a, b = np.broadcast_arrays(np.asarray(a, np.int64), np.asarray(b, np.int64))
    sa = arith.multiply_by_quantized_multiplier((a - a_zero_point) << left_shift, ma, na)
    sb = arith.multiply_by_quantized_multiplier((b - b_zero_point) << left_shift, mb, nb)
    y = arith.multiply_by_quantized_multiplier(sa + sb, my, ny)
    return arith.clamp(y + y_zero_point, lo, hi)


def add_float32(a, b, scale, *, lo, hi):
    """ONNX Runtime's QLinearAdd (x86-64 MLAS): arith.add_float32 with scale = float32
    [s_a/s_y, s_b/s_y, z_y - (r_a·z_a + r_b·z_b)] (the zero points live in the third entry)."""
    a, b = np.broadcast_arrays(np.asarray(a, np.int64), np.asarray(b, np.int64))
    return arith.add_float32(a, b, scale, lo, hi)


def clamp(x, *, lo, hi):
    return arith.clamp(np.asarray(x, np.int64), lo, hi)


def maxpool(x, kernel, stride, padding):
    """Max over each window; padded positions hold int64 min so they are never selected."""
    kernel, stride = pair(kernel), pair(stride if stride is not None else kernel)
    pad = resolve_padding(padding, x.shape[2:], kernel, stride)
    win = _windows(_pad_hw(np.asarray(x, np.int64), pad, INT64_MIN), kernel, stride, (1, 1))
    return win.max(axis=(4, 5))


def avgpool_sum(x, x_zero_point, kernel, stride, padding):
    """Sum of (x - zx) over each window; padding contributes zero."""
    kernel, stride = pair(kernel), pair(stride if stride is not None else kernel)
    pad = resolve_padding(padding, x.shape[2:], kernel, stride)
    win = _windows(_pad_hw(np.asarray(x, np.int64) - x_zero_point, pad, 0), kernel, stride, (1, 1))
    return win.sum(axis=(4, 5))


def avgpool(x, multiplier, shift, *, x_zero_point=0, y_zero_point=0, lo, hi, kernel, stride=None,
            padding=0, acc_bits=32, requant="dyadic", scale=None, acc_overflow="count"):
    """Window sum then requantization with m = s_in / (count * s_out) (count folded into M)."""
    acc = avgpool_sum(x, x_zero_point, kernel, stride, padding)
    return requantize(acc, None, multiplier, shift, y_zero_point, lo, hi, 1, acc_bits, requant, scale,
                      acc_overflow=acc_overflow)


def global_avgpool(x, multiplier, shift, *, x_zero_point=0, y_zero_point=0, lo, hi, acc_bits=32,
                   requant="dyadic", scale=None, divide=None, acc_overflow="count"):
    """Sum over H, W (keepdims, (N, C, 1, 1)) then requantization. gemmlowp with `divide` is
    the older TFLite integer_ops Mean: multiply by s_in/s_out, then divide by H·W rounding
    away from zero (current TFLite folds 1/(H·W) into the multiplier: no divide)."""
    acc = (np.asarray(x, np.int64) - x_zero_point).sum(axis=(2, 3), keepdims=True)
    return requantize(acc, None, multiplier, shift, y_zero_point, lo, hi, 1, acc_bits, requant, scale, divide,
                      acc_overflow)


def avgpool_round_div(x, *, lo, hi, kernel, stride=None, padding=0):
    """TFLite's quantized AVERAGE_POOL_2D (input and output share scale and zero point):
    the raw values of each window's in-bounds positions, summed, divided by their count
    rounding half away from zero, clamped. Padding is left out of sum and count."""
    kernel, stride = pair(kernel), pair(stride if stride is not None else kernel)
    x = np.asarray(x, np.int64)
    pad = resolve_padding(padding, x.shape[2:], kernel, stride)
    sums = _windows(_pad_hw(x, pad, 0), kernel, stride, (1, 1)).sum(axis=(4, 5))
    ones = np.ones((1, 1) + x.shape[2:], dtype=np.int64)
    counts = _windows(_pad_hw(ones, pad, 0), kernel, stride, (1, 1)).sum(axis=(4, 5))
    return arith.clamp(arith.divide_round_away(sums, counts), lo, hi)


def requantize_tensor(x, multiplier, shift, *, x_zero_point=0, y_zero_point=0, lo, hi,
                      requant="gemmlowp", scale=None):
    """A tensor from one quantization to another (TFLite QUANTIZE between integer types):
    y = clamp(requant(x - zx) + zy), one multiplier for the whole tensor."""
    if requant == "float32_dq":  # ONNX Runtime DequantizeLinear -> QuantizeLinear; scale [s_in, s_out]
        s_in, s_out = np.ravel(np.asarray(scale, np.float32))
        return arith.dequant_quant_float32(x, x_zero_point, s_in, s_out, y_zero_point, lo, hi)
    acc = np.asarray(x, np.int64) - x_zero_point
    return requantize(acc, None, multiplier, shift, y_zero_point, lo, hi, 0, 64, requant, scale)[0]


def reshape(x, shape):
    return np.reshape(x, batch_shape(shape, x.shape[0]))


def strided_slice(x, step, begin=(0, 0)):
    (sh, sw), (bh, bw) = pair(step), pair(begin)
    return x[:, :, bh::sh, bw::sw]


def pad_channels(x, before: int, after: int, zero_point: int = 0):
    return np.pad(x, ((0, 0), (int(before), int(after)), (0, 0), (0, 0)), constant_values=zero_point)


def pad(x, pads, zero_point: int = 0):
    """Constant padding with the zero point (the real value 0): pads = [[before, after], ...] per axis."""
    return np.pad(np.asarray(x, np.int64), [(int(b), int(a)) for b, a in pads], constant_values=zero_point)


def roll(x, shifts, dims):
    """Cyclic shift (torch.roll): element i of axis d moves to (i + shift) mod size."""
    return np.roll(np.asarray(x, np.int64), [int(v) for v in shifts], axis=[int(d) for d in dims])


def concat(xs, axis: int = 1):
    """The inputs joined along `axis` (all at the output's quantization: no arithmetic)."""
    return np.concatenate([np.asarray(x, np.int64) for x in xs], axis=int(axis))


def slice_axis(x, axis: int, start: int, stop: int):
    """x[start:stop] along one axis."""
    index = [slice(None)] * np.ndim(x)
    index[int(axis)] = slice(int(start), int(stop))
    return np.asarray(x)[tuple(index)]


def lut(x, table, in_min: int):
    """Table lookup (integer_ref.lut): y = table[x - in_min], the index clamped to the table."""
    table = np.asarray(table, np.int64)
    idx = np.clip(np.asarray(x, np.int64) - int(in_min), 0, table.size - 1)
    return table[idx]


def mul(a, b, multiplier, shift, *, a_zero_point=0, b_zero_point=0, y_zero_point=0, lo, hi):
    """Elementwise product of two activations (b broadcast over a), one dyadic requantization:
    y = clamp(((a - za)(b - zb)·M + 2^(n-1)) >> n + zy)."""
    acc = (np.asarray(a, np.int64) - a_zero_point) * (np.asarray(b, np.int64) - b_zero_point)
    m, n = np.int64(np.ravel(multiplier)[0]), np.int64(np.ravel(shift)[0])
    return arith.clamp(arith.multiply_rshift_round(acc, m, n) + y_zero_point, lo, hi)
