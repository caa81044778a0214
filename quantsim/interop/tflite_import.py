"""Import an int8/uint8 TFLite model into the integer IR, reproducing TFLite's reference kernels.

The flatbuffer is read with the `tflite` package (the schema's generated Python bindings).
Every op becomes the IR op whose "gemmlowp" semantics are TFLite's reference kernel:

  CONV_2D, DEPTHWISE_CONV_2D (any depth multiplier), FULLY_CONNECTED -> conv2d / linear,
      requant gemmlowp, multiplier QuantizeMultiplier(double(s_in)·double(s_w[c]) / double(s_out))
      (uint8 per-tensor: double(float32(s_in·s_w)) / double(s_out), as TFLite computes it),
      uint8 weights keep their zero point, fused RELU/RELU6/RELU_N1_TO_1 as the clamp
      TFLite's CalculateActivationRangeQuantized computes, SAME/VALID as explicit padding
  AVERAGE_POOL_2D  -> avgpool, requant round_div (raw window sum / in-bounds count)
  MEAN over H, W   -> global_avgpool, requant gemmlowp, 1/(H·W) folded into the Q31 multiplier
                      the way TFLite's reference QuantizedMeanOrSum folds it (mean_multiplier)
  ADD              -> add, requant gemmlowp (left shift 20, per-input and output multipliers)
  QUANTIZE int->int -> requantize; RESHAPE (spatial dims of 1) -> reshape
  SOFTMAX, DEQUANTIZE -> the integer graph stops before them: graph.outputs is their input
                      (the logits). TFLite's uint8 softmax is a fixed-point exp we do not model.

Layout: TFLite is NHWC, the IR NCHW; weights are transposed on import. The graph input is a
float image in [0, 1] (preprocess mean 0, std 1); the first node quantizes it to the raw
pixel p = rint(x·255) (int8 inputs: p - 128) and labels that tensor with the model's input
quantization (MobileNets: scale 1/128, zero point 128, i.e. (p - 128) / 128 = mean/std
127.5-style normalisation). graph.meta['tflite_tensors'] maps IR nodes to TFLite tensors.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from integer_ref import arith
from integer_ref.ir import Graph, Node, QParams

from quantsim.errors import QuantsimError
from quantsim.zoo.preprocess import Preprocess
from quantsim.interop.imported_model import ImportedModel

_TYPES = {"UINT8": (np.uint8, 8, False), "INT8": (np.int8, 8, True), "INT32": (np.int32, 32, True),
          "INT16": (np.int16, 16, True), "INT64": (np.int64, 64, True), "FLOAT32": (np.float32, 32, True)}


def _tfl():
    try:
        import tflite  # noqa: F401  (optional extra [tflite])
    except ImportError as exc:  # pragma: no cover - dependency note
        raise QuantsimError("importing .tflite models needs the `tflite` package (pip install tflite)") from exc
    return tflite


def _enum_names(cls) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


class _Reader:
    """The parts of the flatbuffer the importer needs, as plain NumPy values."""

    def __init__(self, buf: bytes, path: Path):
        tfl = _tfl()
        self.tfl = tfl
        self.path = path
        try:
            self.model = tfl.Model.GetRootAsModel(buf, 0)
            self.sg = self.model.Subgraphs(0)
        except Exception as exc:  # noqa: BLE001 - any parse failure is one clear message
            raise QuantsimError(f"{path}: not a readable TFLite flatbuffer ({exc})") from None
        self.op_names = _enum_names(tfl.BuiltinOperator)
        self.type_names = _enum_names(tfl.TensorType)

    def tensor(self, i: int):
        return self.sg.Tensors(int(i))

    def tensor_type(self, i: int) -> str:
        return self.type_names[self.tensor(i).Type()]

    def shape(self, i: int) -> tuple[int, ...]:
        return tuple(int(v) for v in self.tensor(i).ShapeAsNumpy())

    def quant(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(scales float32, zero points int64, quantized dimension)."""
        q = self.tensor(i).Quantization()
        if q is None or q.ScaleLength() == 0:
            raise QuantsimError(f"{self.path}: tensor {self.name(i)!r} is not quantized")
        return (q.ScaleAsNumpy().astype(np.float32), q.ZeroPointAsNumpy().astype(np.int64),
                int(q.QuantizedDimension()))

    def name(self, i: int) -> str:
        return self.tensor(i).Name().decode(errors="replace")

    def data(self, i: int) -> np.ndarray:
        t = self.tensor(i)
        raw = self.model.Buffers(t.Buffer()).DataAsNumpy()
        if isinstance(raw, int) or raw is None or len(raw) == 0:
            raise QuantsimError(f"{self.path}: tensor {self.name(i)!r} has no constant data")
        dtype = _TYPES[self.tensor_type(i)][0]
        return np.frombuffer(raw.tobytes(), dtype=dtype).reshape(self.shape(i))

    def op_name(self, op) -> str:
        oc = self.model.OperatorCodes(op.OpcodeIndex())
        return self.op_names.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), "CUSTOM")

    def options(self, op, cls_name: str):
        table = op.BuiltinOptions()
        opt = getattr(self.tfl, cls_name)()
        opt.Init(table.Bytes, table.Pos)
        return opt


