"""FloatGraph + calibration statistics + QuantConfig -> integer_ref's integer program.

Every tensor gets one quantization, chosen here:
- bits: the widest input width any consumer asks for (a MAC layer's a_bits; for an add
  or pool, the width of its own output); the network output gets config.out_bits;
- signed or unsigned: unsigned where the tensor is provably non-negative;
- scale: from the calibration statistics (activations) or the weights themselves.
Ops that keep their input's scale (max pool, flatten, option-A shortcut, standalone ReLU)
share the quantization of their input tensor.

Vision Transformers (config fields resid_bits, nonlinear_in_bits, nonlinear):
- the residual stream is held at ``resid_bits`` (default 16): LayerNorm asks for it, so the
  patch embedding, the position-embedding add and every residual add (and the attention
  projection / fc2 outputs feeding them) are requantized to it;
- softmax and GELU ask for ``nonlinear_in_bits`` (default 16): the q·kᵀ scores and the fc1
  outputs; the matmuls, like linear layers, ask for a_bits on both operands;
- softmax output: unsigned, bits = what its consumer (attn·v) asks for, scale 2^-bits
  (not calibrated); with ``softmax_quant='log2'`` log2 codes instead (code k: 2^-k for
  k <= K = log2_depth, zero code 2^bits - 1; scale 2^-K, the unit of attention·V's shift-and-add
  sum, which the matmul requantizes like any product); GELU and LayerNorm outputs: signed,
  scale from calibration;
- the class token is quantized with the patch tokens' own quantization (concat_token is a
  pass-through op), whose scale is calibrated on the concatenated tensor so the token fits;
- the position embedding is a constant operand quantized per tensor to CONST_BITS (16) bits
  and added with the residual-add arithmetic (add_const);
- q·kᵀ·scale: the scalar is folded into the matmul's requantization multiplier;
- ``nonlinear='float'`` evaluates softmax, GELU and LayerNorm in float32 between integer
  tensors (Liu et al. 2021): such a program is NEVER bit-exact between the executors
  (graph.meta['bit_exact_contract'] is False; see float_nodes).

Elementwise activations (hardswish, hardsigmoid, sigmoid, silu) become ``lut`` nodes: a table
over every input code (integer_ref.lut; hardswish / hardsigmoid entries are the exactly
computed, correctly rounded values), input at the width its producer was requantized to, output
calibrated (unsigned for hardsigmoid / sigmoid). ``mul`` of two activations (squeeze-and-
excitation) is y = requant((a - za)(b - zb)) with m = s_a·s_b/s_y; the broadcast operand second.

Concatenation (``concat``) copies integers: its inputs' requantizing producers form one group
(concat_groups: a union over every concat, concats of concats included, as in DenseNet) that
shares one QParams: the union of the members' calibrated ranges, the widest width any member's
consumers ask for, signed unless every member is non-negative. ``slice`` shares its input's.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from integer_ref.arith import add_float32_constant, qrange, quantize_multiplier, quantize_multipliers
from integer_ref.ir import Graph, Node, QParams

from integer_ref import kernels_vit as KV
from integer_ref import lut as LUT
from integer_ref import nonlinear as NL

from quantsim.quant.calibrate import TensorStats, clip_value, weight_clip, weight_method
from quantsim.graph.capture import LUT_OPS, PASSTHROUGH_OPS, FloatGraph, FNode, run_float
from quantsim.quant.config import QuantConfig
from quantsim.quant.quantizer import act_scale, fake_quant_act, scale_from_clip, weight_codes
from quantsim.errors import QuantsimError

INPUT_NAME = "image"
CONST_BITS = 16  # constant operands of add_const (position embedding), signed, per tensor
NONLINEAR_OPS = ("softmax", "gelu", "layernorm", "l2norm")
FLOAT32_UNSUPPORTED = NONLINEAR_OPS + ("matmul", "add_const", "concat_token", "mul") + LUT_OPS


def _root(g: FloatGraph, name: str) -> str:
    """The requantizing producer whose quantization this tensor shares."""
    n = g[name]
    while n.op in PASSTHROUGH_OPS:
        n = g[n.inputs[0]]
    return n.name


def concat_groups(g: FloatGraph) -> dict[str, str]:
    """Requantizing producer -> the representative of its concat group (only members listed):
    the producers of every concat's inputs, joined across concats that share one."""
    parent: dict[str, str] = {}

    def find(r: str) -> str:
        while parent.setdefault(r, r) != r:
            parent[r] = parent[parent[r]]
            r = parent[r]
        return r

    for n in g.nodes:
        if n.op == "concat":
            roots = [find(_root(g, i)) for i in n.inputs]
            for r in roots[1:]:
                parent[find(r)] = roots[0]
    groups = {r: find(r) for r in parent}
    for r in groups:
        if g[r].op in ("softmax", "input"):
            raise QuantsimError(f"cannot lower {g[r].source}: its {g[r].op} output is concatenated (a concat's "
                                f"inputs share one requantized scale)")
    return groups


