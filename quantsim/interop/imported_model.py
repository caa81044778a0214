"""An imported (already quantized) model: the integer program with what a run needs beside it."""
from __future__ import annotations

from dataclasses import dataclass, field

from integer_ref.ir import Graph
from quantsim.zoo.preprocess import Preprocess

__all__ = ["ImportedModel"]


@dataclass
class ImportedModel:
    graph: Graph
    preprocess: Preprocess
    arch: str                   # e.g. 'tflite:mobilenet_v2_1.0_224_quant'
    source: str                 # the file
    num_classes: int            # width of the graph output (TFLite ImageNet models: 1001)
    label_offset: int = 0       # output index of class 0 (1 where index 0 is 'background')
    notes: list[str] = field(default_factory=list)
