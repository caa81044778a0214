"""The integer program: a small explicit graph of integer ops.

Each node names its inputs, holds its integer parameters (NumPy arrays), its attributes
(plain JSON values) and the quantization of its output. Nodes are stored in
topological order. The semantics of each op are written once, in integer_ref.kernels;
quantsim.emulate.kernels is the torch twin of the same semantics.

Attributes follow one schema, ATTRS below: per op, the attributes it takes and their
defaults. Node() fills the defaults in and refuses unknown or missing attributes, so every
reader (both executors, hwmodel, the ONNX exporter) indexes node.attrs[key] directly.

Ops and their contents (x: input tensor, NCHW for images; all tensors hold integers):

- quantize    inputs [graph input, float]   q = clamp(rint(x / s) + z) in float32
- conv2d      params weight (O, I/g, kh, kw), bias (O,) or absent, multiplier (O,), shift (O,),
              weight_zero_point (scalar or (O,), default 0)
              attrs stride [sh, sw], dilation [dh, dw], groups, padding [top, bottom, left, right]
                    or padding_mode "tf_same" (computed from the input size), clamp [lo, hi]
- linear      params weight (O, K), bias, multiplier, shift; attrs clamp
- add         params multiplier (2,), shift (); attrs clamp   y = (a·Ma + b·Mb + round) >> n
- clamp       attrs clamp: a standalone ReLU / ReLU6 in the integer domain (scale unchanged)
- maxpool     attrs kernel, stride, padding [t, b, l, r]   (scale unchanged)
- avgpool     attrs kernel, stride, padding, count (divisor); params multiplier, shift; attrs clamp
- global_avgpool  params multiplier, shift; attrs count (= H·W it was lowered for), clamp
- reshape     attrs shape (with -1 for the batch axis kept as is): flatten is shape [-1, C]
- strided_slice   attrs step [sh, sw] on the spatial axes
- pad_channels    attrs before, after: pads with the zero point
- concat      inputs [a, b, ...]; attrs axis (not the batch axis): the inputs joined along it. A pure
              copy: lowering gives every input the output's quantization (one shared QParams)
- slice       attrs axis, start, stop: x[..., start:stop, ...] along one non-batch axis (torch.chunk /
              split along channels: ShuffleNet's channel split)
- pad         attrs pads [[before, after], ...] per axis (the batch axis [0, 0]): constant padding with
              the zero point, a pure copy (Swin's padding of the token grid to whole windows)
- roll        attrs shifts, dims: torch.roll, a pure copy (Swin's cyclic shift)
- requantize  params multiplier, shift (one each); attrs requant, clamp: y = requant(x - zx) + zy
              (TFLite QUANTIZE between integer types)
- lut         params table (int64, one entry per input code qmin..qmax); attrs function (hardswish,
              hardsigmoid, sigmoid, silu: what the table holds, integer_ref.lut), in_min (the input's
              qmin): y = table[x - in_min], the index clamped to the table
- mul         two activation inputs [a, b] (b broadcast over a: squeeze-and-excitation's (N, C, 1, 1)
              gate); params multiplier, shift (one each); attrs requant (dyadic only), clamp:
              y = requant((a - za)·(b - zb)) + zy

Vision Transformer ops (integer_ref.kernels_vit; tokens are (N, L, C), heads (N, H, L, D)):
- matmul      two activation inputs [a, b]; params multiplier, shift (one each, or one per index of
              the output axis attrs channel_axis: Swin v2's per-head logit scale); attrs transpose_b,
              clamp, channel_axis: y = requant((a - za) @ (b - zb)[ᵀ]), batched over the leading axes;
              with attrs a_log2 (a: a log2 softmax's codes k, zero code = a's qmax) and log2_max_exp K
              the product is acc = Σ_j (b_j - zb) << (K - k_j) over the non-zero codes (no multiplies)
- softmax     attrs SoftmaxParams.to_attrs(), mode, in_scale: over the last axis, unsigned out_bits
              at scale 2^-out_bits; attrs quant "log2": codes k (2^-k) for k <= log2_max_exp, the
              zero code 2^out_bits - 1 below (the output's QParams scale is then 2^-log2_max_exp,
              the unit of the attention·V accumulator, not the codes' value); optional params mask
              (int8, 1 = left out, broadcast against each item): a masked softmax (Swin's
              shifted-window mask)
- l2norm      params gamma, beta (int64, from layernorm_params with center 0); attrs
              LayerNormParams.to_attrs() (center 0), mode (integer only), in_scale: x / ‖x‖ over the
              last axis (F.normalize: Swin v2's cosine attention), LayerNorm's kernel without the mean
- gelu        attrs GeluParams.to_attrs(), mode, in_scale
- layernorm   params gamma, beta (int64; gamma_float, beta_float in float mode); attrs
              LayerNormParams.to_attrs(), mode, in_scale, eps_float: over the last axis
              (mode "integer": I-BERT integer kernels, bit-exact; "float": never bit-exact)
- concat_token  params token (T, C) at the input's quantization; attrs axis: prepends the class token
- add_const   params const (broadcast over the batch), multiplier (2,), shift; attrs clamp, const_scale:
              add with a constant second operand (position embedding)
- permute     attrs perm;   take   attrs axis, index (x[:, 0], unbind); reshape covers the rest

Requantization (attrs requant, default "dyadic"; integer_ref.arith has each rule once):
- dyadic        params multiplier M (< 2^31), shift n >= 0: (acc·M + 2^(n-1)) >> n
- gemmlowp      TFLite reference kernels: params multiplier (Q31), shift n (a right shift;
                negative n is TFLite's positive left shift): MultiplyByQuantizedMultiplier.
                global_avgpool may add attrs divide (the older TFLite integer_ops Mean: a rounded
                division by H·W after the multiplier; current TFLite folds 1/(H·W) into M); add takes
                multiplier/shift [a, b, out] and attrs left_shift (20), as TFLite's ADD.
- float32       params requant_scale (float32 per channel): rint(float32(acc + bias) · scale)
- float32_bias  params requant_scale and a float32 bias: rint((float32(acc) + bias) · scale)
- float32 add   ONNX Runtime QLinearAdd: params requant_scale float32 [s_a/s_y, s_b/s_y,
                z_y - (r_a·z_a + r_b·z_b)]: y = rint(fma(a, r_a, fma(b, r_b, f))) on the raw inputs
- float32_dq    requantize only: ONNX Runtime DequantizeLinear -> QuantizeLinear, params
                requant_scale [s_in, s_out]: rint(float32(x - z_x)·s_in / s_out) + z_y
- round_div     avgpool only: TFLite AVERAGE_POOL_2D, raw window sum / in-bounds count,
                rounded half away from zero (input and output quantized alike)
quantize may carry attrs scale, zero_point: the float input's quantization when it differs
from the output's (imported models whose integer input is the raw pixel: scale 1/255 of a
[0, 1] image, zero point 0, while the output keeps the model's input quantization).
"""
from __future__ import annotations

