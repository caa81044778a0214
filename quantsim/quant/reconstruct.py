"""Block reconstruction (BRECQ, Li et al. 2021) with QDrop (Wei et al. 2022): learned weight
rounding and learned activation step sizes, unit by unit, on the unit's output error.

The fake-quantized network here quantizes exactly the tensors lowering quantizes, on the same
grid: every requantizing node's output (lower.activation_qparams: the input image, each MAC,
add, pool output; pass-through ops share their input's quantization) at its width, signedness
and scale, and every MAC weight at the lowering's own weight scale (accumulator floor included).

Units (`--reconstruct`):
- 'block': the graph cut into single-entry regions (a cut after node i when no tensor made
  before i is read after it): a ResNet BasicBlock (conv-conv-add, shortcut included) and an
  inverted-residual block with its skip are one region each; an inverted-residual block
  without a skip, or a plain chain, falls apart into single layers. Regions without a MAC layer
  (global pool, flatten) join the next region (the last one: the previous).
  In a pre-norm ViT the cuts fall after each residual add: a unit is one half of a transformer
  block (LayerNorm -> attention -> add, LayerNorm -> MLP -> add), the patch embedding and the
  final norm + head units of their own.
- 'layer': each MAC layer with the non-MAC nodes after it up to the next MAC layer.

Per unit, learned jointly (Adam; batches of adaround.BATCH calibration images, one seeded
torch.Generator for batches and drop masks):
- each MAC weight's rounding variable V (adaround.RoundingVariable: AdaRound's rectified sigmoid,
  its annealed regulariser λ·Σ(1 − |2h − 1|^β), lr adaround.LR);
- the step s of each tensor the unit produces (input image included in the first unit), an LSQ
  step (Esser et al. 2020: straight-through rounding, so ∂/∂s is LSQ's), held as log s (lr
  STEP_LR: a relative step, the same for every tensor's magnitude), initialised at the
  calibration scale (the run's --calib-method). Concat members keep theirs (they share one).
Loss: adaround.reconstruction of each unit output (the tensors read after the unit) against
the float network's, plus the regulariser. The unit's input comes from the already-quantized
network (earlier units at their final codes and steps); QDrop: during reconstruction each
element of the unit's input is the float network's value with probability p, and each tensor
the unit quantizes keeps its unquantized value with probability p (p = --qdrop; 0: BRECQ).

How it reaches the integer program, which stays ordinary integers: the codes as AdaRound's
(attrs['weight_codes'] on a FloatGraph copy, checked by lower against its own width and scale)
and the steps as TensorStats.clip_override = s·qmax on a copy of the statistics, the clip
lower.activation_qparams already reads, so the lowered scale is act_scale(clip, qmax). The
fake quantization after a unit is learned uses that lowered scale, so later units see what the
program computes. A learned step changes the accumulator floor of the weight scales
(lower.with_weight_scale_floors reads the input scale): a channel whose floored scale moved is
rounded to nearest at the lowering's scale (counted in the info as 'floor_rerounded').

ViT graphs: a unit's fake-quantized forward quantizes what lowering quantizes: both operands of
the matmuls between activations (q·kᵀ, attention·V: the qkv linear's output, the softmax's), the
softmax output on its fixed grid (2^-b, or --softmax-quant log2's codes), LayerNorm, GELU and
the 16-bit residual stream. Softmax, GELU and LayerNorm take their forward value from the integer
kernels the program runs (the node lower.nonlinear_node builds at the current steps, evaluated by
quantsim.emulate.kernels_vit) and their gradient from the float op (straight through), so the
integer approximations (I-BERT's exp and GELU polynomials, the integer LayerNorm) are what the
learned rounding and steps compensate. Fixed, not learned: softmax outputs and a ViT's tensors of
VIT_FIXED_BITS and more. A --reparam-ln graph is an ordinary ViT graph here (the factors are
already in the LayerNorms and linears).

Reproducible to the bit at a fixed seed (CPU, one intra-op thread while optimising). Cached per
(graph, statistics, config) as AdaRound.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from integer_ref.ir import QParams

from quantsim.emulate import kernels_vit as emulate_vit
from quantsim.errors import QuantsimError
from quantsim.graph.capture import LUT_OPS, PASSTHROUGH_OPS, FloatGraph, FNode, run_node
from quantsim.quant import adaround, rounding_cache
from quantsim.quant.adaround import BATCH, LAMBDA, OPT_THREADS, RoundingVariable, beta_at, reconstruction, \
    regulariser, torch_threads, track
from quantsim.quant.calibrate import TensorStats
from quantsim.quant.config import QuantConfig
from quantsim.quant.gptq import dequantized, weight_scale
from quantsim.quant.layer_codes import LayerCodes, with_codes
from quantsim.quant.lower import NONLINEAR_OPS, _root, activation_qparams, concat_groups, log2_depth, nonlinear_node, \
    weight_scale_floors
from quantsim.quant.quantizer import act_scale, fake_quant_act

# Adam on log s (a relative change of the step per iteration). ResNet-20 W4A4, 64 calibration images,
# stem + layer1.0 reconstructed 120 iterations, qdrop 0.5: layer1.0's output error in the program on 16
# held-out images 0.044 at 1e-2, 0.087 at 1e-3, 0.043 at 3e-2 (per-layer AdaRound 0.100, nearest 0.119)
STEP_LR = 1e-2


# --- units ---------------------------------------------------------------------------------------

def _cuts(g: FloatGraph) -> list[int]:
    """Indices i such that no tensor produced before node i is read after it."""
    pos = {n.name: i for i, n in enumerate(g.nodes)}
    earliest_after = [math.inf] * len(g.nodes)  # earliest producer read by nodes i+1..
    m = math.inf
    for i in range(len(g.nodes) - 1, -1, -1):
        earliest_after[i] = m
        for name in g.nodes[i].inputs:
            m = min(m, pos[name])
    return [i for i in range(len(g.nodes)) if earliest_after[i] >= i]


def units(g: FloatGraph, kind: str) -> list[list[str]]:
    """The graph's nodes in reconstruction units, in order (every node in exactly one)."""
    if kind == "layer":
        out: list[list[str]] = [[]]
        for n in g.nodes:
            if n.is_mac and any(g[m].is_mac for m in out[-1]):
                out.append([])
            out[-1].append(n.name)
        return out
    if kind != "block":
        raise QuantsimError(f"reconstruction unit {kind!r}: choose block or layer")
    segs, start = [], 0
    for c in _cuts(g):
        segs.append([n.name for n in g.nodes[start:c + 1]])
        start = c + 1
    if start < len(g.nodes):
        segs.append([n.name for n in g.nodes[start:]])
    merged: list[list[str]] = []
    carry: list[str] = []
    for seg in segs:
        carry += seg
        if any(g[m].is_mac for m in carry):
            merged.append(carry)
            carry = []
    if carry:
        if merged:
            merged[-1] += carry
        else:
            merged.append(carry)
    return merged


