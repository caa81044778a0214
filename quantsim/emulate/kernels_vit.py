"""The torch twin of integer_ref.kernels_vit: the Vision Transformer ops of the integer program.

Same op set and node attrs as integer_ref.kernels_vit; the nonlinear ops' integer constants
are rebuilt from the node attrs by kernels_vit's own helpers and evaluated by
quantsim.emulate.nonlinear (the twin of integer_ref.nonlinear), so both executors compute
the same integers. The attention matmuls run on float hardware only where the bound
K·max|a|·max|b| proves the product exact (float32 < 2^24, float64 < 2^53), else in int64.
"""
from __future__ import annotations

import torch

from integer_ref import arith
from integer_ref import kernels as K
from integer_ref import kernels_vit as KV

from quantsim.emulate import nonlinear as NT
from quantsim.emulate.arith import ieee_float32
from quantsim.emulate.kernels import add, requantize

__all__ = ["OPS", "log2_matmul_acc", "matmul_acc", "run_node"]

OPS = KV.OPS


def _tensor(node, key: str, device) -> torch.Tensor:
    """A node param as a torch tensor on `device`, converted once per node and device."""
    cache = node.__dict__.setdefault("_torch_params", {})
    k = (key, str(device))
    if k not in cache:
        cache[k] = torch.as_tensor(node.params[key]).to(device)
    return cache[k]


def matmul_acc(a: torch.Tensor, b: torch.Tensor, *, a_zero_point=0, b_zero_point=0, transpose_b=False,
               bound: int) -> torch.Tensor:
    """KV.matmul_acc: exact int64 (a - za) @ (b - zb)[ᵀ] batched over the leading axes."""
    a = a - a_zero_point if a_zero_point else a
    b = b - b_zero_point if b_zero_point else b
    if transpose_b:
        b = b.transpose(-1, -2)
    if bound < arith.FLOAT32_EXACT:
        dtype = torch.float32
    elif bound < arith.FLOAT64_EXACT:
        dtype = torch.float64
    else:
        if a.device.type != "cpu":
            raise NotImplementedError(f"matmul bound {bound} >= 2^53 has no exact GPU path")
        return torch.matmul(a.to(torch.int64), b.to(torch.int64))
    with ieee_float32():
        return torch.matmul(a.to(dtype), b.to(dtype)).to(torch.int64)


def log2_matmul_acc(codes: torch.Tensor, b: torch.Tensor, *, max_exp: int, b_zero_point=0,
                    transpose_b=False) -> torch.Tensor:
    """KV.log2_matmul_acc: exact int64 Σ_j (b_j - zb) << (K - k_j), per exponent a 0/1 selection
    matmul (sums of V's rows) shifted by K - e and added."""
    b = b - b_zero_point if b_zero_point else b
    if transpose_b:
        b = b.transpose(-1, -2)
    b_mag = int(b.abs().max()) if b.numel() else 0
    acc = torch.zeros(codes.shape[:-1] + b.shape[-1:], dtype=torch.int64, device=codes.device)
    for e in range(int(max_exp) + 1):
        pick = codes == e
        if bool(pick.any()):
            sel = matmul_acc(pick.to(torch.int64), b, bound=codes.shape[-1] * b_mag)
            acc += torch.bitwise_left_shift(sel, int(max_exp) - e)
    return acc


def _nonlinear_float(node) -> bool:
    return KV.nonlinear_mode(node.attrs) == "float"


def run_node(node, args: list, prep):
    """Evaluate one ViT node in torch -> (output, accumulator overflow count)."""
    a, out, qp = node.attrs, node.out, prep.qp
    lo, hi = node.clamp_range
    zin = [qp[i].zero_point if i in qp else 0 for i in node.inputs]
    x = args[0]
    if node.op == "matmul":
        qa, qb = qp[node.inputs[0]], qp[node.inputs[1]]
        if a["a_log2"]:
            if qa.qmax <= int(a["log2_max_exp"]):
                raise ValueError(f"log2 codes: zero code {qa.qmax} must lie above the deepest exponent "
                                 f"{a['log2_max_exp']}")
            bound = None  # log2_bound holds for a softmax's codes only: measure, as integer_ref does
            acc = log2_matmul_acc(x, args[1], max_exp=int(a["log2_max_exp"]), b_zero_point=zin[1],
                                  transpose_b=bool(a["transpose_b"]))
        else:
            bound = KV.matmul_bound(x.shape[-1], (qa.qmin, qa.qmax), zin[0], (qb.qmin, qb.qmax), zin[1])
            acc = matmul_acc(x, args[1], a_zero_point=zin[0], b_zero_point=zin[1],
                             transpose_b=bool(a["transpose_b"]), bound=bound)
        axis = acc.dim() - 1 if a["channel_axis"] is None else int(a["channel_axis"])
        return requantize(acc, None, node.params["multiplier"], node.params["shift"], out.zero_point, lo, hi,
                          axis, prep.acc_bits, acc_abs_bound=bound, acc_overflow=prep.acc_overflow)
    if node.op in ("softmax", "gelu", "layernorm", "l2norm") and any(zin):
        raise ValueError(f"node {node.name!r} ({node.op}) needs a zero-point-free input")
    if node.op == "softmax":
        mask = _tensor(node, "mask", x.device) if "mask" in node.params else None
        if _nonlinear_float(node):
            if mask is not None:
                raise NotImplementedError("a masked softmax has no float-nonlinearity mode")
            return NT.float_softmax(x, a["in_scale"], int(a["out_bits"]))[0], 0
        return NT.softmax_int(x, KV.softmax_params(a), mask), 0
    if node.op == "gelu":
        if _nonlinear_float(node):
            return NT.float_gelu(x, a["in_scale"], a["out_scale"], int(a["out_bits"]))[0], 0
        return NT.gelu_int(x, KV.gelu_params(a)), 0
    if node.op in ("layernorm", "l2norm"):
        if _nonlinear_float(node):
            return NT.float_layernorm(x, a["in_scale"], node.params["gamma_float"], node.params["beta_float"],
                                      a["eps_float"], a["out_scale"], int(a["out_bits"]))[0], 0
        return NT.layernorm_int(x, KV.layernorm_params(a, node.params)), 0
    if node.op == "concat_token":
        tok = _tensor(node, "token", x.device).to(torch.int64)
        return torch.cat([tok.expand((x.shape[0],) + tuple(tok.shape)), x], dim=int(a["axis"])), 0
    if node.op == "add_const":
        c = _tensor(node, "const", x.device).to(torch.int64)[None]
        return add(x, c, node.params["multiplier"], node.params["shift"], a_zero_point=zin[0], b_zero_point=0,
                   y_zero_point=out.zero_point, lo=lo, hi=hi), 0
    if node.op == "permute":
        return x.permute(*[int(p) for p in a["perm"]]), 0
    if node.op == "take":
        return x.select(int(a["axis"]), int(a["index"])), 0
    raise NotImplementedError(f"quantsim.emulate.kernels_vit has no ViT kernel for op {node.op!r} (node {node.name!r})")