def tensor_bits(g: FloatGraph, cfg: QuantConfig) -> dict[str, int]:
    """Bits of each requantizing producer's output, from what its consumers ask for (a concat
    group's members all at the widest their group asks for)."""
    demand = _tensor_demand(g, cfg)
    groups = concat_groups(g)
    widest: dict[str, int] = {}
    for r, rep in groups.items():
        widest[rep] = max(widest.get(rep, 0), demand.get(r, cfg.a_bits))
    for r, rep in groups.items():
        demand[r] = widest[rep]
    return demand


def _tensor_demand(g: FloatGraph, cfg: QuantConfig) -> dict[str, int]:
    demand: dict[str, int] = {}
    demand[_root(g, g.output)] = cfg.out_bits
    for n in reversed(g.nodes):
        if n.op in PASSTHROUGH_OPS or n.op == "input":
            continue
        if n.is_mac or n.op == "matmul":
            want = cfg.bits_for(n.name)[1]
        elif n.op == "layernorm":
            want = cfg.resid_bits
        elif n.op in ("softmax", "gelu"):
            want = cfg.nonlinear_in_bits
        else:
            want = demand.get(n.name, cfg.a_bits)
        for i in n.inputs:
            r = _root(g, i)
            demand[r] = max(demand.get(r, 0), want)
    return demand


def shapes_of(g: FloatGraph) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    run_float(g, torch.zeros(1, *g.input_shape), observe=lambda n, y: shapes.__setitem__(n.name, tuple(y.shape)))
    return shapes


def _act_qparams(g: FloatGraph, name: str, bits: int, stats: TensorStats, cfg: QuantConfig,
                 signed: bool | None = None) -> QParams:
    signed = (not g.non_negative(name)) if signed is None else signed
    qmin, qmax = qrange(bits, signed)
    clip = clip_value(stats, cfg.calib_method, qmin, qmax, cfg.percentile)
    if not math.isfinite(clip):
        raise QuantsimError(f"{g[name].source}: calibration saw NaN or Inf activations")
    scale = act_scale(clip, qmax)  # an all-zero tensor still needs a valid scale: clip floored
    if cfg.requant != "float32":
        return QParams(bits, signed, np.float64(scale))
    # unsigned storage throughout (see the module doc); a signed tensor's grid -2^(b-1)..2^(b-1)-1
    # is held as 0..2^b-1 with zero point 2^(b-1): the same real values, ORT's saturation points
    scale = np.float64(f32(scale))
    return QParams(bits, False, scale, 2 ** (bits - 1) if signed else 0)


def f32(v) -> np.float32:
    return np.float32(v)


def f32_mac_scale(s_x, s_w, s_y) -> np.ndarray:
    """ONNX Runtime's QLinearConv / QGemm (alpha 1) multiplier: float32(float32(s_x·s_w[c]) / s_y)."""
    s_w = np.atleast_1d(np.asarray(s_w, np.float64)).astype(np.float32)
    return ((f32(s_x) * s_w).astype(np.float32) / f32(s_y)).astype(np.float32)


def f32_gap_scale(s_x, s_y, count: int) -> np.float32:
    """ONNX Runtime's QLinearGlobalAveragePool multiplier: float32(s_x / float32(s_y·float32(H·W)))."""
    return f32(f32(s_x) / f32(f32(s_y) * f32(count)))


def f32_add_scale(qa: QParams, qb: QParams, qy: QParams) -> np.ndarray:
    """MLAS QLinearAdd's [r_a, r_b, constant] with the zero points folded into the constant."""
    ra, rb = f32(f32(qa.scale) / f32(qy.scale)), f32(f32(qb.scale) / f32(qy.scale))
    return np.array([ra, rb, add_float32_constant(ra, rb, qa.zero_point, qb.zero_point, qy.zero_point)], np.float32)


