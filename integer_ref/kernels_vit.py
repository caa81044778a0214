"""Vision Transformer ops of the integer program: one plain NumPy function per op.

The op set (see integer_ref.ir for the node contents):

- matmul        two activation operands, batched over the leading axes (heads):
                acc = (a - za) @ (b - zb) [transposed on its last two axes: transpose_b],
                exact (float BLAS only where the bound K·max|a|·max|b| proves it), then one
                dyadic requantization for the whole tensor (multiplier, shift), or one per index of
                the output axis channel_axis (Swin v2: the per-head logit scale folded in). attrs
                a_log2: a holds a log2 softmax's codes; acc = Σ_j (b_j - zb) << (K - k_j), shifts
                and adds (log2_matmul_acc), K = attrs log2_max_exp, the zero code a's qmax.
- l2norm        integer_ref.nonlinear.layernorm_int with center 0: x / ‖x‖ over the last axis.
- softmax       integer_ref.nonlinear.softmax_int over the last axis; unsigned output at
                scale 2^-out_bits, or (attrs quant "log2") log2 codes. attrs: SoftmaxParams.to_attrs();
                optional params mask (a masked softmax: Swin's shifted windows).
- gelu          integer_ref.nonlinear.gelu_int, elementwise. attrs: GeluParams.to_attrs().
- layernorm     integer_ref.nonlinear.layernorm_int over the last axis. params gamma, beta
                (int64, from layernorm_params); attrs: LayerNormParams.to_attrs().
                The three nonlinear ops take attrs mode "integer" (default) or "float": the
                float-nonlinearity mode (dequantize, float32 op, quantize), which is NEVER
                bit-exact between the executors (see integer_ref.nonlinear).
- concat_token  prepend constant tokens (class token) along axis 1: params token (T, C),
                quantized with the input's own quantization, so values pass through unchanged.
- add_const     y = clamp(((x - zx)·Mx + c·Mc + 2^(n-1)) >> n + zy): the residual add with a
                constant second operand (position embedding), params const (broadcast over
                the batch), multiplier (2,), shift; kernels.add does the arithmetic.
- permute       attrs perm (axis order; the batch stays axis 0).
- take          attrs axis, index: one index along an axis, the axis dropped (x[:, 0], unbind).

quantsim.emulate.kernels_vit is the torch twin; both construct the nonlinear ops' integer constants
from the same node attrs, so the two executors compute the same numbers.
"""
from __future__ import annotations

from dataclasses import fields

import numpy as np

from . import arith
from . import kernels as K
from . import nonlinear as NL

OPS = {"matmul", "softmax", "gelu", "layernorm", "l2norm", "concat_token", "add_const", "permute", "take"}
NONLINEAR_MODES = ("integer", "float")


# --- attrs -> the nonlinear ops' parameter objects (shared with quantsim.emulate.kernels_vit) ---------

def softmax_params(attrs: dict) -> NL.SoftmaxParams:
    return NL.SoftmaxParams(NL.ExpParams(**attrs["exp"]), int(attrs["recip_bits"]), int(attrs["out_bits"]),
                            attrs["quant"], int(attrs["log2_max_exp"]))


def gelu_params(attrs: dict) -> NL.GeluParams:
    return NL.GeluParams(**{f.name: attrs[f.name] for f in fields(NL.GeluParams)})


def layernorm_params(attrs: dict, params: dict) -> NL.LayerNormParams:
    kw = {f.name: attrs[f.name] for f in fields(NL.LayerNormParams) if f.name not in ("gamma", "beta")}
    return NL.LayerNormParams(**kw, gamma=np.asarray(params["gamma"], np.int64),
                              beta=np.asarray(params["beta"], np.int64))


def nonlinear_mode(attrs: dict) -> str:
    mode = attrs["mode"]
    if mode not in NONLINEAR_MODES:
        raise ValueError(f"unknown nonlinearity mode {mode!r}; known: {', '.join(NONLINEAR_MODES)}")
    return mode


