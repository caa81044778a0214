"""Importers: quantized models of other engines as integer_ref IR graphs.

    from quantsim.interop.imported import load_imported
    imp = load_imported("mobilenet_v2_1.0_224_quant.tflite")
    imp.graph            # integer_ref.ir.Graph, ready for both executors and the hardware model
    imp.preprocess       # how the model wants its images (see quantsim.zoo.preprocess)

The imported graph reproduces the engine's own integer arithmetic (requant modes
"gemmlowp" for TFLite, "float32" for ONNX Runtime), so the real engine is an oracle for it (quantsim.interop.oracles).
"""
from __future__ import annotations

from pathlib import Path

from quantsim.interop.imported_model import ImportedModel
from quantsim.interop.onnx_import import load_onnx
from quantsim.interop.tflite_import import load_tflite

__all__ = ["IMPORT_SUFFIXES", "ImportedModel", "is_importable", "load_imported"]

IMPORT_SUFFIXES = (".tflite", ".onnx")


def is_importable(spec: str | None) -> bool:
    return bool(spec) and Path(spec).suffix.lower() in IMPORT_SUFFIXES


def load_imported(path: str | Path) -> ImportedModel:
    path = Path(path)
    if path.suffix.lower() == ".tflite":
        return load_tflite(path)
    if path.suffix.lower() == ".onnx":
        return load_onnx(path)
    raise ValueError(f"{path}: no importer for {path.suffix!r} files (known: {', '.join(IMPORT_SUFFIXES)})")
