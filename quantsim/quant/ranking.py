"""Similarity-aware and ranking-aware scale search for ViTs (Liu et al., "Post-Training
Quantization for Vision Transformer", NeurIPS 2021), plus the order metrics we report.

Pieces (torch tensors in, plain floats or tensors out; CPU or GPU):

- ``pearson(o, o_hat)``: Pearson correlation of a float output and its quantized version,
  the similarity Γ the search maximises.
- ``ranking_loss(a, a_hat, theta=0.2)``: the pairwise hinge over attention rows,
  Σ_rows Σ_{i,j: a_i > a_j} Φ(â_i - â_j), Φ(p) = max(θ - p, 0): every pair is taken in
  the order of the float scores; it costs nothing once the quantized scores keep that
  order with a margin of at least θ. ``reduction='mean'`` divides by the number of
  ordered (non-tied) pairs so that it is on the scale of θ (the default: the objective
  Γ - γ·L_rank then weighs it against a correlation in [-1, 1]); ``'sum'`` is the paper's
  plain sum. Tied float pairs carry no order and are skipped.
- ``kendall_tau(a, a_hat)``: Kendall's τ-b per row, averaged over rows (rows where either
  side is constant have no τ and are left out, like scipy.stats.kendalltau's NaN).
- ``interval_search(objective, base, lo=0.5, hi=1.2, n=100)``: evaluate Δ = α·base for
  n values of α evenly spaced over [lo, hi] and keep the best; ``base`` may be a
  per-channel tensor and the objective return one score per channel.
- ``search_linear``: alternating search of Δ_W and Δ_X for a linear layer (≤ 20 rounds,
  stop when neither changes), objective Γ(XWᵀ, X̂Ŵᵀ). Per-channel weights search each
  output channel's α on that channel's correlation.
- ``search_matmul``: the same for an activation-activation product (q·kᵀ, attn·v). With
  ``ranking=True`` the objective is Γ - γ·L_rank on the product's rows (the attention
  scores; ``rank_on='probs'`` ranks softmax(scores) instead), γ = 0.1, θ = 0.2.
- ``bias_correction``: b' = b - E[X̂Ŵᵀ - XWᵀ] over the calibration rows, per output channel.

quantsim.quant.scale_search runs these pieces over a whole captured graph with the lowering's exact
quantizers (calib_method 'similarity' / 'ranking', bias correction) and measures the attention
Kendall τ of a lowered program; search_linear / search_matmul here are the per-layer forms.

Quantizers are symmetric and uniform with the project's narrow signed range
[-(2^(b-1)-1), 2^(b-1)-1] or unsigned [0, 2^b - 1], rounding half to even
(quantsim.quant.quantizer, in float32 here).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from integer_ref.arith import qrange

from quantsim.quant import quantizer as Q

THETA = 0.2   # ranking margin θ (Liu et al.)
GAMMA = 0.1   # weight γ of the ranking loss (Liu et al.)
SEARCH_LO, SEARCH_HI = 0.5, 1.2  # interval of α in Δ = α · (max-based Δ)
MAX_ROUNDS = 20
PAIR_CHUNK = 1 << 22  # elements of the (rows, N, N) pair tensors formed at once


def _t(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


# --- quantizer --------------------------------------------------------------------------------

def max_delta(x: torch.Tensor, bits: int, signed: bool = True, dim: int | None = None) -> torch.Tensor:
    """The max-based step: max|x| / qmax, per tensor or per slice along `dim` (kept as shape (C,))."""
    x = _t(x).float()
    if dim is None:
        m = x.abs().max()
    else:
        m = x.abs().transpose(0, dim).reshape(x.shape[dim], -1).max(dim=1).values
    # float32; the floor is on max|x| here (these per-layer forms' own), not on the step
    return Q.scale_from_clip(torch.clamp(m, min=1e-12), qrange(bits, signed)[1], dtype=torch.float32, floor=None)


def fake_quant(x: torch.Tensor, delta, bits: int, signed: bool = True, dim: int | None = None) -> torch.Tensor:
    """clamp(round(x / Δ)) · Δ; Δ scalar, or per slice along `dim` (shape (C,))."""
    x = _t(x).float()
    delta = torch.as_tensor(delta, dtype=torch.float32, device=x.device)
    if dim is not None:
        delta = Q.channel_view(delta, x.ndim, dim)
    return Q.fake_quant(x, delta, *qrange(bits, signed))


# --- metrics -------------------------------------------------------------------------------------

def pearson(a, b, dim: int | None = None) -> torch.Tensor:
    """Pearson correlation of a and b: over all elements (dim None) or along `dim` (per slice).

    A constant input has no correlation: 0 is returned for it (the search then never prefers it).
    """
    a, b = _t(a).double(), _t(b).double()
    if dim is None:
        a, b = a.reshape(-1), b.reshape(-1)
        dim = 0
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    num = (a * b).sum(dim=dim)
    den = torch.sqrt((a * a).sum(dim=dim) * (b * b).sum(dim=dim))
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))


def _rows(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _t(a).float(), _t(b).float()
    if a.shape != b.shape:
        raise ValueError(f"float and quantized attention differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    n = a.shape[-1]
    return a.reshape(-1, n), b.to(a.device).reshape(-1, n)


def ranking_loss(float_attn, quant_attn, theta: float = THETA, reduction: str = "mean") -> torch.Tensor:
    """Liu et al.'s pairwise ranking hinge over the last axis (see the module docstring)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    f, q = _rows(float_attn, quant_attn)
    n = f.shape[1]
    step = max(1, PAIR_CHUNK // max(1, n * n))
    total = torch.zeros((), dtype=torch.float64, device=f.device)
    pairs = 0
    for i in range(0, f.shape[0], step):
        fs, qs = f[i:i + step], q[i:i + step]
        ordered = (fs[:, :, None] - fs[:, None, :]) > 0            # i above j in the float order
        p = qs[:, :, None] - qs[:, None, :]                         # quantized difference in that order
        total = total + torch.clamp(theta - p, min=0).masked_fill(~ordered, 0).sum(dtype=torch.float64)
        pairs += int(ordered.sum())
    return total / max(pairs, 1) if reduction == "mean" else total


def kendall_tau_rows(float_attn, quant_attn) -> torch.Tensor:
    """Kendall's τ-b of each row (NaN where either row is constant), shape (rows,)."""
    f, q = _rows(float_attn, quant_attn)
    n = f.shape[1]
    step = max(1, PAIR_CHUNK // max(1, n * n))
    out = []
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=f.device), diagonal=1)
    for i in range(0, f.shape[0], step):
        sf = torch.sign(f[i:i + step, :, None] - f[i:i + step, None, :])[:, upper]
        sq = torch.sign(q[i:i + step, :, None] - q[i:i + step, None, :])[:, upper]
        s = (sf * sq).sum(dim=1, dtype=torch.float64)
        den = torch.sqrt((sf != 0).sum(dim=1).double() * (sq != 0).sum(dim=1).double())
        out.append(torch.where(den > 0, s / torch.where(den > 0, den, torch.ones_like(den)),
                               torch.full_like(den, float("nan"))))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


