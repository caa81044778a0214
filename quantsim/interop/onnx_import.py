"""Import an ONNX model quantized by ONNX Runtime (`quantize_static`, QOperator format) into
the integer IR, reproducing ONNX Runtime's CPU kernels (MLAS, x86-64) bit for bit.

The model is read with the `onnx` package. U8S8 (uint8 activations with zero points, int8
weights, per-tensor or per-channel) and S8S8 both import. Ops and the IR they become:

  QuantizeLinear (graph input) -> quantize: rint(x / s) + z in float32 (MLAS QuantizeLinear)
  QLinearConv       -> conv2d, requant float32, scale float32(float32(s_x·s_w[c]) / s_y)
  QGemm (transA 0), QLinearMatMul (constant B) -> linear, requant float32, scale
                       float32(float32(float32(alpha·s_a)·s_b[c]) / s_y) (alpha 1 for MatMul)
  QLinearAdd        -> add, requant float32: MLAS's AVX2 kernel, two float32 FMAs on the raw
                       inputs (arith.add_float32); the zero points are folded into one constant
  QLinearGlobalAveragePool (channels_last 0) -> global_avgpool, requant float32,
                       scale float32(s_x / float32(s_y·float32(H·W)))
  Flatten, Reshape (to N×K) -> reshape
  Pad (spatial, constant = the zero point; TF-"SAME" padding of a strided conv, asymmetric)
                    -> folded into the padding of every QLinearConv that reads it: padding with
                       z_x is what QLinearConv's own padding does (x - z_x = 0), so the
                       accumulators are identical. A float Pad (value 0) on the graph input
                       before its QuantizeLinear folds the same way (quantize(0) = z).
                       ONNX Runtime's optimizer already fuses a Pad whose constant_value is
                       given into a single consuming Conv; F.pad without a value, or a Pad with
                       two consumers, reaches the quantized model as a Pad.
  DequantizeLinear -> float Slice / Pad (constant 0) / Reshape ... -> QuantizeLinear:
                       the data movement runs on the integers (strided_slice, pad_channels with
                       the zero point, reshape), then requantize in mode float32_dq
                       (float32(x - z)·s_in / s_out, rounded half to even)
  DequantizeLinear of a graph output -> the integer graph stops there: graph.outputs is its
                       input (the quantized logits)

QDQ format (quantize_static(quant_format=QDQ)): weights and int32 biases are constants behind
DequantizeLinear (per-channel axis 0, or the output axis of Gemm/MatMul), and each
DequantizeLinear -> Conv/Gemm/MatMul/Add/GlobalAveragePool -> QuantizeLinear node unit is what
ONNX Runtime's CPU optimizer (default level) fuses into QLinearConv/QGemm/QLinearMatMul/
QLinearAdd/QLinearGlobalAveragePool: the importer builds the same IR nodes with the same float32
formulas from the unit's DQ/Q parameters. A Relu/Clip between the op (or a DequantizeLinear)
and its QuantizeLinear (QDQKeepRemovableActivations) is dropped when ORT drops it
(ReluQuantFusion: zero point = q_min; ClipQuantFusion: the QuantizeLinear's QuantizeDomain
lies inside [min, max]) and refused otherwise (ORT then runs the op in float). DQ -> Slice/Pad/
Flatten -> Q with the input's own parameters is plain data movement (no requantize). A unit
whose float output is not (only) quantized is refused: ORT would run it in float.

Relu and Clip do not appear: ONNX Runtime's quantizer folds them into the producer's output
range. The graph input is the float tensor the ONNX model takes (already normalised): the
preprocessing comes from the model's metadata_props entry `quantsim_preprocess` (JSON of
quantsim.zoo.preprocess.Preprocess, written by quantsim.interop.ort_quantize, quantsim.interop.onnx_export and by the tests), else mean
0 / std 1 at the model's input size, with a note. graph.meta['onnx_tensors'] maps IR nodes
to the ONNX tensors holding the same integers (the oracle adds them as graph outputs).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from integer_ref import arith
from integer_ref.ir import Graph, Node, QParams

from quantsim.errors import QuantsimError
from quantsim.quant.lower import f32_add_scale, f32_gap_scale
from quantsim.zoo.preprocess import Preprocess
from quantsim.interop.imported_model import ImportedModel

PREPROCESS_KEY = "quantsim_preprocess"
MOVEMENT = ("reshape", "strided_slice", "pad_channels")


def _onnx():
    try:
        import onnx  # noqa: F401  (optional extra [onnx])
        from onnx import numpy_helper  # noqa: F401  (optional extra [onnx])
    except ImportError as exc:  # pragma: no cover - dependency note
        raise QuantsimError("importing .onnx models needs the `onnx` package (pip install onnx)") from exc
    return onnx


def f32(v) -> np.float32:
    return np.float32(v)


class _Importer:
    def __init__(self, model, path: Path):
        onnx = _onnx()
        from onnx import numpy_helper  # optional extra [onnx]

        self.onnx, self.nh, self.path = onnx, numpy_helper, path
        self.model = model
        self.g = model.graph
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in self.g.initializer}
        self.nodes: list[Node] = []
        self.ints: dict[str, str] = {}       # ONNX tensor holding integers -> IR node
        self.fviews: dict[str, str] = {}     # ONNX float tensor = dequantized IR node (exact data movement)
        self.shapes: dict[str, tuple] = {}   # IR node -> shape (N = 1)
        self.tmap: dict[str, str] = {}       # IR node -> ONNX tensor with the same integers
        self.outputs: list[str] = []
        self.padded: dict[str, tuple[str, list[int]]] = {}  # ONNX tensor -> (IR node, [t, b, l, r]) to fold
        self.fpadded: dict[str, list[int]] = {}              # padded float graph input -> [t, b, l, r]
        self.notes: list[str] = []
        self.k = 0
        # QDQ format
        self.wdq: dict[str, tuple] = {}      # float tensor = DequantizeLinear(constant) -> (q, scale, zp, axis)
        self.units: dict[str, tuple] = {}    # float output of a QDQ node unit -> (kind, node, Relu/Clip seen)
        self.fpad_view: dict[str, tuple[str, list[int]]] = {}  # float Pad (0) of a dequantized view
        self.padded_dq: dict[str, tuple[str, list[int]]] = {}  # DequantizeLinear of a padded tensor
        self.consumers: dict[str, list] = {}

    # -- helpers ---------------------------------------------------------------------------
    def const(self, name: str, where: str) -> np.ndarray:
        if name not in self.consts:
            raise QuantsimError(f"{where}: input {name!r} is not a constant")
        return self.consts[name]

    def qp(self, name: str) -> QParams:
        return next(n.out for n in reversed(self.nodes) if n.name == name)

    def act_q(self, s_name: str, z_name: str, where: str) -> QParams:
        s = self.const(s_name, where).astype(np.float32).ravel()
        z = self.const(z_name, where)
        if s.size != 1 or z.size != 1:
            raise QuantsimError(f"{where}: per-channel activation quantization is not supported")
        if z.dtype not in (np.uint8, np.int8):
            raise QuantsimError(f"{where}: {z.dtype} activations (only uint8 / int8 import)")
        return QParams(8, z.dtype == np.int8, np.float64(s[0]), int(z.ravel()[0]), narrow=False)

    def int_input(self, name: str, where: str, s_name: str | None = None, z_name: str | None = None) -> str:
        if name in self.padded:
            raise QuantsimError(f"{where}: reads the spatially padded {name!r}; such Pads import only "
                                "in front of QLinearConv (folded into its padding)")
        if name not in self.ints:
            raise QuantsimError(f"{where}: input {name!r} is not produced by the integer graph")
        ir = self.ints[name]
        if s_name is not None:
            self.check_q(ir, name, s_name, z_name, where)
        return ir

    def check_q(self, ir: str, name: str, s_name: str, z_name: str | None, where: str) -> None:
        q = self.act_q(s_name, z_name, where)
        have = self.qp(ir)
        if f32(q.scale) != f32(have.scale) or q.zero_point != have.zero_point or q.signed != have.signed:
            raise QuantsimError(f"{where}: input {name!r} quantized as ({float(q.scale)}, {q.zero_point}) "
                                f"here but ({float(have.scale)}, {have.zero_point}) where produced")

    @staticmethod
    def qp_equal(a: QParams, b: QParams) -> bool:
        return f32(a.scale) == f32(b.scale) and a.zero_point == b.zero_point and a.signed == b.signed

    def add(self, node: Node, shape: tuple, onnx_out: str | None, domain: str = "int") -> str:
        self.nodes.append(node)
        self.shapes[node.name] = tuple(int(v) for v in shape)
        if onnx_out is not None:
            (self.ints if domain == "int" else self.fviews)[onnx_out] = node.name
            if domain == "int":
                self.tmap[node.name] = onnx_out
        return node.name

    def name(self, op: str) -> str:
        self.k += 1
        return f"n{self.k:03d}_{op.lower()}"

    # -- ops --------------------------------------------------------------------------------
    def run(self) -> None:
        graph_inputs = [i for i in self.g.input if i.name not in self.consts]
        if len(graph_inputs) != 1:
            raise QuantsimError(f"{self.path}: {len(graph_inputs)} inputs; only single-image models import")
        self.input = graph_inputs[0]
        dims = self.input.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if len(shape) != 4 or None in shape[1:]:
            raise QuantsimError(f"{self.path}: input shape {shape} is not N×C×H×W with fixed C, H, W")
        self.input_shape = tuple(shape[1:])
        self.batch_fixed = shape[0]
        self.graph_outputs = {o.name for o in self.g.output}
        for node in self.g.node:
            for i in node.input:
                self.consumers.setdefault(i, []).append(node)
        for node in self.g.node:
            self.op(node)
        if self.units:
            raise QuantsimError(f"{self.path.name}: float output(s) {sorted(self.units)} of DequantizeLinear -> op "
                                "units are not quantized (ONNX Runtime would run them in float)")

    def op(self, nd) -> None:  # noqa: C901 - one branch per ONNX op
        onnx = self.onnx
        kind = nd.op_type
        ins, out = list(nd.input), nd.output[0]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nd.attribute}
        where = f"{self.path.name}: {kind} {nd.name or out!r}"
        if kind == "Constant":
            self.consts[out] = self.nh.to_array(attrs["value"])
            return
        if kind == "QuantizeLinear":
            y_q = self.act_q(ins[1], ins[2], where)
            if ins[0] == self.input.name or ins[0] in self.fpadded:
                n = Node("input", "quantize", ["image"], y_q, source=nd.name or out)
                if ins[0] in self.fpadded:  # quantize(pad(x, 0)) = pad(quantize(x), z): rint(0 / s) + z = z
                    self.add(n, (1,) + self.input_shape, None)
                    self.padded[out] = ("input", self.fpadded[ins[0]])
                else:
                    self.add(n, (1,) + self.input_shape, out)
                return
            if ins[0] in self.units:
                self.qdq_unit(ins[0], y_q, out, where)
                return
            if ins[0] in self.fpad_view:  # Q(pad(DQ(x), 0)) = pad(x, z) when Q re-uses x's (s, z)
                src, pads = self.fpad_view.pop(ins[0])
                self.check_q(src, ins[0], ins[1], ins[2], where)
                self.padded[out] = (src, pads)
                return
            if ins[0] not in self.fviews:
                raise QuantsimError(f"{where}: quantizes a float tensor the integer graph does not hold")
            src = self.fviews[ins[0]]
            x_q = self.qp(src)
            if (self.qp_equal(x_q, y_q) and src not in self.tmap
                    and next(n.op for n in reversed(self.nodes) if n.name == src) in MOVEMENT):
                # DQ -> data movement -> Q with the same (s, z) (QDQ quantizes Slice, Pad, Flatten
                # outputs with their input's parameters): the integers pass unchanged, no requantize
                # (ONNX Runtime drops such pairs; float32_dq would be the identity anyway)
                self.ints[out], self.tmap[src] = src, out
                return
            n = Node(self.name("requantize"), "requantize", [src], y_q, attrs={"requant": "float32_dq"},
                     params={"requant_scale": np.array([f32(x_q.scale), f32(y_q.scale)], np.float32)},
                     source=nd.name or out, in_q=x_q)
            self.add(n, self.shapes[src], out)
            return
        if kind == "DequantizeLinear":
            if ins[0] in self.consts:  # QDQ weights (int8, per-channel axis) and biases (int32)
                s_ = self.const(ins[1], where).astype(np.float32)
                z_ = self.const(ins[2], where) if len(ins) > 2 and ins[2] else np.zeros(1, self.consts[ins[0]].dtype)
                self.wdq[out] = (self.consts[ins[0]], s_, z_, int(attrs.get("axis", 1)))
                return
            if ins[0] in self.padded:
                x, pads = self.padded[ins[0]]
                self.check_q(x, ins[0], ins[1], ins[2], where)
                self.padded_dq[out] = (x, pads)
                return
            src = self.int_input(ins[0], where, ins[1], ins[2] if len(ins) > 2 else None)
            if out in self.graph_outputs:
                self.outputs.append(src)
                self.notes.append(f"integer graph stops before DequantizeLinear {out!r}: "
                                  f"graph output = its quantized input {ins[0]!r}")
            else:
                self.fviews[out] = src
            return
        if kind == "Pad" and ins[0] == self.input.name:
            self.input_pad(nd, ins, out, attrs, where)
            return
        if kind in ("Slice", "Pad", "Flatten", "Reshape"):
            self.movement(nd, kind, ins, out, attrs, where)
            return
        if kind == "QLinearConv":
            self.conv(nd, ins, out, attrs, where)
            return
        if kind in ("Conv", "Gemm", "MatMul", "Add", "GlobalAveragePool", "Relu", "Clip") and not nd.domain:
            self.qdq_op(nd, kind, ins, out, attrs, where)
            return
        if kind in ("QGemm", "QLinearMatMul"):
            self.gemm(nd, kind, ins, out, attrs, where)
            return
        if kind == "QLinearAdd":
            a = self.int_input(ins[0], where, ins[1], ins[2])
            b = self.int_input(ins[3], where, ins[4], ins[5])
            self.add_op(a, b, self.act_q(ins[6], ins[7], where), nd.name or out, out, where)
            return
        if kind == "QLinearGlobalAveragePool":
            if attrs.get("channels_last", 0):
                raise QuantsimError(f"{where}: channels_last=1 is not supported")
            x = self.int_input(ins[0], where, ins[1], ins[2])
            self.gap_op(x, self.act_q(ins[3], ins[4], where), nd.name or out, out)
            return
        raise QuantsimError(f"{where}: unsupported ONNX op {nd.domain + '.' if nd.domain else ''}{kind}")

    def add_op(self, a: str, b: str, y_q: QParams, source: str, out: str, where: str) -> None:
        """QLinearAdd (MLAS AVX2): requant float32 with the zero points folded into one constant."""
        qa, qb = self.qp(a), self.qp(b)
        if self.shapes[a] != self.shapes[b]:
            raise QuantsimError(f"{where}: broadcasting add {self.shapes[a]} + {self.shapes[b]} is not supported")
        n = Node(self.name("add"), "add", [a, b], y_q, attrs={"requant": "float32"},
                 params={"requant_scale": f32_add_scale(qa, qb, y_q)}, source=source, in_q=qa)
        self.add(n, self.shapes[a], out)

    def gap_op(self, x: str, y_q: QParams, source: str, out: str) -> None:
        """QLinearGlobalAveragePool: requant float32, scale float32(s_x / float32(s_y·float32(H·W)))."""
        x_q = self.qp(x)
        _, c, h, w = self.shapes[x]
        scale = f32_gap_scale(x_q.scale, y_q.scale, h * w)
        m, s = arith.quantize_multipliers(np.array([float(scale)]))
        n = Node(self.name("gap"), "global_avgpool", [x], y_q, attrs={"requant": "float32", "count": h * w},
                 params={"requant_scale": np.array([scale], np.float32), "multiplier": m, "shift": s},
                 source=source, in_q=x_q)
        self.add(n, (1, c, 1, 1), out)

    def movement(self, nd, kind, ins, out, attrs, where) -> None:
        """Exact data movement, on integers (QOperator) or on a dequantized view (DQ -> ... -> Q)."""
        if ins[0] in self.ints:
            domain, src = "int", self.ints[ins[0]]
        elif ins[0] in self.fviews:
            domain, src = "float", self.fviews[ins[0]]
        else:
            raise QuantsimError(f"{where}: input {ins[0]!r} is not produced by the integer graph")
        shape, x_q = self.shapes[src], self.qp(src)
        if kind in ("Flatten", "Reshape"):
            if kind == "Flatten" and attrs.get("axis", 1) != 1:
                raise QuantsimError(f"{where}: Flatten axis {attrs.get('axis')} (only 1)")
            if kind == "Reshape":
                target = [int(v) for v in self.const(ins[1], where)]
                if len(target) != 2:
                    raise QuantsimError(f"{where}: reshape to {target} (only N×K imports)")
            k = int(np.prod(shape[1:]))
            n = Node(self.name("reshape"), "reshape", [src], x_q, attrs={"shape": [-1, k]}, source=nd.name or out)
            self.add(n, (1, k), out, domain)
            return
        if kind == "Slice":
            starts, ends = (self.const(i, where).astype(np.int64) for i in ins[1:3])
            axes = (self.const(ins[3], where).astype(np.int64) if len(ins) > 3 and ins[3]
                    else np.arange(len(starts)))
            steps = (self.const(ins[4], where).astype(np.int64) if len(ins) > 4 and ins[4]
                     else np.ones(len(starts), np.int64))
            step, begin = [1, 1], [0, 0]
            new = list(shape)
            for a, s0, e, st in zip(axes, starts, ends, steps):
                a = int(a) % len(shape)
                size = shape[a]
                s0 = int(s0) + size if s0 < 0 else int(s0)
                if st <= 0 or min(int(e), size) < size or (a < 2 and (s0 != 0 or st != 1)) or a > 3:
                    raise QuantsimError(f"{where}: only Slices keeping whole spatial axes with a step import")
                step[a - 2], begin[a - 2] = int(st), s0
                new[a] = len(range(s0, size, int(st)))
            n = Node(self.name("slice"), "strided_slice", [src], x_q, attrs={"step": step, "begin": begin},
                     source=nd.name or out)
            self.add(n, tuple(new), out, domain)
            return
        # Pad
        expect = 0 if domain == "float" else x_q.zero_point
        before, after = self.pad_amounts(ins, attrs, expect, where)
        if any(before[2:]) or any(after[2:]):
            if domain == "float" and not (before[1] or after[1]):
                # QDQ: pad(DQ(x), 0) is exact; the QuantizeLinear after it (same s, z) makes it pad(x, z)
                self.fpad_view[out] = (src, [before[2], after[2], before[3], after[3]])
                return
            if before[1] or after[1] or domain == "float":
                raise QuantsimError(f"{where}: pads {before + after} (spatial padding imports only on "
                                    "integers and without channel padding)")
            self.padded[out] = (src, [before[2], after[2], before[3], after[3]])
            return
        n = Node(self.name("pad"), "pad_channels", [src], x_q, attrs={"before": before[1], "after": after[1]},
                 source=nd.name or out)
        self.add(n, (shape[0], shape[1] + before[1] + after[1]) + tuple(shape[2:]), out, domain)

    def pad_amounts(self, ins, attrs, expect, where) -> tuple[list[int], list[int]]:
        """A constant-mode Pad's (before, after) on N, C, H, W; its value must be `expect`."""
        if attrs.get("mode", b"constant") not in (b"constant", "constant"):
            raise QuantsimError(f"{where}: Pad mode {attrs.get('mode')!r}")
        if len(ins) > 3 and ins[3]:
            raise QuantsimError(f"{where}: Pad with an axes input is not supported")
        pads = [int(v) for v in self.const(ins[1], where)]
        value = self.const(ins[2], where).ravel()[0] if len(ins) > 2 and ins[2] else 0
        if float(value) != float(expect):
            raise QuantsimError(f"{where}: pads with {value}, not the zero (point) {expect}")
        if len(pads) != 8 or pads[0] or pads[4] or min(pads) < 0:
            raise QuantsimError(f"{where}: pads {pads} (only non-negative C, H, W padding of N×C×H×W imports)")
        return pads[:4], pads[4:]

    def input_pad(self, nd, ins, out, attrs, where) -> None:
        """Float Pad (value 0) of the graph input, quantized next: folded into the conv that reads it."""
        before, after = self.pad_amounts(ins, attrs, 0, where)
        if before[1] or after[1]:
            raise QuantsimError(f"{where}: channel padding of the graph input is not supported")
        self.fpadded[out] = [before[2], after[2], before[3], after[3]]

    # -- QDQ node units -----------------------------------------------------------------------
    def qdq_op(self, nd, kind, ins, out, attrs, where) -> None:
        """A float op of a QDQ model. ONNX Runtime (CPU, default optimization level) fuses
        DequantizeLinear -> Conv/Gemm/MatMul/Add/GlobalAveragePool -> QuantizeLinear into
        QLinearConv/QGemm/QLinearMatMul/QLinearAdd/QLinearGlobalAveragePool, so the unit is
        recorded here and built with the QOperator formulas when its QuantizeLinear arrives."""
        uses = self.consumers.get(out, [])
        if out in self.graph_outputs or len(uses) != 1 or uses[0].op_type not in ("QuantizeLinear", "Relu", "Clip"):
            raise QuantsimError(f"{where}: output not (only) quantized; ONNX Runtime does not fuse this "
                                "DequantizeLinear node unit and runs it in float, which does not import bit-exactly")
        if kind in ("Relu", "Clip"):
            if ins[0] not in self.units and ins[0] not in self.fviews:
                raise QuantsimError(f"{where}: {kind} of a float tensor the integer graph does not hold")
            if kind == "Relu":
                act = ("Relu", 0.0, np.inf)
            elif len(ins) > 1:  # opset 11+: min, max inputs
                act = ("Clip", float(self.const(ins[1], where)) if ins[1] else -np.inf,
                       float(self.const(ins[2], where)) if len(ins) > 2 and ins[2] else np.inf)
            else:
                act = ("Clip", float(attrs.get("min", -np.inf)), float(attrs.get("max", np.inf)))
            if ins[0] in self.fviews:  # QDQKeepRemovableActivations: DQ -> Relu/Clip -> Q on its own
                self.units[out] = ("Act", nd, ins, attrs, where, [act])
                return
            unit = self.units.pop(ins[0])
            self.units[out] = unit[:-1] + (unit[-1] + [act],)
            return
        acts = [i for i in ins[:1] + (ins[1:2] if kind == "Add" else []) if i not in self.fviews
                and not (kind == "Conv" and i in self.padded_dq)]
        if acts:
            raise QuantsimError(f"{where}: input {acts[0]!r} is not a DequantizeLinear of the integer graph")
        if kind in ("Conv", "Gemm", "MatMul"):
            for i in ins[1:]:
                if i and i not in self.wdq:
                    raise QuantsimError(f"{where}: {i!r} is not a DequantizeLinear of an integer constant "
                                        "(float weights/bias: ONNX Runtime runs this op in float)")
        self.units[out] = (kind, nd, ins, attrs, where, [])

    @staticmethod
    def q_domain(y_q: QParams) -> tuple[np.float32, np.float32]:
        """ONNX Runtime's QDQ::QuantizeDomain (MinUpper, MaxLower): the float range whose
        quantization fills [q_min, q_max] (round half to even at the ends)."""
        qmin, qmax = (-128, 127) if y_q.signed else (0, 255)
        s, z = f32(y_q.scale), y_q.zero_point
        lo_b, hi_b = qmin - z, qmax - z
        lo = f32(f32(lo_b) + f32(0.5))
        if lo_b > 0 and lo_b % 2 == 1:  # C's biased % 2 == 1: positive odd only
            lo = np.nextafter(lo, f32(lo_b))
        hi = f32(f32(hi_b) - f32(0.5))
        if hi_b > 0 and hi_b % 2 == 1:
            hi = np.nextafter(hi, f32(hi_b))
        return f32(lo * s), f32(hi * s)

    def qdq_unit(self, fname: str, y_q: QParams, q_out: str, where: str) -> None:
        kind, nd, ins, attrs, uwhere, acts = self.units.pop(fname)
        for name, lo, hi in acts:
            # ONNX Runtime's ReluQuantFusion / ClipQuantFusion remove the activation only when the
            # QuantizeLinear's range already lies inside it; then it changes no integer either
            qlo, qhi = self.q_domain(y_q)
            qmin = -128 if y_q.signed else 0
            ok = y_q.zero_point == qmin if name == "Relu" else (lo <= qlo and qhi <= hi)
            if not ok:
                raise QuantsimError(f"{uwhere}: {name} [{lo}, {hi}] is narrower than its QuantizeLinear's range "
                                    f"({float(y_q.scale)}, {y_q.zero_point}); ONNX Runtime keeps it and runs the "
                                    "unit in float, which does not import bit-exactly")
        source = nd.name or fname
        if kind == "Act":  # activation removed: DQ -> Q
            src = self.fviews[ins[0]]
            x_q = self.qp(src)
            if self.qp_equal(x_q, y_q):
                self.ints[q_out] = src
                return
            n = Node(self.name("requantize"), "requantize", [src], y_q, attrs={"requant": "float32_dq"},
                     params={"requant_scale": np.array([f32(x_q.scale), f32(y_q.scale)], np.float32)},
                     source=source, in_q=x_q)
            self.add(n, self.shapes[src], q_out)
            return
        if kind == "Add":
            self.add_op(self.fviews[ins[0]], self.fviews[ins[1]], y_q, source, q_out, uwhere)
            return
        if kind == "GlobalAveragePool":
            self.gap_op(self.fviews[ins[0]], y_q, source, q_out)
            return
        w, ws, wz, axis = self.wdq[ins[1]]
        bias = None
        if len(ins) > 2 and ins[2]:
            bias, _, _, _ = self.wdq[ins[2]]
            if bias.dtype != np.int32:
                raise QuantsimError(f"{uwhere}: {bias.dtype} bias (QDQ fusion takes int32 only)")
        if w.dtype not in (np.int8, np.uint8):
            raise QuantsimError(f"{uwhere}: {w.dtype} weights (only int8 / uint8 import)")
        if kind == "Conv":
            if ws.size > 1 and axis != 0:
                raise QuantsimError(f"{uwhere}: per-channel weights on axis {axis} (only 0)")
            x, extra = self.padded_dq.get(ins[0]) or (self.fviews[ins[0]], [0, 0, 0, 0])
            self.conv_op(x, extra, w, ws, wz, bias, y_q, attrs, source, q_out, uwhere)
            return
        if kind == "Gemm":
            if attrs.get("transA", 0):
                raise QuantsimError(f"{uwhere}: transA=1 is not supported")
            if bias is not None and float(attrs.get("beta", 1.0)) != 1.0:
                raise QuantsimError(f"{uwhere}: beta {attrs.get('beta')} with a bias (only 1)")
            trans_b, alpha = bool(attrs.get("transB", 0)), float(attrs.get("alpha", 1.0))
        else:
            trans_b, alpha = False, 1.0
        if ws.size > 1 and axis % 2 != (0 if trans_b else 1):
            raise QuantsimError(f"{uwhere}: per-channel weights on axis {axis}, not the output axis")
        self.gemm_op(self.fviews[ins[0]], w if trans_b else w.T, ws, wz, bias, y_q, alpha, source, q_out, uwhere)

    def weight_q(self, ws: np.ndarray, wz: np.ndarray, n_out: int) -> QParams:
        per = ws.size > 1
        return QParams(8, wz.dtype == np.int8, ws.astype(np.float64) if per else np.float64(ws[0]),
                       0 if per else int(wz.ravel()[0]), narrow=False, axis=0 if per else None)

    def mac_params(self, weight, ws, wz, bias, x_q, y_q, alpha: float = 1.0) -> dict:
        n_out = weight.shape[0]
        ws = np.broadcast_to(ws.astype(np.float32).ravel(), (n_out,))
        sx, sy = f32(x_q.scale), f32(y_q.scale)
        lead = f32(f32(alpha) * sx) if alpha != 1.0 else sx
        scale = ((lead * ws).astype(np.float32) / sy).astype(np.float32)
        m, s = arith.quantize_multipliers(scale.astype(np.float64))
        p = {"weight": weight.astype(np.int64), "requant_scale": scale, "multiplier": m, "shift": s}
        if bias is not None:
            p["bias"] = bias.astype(np.int64).ravel()
        wz = wz.astype(np.int64).ravel()
        if np.any(wz != 0):
            p["weight_zero_point"] = np.int64(wz[0]) if np.all(wz == wz[0]) else np.broadcast_to(wz, (n_out,)).copy()
        return p

    def conv(self, nd, ins, out, attrs, where) -> None:
        extra = [0, 0, 0, 0]
        if ins[0] in self.padded:  # a Pad with the zero point: QLinearConv's own padding does the same
            x, extra = self.padded[ins[0]]
            self.check_q(x, ins[0], ins[1], ins[2], where)
        else:
            x = self.int_input(ins[0], where, ins[1], ins[2])
        y_q = self.act_q(ins[6], ins[7], where)
        w = self.const(ins[3], where)
        ws, wz = self.const(ins[4], where), self.const(ins[5], where)
        bias = self.const(ins[8], where) if len(ins) > 8 and ins[8] else None
        self.conv_op(x, extra, w, ws, wz, bias, y_q, attrs, nd.name or out, out, where)

    def conv_op(self, x, extra, w, ws, wz, bias, y_q, attrs, source, out, where) -> None:
        """QLinearConv: requant float32, scale float32(float32(s_x·s_w[c]) / s_y)."""
        x_q = self.qp(x)
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise QuantsimError(f"{where}: auto_pad {attrs['auto_pad']!r} (only explicit pads import)")
        kh, kw = w.shape[2:]
        stride = list(attrs.get("strides", [1, 1]))
        dil = list(attrs.get("dilations", [1, 1]))
        t, l, b, r = attrs.get("pads", [0, 0, 0, 0])
        t, b, l, r = t + extra[0], b + extra[1], l + extra[2], r + extra[3]
        groups = int(attrs.get("group", 1))
        _, c, h, wd = self.shapes[x]
        ho = arith.conv_output_size(h, kh, stride[0], t, b, dil[0])
        wo = arith.conv_output_size(wd, kw, stride[1], l, r, dil[1])
        params = self.mac_params(w, ws, wz, bias, x_q, y_q)
        n = Node(self.name("conv"), "conv2d", [x], y_q,
                 attrs={"requant": "float32", "stride": stride, "dilation": dil, "groups": groups,
                        "padding": [int(t), int(b), int(l), int(r)]},
                 params=params, source=source, weight_q=self.weight_q(ws.ravel(), wz, w.shape[0]), in_q=x_q)
        self.add(n, (1, w.shape[0], ho, wo), out)

    def gemm(self, nd, kind, ins, out, attrs, where) -> None:
        x = self.int_input(ins[0], where, ins[1], ins[2])
        if kind == "QGemm":
            if attrs.get("transA", 0):
                raise QuantsimError(f"{where}: transA=1 is not supported")
            if len(ins) < 9 or not ins[7]:
                raise QuantsimError(f"{where}: float output (no y_scale) is not supported")
            w = self.const(ins[3], where)
            w = w if attrs.get("transB", 0) else w.T
            ws, wz = self.const(ins[4], where), self.const(ins[5], where)
            bias = self.const(ins[6], where) if ins[6] else None
            y_q, alpha = self.act_q(ins[7], ins[8], where), float(attrs.get("alpha", 1.0))
        else:
            w = self.const(ins[3], where).T
            ws, wz = self.const(ins[4], where), self.const(ins[5], where)
            bias, y_q, alpha = None, self.act_q(ins[6], ins[7], where), 1.0
        self.gemm_op(x, w, ws, wz, bias, y_q, alpha, nd.name or out, out, where)

    def gemm_op(self, x, w, ws, wz, bias, y_q, alpha, source, out, where) -> None:
        """QGemm / QLinearMatMul, w as out×in: requant float32,
        scale float32(float32(float32(alpha·s_a)·s_b[c]) / s_y)."""
        x_q = self.qp(x)
        if len(self.shapes[x]) != 2:
            raise QuantsimError(f"{where}: input shape {self.shapes[x]} (only N×K imports)")
        params = self.mac_params(np.ascontiguousarray(w), ws, wz, bias, x_q, y_q, alpha)
        n = Node(self.name("linear"), "linear", [x], y_q, attrs={"requant": "float32"}, params=params,
                 source=source, weight_q=self.weight_q(ws.ravel(), wz, w.shape[0]), in_q=x_q)
        self.add(n, (1, w.shape[0]), out)