def _qparams(r: _Reader, tid: int) -> QParams:
    ttype = r.tensor_type(tid)
    if ttype not in ("UINT8", "INT8"):
        raise QuantsimError(f"{r.path}: tensor {r.name(tid)!r} is {ttype}; only int8/uint8 activations import")
    scales, zps, _ = r.quant(tid)
    _, bits, signed = _TYPES[ttype]
    return QParams(bits, signed, np.float64(scales[0]), int(zps[0]), narrow=False)


def activation_range(act: str, qp: QParams) -> list[int]:
    """TFLite CalculateActivationRangeQuantized: zp + round-half-away(f / scale) in float32."""
    def q(f: float) -> int:
        return qp.zero_point + int(arith.round_half_away(np.float32(f) / np.float32(qp.scale)))
    if act == "NONE":
        return [qp.qmin, qp.qmax]
    if act == "RELU":
        return [max(qp.qmin, q(0.0)), qp.qmax]
    if act == "RELU6":
        return [max(qp.qmin, q(0.0)), min(qp.qmax, q(6.0))]
    if act == "RELU_N1_TO_1":
        return [max(qp.qmin, q(-1.0)), min(qp.qmax, q(1.0))]
    raise QuantsimError(f"unsupported fused activation {act}")


def mean_multiplier(s_in: float, s_out: float, count: int) -> tuple[np.ndarray, np.ndarray]:
    """TFLite's integer MEAN (reference QuantizedMeanOrSum): QuantizeMultiplier(s_in / s_out),
    then 1/count folded in: c = min(floor(log2 count), 32, 31 + exponent),
    M' = (M << c) // count, exponent' = exponent - c. Returns (M', right shift -exponent')."""
    m, e = arith.quantize_multiplier_q31(float(np.float32(s_in)) / float(np.float32(s_out)))
    c = min(count.bit_length() - 1, 32, 31 + e)
    return np.int64((m << c) // count), np.int64(-(e - c))


def _same_or_valid(r: _Reader, padding: int, in_hw, k_hw, s_hw, d_hw) -> list[int]:
    if padding == r.tfl.Padding.VALID:
        return [0, 0, 0, 0]
    t, b = arith.tf_same_padding(in_hw[0], k_hw[0], s_hw[0], d_hw[0])
    left, right = arith.tf_same_padding(in_hw[1], k_hw[1], s_hw[1], d_hw[1])
    return [t, b, left, right]


def load_tflite(path: str | Path) -> ImportedModel:
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise QuantsimError(f"{path}: cannot read ({exc.strerror})") from None
    r = _Reader(buf, path)
    act_names = _enum_names(r.tfl.ActivationFunctionType)
    sg = r.sg
    if sg.InputsLength() != 1:
        raise QuantsimError(f"{path}: {sg.InputsLength()} inputs; only single-image models import")
    in_tid = int(sg.InputsAsNumpy()[0])
    in_shape = r.shape(in_tid)
    if len(in_shape) != 4:
        raise QuantsimError(f"{path}: input shape {in_shape} is not NHWC")
    _, h, w, c = in_shape
    in_q = _qparams(r, in_tid)
    nodes: list[Node] = []
    names: dict[int, str] = {}      # TFLite tensor -> IR node producing it
    shapes: dict[int, tuple] = {}   # TFLite tensor -> NHWC shape
    tmap: dict[str, int] = {}
    nodes.append(Node("input", "quantize", ["image"], in_q, source=r.name(in_tid),
                      attrs={"scale": 1.0 / 255.0, "zero_point": in_q.qmin}))
    names[in_tid], shapes[in_tid], tmap["input"] = "input", in_shape, in_tid
    outputs: list[str] = []
    notes: list[str] = []
    qp_of = lambda name: next(n.out for n in nodes if n.name == name)

    for k in range(sg.OperatorsLength()):
        op = sg.Operators(k)
        kind = r.op_name(op)
        ins = [int(i) for i in op.InputsAsNumpy()]
        out_tid = int(op.OutputsAsNumpy()[0])
        where = f"{path.name}: op {k} {kind} ({r.name(out_tid)!r})"
        if kind in ("SOFTMAX", "DEQUANTIZE"):
            if ins[0] not in names:
                raise QuantsimError(f"{where}: input not produced by the integer graph")
            outputs.append(names[ins[0]])
            notes.append(f"integer graph stops before {kind} (op {k}); graph output = its input {names[ins[0]]!r}")
            continue
        if ins[0] not in names:
            if outputs:
                continue  # an op after the stop (e.g. QUANTIZE of the softmax output)
            raise QuantsimError(f"{where}: its input is not produced by an earlier op")
        x_name = names[ins[0]]
        x_q = qp_of(x_name)
        x_shape = shapes[ins[0]]
        name = f"op{k:03d}_{kind.lower()}"
        out_shape = r.shape(out_tid)
        attrs: dict = {}
        params: dict = {}
        wq = None
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            y_q = _qparams(r, out_tid)
            wt = r.data(ins[1]).astype(np.int64)
            w_scales, w_zps, _ = r.quant(ins[1])
            if kind == "CONV_2D":
                o = r.options(op, "Conv2DOptions")
                weight = wt.transpose(0, 3, 1, 2)  # OHWI -> OIHW
                groups = 1
            elif kind == "DEPTHWISE_CONV_2D":
                o = r.options(op, "DepthwiseConv2DOptions")
                weight = wt.transpose(3, 0, 1, 2)  # 1HW(C·m) -> (C·m)1HW
                groups = x_shape[3]
                if weight.shape[0] != groups * max(o.DepthMultiplier(), 1) and o.DepthMultiplier() > 0:
                    raise QuantsimError(f"{where}: depth multiplier {o.DepthMultiplier()} does not match the filter")
            else:
                o = r.options(op, "FullyConnectedOptions")
                weight = wt
                groups = 1
            n_out = weight.shape[0]
            s_w = np.broadcast_to(w_scales.astype(np.float64), (n_out,))
            if r.tensor_type(ins[0]) == "UINT8":  # GetQuantizedConvolutionMultipler: float32 product
                real = np.float64(np.float32(x_q.scale) * s_w.astype(np.float32)) / np.float64(np.float32(y_q.scale))
            else:  # PopulateConvolutionQuantizationParams per channel: all double
                real = np.float64(np.float32(x_q.scale)) * s_w / np.float64(np.float32(y_q.scale))
            params["multiplier"], params["shift"] = arith.quantize_multipliers_q31(real)
            params["weight"] = weight
            if len(ins) > 2 and ins[2] >= 0:
                params["bias"] = r.data(ins[2]).astype(np.int64)
            if np.any(w_zps != 0):
                params["weight_zero_point"] = (np.int64(w_zps[0]) if np.all(w_zps == w_zps[0])
                                               else np.broadcast_to(w_zps, (n_out,)).copy())
            wtype = r.tensor_type(ins[1])
            wq = QParams(8, wtype == "INT8", w_scales.astype(np.float64) if w_scales.size > 1 else np.float64(w_scales[0]),
                         int(w_zps[0]) if np.all(w_zps == w_zps[0]) else 0, narrow=False,
                         axis=0 if w_scales.size > 1 else None)
            attrs = {"requant": "gemmlowp",
                     "clamp": activation_range(act_names[o.FusedActivationFunction()], y_q)}
            if kind == "FULLY_CONNECTED":
                if len(x_shape) != 2:
                    if len(x_shape) == 4 and x_shape[1] == x_shape[2] == 1:
                        flat = f"{name}_flatten"
                        nodes.append(Node(flat, "reshape", [x_name], x_q, attrs={"shape": [-1, x_shape[3]]}))
                        x_name, x_shape = flat, (x_shape[0], x_shape[3])
                    else:
                        raise QuantsimError(f"{where}: input shape {x_shape} (only N×K or N×1×1×K import)")
                op_ir = "linear"
            else:
                stride = [o.StrideH(), o.StrideW()]
                dil = [o.DilationHFactor(), o.DilationWFactor()]
                attrs.update(stride=stride, dilation=dil, groups=groups,
                             padding=_same_or_valid(r, o.Padding(), x_shape[1:3], weight.shape[2:], stride, dil))
                op_ir = "conv2d"
            node = Node(name, op_ir, [x_name], y_q, attrs=attrs, params=params, source=r.name(out_tid),
                        weight_q=wq, in_q=x_q)
        elif kind == "AVERAGE_POOL_2D":
            y_q = _qparams(r, out_tid)
            if (float(np.float32(y_q.scale)) != float(np.float32(x_q.scale)) or y_q.zero_point != x_q.zero_point):
                raise QuantsimError(f"{where}: input and output quantization differ (TFLite requires them equal)")
            o = r.options(op, "Pool2DOptions")
            kernel, stride = [o.FilterHeight(), o.FilterWidth()], [o.StrideH(), o.StrideW()]
            attrs = {"kernel": kernel, "stride": stride, "requant": "round_div",
                     "padding": _same_or_valid(r, o.Padding(), x_shape[1:3], kernel, stride, [1, 1]),
                     "clamp": activation_range(act_names[o.FusedActivationFunction()], y_q)}
            node = Node(name, "avgpool", [x_name], y_q, attrs=attrs, source=r.name(out_tid), in_q=x_q)
        elif kind == "MEAN":
            y_q = _qparams(r, out_tid)
            axes = sorted(int(a) % 4 for a in r.data(ins[1]).ravel())
            o = r.options(op, "ReducerOptions")
            if axes != [1, 2] or r.tensor_type(ins[0]) != "INT8":
                raise QuantsimError(f"{where}: only int8 MEAN over H and W imports (axes {axes}, "
                                    f"{r.tensor_type(ins[0])})")
            count = int(x_shape[1] * x_shape[2])
            params["multiplier"], params["shift"] = mean_multiplier(x_q.scale, y_q.scale, count)
            attrs = {"requant": "gemmlowp", "count": count}
            node = Node(name, "global_avgpool", [x_name], y_q, attrs=attrs, params=params,
                        source=r.name(out_tid), in_q=x_q)
            if not o.KeepDims():
                nodes.append(node)
                name = f"{name}_squeeze"
                node = Node(name, "reshape", [node.name], y_q, attrs={"shape": [-1, x_shape[3]]})
        elif kind == "ADD":
            y_q = _qparams(r, out_tid)
            if ins[1] not in names:
                raise QuantsimError(f"{where}: adding a constant is not supported")
            b_q = qp_of(names[ins[1]])
            s1, s2, so = (np.float32(v.scale) for v in (x_q, b_q, y_q))
            twice_max = np.float64(np.float32(2) * max(s1, s2))
            reals = np.array([np.float64(s1) / twice_max, np.float64(s2) / twice_max,
                              twice_max / np.float64(np.float32(2**20) * so)])
            params["multiplier"], params["shift"] = arith.quantize_multipliers_q31(reals)
            o = r.options(op, "AddOptions")
            attrs = {"requant": "gemmlowp", "left_shift": 20,
                     "clamp": activation_range(act_names[o.FusedActivationFunction()], y_q)}
            node = Node(name, "add", [x_name, names[ins[1]]], y_q, attrs=attrs, params=params,
                        source=r.name(out_tid), in_q=x_q)
        elif kind == "RESHAPE":
            spatial_ones = lambda s: len(s) == 2 or (len(s) == 4 and s[1] == s[2] == 1)
            if not (spatial_ones(x_shape) and spatial_ones(out_shape)):
                raise QuantsimError(f"{where}: reshape {x_shape} -> {out_shape} (only with spatial dims of 1)")
            shape = [-1, out_shape[-1]] if len(out_shape) == 2 else [-1, out_shape[3], 1, 1]
            node = Node(name, "reshape", [x_name], x_q, attrs={"shape": shape}, source=r.name(out_tid))
        elif kind == "QUANTIZE":
            y_q = _qparams(r, out_tid)
            real = np.float64(np.float32(x_q.scale)) / np.float64(np.float32(y_q.scale))
            params["multiplier"], params["shift"] = arith.quantize_multipliers_q31(np.array(real))
            node = Node(name, "requantize", [x_name], y_q, attrs={"requant": "gemmlowp"}, params=params,
                        source=r.name(out_tid), in_q=x_q)
        else:
            raise QuantsimError(f"{where}: unsupported TFLite op {kind}")
        nodes.append(node)
        names[out_tid], shapes[out_tid], tmap[node.name] = node.name, out_shape, out_tid
    if not outputs:
        outputs = [names[int(t)] for t in sg.OutputsAsNumpy() if int(t) in names]
    if not outputs:
        raise QuantsimError(f"{path}: no integer output found")
    meta = {"acc_bits": 32, "source_format": "tflite", "source": str(path), "tflite_tensors": tmap,
            "requant": "gemmlowp", "notes": notes}
    graph = Graph(nodes, "image", (c, h, w), outputs, meta)
    n_cls = int(np.prod(shapes[tmap[outputs[0]]][1:]))
    label_offset = 1 if n_cls == 1001 else 0
    graph.meta["label_offset"] = label_offset
    pre = Preprocess((c, h, w), (0.0,) * c, (1.0,) * c, resize=int(round(h / 0.875)), interpolation="bilinear")
    return ImportedModel(graph, pre, f"tflite:{path.stem}", str(path), n_cls, label_offset, notes)
