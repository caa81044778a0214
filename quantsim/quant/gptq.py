"""GPTQ weight rounding (Frantar et al., "OPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", ICLR 2023): integer weight codes with error feedback.

Per MAC layer with float weight W (O, K) and the Hessian of the layer's squared output error
H = 2/n · Σ x xᵀ over its n calibration input vectors x (linear: the last axis; conv: the
im2col columns, F.unfold after the layer's own padding, with its stride and dilation; the
column order is channel-major then (kh, kw), that of weight.reshape(O, C/g·kh·kw)), the
columns are rounded one by one in their natural order and the rounding error of column i is
spread over the columns not yet rounded, weighted by the inverse Hessian:

    H ← H + λ·I, λ = percdamp · mean(diag H)           (dampening, default 0.01)
    U = chol(H⁻¹)ᵀ (upper: H⁻¹ = Uᵀ U)
    for each column i:  q_i = clamp(round(w_i / s), -qmax, qmax)
                        e = (w_i − s·q_i) / U_ii
                        w_j ← w_j − e · U_ij            for j > i
    (lazy: inside a block of `block_size` columns, then once for all later columns)

Grouped and depthwise convs: one Hessian per group (its C/g input channels), the group's
output channels rounded against it; all groups at once (a leading batch axis).

Scales are fixed beforehand by the lowering's own weight rule (lower._quantize_weight: the
clip of the calibration method, symmetric, narrow range ±(2^(b−1)−1), per channel or per
tensor), so the codes GPTQ returns are ordinary integer weights at an ordinary scale; only
which way each weight rounds differs from round-to-nearest. Dead columns (diag H = 0: an
input that is zero on every calibration image) get H_ii = 1 before dampening; their H row is
zero, so they are rounded to nearest and neither send nor receive error feedback.

How it reaches the integer program: `rounded` returns a copy of the FloatGraph whose MAC
nodes carry attrs['weight_codes'] = {'codes', 'scale', 'bits'}; `lower` uses those codes in
place of round-to-nearest after checking that its own scale and width are the ones the codes
were rounded at (lower._precomputed_codes; a mismatch is an error, never a silent fallback).

Layer inputs (QuantConfig.gptq_inputs):
- 'sequential' (GPTQ's convention): layer l's Hessian is taken on the network whose earlier
  MAC layers already carry their GPTQ weights (s·q), activations in float;
- 'float': every Hessian on the float network (one pass for all layers).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from integer_ref.arith import qrange

from quantsim.errors import QuantsimError
from quantsim.graph.capture import FloatGraph, FNode, conv_padding, run_node
from quantsim.quant import rounding_cache
from quantsim.quant.config import GPTQ_INPUTS, QuantConfig
from quantsim.quant.layer_codes import LayerCodes, with_codes
from quantsim.quant.lower import _quantize_weight, weight_scale_floors
from quantsim.quant.quantizer import quantize

PERCDAMP = 0.01
BLOCK_SIZE = 128
_CHUNK_ELEMENTS = 1 << 24  # im2col elements per Hessian update (bounds memory on wide images)


# --- the algorithm, on one layer's weight matrix(es) ----------------------------------------------

def gptq_matrix(w: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, qmax: int,
                block_size: int = BLOCK_SIZE, percdamp: float = PERCDAMP) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ of weight matrices w (G, O, K) against Hessians h (G, K, K) at scales (G, O) or
    broadcastable to (G, O, 1). Returns (codes (G, O, K) int64, the weights as they stood when
    each column was rounded (G, O, K) float64: the error-fed weights GPTQ rounded)."""
    if w.dim() == 2:
        codes, seen = gptq_matrix(w[None], h[None], scale, qmax, block_size, percdamp)
        return codes[0], seen[0]
    w = w.detach().double().clone()
    h = h.detach().double().clone()
    n_groups, n_out, k = w.shape
    s = torch.as_tensor(scale, dtype=torch.float64)
    s = s.reshape(n_groups, n_out, 1) if s.numel() == n_groups * n_out else s.reshape(-1, 1, 1).expand(n_groups, n_out, 1)
    diag = torch.diagonal(h, dim1=1, dim2=2)
    dead = diag == 0
    diag[dead] = 1.0
    damp = percdamp * diag.mean(dim=1, keepdim=True)
    diag += damp
    chol, info = torch.linalg.cholesky_ex(h)
    if int(info.max()) != 0:
        raise QuantsimError(f"GPTQ: the dampened Hessian is not positive definite (percdamp {percdamp}): "
                            "raise the dampening or give more calibration images")
    hinv = torch.cholesky_inverse(chol)
    u, info = torch.linalg.cholesky_ex(hinv, upper=True)
    if int(info.max()) != 0:
        raise QuantsimError(f"GPTQ: H^-1 is not positive definite (percdamp {percdamp}): raise the dampening")
    codes = torch.zeros(w.shape, dtype=torch.int64)
    seen = torch.zeros_like(w)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1 = w[:, :, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, :, i]                                            # (G, O)
            q = quantize(col, s[:, :, 0], -qmax, qmax)                   # round half to even, as lowering
            codes[:, :, i1 + i] = q.to(torch.int64)
            seen[:, :, i1 + i] = col
            e = (col - q * s[:, :, 0]) / u1[:, i, i][:, None]           # (G, O)
            w1[:, :, i:] -= e[:, :, None] * u1[:, None, i, i:]
            err1[:, :, i] = e
        w[:, :, i2:] -= err1 @ u[:, i1:i2, i2:]
    return codes, seen


