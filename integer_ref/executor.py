"""The reference executor: runs an integer program (integer_ref.ir.Graph) with the kernels.

    result = run(graph, x)              # x: float32 NCHW images
    result.tensors[name]                # int64 output of every node (keep='all')
    result.acc_overflows[name]          # accumulator values outside graph.meta['acc_bits']
    result.acc_peaks[name]              # max |acc + bias| over all images (exact)
    result.acc_bits_needed[name]        # the narrowest signed accumulator that held every value

Images go through in batch chunks so that memory stays bounded on large evaluation sets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import arith
from . import kernels as K
from . import kernels_vit
from .ir import Graph, Node, QParams

# Ops whose accumulator (a sum before requantization) is checked against acc_bits.
ACC_OPS = ("conv2d", "linear", "avgpool", "global_avgpool", "matmul")


@dataclass
class ExecResult:
    tensors: dict[str, Any]  # name -> integer tensor (np.ndarray here, torch.Tensor in emulate)
    acc_overflows: dict[str, int] = field(default_factory=dict)
    # name -> (min, max) of the exact acc + bias, widened to include 0 (arith.value_range); filled
    # where a kernel's overflow count is a kernels.AccStats (integer_ref's; emulate counts only)
    acc_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def acc_peaks(self) -> dict[str, int]:
        return {k: max(hi, -lo) for k, (lo, hi) in self.acc_ranges.items()}

    @property
    def acc_bits_needed(self) -> dict[str, int]:
        return {k: arith.signed_bits_needed(lo, hi) for k, (lo, hi) in self.acc_ranges.items()}


def dequantize(q: np.ndarray, qparams: QParams) -> np.ndarray:
    """Real value s * (q - z) in float64 (per-channel scales broadcast along qparams.axis)."""
    scale = qparams.scale
    if scale.ndim > 0 and scale.size > 1:
        shape = [1] * np.ndim(q)
        shape[qparams.axis if qparams.axis is not None else 1] = -1
        scale = scale.reshape(shape)
    return (np.asarray(q, np.int64) - qparams.zero_point).astype(np.float64) * scale


def tensor_qparams(graph: Graph) -> dict[str, QParams]:
    """Quantization of every integer tensor, by the name of the node producing it."""
    return {n.name: n.out for n in graph.nodes}


# Ops that pass input values through unchanged (plus padding values): their output range
# must cover the input's, because both executors size exact GEMMs from declared ranges.
PASS_THROUGH_OPS = ("maxpool", "reshape", "strided_slice", "pad_channels", "concat", "slice", "pad", "roll")


def _same_quantization(a: QParams, b: QParams) -> bool:
    return (a.zero_point == b.zero_point and a.scale.shape == b.scale.shape
            and bool(np.array_equal(a.scale, b.scale)))


def check_value_ranges(graph: Graph) -> None:
    """Raise if a pass-through op declares a narrower range than its input can carry, or a
    concat's input is quantized otherwise than its output (concat copies integers unchanged)."""
    qp = tensor_qparams(graph)
    for n in graph.nodes:
        if n.op not in PASS_THROUGH_OPS:
            continue
        for i in (n.inputs if n.op == "concat" else n.inputs[:1]):
            if i not in qp:
                continue
            src = qp[i]
            if src.qmin < n.out.qmin or src.qmax > n.out.qmax:
                raise ValueError(f"node {n.name!r} ({n.op}) declares range [{n.out.qmin}, {n.out.qmax}] "
                                 f"narrower than its input {i!r}'s [{src.qmin}, {src.qmax}]")
            if n.op == "concat" and not _same_quantization(src, n.out):
                raise ValueError(f"node {n.name!r} (concat): input {i!r} is quantized with scale {src.scale} "
                                 f"zero point {src.zero_point}, the output with {n.out.scale} {n.out.zero_point}: "
                                 f"a concat's inputs must share its quantization")