def matmul_bound(k: int, a_range, a_zero_point: int, b_range, b_zero_point: int) -> int:
    """Bound on every partial sum of (a - za) @ (b - zb) over k terms, from the declared ranges."""
    a_mag = max(a_range[1] - a_zero_point, a_zero_point - a_range[0])
    b_mag = max(b_range[1] - b_zero_point, b_zero_point - b_range[0])
    return int(k) * a_mag * b_mag


# --- ops -------------------------------------------------------------------------------------

def matmul_acc(a, b, *, a_zero_point=0, b_zero_point=0, transpose_b=False, bound: int) -> np.ndarray:
    """Exact int64 (a - za) @ (b - zb)[ᵀ] batched over the leading axes."""
    a = np.asarray(a, np.int64) - a_zero_point
    b = np.asarray(b, np.int64) - b_zero_point
    if transpose_b:
        b = np.swapaxes(b, -1, -2)
    dtype = arith.exact_float_dtype(bound) or np.int64
    return np.matmul(a.astype(dtype), b.astype(dtype)).astype(np.int64)


def log2_bound(b_range, b_zero_point: int, max_exp: int) -> int:
    """Bound on |Σ_j (b_j - zb) << (K - k_j)| over a row of log2 codes: the codes' values sum to at
    most √2 < 2 (integer_ref.nonlinear.softmax_log2_codes), so |acc| < 2 · max|b - zb| · 2^K."""
    b_mag = max(b_range[1] - b_zero_point, b_zero_point - b_range[0])
    return 2 * b_mag << int(max_exp)


def log2_matmul_acc(codes, b, *, max_exp: int, b_zero_point=0, transpose_b=False) -> np.ndarray:
    """Exact int64 Σ_j (b_j - zb) << (K - k_j) over the last axis of the codes (..., M, J) and the
    rows of b (..., J, N): attention·V with log2 attention, shifts and adds only. Per exponent e the
    rows of b whose code is e are summed (a 0/1 selection: adds), the sum shifted by K - e, and the
    shifted sums added; the zero code (2^b - 1 > K) selects nothing."""
    k = np.asarray(codes, np.int64)
    b = np.asarray(b, np.int64) - b_zero_point
    if transpose_b:
        b = np.swapaxes(b, -1, -2)
    b_mag = int(np.abs(b).max(initial=0))
    acc = np.zeros(k.shape[:-1] + b.shape[-1:], np.int64)
    for e in range(int(max_exp) + 1):
        pick = k == e
        if pick.any():
            sel = matmul_acc(pick.astype(np.int64), b, bound=k.shape[-1] * b_mag)  # sums of selected rows
            acc += np.left_shift(sel, int(max_exp) - e)
    return acc


def matmul(a, b, multiplier, shift, *, a_zero_point=0, b_zero_point=0, y_zero_point=0, lo, hi,
           transpose_b=False, a_range, b_range, acc_bits=32, acc_overflow="count", channel_axis=None,
           a_log2=False, log2_max_exp=0):
    """Integer matmul of two activations, one dyadic requantization (per index of channel_axis
    where given) -> (y, overflow count).
    a_log2: a holds log2 codes (zero code a_range[1] = 2^b - 1); the product is log2_matmul_acc."""
    k = np.shape(a)[-1]
    if a_log2:
        if a_range[1] <= log2_max_exp:
            raise ValueError(f"log2 codes: zero code {a_range[1]} must lie above the deepest exponent {log2_max_exp}")
        acc = log2_matmul_acc(a, b, max_exp=log2_max_exp, b_zero_point=b_zero_point, transpose_b=transpose_b)
    else:
        bound = matmul_bound(k, a_range, a_zero_point, b_range, b_zero_point)
        acc = matmul_acc(a, b, a_zero_point=a_zero_point, b_zero_point=b_zero_point,
                         transpose_b=transpose_b, bound=bound)
    axis = acc.ndim - 1 if channel_axis is None else int(channel_axis)
    return K.requantize(acc, None, multiplier, shift, y_zero_point, lo, hi, axis, acc_bits,
                        acc_overflow=acc_overflow)


