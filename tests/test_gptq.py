"""GPTQ (quantsim.quant.gptq): against a brute-force OBQ reference, against round-to-nearest on
the layer output error, range of the codes, Hessian columns, the lowering hook and bit-exactness."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from integer_ref.arith import qrange

from quantsim.errors import QuantsimError
from quantsim.graph.capture import FNode, run_float, run_node
from quantsim.quant import gptq
from quantsim.quant.config import QuantConfig
from quantsim.quant.lower import lower
from small_models import SmallConvNet, resnet20_prepared


# --- the reference: Optimal Brain Quantizer, fixed column order, direct inverses -------------------

def _prepared_hessian(h: torch.Tensor, percdamp: float) -> torch.Tensor:
    """GPTQ's preprocessing of H: dead columns (diag 0) get 1, then λ = percdamp·mean(diag) on the diagonal."""
    h = h.clone().double()
    d = torch.diagonal(h)
    d[d == 0] = 1.0
    d += percdamp * d.mean()
    return h


def obq_reference(w: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, qmax: int, percdamp: float = 0.01):
    """Textbook OBQ, one row at a time, columns in their natural order: quantize column p, then
    move the remaining weights F by δ_F = −(w_p − s·q_p) / [H_F⁻¹]_pp · [H_F⁻¹]_{:,p}, with
    H_F⁻¹ = inv(H[F, F]) computed directly at every step (no Cholesky, no lazy batches)."""
    h = _prepared_hessian(h, percdamp)
    o, k = w.shape
    codes = torch.zeros(o, k, dtype=torch.int64)
    seen = torch.zeros(o, k, dtype=torch.float64)
    for r in range(o):
        row = w[r].double().clone()
        s = float(scale[r])
        for p in range(k):
            rest = list(range(p, k))
            hinv = torch.linalg.inv(h[rest][:, rest])
            seen[r, p] = row[p]
            q = float(torch.clamp(torch.round(row[p] / s), -qmax, qmax))
            codes[r, p] = int(q)
            err = float(row[p]) - s * q
            row[rest] -= err / hinv[0, 0] * hinv[:, 0]
            assert abs(float(row[p]) - s * q) < 1e-9  # the quantized weight lands on its grid point
    return codes, seen


def _tiny(seed: int, o: int = 3, k: int = 6, n: int = 40, dead: int | None = None):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=gen, dtype=torch.float64) @ torch.randn(k, k, generator=gen, dtype=torch.float64)
    if dead is not None:
        x[:, dead] = 0
    h = 2 * x.T @ x / n
    w = torch.randn(o, k, generator=gen, dtype=torch.float64)
    return w, h, x


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("seed,dead", [(0, None), (1, None), (2, 2), (3, 0)])
def test_gptq_equals_brute_force_obq(bits, seed, dead):
    w, h, _ = _tiny(seed, dead=dead)
    _, qmax = qrange(bits, True)
    scale = w.abs().amax(1) / qmax
    ref_codes, ref_seen = obq_reference(w, h, scale, qmax)
    for block in (1, 4, 128):  # one column a block, a block boundary inside the row, one block > K
        codes, seen = gptq.gptq_matrix(w, h, scale, qmax, block_size=block)
        assert torch.equal(codes, ref_codes), f"block {block}"
        assert torch.allclose(seen, ref_seen, atol=1e-6, rtol=0), f"block {block}: {(seen - ref_seen).abs().max()}"
    assert (ref_seen - w).abs().max() > 1e-3  # the error feedback moved the weights: the comparison bites


def test_obq_reference_moves_codes_off_nearest():
    moved = 0
    for seed in range(6):
        w, h, _ = _tiny(seed)
        scale = w.abs().amax(1) / 3
        codes, _ = obq_reference(w, h, scale, 3)
        moved += int((codes != torch.clamp(torch.round(w / scale[:, None]), -3, 3).long()).sum())
    assert moved > 0


def test_dead_column_rounds_to_nearest_and_sends_no_feedback():
    w, h, _ = _tiny(5, dead=3)
    scale = w.abs().amax(1) / 7
    codes, seen = gptq.gptq_matrix(w, h, scale, 7)
    assert torch.equal(seen[:, 3], w[:, 3])  # nothing fed into it
    assert torch.equal(codes[:, 3], torch.round(w[:, 3] / scale).long())
    w2 = w.clone()
    w2[:, 3] += 0.37 * scale  # another code in the dead column changes nothing else
    codes2, _ = gptq.gptq_matrix(w2, h, scale, 7)
    keep = [i for i in range(6) if i != 3]
    assert torch.equal(codes[:, keep], codes2[:, keep])


def _out_err(x, w, codes, scale):
    return float(torch.linalg.norm(x @ w.T - x @ (codes.double() * scale[:, None]).T))