def last_uses(graph: Graph) -> dict[str, int]:
    """Index of the last node reading each tensor, so intermediates can be freed early."""
    last = {}
    for i, n in enumerate(graph.nodes):
        for name in n.inputs:
            last[name] = i
    return last


def run_node(node: Node, args: list, qp: dict[str, QParams], acc_bits: int, acc_overflow: str = "count"):
    """Evaluate one node on its input tensors -> (output, accumulator overflow count; for the
    accumulating ops a kernels.AccStats, which also carries the accumulator's range)."""
    a, out = node.attrs, node.out  # attrs complete: integer_ref.ir.ATTRS filled the defaults in
    lo, hi = node.clamp_range
    zin = [qp[i].zero_point if i in qp else 0 for i in node.inputs]
    p = node.params
    rq = {"requant": a.get("requant"), "scale": p.get("requant_scale")}  # None: the op has no requant
    if node.op == "quantize":
        return K.quantize(args[0], *node.input_quantization, out.qmin, out.qmax), 0
    if node.op == "conv2d":
        return K.conv2d(args[0], p["weight"], p.get("bias"), p["multiplier"], p["shift"],
                        x_zero_point=zin[0], w_zero_point=p.get("weight_zero_point", 0),
                        y_zero_point=out.zero_point, lo=lo, hi=hi, stride=a["stride"],
                        dilation=a["dilation"], groups=a["groups"],
                        padding=node.padding, acc_bits=acc_bits, acc_overflow=acc_overflow,
                        x_range=(qp[node.inputs[0]].qmin, qp[node.inputs[0]].qmax), **rq)
    if node.op == "linear":
        return K.linear(args[0], p["weight"], p.get("bias"), p["multiplier"], p["shift"],
                        x_zero_point=zin[0], w_zero_point=p.get("weight_zero_point", 0),
                        y_zero_point=out.zero_point, lo=lo, hi=hi, acc_bits=acc_bits,
                        acc_overflow=acc_overflow, **rq)
    if node.op == "add" and rq["requant"] == "gemmlowp":
        return K.add_gemmlowp(args[0], args[1], p["multiplier"], p["shift"],
                              left_shift=a["left_shift"], a_zero_point=zin[0],
                              b_zero_point=zin[1], y_zero_point=out.zero_point, lo=lo, hi=hi), 0
    if node.op == "add" and rq["requant"] == "float32":
        return K.add_float32(args[0], args[1], rq["scale"], lo=lo, hi=hi), 0
    if node.op == "add":
        _dyadic_only(node, rq)
        return K.add(args[0], args[1], p["multiplier"], p["shift"], a_zero_point=zin[0],
                     b_zero_point=zin[1], y_zero_point=out.zero_point, lo=lo, hi=hi), 0
    if node.op == "clamp":
        return K.clamp(args[0], lo=lo, hi=hi), 0
    if node.op == "maxpool":
        return K.maxpool(args[0], a["kernel"], a["stride"], a["padding"]), 0
    if node.op == "avgpool" and rq["requant"] == "round_div":
        return K.avgpool_round_div(args[0], lo=lo, hi=hi, kernel=a["kernel"], stride=a["stride"],
                                   padding=a["padding"]), 0
    if node.op == "avgpool":
        return K.avgpool(args[0], p["multiplier"], p["shift"], x_zero_point=zin[0],
                         y_zero_point=out.zero_point, lo=lo, hi=hi, kernel=a["kernel"],
                         stride=a["stride"], padding=a["padding"], acc_bits=acc_bits,
                         acc_overflow=acc_overflow, **rq)
    if node.op == "global_avgpool":
        return K.global_avgpool(args[0], p["multiplier"], p["shift"], x_zero_point=zin[0],
                                y_zero_point=out.zero_point, lo=lo, hi=hi, acc_bits=acc_bits,
                                acc_overflow=acc_overflow,
                                divide=a["divide"], **rq)
    if node.op == "requantize":
        return K.requantize_tensor(args[0], p.get("multiplier"), p.get("shift"), x_zero_point=zin[0],
                                   y_zero_point=out.zero_point, lo=lo, hi=hi, **rq), 0
    if node.op == "reshape":
        return K.reshape(args[0], a["shape"]), 0
    if node.op == "strided_slice":
        return K.strided_slice(args[0], a["step"], a["begin"]), 0
    if node.op == "pad_channels":
        return K.pad_channels(args[0], a["before"], a["after"], zin[0]), 0
    if node.op == "pad":
        return K.pad(args[0], a["pads"], zin[0]), 0
    if node.op == "roll":
        return K.roll(args[0], a["shifts"], a["dims"]), 0
    if node.op == "concat":
        return K.concat(args, a["axis"]), 0
    if node.op == "slice":
        return K.slice_axis(args[0], a["axis"], a["start"], a["stop"]), 0
    if node.op == "lut":
        return K.lut(args[0], p["table"], a["in_min"]), 0
    if node.op == "mul":
        _dyadic_only(node, rq)
        return K.mul(args[0], args[1], p["multiplier"], p["shift"], a_zero_point=zin[0],
                     b_zero_point=zin[1], y_zero_point=out.zero_point, lo=lo, hi=hi), 0
    if node.op in kernels_vit.OPS:
        return kernels_vit.run_node(node, args, qp, acc_bits, acc_overflow)
    raise NotImplementedError(f"integer_ref has no kernel for op {node.op!r} (node {node.name!r})")