def _clamp(q: QParams, act: str | None) -> list[int]:
    lo, hi = q.qmin, q.qmax
    if act in ("relu", "relu6"):
        lo = max(lo, q.zero_point)
    if act == "relu6":
        hi = min(hi, q.zero_point + int(np.rint(6.0 / float(q.scale))))
    return [lo, hi]


def _mult_bits_for(acc_bound: float, cfg: QuantConfig) -> int:
    """Shrink M so that |acc| * M stays below 2^62 (int64 products never wrap)."""
    return max(8, min(cfg.mult_bits, 62 - int(math.ceil(math.log2(acc_bound + 2)))))


def bias_limit(acc_bits: int) -> int:
    """The largest |bias| at the accumulator scale s_x·s_w: half the signed accumulator, leaving
    the other half to the sum of products."""
    return 2 ** (acc_bits - 2)


def with_weight_scale_floors(g: FloatGraph, q: dict[str, QParams], acc_bits: int) -> FloatGraph:
    """A copy of g whose MAC nodes with a bias carry attrs['weight_scale_min'] = |b| / (s_x · limit),
    per output channel: the least weight scale at which the integer bias fits the accumulator.
    It binds only on near-dead channels (weights ~0 after BN folding, output ~ bias), whose
    per-channel scale would otherwise put a bias of 2^40 and more into a 32-bit accumulator;
    ORT's and TFLite's quantizers widen such scales the same way. Lowering and every rounding
    method (GPTQ) read the floor through _quantize_weight, so they agree on the scale."""
    nodes = []
    for n in g.nodes:
        attrs = n.attrs
        if n.is_mac and n.bias is not None:
            attrs = dict(n.attrs)
            attrs["weight_scale_min"] = n.bias.detach().double().abs() / (float(q[n.inputs[0]].scale) * bias_limit(acc_bits))
        nodes.append(replace(n, inputs=list(n.inputs), attrs=attrs))
    return FloatGraph(nodes, g.output, g.input_shape)


def _quantize_weight(n: FNode, w_bits: int, cfg: QuantConfig) -> tuple[np.ndarray, QParams, int]:
    """(integer weights, their QParams, how many output channels the accumulator floor widened)."""
    _, qmax = qrange(w_bits, True)
    per_channel = cfg.granularity == "per-channel"
    clip = weight_clip(n.weight, per_channel, weight_method(cfg.calib_method), qmax)
    clip = clip * n.attrs.get("weight_clip_alpha", 1.0)  # searched factor (quantsim.quant.scale_search)
    scale = scale_from_clip(clip, qmax)  # float64: the IR's scales
    min_scale = n.attrs.get("weight_scale_min")  # the accumulator's floor (with_weight_scale_floors)
    floored = 0
    if min_scale is not None:
        floor = min_scale if per_channel else min_scale.max()
        floored = int((floor > scale).sum()) if per_channel else (len(min_scale) if bool(floor > scale) else 0)
        scale = torch.maximum(scale, floor)
    if cfg.requant == "float32":  # ONNX holds float32 scales: quantize with the value written
        scale = scale.float().double()
    qp = QParams(w_bits, True, scale.numpy(), axis=0 if per_channel else None)
    return weight_codes(n.weight, scale, qmax).numpy(), qp, floored


def _precomputed_codes(n: FNode, wq: np.ndarray, w_qp: QParams) -> np.ndarray:
    """Integer weights another method rounded (attrs['weight_codes']: codes, scale, bits), used in
    place of round-to-nearest only at exactly the width and scale lowering gives this layer."""
    pre = n.attrs["weight_codes"]
    codes, scale = np.asarray(pre["codes"]), np.asarray(pre["scale"], np.float64)
    if pre["bits"] != w_qp.bits or codes.shape != wq.shape or not np.array_equal(scale, np.asarray(w_qp.scale)):
        raise QuantsimError(f"{n.source or n.name}: its precomputed weight codes were rounded at another width or "
                            f"scale than lowering gives it (W{pre['bits']} vs W{w_qp.bits}): recompute them")
    _, qmax = qrange(w_qp.bits, True)
    if codes.dtype.kind not in "iu" or np.abs(codes).max(initial=0) > qmax:
        raise QuantsimError(f"{n.source or n.name}: precomputed weight codes outside ±{qmax}")
    return codes.astype(np.int64)