@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_beats_nearest_on_correlated_inputs(bits):
    gen = torch.Generator().manual_seed(7)
    k, o, n = 64, 16, 2000
    mix = torch.randn(k, k, generator=gen, dtype=torch.float64)
    x = torch.randn(n, k, generator=gen, dtype=torch.float64) @ mix  # correlated inputs
    w = torch.randn(o, k, generator=gen, dtype=torch.float64)
    _, qmax = qrange(bits, True)
    scale = w.abs().amax(1) / qmax
    codes, _ = gptq.gptq_matrix(w, 2 * x.T @ x / n, scale, qmax)
    rtn = torch.clamp(torch.round(w / scale[:, None]), -qmax, qmax).long()
    assert _out_err(x, w, codes, scale) < 0.8 * _out_err(x, w, rtn, scale)


def test_codes_in_narrow_range_with_outliers():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(8, 50, generator=gen, dtype=torch.float64)
    w[:, 0] *= 20  # each row's max at column 0: the scale; error feedback pushes later columns
    x = torch.randn(500, 50, generator=gen, dtype=torch.float64)
    x[:, 1:] += 3 * x[:, :1]
    for bits in (2, 3, 4, 8):
        _, qmax = qrange(bits, True)
        scale = 0.5 * w.abs().amax(1) / qmax  # a clipped scale: the largest weights lie outside the grid
        codes, seen = gptq.gptq_matrix(w, 2 * x.T @ x / 500, scale, qmax)
        assert int(codes.abs().max()) <= qmax
        assert (seen.abs() > (qmax + 0.5) * scale[:, None]).any()  # clamping was needed: the test bites


# --- Hessian columns: the im2col order of the weight, per group ----------------------------------