def read_preprocess(model, input_shape) -> tuple[Preprocess, str | None]:
    meta = {p.key: p.value for p in model.metadata_props}
    if PREPROCESS_KEY in meta:
        return Preprocess.from_json(json.loads(meta[PREPROCESS_KEY])), None
    c, h, w = input_shape
    note = (f"no '{PREPROCESS_KEY}' in the model's metadata: images are fed as [0, 1] floats "
            "(mean 0, std 1); set it for models trained on normalised inputs")
    return Preprocess((c, h, w), (0.0,) * c, (1.0,) * c, resize=None if h <= 64 else int(round(h / 0.875))), note


def load_onnx(path: str | Path) -> ImportedModel:
    path = Path(path)
    onnx = _onnx()
    if not path.is_file():
        raise QuantsimError(f"{path}: cannot read (no such file)")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is one clear message
        raise QuantsimError(f"{path}: not a readable ONNX model ({exc})") from None
    imp = _Importer(model, path)
    imp.run()
    outputs = imp.outputs or [imp.ints[o.name] for o in model.graph.output if o.name in imp.ints]
    if not outputs:
        raise QuantsimError(f"{path}: no integer output found")
    pre, note = read_preprocess(model, imp.input_shape)
    notes = imp.notes + ([note] if note else [])
    meta = {"acc_bits": 32, "source_format": "onnx", "source": str(path), "onnx_tensors": imp.tmap,
            "onnx_input": imp.input.name, "requant": "float32", "notes": notes}
    graph = Graph(imp.nodes, "image", imp.input_shape, outputs, meta)
    n_cls = int(np.prod(imp.shapes[outputs[0]][1:]))
    label_offset = 1 if n_cls == 1001 else 0
    graph.meta["label_offset"] = label_offset
    return ImportedModel(graph, pre, f"onnx:{path.stem}", str(path), n_cls, label_offset, notes)