def _mac_node(n: FNode, in_q: QParams, out_q: QParams, cfg: QuantConfig) -> Node:
    w_bits, _ = cfg.bits_for(n.name)
    wq, w_qp, floored = _quantize_weight(n, w_bits, cfg)
    if "weight_codes" in n.attrs:  # precomputed integer weights (quantsim.quant.gptq)
        wq = _precomputed_codes(n, wq, w_qp)
    out_ch = wq.shape[0]
    acc_scale = float(in_q.scale) * np.broadcast_to(w_qp.scale, (out_ch,))
    params: dict[str, np.ndarray] = {"weight": wq}
    bias_q = np.zeros(out_ch, dtype=np.int64)
    if n.bias is not None:
        bias_q = np.rint(n.bias.double().numpy() / acc_scale).astype(np.int64)
        params["bias"] = bias_q
    x_mag = max(abs(in_q.qmin - in_q.zero_point), abs(in_q.qmax - in_q.zero_point))
    acc_bound = float((np.abs(wq).reshape(out_ch, -1).sum(1) * x_mag + np.abs(bias_q)).max())
    mult, shift = quantize_multipliers(acc_scale / float(out_q.scale), _mult_bits_for(acc_bound, cfg))
    params["multiplier"], params["shift"] = mult, shift
    # scale_floored: channels whose weight scale was widened so their bias fits the accumulator
    attrs: dict = {"clamp": _clamp(out_q, n.act), "scale_floored": floored}
    if cfg.requant == "float32":
        attrs["requant"] = "float32"
        params["requant_scale"] = np.broadcast_to(f32_mac_scale(in_q.scale, w_qp.scale, out_q.scale), (out_ch,)).copy()
    op = "linear"
    if n.op == "conv":
        op = "conv2d"
        attrs.update({k: n.attrs[k] for k in ("stride", "dilation", "groups", "kernel")})
        if "padding_mode" in n.attrs:
            attrs["padding_mode"] = n.attrs["padding_mode"]
        else:
            attrs["padding"] = n.attrs["padding"]
    return Node(n.name, op, list(n.inputs), out_q, attrs, params, n.source, weight_q=w_qp, in_q=in_q)


def _add_node(n: FNode, qa: QParams, qb: QParams, out_q: QParams, cfg: QuantConfig) -> Node:
    ma, mb = float(qa.scale) / float(out_q.scale), float(qb.scale) / float(out_q.scale)
    mag = max(abs(qa.qmin), qa.qmax) + max(abs(qb.qmin), qb.qmax)
    big, shift = quantize_multiplier(max(ma, mb), _mult_bits_for(mag, cfg))
    small = int(np.rint(min(ma, mb) * 2.0**shift))
    mult = np.array([big, small] if ma >= mb else [small, big], dtype=np.int64)
    attrs: dict = {"clamp": _clamp(out_q, n.act)}
    params = {"multiplier": mult, "shift": np.int64(shift)}
    if cfg.requant == "float32":
        attrs["requant"] = "float32"
        params["requant_scale"] = f32_add_scale(qa, qb, out_q)
    return Node(n.name, "add", list(n.inputs), out_q, attrs, params, n.source, in_q=qa)


def _pool_node(n: FNode, in_q: QParams, out_q: QParams, count: int, op: str, attrs: dict, cfg: QuantConfig) -> Node:
    mag = max(abs(in_q.qmin), in_q.qmax) * count
    m, s = quantize_multiplier(float(in_q.scale) / (count * float(out_q.scale)), _mult_bits_for(mag, cfg))
    attrs = dict(attrs, count=count, clamp=_clamp(out_q, n.act))
    params = {"multiplier": np.int64(m), "shift": np.int64(s)}
    if cfg.requant == "float32":  # QLinearGlobalAveragePool's rule (avgpool: ours, not exportable)
        attrs["requant"] = "float32"
        params["requant_scale"] = np.array([f32_gap_scale(in_q.scale, out_q.scale, count)], np.float32)
    return Node(n.name, op, list(n.inputs), out_q, attrs, params, n.source, in_q=in_q)


def _merged(a: TensorStats, b: TensorStats) -> TensorStats:
    return TensorStats(min(a.min, b.min), max(a.max, b.max), a.samples + b.samples, a.n_sampled + b.n_sampled)