# --- one unit ------------------------------------------------------------------------------------

class LsqFakeQuant(torch.autograd.Function):
    """clamp(round(x / s), qmin, qmax) · s with LSQ's straight-through gradients (Esser et al. 2020):
    ∂/∂x = 1 where qmin < round(x / s) < qmax, else 0; ∂/∂s = round(x / s) − x / s there, else the
    clamped code (what autograd gives clamp(z + (round(z) − z).detach(), qmin, qmax) · s: torch's
    clamp passes no gradient at the bounds). One function instead of autograd's chain of seven ops:
    on EfficientNet-Lite0's 112×112 tensors the elementwise passes, not the convolutions, dominated
    a unit's iteration."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, s: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
        ctx.save_for_backward(x, s)
        ctx.grid = (qmin, qmax)
        return torch.round(x / s).clamp_(qmin, qmax).mul_(s)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, s = ctx.saved_tensors
        qmin, qmax = ctx.grid
        z = x / s
        r = torch.round(z)
        inside = (r > qmin) & (r < qmax)
        grad_x = grad * inside
        grad_s = (grad * torch.where(inside, r - z, r.clamp_(qmin, qmax))).sum().reshape(s.shape)
        return grad_x, grad_s, None, None


def rand_like_layout(t: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """Uniform [0, 1) numbers of t's shape in t's memory layout (a channels-last tensor's mask stays
    channels-last, so the ops after it do too); one draw of gen per element either way."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        n, c, h, w = t.shape
        return torch.rand((n, h, w, c), generator=gen).permute(0, 3, 1, 2)
    return torch.rand(t.shape, generator=gen)


