"""Export a lowered integer program (requant mode float32) to a QOperator ONNX model that
ONNX Runtime runs with exactly our integers.

    res = export_onnx(graph, preprocess, "model.onnx")   # graph: lower(..., QuantConfig(requant="float32"))
    graph.meta["onnx_tensors"] = res.tensors             # then quantsim.interop.oracles.compare_onnxruntime works

IR op -> ONNX (every tensor 8-bit, int8 or uint8 as the IR's QParams say):

  quantize        QuantizeLinear (the float image in, as the model's preprocessing leaves it)
  conv2d          QLinearConv (int8 weights, per-channel or per-tensor; int32 bias)
  linear          com.microsoft QGemm (transB 1, int32 bias)
  add             com.microsoft QLinearAdd
  global_avgpool  com.microsoft QLinearGlobalAveragePool (channels_last 0)
  reshape         Flatten (to N×K); strided_slice Slice; pad_channels Pad with the zero point
  concat          Concat (every input at the output's quantization); slice Slice (one axis)
  maxpool         MaxPool; clamp Clip (also after a producer whose clamp is narrower than its
                  type's range, e.g. ReLU6 below the saturation point)
  graph output    DequantizeLinear -> float "logits" (float32(q - z)·s, as integer_ref's dequantized)

ONNX Runtime computes each requantization multiplier from the scales written here; export
refuses a node whose stored float32 multiplier is not that value (so a graph lowered in
another mode, or edited, cannot silently differ). Refused with a QuantsimError: dyadic /
gemmlowp programs, widths other than 8 (ONNX QLinear ops hold 8-bit tensors only: lower
with out_bits=8, which `simulate --export-onnx` does), transformer ops, average pools with
a window (ORT's QLinearAveragePool rounds differently), biases beyond int32.
The model's preprocessing is stored in metadata_props under
quantsim.interop.onnx_import.PREPROCESS_KEY, so quantsim.interop.onnx_import re-imports the file
with the same inputs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from integer_ref import arith
from integer_ref.ir import Graph, Node, QParams

from quantsim.errors import QuantsimError
from quantsim.interop.onnx_import import PREPROCESS_KEY
from quantsim.quant.lower import f32_add_scale, f32_gap_scale, f32_mac_scale
from quantsim.zoo.preprocess import Preprocess
from reports.io import write_bytes_atomic

OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear, Clip/Pad/Slice on int8 and uint8
MS_DOMAIN = "com.microsoft"
INT64_MAX = 2**63 - 1
OUTPUT_NAME = "logits"


@dataclass
class ExportResult:
    path: Path
    tensors: dict[str, str]  # IR node -> ONNX tensor holding the same integers


def _onnx():
    try:
        import onnx  # optional extra [onnx]
    except ImportError as exc:  # pragma: no cover - dependency note
        raise QuantsimError("exporting to ONNX needs the `onnx` package (pip install onnx)") from exc
    return onnx


class _Writer:
    def __init__(self, graph: Graph):
        onnx = _onnx()
        self.onnx, self.h, self.TP = onnx, onnx.helper, onnx.TensorProto
        self.graph = graph
        self.nodes: list = []
        self.inits: list = []
        self.tensors: dict[str, str] = {}
        self.shapes: dict[str, tuple[int, ...]] = {graph.input_name: tuple(graph.input_shape)}
        self.used_ms = False

    # -- helpers ---------------------------------------------------------------------------
    def fail(self, node: Node, why: str):
        raise QuantsimError(f"cannot export node {node.name!r} ({node.op}, {node.source or 'no source'}) "
                            f"to ONNX: {why}")

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(arr), name))
        return name

    def dtype(self, q: QParams) -> type:
        return np.int8 if q.signed else np.uint8

    def check_q(self, node: Node, q: QParams, what: str) -> None:
        if q.bits != 8:
            self.fail(node, f"{what} is {q.bits}-bit; ONNX QLinear ops hold 8-bit tensors only")
        if q.per_channel:
            self.fail(node, f"{what} has per-channel activation scales")
        lo, hi = arith.qrange(8, q.signed, False)
        if not lo <= q.zero_point <= hi:
            self.fail(node, f"{what} has zero point {q.zero_point} outside its type")
        if q.signed and q.narrow:
            self.fail(node, f"{what} uses the narrow signed range [-127, 127] (dyadic lowering); ONNX Runtime "
                      "saturates at -128: lower with requant float32")

    def qparams(self, tensor: str, q: QParams) -> tuple[str, str]:
        """Scale and zero-point initializers of an activation tensor (float32, int8/uint8)."""
        s = self.init(f"{tensor}::scale", np.array(np.float32(q.scale)))
        z = self.init(f"{tensor}::zero_point", np.array(q.zero_point, self.dtype(q)))
        return s, z

    def emit(self, op: str, inputs: list[str], output: str, domain: str = "", **attrs) -> None:
        self.used_ms |= domain == MS_DOMAIN
        self.nodes.append(self.h.make_node(op, inputs, [output], name=output, domain=domain or None, **attrs))

    def clamped(self, node: Node, raw: str) -> str:
        """A Clip after the QLinear op where the node's clamp is narrower than its type's range."""
        q = node.out
        lo_t, hi_t = arith.qrange(8, q.signed, False)
        clamp = node.attrs["clamp"]
        lo, hi = (lo_t, hi_t) if clamp is None else clamp
        lo, hi = max(int(lo), lo_t), min(int(hi), hi_t)
        if (lo, hi) == (lo_t, hi_t):
            return raw
        dt = self.dtype(q)
        self.emit("Clip", [raw, self.init(f"{node.name}::min", np.array(lo, dt)),
                           self.init(f"{node.name}::max", np.array(hi, dt))], node.name)
        return node.name

    def requant_scale(self, node: Node, want: np.ndarray) -> None:
        if node.attrs["requant"] != "float32" or "requant_scale" not in node.params:
            self.fail(node, f"requant mode {node.attrs['requant']!r}: only float32 programs export "
                      "(lower with QuantConfig(requant='float32') / --requant float32)")
        have = np.ravel(np.asarray(node.params["requant_scale"], np.float32))
        want = np.ravel(np.asarray(want, np.float32))
        if have.shape != want.shape or not np.array_equal(have.view(np.int32), want.view(np.int32)):
            self.fail(node, "its float32 multiplier is not the one ONNX Runtime computes from the scales")

    # -- ops --------------------------------------------------------------------------------
    def node(self, node: Node) -> None:  # noqa: C901 - one branch per op
        qp = {n.name: n.out for n in self.graph.nodes}
        ins = [self.tensors.get(i, i) for i in node.inputs]
        x_shape = self.shapes.get(node.inputs[0]) if node.inputs else None
        out, name = node.out, node.name
        if node.op not in ("quantize",):
            self.check_q(node, out, "its output")
        if node.op == "quantize":
            self.check_q(node, out, "the input quantization")
            if node.attrs["scale"] is not None or node.attrs["zero_point"] is not None:
                self.fail(node, "an input quantization that differs from the quantize output's")
            s, z = self.qparams(name, out)
            self.emit("QuantizeLinear", [ins[0], s, z], name)
            self.shapes[name] = x_shape
            self.tensors[name] = name
            return
        x_q = qp.get(node.inputs[0])
        self.check_q(node, x_q, "its input")
        if node.op in ("conv2d", "linear"):
            self.mac(node, ins[0], x_q, x_shape)
        elif node.op == "add":
            b_q = qp[node.inputs[1]]
            self.check_q(node, b_q, "its second input")
            if x_q.signed != out.signed or b_q.signed != out.signed:
                self.fail(node, "QLinearAdd needs one element type for both operands and the output")
            if self.shapes[node.inputs[0]] != self.shapes[node.inputs[1]]:
                self.fail(node, "broadcasting add")
            self.requant_scale(node, f32_add_scale(x_q, b_q, out))
            sa, za = self.qparams(f"{name}::a", x_q)
            sb, zb = self.qparams(f"{name}::b", b_q)
            sy, zy = self.qparams(name, out)
            raw = f"{name}::q"
            self.emit("QLinearAdd", [ins[0], sa, za, ins[1], sb, zb, sy, zy], raw, MS_DOMAIN)
            self.finish(node, self.clamped_rename(node, raw), x_shape)
        elif node.op == "global_avgpool":
            n, c, h, w = (1,) + tuple(x_shape) if len(x_shape) == 3 else x_shape
            count = node.attrs["count"]
            if (count is not None and int(count) != h * w) or node.attrs["divide"] is not None:
                self.fail(node, f"pool count {count} is not H·W = {h * w}")
            self.requant_scale(node, np.array([f32_gap_scale(x_q.scale, out.scale, h * w)]))
            sx, zx = self.qparams(f"{name}::x", x_q)
            sy, zy = self.qparams(name, out)
            raw = f"{name}::q"
            self.emit("QLinearGlobalAveragePool", [ins[0], sx, zx, sy, zy], raw, MS_DOMAIN, channels_last=0)
            self.finish(node, self.clamped_rename(node, raw), (c, 1, 1))
        elif node.op == "reshape":
            shape = [int(v) for v in node.attrs["shape"]]
            k = int(np.prod(x_shape))
            if shape != [-1, k]:
                self.fail(node, f"reshape to {shape} (only flattening to N×{k} exports)")
            self.emit("Flatten", [ins[0]], name, axis=1)
            self.finish(node, name, (k,))
        elif node.op == "strided_slice":
            step, begin = arith_pair(node.attrs["step"]), arith_pair(node.attrs["begin"])
            c, h, w = x_shape
            self.emit("Slice", [ins[0], self.init(f"{name}::starts", np.array(begin, np.int64)),
                                self.init(f"{name}::ends", np.array([INT64_MAX, INT64_MAX], np.int64)),
                                self.init(f"{name}::axes", np.array([2, 3], np.int64)),
                                self.init(f"{name}::steps", np.array(step, np.int64))], name)
            self.finish(node, name, (c, len(range(begin[0], h, step[0])), len(range(begin[1], w, step[1]))))
        elif node.op == "concat":
            axis = int(node.attrs["axis"])
            for i in node.inputs:
                q_i = qp[i]
                self.check_q(node, q_i, f"its input {i!r}")
                if q_i.zero_point != out.zero_point or np.float32(q_i.scale) != np.float32(out.scale):
                    self.fail(node, f"input {i!r} is quantized otherwise than the output")
            self.emit("Concat", ins, name, axis=axis)
            shape = list(x_shape)
            shape[axis - 1] = sum(int(self.shapes[i][axis - 1]) for i in node.inputs)
            self.finish(node, name, tuple(shape))
        elif node.op == "slice":
            axis, start, stop = (int(node.attrs[k]) for k in ("axis", "start", "stop"))
            self.emit("Slice", [ins[0], self.init(f"{name}::starts", np.array([start], np.int64)),
                                self.init(f"{name}::ends", np.array([stop], np.int64)),
                                self.init(f"{name}::axes", np.array([axis], np.int64))], name)
            shape = list(x_shape)
            shape[axis - 1] = stop - start
            self.finish(node, name, tuple(shape))
        elif node.op == "pad_channels":
            before, after = int(node.attrs["before"]), int(node.attrs["after"])
            c, h, w = x_shape
            self.emit("Pad", [ins[0], self.init(f"{name}::pads", np.array([0, before, 0, 0, 0, after, 0, 0], np.int64)),
                              self.init(f"{name}::value", np.array(x_q.zero_point, self.dtype(x_q)))],
                      name, mode="constant")
            self.finish(node, name, (c + before + after, h, w))
        elif node.op == "maxpool":
            kh, kw = arith_pair(node.attrs["kernel"])
            sh, sw = arith_pair(node.attrs["stride"] or node.attrs["kernel"])
            pad = node.attrs["padding"]
            if isinstance(pad, str):
                self.fail(node, f"maxpool padding {pad!r}")
            t, b, l, r = pad if isinstance(pad, (list, tuple)) and len(pad) == 4 else (int(pad),) * 4
            c, h, w = x_shape
            self.emit("MaxPool", [ins[0]], name, kernel_shape=[kh, kw], strides=[sh, sw], pads=[t, l, b, r])
            self.finish(node, name, (c, arith.conv_output_size(h, kh, sh, t, b), arith.conv_output_size(w, kw, sw, l, r)))
        elif node.op == "clamp":
            raw = self.clamped(node, ins[0])
            if raw == ins[0]:  # a clamp that changes nothing: still give the node its own tensor
                self.emit("Identity", [ins[0]], name)
            self.finish(node, name, x_shape)
        else:
            self.fail(node, "no ONNX QOperator form (transformer ops, average pools with a window and "
                      "requantize do not export)")

    def clamped_rename(self, node: Node, raw: str) -> str:
        """The QLinear op's output, or the Clip after it; the final tensor is named after the node."""
        final = self.clamped(node, raw)
        if final == raw:  # no Clip: name the QLinear op's output after the node itself
            self.nodes[-1].output[0] = node.name
            self.nodes[-1].name = node.name
            return node.name
        return final

    def finish(self, node: Node, tensor: str, shape: tuple[int, ...]) -> None:
        self.tensors[node.name] = tensor
        self.shapes[node.name] = tuple(int(v) for v in shape)

    def mac(self, node: Node, x: str, x_q: QParams, x_shape) -> None:
        name, out, p = node.name, node.out, node.params
        w = np.asarray(p["weight"], np.int64)
        wq = node.weight_q
        if wq is None or wq.bits != 8 or not wq.signed:
            self.fail(node, f"weights must be signed 8-bit (have {wq.bits if wq else '?'}-bit)")
        if np.any(np.asarray(p.get("weight_zero_point", 0)) != 0) or wq.zero_point != 0:
            self.fail(node, "weights with a zero point")
        if w.min(initial=0) < -128 or w.max(initial=0) > 127:
            self.fail(node, "weights outside int8")
        bias = p.get("bias")
        if bias is not None and (np.min(bias) < arith.INT32_MIN or np.max(bias) > arith.INT32_MAX):
            self.fail(node, "a bias beyond int32 (ONNX Runtime's accumulator)")
        self.requant_scale(node, np.broadcast_to(f32_mac_scale(x_q.scale, wq.scale, out.scale), (w.shape[0],)))
        sx, zx = self.qparams(f"{name}::x", x_q)
        w_scale = np.asarray(wq.scale, np.float32)
        ws = self.init(f"{name}::w_scale", w_scale)
        wz = self.init(f"{name}::w_zero_point", np.zeros(w_scale.shape, np.int8))
        wt = self.init(f"{name}::weight", w.astype(np.int8))
        sy, zy = self.qparams(name, out)
        bt = self.init(f"{name}::bias", np.asarray(bias, np.int32)) if bias is not None else ""
        raw = f"{name}::q"
        if node.op == "conv2d":
            c, h, wd = x_shape
            kh, kw = w.shape[2:]
            stride, dil = arith_pair(node.attrs["stride"]), arith_pair(node.attrs["dilation"])
            if node.attrs["padding_mode"] == "tf_same":  # fixed input size: explicit (asymmetric) pads
                t, b = arith.tf_same_padding(h, kh, stride[0], dil[0])
                l, r = arith.tf_same_padding(wd, kw, stride[1], dil[1])
            else:
                pad = node.attrs["padding"]
                t, b, l, r = pad if isinstance(pad, (list, tuple)) and len(pad) == 4 else (int(pad),) * 4
            ins = [x, sx, zx, wt, ws, wz, sy, zy] + ([bt] if bt else [])
            self.emit("QLinearConv", ins, raw, kernel_shape=[int(kh), int(kw)], strides=list(stride),
                      dilations=list(dil), group=int(node.attrs["groups"]), pads=[t, l, b, r])
            shape = (w.shape[0], arith.conv_output_size(h, kh, stride[0], t, b, dil[0]),
                     arith.conv_output_size(wd, kw, stride[1], l, r, dil[1]))
        else:
            if len(x_shape) != 1:
                self.fail(node, f"linear on a {len(x_shape) + 1}-d input (only N×K exports)")
            self.emit("QGemm", [x, sx, zx, wt, ws, wz, bt, sy, zy], raw, MS_DOMAIN, transB=1)
            shape = (w.shape[0],)
        self.finish(node, self.clamped_rename(node, raw), shape)


