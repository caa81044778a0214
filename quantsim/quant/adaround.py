"""AdaRound weight rounding (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training
Quantization", ICML 2020): per weight, a learned choice between rounding down and up.

Per MAC layer (conv of any groups, linear) with float weight W at the lowering's own weight
scale s (lower._quantize_weight: the calibration method's clip, symmetric, narrow range
±qmax = ±(2^(b−1)−1), per channel or per tensor), the soft-quantized weight is

    W̃(V) = s · clamp(⌊W/s⌋ + h(V), −qmax, qmax),   h(V) = clamp(σ(V)·(ζ − γ) + γ, 0, 1)

(the rectified sigmoid, ζ = 1.1, γ = −0.1), V initialised so that h(V) = W/s − ⌊W/s⌋ (W̃ = W
where W lies inside the grid). V is learned by Adam (lr 1e-2, see LR; batches of 32 calibration
inputs drawn with a seeded generator) on

    ‖f(W x) − f(W̃ x̂)‖² + λ · Σ (1 − |2h(V) − 1|^β)

(the layer's output reconstruction, summed over channels and averaged over the batch and the
positions, f the layer's bias and fused activation as in the paper's eq. 25; λ = 0.01; the
regulariser off for the first 20 % of the iterations, then β annealed linearly from 20 to 2).
x is the layer's input in the float network, x̂ the same input in the quantized network:
every earlier MAC layer with its AdaRound weights and every MAC input fake-quantized at the
activation scale and width lowering gives it (the asymmetric reconstruction of the paper, as
scale_search.correct_biases builds its fake-quantized network). Final codes:
q = clamp(⌊W/s⌋ + [h(V) ≥ 0.5], −qmax, qmax): ordinary integers at an ordinary scale.

How it reaches the integer program: as GPTQ's codes (quantsim.quant.gptq): `rounded` returns a
copy of the FloatGraph whose MAC nodes carry attrs['weight_codes'] = {'codes', 'scale', 'bits'},
which lower checks against its own width and scale (lower._precomputed_codes).

Reproducible to the bit: the batches come from one torch.Generator seeded with cfg.recon_seed
(CPU float arithmetic is deterministic at a fixed thread count). Cached, as GPTQ, per
(graph, statistics, config) in the cache dict the caller holds (stages.Prepared.searched).

Combines with --equalize (the prepared graph is the equalized one), the scale searches (their
weight_clip_alpha sets the scale rounded at), per-channel or per-tensor weights and mixed widths
(each layer at cfg.bits_for); not with --bias-correction, which measures round-to-nearest's error
(a QuantConfig error, as for GPTQ).

Graphs: CNNs only. A ViT's MAC inputs come from integer softmax / GELU / LayerNorm at their own
widths, which this fake-quantized network does not model: such a graph is an error (use
--rounding gptq), as is a MAC layer op it does not know.
"""
from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from integer_ref.arith import qrange

from quantsim.errors import QuantsimError
from quantsim.graph.capture import FloatGraph, FNode, run_node
from quantsim.quant import rounding_cache
from quantsim.quant.calibrate import TensorStats
from quantsim.quant.config import QuantConfig
from quantsim.quant.gptq import dequantized, weight_scale
from quantsim.quant.layer_codes import LayerCodes, with_codes
from quantsim.quant.lower import mac_input_quantizer, weight_scale_floors
from quantsim.quant.quantizer import channel_view

ZETA, GAMMA = 1.1, -0.1          # the rectified sigmoid's stretch
LAMBDA = 0.01                    # weight of the rounding regulariser
BETA_START, BETA_END = 20.0, 2.0
WARMUP = 0.2                     # fraction of the iterations without the regulariser
# the paper's Adam lr is 1e-3 over 10k iterations; at the 10-20x fewer iterations run here V would
# barely move from its start (round-to-nearest): 1e-2 (ResNet-20 layer2.0.conv1 at W4, 256 images,
# 300 iterations, 64 held-out images: output error 0.030 vs 0.050 at 1e-3, nearest 0.091)
LR = 1e-2
BATCH = 32
MAC_OPS = ("conv", "linear")
# ops of ViT graphs: their MAC inputs pass through integer nonlinearities the fake-quantized
# network here does not model
VIT_OPS = ("matmul", "layernorm", "softmax", "gelu", "concat_token", "add_const", "layerscale", "take")


OPT_THREADS = 1  # intra-op threads while optimising (small kernels: threading overhead dominates;
                 # one thread also keeps the float sums, hence the codes, independent of the core count)


@contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- the rounding variables ---------------------------------------------------------------------

def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def initial_v(frac: torch.Tensor) -> torch.Tensor:
    """V with rectified_sigmoid(V) = frac (frac in [0, 1): the sigmoid's argument stays in (0, 1))."""
    p = (frac - GAMMA) / (ZETA - GAMMA)
    return torch.log(p / (1.0 - p))