# --- Hessians from calibration inputs ------------------------------------------------------------

def _groups(n: FNode) -> int:
    return int(n.attrs.get("groups", 1)) if n.op == "conv" else 1


def im2col(x: torch.Tensor, kernel, stride, dilation) -> torch.Tensor:
    """F.unfold(x, kernel, dilation, 0, stride) (equal to it, tests/test_gptq.py) by strided slices:
    (N, C·kh·kw, L), channel-major then (kh, kw). Several times faster than F.unfold on CPU."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    parts = [x[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
             for i in range(kh) for j in range(kw)]
    return torch.stack(parts, 2).reshape(n, c * kh * kw, ho * wo)


def layer_columns(n: FNode, x: torch.Tensor) -> torch.Tensor:
    """The input vectors the layer multiplies its weight rows with, per image and group:
    (N', G, K_g, L) (linear: N' = 1, L = every vector; conv: L = the output positions)."""
    if n.op == "linear":
        return x.reshape(-1, x.shape[-1]).T[None, None]
    t, b, l, r = conv_padding(n.attrs, x.shape[2], x.shape[3])
    cols = im2col(F.pad(x, (l, r, t, b)), n.attrs["kernel"], n.attrs["stride"], n.attrs["dilation"])
    g = _groups(n)
    return cols.reshape(cols.shape[0], g, cols.shape[1] // g, cols.shape[2])


class Hessian:
    """H = 2/n · Σ x xᵀ of one layer, per group: float32 sums per chunk of images, added in float64."""

    def __init__(self, n: FNode):
        self.node = n
        g = _groups(n)
        k = int(np.prod(n.weight.shape[1:]))
        self.h = torch.zeros(g, k, k, dtype=torch.float64)
        self.samples = 0

    def add(self, x: torch.Tensor) -> None:
        kk = int(np.prod(self.node.attrs["kernel"])) if self.node.op == "conv" else 1
        step = max(1, _CHUNK_ELEMENTS // max(1, int(np.prod(x.shape[1:])) * kk))
        for xb in x.split(step):
            cols = layer_columns(self.node, xb.detach().float())
            n_img, g, k, m = cols.shape
            flat = cols.reshape(n_img * g, k, m)
            self.h += torch.bmm(flat, flat.transpose(1, 2)).reshape(n_img, g, k, k).sum(0).double()
            self.samples += n_img * m if self.node.op == "conv" else m

    @property
    def value(self) -> torch.Tensor:
        return 2.0 * self.h / max(self.samples, 1)


def check_rank(hess: Hessian) -> None:
    """Fewer input vectors than columns: H cannot have full rank; GPTQ's feedback would rest on
    the dampening alone. An error, with what would fix it."""
    k = hess.h.shape[1]
    if hess.samples < k:
        n = hess.node
        raise QuantsimError(f"GPTQ on {n.source or n.name}: its Hessian has {k} columns but the calibration images "
                            f"give only {hess.samples} input vectors (rank < {k}): use at least {k} calibration "
                            "images (--calib) or --rounding nearest")


# --- one layer, and the whole graph -----------------------------------------------------------

def weight_scale(n: FNode, w_bits: int, cfg: QuantConfig) -> tuple[np.ndarray, np.ndarray]:
    """(round-to-nearest codes, scale) by the lowering's own weight rule."""
    q, qp, _ = _quantize_weight(n, w_bits, cfg)
    return q, np.asarray(qp.scale, np.float64)