@dataclass
class Step:
    """A tensor's quantizer: its grid and (if learned) log-step."""
    qmin: int
    qmax: int
    scale: float                        # float64: the calibration scale, then what lowering gives it
    learn: bool                         # False: a concat member (its group shares one scale), a softmax, ...
    log_s: torch.Tensor | None = None   # while learning; None: fixed at scale
    clip: float | None = None           # the learned clip once fixed (TensorStats.clip_override)
    qp: QParams | None = None           # lowering's quantization of the tensor (width, signedness)
    log2_exp: int | None = None         # a log2 softmax: the depth K of its codes (lower.log2_depth)

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        if self.log_s is None:
            return fake_quant_act(x, self.scale, self.qmin, self.qmax)
        return LsqFakeQuant.apply(x, torch.exp(self.log_s), self.qmin, self.qmax)

    def current(self) -> float:
        """The step as a float64 number (the learned one, detached, while learning)."""
        return self.scale if self.log_s is None else float(torch.exp(self.log_s.detach()).double())

    def qparams(self) -> QParams:
        return replace(self.qp, scale=np.float64(self.current()))


class _NodeInputs:
    """What quantsim.emulate.kernels_vit.run_node reads of an executor's state for one nonlinear node
    (its input's zero point: ours are 0)."""
    qp: dict = {}
    acc_bits = 32
    acc_overflow = "count"


def _integer_nonlinear(g: FloatGraph, n: FNode, x: torch.Tensor, steps: dict[str, Step],
                       cfg: QuantConfig) -> torch.Tensor:
    """Softmax / GELU / LayerNorm as the program computes them: the input's codes at its current
    step through the node lowering builds (lower.nonlinear_node) and the emulator's integer kernel,
    dequantized (a log2 softmax's code k as 2^-k, its zero code as 0)."""
    s_in, s_out = steps[_root(g, n.inputs[0])], steps[n.name]
    in_q, out_q = s_in.qparams(), s_out.qparams()
    node = nonlinear_node(n, in_q, out_q, cfg, x.shape[-1], s_out.log2_exp)
    codes = torch.clamp(torch.round(x.detach().double() / float(in_q.scale)), s_in.qmin, s_in.qmax).to(torch.int64)
    y, _ = emulate_vit.run_node(node, [codes], _NodeInputs)
    if s_out.log2_exp is not None:
        return torch.where(y == out_q.qmax, 0.0, torch.pow(2.0, -y.double())).to(x.dtype)
    return (y.double() * float(out_q.scale)).to(x.dtype)


