"""Observers and scale search: from float values to a clipping range per tensor.

Activations are observed on the float model (FloatGraph) over the calibration set; the
clipping value is chosen by `minmax`, `percentile` (of |x|) or `mse` (the clip that
minimises the quantization mean-square error on the observed values). `similarity` and
`ranking` (quantsim.quant.scale_search) set `clip_override` on the tensors they search; a tensor
they do not search (no MAC or matmul operand) keeps the min-max clip.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from quantsim.graph.capture import FloatGraph, FNode, run_float
from quantsim.quant.quantizer import fake_quant, scale_from_clip

SAMPLE_PER_BATCH = 8192
SAMPLE_CAP = 1 << 18


@dataclass
class TensorStats:
    min: float = float("inf")
    max: float = float("-inf")
    samples: list[torch.Tensor] = field(default_factory=list)
    n_sampled: int = 0
    clip_override: float | None = None  # a searched clip (quantsim.quant.scale_search): wins over the method

    def update(self, t: torch.Tensor, gen: torch.Generator) -> None:
        t = t.detach().float()
        self.min = min(self.min, float(t.min()))
        self.max = max(self.max, float(t.max()))
        if self.n_sampled < SAMPLE_CAP:
            flat = t.reshape(-1)
            k = min(SAMPLE_PER_BATCH, flat.numel())
            idx = torch.randint(0, flat.numel(), (k,), generator=gen)
            self.samples.append(flat[idx].clone())
            self.n_sampled += k

    def sample(self) -> torch.Tensor:
        return torch.cat(self.samples) if self.samples else torch.zeros(1)

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max))


def collect_stats(g: FloatGraph, batches, seed: int = 0, progress: bool = True) -> dict[str, TensorStats]:
    """One pass over the calibration batches, observing every node's output."""
    stats: dict[str, TensorStats] = {n.name: TensorStats() for n in g.nodes}
    gen = torch.Generator().manual_seed(seed)

    def observe(n: FNode, y: torch.Tensor) -> None:
        stats[n.name].update(y, gen)

    for x in tqdm(batches, desc="calibrate", unit="batch", disable=not progress, leave=False):
        run_float(g, x, observe=observe)
    return stats


def clip_value(stats: TensorStats, method: str, qmin: int, qmax: int, percentile: float = 99.99) -> float:
    """The real value mapped to qmax for an activation tensor."""
    if stats.clip_override is not None:
        return stats.clip_override
    if method in ("minmax", "similarity", "ranking"):
        return stats.max if qmin == 0 else stats.absmax
    x = stats.sample()
    mag = x.clamp(min=0) if qmin == 0 else x.abs()
    if method == "percentile":
        return float(torch.quantile(mag.double(), percentile / 100.0))
    if method == "mse":
        top = stats.max if qmin == 0 else stats.absmax
        return mse_clip(x, top, qmin, qmax)
    raise ValueError(method)


def mse_clip(x: torch.Tensor, top: float, qmin: int, qmax: int, steps: int = 80) -> float:
    """Grid search of the clip in [0.2, 1] * top minimising the fake-quant MSE."""
    if top <= 0:
        return top
    return float(mse_clip_rows(x.reshape(1, -1), torch.tensor([top], dtype=torch.float64), qmin, qmax, steps)[0])


# elements of one (rows, grid, K) block of mse_clip_rows: bounds its memory on wide layers
_MSE_BLOCK_ELEMENTS = 1 << 24


def mse_clip_rows(rows: torch.Tensor, tops: torch.Tensor, qmin: int, qmax: int, steps: int = 80) -> torch.Tensor:
    """mse_clip of every row of ``rows`` (O, K) at once: the whole grid in one tensor op.

    Why: per-channel weights have hundreds of rows and the grid 81 points; one fake-quant
    call per (row, point) made the mse weight ranges the slowest step of a mixed-precision
    search. Grid points and their float32 scales are the scalar search's; the first minimum
    wins, as there. Rows with top <= 0 keep their top."""
    rows = rows.detach().to(torch.float32)
    tops = tops.detach().to(torch.float64).reshape(-1)
    grid = 0.2 + 0.8 * torch.arange(steps + 1, dtype=torch.float64) / steps
    clips = tops[:, None] * grid[None, :]                      # (O, S) float64, as the scalar search
    # float32 scales of the float64 grid clips, floored at float32's tiny (the scalar search's own)
    scales = scale_from_clip(clips, qmax, floor=None).to(torch.float32).clamp_min(torch.finfo(torch.float32).tiny)
    n_rows, k = rows.shape
    grid_per = max(1, _MSE_BLOCK_ELEMENTS // max(1, k))  # grid points per block (a long activation sample)
    rows_per = max(1, _MSE_BLOCK_ELEMENTS // max(1, min(steps + 1, grid_per) * k))
    best = torch.empty(n_rows, dtype=torch.float64)
    for i in range(0, n_rows, rows_per):
        x = rows[i:i + rows_per, None, :]
        best_err = torch.full((x.shape[0],), float("inf"))
        best_at = torch.zeros(x.shape[0], dtype=torch.int64)
        for j in range(0, steps + 1, grid_per):
            s = scales[i:i + rows_per, j:j + grid_per, None]
            err = ((fake_quant(x, s, qmin, qmax) - x) ** 2).mean(dim=2)
            at = err.argmin(dim=1)
            e = err.gather(1, at[:, None])[:, 0]
            better = e < best_err  # strict: an earlier grid point keeps a tie
            best_err = torch.where(better, e, best_err)
            best_at = torch.where(better, at + j, best_at)
        best[i:i + rows_per] = clips[i:i + rows_per].gather(1, best_at[:, None])[:, 0]
    return torch.where(tops > 0, best, tops)


def weight_method(calib_method: str) -> str:
    """How weights are clipped under an activation calibration method: mse for 'mse', else the
    min-max clip (the searches scale min-max clips by their factors)."""
    return "mse" if calib_method == "mse" else "minmax"


def weight_clip(w: torch.Tensor, per_channel: bool, method: str, qmax: int) -> torch.Tensor:
    """Clip value per output channel (shape (O,)) or per tensor (shape ())."""
    flat = w.detach().reshape(w.shape[0], -1) if per_channel else w.detach().reshape(1, -1)
    amax = flat.abs().amax(dim=1)
    if method == "mse":
        amax = mse_clip_rows(flat, amax, -qmax, qmax).to(amax.dtype)
    return amax if per_channel else amax[0]
