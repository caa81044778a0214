"""The integer weight codes a rounding method (GPTQ, AdaRound, reconstruction) gives a MAC layer,
and a float graph carrying them: what lowering uses instead of rounding to nearest."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from quantsim.graph.capture import FloatGraph


@dataclass
class LayerCodes:
    codes: np.ndarray     # int64, the weight's shape
    scale: np.ndarray     # float64, (O,) per channel or () per tensor: the lowering's own scale
    bits: int
    seconds: float


def with_codes(g: FloatGraph, codes: dict[str, LayerCodes]) -> FloatGraph:
    """A copy of g whose MAC nodes carry attrs['weight_codes'] (what lower uses)."""
    nodes = []
    for n in g.nodes:
        attrs = dict(n.attrs)
        if n.name in codes:
            lc = codes[n.name]
            attrs["weight_codes"] = {"codes": lc.codes, "scale": lc.scale, "bits": lc.bits}
        nodes.append(replace(n, inputs=list(n.inputs), attrs=attrs))
    return FloatGraph(nodes, g.output, g.input_shape)
