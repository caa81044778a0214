"""Liu et al. 2021 search pieces: ranking hinge, Pearson, Kendall τ, interval and alternating search."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from quantsim.quant import ranking as R


def test_ranking_loss_zero_when_order_kept_with_margin():
    f = torch.tensor([[0.0, 0.9, 0.3, 0.6], [2.0, 1.0, 0.0, -1.0]])
    q = f * 1.5  # every ordered pair keeps its order, every gap >= 0.45 > θ
    assert float(R.ranking_loss(f, q)) == 0.0
    assert float(R.ranking_loss(f, q, reduction="sum")) == 0.0
    ties = torch.tensor([[1.0, 1.0, 0.0]])  # tied float pairs carry no order, cost nothing
    assert float(R.ranking_loss(ties, torch.tensor([[0.0, 5.0, -1.0]]))) == 0.0


def test_ranking_loss_positive_when_a_pair_swaps_by_more_than_theta():
    f = torch.tensor([[1.0, 0.5, 0.0]])
    q = torch.tensor([[0.5, 1.0, 0.0]])  # pair (0, 1) swapped by 0.5 > θ
    loss = float(R.ranking_loss(f, q, reduction="sum"))
    assert loss == pytest.approx(0.2 + 0.5)  # Φ(-0.5) = θ + 0.5; the other pairs keep a 0.5 margin
    assert float(R.ranking_loss(f, q)) == pytest.approx(0.7 / 3)  # mean over the 3 ordered pairs


def test_ranking_loss_matches_loop_oracle():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(3, 2, 7)).round(1)
    q = f + rng.normal(scale=0.3, size=f.shape)
    total, pairs = 0.0, 0
    for fr, qr in zip(f.reshape(-1, 7), q.reshape(-1, 7)):
        for i in range(7):
            for j in range(7):
                if fr[i] > fr[j]:
                    total += max(0.2 - (qr[i] - qr[j]), 0.0)
                    pairs += 1
    assert float(R.ranking_loss(f, q, reduction="sum")) == pytest.approx(total, rel=1e-5)
    assert float(R.ranking_loss(f, q)) == pytest.approx(total / pairs, rel=1e-5)


def test_pearson_affine_copy_is_one():
    x = torch.randn(50, 20)
    assert float(R.pearson(x, 3.0 * x + 2.0)) == pytest.approx(1.0, abs=1e-12)
    assert float(R.pearson(x, -x)) == pytest.approx(-1.0, abs=1e-12)
    per_col = R.pearson(x, x * torch.arange(1, 21) + 5.0, dim=0)
    assert torch.allclose(per_col, torch.ones(20, dtype=torch.float64))
    assert float(R.pearson(x, torch.zeros_like(x))) == 0.0


def test_kendall_tau_matches_scipy():
    rng = np.random.default_rng(1)
    f = rng.integers(0, 6, (20, 12)).astype(float)  # plenty of ties
    q = f + rng.integers(-2, 3, f.shape)
    ours = R.kendall_tau_rows(f, q).numpy()
    want = np.array([scipy.stats.kendalltau(a, b).statistic for a, b in zip(f, q)])
    assert np.allclose(ours, want, equal_nan=True)
    assert R.kendall_tau(f, q) == pytest.approx(np.nanmean(want))
    assert R.kendall_tau(f, f) == pytest.approx(1.0)


def test_interval_search_finds_the_maximum():
    base = torch.tensor(2.0)
    best, score = R.interval_search(lambda d: -(d - 1.6) ** 2, base, n=71)  # α grid step 0.01
    assert float(best) == pytest.approx(1.6) and float(score) == pytest.approx(0.0, abs=1e-10)
    best, _ = R.interval_search(lambda d: d, base, n=8)  # monotone: the top of the interval
    assert float(best) == pytest.approx(2.4)
    per = R.interval_search(lambda d: -(d - torch.tensor([0.6, 1.0])) ** 2, torch.tensor([1.0, 1.0]), n=71)[0]
    assert torch.allclose(per, torch.tensor([0.6, 1.0]))


def _fixed_point(score, best, base, n):
    """No candidate beats `best` on `score` (the alternating search's stopping condition)."""
    s_best = float(score(best))
    return all(float(score(d)) <= s_best + 1e-12 for d in R.candidates(base, n=n))


def test_search_linear_returns_mutual_best_scales():
    torch.manual_seed(0)
    x = torch.randn(256, 32)
    x[0, 0] = 12.0  # an outlier: clipping it pays at 4 bits
    w = torch.randn(16, 32) * 0.1
    b = torch.randn(16) * 0.01
    n = 15
    res = R.search_linear(x, w, b, w_bits=4, x_bits=4, n=n)
    assert res.rounds < R.MAX_ROUNDS and res.history[-1] == res.score
    ref = x @ w.t() + b
    xq = R.fake_quant(x, res.delta_x, 4)
    wq = R.fake_quant(w, res.delta_w, 4)
    assert _fixed_point(lambda d: R.pearson(ref, xq @ R.fake_quant(w, d, 4).t() + b), res.delta_w,
                        R.max_delta(w, 4), n)
    assert _fixed_point(lambda d: R.pearson(ref, R.fake_quant(x, d, 4) @ wq.t() + b), res.delta_x,
                        R.max_delta(x, 4), n)
    assert float(res.delta_x) < float(R.max_delta(x, 4))  # the outlier is clipped
    minmax = R.pearson(ref, R.fake_quant(x, R.max_delta(x, 4), 4) @ R.fake_quant(w, R.max_delta(w, 4), 4).t() + b)
    assert res.score >= float(minmax)


def test_search_linear_per_channel():
    torch.manual_seed(1)
    x = torch.randn(128, 24)
    w = torch.randn(8, 24) * torch.linspace(0.01, 1.0, 8)[:, None]
    res = R.search_linear(x, w, None, w_bits=4, x_bits=8, per_channel=True, n=11)
    assert res.delta_w.shape == (8,)
    ratio = res.delta_w / R.max_delta(w, 4, dim=0)
    assert ((ratio > 0.5 - 1e-6) & (ratio < 1.2 + 1e-6)).all()


def test_search_matmul_ranking_objective_is_a_fixed_point():
    torch.manual_seed(2)
    q, k = torch.randn(2, 3, 9, 8), torch.randn(2, 3, 9, 8)
    n = 9
    res = R.search_matmul(q, k.transpose(-1, -2), 4, 4, scale=8 ** -0.5, ranking=True, n=n)
    ref = 8 ** -0.5 * (q @ k.transpose(-1, -2))
    bq = R.fake_quant(k.transpose(-1, -2), res.delta_b, 4)

    def objective(d):
        out = 8 ** -0.5 * (R.fake_quant(q, d, 4) @ bq)
        return R.pearson(ref, out) - R.GAMMA * R.ranking_loss(ref, out)
    assert _fixed_point(objective, res.delta_a, R.max_delta(q, 4), n)
    attn = torch.softmax(torch.randn(2, 9, 9), -1)
    res2 = R.search_matmul(attn, torch.randn(2, 9, 8), 8, 8, a_signed=False, n=5)
    assert float(res2.delta_a) > 0 and res2.rounds >= 1


def test_bias_correction_removes_the_mean_shift():
    torch.manual_seed(3)
    x = torch.rand(512, 16)  # non-negative: the rounding of x shifts the output mean
    w = torch.randn(4, 16)
    b = torch.zeros(4)
    dw, dx = R.max_delta(w, 3), R.max_delta(x, 3, signed=False)
    b2 = R.bias_correction(x, w, b, dw, dx, 3, 3, x_signed=False)
    out = R.fake_quant(x, dx, 3, False) @ R.fake_quant(w, dw, 3).t()
    before = (out + b - x @ w.t()).mean(0).abs().max()
    after = (out + b2 - x @ w.t()).mean(0).abs().max()
    assert after < 1e-5 < before
