"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization", DFQ) on a FloatGraph.

For a pair of MAC layers c1 -> c2 where c2 is c1's only reader, with no activation between them
or a positively homogeneous one (ReLU: relu(x / s) = relu(x) / s for s > 0), output channel i
of c1 and input channel i of c2 can trade a factor s_i > 0:

    W1[i] /= s_i,  b1[i] /= s_i,  W2[:, i] *= s_i          (the pair computes the same function)

DFQ picks s_i = sqrt(r1_i / r2_i) = (1 / r2_i) · sqrt(r1_i · r2_i), with r1_i = max|W1[i]| (the
range of c1's output channel i) and r2_i = max|W2[:, i]| (c2's input channel i), so that both
ranges become sqrt(r1_i · r2_i) and per-channel / per-tensor weight quantization loses less.
Chains (c1 -> c2 -> c3) share c2: the pairs are swept again and again until no factor moves
(|log s_i| < tol) or `iterations` sweeps.

What is paired (everything else is left alone, so the function never changes):
- c1: conv or linear; c2: conv (any groups) reading c1 directly, or linear after linear. For a
  grouped c2 (depthwise: groups = channels), input channel i is column i mod (C_in / groups) of
  the output rows of its group i // (C_in / groups). Zero padding of c2 stays zero when scaled.
- c1's output read by c2 alone and not the graph output: a residual add or a second reader
  would meet channels scaled on one branch only.
- c1's fused activation: none or ReLU. ReLU6 is not positively homogeneous (relu6(x) / s clips
  at 6 / s, relu6(x / s) at 6), and the integer program clips a whole tensor at one bound, so a
  per-channel clip 6 / s_i has no place in it. relu6="skip" (the default) leaves such pairs
  unequalized: the network computes exactly the same function. relu6="relu" does what DFQ does
  for MobileNetV2: the ReLU6 of the paired layers becomes a ReLU first (the network then
  differs from the model where a pre-activation exceeds 6; the clip-free range is taken from
  calibration statistics like any ReLU output), and the pairs are equalized.
- Bias absorption (DFQ's high-bias absorption) is not done: it needs the BatchNorm β, γ of c1,
  which capture folds away, and it is not exact where c2 zero-pads its input (the border
  pixels would receive a -c that the padding does not carry).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from quantsim.errors import QuantsimError
from quantsim.graph.capture import FloatGraph, FNode
from quantsim.quant.config import EQUALIZE_RELU6 as RELU6_MODES
ITERATIONS = 20
TOL = 1e-6


@dataclass
class Equalized:
    graph: FloatGraph                         # a copy: equalized weights and biases
    relu6: str                                # the mode it ran with
    pairs: list[tuple[str, str]]              # (c1, c2) equalized
    relu6_replaced: list[str] = field(default_factory=list)  # c1 whose ReLU6 became a ReLU
    skipped_relu6: list[tuple[str, str]] = field(default_factory=list)
    sweeps: int = 0


def copy_graph(g: FloatGraph) -> FloatGraph:
    """A copy of g whose weights and biases can be edited in place (the original untouched)."""
    return FloatGraph([replace(n, inputs=list(n.inputs), attrs=dict(n.attrs),
                               weight=None if n.weight is None else n.weight.clone(),
                               bias=None if n.bias is None else n.bias.clone()) for n in g.nodes],
                      g.output, g.input_shape)


def _pairable(g: FloatGraph, c1: FNode) -> FNode | None:
    """c2 when (c1, c2) is a structurally equalizable pair (activation not yet judged)."""
    if not c1.is_mac or c1.weight is None or c1.name == g.output:
        return None
    readers = g.consumers(c1.name)
    if len(readers) != 1:
        return None
    c2 = readers[0]
    if c2.inputs != [c1.name] or c2.weight is None:
        return None
    if c2.op == "conv" and c1.op == "conv":
        if c2.weight.shape[1] * c2.attrs["groups"] != c1.weight.shape[0]:
            return None
        return c2
    if c2.op == "linear" and c1.op == "linear" and c2.weight.shape[1] == c1.weight.shape[0]:
        return c2
    return None


def pairs_of(g: FloatGraph, relu6: str = "skip") -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(equalizable pairs, pairs skipped for a ReLU6 between them) under the relu6 mode."""
    if relu6 not in RELU6_MODES:
        raise QuantsimError(f"equalize relu6 mode {relu6!r}: choose one of {', '.join(RELU6_MODES)}")
    pairs, skipped = [], []
    for c1 in g.nodes:
        c2 = _pairable(g, c1)
        if c2 is None:
            continue
        if c1.act in (None, "relu") or (c1.act == "relu6" and relu6 == "relu"):
            pairs.append((c1.name, c2.name))
        elif c1.act == "relu6":
            skipped.append((c1.name, c2.name))
    return pairs, skipped


def out_ranges(n: FNode) -> torch.Tensor:
    """max|W| per output channel (float64)."""
    return n.weight.double().abs().reshape(n.weight.shape[0], -1).amax(1)


def in_ranges(n: FNode) -> torch.Tensor:
    """max|W[:, i]| per input channel i (float64); grouped convs: the rows of i's group."""
    w = n.weight.double().abs()
    if n.op == "linear":
        return w.amax(0)
    groups = n.attrs["groups"]
    o, ig = w.shape[0], w.shape[1]
    per_col = w.reshape(groups, o // groups, ig, -1).amax(dim=(1, 3))  # [groups, ig]
    return per_col.reshape(groups * ig)


def scale_inputs(n: FNode, s: torch.Tensor) -> None:
    """W[:, i] *= s_i (input channel i; grouped convs through their group)."""
    w = n.weight.double()
    if n.op == "linear":
        n.weight = (w * s.reshape(1, -1)).to(n.weight.dtype)
        return
    groups = n.attrs["groups"]
    o, ig = w.shape[0], w.shape[1]
    sg = s.reshape(groups, 1, ig, *([1] * (w.dim() - 2)))
    n.weight = (w.reshape(groups, o // groups, *w.shape[1:]) * sg).reshape(w.shape).to(n.weight.dtype)


def _scale_outputs(n: FNode, s: torch.Tensor) -> None:
    """W[i] /= s_i, b[i] /= s_i."""
    w = n.weight.double()
    n.weight = (w / s.reshape(-1, *([1] * (w.dim() - 1)))).to(n.weight.dtype)
    if n.bias is not None:
        n.bias = (n.bias.double() / s).to(n.bias.dtype)


def equalize(g: FloatGraph, relu6: str = "skip", iterations: int = ITERATIONS, tol: float = TOL) -> Equalized:
    """A copy of g with every equalizable pair equalized (see the module docstring)."""
    pairs, skipped = pairs_of(g, relu6)
    g = copy_graph(g)
    replaced = []
    for a, _ in pairs:
        if g[a].act == "relu6":
            g[a].act = "relu"
            replaced.append(a)
    sweeps = 0
    for sweeps in range(1, iterations + 1):
        moved = 0.0
        for a, b in pairs:
            c1, c2 = g[a], g[b]
            r1, r2 = out_ranges(c1), in_ranges(c2)
            ok = (r1 > 0) & (r2 > 0)
            s = torch.ones_like(r1)
            s[ok] = torch.sqrt(r1[ok] * r2[ok]) / r2[ok]
            _scale_outputs(c1, s)
            scale_inputs(c2, s)
            moved = max(moved, float(s.log().abs().max()) if len(s) else 0.0)
        if moved < tol:
            break
    return Equalized(g, relu6, pairs, replaced, skipped, sweeps if pairs else 0)