def _mag(q: QParams) -> int:
    return max(abs(q.qmin - q.zero_point), abs(q.qmax - q.zero_point))


def log2_depth(g: FloatGraph, softmax: str, q: dict[str, QParams], cfg: QuantConfig) -> int:
    """K, the deepest exponent of a log2 softmax's codes (code k: 2^-k for k <= K; zero code
    2^b - 1): at most 2^b - 2, and small enough that attention·V, Σ_j v_j << (K - k_j) with
    Σ 2^-k_j < 2, stays inside the accumulator for every reader's V (|acc| < 2^(acc_bits-1))."""
    readers = g.consumers(softmax)
    if not readers or any(r.op != "matmul" or r.inputs[0] != softmax or softmax in r.inputs[1:] for r in readers):
        raise QuantsimError(f"cannot lower {g[softmax].source}: a log2 softmax must be read only as the first "
                            "operand of attention·V matmuls")
    bits = q[softmax].bits
    k = min(min(2**bits - 2, cfg.acc_bits - 2 - _mag(q[r.inputs[1]]).bit_length()) for r in readers)
    if k < 1:
        raise QuantsimError(f"cannot lower {g[softmax].source} with a log2 softmax: a {cfg.acc_bits}-bit accumulator "
                            "leaves no room for the shifted attention·V terms (widen --acc-bits or narrow V)")
    return k


def _is_log2_softmax(g: FloatGraph, name: str, cfg: QuantConfig) -> bool:
    return cfg.softmax_quant == "log2" and g[name].op == "softmax"


def _matmul_node(n: FNode, qa: QParams, qb: QParams, out_q: QParams, k: int, cfg: QuantConfig,
                 log2_exp: int | None = None) -> Node:
    """alpha a scalar (q·kᵀ·D^-0.5), or one per index of attrs alpha_axis (Swin v2's per-head logit
    scale): then one multiplier per index, the node's channel_axis. log2_exp: the first operand is a
    log2 softmax's codes of that depth K (qa.scale = 2^-K, the unit of the shift-and-add accumulator)."""
    alpha = n.attrs["alpha"]
    m = np.asarray(alpha, np.float64) * float(qa.scale) * float(qb.scale) / float(out_q.scale)
    bound = (KV.log2_bound((qb.qmin, qb.qmax), qb.zero_point, log2_exp) if log2_exp is not None
             else k * _mag(qa) * _mag(qb))
    mult_bits = _mult_bits_for(float(bound), cfg)
    attrs = {"transpose_b": bool(n.attrs["transpose_b"]), "clamp": _clamp(out_q, None)}
    if isinstance(alpha, list):
        mult, shift = quantize_multipliers(m, mult_bits)
        attrs["channel_axis"] = int(n.attrs["alpha_axis"])
    else:
        mult, shift = (np.int64(v) for v in quantize_multiplier(float(m), mult_bits))
    if log2_exp is not None:
        attrs.update(a_log2=True, log2_max_exp=int(log2_exp))
    return Node(n.name, "matmul", list(n.inputs), out_q, attrs, {"multiplier": mult, "shift": shift},
                n.source, in_q=qa)


def nonlinear_node(n: FNode, in_q: QParams, out_q: QParams, cfg: QuantConfig, channels: int,
                    log2_exp: int | None = None) -> Node:
    s_in, s_out = float(in_q.scale), float(out_q.scale)
    if in_q.zero_point or in_q.per_channel:
        raise QuantsimError(f"cannot lower {n.source}: {n.op} of a tensor with a zero point or per-channel scale")
    params: dict[str, np.ndarray] = {}
    mode = cfg.nonlinear
    if n.op == "softmax":
        log2 = log2_exp is not None
        attrs = NL.softmax_params(s_in, out_q.bits, "log2" if log2 else "uniform", log2_exp or 0).to_attrs()
        if n.weight is not None:  # a masked softmax (quantsim.graph.swin): 1 = left out
            if mode == "float":
                raise QuantsimError(f"cannot lower {n.source}: a masked softmax with nonlinear='float' (integer only)")
            mask = n.weight.bool()
            if mask.all(dim=-1).any():
                raise QuantsimError(f"cannot lower {n.source}: a softmax mask that leaves a row empty")
            params["mask"] = mask.numpy().astype(np.int8)
    elif n.op == "gelu":
        attrs = NL.gelu_params(s_in, s_out, out_q.bits).to_attrs()
    elif n.op == "l2norm":  # LayerNorm's integer kernel without the mean; integer only (no float mode)
        mode = "integer"
        p = NL.layernorm_params(s_in, np.ones(channels), np.zeros(channels), n.attrs["eps"], s_out, out_q.bits,
                                in_bits=in_q.bits + (0 if in_q.signed else 1), center=False)
        attrs = p.to_attrs()
        params = {"gamma": p.gamma, "beta": p.beta}
    else:
        gamma, beta = n.weight.double().numpy(), n.bias.double().numpy()
        p = NL.layernorm_params(s_in, gamma, beta, n.attrs["eps"], s_out, out_q.bits,
                                in_bits=in_q.bits + (0 if in_q.signed else 1))
        attrs = dict(p.to_attrs(), eps_float=float(n.attrs["eps"]))
        params = {"gamma": p.gamma, "beta": p.beta}
        if cfg.nonlinear == "float":
            params.update(gamma_float=gamma.astype(np.float32), beta_float=beta.astype(np.float32))
    attrs.update(mode=mode, in_scale=s_in)
    return Node(n.name, n.op, list(n.inputs), out_q, attrs, params, n.source, in_q=in_q)