def softmax(x, attrs: dict, mask=None):
    if nonlinear_mode(attrs) == "float":
        if mask is not None:
            raise NotImplementedError("a masked softmax has no float-nonlinearity mode")
        return NL.float_softmax(x, attrs["in_scale"], int(attrs["out_bits"]))[0]
    return NL.softmax_int(x, softmax_params(attrs), mask)


def gelu(x, attrs: dict):
    if nonlinear_mode(attrs) == "float":
        return NL.float_gelu(x, attrs["in_scale"], attrs["out_scale"], int(attrs["out_bits"]))[0]
    return NL.gelu_int(x, gelu_params(attrs))


def layernorm(x, attrs: dict, params: dict):
    """layernorm and l2norm (center 0) nodes."""
    if nonlinear_mode(attrs) == "float":
        return NL.float_layernorm(x, attrs["in_scale"], params["gamma_float"], params["beta_float"],
                                  attrs["eps_float"], attrs["out_scale"], int(attrs["out_bits"]))[0]
    return NL.layernorm_int(x, layernorm_params(attrs, params))


def concat_token(x, token, axis: int = 1):
    """Prepend the constant tokens (T, C) to every item of x (N, L, C) along `axis`."""
    x = np.asarray(x, np.int64)
    tok = np.broadcast_to(np.asarray(token, np.int64), (x.shape[0],) + np.shape(token))
    return np.concatenate([tok, x], axis=axis)


def add_const(x, const, multiplier, shift, *, x_zero_point=0, y_zero_point=0, lo, hi):
    """kernels.add with the constant (zero point 0) as the second operand, broadcast over the batch."""
    return K.add(x, np.asarray(const, np.int64)[None], multiplier, shift, a_zero_point=x_zero_point,
                 b_zero_point=0, y_zero_point=y_zero_point, lo=lo, hi=hi)


def permute(x, perm):
    return np.transpose(x, [int(p) for p in perm])


def take(x, axis: int, index: int):
    return np.take(x, int(index), axis=int(axis))


# --- dispatch (called from integer_ref.executor.run_node) -------------------------------------

def run_node(node, args: list, qp: dict, acc_bits: int, acc_overflow: str = "count"):
    """Evaluate one ViT node -> (output, accumulator overflow count)."""
    a, out, p = node.attrs, node.out, node.params
    lo, hi = node.clamp_range
    zin = [qp[i].zero_point if i in qp else 0 for i in node.inputs]
    if node.op == "matmul":
        qa, qb = qp[node.inputs[0]], qp[node.inputs[1]]
        return matmul(args[0], args[1], p["multiplier"], p["shift"], a_zero_point=zin[0],
                      b_zero_point=zin[1], y_zero_point=out.zero_point, lo=lo, hi=hi,
                      transpose_b=bool(a["transpose_b"]), a_range=(qa.qmin, qa.qmax),
                      b_range=(qb.qmin, qb.qmax), acc_bits=acc_bits, acc_overflow=acc_overflow,
                      channel_axis=a["channel_axis"], a_log2=bool(a["a_log2"]),
                      log2_max_exp=int(a["log2_max_exp"]))
    if node.op in ("softmax", "gelu", "layernorm", "l2norm") and any(zin):
        raise ValueError(f"node {node.name!r} ({node.op}) needs a zero-point-free input")
    if node.op == "softmax":
        return softmax(args[0], a, p.get("mask")), 0
    if node.op == "gelu":
        return gelu(args[0], a), 0
    if node.op in ("layernorm", "l2norm"):
        return layernorm(args[0], a, p), 0
    if node.op == "concat_token":
        return concat_token(args[0], p["token"], a["axis"]), 0
    if node.op == "add_const":
        return add_const(args[0], p["const"], p["multiplier"], p["shift"], x_zero_point=zin[0],
                         y_zero_point=out.zero_point, lo=lo, hi=hi), 0
    if node.op == "permute":
        return permute(args[0], a["perm"]), 0
    if node.op == "take":
        return take(args[0], a["axis"], a["index"]), 0
    raise NotImplementedError(f"integer_ref has no ViT kernel for op {node.op!r} (node {node.name!r})")