@pytest.mark.parametrize("groups,stride,dilation,padding", [(1, 1, 1, 1), (2, 2, 1, 1), (4, 1, 2, 2), (8, 2, 1, 0)])
def test_columns_reproduce_the_conv(groups, stride, dilation, padding):
    gen = torch.Generator().manual_seed(groups)
    c, o = 8, 8
    w = torch.randn(o, c // groups, 3, 3, generator=gen)
    x = torch.randn(2, c, 9, 9, generator=gen)
    n = FNode("c", "conv", ["x"], {"stride": [stride] * 2, "dilation": [dilation] * 2, "groups": groups,
                                   "kernel": [3, 3], "padding": [padding] * 4}, w)
    y = F.conv2d(x, w, None, stride, padding, dilation, groups)
    cols = gptq.layer_columns(n, x)                                  # (N, G, K_g, L)
    assert torch.equal(gptq.im2col(F.pad(x, (padding,) * 4), (3, 3), (stride,) * 2, (dilation,) * 2),
                       F.unfold(F.pad(x, (padding,) * 4), (3, 3), dilation=dilation, stride=stride))
    wg = w.reshape(groups, o // groups, -1)
    got = torch.einsum("gok,ngkl->ngol", wg, cols).reshape(y.shape)
    assert torch.allclose(got, y, atol=1e-5)
    hess = gptq.Hessian(n)
    hess.add(x)
    flat = cols.permute(1, 2, 0, 3).reshape(groups, cols.shape[2], -1).double()
    assert hess.samples == flat.shape[2]
    assert torch.allclose(hess.value, 2 * flat @ flat.transpose(1, 2) / flat.shape[2], rtol=1e-5, atol=1e-6)


def test_too_few_samples_is_an_error():
    n = FNode("fc", "linear", ["x"], {}, torch.randn(4, 32))
    hess = gptq.Hessian(n)
    hess.add(torch.randn(20, 32))
    with pytest.raises(QuantsimError, match="at least 32 calibration images"):
        gptq.quantize_layer(n, hess, 4, QuantConfig(w_bits=4))


def test_config_rejects_bad_combinations():
    with pytest.raises(QuantsimError, match="rounding"):
        QuantConfig(rounding="adaround?")
    with pytest.raises(QuantsimError, match="bias correction"):
        QuantConfig(rounding="gptq", bias_correction=True)
    with pytest.raises(QuantsimError, match="GPTQ inputs"):
        QuantConfig(gptq_inputs="half")


# --- through lowering, on a small network and on ResNet-20 ---------------------------------------


@pytest.fixture(scope="module")
def small_prep():
    from quantsim.run import stages

    torch.manual_seed(0)
    model = SmallConvNet(dilation=2).eval()
    calib = list(torch.randn(64, 3, 12, 12).split(16))
    return model, stages.prepare(model, (3, 12, 12), calib, progress=False)


@pytest.mark.parametrize("inputs", ["sequential", "float"])
def test_lowered_gptq_program_is_bit_exact_and_uses_the_codes(small_prep, inputs):
    from quantsim.run import stages

    _, prep = small_prep
    cfg = QuantConfig(w_bits=4, a_bits=8, rounding="gptq", gptq_inputs=inputs)
    graph = stages.quantize(prep, cfg)
    near = stages.quantize(prep, replace(cfg, rounding="nearest"))
    codes = gptq.gptq_codes(prep.fgraph, prep.calib, cfg, inputs)
    differ = 0
    for node, ref in zip(graph.nodes, near.nodes):
        if node.name in codes:
            assert np.array_equal(node.params["weight"], codes[node.name].codes)
            assert np.array_equal(node.weight_q.scale, ref.weight_q.scale)  # ordinary scales, the same
            assert np.abs(node.params["weight"]).max() <= 7
            differ += int((node.params["weight"] != ref.params["weight"]).sum())
    assert differ > 0
    be = stages.check_bitexact(graph, torch.randn(4, 3, 12, 12))
    assert be.total_mismatches == 0


def test_sequential_differs_from_float(small_prep):
    _, prep = small_prep
    cfg = QuantConfig(w_bits=3, a_bits=8, rounding="gptq")
    seq = gptq.gptq_codes(prep.fgraph, prep.calib, cfg, "sequential")
    flo = gptq.gptq_codes(prep.fgraph, prep.calib, cfg, "float")
    first = prep.fgraph.mac_nodes()[0].name
    assert np.array_equal(seq[first].codes, flo[first].codes)  # the first layer sees the image either way
    assert any(not np.array_equal(seq[k].codes, flo[k].codes) for k in seq)


def test_lower_rejects_codes_at_another_scale(small_prep):
    _, prep = small_prep
    cfg = QuantConfig(w_bits=4, a_bits=8, rounding="gptq")
    codes = gptq.gptq_codes(prep.fgraph, prep.calib, cfg, "float")
    g = gptq.with_codes(prep.fgraph, codes)
    with pytest.raises(QuantsimError, match="another width or scale"):
        lower(g, prep.stats, replace(cfg, w_bits=6))
    name = prep.fgraph.mac_nodes()[1].name
    g[name].attrs["weight_codes"] = dict(g[name].attrs["weight_codes"], scale=codes[name].scale * 1.01)
    with pytest.raises(QuantsimError, match="another width or scale"):
        lower(g, prep.stats, cfg)


@pytest.fixture(scope="module")
def r20_real(resnet20_checkpoint: Path, cifar10_dir: Path):
    return resnet20_prepared(resnet20_checkpoint, cifar10_dir, 128, 64)


@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_lowers_layer_output_error_on_resnet20(r20_real, bits):
    """||XW − XŴ|| on the float inputs of the layer (held-out images), GPTQ vs nearest, at the same scales."""

    prep, x_eval = r20_real
    cfg = QuantConfig(w_bits=bits, a_bits=8, rounding="gptq", gptq_inputs="float")
    codes = gptq.gptq_codes(prep.fgraph, prep.calib, cfg, "float")
    inputs = {}
    run_float(prep.fgraph, x_eval,
              transform=lambda n, xs: inputs.__setitem__(n.name, xs[0]) if n.is_mac else None)
    wins = 0
    for n in prep.fgraph.mac_nodes():
        near, scale = gptq.weight_scale(n, bits, cfg)
        lc = codes[n.name]
        assert np.array_equal(lc.scale, scale)
        assert np.abs(lc.codes).max() <= qrange(bits, True)[1]
        x = inputs[n.name]
        s = torch.from_numpy(np.broadcast_to(scale, (n.weight.shape[0],)).copy()).float()
        s = s.reshape((-1,) + (1,) * (n.weight.dim() - 1))
        f = lambda w: run_node(replace(n, bias=None, act=None), [x], w)  # noqa: E731
        y = f(n.weight)
        e_near = float(torch.linalg.norm(y - f(torch.from_numpy(near).float() * s)))
        e_gptq = float(torch.linalg.norm(y - f(torch.from_numpy(lc.codes).float() * s)))
        wins += e_gptq < e_near
    total = len(prep.fgraph.mac_nodes())
    assert wins >= total - 1, f"GPTQ below nearest on {wins} of {total} layers"


def test_resnet20_gptq_program_bit_exact(r20_real):
    from quantsim.run import stages

    prep, x_eval = r20_real
    graph = stages.quantize(prep, QuantConfig(w_bits=4, a_bits=4, rounding="gptq"))
    assert stages.check_bitexact(graph, x_eval[:4]).total_mismatches == 0


def test_command_line_rounding_reaches_the_config(tmp_path, capsys):
    from quantsim.cli.simulate import build_parser, main
    from quantsim.run.options import RunOptions
    from quantsim.run.single import base_config

    ns = build_parser().parse_args(["cifar_resnet20", "--rounding", "gptq", "--gptq-inputs", "float"])
    cfg = base_config(RunOptions.from_namespace(ns), 4, 4)
    assert (cfg.rounding, cfg.gptq_inputs) == ("gptq", "float")
    assert base_config(RunOptions()).rounding == "nearest"
    assert main(["cifar_resnet20", "--rounding", "gptq", "--bias-correction", "--out", str(tmp_path / "r")]) == 2
    assert "error: bias correction" in capsys.readouterr().err