def _add_const_node(n: FNode, in_q: QParams, out_q: QParams, cfg: QuantConfig) -> Node:
    c = n.weight.double().numpy()
    c_max = float(np.abs(c).max())
    cq_max = qrange(CONST_BITS, True)[1]
    # an all-zero constant (LeViT's attention biases at timm's init) adds nothing at any scale; the input's
    # scale keeps the pair of multipliers in range (1.0 could overflow the shift)
    s_c = c_max / cq_max if c_max > 0 else float(in_q.scale)
    const = weight_codes(n.weight, torch.tensor(s_c, dtype=torch.float64), cq_max).numpy()  # per tensor, float64
    ma, mc = float(in_q.scale) / float(out_q.scale), s_c / float(out_q.scale)
    big, shift = quantize_multiplier(max(ma, mc), _mult_bits_for(_mag(in_q) + cq_max, cfg))
    small = int(np.rint(min(ma, mc) * 2.0**shift))
    mult = np.array([big, small] if ma >= mc else [small, big], dtype=np.int64)
    return Node(n.name, "add_const", list(n.inputs), out_q, {"clamp": _clamp(out_q, n.act), "const_scale": s_c},
                {"const": const, "multiplier": mult, "shift": np.int64(shift)}, n.source, in_q=in_q)


def _concat_token_node(n: FNode, q: QParams) -> Node:
    tok = np.rint(n.weight.double().numpy() / float(q.scale)) + q.zero_point
    clamped = int(((tok < q.qmin) | (tok > q.qmax)).sum())
    tok = np.clip(tok, q.qmin, q.qmax).astype(np.int64)
    return Node(n.name, "concat_token", list(n.inputs), q, {"axis": n.attrs["axis"], "clamped": clamped},
                {"token": tok}, n.source, in_q=q)


def _lut_node(n: FNode, in_q: QParams, out_q: QParams) -> Node:
    if in_q.per_channel:
        raise QuantsimError(f"cannot lower {n.source}: {n.op} of a tensor with a per-channel scale")
    if in_q.bits > LUT.LUT_MAX_BITS:
        raise QuantsimError(f"cannot lower {n.source}: {n.op} as a lookup table over {in_q.bits}-bit inputs "
                            f"(at most {LUT.LUT_MAX_BITS} bits)")
    lo, hi = _clamp(out_q, None)
    table = LUT.build_table(n.op, in_q.qmin, in_q.qmax, float(in_q.scale), in_q.zero_point,
                            float(out_q.scale), out_q.zero_point, lo, hi)
    return Node(n.name, "lut", list(n.inputs), out_q, {"function": n.op, "in_min": int(in_q.qmin)},
                {"table": table}, n.source, in_q=in_q)