import json
import copy
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from . import nonlinear as NL
from .arith import qrange

# --- the attribute schema: each op's attributes and their defaults, written once -----------
# Node() fills the defaults in and rejects unknown or missing attributes, so every reader (both
# executors, hwmodel, the ONNX exporter) indexes node.attrs[key] and no reader has a default
# of its own. None means "not set"; its meaning is the one given with the attribute here.

REQUIRED = object()  # marks an attribute without a default


def _fields(params_cls, drop=()) -> dict:
    """The attributes a nonlinear op's constants dataclass contributes (its to_attrs() keys)."""
    return {f.name: REQUIRED for f in fields(params_cls) if f.name not in drop}


# A requantizing op's rule (integer_ref.arith, see the module docstring) and its output clamp
# (ReLU / ReLU6; None: the output's quantized range).
_REQUANT = {"requant": "dyadic", "clamp": None}
_POOL = {"kernel": REQUIRED, "stride": None, "padding": [0, 0, 0, 0]}  # stride None: the kernel size
_NONLINEAR = {"mode": "integer", "in_scale": REQUIRED}  # mode "integer" | "float"
# informational: output channels whose weight scale lowering widened so the bias fits the accumulator
_FLOORED = {"scale_floored": 0}

ATTRS: dict[str, dict[str, Any]] = {
    # scale / zero_point None: the float input is quantized like the output
    "quantize": {"scale": None, "zero_point": None},
    "conv2d": {"stride": [1, 1], "dilation": [1, 1], "groups": 1, "padding": [0, 0, 0, 0],
               "padding_mode": None,  # "tf_same": padding computed from the input size
               "kernel": None,  # (kh, kw), informational: the weight's shape says it too
               **_REQUANT, **_FLOORED},
    "linear": {**_REQUANT, **_FLOORED},
    "add": {**_REQUANT, "left_shift": 20},  # left_shift: TFLite ADD's (gemmlowp only)
    "clamp": {"clamp": None},
    "maxpool": dict(_POOL),
    "avgpool": {**_POOL, **_REQUANT, "count": None},  # count: the divisor it was lowered for
    # count: H·W it was lowered for; divide: TFLite's older rounded division after M (gemmlowp)
    "global_avgpool": {**_REQUANT, "count": None, "divide": None},
    "reshape": {"shape": REQUIRED},  # a leading -1 keeps the batch axis
    "strided_slice": {"step": REQUIRED, "begin": [0, 0]},
    "pad_channels": {"before": REQUIRED, "after": REQUIRED},
    "concat": {"axis": 1},  # inputs share the output's quantization: a pure copy
    "slice": {"axis": REQUIRED, "start": REQUIRED, "stop": REQUIRED},
    "pad": {"pads": REQUIRED},
    "roll": {"shifts": REQUIRED, "dims": REQUIRED},
    "requantize": dict(_REQUANT),
    "lut": {"function": REQUIRED, "in_min": REQUIRED},
    "mul": dict(_REQUANT),
    # a_log2: the first operand holds a log2 softmax's codes (k: 2^-k, zero code its qmax) and the
    # product is Σ_j (b_j - zb) << (log2_max_exp - k_j): shifts and adds (kernels_vit.log2_matmul_acc);
    # channel_axis None: one multiplier
    "matmul": {"transpose_b": False, "clamp": None, "channel_axis": None, "a_log2": False, "log2_max_exp": 0},
    # quant "uniform" (scale 2^-out_bits) or "log2" (codes k for 2^-k, k <= log2_max_exp; zero code 2^b - 1)
    "softmax": {**_fields(NL.SoftmaxParams, drop=("quant", "log2_max_exp")), **_NONLINEAR,
                "quant": "uniform", "log2_max_exp": 0},
    "gelu": {**_fields(NL.GeluParams), **_NONLINEAR},
    "layernorm": {**_fields(NL.LayerNormParams, drop=("gamma", "beta")), **_NONLINEAR,
                  "eps_float": REQUIRED, "center": 1},
    "l2norm": {**_fields(NL.LayerNormParams, drop=("gamma", "beta")), **_NONLINEAR, "center": 0},
    "concat_token": {"axis": 1, "clamped": 0},  # clamped: the token was clamped to the range
    "add_const": {**_REQUANT, "const_scale": REQUIRED},
    "permute": {"perm": REQUIRED},
    "take": {"axis": REQUIRED, "index": REQUIRED},
}
OPS = set(ATTRS)
# Ops whose arithmetic is a multiply-accumulate over a weight tensor.
MAC_OPS = {"conv2d", "linear"}


