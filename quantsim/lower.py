"""FloatGraph + calibration statistics + QuantConfig -> integer_ref's integer program.

Every tensor gets one quantization, chosen here:
- bits: the widest input width any consumer asks for (a MAC layer's a_bits; for an add
  or pool, the width of its own output); the network output gets config.out_bits;
- signed or unsigned: unsigned where the tensor is provably non-negative;
- scale: from the calibration statistics (activations) or the weights themselves.
Ops that keep their input's scale (max pool, flatten, option-A shortcut, standalone ReLU)
share the quantization of their input tensor.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from integer_ref.arith import qrange, quantize_multiplier, quantize_multipliers
from integer_ref.ir import Graph, Node, QParams

from .calibrate import TensorStats, clip_value, weight_clip
from .capture import PASSTHROUGH_OPS, FloatGraph, FNode
from .config import QuantConfig
from .errors import QuantsimError

INPUT_NAME = "image"


def _root(g: FloatGraph, name: str) -> str:
    """The requantizing producer whose quantization this tensor shares."""
    n = g[name]
    while n.op in PASSTHROUGH_OPS:
        n = g[n.inputs[0]]
    return n.name


def tensor_bits(g: FloatGraph, cfg: QuantConfig) -> dict[str, int]:
    """Bits of each requantizing producer's output, from what its consumers ask for."""
    demand: dict[str, int] = {}
    demand[_root(g, g.output)] = cfg.out_bits
    for n in reversed(g.nodes):
        if n.op in PASSTHROUGH_OPS or n.op == "input":
            continue
        want = cfg.bits_for(n.name)[1] if n.is_mac else demand.get(n.name, cfg.a_bits)
        for i in n.inputs:
            r = _root(g, i)
            demand[r] = max(demand.get(r, 0), want)
    return demand


def shapes_of(g: FloatGraph) -> dict[str, tuple[int, ...]]:
    from .capture import run_float

    shapes: dict[str, tuple[int, ...]] = {}
    run_float(g, torch.zeros(1, *g.input_shape), observe=lambda n, y: shapes.__setitem__(n.name, tuple(y.shape)))
    return shapes


def _act_qparams(g: FloatGraph, name: str, bits: int, stats: TensorStats, cfg: QuantConfig) -> QParams:
    signed = not g.non_negative(name)
    qmin, qmax = qrange(bits, signed)
    clip = clip_value(stats, cfg.calib_method, qmin, qmax, cfg.percentile)
    if not math.isfinite(clip):
        raise QuantsimError(f"{g[name].source}: calibration saw NaN or Inf activations")
    clip = max(clip, 1e-8)  # an all-zero tensor still needs a valid scale
    return QParams(bits, signed, np.float64(clip / qmax))


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


def _quantize_weight(n: FNode, w_bits: int, cfg: QuantConfig) -> tuple[np.ndarray, QParams]:
    _, qmax = qrange(w_bits, True)
    per_channel = cfg.granularity == "per-channel"
    clip = weight_clip(n.weight, per_channel, "mse" if cfg.calib_method == "mse" else "minmax", qmax)
    scale = (clip.double() / qmax).clamp(min=1e-12)  # all-zero channels: any scale works
    shape = (-1,) + (1,) * (n.weight.dim() - 1)
    s = scale.reshape(shape) if per_channel else scale
    q = torch.clamp(torch.round(n.weight.double() / s), -qmax, qmax).to(torch.int64)
    qp = QParams(w_bits, True, scale.numpy(), axis=0 if per_channel else None)
    return q.numpy(), qp


def _mac_node(n: FNode, in_q: QParams, out_q: QParams, cfg: QuantConfig) -> Node:
    w_bits, _ = cfg.bits_for(n.name)
    wq, w_qp = _quantize_weight(n, w_bits, cfg)
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
    attrs: dict = {"clamp": _clamp(out_q, n.act)}
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
    return Node(n.name, "add", list(n.inputs), out_q, {"clamp": _clamp(out_q, n.act)},
                {"multiplier": mult, "shift": np.int64(shift)}, n.source, in_q=qa)


def _pool_node(n: FNode, in_q: QParams, out_q: QParams, count: int, op: str, attrs: dict, cfg: QuantConfig) -> Node:
    mag = max(abs(in_q.qmin), in_q.qmax) * count
    m, s = quantize_multiplier(float(in_q.scale) / (count * float(out_q.scale)), _mult_bits_for(mag, cfg))
    attrs = dict(attrs, count=count, clamp=_clamp(out_q, n.act))
    return Node(n.name, op, list(n.inputs), out_q, attrs,
                {"multiplier": np.int64(m), "shift": np.int64(s)}, n.source, in_q=in_q)


def lower(g: FloatGraph, stats: dict[str, TensorStats], cfg: QuantConfig) -> Graph:
    bits = tensor_bits(g, cfg)
    shapes = shapes_of(g)
    q: dict[str, QParams] = {}  # quantization of every FloatGraph tensor
    nodes: list[Node] = []
    for n in g.nodes:
        if n.op in PASSTHROUGH_OPS:
            q[n.name] = q[n.inputs[0]]
        else:
            q[n.name] = _act_qparams(g, n.name, bits.get(n.name, cfg.a_bits), stats[n.name], cfg)
        out_q = q[n.name]
        if n.op == "input":
            nodes.append(Node("input", "quantize", [INPUT_NAME], out_q, {}, {}, "input"))
        elif n.is_mac:
            nodes.append(_mac_node(n, q[n.inputs[0]], out_q, cfg))
        elif n.op == "add":
            nodes.append(_add_node(n, q[n.inputs[0]], q[n.inputs[1]], out_q, cfg))
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
        else:
            raise QuantsimError(f"cannot lower {n.source}: op {n.op!r} has no integer form")
    meta = {"acc_bits": cfg.acc_bits, "config": cfg.to_json()}
    return Graph(nodes, INPUT_NAME, tuple(g.input_shape), [g.output], meta)