def _mul_node(n: FNode, qa: QParams, qb: QParams, out_q: QParams, shapes: dict, cfg: QuantConfig) -> Node:
    inputs = list(n.inputs)
    if tuple(shapes[inputs[0]]) != tuple(shapes[n.name]):  # the broadcast operand goes second
        inputs, qa, qb = inputs[::-1], qb, qa
    if tuple(shapes[inputs[0]]) != tuple(shapes[n.name]):
        raise QuantsimError(f"cannot lower {n.source}: product of tensors of shapes {shapes[n.inputs[0]]} and "
                            f"{shapes[n.inputs[1]]} (one must broadcast over the other)")
    if qa.per_channel or qb.per_channel:
        raise QuantsimError(f"cannot lower {n.source}: product of tensors with per-channel scales")
    m = float(qa.scale) * float(qb.scale) / float(out_q.scale)
    mult, shift = quantize_multiplier(m, _mult_bits_for(float(_mag(qa) * _mag(qb)), cfg))
    return Node(n.name, "mul", inputs, out_q, {"clamp": _clamp(out_q, n.act)},
                {"multiplier": np.int64(mult), "shift": np.int64(shift)}, n.source, in_q=qa)


def float_nodes(graph: Graph) -> list[str]:
    """Nodes evaluated in float (nonlinear='float'): never bit-exact between the executors."""
    return [n.name for n in graph.nodes if n.op in NONLINEAR_OPS and n.attrs.get("mode") == "float"]


def activation_qparams(g: FloatGraph, stats: dict[str, TensorStats], cfg: QuantConfig) -> dict[str, QParams]:
    """The quantization of every FloatGraph tensor."""
    bits = tensor_bits(g, cfg)
    stats = dict(stats)
    for n in g.nodes:  # the class token shares the patch tokens' quantization: calibrate on both
        if n.op == "concat_token":
            r = _root(g, n.inputs[0])
            stats[r] = _merged(stats[r], stats[n.name])
    groups = concat_groups(g)
    group_stats: dict[str, TensorStats] = {}
    group_signed: dict[str, bool] = {}
    for r, rep in groups.items():  # a concat group: the union of its members' ranges
        group_stats[rep] = _merged(group_stats[rep], stats[r]) if rep in group_stats else stats[r]
        group_signed[rep] = group_signed.get(rep, False) or not g.non_negative(r)
    group_q: dict[str, QParams] = {}
    q: dict[str, QParams] = {}
    for n in g.nodes:
        if n.op in PASSTHROUGH_OPS:
            q[n.name] = q[n.inputs[0]]
        elif n.name in groups:
            rep = groups[n.name]
            if rep not in group_q:
                group_q[rep] = _act_qparams(g, n.name, bits.get(n.name, cfg.a_bits), group_stats[rep], cfg,
                                            signed=group_signed[rep])
            q[n.name] = group_q[rep]
        elif n.op == "softmax":
            b = bits.get(n.name, cfg.a_bits)
            q[n.name] = QParams(b, False, np.float64(2.0**-b))
        else:
            q[n.name] = _act_qparams(g, n.name, bits.get(n.name, cfg.a_bits), stats[n.name], cfg)
    for n in g.nodes:  # a log2 softmax: its scale is the unit 2^-K of attention·V's shift-and-add sum
        if _is_log2_softmax(g, n.name, cfg):
            q[n.name] = QParams(q[n.name].bits, False, np.float64(2.0 ** -log2_depth(g, n.name, q, cfg)))
    return q


def mac_input_quantizer(g: FloatGraph, stats: dict[str, TensorStats], cfg: QuantConfig):
    """(MAC node, x) -> x fake-quantized on the grid lowering gives that node's input tensor
    (activation_qparams: its scale, width and range; a zero point shifts the range)."""
    q = activation_qparams(g, stats, cfg)

    def fq(n: FNode, x: torch.Tensor) -> torch.Tensor:
        qp = q[n.inputs[0]]
        return fake_quant_act(x, float(qp.scale), qp.qmin - qp.zero_point, qp.qmax - qp.zero_point)
    return fq


def weight_scale_floors(g: FloatGraph, stats: dict[str, TensorStats], cfg: QuantConfig) -> FloatGraph:
    """with_weight_scale_floors at the activation scales calibration gives (what lower applies)."""
    return with_weight_scale_floors(g, activation_qparams(g, stats, cfg), cfg.acc_bits)


