"""The torch twin of integer_ref.executor: the same integer program, batched, on CPU or GPU.

    res = run(graph, x)                      # x: float NCHW torch tensor
    res.tensors[name]                        # torch int64, identical to integer_ref's output
    model = EmulatedModel(graph)             # nn.Module: images -> dequantized logits

run_node dispatches each node to its kernel: quantsim.emulate.kernels (the twin of
integer_ref.kernels, rounding by quantsim.emulate.arith, the twin of integer_ref.arith) and
quantsim.emulate.kernels_vit (the twin of integer_ref.kernels_vit); tests compare the two
executors element for element.
"""
from __future__ import annotations

import numpy as np
import torch

from integer_ref import kernels as K
from integer_ref.executor import ExecResult, check_value_ranges, interpret
from integer_ref.ir import Graph, Node
from quantsim.emulate import kernels_vit as emulate_vit
from quantsim.emulate.arith import dequant_quant_float32, quantize
from quantsim.emulate.kernels import (add, add_float32, add_gemmlowp, avgpool_round_div, avgpool_sum, concat,
                                      conv2d_acc_bounded, linear_acc_bounded, lut, maxpool, mul, pad, pad_channels,
                                      requantize, roll, slice_axis, strided_slice)

__all__ = ["Prepared", "run_node", "run", "EmulatedModel"]


# --- the program --------------------------------------------------------------------------

class Prepared:
    """A graph's integer parameters as torch tensors on one device (made once per model)."""

    def __init__(self, graph: Graph, device):
        self.graph = graph
        self.device = torch.device(device)
        self.qp = {n.name: n.out for n in graph.nodes}
        self.acc_bits = int(graph.meta.get("acc_bits", 32))
        self.acc_overflow = graph.meta.get("acc_overflow", "count")
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
        if node.op == "lut":
            out["table"] = torch.as_tensor(np.asarray(p["table"], np.int64)).to(self.device)
        return out


def run_node(node: Node, args: list, prep: Prepared):
    """Evaluate one node in torch -> (output, accumulator overflow count)."""
    # attrs complete: integer_ref.ir.ATTRS filled the defaults in
    a, out, p, qp = node.attrs, node.out, prep.params[node.name], prep.qp
    lo, hi = node.clamp_range
    zin = [qp[i].zero_point if i in qp else 0 for i in node.inputs]
    x = args[0]
    x_range = (qp[node.inputs[0]].qmin, qp[node.inputs[0]].qmax) if node.inputs[0] in qp else None
    mode = a.get("requant")  # None: the op does not requantize
    rq = lambda acc, axis, bound=None: requantize(acc, p.get("bias"), p.get("multiplier"), p.get("shift"),
                                                  out.zero_point, lo, hi, axis, prep.acc_bits, bound,
                                                  mode, p.get("requant_scale"), a.get("divide"),  # divide: global_avgpool's
                                                  prep.acc_overflow)
    if node.op == "quantize":
        scale, zero_point = node.input_quantization
        return quantize(x, float(scale), zero_point, out.qmin, out.qmax), 0
    if node.op == "conv2d":
        acc, bound = conv2d_acc_bounded(x, p["w_centered"], p["w_l1_max"], zin[0], a["stride"],
                                        a["dilation"], a["groups"], node.padding, x_range)
        return rq(acc, 1, bound)
    if node.op == "linear":
        acc, bound = linear_acc_bounded(x, p["w_centered"], p["w_l1_max"], zin[0], x_range)
        return rq(acc, x.dim() - 1, bound)
    if node.op == "add" and mode == "gemmlowp":
        return add_gemmlowp(x, args[1], p["multiplier"], p["shift"], left_shift=a["left_shift"],
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
        return maxpool(x, a["kernel"], a["stride"], a["padding"]), 0
    if node.op == "avgpool" and mode == "round_div":
        return avgpool_round_div(x, lo=lo, hi=hi, kernel=a["kernel"], stride=a["stride"],
                                 padding=a["padding"]), 0
    if node.op == "requantize" and mode == "float32_dq":
        s_in, s_out = np.ravel(np.asarray(p["requant_scale"], np.float32))
        return dequant_quant_float32(x, zin[0], s_in, s_out, out.zero_point, lo, hi), 0
    if node.op == "requantize":
        return rq((x - zin[0]).reshape(1, -1), 0)[0].reshape(x.shape), 0
    if node.op == "avgpool":
        return rq(avgpool_sum(x, zin[0], a["kernel"], a["stride"], a["padding"]), 1)
    if node.op == "global_avgpool":
        return rq((x - zin[0]).sum(dim=(2, 3), keepdim=True), 1)
    if node.op == "reshape":
        return x.reshape(K.batch_shape(a["shape"], x.shape[0])), 0
    if node.op == "strided_slice":
        return strided_slice(x, a["step"], a["begin"]), 0
    if node.op == "pad_channels":
        return pad_channels(x, a["before"], a["after"], zin[0]), 0
    if node.op == "pad":
        return pad(x, a["pads"], zin[0]), 0
    if node.op == "roll":
        return roll(x, a["shifts"], a["dims"]), 0
    if node.op == "concat":
        return concat(args, a["axis"]), 0
    if node.op == "slice":
        return slice_axis(x, a["axis"], a["start"], a["stop"]), 0
    if node.op == "lut":
        return lut(x, p["table"], a["in_min"]), 0
    if node.op == "mul":
        if mode != "dyadic":
            raise NotImplementedError(f"op 'mul' has no {mode!r} requantization (node {node.name!r})")
        return mul(x, args[1], p["multiplier"], p["shift"], a_zero_point=zin[0], b_zero_point=zin[1],
                   y_zero_point=out.zero_point, lo=lo, hi=hi), 0
    if node.op in emulate_vit.OPS:  # ViT ops: the twin of integer_ref.kernels_vit
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
