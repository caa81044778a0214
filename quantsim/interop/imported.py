"""Importers: quantized models of other engines as integer_ref IR graphs.

    from quantsim.interop.imported import load_imported
    imp = load_imported("mobilenet_v2_1.0_224_quant.tflite")
    imp.graph            # integer_ref.ir.Graph, ready for both executors and the hardware model
    imp.preprocess       # how the model wants its images (see quantsim.zoo.preprocess)

The imported graph reproduces the engine's own integer arithmetic (requant modes
"gemmlowp" for TFLite, "float32" for ONNX Runtime), so the real engine is an oracle for it (quantsim.interop.oracles).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from integer_ref.ir import Graph

from quantsim.zoo.preprocess import Preprocess

IMPORT_SUFFIXES = (".tflite", ".onnx")


@dataclass
class ImportedModel:
    graph: Graph
    preprocess: Preprocess
    arch: str                   # e.g. 'tflite:mobilenet_v2_1.0_224_quant'
    source: str                 # the file
    num_classes: int            # width of the graph output (TFLite ImageNet models: 1001)
    label_offset: int = 0       # output index of class 0 (1 where index 0 is 'background')
    notes: list[str] = field(default_factory=list)


def is_importable(spec: str | None) -> bool:
    return bool(spec) and Path(spec).suffix.lower() in IMPORT_SUFFIXES


def load_imported(path: str | Path) -> ImportedModel:
    path = Path(path)
    if path.suffix.lower() == ".tflite":
        from quantsim.interop.tflite_import import load_tflite

        return load_tflite(path)
    if path.suffix.lower() == ".onnx":
        from quantsim.interop.onnx_import import load_onnx

        return load_onnx(path)
    raise ValueError(f"{path}: no importer for {path.suffix!r} files (known: {', '.join(IMPORT_SUFFIXES)})")