def lower(g: FloatGraph, stats: dict[str, TensorStats], cfg: QuantConfig) -> Graph:
    shapes = shapes_of(g)
    if cfg.requant == "float32":
        vit = sorted({n.op for n in g.nodes if n.op in FLOAT32_UNSUPPORTED})
        if vit:
            raise QuantsimError(f"requant mode float32 does not cover the ops {', '.join(vit)} (transformer ops, "
                                "lookup-table activations, products of activations): use --requant dyadic")
    q = activation_qparams(g, stats, cfg)
    g = with_weight_scale_floors(g, q, cfg.acc_bits)
    nodes: list[Node] = []
    for n in g.nodes:
        out_q = q[n.name]
        if n.op == "input":
            nodes.append(Node("input", "quantize", [INPUT_NAME], out_q, {}, {}, "input"))
        elif n.is_mac:
            nodes.append(_mac_node(n, q[n.inputs[0]], out_q, cfg))
        elif n.op == "add":
            nodes.append(_add_node(n, q[n.inputs[0]], q[n.inputs[1]], out_q, cfg))
        elif n.op == "mul":
            nodes.append(_mul_node(n, q[n.inputs[0]], q[n.inputs[1]], out_q, shapes, cfg))
        elif n.op in LUT_OPS:
            nodes.append(_lut_node(n, q[n.inputs[0]], out_q))
        elif n.op == "gap":
            h, w = shapes[n.inputs[0]][2:]
            nodes.append(_pool_node(n, q[n.inputs[0]], out_q, h * w, "global_avgpool", {}, cfg))
        elif n.op == "avgpool":
            if any(n.attrs["padding"]) and not n.attrs["count_include_pad"]:
                raise QuantsimError(f"cannot lower {n.source}: average pool that excludes padding from its divisor")
            kh, kw = n.attrs["kernel"]
            attrs = {k: n.attrs[k] for k in ("kernel", "stride", "padding")}
            nodes.append(_pool_node(n, q[n.inputs[0]], out_q, kh * kw, "avgpool", attrs, cfg))
        elif n.op == "maxpool":
            nodes.append(Node(n.name, "maxpool", list(n.inputs), out_q, dict(n.attrs), {}, n.source, in_q=out_q))
        elif n.op == "flatten":
            k = int(np.prod(shapes[n.name][1:]))
            nodes.append(Node(n.name, "reshape", list(n.inputs), out_q, {"shape": [-1, k]}, {}, n.source, in_q=out_q))
        elif n.op == "shortcut_a":
            s = n.attrs["stride"]
            nodes.append(Node(n.name + ".slice", "strided_slice", list(n.inputs), out_q, {"step": [s, s]}, {},
                              n.source, in_q=out_q))
            nodes.append(Node(n.name, "pad_channels", [n.name + ".slice"], out_q,
                              {"before": n.attrs["pad_before"], "after": n.attrs["pad_after"]}, {}, n.source,
                              in_q=out_q))
        elif n.op in ("relu", "relu6"):
            nodes.append(Node(n.name, "clamp", list(n.inputs), out_q, {"clamp": _clamp(out_q, n.op)}, {},
                              n.source, in_q=out_q))
        elif n.op == "matmul":
            a = n.inputs[0]
            log2_exp = log2_depth(g, a, q, cfg) if _is_log2_softmax(g, a, cfg) else None
            nodes.append(_matmul_node(n, q[a], q[n.inputs[1]], out_q, shapes[a][-1], cfg, log2_exp))
        elif n.op in NONLINEAR_OPS:
            log2_exp = log2_depth(g, n.name, q, cfg) if _is_log2_softmax(g, n.name, cfg) else None
            nodes.append(nonlinear_node(n, q[n.inputs[0]], out_q, cfg, shapes[n.inputs[0]][-1], log2_exp))
        elif n.op == "add_const":
            nodes.append(_add_const_node(n, q[n.inputs[0]], out_q, cfg))
        elif n.op == "concat_token":
            nodes.append(_concat_token_node(n, out_q))
        elif n.op in ("reshape", "permute", "take", "concat", "slice", "pad", "roll"):
            nodes.append(Node(n.name, n.op, list(n.inputs), out_q, dict(n.attrs), {}, n.source, in_q=out_q))
        else:
            raise QuantsimError(f"cannot lower {n.source}: op {n.op!r} has no integer form")
    meta = {"acc_bits": cfg.acc_bits, "acc_overflow": cfg.acc_overflow, "config": cfg.to_json()}
    graph = Graph(nodes, INPUT_NAME, tuple(g.input_shape), [g.output], meta)
    if float_nodes(graph):
        graph.meta["bit_exact_contract"] = False  # float nonlinearities: see float_nodes
    return graph