def _run_unit(g: FloatGraph, names: list[str], ext: dict[str, torch.Tensor], weights: dict[str, torch.Tensor],
              steps: dict[str, Step], cfg: QuantConfig, drop: float = 0.0,
              gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The unit's nodes on external inputs `ext`, every requantized tensor fake-quantized at its step
    (an element keeps its unquantized value with probability `drop`). Softmax, GELU and LayerNorm
    (quantized units: steps given) take their value from the integer kernels the program runs and
    their gradient from the float op (straight through): softmax's float probabilities, the others'
    float output fake-quantized at its step (LSQ's gradient in that step)."""
    vals = dict(ext)
    for name in names:
        n = g[name]
        y = vals.pop("__image__") if n.op == "input" else run_node(n, [vals[i] for i in n.inputs], weights.get(name))
        if name in steps:
            if n.op in NONLINEAR_OPS:
                surrogate = y if n.op == "softmax" else steps[name].fake_quant(y)
                exact = _integer_nonlinear(g, n, vals[n.inputs[0]], steps, cfg)
                yq = surrogate + (exact - surrogate).detach()
            else:
                yq = steps[name].fake_quant(y)
            if drop > 0:
                keep = rand_like_layout(y, gen) < drop
                yq = torch.where(keep, y, yq)
            y = yq
        vals[name] = y
    return vals


def channel_axis(t: torch.Tensor) -> int:
    """The axis the reconstruction loss sums over: a ViT's tokens (B, N, C) carry channels last."""
    return -1 if t.dim() == 3 else 1


def _is_vit(g: FloatGraph) -> bool:
    return any(n.op in NONLINEAR_OPS or n.op == "matmul" for n in g.nodes)


# a ViT's tensors at 16 bits and more (the residual stream, softmax / GELU inputs, the logits) keep
# their calibration steps: their rounding error is already negligible, and Adam moves a log-step by
# about its learning rate every iteration whatever the size of the gradient, so a learned step there
# only wanders and may clip the residual stream's outliers
VIT_FIXED_BITS = 16


def _steps(g: FloatGraph, stats: dict[str, TensorStats], cfg: QuantConfig) -> dict[str, Step]:
    """A Step per requantized tensor at the calibration scale; fixed: concat members, the tensor a
    class token joins (its scale is calibrated on both), softmax outputs (2^-b or log2, not
    calibrated) and a ViT's wide tensors (VIT_FIXED_BITS)."""
    q = activation_qparams(g, stats, cfg)
    fixed = set(concat_groups(g)) | {_root(g, n.inputs[0]) for n in g.nodes if n.op == "concat_token"}
    vit = _is_vit(g)
    out = {}
    for n in g.nodes:
        if n.op in PASSTHROUGH_OPS:
            continue
        qp = q[n.name]
        qmin, qmax = qp.qmin - qp.zero_point, qp.qmax - qp.zero_point
        learn = n.name not in fixed and n.op != "softmax" and not (vit and qp.bits >= VIT_FIXED_BITS)
        log2_exp = log2_depth(g, n.name, q, cfg) if n.op == "softmax" and cfg.softmax_quant == "log2" else None
        out[n.name] = Step(qmin, qmax, float(qp.scale), learn, qp=qp, log2_exp=log2_exp)
    return out


# --- spatial crops of wide units ----------------------------------------------------------------

@dataclass
class CropPlan:
    """Where a unit of local ops (convolutions, adds, activations) is learned on aligned square crops
    of its input instead of whole images: each iteration one window of `side` input pixels, at an
    offset that is a multiple of the unit's stride, and the loss on the window's output except the
    `margin` output rows / columns next to a crop edge inside the image (those see the crop's
    padding, not the image's); the rest equals the whole image's output there (checked on the
    calibration inputs when the plan is made), so the loss is the whole-image loss on a random
    window and every learned quantity is the one learned on whole images, at a fraction of the
    pixels per step."""
    side: int                        # input pixels of the window (both axes)
    stride: int                      # input pixels per output pixel
    size: tuple[int, int]            # the unit's input (H, W)
    margin: tuple[int, int, int, int]  # output rows / cols not compared: top, bottom, left, right

    def draw(self, gen: torch.Generator) -> tuple[int, int]:
        (h, w), s = self.size, self.stride
        ny, nx = (h - self.side) // s + 1, (w - self.side) // s + 1
        r = int(torch.randint(ny * nx, (1,), generator=gen))
        return s * (r // nx), s * (r % nx)

    def window(self, t: torch.Tensor, y0: int, x0: int) -> torch.Tensor:
        """The window at (y0, x0) of a unit input (a view)."""
        return t[:, :, y0:y0 + self.side, x0:x0 + self.side]

    def out_window(self, t: torch.Tensor, y0: int, x0: int) -> torch.Tensor:
        """The outputs of the window at (y0, x0), in a unit output of whole images (a view)."""
        s, n = self.stride, self.side // self.stride
        return t[:, :, y0 // s:y0 // s + n, x0 // s:x0 // s + n]

    def compared(self, y0: int, x0: int) -> tuple[slice, slice]:
        """The window's output rows and columns compared (in the window's output)."""
        (h, w), s = self.size, self.stride
        top, bottom, left, right = self.margin
        n = self.side // s
        rows = slice(top if y0 > 0 else 0, n - (bottom if y0 + self.side < h else 0))
        cols = slice(left if x0 > 0 else 0, n - (right if x0 + self.side < w else 0))
        return rows, cols


# the ops a window computes as the whole image does away from its edges (no global pooling,
# flatten, linear or attention)
LOCAL_OPS = {"input", "conv", "add", "add_const", "mul", "relu", "relu6", "pad", "maxpool", "avgpool", *LUT_OPS}


def _crop_plan(g: FloatGraph, names: list[str], ext_f: dict[str, torch.Tensor], f_out: dict[str, torch.Tensor],
               outs: list[str], cfg: QuantConfig) -> CropPlan | None:
    """A CropPlan for the unit when cfg.recon_crop asks for one and the unit is wider than it:
    4-D inputs of one size, 4-D outputs of one size at an integer stride, local ops only, and the
    window's output equal to the whole image's away from its edges (measured here); else None."""
    side = cfg.recon_crop
    if not side or any(g[n].op not in LOCAL_OPS for n in names):
        return None
    ins = list(ext_f.values())
    tgt = [f_out[k] for k in outs]
    if any(t.dim() != 4 for t in ins + tgt) or len({t.shape[2:] for t in ins}) != 1 or len({t.shape[2:] for t in tgt}) != 1:
        return None
    h, w = ins[0].shape[2:]
    ho, wo = tgt[0].shape[2:]
    if h % ho or w % wo or h // ho != w // wo:
        return None
    stride = h // ho
    side = side - side % stride
    if side <= 0 or side >= min(h, w):
        return None
    # measure the margin: a window in the middle of a few inputs against the whole images' outputs
    y0 = stride * ((h - side) // (2 * stride))
    x0 = stride * ((w - side) // (2 * stride))
    n = side // stride
    plan = CropPlan(side, stride, (int(h), int(w)), (0, 0, 0, 0))
    probe = _run_unit(g, names, {k: plan.window(v[:4], y0, x0) for k, v in ext_f.items()}, {}, {}, cfg)
    bad = torch.zeros(n, n, dtype=torch.bool)  # output positions of the window that differ
    for k in outs:
        ref = plan.out_window(f_out[k][:4], y0, x0)
        tol = 1e-4 * float(ref.abs().max().clamp(min=1e-12))
        bad |= ((probe[k] - ref).abs() > tol).any(1).any(0)

    def band(line: torch.Tensor) -> tuple[int, int] | None:
        """(leading, trailing) run of differing positions on a line through the window's middle."""
        idx = torch.nonzero(line).flatten().tolist()
        lo = next((i for i in range(n) if not line[i]), n)
        hi = next((i for i in range(n) if not line[n - 1 - i]), n)
        return (lo, hi) if len(idx) == lo + hi and lo + hi < n // 2 else None

    r, c = band(bad[:, n // 2]), band(bad[n // 2, :])
    # a local unit: every differing position lies in the edge bands (else: no windows for it)
    if r is None or c is None or bad[r[0]:n - r[1], c[0]:n - c[1]].any():
        return None
    return replace(plan, margin=(*r, *c))


def reconstruct_unit(g: FloatGraph, names: list[str], ext_q: dict[str, torch.Tensor], ext_f: dict[str, torch.Tensor],
                     targets: dict[str, torch.Tensor], rvs: dict[str, RoundingVariable], steps: dict[str, Step],
                     cfg: QuantConfig, gen: torch.Generator, bar: tqdm | None = None, label: str = "",
                     crop: CropPlan | None = None) -> dict:
    """Learn the rounding of the unit's MAC layers (rvs) and the steps of its learned tensors (in
    place: steps[name].log_s) on the unit outputs' reconstruction (on windows: `crop`). Returns
    loss info."""
    learned = [name for name in names if name in steps and steps[name].learn]
    for name in learned:
        steps[name].log_s = torch.tensor(math.log(steps[name].scale), dtype=torch.float32, requires_grad=True)
    params_v = [rv.v for rv in rvs.values()]
    opts = []
    if params_v:
        opts.append(torch.optim.Adam(params_v, lr=adaround.LR))
    if learned:
        opts.append(torch.optim.Adam([steps[n].log_s for n in learned], lr=STEP_LR))
    iters = cfg.recon_iters
    n_samples = next(iter(targets.values())).shape[0]
    batch = min(BATCH, n_samples)
    losses = []
    for it in range(iters):
        idx = torch.randint(n_samples, (batch,), generator=gen)
        if crop is not None:  # one window per iteration, sliced before the batch is gathered
            y0, x0 = crop.draw(gen)
            rows, cols = crop.compared(y0, x0)
        ext = {}
        for k in ext_q:
            xq, xf = ext_q[k], ext_f[k]
            if crop is not None:
                xq, xf = crop.window(xq, y0, x0), crop.window(xf, y0, x0)
            xq, xf = xq[idx], xf[idx]  # (advanced indexing keeps channels-last, windows too)
            if cfg.qdrop > 0:
                xq = torch.where(rand_like_layout(xq, gen) < cfg.qdrop, xf, xq)
            ext[k] = xq
        hs = {k: rv.h() for k, rv in rvs.items()}
        weights = {k: rvs[k].soft_weight(h) for k, h in hs.items()}
        vals = _run_unit(g, names, ext, weights, steps, cfg, cfg.qdrop, gen)
        if crop is None:
            rec = sum(reconstruction(vals[k], targets[k][idx], channel_axis(vals[k])) for k in targets)
        else:
            rec = sum(reconstruction(vals[k][:, :, rows, cols], crop.out_window(targets[k], y0, x0)[idx][:, :, rows, cols])
                      for k in targets)
        beta = beta_at(it, iters)
        loss = rec if beta is None else rec + LAMBDA * sum(regulariser(h, beta) for h in hs.values())
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()
        track(it, iters, rec, loss, losses, bar, unit=label)
    for name in learned:  # fixed at the scale lowering will give it: clip = s·qmax, scale = act_scale(clip)
        st = steps[name]
        st.clip = float(torch.exp(st.log_s.detach()).double()) * st.qmax
        st.scale = act_scale(st.clip, st.qmax)
        st.log_s = None
    return {"loss_start": losses[0] if losses else math.nan, "loss_end": losses[-1] if losses else math.nan}


# --- the whole graph -----------------------------------------------------------------------------

@dataclass
class Reconstructed:
    codes: dict[str, LayerCodes]
    clips: dict[str, float]         # tensor -> learned clip (TensorStats.clip_override)
    scales: dict[str, float]        # tensor -> the scale lowering gives it: act_scale(clip, qmax)
    info: dict                      # unit (its first MAC layer) -> loss info; 'floor_rerounded': channels


def check_config(cfg: QuantConfig) -> None:
    if cfg.reconstruct == "none":
        raise QuantsimError("reconstruction asked for with --reconstruct none")


@torch.no_grad()
def reconstruct(g: FloatGraph, stats: dict[str, TensorStats], batches: list[torch.Tensor], cfg: QuantConfig,
                progress: bool = False, n_units: int | None = None) -> Reconstructed:
    """Block (or layer) reconstruction of g unit by unit (the first n_units only, the rest left at
    nearest rounding and calibration steps: for tests). g must carry the lowering's weight floors
    (lower.weight_scale_floors)."""
    check_config(cfg)
    for n in g.mac_nodes():
        adaround.check_layer(n)
    if not batches:
        raise QuantsimError("block reconstruction needs the calibration images (Prepared.calib is empty)")
    if not g.mac_nodes():
        raise QuantsimError("reconstruction learns the rounding of conv / linear layers: this graph has none")
    parts = units(g, cfg.reconstruct)
    todo = parts if n_units is None else parts[:n_units]
    steps = _steps(g, stats, cfg)
    gen = torch.Generator().manual_seed(cfg.recon_seed)
    unit_of = {name: i for i, part in enumerate(parts) for name in part}
    last_unit: dict[str, int] = {}
    for n in g.nodes:
        for name in n.inputs:
            last_unit[name] = max(last_unit.get(name, -1), unit_of[n.name])
    x_all = torch.cat(batches)
    if x_all.dim() == 4:  # images channels-last: CPU convolutions 2-3x faster forward and backward
        x_all = x_all.contiguous(memory_format=torch.channels_last)
    fvals: dict[str, torch.Tensor] = {"__image__": x_all}
    qvals: dict[str, torch.Tensor] = {"__image__": x_all}
    rvs_all: dict[str, RoundingVariable] = {}
    nearest: set[str] = set()  # layers of the units not reconstructed (n_units)
    info: dict[str, dict] = {}
    bar = tqdm(total=len(todo) * cfg.recon_iters, desc=f"reconstruct ({cfg.reconstruct})", unit="it",
               disable=not progress, leave=False)
    for ui, names in enumerate(parts):
        ext = sorted({i for name in names for i in g[name].inputs if unit_of[i] != ui})
        if g[names[0]].op == "input":
            ext = ["__image__"] + ext
        ext_f = {k: fvals[k] for k in ext}
        ext_q = {k: qvals[k] for k in ext}
        f_out = _run_unit(g, names, dict(ext_f), {}, {}, cfg)
        outs = [name for name in names if last_unit.get(name, -1) > ui or name == g.output]
        macs = [name for name in names if g[name].is_mac]
        rvs = {name: RoundingVariable(g[name], cfg.bits_for(name)[0], cfg) for name in macs}
        rvs_all.update(rvs)
        if ui < len(todo):
            t0 = time.perf_counter()
            with torch.enable_grad(), torch_threads(OPT_THREADS):
                crop = _crop_plan(g, names, ext_f, f_out, outs, cfg)
                info[macs[0]] = reconstruct_unit(g, names, ext_q, ext_f, {k: f_out[k] for k in outs}, rvs, steps,
                                                 cfg, gen, bar, macs[0], crop)
                info[macs[0]]["crop"] = None if crop is None else {"side": crop.side, "margin": list(crop.margin)}
            info[macs[0]]["seconds"] = time.perf_counter() - t0
            hard = {name: dequantized(g[name], rv.layer_codes(0.0)) for name, rv in rvs.items()}
        else:  # left at nearest rounding and the calibration steps
            hard = {name: dequantized(g[name], LayerCodes(*weight_scale(g[name], rv.w_bits, cfg), rv.w_bits, 0.0))
                    for name, rv in rvs.items()}
            nearest.update(macs)
        q_out = _run_unit(g, names, dict(ext_q), hard, steps, cfg)
        for k in outs:
            fvals[k], qvals[k] = f_out[k], q_out[k]
        for k in ext:
            if k != "__image__" and last_unit.get(k, -1) <= ui and k != g.output:
                del fvals[k], qvals[k]
    bar.close()
    clips = {name: st.clip for name, st in steps.items() if st.clip is not None}
    scales = {name: steps[name].scale for name in clips}
    codes = _final_codes(g, stats, cfg, rvs_all, nearest, clips, info)
    return Reconstructed(codes, clips, scales, info)


def with_clips(stats: dict[str, TensorStats], clips: dict[str, float]) -> dict[str, TensorStats]:
    """A copy of the statistics whose learned tensors carry their clip as clip_override."""
    return {k: replace(v, clip_override=clips[k]) if k in clips else v for k, v in stats.items()}


def _final_codes(g: FloatGraph, stats: dict[str, TensorStats], cfg: QuantConfig, rvs: dict[str, RoundingVariable],
                 nearest: set[str], clips: dict[str, float], info: dict) -> dict[str, LayerCodes]:
    """The codes at the weight scales lowering gives with the learned steps (their accumulator
    floors): a channel whose scale moved is rounded to nearest at the new scale."""
    floored = weight_scale_floors(g, with_clips(stats, clips), cfg)
    out, moved = {}, 0
    for name, rv in rvs.items():
        near, scale = weight_scale(floored[name], rv.w_bits, cfg)
        codes = near if name in nearest else rv.codes()
        same = np.broadcast_to(scale == rv.scale, (codes.shape[0],))
        if not same.all():
            moved += int((~same).sum())
            codes = np.where(same.reshape((-1,) + (1,) * (codes.ndim - 1)), codes, near)
        out[name] = LayerCodes(codes.astype(np.int64), scale, rv.w_bits, 0.0)
    info["floor_rerounded"] = moved
    return out


def _key(g: FloatGraph, stats: dict, cfg: QuantConfig) -> tuple:
    return ("reconstruct", id(g), id(stats), json.dumps(cfg.to_json(), sort_keys=True))


def reconstructed(g: FloatGraph, stats: dict[str, TensorStats], batches: list[torch.Tensor], cfg: QuantConfig,
                  cache: dict | None = None, progress: bool = False,
                  disk_cache: Path | None = None) -> tuple[FloatGraph, dict[str, TensorStats]]:
    """(g with the learned codes, the statistics with the learned clips): what lower takes;
    cached per (graph, statistics, config) in `cache` and, when given, in the folder disk_cache
    across runs (quant/rounding_cache.py)."""
    key = _key(g, stats, cfg)
    if cache is not None and key in cache:
        return cache[key][2]
    src = weight_scale_floors(g, stats, cfg)

    def learn():
        rec = reconstruct(src, stats, batches, cfg, progress)
        return rec.codes, rec.clips

    codes, clips = rounding_cache.cached(disk_cache, f"reconstruct-{cfg.reconstruct}", g, stats, batches, cfg, learn)
    out = (with_codes(src, codes), with_clips(stats, clips))
    if cache is not None:
        cache[key] = (g, stats, out)
    return out