def quantize_layer(n: FNode, hess: Hessian, w_bits: int, cfg: QuantConfig,
                   block_size: int = BLOCK_SIZE, percdamp: float = PERCDAMP) -> LayerCodes:
    t0 = time.perf_counter()
    check_rank(hess)
    _, scale = weight_scale(n, w_bits, cfg)
    _, qmax = qrange(w_bits, True)
    g = hess.h.shape[0]
    out = n.weight.shape[0]
    w = n.weight.detach().double().reshape(g, out // g, -1)
    s = torch.from_numpy(np.broadcast_to(scale, (out,)).copy()).reshape(g, out // g)
    codes, _ = gptq_matrix(w, hess.value, s, qmax, block_size, percdamp)
    return LayerCodes(codes.reshape(n.weight.shape).numpy(), scale, w_bits, time.perf_counter() - t0)


def dequantized(n: FNode, lc: LayerCodes) -> torch.Tensor:
    s = lc.scale.reshape((-1,) + (1,) * (lc.codes.ndim - 1)) if lc.scale.ndim else lc.scale
    return torch.from_numpy(lc.codes * s).to(n.weight.dtype)


@torch.no_grad()
def gptq_codes(g: FloatGraph, batches: list[torch.Tensor], cfg: QuantConfig, inputs: str = "sequential",
               progress: bool = False) -> dict[str, LayerCodes]:
    """GPTQ codes of every MAC layer of g at its width cfg.bits_for(layer)[0].

    One walk over the graph, node by node, for all calibration batches at once (a tensor is
    dropped when its last consumer has run): at a MAC layer its Hessian is accumulated from
    its input over every batch, its codes computed, and then its output, with the GPTQ
    weights s·q ('sequential') or the float ones ('float')."""
    if inputs not in GPTQ_INPUTS:
        raise QuantsimError(f"GPTQ inputs {inputs!r}: choose one of {', '.join(GPTQ_INPUTS)}")
    if not batches:
        raise QuantsimError("GPTQ needs the calibration images (Prepared.calib is empty)")
    last_use: dict[str, int] = {}
    for i, n in enumerate(g.nodes):
        for name in n.inputs:
            last_use[name] = i
    out: dict[str, LayerCodes] = {}
    values: dict[str, list[torch.Tensor]] = {}
    bar = tqdm(total=len(g.mac_nodes()), desc=f"gptq ({inputs})", unit="layer", disable=not progress, leave=False)
    for i, n in enumerate(g.nodes):
        if n.op == "input":
            values[n.name] = list(batches)
            continue
        weight = None
        if n.is_mac:
            hess = Hessian(n)
            for xb in values[n.inputs[0]]:
                hess.add(xb)
            out[n.name] = quantize_layer(n, hess, cfg.bits_for(n.name)[0], cfg)
            if inputs == "sequential":
                weight = dequantized(n, out[n.name])
            bar.update(1)
        ins = [values[name] for name in n.inputs]
        values[n.name] = [run_node(n, list(xs), weight) for xs in zip(*ins)]
        for name in n.inputs:
            if last_use[name] == i and name != g.output:
                del values[name]
    bar.close()
    return out


def rounded(g: FloatGraph, stats: dict, batches: list[torch.Tensor], cfg: QuantConfig, cache: dict | None = None,
            progress: bool = False, disk_cache: Path | None = None) -> FloatGraph:
    """g with GPTQ codes on every MAC layer (cfg.rounding == 'gptq'), rounded at the scales lowering
    gives with the calibration `stats` (the accumulator's bias floor included:
    lower.weight_scale_floors); cached per (graph, statistics, config) in `cache` and, when
    given, in the folder disk_cache (quant/rounding_cache.py)."""
    key = ("gptq", id(g), id(stats), json.dumps(cfg.to_json(), sort_keys=True))
    if cache is not None and key in cache:
        return cache[key][2]
    src = weight_scale_floors(g, stats, cfg)
    codes, _ = rounding_cache.cached(disk_cache, "gptq", g, stats, batches, cfg,
                                     lambda: (gptq_codes(src, batches, cfg, cfg.gptq_inputs, progress), {}))
    out = with_codes(src, codes)
    if cache is not None:
        cache[key] = (g, stats, out)  # g and stats kept alive: their ids stay their own
    return out