def _dyadic_only(node: Node, rq: dict) -> None:
    if rq["requant"] != "dyadic":
        raise NotImplementedError(f"op {node.op!r} has no {rq['requant']!r} requantization (node {node.name!r})")


def interpret(graph: Graph, x, keep: str, eval_node: Callable[[Any, list], tuple[Any, int]]) -> ExecResult:
    """Walk the program in order with `eval_node(node, inputs) -> (output, overflows)`,
    freeing tensors no later node reads. Shared by integer_ref and its torch twin."""
    last = last_uses(graph)
    live: dict[str, Any] = {graph.input_name: x}
    res = ExecResult({}, {})
    for i, node in enumerate(graph.nodes):
        y, overflows = eval_node(node, [live[n] for n in node.inputs])
        live[node.name] = y
        if node.op in ACC_OPS:
            res.acc_overflows[node.name] = int(overflows)
            if isinstance(overflows, K.AccStats):
                res.acc_ranges[node.name] = (overflows.low, overflows.high)
        if keep == "all" or node.name in graph.outputs:
            res.tensors[node.name] = y
        for name in node.inputs:  # free what no later node reads
            if last.get(name) == i and name not in graph.outputs:
                live.pop(name, None)
    return res


def run_chunk(graph: Graph, x: np.ndarray, keep: str) -> ExecResult:
    qp = tensor_qparams(graph)
    acc_bits = int(graph.meta.get("acc_bits", 32))
    acc_overflow = graph.meta.get("acc_overflow", "count")
    return interpret(graph, x, keep, lambda node, args: run_node(node, args, qp, acc_bits, acc_overflow))


def run(graph: Graph, x: np.ndarray, keep: str = "all", chunk: int = 256) -> ExecResult:
    """Run the program on float32 NCHW images; keep 'all' node outputs or only 'outputs'."""
    if keep not in ("all", "outputs"):
        raise ValueError(f"keep must be 'all' or 'outputs', got {keep!r}")
    check_value_ranges(graph)
    x = np.asarray(x, dtype=np.float32)
    parts = [run_chunk(graph, x[i:i + chunk], keep) for i in range(0, max(len(x), 1), chunk)]
    if len(parts) == 1:
        return parts[0]
    tensors = {k: np.concatenate([p.tensors[k] for p in parts]) for k in parts[0].tensors}
    overflows = {k: sum(p.acc_overflows[k] for p in parts) for k in parts[0].acc_overflows}
    ranges = {k: (min(p.acc_ranges[k][0] for p in parts), max(p.acc_ranges[k][1] for p in parts))
              for k in parts[0].acc_ranges}
    return ExecResult(tensors, overflows, ranges)