def arith_pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if np.ndim(v) == 0 else (int(v[0]), int(v[1]))


def build_model(graph: Graph, preprocess: Preprocess | None = None):
    """The onnx.ModelProto of a float32-mode program (checked with onnx.checker)."""
    onnx = _onnx()
    h, TP = onnx.helper, onnx.TensorProto
    if len(graph.outputs) != 1:
        raise QuantsimError(f"cannot export to ONNX: {len(graph.outputs)} graph outputs (only one exports)")
    if graph.meta.get("bit_exact_contract") is False:
        raise QuantsimError("cannot export to ONNX: the program evaluates float nonlinearities")
    modes = sorted({n.attrs["requant"] for n in graph.nodes
                    if n.op in ("conv2d", "linear", "add", "avgpool", "global_avgpool", "requantize")} - {"float32"})
    if modes:
        raise QuantsimError(f"cannot export a program in requant mode {', '.join(map(repr, modes))} to ONNX: only "
                            "float32 programs run bit-exactly in ONNX Runtime (QuantConfig(requant='float32'), "
                            "--requant float32)")
    wr = _Writer(graph)
    for node in graph.nodes:
        wr.node(node)
    out = graph[graph.outputs[0]]
    s, z = wr.qparams(f"{OUTPUT_NAME}::dq", out.out)
    wr.emit("DequantizeLinear", [wr.tensors[out.name], s, z], OUTPUT_NAME)
    c, hh, ww = graph.input_shape
    inputs = [h.make_tensor_value_info(graph.input_name, TP.FLOAT, ["N", c, hh, ww])]
    outputs = [h.make_tensor_value_info(OUTPUT_NAME, TP.FLOAT, ["N", *wr.shapes[out.name]])]
    g = h.make_graph(wr.nodes, "quantsim", inputs, outputs, initializer=wr.inits)
    opsets = [h.make_opsetid("", OPSET)] + ([h.make_opsetid(MS_DOMAIN, 1)] if wr.used_ms else [])
    model = h.make_model(g, opset_imports=opsets, producer_name="quantsim")
    model.ir_version = 8  # opset 13; readable by ONNX Runtime releases of the last years
    props = {"quantsim_config": json.dumps(graph.meta.get("config", {}))}
    if preprocess is not None:

        props[PREPROCESS_KEY] = json.dumps(preprocess.to_json())
    h.set_model_props(model, props)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:  # a bug here, not the user's input
        raise QuantsimError(f"the exported ONNX model does not validate: {str(exc).splitlines()[0]}") from exc
    return model, wr.tensors


def export_onnx(graph: Graph, preprocess: Preprocess | None, path: str | Path) -> ExportResult:
    """Write `graph` (lowered in requant mode float32, 8-bit) as a QOperator ONNX model, atomically."""

    path = Path(path)
    model, tensors = build_model(graph, preprocess)
    if path.exists() and path.is_dir():
        raise QuantsimError(f"--export-onnx {path} is a directory")
    try:
        write_bytes_atomic(path, model.SerializeToString())
    except OSError as exc:
        raise QuantsimError(f"cannot write {path}: {exc.strerror or exc}") from None
    return ExportResult(path, tensors)
