"""quantsim.quant.calibrate.mse_clip_rows: the vectorised grid search finds the scalar search's minimum."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantsim.quant.calibrate import mse_clip, mse_clip_rows, weight_clip
from quantsim.quant.quantizer import fake_quant


def _err(x: torch.Tensor, clip: float, qmax: int) -> float:
    return float(((fake_quant(x, torch.tensor(clip / qmax), -qmax, qmax) - x) ** 2).mean())


def _loop(x: torch.Tensor, top: float, qmax: int, steps: int = 80) -> float:
    """The search written out point by point (what mse_clip did before it was vectorised)."""
    best, best_err = top, float("inf")
    for i in range(steps + 1):
        c = top * (0.2 + 0.8 * i / steps)
        e = _err(x, c, qmax)
        if e < best_err:
            best, best_err = c, e
    return best


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 12), k=st.integers(1, 300), bits=st.sampled_from([2, 4, 6, 8]),
       heavy=st.booleans())
def test_rows_find_the_loop_minimum(seed, rows, k, bits, heavy):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, k, generator=g)
    if heavy:  # a few outliers per row: the case where clipping below max pays
        w = w * (1 + 20 * (torch.rand(rows, k, generator=g) > 0.98))
    qmax = 2 ** (bits - 1) - 1
    got = mse_clip_rows(w, w.abs().amax(1), -qmax, qmax)
    for r in range(rows):
        top = float(w[r].abs().max())
        want = _loop(w[r], top, qmax)
        # the same grid: the chosen clip is a grid point, and its error is the loop's minimum
        # (up to float32 summation order, which may pick the other point of a near-tie)
        assert 0.2 * top * (1 - 1e-9) <= float(got[r]) <= top * (1 + 1e-9)
        assert _err(w[r], float(got[r]), qmax) <= _err(w[r], want, qmax) * (1 + 1e-5) + 1e-12


def test_outliers_are_clipped_and_zero_rows_kept():
    w = torch.zeros(3, 4096)
    w[0] = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    w[1] = torch.linspace(-1, 1, 4096)
    clip = weight_clip(w, True, "mse", 7)
    # Gaussian weights at 4 bits: the MSE-optimal clip is about 2.5 sigma, well below the
    # max of 4096 draws (about 3.5 sigma); a uniform row gains nothing from clipping much
    assert 2.0 < float(clip[0]) < 0.85 * float(w[0].abs().max())
    assert float(clip[1]) > 0.85
    assert float(clip[2]) == 0.0  # an all-zero channel keeps clip 0 (no search on nothing)
    assert abs(mse_clip(w[1], 1.0, -7, 7) - float(clip[1])) < 1e-6


def test_blocked_search_equals_one_block(monkeypatch):
    """Rows and grid cut into blocks (memory bound) choose exactly what one block chooses."""
    import quantsim.quant.calibrate as C
    g = torch.Generator().manual_seed(1)
    w = torch.randn(7, 500, generator=g) * (1 + 10 * (torch.rand(7, 500, generator=g) > 0.99))
    tops = w.abs().amax(1)
    whole = C.mse_clip_rows(w, tops, -7, 7)
    monkeypatch.setattr(C, "_MSE_BLOCK_ELEMENTS", 1200)  # 2 grid points of one row per block
    assert torch.equal(C.mse_clip_rows(w, tops, -7, 7), whole)