@dataclass
class QParams:
    """Quantization of one tensor: real = scale * (q - zero_point)."""

    bits: int
    signed: bool
    scale: np.ndarray  # float64; shape () per tensor or (C,) per channel along `axis`
    zero_point: int = 0
    narrow: bool = True  # signed range without -2^(b-1) (our own quantization)
    axis: int | None = None

    def __post_init__(self):
        self.scale = np.asarray(self.scale, dtype=np.float64)

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.signed, self.narrow)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.signed, self.narrow)[1]

    @property
    def per_channel(self) -> bool:
        return self.scale.ndim > 0 and self.scale.size > 1

    def to_json(self) -> dict:
        return {"bits": self.bits, "signed": self.signed, "scale": self.scale.tolist(),
                "zero_point": self.zero_point, "narrow": self.narrow, "axis": self.axis}

    @classmethod
    def from_json(cls, d: dict) -> "QParams":
        return cls(d["bits"], d["signed"], np.asarray(d["scale"]), d["zero_point"],
                   d["narrow"], d["axis"])


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    out: QParams
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""  # the torch module or function this node came from
    weight_q: QParams | None = None  # quantization of `weight`, for MAC ops
    in_q: QParams | None = None  # quantization of the first input, for reports

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"unknown IR op {self.op!r} in node {self.name!r}")
        self.attrs = with_defaults(self.op, self.attrs, self.name)

    @property
    def clamp_range(self) -> tuple[int, int]:
        """The op's clamp (ReLU, ReLU6) intersected with the output's quantized range."""
        clamp = self.attrs.get("clamp")  # ops without a clamp attribute: the output's range
        lo, hi = (self.out.qmin, self.out.qmax) if clamp is None else clamp
        return max(int(lo), self.out.qmin), min(int(hi), self.out.qmax)

    @property
    def input_quantization(self) -> tuple:
        """A quantize node's (scale, zero_point) of its float input: the output's unless set."""
        s, z = self.attrs["scale"], self.attrs["zero_point"]
        return (self.out.scale if s is None else s), (self.out.zero_point if z is None else z)

    @property
    def padding(self):
        """A conv2d node's padding: [top, bottom, left, right], or "tf_same"."""
        return "tf_same" if self.attrs["padding_mode"] == "tf_same" else self.attrs["padding"]