def kendall_tau(float_attn, quant_attn) -> float:
    """Mean Kendall τ-b over attention rows (rows without a τ are skipped)."""
    tau = kendall_tau_rows(float_attn, quant_attn)
    tau = tau[~torch.isnan(tau)]
    return float(tau.mean()) if tau.numel() else float("nan")


# --- search ----------------------------------------------------------------------------------------

def candidates(base, lo: float = SEARCH_LO, hi: float = SEARCH_HI, n: int = 100) -> list[torch.Tensor]:
    """The n candidate steps α·base, α evenly spaced over [lo, hi] (both ends included)."""
    base = torch.as_tensor(base, dtype=torch.float32)
    return [base * float(a) for a in np.linspace(lo, hi, n)]


def interval_search(objective: Callable[[torch.Tensor], torch.Tensor], base, lo: float = SEARCH_LO,
                    hi: float = SEARCH_HI, n: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """(best Δ, its score): Δ = α·base maximising objective(Δ) over n values of α in [lo, hi].

    For a per-channel base (shape (C,)) the objective returns (C,) scores and each channel
    keeps its own best α. Ties keep the smallest α (the first candidate reaching the max).
    """
    best_delta, best_score = None, None
    for delta in candidates(base, lo, hi, n):
        score = torch.as_tensor(objective(delta), dtype=torch.float64).cpu()
        if best_score is None:
            best_delta, best_score = delta.clone(), score.clone()
            continue
        better = score > best_score
        best_score = torch.where(better, score, best_score)
        best_delta = torch.where(better.to(delta.device) if delta.ndim else better, delta, best_delta)
    return best_delta, best_score


@dataclass
class SearchResult:
    delta_a: torch.Tensor          # Δ of the first operand (weights for a linear layer: Δ_W)
    delta_b: torch.Tensor          # Δ of the second operand (Δ_X for a linear layer)
    score: float                   # final objective
    rounds: int
    history: list[float] = field(default_factory=list)  # objective after each round

    @property
    def delta_w(self) -> torch.Tensor:
        return self.delta_a

    @property
    def delta_x(self) -> torch.Tensor:
        return self.delta_b


def _linear_out(x, w, bias):
    y = x @ w.t()
    return y + bias if bias is not None else y


def search_linear(x, weight, bias=None, w_bits: int = 8, x_bits: int = 8, x_signed: bool = True,
                  per_channel: bool = False, n: int = 100, rounds: int = MAX_ROUNDS,
                  lo: float = SEARCH_LO, hi: float = SEARCH_HI) -> SearchResult:
    """Alternating similarity-aware search of Δ_W and Δ_X for y = x Wᵀ + b (x: (..., K), W: (O, K))."""
    x = _t(x).float().reshape(-1, _t(x).shape[-1])
    w = _t(weight).float().to(x.device)
    b = _t(bias).float().to(x.device) if bias is not None else None
    ref = _linear_out(x, w, b)
    base_w = max_delta(w, w_bits, True, dim=0 if per_channel else None)
    base_x = max_delta(x, x_bits, x_signed)
    dw, dx = base_w.clone(), base_x.clone()

    def score_w(delta):  # per-channel: one correlation per output column
        out = _linear_out(xq, fake_quant(w, delta, w_bits, True, dim=0), b)
        return pearson(ref, out, dim=0) if per_channel else pearson(ref, out)

    def score_x(delta):
        return pearson(ref, _linear_out(fake_quant(x, delta, x_bits, x_signed), wq, b))

    history: list[float] = []
    done = 0
    for done in range(1, rounds + 1):
        xq = fake_quant(x, dx, x_bits, x_signed)
        new_dw, _ = interval_search(score_w, base_w, lo, hi, n)
        wq = fake_quant(w, new_dw, w_bits, True, dim=0)
        new_dx, s = interval_search(score_x, base_x, lo, hi, n)
        history.append(float(s))
        changed = not (torch.equal(new_dw.cpu(), dw.cpu()) and torch.equal(new_dx.cpu(), dx.cpu()))
        dw, dx = new_dw, new_dx
        if not changed:
            break
    return SearchResult(dw, dx, history[-1], done, history)


def search_matmul(a, b, a_bits: int = 8, b_bits: int = 8, a_signed: bool = True, b_signed: bool = True,
                  scale: float = 1.0, ranking: bool = False, rank_on: str = "scores", gamma: float = GAMMA,
                  theta: float = THETA, n: int = 100, rounds: int = MAX_ROUNDS, lo: float = SEARCH_LO,
                  hi: float = SEARCH_HI) -> SearchResult:
    """Alternating search of Δ_a and Δ_b for the product scale · a @ b (batched over leading axes).

    For q·kᵀ pass a = q (..., N, d) and b = kᵀ (..., d, N), scale = 1/√d; ranking=True adds
    -γ·L_rank over the rows of the product (rank_on 'scores') or of its softmax ('probs').
    For attn·v pass a = attention probabilities (a_signed=False) and b = v.
    """
    if rank_on not in ("scores", "probs"):
        raise ValueError(f"rank_on must be 'scores' or 'probs', got {rank_on!r}")
    a, b = _t(a).float(), _t(b).float()
    b = b.to(a.device)
    ref = scale * (a @ b)
    ref_rank = torch.softmax(ref, -1) if rank_on == "probs" else ref
    base_a, base_b = max_delta(a, a_bits, a_signed), max_delta(b, b_bits, b_signed)
    da, db = base_a.clone(), base_b.clone()

    def objective(out):
        s = pearson(ref, out)
        if ranking:
            s = s - gamma * ranking_loss(ref_rank, torch.softmax(out, -1) if rank_on == "probs" else out, theta)
        return s

    history: list[float] = []
    done = 0
    for done in range(1, rounds + 1):
        bq = fake_quant(b, db, b_bits, b_signed)
        new_da, _ = interval_search(lambda d: objective(scale * (fake_quant(a, d, a_bits, a_signed) @ bq)),
                                    base_a, lo, hi, n)
        aq = fake_quant(a, new_da, a_bits, a_signed)
        new_db, s = interval_search(lambda d: objective(scale * (aq @ fake_quant(b, d, b_bits, b_signed))),
                                    base_b, lo, hi, n)
        history.append(float(s))
        changed = not (torch.equal(new_da.cpu(), da.cpu()) and torch.equal(new_db.cpu(), db.cpu()))
        da, db = new_da, new_db
        if not changed:
            break
    return SearchResult(da, db, history[-1], done, history)


def bias_correction(x, weight, bias, delta_w, delta_x, w_bits: int = 8, x_bits: int = 8,
                    x_signed: bool = True) -> torch.Tensor:
    """b - E[X̂Ŵᵀ - XWᵀ] over the calibration rows (per output channel): removes the mean
    output shift that quantization introduces. Δ_W scalar or per output channel."""
    x = _t(x).float().reshape(-1, _t(x).shape[-1])
    w = _t(weight).float().to(x.device)
    b = torch.zeros(w.shape[0], device=x.device) if bias is None else _t(bias).float().to(x.device)
    wq = fake_quant(w, delta_w, w_bits, True, dim=0)
    xq = fake_quant(x, delta_x, x_bits, x_signed)
    shift = (xq @ wq.t() - x @ w.t()).mean(dim=0)
    return b - shift
