"""Post-LayerNorm channel reparameterization (RepQ-ViT, Li et al., ICCV 2023) on a FloatGraph.

The outputs of a ViT's LayerNorms differ from channel to channel by orders of magnitude (a few
channels carry ranges tens of times the median), so one per-tensor activation scale, what the
integer program holds, spends its codes on those few channels. RepQ-ViT quantizes them per
channel during calibration and then reparameterizes the per-channel scales s_c into one
per-tensor scale s̃ = mean(s_c), folding r_c = s_c / s̃ into the LayerNorm's affine (γ/r, β/r)
and into the input channels of the linears that read it (W[:, c]·r_c), and the per-channel zero
points into β and the readers' biases.

Our activations are symmetric (zero point 0), so the zero-point part becomes a centre shift.
With, per channel c of a LayerNorm output on the calibration images, lo_c = min, hi_c = max,

    m_c = (hi_c + lo_c) / 2,   h_c = (hi_c - lo_c) / 2     (centre and half range)
    r_c = h_c / mean_c(h_c)                                (RepQ's s_c / s̃ with s_c ∝ h_c)

the rewrite is, for the LayerNorm (γ, β) and each reader y = W x + b,

    γ'_c = γ_c / r_c,   β'_c = (β_c - m_c) / r_c,   W'[:, c] = W[:, c]·r_c,   b' = b + W m

so x'_c = (x_c - m_c) / r_c and W' x' + b' = W x + b: the network computes the same function
(to float rounding), and every channel of x' spans [-mean(h), mean(h)] on the calibration
images: a per-tensor scale now fits every channel. The weights absorb the spread instead
(per-output-channel weight scales see columns multiplied by r_c), which is RepQ-ViT's trade.
A channel with h_c = 0 keeps r_c = 1.

What is rewritten: a LayerNorm with an affine whose every reader is a linear reading it as its
input, directly or through ``take`` along a non-channel axis (the class token before the head);
a LayerNorm with another reader (ConvNeXt's permute back to NCHW, a residual) is left alone and
listed in ``skipped``. The factors are computed once from the calibration batches, before the
statistics that lowering uses are taken (quantsim.run.stages.prepare), as equalization is.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from quantsim.errors import QuantsimError
from quantsim.graph.capture import FloatGraph, FNode, run_float
from quantsim.quant.equalize import copy_graph, scale_inputs


@dataclass
class Reparameterized:
    graph: FloatGraph                         # a copy: LayerNorm affines and reader weights rewritten
    norms: list[str]                          # the LayerNorms rewritten
    readers: dict[str, list[str]]             # LayerNorm -> the linears that absorbed its factors
    factors: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)   # r_c per LayerNorm
    centres: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)   # m_c per LayerNorm
    skipped: list[tuple[str, str]] = field(default_factory=list)                 # (LayerNorm, why)


def _readers(g: FloatGraph, ln: FNode) -> tuple[list[FNode], str]:
    """The linears that read the LayerNorm's output (through takes along non-channel axes), or
    ([], why not) when some reader is anything else."""
    out, frontier = [], [ln.name]
    ndim = {ln.name: 3}  # tokens (N, L, C); a take drops one axis
    while frontier:
        name = frontier.pop()
        if name == g.output:
            return [], "it is the graph output"
        for c in g.consumers(name):
            if c.op == "linear" and c.inputs == [name]:
                out.append(c)
            elif c.op == "take" and c.attrs["axis"] not in (-1, ndim[name] - 1):
                ndim[c.name] = ndim[name] - 1
                frontier.append(c.name)
            else:
                return [], f"its output is read by {c.op} {c.name}"
    return (out, "") if out else ([], "no linear reads it")


def candidates(g: FloatGraph) -> tuple[dict[str, list[FNode]], list[tuple[str, str]]]:
    """{LayerNorm: its readers} for every rewritable LayerNorm, and [(LayerNorm, why)] for the rest."""
    ok, skipped = {}, []
    for n in g.nodes:
        if n.op != "layernorm":
            continue
        if n.weight is None or n.bias is None:
            skipped.append((n.name, "it has no affine"))
            continue
        readers, why = _readers(g, n)
        if readers:
            ok[n.name] = readers
        else:
            skipped.append((n.name, why))
    return ok, skipped


@torch.no_grad()
def channel_ranges(g: FloatGraph, names, batches) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per channel (last axis) min and max (float64) of the named nodes' outputs over the batches."""
    want = set(names)
    lo: dict[str, torch.Tensor] = {}
    hi: dict[str, torch.Tensor] = {}

    def observe(n: FNode, y: torch.Tensor) -> None:
        if n.name in want:
            flat = y.detach().double().reshape(-1, y.shape[-1])
            a, b = flat.amin(0), flat.amax(0)
            lo[n.name] = a if n.name not in lo else torch.minimum(lo[n.name], a)
            hi[n.name] = b if n.name not in hi else torch.maximum(hi[n.name], b)

    for x in batches:
        run_float(g, x, observe=observe)
    return {k: (lo[k], hi[k]) for k in lo}


def factors_from_ranges(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(r, m): r_c = h_c / mean(h), m_c = (hi_c + lo_c) / 2 with h_c = (hi_c - lo_c) / 2 (float64)."""
    m = (hi + lo) / 2
    h = (hi - lo) / 2
    mean = h[h > 0].mean() if bool((h > 0).any()) else torch.tensor(1.0, dtype=torch.float64)
    r = torch.where(h > 0, h / mean, torch.ones_like(h))
    return r, m


def reparameterize(g: FloatGraph, batches, require: bool = True) -> Reparameterized:
    """A copy of g with every rewritable LayerNorm reparameterized from the ranges its outputs
    take on `batches` (see the module docstring). require: refuse a graph with none to rewrite."""
    ok, skipped = candidates(g)
    if not ok and require:
        why = "; ".join(f"{a}: {b}" for a, b in skipped) or "the model has no LayerNorm"
        raise QuantsimError(f"--reparam-ln needs a LayerNorm whose outputs only linear layers read ({why})")
    ranges = channel_ranges(g, ok, batches)
    g = copy_graph(g)
    factors, centres = {}, {}
    for name, readers in ok.items():
        r, m = factors_from_ranges(*ranges[name])
        ln = g[name]
        dtype = ln.weight.dtype
        ln.weight = (ln.weight.double() / r).to(dtype)
        ln.bias = ((ln.bias.double() - m) / r).to(dtype)
        for rd in readers:
            lin = g[rd.name]
            shift = lin.weight.double() @ m  # b' = b + W m, with the weights before their scaling
            lin.bias = (shift if lin.bias is None else lin.bias.double() + shift).to(lin.weight.dtype)
            scale_inputs(lin, r)
        factors[name], centres[name] = r, m
    return Reparameterized(g, list(ok), {k: [r.name for r in v] for k, v in ok.items()}, factors, centres, skipped)


def channel_spread(g: FloatGraph, batches, names=None) -> dict[str, float]:
    """Per LayerNorm: max_c |x_c| over the mean over channels of max|x_c| on the batches: what a
    per-tensor scale loses to its widest channel (1 when every channel has the same range)."""
    names = [n.name for n in g.nodes if n.op == "layernorm"] if names is None else list(names)
    out = {}
    for name, (lo, hi) in channel_ranges(g, names, batches).items():
        amax = torch.maximum(lo.abs(), hi.abs())
        out[name] = float(amax.max() / amax.mean())
    return out
