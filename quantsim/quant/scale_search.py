"""Similarity- and ranking-aware scale search over a whole FloatGraph (Liu et al., NeurIPS 2021),
bias correction, and the attention-order metric (mean Kendall τ of float vs quantized rows).

calib_method 'similarity' / 'ranking' (QuantConfig) searches, on the calibration images:
- per MAC layer (conv, linear) one weight factor α_W: scale = α_W · max|W| / qmax per tensor, or
  α_W · max|w_c| / qmax per output channel (per-channel weights share one α per layer);
- per operand tensor (read by a MAC layer or a matmul; softmax outputs keep their fixed 2^-b
  scale) one factor α_X: clip = α_X · (the min-max clip), scale = clip / qmax;
- α from [0.5, 1.2] on `cfg.search_steps` evenly spaced points, plus α = 1 (the min-max scale
  itself, where the search starts, so its objective never ends below min-max's).
Objective: Pearson correlation of a layer's float output and its output with quantized operands
(the tensor quantizers the lowering uses: bits, signedness, narrow range, round half to even).
With 'ranking', a q·kᵀ matmul (one whose output feeds softmax) scores Γ - γ·L_rank on the
attention-score rows (γ = 0.1, θ = 0.2, ranking.ranking_loss; on a fixed subset of RANK_ROWS
rows to bound the pair count). Alternating (Gauss-Seidel over the graph): all weight factors
given the current activation scales, then all activation factors given the weights, at most
20 rounds, stopping when no factor changes. A tensor read by several layers (q and k of one
matmul are two tensors; a ResNet block input feeds a conv and a shortcut) takes the α that
maximises the mean of its readers' objectives. Every layer is searched on the float model's
own inputs (not on the outputs of the quantized layers before it).

q, k and v: timm's attention computes them with one qkv linear whose output the capture splits
by reshape + take, so they would share one requantization scale. `split_qkv` rewrites such a
linear into three (`<qkv>.q`, `<qkv>.k`, `<qkv>.v`, same MACs, three GEMMs of width C instead
of one of 3C) so each gets its own scale; the searched path always applies it.

The result flows into lowering unchanged in form: a copy of the FloatGraph whose MAC nodes carry
attrs['weight_clip_alpha'] (and corrected biases) and a copy of the statistics whose operand
tensors carry `clip_override`; `lower` then quantizes with exactly these scales.

Bias correction (cfg.bias_correction, any calib_method): b' = b - (E[f(X̂, Ŵ)] - E[f(X, W)]) per output
channel over the calibration images, with the scales the lowering will use; X̂ is the quantized
float input for ViTs, the input in the fake-quantized network for CNNs (`correct_biases`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from integer_ref.arith import qrange

from quantsim.emulate import executor as emulate
from quantsim.quant import ranking as R
from quantsim.quant.calibrate import TensorStats, clip_value, weight_clip, weight_method
from quantsim.graph.capture import FloatGraph, FNode, run_float, run_node
from quantsim.quant.config import SEARCH_METHODS, QuantConfig
from quantsim.quant.lower import _root, mac_input_quantizer, shapes_of, tensor_bits
from quantsim.quant.quantizer import ACT_CLIP_FLOOR, act_scale, fake_quant_act, fake_quant_weight, scale_from_clip

SEARCH_IMAGES = 32  # calibration images the search and the bias correction run on (the first ones)
RANK_ROWS = 512     # attention rows the ranking term is computed on (a fixed subset)
QKV = "qkv"


# --- q, k, v with their own scales -------------------------------------------------------------

def _copy(g: FloatGraph) -> FloatGraph:
    return FloatGraph([replace(n, inputs=list(n.inputs), attrs=dict(n.attrs)) for n in g.nodes],
                      g.output, g.input_shape)


def split_qkv(g: FloatGraph) -> tuple[FloatGraph, dict[str, list[str]]]:
    """A copy of g where every linear -> reshape(-1, N, K, ...) -> take(axis 2, i) for i < K is K
    linears (one per take, the matching rows of the weight) each reshaped to (-1, N, ...).
    Returns (graph, {old linear: [new linears]})."""
    g = _copy(g)
    shapes = shapes_of(g)
    split: dict[str, list[str]] = {}
    for lin in [n for n in g.nodes if n.op == "linear"]:
        cons = g.consumers(lin.name)
        if lin.act or len(cons) != 1 or cons[0].op != "reshape" or g.output in (lin.name, cons[0].name):
            continue
        rs = cons[0]
        shape = rs.attrs["shape"]
        takes = g.consumers(rs.name)
        if (len(shape) < 4 or len(shapes[lin.name]) != 3 or shape[1] != shapes[lin.name][1]
                or not takes or any(t.op != "take" or t.attrs["axis"] != 2 for t in takes)):
            continue
        k, width = shape[2], int(np.prod(shape[3:]))
        if k * width != lin.weight.shape[0] or sorted(t.attrs["index"] for t in takes) != list(range(k)):
            continue
        parts = []
        for t in sorted(takes, key=lambda t: t.attrs["index"]):
            i = t.attrs["index"]
            rows = slice(i * width, (i + 1) * width)
            part = FNode(f"{lin.name}.{QKV[i] if k == 3 else i}", "linear", list(lin.inputs), {},
                         lin.weight[rows].clone(), None if lin.bias is None else lin.bias[rows].clone(),
                         source=f"{lin.source}[{i}]")
            parts.append(part)
            t.op, t.inputs, t.attrs = "reshape", [part.name], {"shape": [-1, shape[1], *shape[3:]]}
        at = g.nodes.index(lin)
        g.nodes[at:at + 1] = parts
        g.nodes.remove(rs)
        split[lin.name] = [p.name for p in parts]
    return FloatGraph(g.nodes, g.output, g.input_shape), split


# --- the quantizers the lowering uses ------------------------------------------------------------

@dataclass
class _Tensor:
    """An operand tensor (a requantizing producer's output): its quantizer and search state."""
    name: str
    qmin: int
    qmax: int
    top: float               # the min-max clip (max for unsigned, max|x| for signed)
    fixed: float | None = None  # a scale that is not searched (softmax output: 2^-b)
    alpha: float = 1.0

    @property
    def scale(self) -> float:
        if self.fixed is not None:
            return self.fixed
        return act_scale(self.alpha * self.top, self.qmax)  # as lower._act_qparams

    def quant(self, x: torch.Tensor, alpha: float | None = None) -> torch.Tensor:
        s = self.scale if alpha is None else act_scale(alpha * self.top, self.qmax)
        return fake_quant_act(x, s, self.qmin, self.qmax)


def _weight_q(n: FNode, bits: int, per_channel: bool, alpha: float, method: str = "minmax") -> torch.Tensor:
    """lower._quantize_weight's real values (dyadic mode) with clip factor alpha."""
    _, qmax = qrange(bits, True)
    clip = weight_clip(n.weight, per_channel, method, qmax) * alpha
    return fake_quant_weight(n.weight, scale_from_clip(clip, qmax), qmax).float()  # float64 scale, as lowered


def _mac(n: FNode, x: torch.Tensor, w: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """The layer's output before its fused activation (the similarity is taken there)."""
    return run_node(replace(n, act=None, bias=n.bias if bias else None), [x], weight=w)


def alpha_grid(steps: int) -> list[float]:
    return sorted(set(np.linspace(R.SEARCH_LO, R.SEARCH_HI, steps).tolist()) | {1.0})


# --- the search ----------------------------------------------------------------------------------

@dataclass
class SearchResult:
    graph: FloatGraph                 # copy: split q/k/v, weight_clip_alpha attrs, corrected biases
    stats: dict[str, TensorStats]     # copy: clip_override on the searched operand tensors
    weight_alpha: dict[str, float]
    act_alpha: dict[str, float]
    rounds: int = 0
    history: list[float] = field(default_factory=list)  # sum of the layers' objectives after each round
    start: float = float("nan")                          # the same sum at the min-max scales

    @property
    def graph_stats(self) -> tuple[FloatGraph, dict[str, TensorStats]]:
        return self.graph, self.stats


class GraphSearch:
    """The operands, reference outputs and objective of every MAC layer and matmul of a graph."""

    def __init__(self, g: FloatGraph, stats: dict[str, TensorStats], images: torch.Tensor, cfg: QuantConfig,
                 ranking: bool | None = None):
        self.g, self.cfg = g, cfg
        self.ranking = cfg.calib_method == "ranking" if ranking is None else ranking
        self.per_channel = cfg.granularity == "per-channel"
        self.layers = [n for n in g.nodes if n.is_mac or n.op == "matmul"]
        wanted = {i for n in self.layers for i in n.inputs}
        self.values: dict[str, torch.Tensor] = {}
        run_float(g, images, observe=lambda n, y: self.values.__setitem__(n.name, y) if n.name in wanted else None)
        bits = tensor_bits(g, cfg)
        self.tensors: dict[str, _Tensor] = {}
        self.root = {i: _root(g, i) for i in wanted}
        for r in dict.fromkeys(self.root[i] for n in self.layers for i in n.inputs):
            b = bits.get(r, cfg.a_bits)
            signed = not g.non_negative(r)
            qmin, qmax = qrange(b, signed)
            if g[r].op == "softmax":
                self.tensors[r] = _Tensor(r, qmin, qmax, 1.0, fixed=2.0**-b)
            else:
                self.tensors[r] = _Tensor(r, qmin, qmax, max(clip_value(stats[r], "minmax", qmin, qmax), 0.0))
        self.w_alpha = {n.name: 1.0 for n in self.layers if n.is_mac}
        # per layer: the centred float output and its norm (Pearson), and for the ranking term a
        # fixed subset of the attention-score rows with their float values
        self.refs: dict[str, tuple[torch.Tensor, float]] = {}
        self.rank_rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        gen = torch.Generator().manual_seed(0)
        for n in self.layers:
            ref = self._out(n, [self.values[i] for i in n.inputs], n.weight)
            if self.ranking and self._is_scores(n):
                rows = ref.reshape(-1, ref.shape[-1])
                pick = torch.randperm(rows.shape[0], generator=gen)[:RANK_ROWS]
                self.rank_rows[n.name] = (pick, rows[pick].clone())
            ref = ref - ref.mean()
            self.refs[n.name] = (ref, float(torch.linalg.vector_norm(ref.double())))

    def _is_scores(self, n: FNode) -> bool:
        return n.op == "matmul" and any(c.op == "softmax" for c in self.g.consumers(n.name))

    def _out(self, n: FNode, xs: list[torch.Tensor], w) -> torch.Tensor:
        return _mac(n, xs[0], w) if n.is_mac else run_node(n, xs)

    def weight(self, n: FNode, alpha: float | None = None) -> torch.Tensor:
        w_bits, _ = self.cfg.bits_for(n.name)
        return _weight_q(n, w_bits, self.per_channel, self.w_alpha[n.name] if alpha is None else alpha)

    def operand(self, name: str, alpha: float | None = None) -> torch.Tensor:
        return self.tensors[self.root[name]].quant(self.values[name], alpha)

    def score(self, n: FNode, xs: list[torch.Tensor], w=None) -> float:
        """Pearson(float output, quantized-operand output) [- γ·L_rank on attention scores]."""
        ref, ref_norm = self.refs[n.name]
        out = self._out(n, xs, w)
        oc = out - out.mean()
        den = ref_norm * float(torch.linalg.vector_norm(oc))
        # float32 products with torch's pairwise sums: ~1e-7 relative, well below the score gaps
        s = float((ref * oc).sum(dtype=torch.float64)) / den if den > 0 else 0.0
        if n.name in self.rank_rows:
            pick, ref_rows = self.rank_rows[n.name]
            s -= R.GAMMA * float(R.ranking_loss(ref_rows, out.reshape(-1, out.shape[-1])[pick], R.THETA))
        return s

    def layer_score(self, n: FNode) -> float:
        return self.score(n, [self.operand(i) for i in n.inputs], self.weight(n) if n.is_mac else None)

    def total(self) -> float:
        return sum(self.layer_score(n) for n in self.layers)

    def _best(self, fn, grid: list[float], current: float) -> float:
        best, best_s = current, fn(current)
        for a in grid:
            if a != current:
                s = fn(a)
                if s > best_s:
                    best, best_s = a, s
        return best

    def weight_step(self, grid: list[float]) -> bool:
        changed = False
        for n in self.layers:
            if not n.is_mac:
                continue
            x = self.operand(n.inputs[0])
            a = self._best(lambda al: self.score(n, [x], self.weight(n, al)), grid, self.w_alpha[n.name])
            changed |= a != self.w_alpha[n.name]
            self.w_alpha[n.name] = a
        return changed

    def act_step(self, grid: list[float]) -> bool:
        changed = False
        for r, t in self.tensors.items():
            if t.fixed is not None:
                continue
            readers = [n for n in self.layers if any(self.root[i] == r for i in n.inputs)]
            fixed_w = {n.name: self.weight(n) for n in readers if n.is_mac}
            others = {n.name: [None if self.root[i] == r else self.operand(i) for i in n.inputs] for n in readers}

            def objective(al: float) -> float:
                total = 0.0
                for n in readers:
                    xs = [self.operand(i, al) if o is None else o for i, o in zip(n.inputs, others[n.name])]
                    total += self.score(n, xs, fixed_w.get(n.name))
                return total / len(readers)

            a = self._best(objective, grid, t.alpha)
            changed |= a != t.alpha
            t.alpha = a
        return changed


def search(g: FloatGraph, stats: dict[str, TensorStats], images: torch.Tensor, cfg: QuantConfig,
           rounds: int = R.MAX_ROUNDS) -> SearchResult:
    """Alternating search on g (already split) -> factors, with the graph and stats to lower."""
    gs = GraphSearch(g, stats, images, cfg)
    grid = alpha_grid(cfg.search_steps)
    start = gs.total()
    history: list[float] = []
    done = 0
    for done in range(1, rounds + 1):
        changed = gs.weight_step(grid)
        changed |= gs.act_step(grid)
        history.append(gs.total())
        if not changed:
            break
    act_alpha = {r: t.alpha for r, t in gs.tensors.items() if t.fixed is None}
    out_g, out_stats = _apply(g, stats, gs.w_alpha, act_alpha, gs)
    return SearchResult(out_g, out_stats, dict(gs.w_alpha), act_alpha, done, history, start)


def _apply(g: FloatGraph, stats: dict[str, TensorStats], w_alpha: dict[str, float], act_alpha: dict[str, float],
           gs: GraphSearch) -> tuple[FloatGraph, dict[str, TensorStats]]:
    g = _copy(g)
    for name, a in w_alpha.items():
        g[name].attrs["weight_clip_alpha"] = a
    stats = dict(stats)
    for r, a in act_alpha.items():
        t = gs.tensors[r]
        stats[r] = replace(stats[r], clip_override=max(a * t.top, ACT_CLIP_FLOOR))
    return g, stats


# --- bias correction -------------------------------------------------------------------------------

@torch.no_grad()
def correct_biases(g: FloatGraph, stats: dict[str, TensorStats], images: torch.Tensor, cfg: QuantConfig,
                   inputs: str | None = None) -> FloatGraph:
    """b' = b - (E[f(X̂, Ŵ)] - E[f(X, W)]) per output channel, for every MAC layer (a copy of g), with
    the scales the lowering takes from g and stats (clip overrides, weight_clip_alpha, calib_method).

    inputs="float" (the default for ViTs): X is the float network's input of the layer, and X̂ that
    input quantized. inputs="sequential" (the default for CNNs; Nagel et al. 2019's empirical
    bias correction): E[f(X, W)] is the float network's, X̂ the layer's input in a fake-quantized
    network (every earlier MAC layer with quantized operands and its corrected bias), so that
    each correction also absorbs the mean error the earlier layers pass on."""
    inputs = inputs or ("float" if any(n.op in ("matmul", "layernorm") for n in g.nodes) else "sequential")
    fq = mac_input_quantizer(g, stats, cfg)
    macs = [n for n in g.nodes if n.is_mac]
    names = {n.inputs[0] for n in macs}
    values: dict[str, torch.Tensor] = {}
    run_float(g, images, observe=lambda n, y: values.__setitem__(n.name, y) if n.name in names else None)
    g = _copy(g)
    w_method = weight_method(cfg.calib_method)

    def channel_mean(n: FNode, y: torch.Tensor) -> torch.Tensor:
        axis = 1 if n.op == "conv" else y.dim() - 1
        return y.transpose(0, axis).reshape(y.shape[axis], -1).double().mean(dim=1)

    def quantized(n: FNode, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xq = fq(n, x)
        wq = _weight_q(n, cfg.bits_for(n.name)[0], cfg.granularity == "per-channel",
                       n.attrs.get("weight_clip_alpha", 1.0), w_method)
        return xq, wq

    def corrected(n: FNode, shift: torch.Tensor) -> None:
        b = n.bias.double() if n.bias is not None else torch.zeros(n.weight.shape[0], dtype=torch.float64)
        n.bias = (b - shift).float()

    if inputs == "float":
        for n in (g[m.name] for m in macs):
            x = values[n.inputs[0]]
            xq, wq = quantized(n, x)
            corrected(n, channel_mean(n, _mac(n, xq, wq, bias=False) - _mac(n, x, n.weight, bias=False)))
        return g
    if inputs != "sequential":
        raise ValueError(f"bias correction inputs {inputs!r}: float or sequential")
    float_mean = {m.name: channel_mean(m, _mac(m, values[m.inputs[0]], m.weight, bias=False)) for m in macs}
    values.clear()

    def step(n: FNode, xs: list[torch.Tensor]):
        if not n.is_mac:
            return None
        xq, wq = quantized(n, xs[0])
        y = _mac(n, xq, wq, bias=False)
        corrected(n, channel_mean(n, y) - float_mean[n.name])
        return run_node(n, [xq], weight=wq)

    run_float(g, images, transform=step)
    return g


# --- the pipeline's entry point -----------------------------------------------------------------

def needs_search(cfg: QuantConfig) -> bool:
    return cfg.calib_method in SEARCH_METHODS or cfg.bias_correction


def _key(cfg: QuantConfig) -> str:
    d = cfg.to_json()
    d.pop("nonlinear")  # the search sees only MAC layers and matmuls: the same for both modes
    return json.dumps(d, sort_keys=True)


def _images(batches: list[torch.Tensor], n: int = SEARCH_IMAGES) -> torch.Tensor:
    if not batches:
        raise ValueError("the scale search needs the calibration batches (pipeline.prepare keeps them)")
    return torch.cat(batches)[:n]


def searched(g: FloatGraph, stats: dict[str, TensorStats], batches: list[torch.Tensor], cfg: QuantConfig,
             cache: dict | None = None) -> tuple[FloatGraph, dict[str, TensorStats], QuantConfig]:
    """(graph, stats, cfg) to lower for a search method and/or bias correction; the search is
    cached per config (but for the nonlinear mode, which it does not see)."""
    key = _key(cfg)
    if cache is None or key not in cache:
        x = _images(batches)
        split: dict[str, list[str]] = {}
        if cfg.calib_method in SEARCH_METHODS:
            g, split = split_qkv(g)
            stats = _part_stats(g, stats, batches, [p for parts in split.values() for p in parts])
            g, stats = search(g, stats, x, _split_bits(cfg, split)).graph_stats
        if cfg.bias_correction:
            g = correct_biases(g, stats, x, _split_bits(cfg, split))
        if cache is None:
            return g, stats, _split_bits(cfg, split)
        cache[key] = (g, stats, split)
    g, stats, split = cache[key]
    return g, stats, _split_bits(cfg, split)


def _split_bits(cfg: QuantConfig, split: dict[str, list[str]]) -> QuantConfig:
    """A split layer keeps the widths chosen for the layer it came from (mixed precision)."""
    if not cfg.layer_bits or not split:
        return cfg
    lb = dict(cfg.layer_bits)
    for old, parts in split.items():
        if old in lb:
            lb.update({p: list(lb[old]) for p in parts})
    return replace(cfg, layer_bits=lb)


def _part_stats(g: FloatGraph, stats: dict[str, TensorStats], batches: list[torch.Tensor],
                names: list[str]) -> dict[str, TensorStats]:
    """Statistics of the split q/k/v tensors over all calibration batches (one float pass)."""
    stats = dict(stats)
    if not names:
        return stats
    gen = torch.Generator().manual_seed(0)
    for name in names:
        stats[name] = TensorStats()
    for xb in batches:
        run_float(g, xb, observe=lambda n, y: stats[n.name].update(y, gen) if n.name in names else None)
    return stats


# --- attention-order preservation -------------------------------------------------------------------

@torch.no_grad()
def attention_kendall(fgraph: FloatGraph, graph, x: torch.Tensor, on: str = "scores",
                      batch_size: int = 16) -> dict:
    """Mean Kendall τ-b between float and quantized attention rows (per image, head and query row,
    over every block): `on='scores'` compares the softmax inputs (q·kᵀ·scale), 'probs' the softmax
    outputs. The quantized side is the emulated integer program (quantsim.emulate.executor, keep='all');
    graph=None compares the float model with itself (a sanity check of the plumbing: τ = 1).
    Returns {'tau': mean over all rows, 'per_block': [mean per softmax], 'rows': rows with a τ}."""
    if on not in ("scores", "probs"):
        raise ValueError(f"on must be 'scores' or 'probs', got {on!r}")
    soft = [n for n in fgraph.nodes if n.op == "softmax"]
    if not soft:
        raise ValueError("the graph has no softmax (no attention rows to compare)")
    names = [n.inputs[0] if on == "scores" else n.name for n in soft]
    taus: list[list[torch.Tensor]] = [[] for _ in names]
    for xb in x.split(batch_size):
        floats: dict[str, torch.Tensor] = {}
        run_float(fgraph, xb, observe=lambda n, y: floats.__setitem__(n.name, y) if n.name in names else None)
        q = emulate.run(graph, xb, keep="all").tensors if graph is not None else None
        for k, name in enumerate(names):
            if graph is None:
                deq = floats[name].clone()
            else:
                qp = graph[name].out
                deq = (q[name].double() - qp.zero_point) * float(qp.scale)
            taus[k].append(R.kendall_tau_rows(floats[name], deq))
    per = [torch.cat(t) for t in taus]
    allt = torch.cat(per)
    ok = allt[~torch.isnan(allt)]
    return {"tau": float(ok.mean()) if ok.numel() else float("nan"),
            "per_block": [float(t[~torch.isnan(t)].mean()) if (~torch.isnan(t)).any() else float("nan") for t in per],
            "rows": int(ok.numel())}