def with_defaults(op: str, attrs: dict, where: str = "") -> dict:
    """attrs completed with the schema's defaults; unknown or missing attributes raise."""
    schema = ATTRS[op]
    unknown = sorted(set(attrs) - set(schema))
    if unknown:
        raise ValueError(f"node {where!r} ({op}): unknown attribute(s) {unknown}; {op} takes {sorted(schema)}")
    missing = sorted(k for k, v in schema.items() if v is REQUIRED and k not in attrs)
    if missing:
        raise ValueError(f"node {where!r} ({op}): missing attribute(s) {missing}")
    # copies of the defaults: no two nodes share a default list
    return {**{k: copy.deepcopy(v) for k, v in schema.items() if k not in attrs}, **attrs}


@dataclass
class Graph:
    nodes: list[Node]
    input_name: str
    input_shape: tuple[int, ...]  # (C, H, W) the program was lowered for
    outputs: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self._index = {n.name: n for n in self.nodes}
        seen = {self.input_name}
        for n in self.nodes:
            for i in n.inputs:
                if i not in seen:
                    raise ValueError(f"node {n.name!r} reads {i!r} before it is produced")
            if n.name in seen:
                raise ValueError(f"duplicate node name {n.name!r}")
            seen.add(n.name)

    def __getitem__(self, name: str) -> Node:
        return self._index[name]

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    # -- serialisation: JSON for the structure, .npz for the arrays ------------------
    def save(self, path: str | Path) -> None:
        path = Path(path)
        arrays: dict[str, np.ndarray] = {}
        nodes = []
        for n in self.nodes:
            for k, v in n.params.items():
                arrays[f"{n.name}::{k}"] = v
            nodes.append({
                "name": n.name, "op": n.op, "inputs": n.inputs, "attrs": n.attrs,
                "params": sorted(n.params), "out": n.out.to_json(), "source": n.source,
                "weight_q": n.weight_q.to_json() if n.weight_q else None,
                "in_q": n.in_q.to_json() if n.in_q else None,
            })
        doc = {"format": "quantsim-ir/1", "input_name": self.input_name,
               "input_shape": list(self.input_shape), "outputs": self.outputs,
               "meta": self.meta, "nodes": nodes}
        path.with_suffix(".json").write_text(json.dumps(doc, indent=1))
        np.savez_compressed(path.with_suffix(".npz"), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "Graph":
        path = Path(path)
        doc = json.loads(path.with_suffix(".json").read_text())
        arrays = np.load(path.with_suffix(".npz"), allow_pickle=False)
        nodes = []
        for d in doc["nodes"]:
            nodes.append(Node(
                name=d["name"], op=d["op"], inputs=d["inputs"], attrs=d["attrs"],
                params={k: arrays[f"{d['name']}::{k}"] for k in d["params"]},
                out=QParams.from_json(d["out"]), source=d["source"],
                weight_q=QParams.from_json(d["weight_q"]) if d["weight_q"] else None,
                in_q=QParams.from_json(d["in_q"]) if d["in_q"] else None,
            ))
        return cls(nodes, doc["input_name"], tuple(doc["input_shape"]), doc["outputs"], doc["meta"])