def beta_at(it: int, iters: int) -> float | None:
    """β of iteration it (None: warm-up, no regulariser): linear from BETA_START to BETA_END."""
    warm = int(WARMUP * iters)
    if it < warm:
        return None
    rel = (it - warm) / max(1, iters - warm)
    return BETA_END + (BETA_START - BETA_END) * max(0.0, 1.0 - rel)


def regulariser(h: torch.Tensor, beta: float) -> torch.Tensor:
    return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()


def reconstruction(out: torch.Tensor, target: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """‖·‖² over the channel axis (axis 1; a ViT's tokens (B, N, C): -1), averaged over the batch and
    the positions."""
    return (out - target).pow(2).sum(axis).mean()


# --- one layer ----------------------------------------------------------------------------------

def check_layer(n: FNode) -> None:
    if n.op not in MAC_OPS:
        raise QuantsimError(f"AdaRound on {n.source or n.name}: a {n.op!r} layer, AdaRound rounds "
                            f"{' and '.join(MAC_OPS)} weights only")


def check_graph(g: FloatGraph) -> None:
    for n in g.nodes:
        if n.op in VIT_OPS:
            raise QuantsimError(f"AdaRound handles CNNs: {n.source or n.name} is a {n.op!r} (a ViT graph), whose "
                                "quantized inputs it does not model: use --reconstruct block (which does), "
                                "--rounding gptq or nearest")
    for n in g.mac_nodes():
        check_layer(n)


class RoundingVariable:
    """One MAC layer's learned rounding at the lowering's weight scale (the scale of `n` as given:
    its accumulator floor included): V, the soft weight W̃(V) and the final codes. Shared by the
    per-layer AdaRound here and the block reconstruction (quantsim.quant.reconstruct)."""

    def __init__(self, n: FNode, w_bits: int, cfg: QuantConfig):
        check_layer(n)
        self.w_bits = w_bits
        _, self.scale = weight_scale(n, w_bits, cfg)
        _, self.qmax = qrange(w_bits, True)
        s64 = channel_view(torch.from_numpy(self.scale), n.weight.dim())
        ratio = n.weight.detach().double() / s64
        self.w_floor64 = torch.floor(ratio)
        frac = (ratio - self.w_floor64).float()
        self.w_floor = self.w_floor64.float()
        self.s = s64.float()
        self.v = initial_v(frac).requires_grad_(True)

    def h(self) -> torch.Tensor:
        return rectified_sigmoid(self.v)

    def soft_weight(self, h: torch.Tensor | None = None) -> torch.Tensor:
        h = self.h() if h is None else h
        return self.s * torch.clamp(self.w_floor + h, -self.qmax, self.qmax)

    @torch.no_grad()
    def codes(self) -> np.ndarray:
        """q = clamp(⌊W/s⌋ + [h(V) ≥ 0.5], −qmax, qmax), int64."""
        up = (self.h() >= 0.5).to(torch.float64)
        return torch.clamp(self.w_floor64 + up, -self.qmax, self.qmax).to(torch.int64).numpy()

    def layer_codes(self, seconds: float) -> LayerCodes:
        return LayerCodes(self.codes(), self.scale, self.w_bits, seconds)


def track(it: int, iters: int, rec: torch.Tensor, loss: torch.Tensor, losses: list[float], bar: tqdm | None,
          **label) -> None:
    """An optimisation step's bookkeeping: the reconstruction loss of the first and last iteration
    kept in `losses`, the progress bar advanced, its postfix (label, current losses) every 50."""
    if it == 0 or it == iters - 1:
        losses.append(float(rec.detach()))
    if bar is not None:
        bar.update(1)
        if it % 50 == 0 or it == iters - 1:
            bar.set_postfix(**label, rec=f"{float(rec.detach()):.4g}", loss=f"{float(loss.detach()):.4g}", refresh=False)


def adaround_layer(n: FNode, x_q: torch.Tensor, target: torch.Tensor, w_bits: int, cfg: QuantConfig,
                   gen: torch.Generator, iters: int | None = None,
                   bar: tqdm | None = None) -> tuple[LayerCodes, dict]:
    """AdaRound codes of one layer from its quantized-network inputs x_q (N, ...) and its
    float-network outputs target (N, ...) (after bias and fused activation). Returns the codes
    and {'loss_start', 'loss_end': reconstruction loss on the last batch, 'iters'}."""
    t0 = time.perf_counter()
    iters = cfg.recon_iters if iters is None else iters
    rv = RoundingVariable(n, w_bits, cfg)
    opt = torch.optim.Adam([rv.v], lr=LR)
    n_samples = x_q.shape[0]
    batch = min(BATCH, n_samples)
    losses: list[float] = []
    x_q, target = x_q.detach(), target.detach()
    for it in range(iters):
        idx = torch.randint(n_samples, (batch,), generator=gen)
        h = rv.h()
        rec = reconstruction(run_node(n, [x_q[idx]], weight=rv.soft_weight(h)), target[idx])
        beta = beta_at(it, iters)
        loss = rec if beta is None else rec + LAMBDA * regulariser(h, beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        track(it, iters, rec, loss, losses, bar, layer=n.name)
    info = {"loss_start": losses[0] if losses else math.nan, "loss_end": losses[-1] if losses else math.nan,
            "iters": iters}
    return rv.layer_codes(time.perf_counter() - t0), info


# --- the whole graph --------------------------------------------------------------------------------

@torch.no_grad()
def adaround_codes(g: FloatGraph, stats: dict[str, TensorStats], batches: list[torch.Tensor], cfg: QuantConfig,
                   progress: bool = False, layers: list[str] | None = None) -> dict[str, LayerCodes]:
    """AdaRound codes of every MAC layer of g (or of `layers`, the others kept in float: for
    tests) at its width cfg.bits_for(layer)[0], layer by layer in graph order.

    One walk over the graph for all calibration batches, twice over: the float network (targets)
    and the quantized one (inputs); a tensor is dropped when its last consumer has run."""
    check_graph(g)
    if not batches:
        raise QuantsimError("AdaRound needs the calibration images (Prepared.calib is empty)")
    todo = [n.name for n in g.mac_nodes()] if layers is None else list(layers)
    unknown = [name for name in todo if name not in {n.name for n in g.mac_nodes()}]
    if unknown:
        raise QuantsimError(f"AdaRound: no MAC layer named {unknown[0]!r}")
    fq = mac_input_quantizer(g, stats, cfg)
    gen = torch.Generator().manual_seed(cfg.recon_seed)
    last_use: dict[str, int] = {}
    for i, n in enumerate(g.nodes):
        for name in n.inputs:
            last_use[name] = i
    fvals: dict[str, list[torch.Tensor]] = {}
    qvals: dict[str, list[torch.Tensor]] = {}
    out: dict[str, LayerCodes] = {}
    bar = tqdm(total=len(todo) * cfg.recon_iters, desc="adaround", unit="it", disable=not progress, leave=False)
    for i, n in enumerate(g.nodes):
        if n.op == "input":
            fvals[n.name] = list(batches)
            qvals[n.name] = list(batches)
            continue
        fins = [fvals[name] for name in n.inputs]
        fvals[n.name] = [run_node(n, list(xs)) for xs in zip(*fins)]
        if n.is_mac and n.name in todo:
            xq = [fq(n, x) for x in qvals[n.inputs[0]]]
            with torch.enable_grad(), torch_threads(OPT_THREADS):
                out[n.name], _ = adaround_layer(n, torch.cat(xq), torch.cat(fvals[n.name]),
                                                cfg.bits_for(n.name)[0], cfg, gen, bar=bar)
            w = dequantized(n, out[n.name])
            qvals[n.name] = [run_node(n, [x], weight=w) for x in xq]
        else:
            qins = [qvals[name] for name in n.inputs]
            qvals[n.name] = [run_node(n, list(xs)) for xs in zip(*qins)]
        for name in n.inputs:
            if last_use[name] == i and name != g.output:
                del fvals[name], qvals[name]
    bar.close()
    return out


def _key(g: FloatGraph, stats: dict, cfg: QuantConfig) -> tuple:
    return ("adaround", id(g), id(stats), json.dumps(cfg.to_json(), sort_keys=True))


def rounded(g: FloatGraph, stats: dict[str, TensorStats], batches: list[torch.Tensor], cfg: QuantConfig,
            cache: dict | None = None, progress: bool = False, disk_cache: Path | None = None) -> FloatGraph:
    """g with AdaRound codes on every MAC layer (cfg.rounding == 'adaround'); cached per
    (graph, statistics, config): a second call returns the same graph, not recomputed; with
    disk_cache, also across runs in that folder (quant/rounding_cache.py)."""
    key = _key(g, stats, cfg)
    if cache is not None and key in cache:
        return cache[key][2]
    src = weight_scale_floors(g, stats, cfg)  # the scales lowering gives, accumulator floor included
    codes, _ = rounding_cache.cached(disk_cache, "adaround", g, stats, batches, cfg,
                                     lambda: (adaround_codes(src, stats, batches, cfg, progress), {}))
    out = with_codes(src, codes)
    if cache is not None:
        cache[key] = (g, stats, out)  # g and stats kept alive: their ids stay their own
    return out


def codes_of(g: FloatGraph) -> dict[str, np.ndarray]:
    """The weight codes a rounded graph carries, per MAC layer."""
    return {n.name: n.attrs["weight_codes"]["codes"] for n in g.nodes if "weight_codes" in n.attrs}
