"""Per-layer sensitivity S_l(b) = ||y_full - y_quant||_2 / ||y_full||_2, one calibration pass.

Only layer l is quantized (its weights at b bits and its input activation at b bits), all
else stays float. `at='layer'` measures at the layer's own output (cheap: one float pass,
then one op per layer and width); `at='output'` at the network's output (one partial
forward per layer and width: only the nodes downstream of layer l are recomputed, the rest
reuse the float pass). `weighting='nuclear'` multiplies by the nuclear norm of the
layer's float output (the output-perturbation weighting of Liu et al. 2021).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from tqdm import tqdm

from integer_ref.arith import qrange

from quantsim.quant.calibrate import TensorStats, clip_value, weight_clip, weight_method
from quantsim.graph.capture import FloatGraph, FNode, run_float, run_node
from quantsim.quant.config import QuantConfig
from quantsim.quant.quantizer import act_scale, fake_quant_act, fake_quant_weight, scale_from_clip


def _fq_weight(n: FNode, bits: int, cfg: QuantConfig) -> torch.Tensor:
    _, qmax = qrange(bits, True)
    per_channel = cfg.granularity == "per-channel"
    clip = weight_clip(n.weight, per_channel, weight_method(cfg.calib_method), qmax)
    # float32 scale (not the lowering's float64): the sensitivities were measured so
    return fake_quant_weight(n.weight, scale_from_clip(clip, qmax, dtype=torch.float32), qmax)


def _fq_input(g: FloatGraph, n: FNode, bits: int, stats: dict[str, TensorStats], cfg: QuantConfig):
    src = n.inputs[0]
    qmin, qmax = qrange(bits, not g.non_negative(src))
    scale = act_scale(clip_value(stats[src], cfg.calib_method, qmin, qmax, cfg.percentile), qmax)
    return lambda x: fake_quant_act(x, scale, qmin, qmax)


def _width_key(b) -> str:
    """JSON key of a candidate: '4' for W4A4, 'W4A8' for a pair."""
    return str(b) if isinstance(b, int) else f"W{b[0]}A{b[1]}"


def _width_of(key: str):
    if key.startswith("W"):
        w, a = key[1:].split("A")
        return (int(w), int(a))
    return int(key)


def downstream(g: FloatGraph) -> dict[str, list[FNode]]:
    """For each MAC layer, the nodes (in graph order) whose value depends on it."""
    order = {n.name: i for i, n in enumerate(g.nodes)}
    res = {}
    for layer in g.mac_nodes():
        dirty = {layer.name}
        after = []
        for n in g.nodes[order[layer.name] + 1:]:
            if any(i in dirty for i in n.inputs):
                dirty.add(n.name)
                after.append(n)
        res[layer.name] = after
    return res


def cache_key(g: FloatGraph, cfg: QuantConfig, candidates, at: str, weighting: str, n_images: int,
              a_bits: int | None = None) -> str:
    doc = json.dumps({"a_bits": a_bits, "layers": [n.name for n in g.mac_nodes()], "gran": cfg.granularity,
                      "method": cfg.calib_method, "cand": [_width_key(b) for b in candidates], "at": at, "w": weighting,
                      "n": n_images,
                      "wsum": [float(n.weight.double().abs().sum()) for n in g.mac_nodes()]})
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


@torch.no_grad()
def layer_sensitivity(g: FloatGraph, stats: dict[str, TensorStats], batches: list[torch.Tensor],
                      cfg: QuantConfig, candidates=(4, 6, 8), at: str = "layer", weighting: str = "none",
                      progress: bool = True, cache_dir: Path | None = None,
                      a_bits: int | None = None) -> dict[str, dict[int, float]]:
    """S[layer][bits] for every MAC layer, from one pass over the calibration batches.

    With ``a_bits`` the input activation is held at that width for every candidate and only
    the weights take the candidate width (weight-only mixed precision)."""
    if at not in ("layer", "output") or weighting not in ("none", "nuclear"):
        raise ValueError(f"sensitivity at={at!r} weighting={weighting!r}")
    n_images = sum(len(b) for b in batches)
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"sensitivity-{cache_key(g, cfg, candidates, at, weighting, n_images, a_bits)}.json"
        if cache.exists():
            return {k: {_width_of(b): v for b, v in d.items()} for k, d in json.loads(cache.read_text()).items()}
    layers = g.mac_nodes()
    wa = {b: (b, b) if isinstance(b, int) else (int(b[0]), int(b[1])) for b in candidates}  # (w, a) pairs
    fq_w = {(n.name, b): _fq_weight(n, wa[b][0], cfg) for n in layers for b in candidates}
    fq_x = {(n.name, b): _fq_input(g, n, a_bits or wa[b][1], stats, cfg) for n in layers for b in candidates}
    err = {(n.name, b): 0.0 for n in layers for b in candidates}
    ref_norm = {n.name: 0.0 for n in layers}
    nuclear = {n.name: 0.0 for n in layers}
    out_norm = 0.0
    after = downstream(g) if at == "output" else {}
    for x in tqdm(batches, desc="sensitivity", unit="batch", disable=not progress, leave=False):
        values: dict[str, torch.Tensor] = {}
        y_out = run_float(g, x, observe=lambda n, y: values.__setitem__(n.name, y))
        out_norm += float((y_out.double() ** 2).sum())
        for n in layers:
            y = values[n.name]
            ref_norm[n.name] += float((y.double() ** 2).sum())
            if weighting == "nuclear":
                mat = y.reshape(y.shape[0], y.shape[1], -1).double()
                nuclear[n.name] += float(torch.linalg.matrix_norm(mat, ord="nuc").sum())
            for b in candidates:
                xq = fq_x[(n.name, b)](values[n.inputs[0]])
                if at == "layer":
                    yq = run_node(n, [xq], weight=fq_w[(n.name, b)])
                    err[(n.name, b)] += float(((yq.double() - y.double()) ** 2).sum())
                else:
                    vals = dict(values)
                    vals[n.name] = run_node(n, [xq], weight=fq_w[(n.name, b)])
                    for m in after[n.name]:
                        vals[m.name] = run_node(m, [vals[i] for i in m.inputs])
                    yq = vals[g.output]
                    err[(n.name, b)] += float(((yq.double() - y_out.double()) ** 2).sum())
    result: dict[str, dict[int, float]] = {}
    for n in layers:
        denom = ref_norm[n.name] if at == "layer" else out_norm
        scale = nuclear[n.name] / n_images if weighting == "nuclear" else 1.0
        result[n.name] = {b: scale * (err[(n.name, b)] / max(denom, 1e-30)) ** 0.5 for b in candidates}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({l: {_width_key(b): v for b, v in row.items()} for l, row in result.items()}))
    return result


class JointError:
    """The network-output error of an allocation with every layer quantized at once:
    ||y_full - y_quant||_2 / ||y_full||_2 over the calibration batches, each MAC layer's
    weights and input activation fake-quantized at its width (a (w, a) pair or an int b for
    W_b A_b). S_l sums per-layer errors as if they did not interact; this measures the
    whole allocation, so a handful of allocations the knapsack found near-equal on the
    additive proxy can be told apart."""

    def __init__(self, g: FloatGraph, stats: dict[str, TensorStats], batches: list[torch.Tensor], cfg: QuantConfig):
        self.g, self.stats, self.batches, self.cfg = g, stats, batches, cfg
        with torch.no_grad():
            self.ref = [run_float(g, x) for x in batches]
        self.ref_norm = sum(float((y.double() ** 2).sum()) for y in self.ref)
        self._w: dict = {}
        self._x: dict = {}

    def _fq(self, n: FNode, width) -> tuple:
        w_bits, a_bits = (width, width) if isinstance(width, int) else (int(width[0]), int(width[1]))
        if (n.name, w_bits) not in self._w:
            self._w[(n.name, w_bits)] = _fq_weight(n, w_bits, self.cfg)
        if (n.name, a_bits) not in self._x:
            self._x[(n.name, a_bits)] = _fq_input(self.g, n, a_bits, self.stats, self.cfg)
        return self._w[(n.name, w_bits)], self._x[(n.name, a_bits)]

    @torch.no_grad()
    def __call__(self, bits: dict) -> float:
        fq = {n.name: self._fq(n, bits[n.name]) for n in self.g.mac_nodes() if n.name in bits}

        def probe(node, xs):
            if node.name not in fq:
                return None
            w, qx = fq[node.name]
            return run_node(node, [qx(xs[0])] + xs[1:], weight=w)

        err = 0.0
        for x, y in zip(self.batches, self.ref):
            yq = run_float(self.g, x, transform=probe)
            err += float(((yq.double() - y.double()) ** 2).sum())
        return (err / max(self.ref_norm, 1e-30)) ** 0.5
