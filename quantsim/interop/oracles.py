"""Real engines as oracles: run the engine beside integer_ref and count differing elements.

    res = compare_tflite(graph, "model.tflite", images)      # images: float NCHW in [0, 1]
    res.mismatches[node]      # differing elements of that IR node vs the engine's tensor
    res.total_mismatches      # zero is the bar

TFLite runs through ai-edge-litert's Interpreter with the reference kernels
(OpResolverType.BUILTIN_REF; the default XNNPACK kernels round differently on some
outputs) and experimental_preserve_all_tensors, so every intermediate tensor can be read.
It is fed exactly the integer image integer_ref's input node produced (the raw pixels).

    res = compare_onnxruntime(graph, "model_q.onnx", images)  # images: the float tensors the model takes

ONNX Runtime (CPU provider, one thread) runs the imported model twice: as it is, for the
final output (the model's float logits against integer_ref's dequantized in float32), and
with every mapped integer tensor added as a graph output, for the per-layer comparison.
Both runs get the same float images integer_ref's quantize node read.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from integer_ref import executor as int_exec
from integer_ref.ir import Graph

from quantsim.errors import QuantsimError

ORACLES = ("tflite", "onnxruntime")


@dataclass
class OracleResult:
    engine: str
    images: int
    mismatches: dict[str, int]           # per IR node with an engine tensor
    elements: dict[str, int]             # compared elements per node
    engine_outputs: list[np.ndarray] = field(default_factory=list)  # the engine's final output per image
    seconds_engine: float = 0.0

    def tally(self, name: str, ours: np.ndarray, theirs: np.ndarray) -> None:
        """Count one tensor's differing elements (a shape mismatch counts as all of them)."""
        if ours.shape != theirs.shape:
            self.mismatches[name] += int(max(ours.size, theirs.size))
        else:
            self.mismatches[name] += int(np.count_nonzero(ours != theirs))
        self.elements[name] += int(ours.size)

    @property
    def total_mismatches(self) -> int:
        return int(sum(self.mismatches.values()))

    @property
    def total_elements(self) -> int:
        return int(sum(self.elements.values()))


def tflite_interpreter(path: str | Path, preserve_all: bool = True, num_threads: int = 1):
    """ai-edge-litert Interpreter on TFLite's reference kernels."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType  # optional extra [tflite]
    except ImportError as exc:
        raise QuantsimError("--oracle tflite needs the `ai-edge-litert` package (pip install ai-edge-litert)") from exc
    interp = Interpreter(model_path=str(path), num_threads=num_threads,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                         experimental_preserve_all_tensors=preserve_all)
    interp.allocate_tensors()
    return interp


def _to_nhwc(t: np.ndarray) -> np.ndarray:
    return t.transpose(0, 2, 3, 1) if t.ndim == 4 else t


def tflite_run(interp, pixels_nchw: np.ndarray, tensor_ids: dict[str, int] | None = None):
    """One image (1, C, H, W integer pixels) -> (final output, {node: engine tensor (NHWC)})."""
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], _to_nhwc(pixels_nchw).astype(inp["dtype"]))
    interp.invoke()
    out = interp.get_tensor(interp.get_output_details()[0]["index"]).copy()
    tensors = {name: interp.get_tensor(tid) for name, tid in (tensor_ids or {}).items()}
    return out, tensors


def compare_tflite(graph: Graph, path: str | Path, images: np.ndarray,
                   ref_tensors: dict[str, np.ndarray] | None = None) -> OracleResult:
    """integer_ref vs TFLite's reference kernels on every mapped tensor of every image."""
    tmap = graph.meta.get("tflite_tensors")
    if not tmap:
        raise QuantsimError("--oracle tflite needs a graph imported from a .tflite model")
    if ref_tensors is None:
        ref_tensors = int_exec.run(graph, np.asarray(images, np.float32), keep="all").tensors
    interp = tflite_interpreter(path)
    first = graph.nodes[0].name
    n = len(ref_tensors[first])
    res = OracleResult("tflite", n, {k: 0 for k in tmap}, {k: 0 for k in tmap})
    t0 = time.perf_counter()
    for i in range(n):
        out, tensors = tflite_run(interp, ref_tensors[first][i:i + 1], tmap)
        res.engine_outputs.append(out[0])
        for name, theirs in tensors.items():
            res.tally(name, _to_nhwc(ref_tensors[name][i:i + 1]), theirs.astype(np.int64))
    res.seconds_engine = time.perf_counter() - t0
    return res


def ort_session(model_or_path, num_threads: int = 1):
    try:
        import onnxruntime as ort  # optional extra [onnx]
    except ImportError as exc:
        raise QuantsimError("--oracle onnxruntime needs the `onnxruntime` package (pip install onnxruntime)") from exc
    so = ort.SessionOptions()
    so.intra_op_num_threads = num_threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # Exact int32 sums on every x86 CPU: without VNNI, MLAS' default U8S8 kernels add pairs of
    # u8*s8 products in int16 with saturation (vpmaddubsw); this option selects its U8U8 path.
    so.add_session_config_entry("session.x64quantprecision", "1")
    src = model_or_path if isinstance(model_or_path, (bytes, str)) else str(model_or_path)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def _with_outputs(path: str | Path, graph: Graph, tmap: dict[str, str]) -> bytes:
    """The model with every mapped integer tensor as an extra graph output."""
    import onnx  # optional extra [onnx]

    model = onnx.load(str(path))
    have = {o.name for o in model.graph.output}
    for name, tensor in tmap.items():
        if tensor in have:
            continue
        elem = onnx.TensorProto.INT8 if graph[name].out.signed else onnx.TensorProto.UINT8
        model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, elem, None))
        have.add(tensor)
    return model.SerializeToString()


def compare_onnxruntime(graph: Graph, path: str | Path, images: np.ndarray,
                        ref_tensors: dict[str, np.ndarray] | None = None) -> OracleResult:
    """integer_ref vs ONNX Runtime on every mapped tensor and the final output of every image."""
    tmap = graph.meta.get("onnx_tensors")
    if not tmap:
        raise QuantsimError("--oracle onnxruntime needs a graph imported from an .onnx model")
    images = np.asarray(images, np.float32)
    if ref_tensors is None:
        ref_tensors = int_exec.run(graph, images, keep="all").tensors
    plain = ort_session(path)
    inst = ort_session(_with_outputs(path, graph, tmap))
    in_name = plain.get_inputs()[0].name
    fixed = plain.get_inputs()[0].shape[0]
    step = 1 if isinstance(fixed, int) else len(images)
    out_names = [o.name for o in inst.get_outputs()]
    n = len(images)
    res = OracleResult("onnxruntime", n, {k: 0 for k in tmap}, {k: 0 for k in tmap})
    out_node = graph[graph.outputs[0]]
    res.mismatches["<graph output>"] = res.elements["<graph output>"] = 0
    t0 = time.perf_counter()
    for i in range(0, n, step):
        x = images[i:i + step]
        final = plain.run(None, {in_name: x})[0]
        ours = ref_tensors[out_node.name][i:i + step]
        if final.dtype == np.float32:  # DequantizeLinear: float32(q - z) * s
            ours = (ours - out_node.out.zero_point).astype(np.float32) * np.float32(out_node.out.scale)
        res.engine_outputs.extend(list(final))
        res.tally("<graph output>", ours, final)
        got = dict(zip(out_names, inst.run(out_names, {in_name: x})))
        for name, tensor in tmap.items():
            res.tally(name, ref_tensors[name][i:i + step], got[tensor].astype(np.int64))
    res.seconds_engine = time.perf_counter() - t0
    return res
